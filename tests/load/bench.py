#!/usr/bin/python3
"""Side-by-side benchmark: sandgate vs nginx vs HAProxy doing the same job.

Run through tests/load/bench.sh (installs wrk, nginx-light, haproxy). See
tests/load/README.md for what each scenario measures.

Environment:
  QUICK=1                 short run (~2 minutes): 2 s per run, 1 repetition
  BENCH_DURATION=S        seconds per measured wrk run (default 6, QUICK 2)
  BENCH_REPS=N            repetitions of each row (default 3, QUICK 1)
  BENCH_IDLE_CONNS=N      idle TLS connections for the memory row (10000, QUICK 2000)
  BENCH_ONLY=a,b          run only these scenario keys (see SCENARIOS, plus idle, ws)
  BENCH_PROFILE=1         after the table: system calls per request of every
                          proxy (perf tracepoints), a perf cpu-clock profile of
                          sandgate and callgrind instruction counts per request
                          of sandgate, nginx and HAProxy (keep-alive HTTP row)
  BENCH_CALLGRIND=a,b     only callgrind instruction counts per request of
                          sandgate, nginx-best and HAProxy on these scenario
                          keys (no table; instruction counts do not need an
                          idle machine): results/profile-callgrind-<proxy>-<key>.txt
  BENCH_SYSCALLS=a,b      only the system calls (and TCP segments) per request
                          of every proxy on these scenario keys:
                          results/profile-syscalls.md
  BENCH_PERF=a,b          only a perf cpu-clock profile of sandgate on these
                          scenario keys (no table; wants an idle machine):
                          results/profile-perf[-callers]-<key>.txt
  BENCH_PERF_PROXY=name   profile this proxy instead (nginx-best, haproxy...):
                          results/profile-perf[-callers]-<key>-<name>.txt
  BENCH_QUIET_WAIT=S      wait up to S seconds for other load on the machine to
                          stop before starting (default 180; a third of it
                          before each scenario)
  SANDGATE_BIN=PATH       sandgate binary (default build/sandgate)
  SANDGATE_B_BIN=PATH     also measure this second sandgate build, as row
                          "sandgate-b" right after "sandgate" (A/B of a change)
  BENCH_REPORT_FROM=FILE  only print the tables again from a saved latest.json
"""

import atexit
import hashlib
import json
import os
import fcntl
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
QUICK = os.environ.get("QUICK") == "1"
SANDGATE_BIN = os.environ.get("SANDGATE_BIN", os.path.join(ROOT, "build", "sandgate"))
DURATION = int(os.environ.get("BENCH_DURATION", "2" if QUICK else "6"))
WARMUP = 1
REPS = int(os.environ.get("BENCH_REPS", "1" if QUICK else "3"))
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "2000" if QUICK else "10000"))
WS_ROUND_TRIPS = 1000 if QUICK else 5000
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
PROFILE = os.environ.get("BENCH_PROFILE") == "1"
PY = "/usr/bin/python3"
BG_LIMIT = float(os.environ.get("BENCH_BG_LIMIT", "15"))  # % of a core used by others: run is redone
RETRIES = int(os.environ.get("BENCH_RETRIES", "3"))

CLIENT_CPU = "0"  # wrk, the backend and the Python clients
PROXY_CPU = "1"  # the proxy under test (single-worker rows)
N_SANDBOXES = 1000
BACKEND_ADDRS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
BACKEND_PORT = 18080
WS_PORT = 18081
STATUS_ADDR = ("127.0.0.2", 18079)
SNI = "bench.sandbox.test"
SMALL_BODY = 100
BIG_BODY = 1 << 20

# name -> (plain port, TLS port); every proxy listens on 127.0.0.1
PORTS = {
    "sandgate": (19080, 19443),
    "nginx-best": (19180, 19543),
    "nginx-honest": (19280, 19643),
    "haproxy": (19380, 19743),
    "sandgate-2w": (19480, 19843),
    "sandgate-b": (19580, 19943),
}
SANDGATE_ADMIN = {"sandgate": 19901, "sandgate-2w": 19902, "sandgate-b": 19903}
# A second sandgate build measured in the same run, right after the first
# (an A/B of a change: ratios from one run, interleaved like the peers).
SANDGATE_B_BIN = os.environ.get("SANDGATE_B_BIN")
PEERS = ["nginx-best", "nginx-honest", "haproxy"]
HONEST_PEERS = ["nginx-honest", "haproxy"]

SCENARIOS = [
    # key, title, tls, path, connections, Connection: close, resume
    dict(key="ka_http", title="keep-alive 100 B, HTTP", tls=False, path="/small", conns=64,
         close=False, direct=True, two_workers=True),
    dict(key="ka_http_256", title="keep-alive 100 B, HTTP, 256 connections", tls=False, path="/small",
         conns=256, close=False, direct=True),
    dict(key="ka_https", title="keep-alive 100 B, HTTPS", tls=True, path="/small", conns=64,
         close=False),
    dict(key="conn_tls_resumed", title="new TLS conn per request, resumed", tls=True,
         path="/small", conns=32, close=True, resume=True),
    dict(key="conn_tls_full", title="new TLS conn per request, full handshake", tls=True,
         path="/small", conns=32, close=True, resume=False, two_workers=True),
    dict(key="big_http", title="keep-alive 1 MiB, HTTP", tls=False, path="/1m", conns=16,
         close=False, direct=True),
    dict(key="big_https", title="keep-alive 1 MiB, HTTPS", tls=True, path="/1m", conns=16,
         close=False),
]


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

LIVE = []


def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(d))
    return kids


