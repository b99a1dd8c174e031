#!/usr/bin/python3
"""Soak test: mixed traffic against a real sandgate for a while, then a
clean shutdown, with fd / RSS stability and leak checks.

    /usr/bin/python3 tests/soak/soak.py                 # normal build, 600 s
    /usr/bin/python3 tests/soak/soak.py --asan --seconds 30
    /usr/bin/python3 tests/soak/soak.py --valgrind      # normal build under valgrind, 120 s

Traffic (each kind from --threads threads, until the time is up): keep-alive
request series, a new connection per request, uploads (Content-Length and
chunked, sha256 checked by the sandbox), downloads (length, chunked and
close-delimited, sha256 checked here), WebSocket echo sessions, and errors
(unknown sandbox, malformed / foreign host, a smuggling shape, a closed port,
an over-large head, a client that resets mid-download, a pipelined burst).
The sandboxes are the integration suite's RawBackend (HTTP/1.1) and
WsBackend (websockets) on 127.0.0.2.

fd count (/proc/PID/fd) and VmRSS are sampled every --sample-interval
seconds. See tests/soak/README.md for what "stable" means. Exit status: 0
when every check passed, 1 when one failed, 2 when the run could not be set
up.
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import httpio  # noqa: E402

httpio.RAW_CAP = 0  # the backends must not keep every byte of a long run

from backends import RawBackend, WsBackend, closed_port  # noqa: E402
from client import Closed, Conn, build_request  # noqa: E402
from httpio import iter_payload, payload_sha256, wait_closed  # noqa: E402

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "ThreadSanitizer")
DOMAIN = "sandbox.test"
MiB = 1 << 20


# -- sandgate process ------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def write_config(path, port, workers):
    with open(path, "w") as f:
        f.write("""listen: ["127.0.0.1:%d"]
domains: ["%s"]
workers: %d
access_log: "off"
log_level: "warn"
drain_timeout: "10s"
sandboxes:
  abc: {address: "127.0.0.2"}
timeouts:
  request_head: "10s"
  keepalive_idle: "4s"
  upstream_idle: "2s"
  upstream_connect: "2s"
  upstream_retry_window: "200ms"
  upstream_response_head: "60s"
  stream_idle: "60s"
