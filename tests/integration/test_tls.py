"""TLS termination: certificate choice by SNI, protocol versions, ALPN,
session resumption across workers, SNI/Host agreement (421), redirects from
plain listeners, reload of certificates (good and broken), hostile or silent
clients, certificate checks at startup, and streaming over TLS.

Every sandgate here has a plain listener (sg.port) and a TLS listener
(sg.tls_port) on 127.0.0.1; certificates come from a throw-away CA
(tls_certs.ScratchCA) so tests can choose names, serials and validity."""

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings

import pytest
import websockets

from backends import WsBackend
from client import Closed, Conn, build_request
from conftest import (AdminMetrics, RSS_GROWTH_LIMIT_KIB, SANDGATE_BIN, SANITIZED, SANITIZER_MARKERS, SCALE, Sandgate,
                      default_config, free_port, to_yaml)
from httpio import BLOCK, SockReader, iter_payload, payload_sha256, wait_closed
from tls_certs import ScratchCA, served_cert, write_other_key

GiB = 1 << 30


# ---------------------------------------------------------------------------
# sandgate with a plain and a TLS listener


class TlsSandgate(AdminMetrics, Sandgate):
    """Sandgate with listeners 127.0.0.1:port (plain) and 127.0.0.1:tls_port
    (TLS). `args` may use {port} and {tls_port}. A test that configures an
    admin listener sets `admin_port` to use metrics()."""

    def __init__(self, workdir, config, args=(), name="tlsgate"):
        super().__init__(workdir, config, (), None, name)
        self.base_config = config
        self.raw_args = list(args)
        self.tls_port = None
        self.admin_port = None

    def _full_config(self, cfg):
        cfg = dict(cfg)
        cfg["listen"] = ["127.0.0.1:%d" % self.port,
                         {"address": "127.0.0.1:%d" % self.tls_port, "tls": True}]
        return cfg

    def start(self, attempts=3):
        err = None
        for _ in range(attempts):
            self.port = free_port()
            self.tls_port = free_port()
            while self.tls_port == self.port:
                self.tls_port = free_port()
            self.config = self._full_config(self.base_config)
            self.args = [a.format(port=self.port, tls_port=self.tls_port) for a in self.raw_args]
            try:
                return Sandgate.start(self, attempts=1)
            except RuntimeError as e:
                err = e
                if self.proc.poll() is None or "exited" not in str(e):
                    raise
        raise err

    def _other_listen_ports(self):
        return [self.tls_port]

    def rewrite_config(self, cfg):
        """Writes a new config file (same listeners) for the next reload."""
        self.base_config = cfg
        with open(self.config_path, "w") as f:
            f.write(to_yaml(self._full_config(cfg)) + "\n")

    def _reload_marks(self):
        t = self.stderr_text()
        return t.count("reload: applied"), t.count("reload rejected")

    def reload(self, timeout=10 * SCALE):
        """SIGHUP; waits for the outcome. Returns 'applied' or 'rejected'."""
        applied, rejected = self._reload_marks()
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            a, r = self._reload_marks()
            if a > applied:
                return "applied"
            if r > rejected:
                time.sleep(0.05)  # let the whole rejection (several lines) land
                return "rejected"
            time.sleep(0.02)
        raise AssertionError("no reload outcome logged within %.0fs; stderr:\n%s"
                             % (timeout, self.stderr_text()[-3000:]))

    def tls_host(self, port, sid="abc", domain="sandbox.test", with_port=True):
        h = "%d-%s.%s" % (port, sid, domain)
        return "%s:%d" % (h, self.tls_port) if with_port else h

    def worker_runs(self):
        """{tid: times scheduled} for every thread except the main one."""
        out = {}
        base = "/proc/%d/task" % self.pid
        for tid in os.listdir(base):
            if int(tid) == self.pid:
                continue
            try:
                with open("%s/%s/schedstat" % (base, tid)) as f:
                    out[int(tid)] = int(f.read().split()[2])
            except OSError:
                pass
        return out


@pytest.fixture
def ca(tmp_path):
    return ScratchCA(tmp_path / "pki")


@pytest.fixture
def tls_factory(tmp_path):
    """start(config, args=()) -> TlsSandgate; stopped at teardown, where an
    unclean exit (crash, sanitizer report, non-zero status) fails the test."""
    started = []

    def start(config, args=()):
        sg = TlsSandgate(str(tmp_path), config, args, name="tlsgate%d" % len(started))
        started.append(sg)
        return sg.start()

    yield start
    problems = [p for p in (sg.stop() for sg in started) if p]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def cert_entries(certs):
    """certs: Leaf or (Leaf, True) for the default, or a ready dict."""
    out = []
    for c in certs:
        if isinstance(c, dict):
            out.append(c)
            continue
        leaf, dflt = c if isinstance(c, tuple) else (c, False)
        e = {"cert": leaf.chain, "key": leaf.key}
        if dflt:
            e["default"] = True
        out.append(e)
    return out


def tls_config(certs, tls=None, **overrides):
    t = {"certificates": cert_entries(certs), "handshake_timeout": "10s"}
    t.update(tls or {})
    cfg = default_config(**overrides)
    cfg["tls"] = t
    return cfg


# ---------------------------------------------------------------------------
# client side


class TlsConn(Conn):
    """Conn over TLS: the same strict response reader on an SSLSocket."""

    def __init__(self, port, ctx, sni, timeout=10.0, session=None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni, session=session)
        except BaseException:
            raw.close()
            raise
        self.reader = SockReader(self.sock)


def no_sni_context(ca):
    ctx = ca.client_context()
    ctx.check_hostname = False  # no SNI means no name to check; the chain is still verified
    return ctx


def handshake(sg, ctx, sni):
    """One handshake; returns (serial, SANs, version, alpn) of the session."""
    with TlsConn(sg.tls_port, ctx, sni) as c:
        serial, names = served_cert(c.sock)
        return serial, names, c.sock.version(), c.sock.selected_alpn_protocol()


def hget(doc, name):
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


def tls_get(sg, ctx, sni, host, target="/echo", headers=()):
    with TlsConn(sg.tls_port, ctx, sni) as c:
        return c.request("GET", target, host=host, headers=headers)


# ---------------------------------------------------------------------------
# certificate choice