class Proc:
    """A process started by the benchmark, pinned with taskset, stopped by
    its own PID (and its children's, for nginx's workers)."""

    def __init__(self, name, argv, cpus, workdir, stop_signal=signal.SIGTERM, env=None):
        self.name = name
        self.argv = argv
        self.cpus = cpus
        self.workdir = workdir
        self.stop_signal = stop_signal
        self.env = env
        self.p = None

    def start(self):
        self.logpath = os.path.join(self.workdir, "%s.log" % self.name)
        self.logf = open(self.logpath, "ab")
        self.p = subprocess.Popen(
            ["taskset", "-c", self.cpus] + self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env,
        )
        LIVE.append(self)
        return self

    def pids(self):
        if self.p is None or self.p.poll() is not None:
            return []
        return [self.p.pid] + children_of(self.p.pid)

    def cpu_seconds(self):
        """utime+stime of every thread of every process of this instance."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    st = f.read()
            except OSError:
                continue
            fields = st[st.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
        return total / tick

    def _status_kib(self, key, path="status"):
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/%s" % (pid, path)) as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def rss_kib(self):
        return self._status_kib("VmRSS")

    def pss_kib(self):
        return self._status_kib("Pss", "smaps_rollup")

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def stop(self):
        if self.p is None:
            return
        if self.p.poll() is None:
            kids = children_of(self.p.pid)
            try:
                os.kill(self.p.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for pid in [self.p.pid] + kids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.p.wait()
            for pid in kids:  # workers that outlived their master
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.logf.close()
        if self in LIVE:
            LIVE.remove(self)
        self.p = None


def stop_all():
    for p in list(reversed(LIVE)):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            log("stop %s: %s" % (p.name, e))


def wait_port(addr, port, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError("%s exited at start; log:\n%s" % (proc.name, tail(proc.logpath)))
        try:
            socket.create_connection((addr, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s: %s:%d not listening after %.0fs" % (proc.name if proc else "?", addr, port, timeout))


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- setup


def sandboxes():
    out = []
    for i in range(N_SANDBOXES):
        sid = hashlib.sha256(b"sandbox-%d" % i).hexdigest()[:20]
        out.append((sid, BACKEND_ADDRS[i % len(BACKEND_ADDRS)]))
    assert len(set(s for s, _ in out)) == N_SANDBOXES
    return out


NGINX_COMMON = """
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 20000; }}
"""

NGINX_TEMP = """
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
"""


def write_backend(work):
    d = os.path.join(work, "backend")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    with open(os.path.join(d, "www", "small"), "wb") as f:
        f.write(b"x" * (SMALL_BODY - 1) + b"\n")
    with open(os.path.join(d, "www", "1m"), "wb") as f:
        f.write(bytes(range(256)) * (BIG_BODY // 256))
    listens = "".join("        listen %s:%d backlog=4096;\n" % (a, BACKEND_PORT) for a in BACKEND_ADDRS)
    conf = "worker_processes 1;\n" + NGINX_COMMON.format(dir=d) + """
http {{
    access_log off;
{temp}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    default_type application/octet-stream;
    server {{
{listens}
        root {dir}/www;
        # the proxies must have rewritten Host from the mask localhost:${{PORT}}
        if ($http_host != "localhost:{port}") {{ return 421; }}
        location = /small {{ }}
        location = /1m {{ }}
    }}
    server {{
        listen {sa}:{sp};
        location = /status {{ stub_status; }}
    }}
}}
""".format(dir=d, temp=NGINX_TEMP.format(dir=d), listens=listens, port=BACKEND_PORT,
           sa=STATUS_ADDR[0], sp=STATUS_ADDR[1])
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return d, path


def backend_accepts():
    with urllib.request.urlopen("http://%s:%d/status" % STATUS_ADDR, timeout=5) as r:
        text = r.read().decode()
    # "Active connections: N \nserver accepts handled requests\n A H R \n..."
    nums = text.splitlines()[2].split()
    return int(nums[0])


def write_sandgate(work, name, boxes, certs, workers):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    plain, tls = PORTS[name]
    lines = [
        "listen:",
        '  - "127.0.0.1:%d"' % plain,
        '  - address: "127.0.0.1:%d"' % tls,
        "    tls: true",
        "domains: [sandbox.test]",
        "workers: %d" % workers,
        "access_log: off",
        "log_level: warn",
        "drain_timeout: 0",
        "lookup_order: [static]",
        "admin:",
        '  listen: ["127.0.0.1:%d"]' % SANDGATE_ADMIN[name],
        "tls:",
        "  certificates:",
        '    - cert: "%s"' % certs["pem"],
        '      key: "%s"' % certs["key"],
        "sandboxes:",
    ]
    for sid, addr in boxes:
        lines.append('  %s: {address: "%s", mask: "localhost:${PORT}"}' % (sid, addr))
    path = os.path.join(d, "sandgate.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return d, path


def write_nginx(work, name, boxes, certs, honest):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    plain, tls = PORTS[name]
    if honest:
        # What per-sandbox routing needs: the address comes from a map, the
        # port from the Host; proxy_pass with variables and an IP literal (no
        # resolver needed) has no upstream block, hence no keep-alive pool.
        routing = "    map $sbx $sbx_addr {\n        default \"\";\n"
        routing += "".join("        %s %s;\n" % (sid, addr) for sid, addr in boxes)
        routing += "    }\n"
        target = "http://$sbx_addr:$sbxport"
        var = "$sbx_addr"
        conn_map = "    map $http_upgrade $conn_hdr { default upgrade; '' close; }\n"
    else:
        # nginx at its best: one upstream block per backend address with a
        # keep-alive pool, the host mapped to the upstream's name. (The port
        # is fixed in the upstream block: fine here, one backend port.)
        routing = ""
        for a in BACKEND_ADDRS:
            routing += "    upstream be_%s {\n        server %s:%d;\n        keepalive 64;\n" \
                       "        keepalive_requests 10000000;\n        keepalive_timeout 60s;\n    }\n" % (
                           a.replace(".", "_"), a, BACKEND_PORT)
        routing += "    map $sbx $sbx_up {\n        default \"\";\n"
        routing += "".join("        %s be_%s;\n" % (sid, addr.replace(".", "_")) for sid, addr in boxes)
        routing += "    }\n"
        target = "http://$sbx_up"
        var = "$sbx_up"
        conn_map = "    map $http_upgrade $conn_hdr { default upgrade; '' ''; }\n"
    conf = "worker_processes 1;\n" + NGINX_COMMON.format(dir=d) + """
http {{
    access_log off;
{temp}
    server_tokens off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    map_hash_bucket_size 128;
    map_hash_max_size 16384;
{conn_map}
{routing}
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1h;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{plain} backlog=4096;
        listen 127.0.0.1:{tls} ssl backlog=4096;
        server_name "~^(?<sbxport>[1-9][0-9]{{0,4}})-(?<sbx>[a-z0-9]{{1,64}})(-[^.]*)?\\.sandbox\\.test$";
        ssl_certificate {pem};
        ssl_certificate_key {key};
        location / {{
            if ({var} = "") {{ return 502; }}
            proxy_pass {target};
            proxy_http_version 1.1;
            proxy_set_header Host localhost:$sbxport;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $conn_hdr;
            proxy_buffer_size 16k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
            proxy_read_timeout 600s;
        }}
    }}
    server {{
        listen 127.0.0.1:{plain} default_server;
        listen 127.0.0.1:{tls} ssl default_server;
        ssl_certificate {pem};
        ssl_certificate_key {key};
        return 421;
    }}
}}
""".format(dir=d, temp=NGINX_TEMP.format(dir=d), conn_map=conn_map, routing=routing,
           plain=plain, tls=tls, pem=certs["pem"], key=certs["key"], var=var, target=target)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return d, path


def write_haproxy(work, name, boxes, certs):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    plain, tls = PORTS[name]
    mapfile = os.path.join(d, "sandboxes.map")
    with open(mapfile, "w") as f:
        for sid, addr in boxes:
            f.write("%s %s\n" % (sid, addr))
    combined = os.path.join(d, "sandbox.test.pem")
    with open(combined, "w") as f:
        f.write(open(certs["pem"]).read() + open(certs["key"]).read())
    # Regex captures on the Host: \1 = port, \2 = sandbox id. The map gives
    # the address; set-dst/set-dst-port steer the transparent server.
    rx = r"^([1-9][0-9]{0,4})-([a-z0-9]{1,64})(-[^.]*)?[.]sandbox[.]test(:[0-9]+)?$"
    rx2 = r"^([1-9][0-9]*)-([a-z0-9]+)(-[^.]*)?[.]sandbox[.]test(:[0-9]+)?$"  # no commas in converter args
    conf = """global
    nbthread 1
    maxconn 10500
    ulimit-n 20000
    no strict-limits  # the hard limit here is 20000 fds; 10,000 idle clients need only one each
    ssl-default-bind-options ssl-min-ver TLSv1.2
    tune.ssl.cachesize 20000

defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 300s
    timeout http-keep-alive 75s
    timeout http-request 30s
    timeout tunnel 10m
    option http-keep-alive
    option forwardfor

frontend fe
    bind 127.0.0.1:{plain}
    bind 127.0.0.1:{tls} ssl crt {crt} alpn http/1.1
    http-request set-var(req.host) req.hdr(host),lower
    http-request deny deny_status 400 unless {{ var(req.host) -m reg {rx} }}
    http-request set-var(req.port) "var(req.host),regsub('{rx2q}','\\\\1')"
    http-request set-var(req.sbx) "var(req.host),regsub('{rx2q}','\\\\2')"
    http-request set-var(req.addr) var(req.sbx),map({mapfile})
    http-request return status 502 content-type application/json string '{{"message":"The sandbox was not found","code":502}}' unless {{ var(req.addr) -m found }}
    http-request set-dst var(req.addr)
    http-request set-dst-port var(req.port)
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http unless {{ ssl_fc }}
    http-request set-header Host localhost:%[var(req.port)]
    default_backend sandboxes

backend sandboxes
    http-reuse always
    server sbx 0.0.0.0:0
""".format(plain=plain, tls=tls, crt=combined, rx=rx, rx2q=rx2.replace('$', '\\$'), mapfile=mapfile)
    path = os.path.join(d, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return d, path


def make_proxy(work, name, boxes, certs, cpus=PROXY_CPU):
    if name.startswith("sandgate"):
        workers = 2 if name == "sandgate-2w" else 1
        d, cfg = write_sandgate(work, name, boxes, certs, workers)
        if name == "sandgate-2w":
            cpus = "0,1"
        binary = SANDGATE_B_BIN if name == "sandgate-b" else SANDGATE_BIN
        return Proc(name, [binary, "--config", cfg], cpus, d)
    if name.startswith("nginx"):
        d, cfg = write_nginx(work, name, boxes, certs, honest=(name == "nginx-honest"))
        return Proc(name, ["/usr/sbin/nginx", "-p", d, "-c", cfg, "-e", os.path.join(d, "error.log"),
                           "-g", "daemon off;"], cpus, d)
    if name == "haproxy":
        d, cfg = write_haproxy(work, name, boxes, certs)
        return Proc(name, ["/usr/sbin/haproxy", "-db", "-f", cfg], cpus, d, stop_signal=signal.SIGTERM)
    raise ValueError(name)


def start_proxy(proc):
    proc.start()
    plain, tls = PORTS[proc.name]
    wait_port("127.0.0.1", plain, proc)
    wait_port("127.0.0.1", tls, proc)
    return proc


def check_route(name, sid, tls):
    """One request through the proxy, checked: 200 and the 100-byte body."""
    plain, tport = PORTS[name]
    host = "%d-%s.sandbox.test" % (BACKEND_PORT, sid)
    raw = socket.create_connection(("127.0.0.1", tport if tls else plain), timeout=5)
    if tls:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = ctx.wrap_socket(raw, server_hostname=host)
    raw.sendall(("GET /small HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
    buf = b""
    while True:
        c = raw.recv(65536)
        if not c:
            break
        buf += c
    raw.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode(errors="replace")
    if " 200 " not in status + " " or len(body) != SMALL_BODY:
        raise RuntimeError("%s (%s): bad response to %s: %r" % (name, "https" if tls else "http", host, buf[:300]))


# ---------------------------------------------------------------- wrk


def run_wrk(port, scen, ids_file, duration, shim, direct=False):
    scheme = "https" if scen["tls"] else "http"
    url = "%s://127.0.0.1:%d%s" % (scheme, port, scen["path"])
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c%d" % scen["conns"], "-d%ds" % duration,
            "--timeout", "5s", "-s", os.path.join(HERE, "hosts.lua")]
    if scen.get("close"):
        argv += ["-H", "Connection: close"]
    argv += [url, "--", ids_file, "direct" if direct else str(BACKEND_PORT)]
    env = dict(os.environ)
    if scen["tls"]:
        env["LD_PRELOAD"] = shim
        env["BENCH_SNI"] = SNI
        env["BENCH_RESUME"] = "0" if scen.get("resume") is False else "1"
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration + 60)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = None
    for line in r.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            res = json.loads(line[len("BENCHJSON "):])
    if res is None:
        raise RuntimeError("wrk failed (%d): %s %s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    res["wrk_cpu"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    m = re.search(r"TLSSHIM handshakes=(\d+) resumed=(\d+) version=(\S+) cipher=(\S+) group=(\S+)", r.stderr)
    if m:
        res["tls_handshakes"] = int(m.group(1))
        res["tls_resumed"] = int(m.group(2))
        res["tls_params"] = "%s %s %s" % (m.group(3), m.group(4), m.group(5))
    return res


def core_times():
    """(busy, total) jiffies per CPU from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(x) for x in parts[1:]]
                idle = vals[3] + vals[4]
                out[parts[0][3:]] = (sum(vals[:8]) - idle, sum(vals[:8]))
    return out


def core_busy(a, b):
    return {c: 100.0 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in a}


def busy_seconds(a, b):
    return sum(b[c][0] - a[c][0] for c in a) / os.sysconf("SC_CLK_TCK")


def background_pct(seconds=1.0):
    """Busy % of all cores (100 = one core) while the benchmark itself is idle."""
    a = core_times()
    time.sleep(seconds)
    return 100.0 * busy_seconds(a, core_times()) / seconds


def wait_quiet(what, limit=None):
    """Other work on this machine (builds, fuzzers, tests) skews every number:
    wait up to BENCH_QUIET_WAIT seconds for it to stop, then go on and say so."""
    limit = float(os.environ.get("BENCH_QUIET_WAIT", "180")) if limit is None else limit
    deadline = time.time() + limit
    bg = background_pct()
    while bg > 10 and time.time() < deadline:
        log("machine busy (%.0f%% of a core used by other processes) before %s; waiting" % (bg, what))
        time.sleep(5)
        bg = background_pct()
    return bg