""" % (port, DOMAIN, workers))


class Proc:
    def __init__(self, args, workdir, valgrind):
        self.workdir = workdir
        self.valgrind = valgrind
        self.port = free_port()
        self.config = os.path.join(workdir, "sandgate.yaml")
        write_config(self.config, self.port, args.workers)
        self.stderr_path = os.path.join(workdir, "sandgate.stderr")
        self.vg_log = os.path.join(workdir, "valgrind.log")
        cmd = [args.binary, "--config", self.config]
        if valgrind:
            cmd = ["valgrind", "--leak-check=full", "--error-exitcode=99", "--track-origins=no",
                   "--log-file=" + self.vg_log] + cmd
        env = dict(os.environ)
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        if args.sanitized:
            # ASan keeps freed memory in a quarantine (256 MiB by default) that
            # RSS would measure instead of sandgate; cap it. Leak checking at
            # exit stays on (detect_leaks is the default on Linux).
            opts = env.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "quarantine_size_mb=16:detect_leaks=1"
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "wb"),
                                     stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- traffic -----------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.err = {}
        self.bytes = {}
        self.errors = []

    def good(self, kind, nbytes=0):
        with self.lock:
            self.ok[kind] = self.ok.get(kind, 0) + 1
            self.bytes[kind] = self.bytes.get(kind, 0) + nbytes

    def bad(self, kind, what):
        with self.lock:
            self.err[kind] = self.err.get(kind, 0) + 1
            if len(self.errors) < 30:
                self.errors.append("%.1f %s: %s" % (time.monotonic(), kind, what))


class Traffic:
    def __init__(self, port, http_port, ws_port, scale, stats, deadline):
        self.port = port
        self.host = "%d-abc.%s" % (http_port, DOMAIN)
        self.ws_port = ws_port
        self.scale = scale  # payload size divisor (valgrind)
        self.stats = stats
        self.deadline = deadline
        self.stop = threading.Event()
        self.closed_port = closed_port("127.0.0.2")

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def size(self, choices):
        return max(1024, random.choice(choices) // self.scale)

    # each kind: one unit of work; raises AssertionError / OSError on failure
    def keepalive(self, rnd):
        with Conn(self.port, timeout=30) as c:
            for i in range(rnd.randint(5, 50)):
                if rnd.random() < 0.7:
                    r = c.request("GET", "/echo?ka=%d" % i, host=self.host)
                    assert r.status == 200 and r.json()["target"] == "/echo?ka=%d" % i, r
                else:
                    body = os.urandom(rnd.randint(0, 4096))
                    r = c.request("POST", "/echo?kp=%d" % i, host=self.host, body=body)
                    assert r.status == 200 and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest(), r
                self.stats.good("keepalive", len(r.body))
                if not self.running():
                    return

    def newconn(self, rnd):
        with Conn(self.port, timeout=30) as c:
            r = c.request("GET", "/status/%d" % rnd.choice((200, 201, 204, 404, 500)), host=self.host,
                          headers=[("Connection", "close")])
            assert r.status in (200, 201, 204, 404, 500) and r.header("X-Status-Test") == str(r.status), r
            how, extra = wait_closed(c.sock, 10)
            assert how in ("eof", "reset") and not extra, (how, extra[:100])
        self.stats.good("newconn")

    def upload(self, rnd):
        size = self.size((64 * 1024, 1 * MiB, 4 * MiB, 16 * MiB))
        chunked = rnd.random() < 0.5
        with Conn(self.port, timeout=60) as c:
            if chunked:
                c.send(b"POST /echo?up=1 HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % self.host.encode())
                for mv in iter_payload(size):
                    c.send(b"%x\r\n" % len(mv))
                    c.send(mv)
                    c.send(b"\r\n")
                c.send(b"0\r\n\r\n")
            else:
                c.send(b"POST /echo?up=1 HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (self.host.encode(), size))
                for mv in iter_payload(size):
                    c.send(mv)
            r = c.read_response()
        doc = r.json()
        assert r.status == 200 and doc["body_len"] == size and doc["body_sha256"] == payload_sha256(size), doc
        self.stats.good("upload", size)

    def download(self, rnd):
        size = self.size((64 * 1024, 1 * MiB, 8 * MiB, 32 * MiB))
        mode = rnd.choice(("cl", "chunked", "close"))
        h = hashlib.sha256()
        n = [0]

        def eat(mv):
            h.update(mv)
            n[0] += len(mv)

        with Conn(self.port, timeout=60) as c:
            c.send(b"GET /download?size=%d&mode=%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, mode.encode(), self.host.encode()))
            r = c.read_response(consume=eat)
        assert r.status == 200 and n[0] == size and h.hexdigest() == payload_sha256(size), (r, n[0], mode)
        assert r.framing == {"cl": "length", "chunked": "chunked", "close": "close"}[mode], r.framing
        self.stats.good("download", size)

    def websocket(self, rnd):
        import websockets

        uri = "ws://%d-abc.%s:%d/" % (self.ws_port, DOMAIN, self.port)
        sizes = [rnd.randint(1, 65536 // self.scale + 1) for _ in range(rnd.randint(1, 20))]

        async def session():
            async with websockets.connect(uri, host="127.0.0.1", port=self.port, max_size=None,
                                          open_timeout=30, close_timeout=10) as ws:
                total = 0
                for s in sizes:
                    msg = os.urandom(s)
                    await ws.send(msg)
                    got = await asyncio.wait_for(ws.recv(), 30)
                    assert got == msg, "echo mismatch (%d bytes)" % s
                    total += s
                return total

        total = asyncio.run(session())
        self.stats.good("websocket", total)

    def errors(self, rnd):
        which = rnd.choice(("not_found", "malformed", "foreign", "smuggle", "port_closed", "too_large",
                            "abort_download", "pipeline"))
        if which == "not_found":
            with Conn(self.port, timeout=30) as c:
                r = c.request("GET", "/", host="3000-nosuchbox.%s" % DOMAIN)
            assert r.status == 502 and r.error_name == "sandbox_not_found", r
        elif which == "malformed":
            with Conn(self.port, timeout=30) as c:
                r = c.request("GET", "/", host="x-.%s" % DOMAIN)
            assert r.status == 400 and r.error_name == "host_malformed", r
        elif which == "foreign":
            with Conn(self.port, timeout=30) as c:
                r = c.request("GET", "/", host="3000-abc.elsewhere.example")
            assert r.status == 421, r
        elif which == "smuggle":
            with Conn(self.port, timeout=30) as c:
                c.send(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % self.host.encode())
                r = c.read_response()
                how, extra = wait_closed(c.sock, 10)
            assert r.status == 400 and how in ("eof", "reset") and not extra, (r, how)
        elif which == "port_closed":
            with Conn(self.port, timeout=30) as c:
                r = c.request("GET", "/", host="%d-abc.%s" % (self.closed_port, DOMAIN))
            assert r.status == 502 and r.error_name == "port_not_open", r
        elif which == "too_large":
            with Conn(self.port, timeout=30) as c:
                try:
                    c.send(build_request("GET", "/", self.host, headers=[("X-Big", "b" * 70000)]))
                except OSError:
                    pass
                r = c.read_response()
            assert r.status == 431, r
        elif which == "abort_download":
            c = Conn(self.port, timeout=30)
            c.send(b"GET /download?size=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (64 * MiB, self.host.encode()))
            r = c.read_head()
            assert r.status == 200, r
            c.reader.stream(min(MiB, 64 * MiB // self.scale), lambda mv: None)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        elif which == "pipeline":
            n = rnd.randint(2, 30)
            with Conn(self.port, timeout=30) as c:
                c.send(b"".join(build_request("GET", "/echo?p=%d" % i, self.host) for i in range(n)))
                for i in range(n):
                    r = c.read_response()
                    assert r.status == 200 and r.json()["target"] == "/echo?p=%d" % i, (i, r)
        self.stats.good("errors:" + which)

    def loop(self, kind, seed):
        rnd = random.Random(seed)
        fn = getattr(self, kind)
        while self.running():
            try:
                fn(rnd)
            except Exception as e:  # every failure is counted and shown
                if not self.running() and isinstance(e, (OSError, Closed)):
                    return  # cut off by the end of the run
                self.stats.bad(kind, "%s: %s" % (type(e).__name__, str(e)[:300]))
                time.sleep(0.2)


KINDS = ("keepalive", "newconn", "upload", "download", "websocket", "errors")


# -- sampling ---------------------------------------------------------------------

class Sampler:
    def __init__(self, proc, interval):
        self.proc = proc
        self.interval = interval
        self.samples = []  # (t, fds, rss_kib)
        self.stop_ev = threading.Event()
        self.t0 = time.monotonic()
        self.t = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        s = (time.monotonic() - self.t0, self.proc.fd_count(), self.proc.rss_kib())
        self.samples.append(s)
        return s

    def _run(self):
        while not self.stop_ev.wait(self.interval):
            try:
                self.sample()
            except OSError:
                return

    def start(self):
        self.t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        self.t.join()


def prune_backend(be):
    """Drops what a RawBackend accumulates per request / connection."""
    with be.cond:
        be.events.clear()
        be.conns = [c for c in be.conns if c.closed is None]
        be.threads = be.threads[:1] + [t for t in be.threads[1:] if t.is_alive()]


def rss_verdict(samples, t_warm, t_end, slack_min_kib, slack_frac):
    """RSS is stable when, over the samples taken during traffic after the
    warm-up, the peak of the second half is at most the peak of the first
    half plus max(slack_min, slack_frac * that peak). Returns (ok, text)."""
    during = [s for s in samples if t_warm <= s[0] <= t_end]
    if len(during) < 4:
        return True, "too few samples after warm-up (%d) to judge the RSS trend" % len(during)
    half = len(during) // 2
    p1 = max(s[2] for s in during[:half])
    p2 = max(s[2] for s in during[half:])
    slack = max(slack_min_kib, int(p1 * slack_frac))
    ok = p2 <= p1 + slack
    return ok, "RSS peak first half %d KiB, second half %d KiB (allowed +%d KiB): %s" % (
        p1, p2, slack, "stable" if ok else "GROWING")


def rss_slope_kib_per_min(samples, t_warm, t_end):
    """Least-squares slope of RSS over the samples after warm-up (for the
    summary; informational, the verdict is rss_verdict's)."""
    pts = [(s[0], s[2]) for s in samples if t_warm <= s[0] <= t_end]
    if len(pts) < 2:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mr = sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return None
    return 60.0 * sum((t - mt) * (r - mr) for t, r in pts) / var


# -- main ------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None,
                    help="traffic duration (default 600; 120 with --valgrind)")
    ap.add_argument("--binary", default=None, help="sandgate binary (default $SANDGATE_BIN or build/sandgate)")
    ap.add_argument("--asan", action="store_true", help="use build-asan/sandgate and check sanitizer reports")
    ap.add_argument("--valgrind", action="store_true",
                    help="run the normal build under valgrind --leak-check=full --error-exitcode=99")
    ap.add_argument("--threads", type=int, default=None, help="threads per traffic kind (default 2; 1 with --valgrind)")
    ap.add_argument("--workers", type=int, default=2, help="sandgate worker threads")
    ap.add_argument("--sample-interval", type=float, default=None,
                    help="seconds between fd/RSS samples (default: seconds/40 clamped to 1..5)")
    ap.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, config)")
    args = ap.parse_args()

    args.sanitized = args.asan or os.environ.get("SANDGATE_SANITIZED") == "1"
    if args.binary is None:
        if args.asan:
            args.binary = os.path.join(ROOT, "build-asan", "sandgate")
        else:
            args.binary = os.environ.get("SANDGATE_BIN", os.path.join(ROOT, "build", "sandgate"))
    if args.valgrind and args.sanitized:
        print("soak: --valgrind needs the normal build, not the ASan one", file=sys.stderr)
        return 2
    if args.seconds is None:
        args.seconds = 120.0 if args.valgrind else 600.0
    if args.threads is None:
        args.threads = 1 if args.valgrind else 2
    if args.sample_interval is None:
        args.sample_interval = min(5.0, max(1.0, args.seconds / 40))
    if not os.access(args.binary, os.X_OK):
        print("soak: no executable %s (build it first)" % args.binary, file=sys.stderr)
        return 2
    if args.valgrind and not shutil.which("valgrind"):
        print("soak: valgrind is not installed (.ci/install-deps installs it)", file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="sandgate-soak-")
    mode = "valgrind" if args.valgrind else ("asan" if args.sanitized else "normal")
    slow = 20 if args.valgrind else (3 if args.sanitized else 1)
    print("soak: %s build %s, %.0f s, %d threads per kind, workdir %s" % (
        mode, args.binary, args.seconds, args.threads, workdir), flush=True)

    be = ws = proc = None
    failures = []
    summary = {"mode": mode, "binary": args.binary, "seconds": args.seconds}
    try:
        be = RawBackend("127.0.0.2", name="soak").start()
        ws = WsBackend("127.0.0.2").start()
        proc = Proc(args, workdir, args.valgrind)
        if not proc.wait_ready(10 * slow):
            print("soak: sandgate did not start; stderr:\n" + proc.stderr_text()[-3000:], file=sys.stderr)
            return 2
        time.sleep(0.5 * slow)
        sampler = Sampler(proc, args.sample_interval)
        t_start, fd_start, rss_start = sampler.sample()

        stats = Stats()
        deadline = time.monotonic() + args.seconds
        traffic = Traffic(proc.port, be.port, ws.port, 16 if args.valgrind else 1, stats, deadline)
        threads = []
        for kind in KINDS:
            for i in range(args.threads):
                t = threading.Thread(target=traffic.loop, args=(kind, hash((kind, i)) & 0xFFFF),
                                     name="soak-%s-%d" % (kind, i), daemon=True)
                threads.append(t)
        sampler.start()
        for t in threads:
            t.start()
        last_report = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            prune_backend(be)
            if proc.proc.poll() is not None:
                failures.append("sandgate exited during the run with status %s" % proc.proc.returncode)
                break
            if time.monotonic() - last_report >= 30:
                last_report = time.monotonic()
                s = sampler.samples[-1] if sampler.samples else (0, 0, 0)
                with stats.lock:
                    done, errs = sum(stats.ok.values()), sum(stats.err.values())
                print("soak: t=%.0fs ok=%d errors=%d fds=%d rss=%d KiB" % (s[0], done, errs, s[1], s[2]), flush=True)
        t_end = time.monotonic() - sampler.t0
        traffic.stop.set()
        for t in threads:
            t.join(120 * slow)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            failures.append("traffic threads still running 120 s after the end: %s" % stuck)

        # settle: idle keep-alive (4 s) and pooled upstream connections (2 s) expire
        settle_deadline = time.monotonic() + 20 * slow
        fd_end = None
        while time.monotonic() < settle_deadline and proc.proc.poll() is None:
            fd_end = proc.fd_count()
            if fd_end <= fd_start:
                break
            time.sleep(0.25)
        time.sleep(0.5)
        sampler.stop()
        if proc.proc.poll() is None:
            _, fd_end, rss_end = sampler.sample()
        else:
            rss_end = 0
        fds = [s[1] for s in sampler.samples]
        rsss = [s[2] for s in sampler.samples]
        if fd_end is None or fd_end > fd_start:
            failures.append("fd count not back to its start value after the traffic: start %d, end %s"
                            % (fd_start, fd_end))
        warm = min(t_end * 0.2, 60.0)
        slack_min = {"normal": 8 * 1024, "asan": 32 * 1024, "valgrind": 16 * 1024}[mode]
        rss_ok, rss_text = rss_verdict(sampler.samples, warm, t_end, slack_min, 0.10)
        if not rss_ok:
            failures.append(rss_text)

        # shutdown: SIGTERM drains and exits 0 (leak checks run at exit)
        exit_status = None
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
            try:
                exit_status = proc.proc.wait(30 * slow)
            except subprocess.TimeoutExpired:
                failures.append("sandgate still running %d s after SIGTERM; killed" % (30 * slow))
                proc.kill()
                exit_status = proc.proc.returncode
        else:
            exit_status = proc.proc.returncode
        if exit_status != 0:
            failures.append("sandgate exit status %s after SIGTERM (want 0%s)" % (
                exit_status, "; 99 = valgrind found errors" if args.valgrind else ""))
        err = proc.stderr_text()
        for m in SANITIZER_MARKERS:
            if m in err:
                failures.append("sanitizer report (%r) in sandgate's stderr" % m)
                break
        vg = {}
        if args.valgrind:
            try:
                with open(proc.vg_log) as f:
                    vgtext = f.read()
            except OSError:
                vgtext = ""
            for key in ("in use at exit", "All heap blocks were freed", "definitely lost", "indirectly lost",
                        "possibly lost", "ERROR SUMMARY"):
                line = [ln for ln in vgtext.splitlines() if key in ln]
                if line:
                    vg[key] = line[-1].split("==", 2)[-1].strip()
            if "ERROR SUMMARY: 0 errors" not in vgtext:
                failures.append("valgrind: %s" % vg.get("ERROR SUMMARY", "no ERROR SUMMARY in %s" % proc.vg_log))
        if stats.err:
            failures.append("%d traffic errors" % sum(stats.err.values()))
        if not stats.ok:
            failures.append("no traffic succeeded")

        # -- summary
        kinds = sorted(set(stats.ok) | set(stats.err))
        print("\n== soak summary (%s build, %.0f s of traffic)" % (mode, t_end))
        print("%-26s %10s %8s %14s" % ("kind", "ok", "errors", "bytes"))
        for k in kinds:
            print("%-26s %10d %8d %14d" % (k, stats.ok.get(k, 0), stats.err.get(k, 0), stats.bytes.get(k, 0)))
        print("%-26s %10d %8d" % ("total", sum(stats.ok.values()), sum(stats.err.values())))
        print("fds:  start %d  peak %d  end %s" % (fd_start, max(fds), fd_end))
        print("RSS:  start %d KiB  peak %d KiB  end %d KiB" % (rss_start, max(rsss), rss_end))
        print(rss_text)
        slope = rss_slope_kib_per_min(sampler.samples, warm, t_end)
        if slope is not None:
            print("RSS trend after warm-up: %+.0f KiB/min (least squares, informational)" % slope)
        print("exit status after SIGTERM: %s" % exit_status)
        for v in vg.values():
            print("valgrind: %s" % v)
        for e in stats.errors:
            print("error: " + e)
        if failures:
            print("SOAK FAILED:\n  " + "\n  ".join(failures))
            tail = err[-4000:]
            if tail:
                print("--- sandgate stderr (tail) ---\n" + tail)
        else:
            print("SOAK PASSED")
        summary.update({
            "traffic_seconds": t_end, "ok": stats.ok, "errors": stats.err, "bytes": stats.bytes,
            "fd": {"start": fd_start, "peak": max(fds), "end": fd_end},
            "rss_kib": {"start": rss_start, "peak": max(rsss), "end": rss_end},
            "rss_verdict": rss_text, "rss_slope_kib_per_min": slope, "exit_status": exit_status, "valgrind": vg,
            "samples": sampler.samples, "failures": failures, "error_samples": stats.errors,
        })
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
        return 1 if failures else 0
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        if proc is not None:
            proc.kill()
        if ws is not None:
            ws.stop()
        if be is not None:
            be.stop()
        if not args.keep and not failures:
            shutil.rmtree(workdir, ignore_errors=True)
        elif failures or args.keep:
            print("soak: logs kept in %s" % workdir)


if __name__ == "__main__":
    sys.exit(main())
