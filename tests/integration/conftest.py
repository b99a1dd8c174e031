"""Fixtures for sandgate's integration tests: start the real binary with an
inline YAML config, real backends on 127.0.0.2 / 127.0.0.3, and check on
teardown that sandgate exited cleanly (no crash, no sanitizer report)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from backends import RawBackend, backend_pair  # noqa: E402

SANDGATE_BIN = os.environ.get("SANDGATE_BIN", "/work/main/build/sandgate")
SANITIZED = os.environ.get("SANDGATE_SANITIZED") == "1"
# Multiplier for waits and time bounds that depend on sandgate's own speed.
SCALE = 3.0 if SANITIZED else 1.0
RSS_GROWTH_LIMIT_KIB = (128 if SANITIZED else 32) * 1024

DOMAIN = "sandbox.test"
MASK = "localhost:${PORT}"

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "ThreadSanitizer")


def free_port(addr="127.0.0.1"):
    s = socket.socket()
    s.bind((addr, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    import json

    return json.dumps(str(v))


def to_yaml(obj, indent=0):
    """Block-style YAML: mappings and lists nest, strings are double-quoted."""
    pad = "  " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append("%s%s:" % (pad, k))
                out.append(to_yaml(v, indent + 1))
            elif isinstance(v, dict):
                out.append("%s%s: {}" % (pad, k))
            elif isinstance(v, list):
                out.append("%s%s: []" % (pad, k))
            else:
                out.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)):
                out.append("%s-" % pad)
                out.append(to_yaml(v, indent + 1))
            else:
                out.append("%s- %s" % (pad, _yaml_scalar(v)))
    return "\n".join(out)


def fmt_duration(seconds):
    return "%gs" % seconds


class Sandgate:
    """A running sandgate process."""

    def __init__(self, workdir, config, args=(), listen_port=None, name="sandgate"):
        self.workdir = workdir
        self.config = config
        self.args = list(args)
        self.port = listen_port
        self.name = name
        self.proc = None
        self.stopped = False
        self.exit_problem = None

    # -- process -----------------------------------------------------------
    def start(self, attempts=3):
        last = None
        for _ in range(attempts):
            if self.port is None or last is not None:
                self.port = free_port()
            cfg = dict(self.config)
            cfg.setdefault("listen", ["127.0.0.1:%d" % self.port])
            self.config_path = os.path.join(self.workdir, "%s.yaml" % self.name)
            with open(self.config_path, "w") as f:
                f.write(to_yaml(cfg) + "\n")
            self.stderr_path = os.path.join(self.workdir, "%s.stderr" % self.name)
            self.stdout_path = os.path.join(self.workdir, "%s.stdout" % self.name)
            env = dict(os.environ)
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
            self.proc = subprocess.Popen(
                [SANDGATE_BIN, "--config", self.config_path] + self.args,
                stdout=open(self.stdout_path, "wb"),
                stderr=open(self.stderr_path, "wb"),
                stdin=subprocess.DEVNULL,
                env=env,
            )
            if self._wait_ready(10 * SCALE):
                return self
            last = self.proc.poll()
            if last is None:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("sandgate did not accept on port %d within %.0fs; stderr:\n%s"
                                   % (self.port, 10 * SCALE, self.stderr_text()))
        raise RuntimeError("sandgate exited with %s at startup; stderr:\n%s" % (last, self.stderr_text()))

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                s.close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    @property
    def pid(self):
        return self.proc.pid

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, then SIGKILL after a grace period. Returns a problem
        description or None when the exit was clean."""
        if self.stopped:
            return self.exit_problem
        self.stopped = True
        problems = []
        if self.proc.poll() is not None:
            problems.append("sandgate exited during the test with status %s" % self.proc.returncode)
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5 * SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problems.append("sandgate ignored SIGTERM for %.0fs and was killed" % (5 * SCALE))
            rc = self.proc.returncode
            if rc not in (0, -signal.SIGTERM) and not problems:
                problems.append("sandgate exit status %s after SIGTERM" % rc)
        err = self.stderr_text()
        for m in SANITIZER_MARKERS:
            if m in err:
                problems.append("sanitizer report (%r) in stderr" % m)
                break
        if problems:
            self.exit_problem = "; ".join(problems) + "\n--- stderr (tail) ---\n" + err[-6000:]
        return self.exit_problem

    # -- helpers -----------------------------------------------------------
    def url(self, path="/"):
        """URL that reaches sandgate; pass the sandbox Host as a header."""
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def host(self, port, sid="abc", with_port=True, domain=DOMAIN):
        """Host header value for <port>-<sid>.<domain>[:listen port]."""
        h = "%s-%s.%s" % (port, sid, domain)
        return "%s:%d" % (h, self.port) if with_port else h

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fds(self):
        out = {}
        d = "/proc/%d/fd" % self.pid
        for n in os.listdir(d):
            try:
                out[n] = os.readlink(os.path.join(d, n))
            except OSError:
                pass
        return out

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def alive(self):
        return self.proc.poll() is None


def default_config(**overrides):
    cfg = {
        "domains": [DOMAIN],
        "workers": 1,
        "sandboxes": {
            "abc": {"address": "127.0.0.2", "mask": MASK},
            "def": {"address": "127.0.0.3"},
        },
        "timeouts": {
            "request_head": "5s",
            "keepalive_idle": "75s",
            "upstream_connect": "5s",
            "upstream_retry_window": "1.5s",
            "upstream_response_head": "300s",
            "stream_idle": "10m",
            "upstream_idle": "60s",
        },
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            merged = dict(cfg[k])
            merged.update(v)
            cfg[k] = merged
        else:
            cfg[k] = v
    return cfg


@pytest.fixture
def sandgate_factory(tmp_path):
    """start(config=None, args=(), **config_overrides) -> Sandgate. All
    instances are stopped at teardown; an unclean exit fails the test."""
    started = []

    def start(config=None, args=(), listen_port=None, **overrides):
        cfg = config if config is not None else default_config(**overrides)
        sg = Sandgate(str(tmp_path), cfg, args, listen_port, name="sandgate%d" % len(started))
        started.append(sg)
        return sg.start()

    yield start
    problems = [p for p in (sg.stop() for sg in started) if p]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def backends():
    """(abc, def): RawBackends on 127.0.0.2:P and 127.0.0.3:P (same P)."""
    a, b = backend_pair()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def sg(sandgate_factory):
    """sandgate with the default test config (abc masked at 127.0.0.2, def
    unmasked at 127.0.0.3)."""
    return sandgate_factory()


@pytest.fixture
def raw_backend_factory():
    made = []

    def make(addr="127.0.0.2", port=0, name=None):
        b = RawBackend(addr, port, name=name).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def blackhole():
    """(addr, port) where TCP connects hang: a listen(0) socket that never
    accepts, its accept queue filled first so further SYNs are dropped."""
    addr = "127.0.0.4"
    ls = socket.socket()
    ls.bind((addr, 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fills = []
    for _ in range(2):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect((addr, port))
        except BlockingIOError:
            pass
        fills.append(c)
    time.sleep(0.1)
    # sanity: a further connect really hangs
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(socket.timeout):
        probe.connect((addr, port))
    probe.close()
    yield addr, port
    for c in fills:
        c.close()
    ls.close()


def pytest_report_header(config):
    return "sandgate binary: %s (sanitized=%s)" % (SANDGATE_BIN, SANITIZED)