def sandgate_metric(name, metric):
    port = SANDGATE_ADMIN.get(name)
    if port is None:
        return {}
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(metric):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def measure(proc, name, scen, ids_file, shim, duration):
    port = PORTS[name][1 if scen["tls"] else 0] if name != "direct" else BACKEND_PORT
    if name == "direct":
        # wrk straight at one backend address, Host already localhost:PORT
        url_port = BACKEND_PORT
        a0 = backend_accepts()
        b0 = BACKEND.cpu_seconds()
        k0 = core_times()
        t0 = time.monotonic()
        res = run_wrk_direct(url_port, scen, ids_file, duration, shim)
        t1 = time.monotonic()
        k1 = core_times()
        busy = core_busy(k0, k1)
        ours = (BACKEND.cpu_seconds() - b0) + res["wrk_cpu"]
        res.update(wall=t1 - t0, cpu=None, rss_kib=None, up_conns=backend_accepts() - a0 - 1,
                   core0=busy.get(CLIENT_CPU), core1=busy.get(PROXY_CPU),
                   bg=max(0.0, 100.0 * (busy_seconds(k0, k1) - ours) / (t1 - t0)))
        return res
    a0 = backend_accepts()
    c0 = proc.cpu_seconds()
    b0 = BACKEND.cpu_seconds()
    k0 = core_times()
    t0 = time.monotonic()
    res = run_wrk(port, scen, ids_file, duration, shim)
    t1 = time.monotonic()
    c1 = proc.cpu_seconds()
    k1 = core_times()
    busy = core_busy(k0, k1)
    ours = (c1 - c0) + (BACKEND.cpu_seconds() - b0) + res["wrk_cpu"]
    res.update(wall=t1 - t0, cpu=c1 - c0, rss_kib=proc.rss_kib(), pss_kib=proc.pss_kib(),
               up_conns=backend_accepts() - a0 - 1, core0=busy.get(CLIENT_CPU), core1=busy.get(PROXY_CPU),
               bg=max(0.0, 100.0 * (busy_seconds(k0, k1) - ours) / (t1 - t0)))
    if not proc.alive():
        raise RuntimeError("%s died during %s:\n%s" % (name, scen["key"], tail(proc.logpath)))
    return res