def test_sni_picks_exact_then_wildcard_then_default(tls_factory, ca, backends, tmp_path):
    """Three certificates: a wildcard listed first, an exact name listed
    second, and a third marked default. Exact beats the earlier wildcard; the
    wildcard covers one label only; unknown / absent SNI gets the default.
    Paths in the file are relative to the config file's directory."""
    a, _ = backends
    exact_name = "%d-abc.sandbox.test" % a.port
    wild = ca.issue(["*.sandbox.test"], "wild")
    exact = ca.issue([exact_name], "exact", key_type="rsa")
    dflt = ca.issue(["default.sandbox.test"], "dflt")
    rel = lambda p: os.path.relpath(p, str(tmp_path))  # noqa: E731
    cfg = tls_config([{"cert": rel(wild.chain), "key": rel(wild.key)},
                      {"cert": rel(exact.chain), "key": rel(exact.key)},
                      {"cert": rel(dflt.chain), "key": rel(dflt.key), "default": True}])
    assert not cfg["tls"]["certificates"][0]["cert"].startswith("/")
    sg = tls_factory(cfg)
    ctx = ca.client_context()
    assert handshake(sg, ctx, exact_name)[:2] == (exact.serial, [exact_name])
    assert handshake(sg, ctx, "%d-zzz.sandbox.test" % a.port)[:2] == (wild.serial, ["*.sandbox.test"])
    assert handshake(sg, ctx, "%d-abc.SANDBOX.test" % (a.port + 1))[0] == wild.serial
    loose = no_sni_context(ca)
    assert handshake(sg, loose, None)[0] == dflt.serial, "no SNI must get the default certificate"
    assert handshake(sg, loose, "unknown.example")[0] == dflt.serial
    assert handshake(sg, loose, "a.b.sandbox.test")[0] == dflt.serial, "*.d must not cover two labels"
    # the exact certificate really serves requests for its name
    r = tls_get(sg, ctx, exact_name, sg.tls_host(a.port))
    assert r.status == 200, r
    assert r.json()["backend"] == "abc"
    # without SNI the default certificate stands for the connection: it does
    # not cover the sandbox host, so that is misdirected
    r = tls_get(sg, loose, None, sg.tls_host(a.port), target="/echo?nosni=1")
    assert r.status == 421 and r.error_name == "misdirected", r
    assert b"nosni=1" not in a.raw_all()


def test_tls_cert_flags_first_is_default(tls_factory, ca, backends):
    """--listen/--listen-tls/--tls-cert from the command line; the first
    --tls-cert replaces the file's certificates and is the default."""
    a, _ = backends
    other = ca.issue(["*.sandbox.test"], "file-only")
    first = ca.issue(["first.sandbox.test"], "first")
    second = ca.issue(["*.sandbox.test"], "second")
    sg = tls_factory(tls_config([other]), args=[
        "--listen", "127.0.0.1:{port}", "--listen-tls", "127.0.0.1:{tls_port}",
        "--tls-cert", "%s,%s" % (first.chain, first.key),
        "--tls-cert", "%s,%s" % (second.chain, second.key)])
    assert handshake(sg, no_sni_context(ca), None)[0] == first.serial
    assert handshake(sg, ca.client_context(), "x.sandbox.test")[0] == second.serial
    r = tls_get(sg, ca.client_context(), "%d-abc.sandbox.test" % a.port, sg.tls_host(a.port))
    assert r.status == 200, r
    # the file's certificate was replaced, not kept alongside
    assert handshake(sg, ca.client_context(), "y.sandbox.test")[0] != other.serial


# ---------------------------------------------------------------------------
# protocol versions, ALPN


def _tls11_context(trust_ca):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(trust_ca.ca_path)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


