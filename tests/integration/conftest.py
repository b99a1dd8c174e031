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


def listening_tcp_ports():
    """Local ports of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


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

    def _other_listen_ports(self):
        """Ports besides `port` that must be listening before start() returns."""
        return ()

    def _wait_ready(self, timeout):
        """True once `port` accepts and every _other_listen_ports() is in
        LISTEN state. Workers bind their listeners one after another, so the
        first one accepting says nothing about the rest; the others are
        checked in /proc/net/tcp* rather than by connecting, so no test sees
        extra connections in its metrics or logs."""
        deadline = time.monotonic() + timeout
        accepted = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if not accepted:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    accepted = True
                except OSError:
                    pass
            if accepted and set(self._other_listen_ports()) <= listening_tcp_ports():
                return True
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


# ---------------------------------------------------------------------------
# Admin API helpers (test_admin.py, test_private.py, test_durability.py)
# ---------------------------------------------------------------------------

def wait_port(port, timeout, addr="127.0.0.1", proc=None):
    """True once (addr, port) accepts a TCP connection (False on timeout or
    when proc exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection((addr, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class AdminResponse:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body

    def header(self, name, default=None):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return default

    def json(self):
        import json

        return json.loads(self.body)

    def __repr__(self):
        return "<AdminResponse %d %r %r>" % (self.status, self.headers, self.body[:400])


class AdminClient:
    """Talks to sandgate's admin API (http.client, one connection reused
    until it fails). `token` is sent as `Authorization: Bearer <token>`
    unless a request passes its own headers / token=None."""

    _DEFAULT = object()

    def __init__(self, port, token=None, timeout=10.0):
        self.port = port
        self.token = token
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, headers=None, token=_DEFAULT):
        import http.client
        import json

        hs = dict(headers or {})
        tok = self.token if token is AdminClient._DEFAULT else token
        if tok is not None and "Authorization" not in hs:
            hs["Authorization"] = "Bearer %s" % tok
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hs.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=hs)
                r = self.conn.getresponse()
                data = r.read()
                resp = AdminResponse(r.status, r.getheaders(), data)
                if r.will_close:
                    self.close()
                return resp
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # a kept-alive connection closed under us: retry once, fresh
                self.close()
                if attempt:
                    raise

    def put(self, sid, doc, **kw):
        return self.request("PUT", "/v1/sandboxes/%s" % sid, body=doc, **kw)

    def get(self, sid, **kw):
        return self.request("GET", "/v1/sandboxes/%s" % sid, **kw)

    def delete(self, sid, **kw):
        return self.request("DELETE", "/v1/sandboxes/%s" % sid, **kw)

    def list_all(self, limit=1000):
        """Every record, following `next` page by page."""
        out = []
        after = None
        for _ in range(100000):
            q = "/v1/sandboxes?limit=%d" % limit + ("&after=%s" % after if after else "")
            r = self.request("GET", q)
            assert r.status == 200, r
            doc = r.json()
            out.extend(doc["sandboxes"])
            if doc["next"] is None:
                return out
            assert doc["next"] == doc["sandboxes"][-1]["id"], doc["next"]
            after = doc["next"]
        raise AssertionError("paging never ended")


def admin_config(admin_port, token=None, store=None, **overrides):
    """default_config() plus an `admin:` section on 127.0.0.1:admin_port."""
    admin = {"listen": ["127.0.0.1:%d" % admin_port]}
    if token is not None:
        admin["token"] = token
    if store is not None:
        admin["store"] = str(store)
    admin.update(overrides.pop("admin", {}) or {})
    return default_config(admin=admin, **overrides)


def attach_admin(sg, admin_port, token=None):
    """Waits for the admin listener and gives sg `.admin_port` and `.admin`."""
    if not wait_port(admin_port, 10 * SCALE, proc=sg.proc):
        raise RuntimeError("admin API not listening on %d; stderr:\n%s" % (admin_port, sg.stderr_text()))
    sg.admin_port = admin_port
    sg.admin = AdminClient(admin_port, token)
    return sg


@pytest.fixture
def admin_factory(sandgate_factory, tmp_path):
    """start(token=None, store=None|True|path, args=(), config=None,
    **config_overrides) -> Sandgate with `.admin` (AdminClient, carrying the
    token) and `.admin_port`. store=True uses tmp_path/sandboxes.wal. A
    full `config` must carry its own admin section: pass admin_port too."""

    def start(token=None, store=None, args=(), config=None, admin_port=None, **overrides):
        if store is True:
            store = tmp_path / "sandboxes.wal"
        if config is None:
            admin_port = free_port()
            config = admin_config(admin_port, token=token, store=store, **overrides)
        sg = sandgate_factory(config=config, args=args)
        return attach_admin(sg, admin_port, token)

    return start


def finish_exited(sg, timeout):
    """For a sandgate the test made exit (SIGTERM drain, SIGKILL): waits for
    it, marks it stopped so teardown does not complain, and returns
    (returncode, problem or None) where problem names a sanitizer report."""
    try:
        sg.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        sg.proc.kill()
        sg.proc.wait()
        sg.stopped = True
        return None, "still running after %.0fs; killed" % timeout
    sg.stopped = True
    err = sg.stderr_text()
    for m in SANITIZER_MARKERS:
        if m in err:
            sg.exit_problem = "sanitizer report (%r) in stderr\n%s" % (m, err[-6000:])
            return sg.proc.returncode, sg.exit_problem
    return sg.proc.returncode, None


def kill9(sg):
    """SIGKILL by PID; returns a sanitizer problem or None."""
    sg.proc.send_signal(signal.SIGKILL)
    rc, problem = finish_exited(sg, 10)
    assert rc == -signal.SIGKILL, rc
    return problem


# ---------------------------------------------------------------------------
# Operations helpers (test_ops.py, test_reload.py, test_proxy_protocol.py):
# several named listeners, the admin API, the access log, reload and drain,
# and a strict parser of the Prometheus text exposition format.


class AdminMetrics:
    """The admin API and /metrics of a sandgate whose admin listener is on
    127.0.0.1:self.admin_port (set by the owner)."""

    def admin(self, method, path, body=None, headers=(), timeout=10 * SCALE):
        from client import Conn

        hs = list(headers) + [("Connection", "close")]
        with Conn(self.admin_port, timeout=timeout) as c:
            return c.request(method, path, host="127.0.0.1:%d" % self.admin_port,
                             headers=hs, body=body)

    def metrics_text(self):
        r = self.admin("GET", "/metrics")
        assert r.status == 200, r
        ctype = r.header("Content-Type") or ""
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
        return r.body.decode("utf-8")

    def metrics(self):
        return parse_prometheus(self.metrics_text())

    def wait_metric(self, name, labels, pred, timeout=5 * SCALE):
        """Polls /metrics until pred(value) holds; returns the last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.metrics().value(name, **labels)
            if pred(v) or time.monotonic() >= deadline:
                return v
            time.sleep(0.05)


class OpsSandgate(AdminMetrics, Sandgate):
    """Sandgate with named listeners and an admin listener on fresh ports.

    `listeners` maps a name to the listener's extra YAML fields, e.g.
    {"plain": {}, "pp": {"proxy_protocol": True}, "cap": {"max_connections": 5}};
    the first one is `port` (used for the readiness check); all are in
    `ports[name]`. `admin_port` is the admin API. `config` must not contain
    `listen`; `admin` may carry other admin keys (e.g. token)."""

    def __init__(self, workdir, config, listeners, args=(), admin=True, name="opsgate"):
        super().__init__(workdir, config, (), None, name)
        self.base_config = config
        self.listener_spec = dict(listeners)
        self.raw_args = list(args)
        self.with_admin = admin
        self.ports = {}
        self.admin_port = None
        self.expect_exit = False  # the test stops the process itself

    def _full_config(self, cfg):
        cfg = dict(cfg)
        listen = []
        for name, extra in self.listener_spec.items():
            addr = "127.0.0.1:%d" % self.ports[name]
            listen.append(dict({"address": addr}, **extra) if extra else addr)
        cfg["listen"] = listen
        if self.with_admin:
            admin = dict(cfg.get("admin") or {})
            admin["listen"] = ["127.0.0.1:%d" % self.admin_port]
            cfg["admin"] = admin
        return cfg

    def start(self, attempts=3):
        err = None
        for _ in range(attempts):
            used = set()
            for name in self.listener_spec:
                p = free_port()
                while p in used:
                    p = free_port()
                used.add(p)
                self.ports[name] = p
            p = free_port()
            while p in used:
                p = free_port()
            self.admin_port = p
            self.port = self.ports[next(iter(self.listener_spec))]
            self.config = self._full_config(self.base_config)
            fmt = dict(self.ports, admin=self.admin_port, workdir=self.workdir)
            self.args = [a.format(**fmt) for a in self.raw_args]
            try:
                Sandgate.start(self, attempts=1)
            except RuntimeError as e:
                err = e
                if self.proc.poll() is None or "exited" not in str(e):
                    raise
                continue
            if self.with_admin and not self._wait_port(self.admin_port, 5 * SCALE):
                raise RuntimeError("admin API did not come up; stderr:\n" + self.stderr_text())
            return self
        raise err

    def _other_listen_ports(self):
        return [p for p in self.ports.values() if p != self.port]

    def _wait_port(self, port, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    # -- config and reload --------------------------------------------------
    def rewrite_config(self, cfg):
        """Writes a new config file (same listeners and admin) for a reload."""
        self.base_config = cfg
        with open(self.config_path, "w") as f:
            f.write(to_yaml(self._full_config(cfg)) + "\n")

    def write_config_text(self, text):
        with open(self.config_path, "w") as f:
            f.write(text)

    def reload_marks(self):
        t = self.stderr_text()
        return t.count("reload: applied"), t.count("reload rejected")

    def reload(self, timeout=10 * SCALE):
        """SIGHUP; waits for the outcome in the error log: 'applied' or
        'rejected'."""
        applied, rejected = self.reload_marks()
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            a, r = self.reload_marks()
            if a > applied:
                return "applied"
            if r > rejected:
                time.sleep(0.1)  # let every line of the rejection land
                return "rejected"
            time.sleep(0.02)
        raise AssertionError("no reload outcome logged within %.0fs; stderr:\n%s"
                             % (timeout, self.stderr_text()[-3000:]))

    def wait_log(self, text, count=1, timeout=5 * SCALE):
        """Waits until `text` occurs `count` times in stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stderr_text().count(text) >= count:
                return True
            time.sleep(0.02)
        raise AssertionError("%r not logged %d times within %.0fs; stderr:\n%s"
                             % (text, count, timeout, self.stderr_text()[-3000:]))

    # -- process ---------------------------------------------------------------
    def signal(self, signum):
        os.kill(self.pid, signum)

    def wait_exit(self, timeout):
        """Waits for the process to end; returns its exit status (None if it
        is still running after timeout)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.expect_exit and not self.stopped and self.proc.poll() is not None:
            # The test ended the process itself and checked how; still look
            # for sanitizer reports.
            self.stopped = True
            err = self.stderr_text()
            for m in SANITIZER_MARKERS:
                if m in err:
                    self.exit_problem = "sanitizer report (%r) in stderr\n%s" % (m, err[-6000:])
                    break
            return self.exit_problem
        return Sandgate.stop(self)

    def thread_names(self):
        out = []
        base = "/proc/%d/task" % self.pid
        for tid in os.listdir(base):
            try:
                with open("%s/%s/comm" % (base, tid)) as f:
                    out.append(f.read().strip())
            except OSError:
                pass
        return sorted(out)

    def listening_sockets(self, port):
        """Number of this process's sockets listening on 127.0.0.1:port."""
        inodes = set()
        for target in self.fds().values():
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        n = 0
        with open("/proc/%d/net/tcp" % self.pid) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and local == "0100007F:%04X" % port and inode in inodes:
                    n += 1
        return n


@pytest.fixture
def ops_factory(tmp_path):
    """start(config, listeners={"plain": {}}, args=(), admin=True) ->
    OpsSandgate. Stopped at teardown; an unclean exit fails the test."""
    started = []

    def start(config, listeners=None, args=(), admin=True):
        sg = OpsSandgate(str(tmp_path), config, listeners or {"plain": {}}, args, admin,
                         name="opsgate%d" % len(started))
        started.append(sg)
        return sg.start()

    yield start
    problems = [p for p in (sg.stop() for sg in started) if p]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def read_json_lines(path):
    """Every line of a JSON-lines file, parsed; a torn or non-JSON line
    fails the test."""
    import json

    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return []
    assert data.endswith(b"\n"), "last line not terminated: %r" % data[-200:]
    out = []
    for raw in data.split(b"\n")[:-1]:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise AssertionError("not a JSON line: %r (%s)" % (raw[:300], e))
        assert isinstance(doc, dict), raw
        out.append(doc)
    return out


def wait_json_lines(path, count, timeout=5 * SCALE):
    """Waits until path holds at least `count` JSON lines; returns them."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        if os.path.exists(path):
            lines = read_json_lines(path)
            if len(lines) >= count:
                return lines
        time.sleep(0.02)
    raise AssertionError("%s: %d lines after %.0fs, expected %d: %r"
                         % (path, len(lines), timeout, count, lines))


# -- Prometheus text format 0.0.4 ---------------------------------------------

import math  # noqa: E402
import re  # noqa: E402

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class PromMetrics:
    """families: {name: {"type", "help", "samples": [(sample_name, labels, value)]}};
    series: {(sample_name, frozenset(labels.items())): value}."""

    def __init__(self):
        self.families = {}
        self.series = {}

    def value(self, name, **labels):
        key = (name, frozenset(labels.items()))
        if key not in self.series:
            raise KeyError("no series %s%r" % (name, labels))
        return self.series[key]

    def samples(self, name):
        """[(labels dict, value)] of every series with this sample name."""
        return [(dict(k[1]), v) for k, v in self.series.items() if k[0] == name]

    def histogram(self, name, **labels):
        """(buckets [(le, cumulative)], sum, count)."""
        buckets = []
        for lab, v in self.samples(name + "_bucket"):
            le = lab.pop("le")
            if lab == labels:
                buckets.append((float(le), v))
        buckets.sort()
        return buckets, self.value(name + "_sum", **labels), self.value(name + "_count", **labels)


def _parse_labels(s, i, line):
    """Parses `{a="x",b="y"}` starting at s[i] == '{'; returns (dict, index
    after '}')."""
    assert s[i] == "{"
    i += 1
    labels = {}
    while True:
        if s[i] == "}":
            return labels, i + 1
        j = i
        while j < len(s) and (s[j].isalnum() or s[j] == "_"):
            j += 1
        name = s[i:j]
        assert _LABEL_NAME.match(name), "bad label name %r in %r" % (name, line)
        assert not name.startswith("__"), "reserved label name in %r" % line
        assert s[j:j + 2] == '="', "expected =\" after label %r in %r" % (name, line)
        j += 2
        val = []
        while True:
            assert j < len(s), "unterminated label value in %r" % line
            ch = s[j]
            if ch == "\\":
                nxt = s[j + 1]
                assert nxt in ('\\', '"', "n"), "bad escape \\%s in %r" % (nxt, line)
                val.append("\n" if nxt == "n" else nxt)
                j += 2
            elif ch == '"':
                j += 1
                break
            else:
                assert ch != "\n"
                val.append(ch)
                j += 1
        assert name not in labels, "duplicate label %r in %r" % (name, line)
        labels[name] = "".join(val)
        if s[j] == ",":
            j += 1
        else:
            assert s[j] == "}", "expected , or } in %r" % line
        i = j


def _parse_value(tok, line):
    if tok in ("+Inf", "Inf"):
        return math.inf
    if tok == "-Inf":
        return -math.inf
    if tok == "NaN":
        return math.nan
    assert re.match(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z", tok), "bad value %r in %r" % (tok, line)
    return float(tok)


def _family_of(sample_name, families):
    for suffix in ("_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix):
            base = sample_name[: -len(suffix)]
            if base in families and families[base]["type"] in ("histogram", "summary"):
                return base
    return sample_name


def parse_prometheus(text):
    """Strict parser of the text exposition format 0.0.4 as sandgate must
    write it: every family has HELP and TYPE before its samples, samples of a
    family are contiguous, no series twice, counters finite and >= 0,
    histograms with cumulative buckets ending in +Inf == _count."""
    assert text.endswith("\n"), "exposition must end with a newline"
    m = PromMetrics()
    fam = m.families
    current = None
    closed = set()
    for line in text.split("\n")[:-1]:
        assert line == line.strip() and line, "blank or padded line %r" % line
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert _METRIC_NAME.match(name), "bad metric name %r" % name
                assert name not in closed, "family %s resumed after other samples" % name
                f = fam.setdefault(name, {"type": None, "help": None, "samples": []})
                assert not f["samples"], "%s after samples of %s" % (parts[1], name)
                if parts[1] == "HELP":
                    assert f["help"] is None, "second HELP for %s" % name
                    f["help"] = parts[3] if len(parts) > 3 else ""
                else:
                    assert f["type"] is None, "second TYPE for %s" % name
                    assert len(parts) == 4 and parts[3] in _TYPES, "bad TYPE line %r" % line
                    f["type"] = parts[3]
                if current is not None and current != name:
                    closed.add(current)
                current = name
            continue
        i = 0
        while i < len(line) and line[i] not in "{ ":
            i += 1
        sname = line[:i]
        assert _METRIC_NAME.match(sname), "bad sample name %r" % line
        labels = {}
        if line[i] == "{":
            labels, i = _parse_labels(line, i, line)
        assert line[i] == " ", "expected a space before the value in %r" % line
        rest = line[i + 1:].split(" ")
        assert 1 <= len(rest) <= 2, "bad sample %r" % line
        value = _parse_value(rest[0], line)
        if len(rest) == 2:
            assert re.match(r"-?\d+\Z", rest[1]), "bad timestamp in %r" % line
        base = _family_of(sname, fam)
        assert base in fam, "sample %r without HELP/TYPE" % line
        f = fam[base]
        assert f["type"] is not None and f["help"] is not None, "%s lacks HELP or TYPE" % base
        assert base not in closed, "samples of %s are not contiguous" % base
        if current is not None and current != base:
            closed.add(current)
        current = base
        if f["type"] == "histogram":
            assert sname != base, "histogram %s has a bare sample" % base
            assert (sname == base + "_bucket") == ("le" in labels), "le misuse in %r" % line
        else:
            assert "le" not in labels or f["type"] == "untyped", line
        key = (sname, frozenset(labels.items()))
        assert key not in m.series, "duplicate series %r" % line
        m.series[key] = value
        f["samples"].append((sname, labels, value))
        if f["type"] == "counter":
            assert math.isfinite(value) and value >= 0, "counter %r" % line
    for name, f in fam.items():
        assert f["type"] and f["help"] is not None, "family %s incomplete" % name
        if f["type"] != "histogram":
            continue
        groups = {}
        for sname, labels, value in f["samples"]:
            rest = {k: v for k, v in labels.items() if k != "le"}
            g = groups.setdefault(frozenset(rest.items()), {"buckets": [], "sum": None, "count": None})
            if sname.endswith("_bucket"):
                g["buckets"].append((_parse_value(labels["le"], name), value))
            elif sname.endswith("_sum"):
                g["sum"] = value
            else:
                g["count"] = value
        for g in groups.values():
            b = g["buckets"]
            assert b and b[-1][0] == math.inf, "%s: last bucket is not +Inf" % name
            les = [le for le, _ in b]
            assert les == sorted(les) and len(set(les)) == len(les), "%s: le not ascending" % name
            vals = [v for _, v in b]
            assert vals == sorted(vals), "%s: buckets not cumulative %r" % (name, b)
            assert g["count"] == b[-1][1], "%s: _count != +Inf bucket" % name
            assert g["sum"] is not None and g["sum"] >= 0, "%s: _sum" % name
    return m


# ---------------------------------------------------------------------------
# DNS server (test_dns.py): dns_server.py (python3-dnslib) as a subprocess on
# 127.0.0.1, a JSON zone the test edits while it runs, per-name query counts
# and a mute switch.

DNS_ZONE = "sandboxes.test"
DNS_SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns_server.py")


class DnsServer:
    """A running dns_server.py. `records` maps a name relative to the zone
    to its entry (see dns_server.py's docstring); `write()` publishes them."""

    def __init__(self, workdir, zone=DNS_ZONE):
        self.workdir = workdir
        self.zone = zone
        self.zone_file = os.path.join(workdir, "dns_zone.json")
        self.stats_file = os.path.join(workdir, "dns_stats.json")
        self.mute_file = os.path.join(workdir, "dns_mute")
        self.ready_file = os.path.join(workdir, "dns_ready")
        self.stderr_path = os.path.join(workdir, "dns_server.stderr")
        self.records = {}
        self.ttl = 30
        # The SOA minimum: deliberately longer than sandgate's negative_ttl,
        # which (not this) must bound how long NXDOMAIN is remembered.
        self.negative_ttl = 30
        self.proc = None
        self.port = None
        self._last_sig = None

    # -- process -------------------------------------------------------------
    def start(self):
        import json

        self.write()
        for p in (self.ready_file, self.mute_file):
            if os.path.exists(p):
                os.unlink(p)
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", DNS_SERVER_SCRIPT, "--port", "0", "--addr", "127.0.0.1",
             "--zone-file", self.zone_file, "--stats-file", self.stats_file,
             "--mute-file", self.mute_file, "--ready-file", self.ready_file],
            stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "wb"), stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dns_server.py exited with %s:\n%s" % (self.proc.returncode, self.stderr_text()))
            if os.path.exists(self.ready_file):
                with open(self.ready_file) as f:
                    self.port = int(f.read().strip())
                with open(self.stats_file) as f:
                    json.load(f)
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("dns_server.py not ready within 15s:\n" + self.stderr_text())

    def stop(self):
        """SIGTERM by PID, SIGKILL after 5 s. Returns a problem or None."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else (
                "dns_server.py exited during the test with %s:\n%s" % (self.proc.returncode, self.stderr_text()))
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "dns_server.py ignored SIGTERM"
        return None

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def sandgate_conf(self, **overrides):
        """The `dns:` section for sandgate (these tests' defaults)."""
        conf = {"zone": self.zone, "servers": [self.address], "timeout": "300ms", "tries": 1,
                "ttl_min": "1s", "ttl_max": "5m", "negative_ttl": "1s"}
        conf.update(overrides)
        return conf

    # -- zone ------------------------------------------------------------------
    def write(self):
        """Publishes self.records atomically; the server sees the change at its
        next query (it compares mtime, size and inode)."""
        import json

        doc = {"zone": self.zone, "ttl": self.ttl, "negative_ttl": self.negative_ttl,
               "records": self.records}
        tmp = self.zone_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.zone_file)
        st = os.stat(self.zone_file)
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._last_sig:
            # same size, recycled inode, same coarse timestamp: make it differ
            os.utime(self.zone_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
            st = os.stat(self.zone_file)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        self._last_sig = sig

    def set(self, name, **entry):
        """Sets (replaces) one name's entry, e.g. set("box", A="127.0.0.2",
        TXT=["k=v"], ttl=1), and publishes the zone."""
        self.records[name] = entry
        self.write()

    def remove(self, name):
        self.records.pop(name, None)
        self.write()

    def mute(self):
        open(self.mute_file, "w").close()

    def unmute(self):
        if os.path.exists(self.mute_file):
            os.unlink(self.mute_file)

    # -- counters --------------------------------------------------------------
    def stats(self):
        import json

        with open(self.stats_file) as f:
            return json.load(f)

    def fqdn(self, name):
        return "%s.%s" % (name, self.zone)

    def queries(self, name, qtype="A"):
        """Queries of this type received for <name>.<zone> (dropped ones too)."""
        per = self.stats()["names"].get(self.fqdn(name).lower(), {})
        return per.get(qtype, 0) if qtype != "total" else per.get("total", 0)


@pytest.fixture
def dns_server(tmp_path):
    """A DnsServer on 127.0.0.1 (free port), empty zone `sandboxes.test`;
    stopped by PID at teardown."""
    d = tmp_path / "dns"
    d.mkdir()
    srv = DnsServer(str(d)).start()
    yield srv
    problem = srv.stop()
    if problem:
        pytest.fail(problem, pytrace=False)