def run_wrk_direct(port, scen, ids_file, duration, shim):
    url = "http://%s:%d%s" % (BACKEND_ADDRS[0], port, scen["path"])
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c%d" % scen["conns"], "-d%ds" % duration,
            "--timeout", "5s", "-s", os.path.join(HERE, "hosts.lua"), url, "--", ids_file, "direct"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in r.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            res = json.loads(line[len("BENCHJSON "):])
            res["wrk_cpu"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            return res
    raise RuntimeError("wrk (direct) failed: %s %s" % (r.stdout[-2000:], r.stderr[-2000:]))


def run_wrk_any(name, scen, ids_file, duration, shim):
    if name == "direct":
        return run_wrk_direct(BACKEND_PORT, scen, ids_file, duration, shim)
    return run_wrk(PORTS[name][1 if scen["tls"] else 0], scen, ids_file, duration, shim)


def summarize(runs, scen):
    """Median of each metric over the repetitions."""

    def med(key, f=lambda r, k: r[k]):
        vals = [f(r, key) for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    out = {}
    rps = [r["requests"] / (r["duration_us"] / 1e6) for r in runs]
    mibs = [r["bytes"] / (r["duration_us"] / 1e6) / 2**20 for r in runs]
    out["rps"] = statistics.median(rps)
    out["mibs"] = statistics.median(mibs)
    out["p50_ms"] = med("lat_p50_us") / 1000
    out["p99_ms"] = med("lat_p99_us") / 1000
    out["errors"] = max(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
                        for r in runs)
    out["requests"] = statistics.median([r["requests"] for r in runs])
    if runs[0].get("cpu") is not None:
        out["cpu_pct"] = statistics.median([100 * r["cpu"] / r["wall"] for r in runs])
        per = [r["requests"] / r["cpu"] if r["cpu"] > 0 else float("inf") for r in runs]
        out["req_per_cpu"] = statistics.median(per)
        out["mib_per_cpu"] = statistics.median(
            [r["bytes"] / 2**20 / r["cpu"] if r["cpu"] > 0 else float("inf") for r in runs])
        out["rss_mib"] = statistics.median([r["rss_kib"] for r in runs]) / 1024
    out["core0"] = statistics.median([r["core0"] for r in runs])
    out["core1"] = statistics.median([r["core1"] for r in runs])
    out["bg"] = max(r["bg"] for r in runs)
    out["up_per_1k"] = statistics.median([1000 * r["up_conns"] / max(1, r["requests"]) for r in runs])
    if runs[0].get("tls_handshakes") is not None:
        hs = sum(r["tls_handshakes"] for r in runs)
        out["resumed_pct"] = 100.0 * sum(r["tls_resumed"] for r in runs) / max(1, hs)
        out["tls_params"] = runs[0]["tls_params"]
    out["n"] = len(runs)
    return out


# ---------------------------------------------------------------- idle TLS


def idle_memory(work, boxes, certs, ids_file):
    rows = {}
    for name in ["sandgate", "nginx-best", "haproxy"]:
        proc = start_proxy(make_proxy(work, name, boxes, certs))
        try:
            for i in range(20):
                check_route(name, boxes[i][0], tls=(i % 2 == 0))
            time.sleep(0.3)
            base_rss, base_pss = proc.rss_kib(), proc.pss_kib()
            c = subprocess.Popen(["taskset", "-c", CLIENT_CPU, PY, os.path.join(HERE, "idle_tls.py"),
                                  str(PORTS[name][1]), str(IDLE_CONNS), ids_file, str(BACKEND_PORT)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            line = c.stdout.readline().split()
            open_s = time.monotonic() - t0
            opened, failed = int(line[1]), int(line[2])
            time.sleep(0.5)
            hs_rss, hs_pss = proc.rss_kib(), proc.pss_kib()
            c.stdin.write("go\n")
            c.stdin.flush()
            line = c.stdout.readline().split()
            ok, bad = int(line[1]), int(line[2])
            time.sleep(0.5)
            rq_rss, rq_pss = proc.rss_kib(), proc.pss_kib()
            c.stdin.write("go\n")
            c.stdin.flush()
            c.wait(timeout=60)
            rows[name] = dict(opened=opened, failed=failed, ok=ok, bad=bad, open_s=open_s,
                              base_rss=base_rss, hs_rss=hs_rss, rq_rss=rq_rss,
                              base_pss=base_pss, hs_pss=hs_pss, rq_pss=rq_pss)
            log("idle %s: %s" % (name, rows[name]))
        finally:
            proc.stop()
    return rows


# ---------------------------------------------------------------- WebSocket


def websocket_rows(procs, boxes):
    ws = Proc("ws-echo", [PY, os.path.join(HERE, "wsecho.py"), "server", ",".join(BACKEND_ADDRS), str(WS_PORT)],
              CLIENT_CPU, WORK).start()
    wait_port(BACKEND_ADDRS[0], WS_PORT, ws)
    sid, addr = boxes[0]
    # nginx-best is left out: its upstream blocks fix the backend port (18080)
    names = ["direct"] + [n for n in ["sandgate", "nginx-honest", "haproxy"] if n in procs]
    runs = {n: [] for n in names}
    try:
        for rep in range(REPS):
            for n in names:
                if n == "direct":
                    host, port, hh = addr, WS_PORT, "localhost:%d" % WS_PORT
                else:
                    host, port, hh = "127.0.0.1", PORTS[n][0], "%d-%s.sandbox.test" % (WS_PORT, sid)
                argv = ["taskset", "-c", CLIENT_CPU, PY, os.path.join(HERE, "wsecho.py"), "client", host,
                        str(port), hh]
                subprocess.run(argv + ["500", "64"], capture_output=True, timeout=60)  # warm-up
                c0 = procs[n].cpu_seconds() if n != "direct" else 0
                r = subprocess.run(argv + [str(WS_ROUND_TRIPS), "64"], capture_output=True, text=True, timeout=300)
                c1 = procs[n].cpu_seconds() if n != "direct" else 0
                res = json.loads(r.stdout.strip().splitlines()[-1])
                if "error" in res:
                    raise RuntimeError("ws %s: %s" % (n, res["error"]))
                res["cpu"] = c1 - c0 if n != "direct" else None
                runs[n].append(res)
    finally:
        ws.stop()
    out = {}
    for n, rs in runs.items():
        out[n] = dict(
            rts=statistics.median([r["n"] / r["wall_s"] for r in rs]),
            p50=statistics.median([r["p50_us"] for r in rs]),
            p99=statistics.median([r["p99_us"] for r in rs]),
            cpu_us=statistics.median([1e6 * r["cpu"] / r["n"] for r in rs]) if rs[0]["cpu"] is not None else None,
        )
    return out


# ---------------------------------------------------------------- report


def fmt_num(v, digits=0):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    if abs(v) >= 10000:
        return "{:,.0f}".format(v)
    return ("{:,.%df}" % digits).format(v)


def machine_info():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def ver(argv, rx=None):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()[0]
            return text
        except Exception:
            return "?"

    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "ingress"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (ingress/ modified)" if dirty else ""
    except Exception:
        commit = "?"
    return {
        "cpu": "%s, %d cores" % (model, os.cpu_count()),
        "mem": "%.0f GiB" % mem,
        "kernel": platform.release(),
        "sandgate": "%s, %s, binary sha256 %s" % (ver([SANDGATE_BIN, "--version"]), commit,
                                                   hashlib.sha256(open(SANDGATE_BIN, "rb").read()).hexdigest()[:12]),
        "nginx": ver(["/usr/sbin/nginx", "-v"]),
        "haproxy": ver(["/usr/sbin/haproxy", "-v"]),
        "wrk": ver(["wrk", "-v"]),
        "openssl": ver(["openssl", "version"]),
    }


def report(info, results, idle, ws, started, finished):
    L = []
    L.append("# sandgate vs nginx vs HAProxy")
    L.append("")
    L.append("Run %s, %s%s; %d repetition(s) of %d s per row (medians), rows interleaved per scenario." % (
        time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "QUICK mode, " if QUICK else "", "took %.0f s" % (finished - started), REPS, DURATION))
    L.append("")
    L.append("Machine: %s, %s, Linux %s. wrk (1 thread) and the backend nginx on core %s, the proxy on core %s "
             "(sandgate-2w: 2 workers on cores 0-1)." % (info["cpu"], info["mem"], info["kernel"], CLIENT_CPU, PROXY_CPU))
    L.append("Versions: %s; %s; %s; %s; %s." % (info["sandgate"], info["nginx"], info["haproxy"].split(" - ")[0],
                                               info["wrk"].split(" Copyright")[0], info["openssl"]))
    L.append("")
    L.append("Columns: req/s and MiB/s as wrk saw them; p50/p99 latency; proxy CPU = utime+stime of all its "
             "threads and processes over the run, as %% of one core; per CPU-s = requests (MiB for the 1 MiB rows) "
             "per proxy CPU-second; RSS after the run (nginx: master + worker); up/1k = new upstream "
             "connections the backend accepted per 1000 requests; core0 = how busy the client core (wrk + "
             "backend) was; bg = CPU used by anything else on the machine during the run, %% of one core (should "
             "be ~0; high values mean the row is disturbed); err = non-2xx + socket errors; vs best = sandgate / "
             "the best peer on that row (req/s; per CPU-s). Background load at start: %.0f%% of a core." % info.get("bg_start", 0))
    L.append("")
    L.append("| scenario | proxy | req/s | p50 ms | p99 ms | MiB/s | proxy CPU % | per CPU-s | RSS MiB | up/1k | core0 % | bg % | err | vs best (req/s; per CPU-s) |")
    L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for scen in SCENARIOS:
        if scen["key"] not in results:
            continue
        rows = results[scen["key"]]
        big = scen["path"] == "/1m"
        eff_key = "mib_per_cpu" if big else "req_per_cpu"
        peers = [p for p in PEERS if p in rows]
        best_rps = max(peers, key=lambda p: rows[p]["rps"]) if peers else None
        best_eff = max(peers, key=lambda p: rows[p][eff_key]) if peers else None
        first = True
        for name, r in rows.items():
            vs = ""
            if name.startswith("sandgate") and best_rps:
                vs = "%.2fx (%s); %.2fx (%s)" % (r["rps"] / rows[best_rps]["rps"], best_rps,
                                                 r[eff_key] / rows[best_eff][eff_key], best_eff)
            eff = r.get(eff_key)
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                scen["title"] if first else "", name, fmt_num(r["rps"]), fmt_num(r["p50_ms"], 2),
                fmt_num(r["p99_ms"], 2), fmt_num(r["mibs"], 1), fmt_num(r.get("cpu_pct")),
                (fmt_num(eff) + (" MiB" if big else "")) if eff is not None else "-",
                fmt_num(r.get("rss_mib"), 1), fmt_num(r["up_per_1k"], 1), fmt_num(r["core0"]), fmt_num(r["bg"]),
                r["errors"], vs))
            first = False
    tls_notes = []
    for key in ("conn_tls_resumed", "conn_tls_full", "ka_https"):
        if key in results:
            parts = ["%s %.0f%%" % (n, r["resumed_pct"]) for n, r in results[key].items() if "resumed_pct" in r]
            params = sorted(set(r["tls_params"] for r in results[key].values() if "tls_params" in r))
            tls_notes.append("%s: handshakes resumed (client's view): %s; negotiated: %s" % (
                key, ", ".join(parts), " / ".join(params)))
    if tls_notes:
        L.append("")
        for t in tls_notes:
            L.append("- " + t)
    if idle:
        L.append("")
        L.append("## %d idle TLS connections (memory per connection)" % IDLE_CONNS)
        L.append("")
        L.append("Fresh proxy, 20 requests, then %d TLS connections opened one by one (full handshakes, "
                 "client on core 0), then one 100 B keep-alive request on each. Memory is RSS (PSS in "
                 "brackets) summed over the proxy's processes; per-connection = growth / connections." % IDLE_CONNS)
        L.append("")
        L.append("| proxy | opened (failed) | handshakes/s | RSS before MiB | after handshake MiB | KiB/conn | after 1 request MiB | KiB/conn | requests ok (bad) |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for name, r in idle.items():
            n = max(1, r["opened"])
            L.append("| %s | %d (%d) | %s | %.1f | %.1f [%.1f] | %.1f | %.1f [%.1f] | %.1f | %d (%d) |" % (
                name, r["opened"], r["failed"], fmt_num(r["opened"] / r["open_s"]), r["base_rss"] / 1024,
                r["hs_rss"] / 1024, r["hs_pss"] / 1024, (r["hs_rss"] - r["base_rss"]) / n,
                r["rq_rss"] / 1024, r["rq_pss"] / 1024, (r["rq_rss"] - r["base_rss"]) / n, r["ok"], r["bad"]))
    if ws:
        L.append("")
        L.append("## WebSocket echo round trips")
        L.append("")
        L.append("One connection, %d sequential round trips of a 64-byte binary frame, Python client and Python "
                 "echo server on core 0 (their cost dominates: compare against `direct`)." % WS_ROUND_TRIPS)
        L.append("")
        L.append("| path | round trips/s | p50 us | p99 us | added p50 us | proxy CPU us / round trip |")
        L.append("|---|--:|--:|--:|--:|--:|")
        d50 = ws["direct"]["p50"]
        for n, r in ws.items():
            L.append("| %s | %s | %.0f | %.0f | %s | %s |" % (
                n, fmt_num(r["rts"]), r["p50"], r["p99"], "-" if n == "direct" else "%.0f" % (r["p50"] - d50),
                fmt_num(r["cpu_us"], 1)))
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- profile


SYSCALLS = ["read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "splice", "pipe2",
            "epoll_wait",
            "epoll_pwait", "epoll_ctl", "accept4", "connect", "close", "shutdown", "setsockopt", "getsockopt",
            "getsockname", "getpeername", "ioctl", "socket", "fcntl"]


def tcp_counters():
    """Machine-wide TCP counters: during a row only wrk, the backend and the
    proxy send, so per request they count the segments of every hop."""
    vals = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = open(path).read().splitlines()
        for head, body in zip(lines[::2], lines[1::2]):
            names, nums = head.split()[1:], body.split()[1:]
            if head.startswith("Tcp:") or head.startswith("TcpExt:"):
                vals.update(zip(names, map(int, nums)))
    return {k: vals.get(k, 0) for k in ("OutSegs", "TCPPureAcks", "DelayedACKs")}


def syscall_profile(work, boxes, certs, ids_file, shim, scen, seconds=4):
    """System calls per request of each proxy (perf tracepoints), one scenario."""
    events = ["raw_syscalls:sys_enter"] + ["syscalls:sys_enter_" + c for c in SYSCALLS] + ["context-switches"]
    rows = {}
    for name in ["sandgate"] + (["sandgate-b"] if SANDGATE_B_BIN else []) + PEERS:
        proc = start_proxy(make_proxy(work, name, boxes, certs))
        try:
            port = PORTS[name][1 if scen["tls"] else 0]
            run_wrk(port, scen, ids_file, 1, shim)
            pids = proc.pids()
            if name.startswith("nginx"):
                pids = [p for p in pids if p != proc.p.pid]  # the worker
            out = os.path.join(work, "perfstat-%s.txt" % name)
            ps = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(events), "-p",
                                   ",".join(str(p) for p in pids)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            tcp0 = tcp_counters()
            res = run_wrk(port, scen, ids_file, seconds, shim)
            tcp1 = tcp_counters()
            time.sleep(0.2)
            ps.send_signal(signal.SIGINT)
            ps.wait(timeout=30)
            counts = {}
            for line in open(out):
                parts = line.strip().split(",")
                if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                    counts[parts[2].split(":")[-1].replace("sys_enter_", "")] = float(parts[0])
            # requests during the perf window ~ wrk's count (perf starts before and stops after wrk)
            for k in tcp0:
                counts["tcp:" + k] = tcp1[k] - tcp0[k]
            rows[name] = {k: v / max(1, res["requests"]) for k, v in counts.items() if v}
        finally:
            proc.stop()
    return rows


def syscall_tables(work, boxes, certs, ids_file, shim, scens):
    """results/profile-syscalls.md: one table per scenario, every proxy."""
    outdir = os.path.join(HERE, "results")
    # system calls per request, every proxy
    lines = []
    for sc in scens:
        rows = syscall_profile(work, boxes, certs, ids_file, shim, sc)
        keys = ["sys_enter"] + [c for c in SYSCALLS if any(c in r for r in rows.values())]
        keys += [k for k in ("context-switches", "tcp:OutSegs", "tcp:TCPPureAcks", "tcp:DelayedACKs") if any(k in r for r in rows.values())]
        lines.append("### System calls per request, %s (perf stat tracepoints; tcp: = machine-wide TCP "
                     "counters per request, all hops)" % sc["title"])
        lines.append("")
        lines.append("| proxy | " + " | ".join("total" if k == "sys_enter" else k for k in keys) + " |")
        lines.append("|---|" + "--:|" * len(keys))
        for n, r in rows.items():
            lines.append("| %s | " % n + " | ".join("%.2f" % r.get(k, 0) for k in keys) + " |")
        lines.append("")
    with open(os.path.join(outdir, "profile-syscalls.md"), "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


def profile(work, boxes, certs, ids_file, shim):
    """Keep-alive HTTP on sandgate under perf (cpu-clock sampling) and
    callgrind, and system calls per request of every proxy; writes
    results/profile-*.txt."""
    scen = SCENARIOS[0]
    summary = []
    text = syscall_tables(work, boxes, certs, ids_file, shim, (SCENARIOS[0], SCENARIOS[1], SCENARIOS[4]))
    summary.append("syscalls per request: results/profile-syscalls.md")
    sys.stdout.write("\n" + text + "\n")
    summary += perf_profile(work, boxes, certs, ids_file, shim, scen)
    return summary + callgrind_rows(work, boxes, certs, ids_file, shim, scen)


def perf_profile(work, boxes, certs, ids_file, shim, scen, suffix=""):
    """sandgate under perf (cpu-clock sampling) on one scenario; writes
    results/profile-perf<suffix>.txt and profile-perf-callers<suffix>.txt."""
    outdir = os.path.join(HERE, "results")
    name = os.environ.get("BENCH_PERF_PROXY", "sandgate")
    if name != "sandgate":
        suffix += "-" + name
    summary = []
    port = PORTS[name][1 if scen["tls"] else 0]
    # perf: software clock sampling works in VMs without hardware counters
    proc = start_proxy(make_proxy(work, name, boxes, certs))
    try:
        run_wrk(port, scen, ids_file, 2, shim)
        pdata = os.path.join(work, "perf.data")
        pr = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4000", "-g", "-o", pdata, "-p",
                               ",".join(map(str, proc.pids()))], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        time.sleep(0.5)
        res = run_wrk(port, scen, ids_file, 5, shim)
        pr.send_signal(signal.SIGINT)
        pr.wait(timeout=30)
        rep = subprocess.run(["perf", "report", "-i", pdata, "--stdio", "--no-children", "--sort", "dso,symbol",
                              "-n", "-g", "none", "--percent-limit", "0.3"], capture_output=True, text=True)
        rep_dso = subprocess.run(["perf", "report", "-i", pdata, "--stdio", "--no-children", "--sort", "dso",
                                  "-n", "-g", "none"], capture_output=True, text=True)
        rep_callers = subprocess.run(["perf", "report", "-i", pdata, "--stdio", "--no-children", "--sort",
                                      "symbol", "-G", "--percent-limit", "2"], capture_output=True, text=True)
        if rep.returncode == 0 and "Samples" in rep.stdout:
            with open(os.path.join(outdir, "profile-perf%s.txt" % suffix), "w") as f:
                f.write("# %s, %s, %d requests in 5 s under perf\n" % (name, scen["title"], res["requests"]))
                f.write(rep_dso.stdout + "\n" + rep.stdout)
            with open(os.path.join(outdir, "profile-perf-callers%s.txt" % suffix), "w") as f:
                f.write(rep_callers.stdout)
            summary.append("perf: results/profile-perf%s.txt, results/profile-perf-callers%s.txt" % (suffix, suffix))
        else:
            summary.append("perf failed: %s" % rep.stderr[-300:])
    finally:
        proc.stop()
    return summary


def callgrind_rows(work, boxes, certs, ids_file, shim, scen, suffix=""):
    """callgrind: exact user-space instruction counts, ~50x slower; collection
    starts after start-up and a warm-up, so the counts are per request only.
    Writes results/profile-callgrind-<proxy><suffix>.txt; returns summary lines."""
    outdir = os.path.join(HERE, "results")
    summary = []
    for n in ["sandgate", "nginx-best", "haproxy"]:
        total, reqs, ann, ann2 = callgrind_proxy(work, n, boxes, certs, ids_file, shim, scen)
        head = "# %s, %s: %d requests while collecting; %s instructions (user space) " \
               "= %.0f per request\n" % (n, scen["title"], reqs, "{:,}".format(total), total / max(1, reqs))
        with open(os.path.join(outdir, "profile-callgrind-%s%s.txt" % (n, suffix)), "w") as f:
            f.write(head + ann)
        if n == "sandgate":
            with open(os.path.join(outdir, "profile-callgrind-sandgate%s-inclusive.txt" % suffix), "w") as f:
                f.write(head + ann2)
        summary.append(head.strip("# \n"))
    summary.append("callgrind: results/profile-callgrind-*%s.txt, results/callgrind.out.sandgate "
                   "(callgrind_annotate / kcachegrind)" % suffix)
    return summary


def callgrind_proxy(work, name, boxes, certs, ids_file, shim, scen):
    proc = make_proxy(work, name, boxes, certs)
    cg_out = os.path.join(work, "callgrind.out.%s" % name)
    argv = proc.argv
    if name.startswith("nginx"):
        argv = [a if a != "daemon off;" else "daemon off; master_process off;" for a in argv]
    proc.argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + cg_out] + argv
    start_proxy_slow(proc)
    try:
        port = PORTS[name][1 if scen["tls"] else 0]
        run_wrk(port, scen, ids_file, 3, shim)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.p.pid)], capture_output=True, timeout=60)
        res = run_wrk(port, scen, ids_file, 10, shim)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.p.pid)], capture_output=True, timeout=60)
    finally:
        proc.stop()
    ann = subprocess.run(["callgrind_annotate", "--auto=no", "--inclusive=no", cg_out], capture_output=True,
                         text=True).stdout
    ann2 = subprocess.run(["callgrind_annotate", "--auto=no", "--inclusive=yes", cg_out], capture_output=True,
                          text=True).stdout
    m = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", ann)
    total = int(m.group(1).replace(",", "")) if m else 0
    if name == "sandgate":
        shutil.copy(cg_out, os.path.join(HERE, "results", "callgrind.out.sandgate"))
    return total, res["requests"], ann, ann2