def _control_tls11_server(leaf):
    """A local TLS server that accepts TLS 1.1: proves the client context
    really offers TLS 1.1, so sandgate's refusal is sandgate's doing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        sctx.minimum_version = ssl.TLSVersion.TLSv1_1
        sctx.maximum_version = ssl.TLSVersion.TLSv1_1
    sctx.load_cert_chain(leaf.chain, leaf.key)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(10)
    result = {}

    def serve():
        try:
            s, _ = ls.accept()
            with sctx.wrap_socket(s, server_side=True) as t:
                result["version"] = t.version()
                t.sendall(b"ok")
        except Exception as e:  # reported through result
            result["error"] = repr(e)
        finally:
            ls.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return ls.getsockname()[1], th, result


def test_tls11_refused_tls12_and_tls13_accepted(tls_factory, ca, backends):
    a, _ = backends
    leaf = ca.issue(["*.sandbox.test"], "v")
    sg = tls_factory(tls_config([leaf]))
    sni = "%d-abc.sandbox.test" % a.port
    ctx11 = _tls11_context(ca)

    port, th, result = _control_tls11_server(leaf)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx11.wrap_socket(raw, server_hostname=sni) as t:
            assert t.version() == "TLSv1.1"
    th.join(10)
    assert result.get("version") == "TLSv1.1", result

    with pytest.raises(ssl.SSLError) as ei:
        TlsConn(sg.tls_port, ctx11, sni)
    assert ei.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"), ei.value

    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        ctx = ca.client_context(minimum=version, maximum=version)
        with TlsConn(sg.tls_port, ctx, sni) as c:
            assert c.sock.version() == name
            r = c.request("GET", "/echo?v=" + name, host=sg.tls_host(a.port))
            assert r.status == 200, (name, r)
            assert r.json()["target"] == "/echo?v=" + name


def test_alpn_selects_http11(tls_factory, ca, backends):
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])]))
    sni = "%d-abc.sandbox.test" % a.port
    for offer in (["http/1.1"], ["h2", "http/1.1"], ["spdy/3", "http/1.1", "h2"]):
        ctx = ca.client_context(alpn=offer)
        with TlsConn(sg.tls_port, ctx, sni) as c:
            assert c.sock.selected_alpn_protocol() == "http/1.1", offer
            assert c.request("GET", "/echo", host=sg.tls_host(a.port)).status == 200
    # no ALPN offered: plain HTTP/1.1 over TLS still works
    with TlsConn(sg.tls_port, ca.client_context(alpn=None), sni) as c:
        assert c.sock.selected_alpn_protocol() is None
        assert c.request("GET", "/echo", host=sg.tls_host(a.port)).status == 200


# ---------------------------------------------------------------------------
# session resumption


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_session_resumption_across_two_workers(tls_factory, ca, backends, version):
    """With two workers (SO_REUSEPORT spreads the connections), every one of
    20 reconnections with the saved session resumes: the ticket keys are
    shared. Both worker threads must have handled some of them."""
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], workers=2))
    v = getattr(ssl.TLSVersion, version.replace(".", "_"))
    ctx = ca.client_context(minimum=v, maximum=v)
    sni = "%d-abc.sandbox.test" % a.port
    with TlsConn(sg.tls_port, ctx, sni) as c:
        assert not c.sock.session_reused
        assert c.request("GET", "/echo", host=sg.tls_host(a.port)).status == 200
        session = c.sock.session
    assert session is not None and session.has_ticket, "no session ticket issued"
    before = sg.worker_runs()
    reused = []
    for i in range(20):
        with TlsConn(sg.tls_port, ctx, sni, session=session) as c:
            reused.append(c.sock.session_reused)
            r = c.request("GET", "/echo?i=%d" % i, host=sg.tls_host(a.port))
            assert r.status == 200, r
            assert c.sock.version() == version
            session = c.sock.session
    after = sg.worker_runs()
    busy = [t for t in after if after[t] > before.get(t, 0)]
    print("worker thread runs before %r after %r" % (before, after))
    assert reused == [True] * 20, "resumed: %r" % reused
    assert len(busy) >= 2, "only worker threads %r ran (before %r, after %r)" % (busy, before, after)


def test_ticket_key_rotation_previous_key_still_resumes(tls_factory, ca, backends):
    """tls.ticket_key_rotation: a ticket from the previous key still resumes
    (and earns a fresh ticket); one two rotations old falls back to a full
    handshake that still works."""
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], tls={"ticket_key_rotation": "2s"}, workers=2))
    t_ready = time.monotonic()  # the rotation timer starts as sandgate starts listening
    ctx = ca.client_context()
    sni = "%d-abc.sandbox.test" % a.port

    def connect(session):
        with TlsConn(sg.tls_port, ctx, sni, session=session) as c:
            r = c.request("GET", "/echo", host=sg.tls_host(a.port))
            assert r.status == 200, r
            return c.sock.session_reused, c.sock.session

    _, s0 = connect(None)
    assert time.monotonic() - t_ready < 1.0, "too slow to get the first ticket under the first key"
    time.sleep(max(0, t_ready + 2.6 - time.monotonic()))  # one rotation: s0's key is the previous one
    reused, s1 = connect(s0)
    assert reused, "a ticket from the previous key did not resume"
    time.sleep(max(0, t_ready + 4.6 - time.monotonic()))  # two rotations: s0's key is gone
    reused_old, _ = connect(s0)
    reused_new, _ = connect(s1)
    assert not reused_old, "a ticket two rotations old still resumed"
    assert reused_new, "the ticket issued after the first rotation did not resume"


def test_resumed_session_keeps_its_certificate_for_host_checks(tls_factory, ca, backends):
    """A resumed connection still knows which certificate it stands for: the
    exact-name session resumes, serves its Host, and a Host it does not
    cover is still a 421."""
    a, _ = backends
    exact_name = "%d-abc.sandbox.test" % a.port
    wild = ca.issue(["*.sandbox.test"], "wild")
    exact = ca.issue([exact_name], "exact")
    sg = tls_factory(tls_config([(wild, True), exact], workers=2))
    ctx = ca.client_context()
    with TlsConn(sg.tls_port, ctx, exact_name) as c:
        assert served_cert(c.sock)[0] == exact.serial
        assert c.request("GET", "/echo", host=sg.tls_host(a.port)).status == 200
        session = c.sock.session
    for i in range(4):
        with TlsConn(sg.tls_port, ctx, exact_name, session=session) as c:
            assert c.sock.session_reused
            ok = c.request("GET", "/echo?resumed=%d" % i, host=sg.tls_host(a.port))
            assert ok.status == 200, ok
            bad = c.request("GET", "/echo?resumed-mis=%d" % i, host="%d-abc.sandbox.test" % (a.port + 1))
            assert bad.status == 421 and bad.error_name == "misdirected", bad
            session = c.sock.session
    assert b"resumed-mis" not in a.raw_all()


# ---------------------------------------------------------------------------
# SNI / Host agreement


def test_421_when_host_not_covered_by_sni_certificate(tls_factory, ca, backends):
    a, _ = backends
    exact_name = "%d-abc.sandbox.test" % a.port
    wild = ca.issue(["*.sandbox.test"], "wild")
    exact = ca.issue([exact_name], "exact")
    sg = tls_factory(tls_config([(wild, True), exact]))
    ctx = ca.client_context()
    other_host = "%d-abc.sandbox.test:%d" % (a.port + 1, sg.tls_port)
    with TlsConn(sg.tls_port, ctx, exact_name) as c:
        assert served_cert(c.sock)[0] == exact.serial
        r = c.request("GET", "/echo?mis=1", host=other_host)
    assert r.status == 421, r
    assert r.error_name == "misdirected", r
    # same connection shape with a matching Host is served
    with TlsConn(sg.tls_port, ctx, exact_name) as c:
        r = c.request("GET", "/echo?ok=1", host=sg.tls_host(a.port))
        assert r.status == 200, r
        r = c.request("GET", "/echo?ok=2", host=sg.tls_host(a.port, with_port=False))
        assert r.status == 200, r
    # a wildcard connection covers any sandbox host of its domain
    with TlsConn(sg.tls_port, ctx, "%d-def.sandbox.test" % a.port) as c:
        assert served_cert(c.sock)[0] == wild.serial
        r = c.request("GET", "/echo?wild=1", host=sg.tls_host(a.port))
        assert r.status == 200, r
    assert b"mis=1" not in a.raw_all(), "the misdirected request reached the backend"


def test_421_when_host_domain_differs_from_sni_domain(tls_factory, ca, backends):
    a, _ = backends
    both = ca.issue(["*.sandbox.test", "*.other.test"], "both")
    sg = tls_factory(tls_config([both], domains=["sandbox.test", "other.test"]))
    ctx = ca.client_context()
    with TlsConn(sg.tls_port, ctx, "x.other.test") as c:
        r = c.request("GET", "/echo?cross=1", host=sg.tls_host(a.port))
    assert r.status == 421, r
    assert r.error_name == "misdirected", r
    with TlsConn(sg.tls_port, ctx, "x.other.test") as c:
        r = c.request("GET", "/echo?same=other", host=sg.tls_host(a.port, domain="other.test"))
        assert r.status == 200, r
    with TlsConn(sg.tls_port, ctx, "x.sandbox.test") as c:
        r = c.request("GET", "/echo?same=sandbox", host=sg.tls_host(a.port))
        assert r.status == 200, r
    assert b"cross=1" not in a.raw_all()


def test_x_forwarded_proto_is_https_on_tls(tls_factory, ca, backends):
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])]))
    sni = "%d-abc.sandbox.test" % a.port
    r = tls_get(sg, ca.client_context(), sni, sg.tls_host(a.port), headers=[("X-Forwarded-Proto", "http")])
    assert r.status == 200, r
    assert hget(r.json(), "X-Forwarded-Proto") == ["https"]
    with Conn(sg.port) as c:
        r = c.request("GET", "/echo", host="%d-abc.sandbox.test:%d" % (a.port, sg.port))
    assert r.status == 200, r
    assert hget(r.json(), "X-Forwarded-Proto") == ["http"]


@pytest.mark.parametrize("how", ["yaml", "flag"])
def test_redirect_http_308_to_https(tls_factory, ca, backends, how):
    a, _ = backends
    leaf = ca.issue(["*.sandbox.test"])
    if how == "yaml":
        sg = tls_factory(tls_config([leaf], tls={"redirect_http": True}))
    else:
        sg = tls_factory(tls_config([leaf]), args=["--redirect-http"])
    host = "%d-abc.sandbox.test" % a.port
    with Conn(sg.port) as c:
        r = c.request("GET", "/some/path?q=1&r=%2F", host="%s:%d" % (host, sg.port))
        assert r.status == 308, r
        assert r.header("Location") == "https://%s:%d/some/path?q=1&r=%%2F" % (host, sg.tls_port)
        r = c.request("POST", "/form", host=host, body=b"abc")
        assert r.status == 308, r
        assert r.header("Location") == "https://%s:%d/form" % (host, sg.tls_port)
    assert a.raw_all() == b"", "a redirected request reached the backend"
    # the TLS listener proxies
    r = tls_get(sg, ca.client_context(), host, "%s:%d" % (host, sg.tls_port), target="/echo?tls=1")
    assert r.status == 200 and r.json()["target"] == "/echo?tls=1", r


def test_redirect_http_keeps_path_of_absolute_form_target(tls_factory, ca, backends):
    """An absolute-form request line (as proxies send) redirects to the same
    path and query as the origin-form one."""
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], tls={"redirect_http": True}))
    host = "%d-abc.sandbox.test:%d" % (a.port, sg.port)
    with Conn(sg.port) as c:
        r = c.request("GET", "http://%s/some/path?q=1" % host, host=host)
    assert r.status == 308, r
    assert r.header("Location") == "https://%d-abc.sandbox.test:%d/some/path?q=1" % (a.port, sg.tls_port), r
    assert a.raw_all() == b""


# ---------------------------------------------------------------------------
# reload


@pytest.fixture
def ws_backend():
    be = WsBackend("127.0.0.2").start()
    yield be
    be.stop()


def test_reload_keeps_open_websocket_and_serves_new_certificate(tls_factory, ca, ws_backend, backends):
    a, _ = backends
    old = ca.issue(["*.sandbox.test"], "live")
    sg = tls_factory(tls_config([old]))
    ctx = ca.client_context()
    sni = "%d-abc.sandbox.test" % ws_backend.port
    uri = "wss://%s/tunnel" % sg.tls_host(ws_backend.port)
    state = {}

    async def run():
        async with websockets.connect(uri, host="127.0.0.1", port=sg.tls_port, ssl=ctx,
                                      server_hostname=sni, max_size=None, compression=None,
                                      open_timeout=10 * SCALE) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            # keep-alive HTTP connection opened before the reload, too
            state["http"] = TlsConn(sg.tls_port, ctx, "%d-abc.sandbox.test" % a.port)
            assert state["http"].request("GET", "/echo?pre=1", host=sg.tls_host(a.port)).status == 200
            # new certificate files at the same paths, then SIGHUP
            state["new"] = ca.issue(["*.sandbox.test"], "live")
            state["outcome"] = sg.reload()
            state["after"] = handshake(sg, ctx, sni)
            await ws.send("after")
            assert await ws.recv() == "after"
            big = os.urandom(1 << 20)
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), 20 * SCALE) == big
            await asyncio.wait_for(ws.close(), 5 * SCALE)
            assert ws.close_code == 1000

    asyncio.run(run())
    new = state["new"]
    assert state["outcome"] == "applied", sg.stderr_text()[-2000:]
    assert new.serial != old.serial
    assert state["after"][0] == new.serial, "new handshake still got the old certificate"
    c = state["http"]
    try:
        assert served_cert(c.sock)[0] == old.serial
        r = c.request("GET", "/echo?post=1", host=sg.tls_host(a.port))
        assert r.status == 200 and r.json()["target"] == "/echo?post=1", r
    finally:
        c.close()
    assert ws_backend.messages == 3


def test_reload_adds_domain_and_its_certificate(tls_factory, ca, backends):
    """A reload that adds a domain may add a certificate for it: the new
    certificate is checked against the new domain list."""
    a, _ = backends
    first = ca.issue(["*.sandbox.test"], "first")
    sg = tls_factory(tls_config([first]))
    ctx = ca.client_context()
    # before: other.test is no domain of ours
    r = tls_get(sg, ctx, "%d-abc.sandbox.test" % a.port, sg.tls_host(a.port, domain="other.test"))
    assert r.status == 421 and r.error_name == "host_unknown_domain", r
    other = ca.issue(["*.other.test"], "other")
    sg.rewrite_config(tls_config([(first, True), other], domains=["sandbox.test", "other.test"]))
    assert sg.reload() == "applied", sg.stderr_text()[-2000:]
    sni = "%d-abc.other.test" % a.port
    with TlsConn(sg.tls_port, ctx, sni) as c:
        assert served_cert(c.sock)[0] == other.serial
        r = c.request("GET", "/echo?new-domain=1", host=sg.tls_host(a.port, domain="other.test"))
        assert r.status == 200, r
        assert r.json()["target"] == "/echo?new-domain=1"
    assert handshake(sg, ctx, "%d-abc.sandbox.test" % a.port)[0] == first.serial


@pytest.mark.parametrize("broken", ["missing_file", "key_mismatch", "expired"])
def test_reload_with_broken_certificate_keeps_old_set(tls_factory, ca, backends, broken, tmp_path):
    a, _ = backends
    old = ca.issue(["*.sandbox.test"], "good")
    sg = tls_factory(tls_config([old]))
    ctx = ca.client_context()
    sni = "%d-abc.sandbox.test" % a.port
    keep = TlsConn(sg.tls_port, ctx, sni)
    try:
        assert keep.request("GET", "/echo?n=1", host=sg.tls_host(a.port)).status == 200
        if broken == "missing_file":
            bad = {"cert": str(tmp_path / "pki" / "nope.chain.pem"), "key": old.key}
            expect = "nope.chain.pem"
        elif broken == "key_mismatch":
            fresh = ca.issue(["*.sandbox.test"], "fresh")
            bad = {"cert": fresh.chain, "key": write_other_key(tmp_path / "pki" / "other.key.pem")}
            expect = "match"  # "does not match" or OpenSSL's "key values mismatch"
        else:
            exp = ca.expired(["*.sandbox.test"], "exp")
            bad = {"cert": exp.chain, "key": exp.key}
            expect = "expired"
        sg.rewrite_config(tls_config([bad]))
        assert sg.reload() == "rejected", sg.stderr_text()[-2000:]
        err = sg.stderr_text()
        assert "reload rejected" in err
        assert any(expect in line for line in err.splitlines() if "reload: applied" not in line), err[-2000:]
        # new handshakes still get the old certificate and are served
        with TlsConn(sg.tls_port, ctx, sni) as c:
            assert served_cert(c.sock)[0] == old.serial
            r = c.request("GET", "/echo?n=2", host=sg.tls_host(a.port))
            assert r.status == 200, r
        # the connection from before the reload still works, its session resumes
        assert keep.request("GET", "/echo?n=3", host=sg.tls_host(a.port)).status == 200
        with TlsConn(sg.tls_port, ctx, sni, session=keep.sock.session) as c:
            assert c.sock.session_reused
            assert c.request("GET", "/echo?n=4", host=sg.tls_host(a.port)).status == 200
    finally:
        keep.close()
    # a good certificate afterwards is applied: reload itself works
    good2 = ca.issue(["*.sandbox.test"], "good2")
    sg.rewrite_config(tls_config([good2]))
    assert sg.reload() == "applied", sg.stderr_text()[-2000:]
    assert handshake(sg, ctx, sni)[0] == good2.serial


# ---------------------------------------------------------------------------
# hostile and silent clients


def _read_to_close(sock, timeout):
    t0 = time.monotonic()
    how, got = wait_closed(sock, timeout)
    return how, got, time.monotonic() - t0


def _only_tls_alerts(data):
    """True when data is empty or a sequence of TLS alert records."""
    i = 0
    while i < len(data):
        if data[i] != 0x15 or i + 5 > len(data):
            return False
        i += 5 + int.from_bytes(data[i + 3:i + 5], "big")
    return i == len(data)


GARBAGE = {
    "plain_http": b"GET /echo HTTP/1.1\r\nHost: 1-abc.sandbox.test\r\n\r\n",
    "random": bytes([0x42]) + random.Random(7).randbytes(511),
    "bogus_handshake_record": b"\x16\x03\x01\x00\x20" + b"\x01\x00\x00\x1c" + b"\xee" * 28,
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_instead_of_client_hello_is_closed_quietly(tls_factory, ca, backends, kind):
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], tls={"handshake_timeout": "10s"}))
    with socket.create_connection(("127.0.0.1", sg.tls_port), timeout=5) as s:
        s.sendall(GARBAGE[kind])
        how, got, took = _read_to_close(s, 5 * SCALE)
    assert how is not None, "connection still open %.1fs after garbage (got %r)" % (took, got[:100])
    assert b"HTTP" not in got, got[:200]
    assert _only_tls_alerts(got), "unexpected bytes: %r" % got[:200]
    assert took < 3 * SCALE, "closed only after %.1fs (handshake timeout, not the garbage)" % took
    assert a.raw_all() == b""
    r = tls_get(sg, ca.client_context(), "%d-abc.sandbox.test" % a.port, sg.tls_host(a.port))
    assert r.status == 200, r
    assert sg.alive()


def _partial_client_hello(ca):
    """The first bytes of a real ClientHello."""
    ctx = ca.client_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="x.sandbox.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    assert hello[0] == 0x16 and len(hello) > 100
    return hello[: len(hello) // 2]


def test_handshake_timeout_closes_silent_client(tls_factory, ca, backends):
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], tls={"handshake_timeout": "1s"}))
    socks = {}
    t0 = time.monotonic()
    socks["silent"] = socket.create_connection(("127.0.0.1", sg.tls_port), timeout=5)
    socks["half_hello"] = socket.create_connection(("127.0.0.1", sg.tls_port), timeout=5)
    socks["half_hello"].sendall(_partial_client_hello(ca))
    # a finished handshake is not subject to the handshake timer
    ctx = ca.client_context()
    done = TlsConn(sg.tls_port, ctx, "%d-abc.sandbox.test" % a.port)
    results = {}
    for name, s in socks.items():
        how, got, _ = _read_to_close(s, 6 * SCALE)
        results[name] = (how, got, time.monotonic() - t0)
        s.close()
    for name, (how, got, at) in results.items():
        assert how is not None, "%s: still open after %.1fs" % (name, at)
        assert 0.8 <= at <= 1.0 + 2 * SCALE, "%s: closed at %.2fs, timeout is 1s" % (name, at)
        assert b"HTTP" not in got and _only_tls_alerts(got), (name, got[:100])
    time.sleep(max(0, 1.5 - (time.monotonic() - t0)))
    try:
        r = done.request("GET", "/echo?late=1", host=sg.tls_host(a.port))
        assert r.status == 200, r
    finally:
        done.close()


# ---------------------------------------------------------------------------
# certificate checks at startup


def _run_expect_exit(tmp_path, cfg, name, extra=()):
    path = str(tmp_path / ("%s.yaml" % name))
    cfg = dict(cfg)
    cfg["listen"] = ["127.0.0.1:%d" % free_port(), {"address": "127.0.0.1:%d" % free_port(), "tls": True}]
    with open(path, "w") as f:
        f.write(to_yaml(cfg) + "\n")
    p = subprocess.Popen([SANDGATE_BIN, "--config", path] + list(extra), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=10 * SCALE)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail("sandgate %s kept running with a bad certificate; stderr:\n%s"
                    % (" ".join(extra), err.decode("utf-8", "replace")[-3000:]))
    err = err.decode("utf-8", "replace")
    for m in SANITIZER_MARKERS:
        assert m not in err, err[-6000:]
    return p.returncode, out.decode("utf-8", "replace"), err


@pytest.mark.parametrize("problem", ["expired", "foreign_domain", "key_mismatch", "missing_key"])
def test_startup_fails_on_bad_certificate(ca, tmp_path, problem):
    good = ca.issue(["*.sandbox.test"], "good")
    if problem == "expired":
        bad = ca.expired(["*.sandbox.test"], "bad")
        entry, expect = {"cert": bad.chain, "key": bad.key}, ["expired"]
    elif problem == "foreign_domain":
        bad = ca.issue(["x.sandbox.test", "*.evil.test"], "bad")
        entry, expect = {"cert": bad.chain, "key": bad.key}, ["*.evil.test"]
    elif problem == "key_mismatch":
        bad = ca.issue(["*.sandbox.test"], "bad")
        entry = {"cert": bad.chain, "key": write_other_key(tmp_path / "pki" / "wrong.key.pem")}
        expect = ["match"]
    else:
        bad = ca.issue(["*.sandbox.test"], "bad")
        entry, expect = {"cert": bad.chain, "key": str(tmp_path / "pki" / "absent.key.pem")}, ["absent.key.pem"]
    cfg = tls_config([good, entry])
    for extra in ((), ("--check-config",)):
        rc, out, err = _run_expect_exit(tmp_path, cfg, "bad-%s" % problem, extra)
        assert rc == 1, (extra, rc, out, err)
        lines = [ln for ln in err.splitlines() if bad.chain in ln or entry["key"] in ln]
        assert lines, "error does not name the certificate %s:\n%s" % (bad.chain, err)
        for e in expect:
            assert any(e in ln for ln in lines), "%r not in the error lines %r" % (e, lines)
        assert good.chain not in err, "the good certificate was blamed:\n" + err
        assert "configuration ok" not in out


def test_near_expiry_certificate_warned_at_startup(tls_factory, ca, backends):
    a, _ = backends
    soon = ca.issue(["soon.sandbox.test"], "soon", days=5)
    later = ca.issue(["*.sandbox.test"], "later", days=400)
    sg = tls_factory(tls_config([later, soon], tls={"expiry_warning": "720h"}))
    lines = sg.stderr_text().splitlines()
    warn = [ln for ln in lines if "expires within" in ln]
    assert any("warn" in ln and soon.chain in ln for ln in warn), "\n".join(lines)
    assert not any(later.chain in ln for ln in warn), "\n".join(lines)
    # and it serves
    with TlsConn(sg.tls_port, ca.client_context(), "soon.sandbox.test") as c:
        assert served_cert(c.sock)[0] == soon.serial


# ---------------------------------------------------------------------------
# streaming over TLS


@pytest.fixture
def tls_sg(tls_factory, ca):
    return tls_factory(tls_config([ca.issue(["*.sandbox.test"])]))


@pytest.fixture
def tls_sg_rss(tls_factory, ca, monkeypatch):
    """tls_sg for RSS bounds. With SSL_MODE_RELEASE_BUFFERS OpenSSL frees its
    record buffers whenever they are empty and allocates them again for the
    next record (measured: ~280 MB of malloc/free per GiB downloaded, mostly
    16.5 KiB write buffers). ASan's quarantine (256 MiB by default) keeps
    freed memory resident, so under ASan RSS would measure the quarantine
    rather than what sandgate holds; cap it at 16 MiB for these runs. The
    normal build is measured as is."""
    if SANITIZED:
        opts = os.environ.get("ASAN_OPTIONS", "")
        monkeypatch.setenv("ASAN_OPTIONS", (opts + ":" if opts else "") + "quarantine_size_mb=16")
    return tls_factory(tls_config([ca.issue(["*.sandbox.test"])]))


class RssSampler:
    def __init__(self, sg, interval=0.05):
        self.sg = sg
        self.interval = interval
        self.samples = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                self.samples.append(self.sg.rss_kib())
            except (OSError, RuntimeError):
                return
            self.stop_ev.wait(self.interval)

    def __enter__(self):
        self.base = self.sg.rss_kib()
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join()
        self.samples.append(self.sg.rss_kib())

    @property
    def growth_kib(self):
        return max(self.samples) - self.base


def test_sse_first_event_arrives_immediately_over_tls(tls_sg, ca, backends):
    a, _ = backends
    sg = tls_sg
    with TlsConn(sg.tls_port, ca.client_context(), "%d-abc.sandbox.test" % a.port, timeout=10 * SCALE) as c:
        t0 = time.monotonic()
        c.send(b"GET /sse?mode=chunked&gap=2 HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
               % sg.tls_host(a.port).encode())
        got = bytearray()
        t_first = t_second = None
        while t_second is None:
            d = c.sock.recv(65536)
            if not d:
                break
            got += d
            if t_first is None and b"data: one\n\n" in got:
                t_first = time.monotonic() - t0
            if b"data: two\n\n" in got:
                t_second = time.monotonic() - t0
    assert t_first is not None, bytes(got)
    assert t_first < 1.0, "first event took %.2fs over TLS (buffered?)" % t_first
    assert t_second is not None and t_second >= 1.9, (t_second, bytes(got))
    assert got.startswith(b"HTTP/1.1 200")


def test_download_1gib_over_tls(tls_sg_rss, ca, backends):
    a, _ = backends
    sg = tls_sg_rss
    ctx = ca.client_context()
    sni = "%d-abc.sandbox.test" % a.port
    expected = payload_sha256(GiB)
    with TlsConn(sg.tls_port, ctx, sni) as c:  # warm-up: pools, first handshake
        assert c.request("GET", "/echo", host=sg.tls_host(a.port)).status == 200
    h = hashlib.sha256()
    n = [0]

    def eat(mv):
        h.update(mv)
        n[0] += len(mv)

    t0 = time.monotonic()
    with TlsConn(sg.tls_port, ctx, sni, timeout=60 * SCALE) as c, RssSampler(sg) as rss:
        c.send(b"GET /download?size=%d&mode=cl HTTP/1.1\r\nHost: %s\r\n\r\n" % (GiB, sg.tls_host(a.port).encode()))
        r = c.read_response(consume=eat)
        # the connection stays usable after 1 GiB
        r2 = c.request("GET", "/echo?after=1", host=sg.tls_host(a.port))
    took = time.monotonic() - t0
    print("download 1 GiB over TLS: %.1fs, RSS growth %d KiB" % (took, rss.growth_kib))
    assert r.status == 200, r
    assert r.header("Content-Length") == str(GiB)
    assert n[0] == GiB
    assert h.hexdigest() == expected
    assert r2.status == 200 and r2.json()["target"] == "/echo?after=1"
    assert rss.growth_kib < RSS_GROWTH_LIMIT_KIB, "RSS grew %d KiB (base %d KiB) in %.1fs" % (
        rss.growth_kib, rss.base, took)


def test_upload_1gib_over_tls(tls_sg_rss, ca, backends):
    a, _ = backends
    sg = tls_sg_rss
    ctx = ca.client_context()
    sni = "%d-abc.sandbox.test" % a.port
    with TlsConn(sg.tls_port, ctx, sni) as c:
        assert c.request("GET", "/echo", host=sg.tls_host(a.port)).status == 200
    h = hashlib.sha256()
    with TlsConn(sg.tls_port, ctx, sni, timeout=60 * SCALE) as c, RssSampler(sg) as rss:
        c.send(b"PUT /echo HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Length: %d\r\n\r\n" % (sg.tls_host(a.port).encode(), GiB))
        for mv in iter_payload(GiB):
            c.sock.sendall(mv)
            h.update(mv)
        r = c.read_response()
    print("upload 1 GiB over TLS: RSS growth %d KiB" % rss.growth_kib)
    assert r.status == 200, r
    doc = r.json()
    assert doc["body_len"] == GiB
    assert doc["body_sha256"] == h.hexdigest() == payload_sha256(GiB)
    assert hget(doc, "X-Forwarded-Proto") == ["https"]
    assert rss.growth_kib < RSS_GROWTH_LIMIT_KIB, "RSS grew %d KiB (base %d KiB)" % (rss.growth_kib, rss.base)


def test_pipelining_20_requests_over_one_tls_connection(tls_sg, ca, backends):
    a, b = backends
    sg = tls_sg
    reqs, expect = [], []
    for i in range(20):
        sid, be = (("abc", a) if i % 3 else ("def", b))
        host = sg.tls_host(be.port, sid)
        if i % 4 == 1:
            body = (b"body-%d-" % i) * (i * 50 + 1)
            reqs.append(build_request("POST", "/echo?i=%d" % i, host, body=body))
            expect.append(("echo", i, sid, hashlib.sha256(body).hexdigest(), len(body)))
        elif i % 4 == 2:
            reqs.append(build_request("GET", "/download?size=%d&mode=chunked&chunk=999&i=%d" % (5000 + i, i), host))
            expect.append(("download", i, sid, None, 5000 + i))
        else:
            reqs.append(build_request("GET", "/echo?i=%d" % i, host))
            expect.append(("echo", i, sid, None, 0))
    # SNI names a sandbox of the same domain; the wildcard covers both sandboxes
    with TlsConn(sg.tls_port, ca.client_context(), "%d-abc.sandbox.test" % a.port, timeout=20 * SCALE) as c:
        c.send(b"".join(reqs))
        for kind, i, sid, sha, n in expect:
            r = c.read_response()
            assert r.status == 200, (i, r)
            if kind == "echo":
                doc = r.json()
                assert doc["target"] == "/echo?i=%d" % i, (i, doc["target"])
                assert doc["backend"] == sid
                assert doc["body_len"] == n
                if sha:
                    assert doc["body_sha256"] == sha
            else:
                assert len(r.body) == n, (i, len(r.body))
        c.sock.settimeout(0.3)
        try:
            extra = c.sock.recv(100)
        except (socket.timeout, ssl.SSLError):
            extra = b""
        assert extra == b"", extra


def test_websocket_echo_10mib_over_tls(tls_sg, ca, ws_backend):
    sg = tls_sg
    big = os.urandom(10 << 20)
    sni = "%d-abc.sandbox.test" % ws_backend.port

    async def run():
        async with websockets.connect("wss://%s/chat" % sg.tls_host(ws_backend.port), host="127.0.0.1",
                                      port=sg.tls_port, ssl=ca.client_context(), server_hostname=sni,
                                      max_size=None, compression=None, open_timeout=10 * SCALE) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(big)
            echoed = await asyncio.wait_for(ws.recv(), 60 * SCALE)
            assert len(echoed) == len(big) and echoed == big
            for i in range(20):
                await ws.send("m%d" % i)
            for i in range(20):
                assert await ws.recv() == "m%d" % i
            await asyncio.wait_for(ws.close(), 5 * SCALE)
            assert ws.close_code == 1000

    asyncio.run(run())
    assert ws_backend.messages == 22
    hdrs = dict((k.lower(), v) for k, v in ws_backend.request_headers[0])
    assert ws_backend.hosts == ["localhost:%d" % ws_backend.port]  # abc is masked
    assert hdrs.get("x-forwarded-proto") == "https"
    assert hdrs.get("x-forwarded-host") == sg.tls_host(ws_backend.port)


def _curl(args, timeout=30):
    p = subprocess.run(["curl", "-sS", "--max-time", str(int(20 * SCALE))] + args,
                       capture_output=True, timeout=timeout * SCALE)
    return p


def test_curl_with_cacert(tls_sg, ca, backends):
    a, _ = backends
    sg = tls_sg
    host = "%d-abc.sandbox.test" % a.port
    p = _curl(["--cacert", ca.ca_path, "--resolve", "%s:%d:127.0.0.1" % (host, sg.tls_port),
               "-w", "\n%{http_code} %{http_version} %{ssl_verify_result}",
               "--data-binary", "curl-body", "https://%s:%d/echo?curl=1" % (host, sg.tls_port)])
    assert p.returncode == 0, p.stderr
    body, _, tail = p.stdout.rpartition(b"\n")
    assert tail == b"200 1.1 0", (tail, p.stderr)
    doc = json.loads(body)
    assert doc["target"] == "/echo?curl=1"
    assert doc["body_sha256"] == hashlib.sha256(b"curl-body").hexdigest()
    assert hget(doc, "X-Forwarded-Proto") == ["https"]
    # without the CA curl refuses the certificate
    p = _curl(["--resolve", "%s:%d:127.0.0.1" % (host, sg.tls_port), "https://%s:%d/echo" % (host, sg.tls_port)])
    assert p.returncode == 60, (p.returncode, p.stderr)


def test_curl_follows_http_redirect_to_tls(tls_factory, ca, backends):
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], tls={"redirect_http": True}))
    host = "%d-abc.sandbox.test" % a.port
    p = _curl(["-L", "--cacert", ca.ca_path,
               "--resolve", "%s:%d:127.0.0.1" % (host, sg.port),
               "--resolve", "%s:%d:127.0.0.1" % (host, sg.tls_port),
               "-w", "\n%{http_code} %{num_redirects} %{url_effective}",
               "http://%s:%d/echo?via=redirect" % (host, sg.port)])
    assert p.returncode == 0, p.stderr
    body, _, tail = p.stdout.rpartition(b"\n")
    assert tail.decode() == "200 1 https://%s:%d/echo?via=redirect" % (host, sg.tls_port), tail
    doc = json.loads(body)
    assert doc["target"] == "/echo?via=redirect"
    assert hget(doc, "X-Forwarded-Proto") == ["https"]


def test_request_one_byte_per_tls_record(tls_sg, ca, backends):
    """A head and body trickled one byte per TLS record are reassembled."""
    a, _ = backends
    sg = tls_sg
    body = b"0123456789" * 5
    req = build_request("POST", "/echo?trickle=1", sg.tls_host(a.port), body=body)
    with TlsConn(sg.tls_port, ca.client_context(), "%d-abc.sandbox.test" % a.port) as c:
        for i in range(len(req)):
            c.sock.send(req[i:i + 1])
        r = c.read_response()
    assert r.status == 200, r
    doc = r.json()
    assert doc["target"] == "/echo?trickle=1"
    assert doc["body_len"] == len(body) and doc["body_sha256"] == hashlib.sha256(body).hexdigest()


# ---------------------------------------------------------------------------
# one side goes away (TLS client side)


def _tls_abort(c, how):
    """fin: plain close (no close_notify); rst: reset; notify: close_notify then close."""
    if how == "rst":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif how == "notify":
        try:
            c.sock = c.sock.unwrap()
        except (ssl.SSLError, OSError):
            pass
    c.close()


@pytest.mark.parametrize("how", ["fin", "rst", "notify"])
def test_tls_client_leaves_mid_upload_closes_upstream(tls_sg, ca, backends, how):
    a, _ = backends
    sg = tls_sg
    c = TlsConn(sg.tls_port, ca.client_context(), "%d-abc.sandbox.test" % a.port, timeout=10 * SCALE)
    c.send(b"POST /upload-watch HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
           % (sg.tls_host(a.port).encode(), 100 * BLOCK))
    sent = 0
    for mv in iter_payload(4 * BLOCK):
        c.sock.sendall(mv)
        sent += len(mv)
    assert a.wait_for(lambda: a.find_events("upload_progress"), 10 * SCALE), "upload never reached backend"
    t_close = time.monotonic()
    _tls_abort(c, how)
    ends = a.wait_for(lambda: a.find_events("upload_end"), 5 * SCALE)
    assert ends, "backend still receiving 5 s after the TLS client went away (%s)" % how
    assert ends[0]["complete"] is False and ends[0]["n"] <= sent
    assert ends[0]["t"] - t_close < 1.0 * SCALE, "upstream closed %.2fs after client" % (ends[0]["t"] - t_close)


@pytest.mark.parametrize("how", ["rst", "notify"])
def test_tls_client_leaves_mid_download_closes_upstream(tls_sg, ca, backends, how):
    a, _ = backends
    sg = tls_sg

    def endless(backend, req):
        req.hash_body()
        req.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        chunk = b"x" * 65536
        try:
            while True:
                req.send(chunk)
                time.sleep(0.001)
        except OSError as e:
            backend.event(kind="download_write_failed", error=repr(e))
        return False

    a.route("/endless", endless)
    c = TlsConn(sg.tls_port, ca.client_context(), "%d-abc.sandbox.test" % a.port, timeout=10 * SCALE)
    c.send(b"GET /endless HTTP/1.1\r\nHost: %s\r\n\r\n" % sg.tls_host(a.port).encode())
    r = c.read_head()
    assert r.status == 200, r
    c.reader.stream(BLOCK, lambda mv: None)
    t_close = time.monotonic()
    _tls_abort(c, how)
    ev = a.wait_for(lambda: a.find_events("download_write_failed"), 10 * SCALE)
    assert ev, "backend kept streaming into sandgate after the TLS client left (%s)" % how
    assert ev[0]["t"] - t_close < 3.0 * SCALE


@pytest.mark.parametrize("mode,how", [("cl", "fin"), ("chunked", "rst")])
def test_backend_dies_mid_download_cuts_tls_client(tls_sg, ca, backends, mode, how):
    a, _ = backends
    sg = tls_sg
    total, sent = 100 * BLOCK, 2 * BLOCK
    with TlsConn(sg.tls_port, ca.client_context(), "%d-abc.sandbox.test" % a.port, timeout=10 * SCALE) as c:
        c.send(b"GET /partial?size=%d&sent=%d&mode=%s&how=%s HTTP/1.1\r\nHost: %s\r\n\r\n"
               % (total, sent, mode.encode(), how.encode(), sg.tls_host(a.port).encode()))
        got = [0]
        t0 = time.monotonic()
        with pytest.raises(Closed):
            c.read_response(consume=lambda mv: got.__setitem__(0, got[0] + len(mv)))
        elapsed = time.monotonic() - t0
    assert got[0] <= sent
    assert elapsed < 5 * SCALE
