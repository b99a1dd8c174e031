-- wrk script: every request names a sandbox from the benchmark's table, in
-- turn (each wrk thread starts at a different offset), so a proxy routes
-- across all of them. Args: FILE [PORT]; FILE has one sandbox id per line,
-- the Host is PORT-ID.sandbox.test (PORT defaults to 18080). PORT "direct"
-- means wrk talks to the backend itself: Host is localhost:18080, as the
-- proxies' mask makes it.
-- done() prints one JSON line (BENCHJSON {...}) with exact counts and
-- latency percentiles in microseconds.

local reqs = {}
local n = 0
local i = 0

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = args[1]
   local port = args[2] or "18080"
   for id in io.lines(file) do
      if #id > 0 then
         local h = {}
         for k, v in pairs(wrk.headers) do h[k] = v end
         if port == "direct" then
            h["Host"] = "localhost:18080"
         else
            h["Host"] = port .. "-" .. id .. ".sandbox.test"
         end
         n = n + 1
         reqs[n] = wrk.format(nil, wrk.path, h)
      end
   end
   i = ((tid or 0) * 397) % n
end

function request()
   i = i + 1
   if i > n then i = 1 end
   return reqs[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"lat_p50_us":%d,"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