def start_proxy_slow(proc):
    proc.start()
    plain, tls = PORTS[proc.name]
    wait_port("127.0.0.1", plain, proc, timeout=60)


# ---------------------------------------------------------------- main

WORK = None
BACKEND = None


def preflight():
    """One benchmark at a time, and every fixed port free: sandgate listens
    with SO_REUSEPORT, so a leftover instance would silently take half the
    connections instead of failing."""
    lock = open("/tmp/sandgate-bench.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit("bench: another benchmark run holds /tmp/sandgate-bench.lock")
    busy = []
    addrs = [("127.0.0.1", p) for pair in PORTS.values() for p in pair]
    addrs += [("127.0.0.1", p) for p in SANDGATE_ADMIN.values()]
    addrs += [(a, BACKEND_PORT) for a in BACKEND_ADDRS] + [(a, WS_PORT) for a in BACKEND_ADDRS] + [STATUS_ADDR]
    for a in addrs:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(a)
        except OSError:
            busy.append("%s:%d" % a)
        finally:
            s.close()
    if busy:
        sys.exit("bench: ports in use (a previous run still going?): " + " ".join(busy))
    return lock


def report_from_json(path):
    d = json.load(open(path))
    sys.stdout.write(report(d["info"], d["results"], d.get("idle"), d.get("ws"), d.get("started", 0),
                            d.get("finished", 0)))


def main():
    global WORK, BACKEND, SANDGATE_BIN, SANDGATE_B_BIN
    if os.environ.get("BENCH_REPORT_FROM"):
        return report_from_json(os.environ["BENCH_REPORT_FROM"])
    started = time.time()
    if not os.access(SANDGATE_BIN, os.X_OK):
        sys.exit("sandgate binary not found: %s (make build)" % SANDGATE_BIN)
    lock = preflight()  # noqa: F841 (held until exit)
    WORK = tempfile.mkdtemp(prefix="sandgate-bench.")
    os.chmod(WORK, 0o755)  # nginx workers run as www-data
    # a private copy: a rebuild of build/sandgate during the run changes nothing
    copy = os.path.join(WORK, "sandgate.bin")
    shutil.copy2(SANDGATE_BIN, copy)
    SANDGATE_BIN = copy
    if SANDGATE_B_BIN:
        os.makedirs(os.path.join(WORK, "b"))
        copy = os.path.join(WORK, "b", "sandgate.bin")
        shutil.copy2(SANDGATE_B_BIN, copy)
        SANDGATE_B_BIN = copy
    atexit.register(stop_all)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: sys.exit(130))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)

    boxes = sandboxes()
    ids_file = os.path.join(WORK, "sandboxes.txt")
    with open(ids_file, "w") as f:
        f.write("".join(sid + "\n" for sid, _ in boxes))

    certdir = os.path.join(WORK, "certs")
    subprocess.run([os.path.join(ROOT, "certs", "make-dev-certs.sh"), "sandbox.test", certdir], check=True,
                   stdout=subprocess.DEVNULL)
    certs = {"pem": os.path.join(certdir, "sandbox.test.pem"), "key": os.path.join(certdir, "sandbox.test.key")}

    shim = os.path.join(WORK, "tlsshim.so")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", shim, os.path.join(HERE, "tlsshim.c"), "-ldl", "-lssl",
                    "-lcrypto"], check=True)

    bdir, bconf = write_backend(WORK)
    BACKEND = backend = Proc("backend", ["/usr/sbin/nginx", "-p", bdir, "-c", bconf, "-e", os.path.join(bdir, "error.log"),
                               "-g", "daemon off;"], CLIENT_CPU, bdir).start()
    wait_port(BACKEND_ADDRS[0], BACKEND_PORT, backend)
    wait_port(*STATUS_ADDR, backend)

    # One kind of profile alone, no table: the first of these variables set.
    def scens_of(var):
        return [next(sc for sc in SCENARIOS if sc["key"] == k) for k in os.environ[var].split(",")]

    def perf_rows(sc):
        return perf_profile(WORK, boxes, certs, ids_file, shim, sc, suffix="-" + sc["key"])

    def callgrind_only(sc):
        return callgrind_rows(WORK, boxes, certs, ids_file, shim, sc, suffix="-" + sc["key"])

    for var, per_scenario in (("BENCH_SYSCALLS", None), ("BENCH_PERF", perf_rows), ("BENCH_CALLGRIND", callgrind_only)):
        if not os.environ.get(var):
            continue
        if per_scenario is None:
            sys.stdout.write(syscall_tables(WORK, boxes, certs, ids_file, shim, scens_of(var)) + "\n")
        else:
            for sc in scens_of(var):
                for line in per_scenario(sc):
                    log(line)
        backend.stop()
        shutil.rmtree(WORK, ignore_errors=True)
        return

    info = machine_info()
    log("work dir %s; %s" % (WORK, info))
    info["bg_start"] = wait_quiet("start")

    def want(key):
        return not ONLY or key in ONLY

    idle = None
    if want("idle"):
        log("idle TLS connections: %d per proxy" % IDLE_CONNS)
        idle = idle_memory(WORK, boxes, certs, ids_file)

    names = ["sandgate", "nginx-best", "nginx-honest", "haproxy", "sandgate-2w"]
    if SANDGATE_B_BIN:
        names.append("sandgate-b")
    procs = {}
    for n in names:
        procs[n] = start_proxy(make_proxy(WORK, n, boxes, certs))
    for n in names:
        for i in range(8):
            check_route(n, boxes[i][0], tls=bool(i % 2))
    log("all proxies answer 200 over HTTP and HTTPS")

    results = {}
    raw = {}
    for scen in SCENARIOS:
        if not want(scen["key"]):
            continue
        wait_quiet(scen["key"], limit=float(os.environ.get("BENCH_QUIET_WAIT", "180")) / 3)
        order = ["sandgate"] + (["sandgate-b"] if SANDGATE_B_BIN else []) + ["nginx-best", "nginx-honest", "haproxy"]
        if scen.get("two_workers"):
            order.append("sandgate-2w")
        if scen.get("direct"):
            order.append("direct")
        runs = {n: [] for n in order}
        hs0 = sandgate_metric("sandgate", "sandgate_tls_handshakes_total")
        for rep in range(REPS):
            for n in order:
                run_wrk_any(n, scen, ids_file, WARMUP, shim)
                for attempt in range(RETRIES + 1):
                    r = measure(procs.get(n), n, scen, ids_file, shim, DURATION)
                    if r["bg"] <= BG_LIMIT or attempt == RETRIES:
                        break
                    log("%s %s disturbed (other processes used %.0f%% of a core); again" % (scen["key"], n, r["bg"]))
                    wait_quiet(scen["key"], limit=60)
                    run_wrk_any(n, scen, ids_file, WARMUP, shim)
                runs[n].append(r)
                log("%s rep %d %-13s %8.0f req/s  cpu %s  cores %.0f%%/%.0f%%  tls %s/%s  err %d" % (
                    scen["key"], rep + 1, n, r["requests"] / (r["duration_us"] / 1e6),
                    "%.2fs" % r["cpu"] if r.get("cpu") is not None else "-", r["core0"], r["core1"],
                    r.get("tls_resumed", "-"), r.get("tls_handshakes", "-"),
                    r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]))
        hs1 = sandgate_metric("sandgate", "sandgate_tls_handshakes_total")
        if scen["tls"]:
            log("%s sandgate handshakes (server's view): %s" % (
                scen["key"], {k.split("{")[1]: hs1[k] - hs0.get(k, 0) for k in hs1}))
        results[scen["key"]] = {n: summarize(rs, scen) for n, rs in runs.items()}
        raw[scen["key"]] = runs
        with open(os.path.join(HERE, "results", "partial.json"), "w") as f:
            json.dump({"info": info, "results": results, "idle": idle, "raw": raw}, f, indent=1)

    ws = None
    if want("ws"):
        log("WebSocket round trips")
        ws = websocket_rows(procs, boxes)

    for n in names:
        procs[n].stop()

    finished = time.time()
    with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
        json.dump({"info": info, "results": results, "idle": idle, "ws": ws, "started": started,
                   "finished": finished, "raw": raw}, f, indent=1)
    text = report(info, results, idle, ws, started, finished)
    with open(os.path.join(HERE, "results", "latest.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)

    if PROFILE:
        log("profiling sandgate on keep-alive HTTP")
        for line in profile(WORK, boxes, certs, ids_file, shim):
            log(line)
    backend.stop()
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
