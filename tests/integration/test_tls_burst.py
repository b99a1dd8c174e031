"""Bursts of new TLS connections. Handshakes wait for the end of the loop
turn and a turn spends a bounded time on them (ingress/tls/hs_queue.c):
these tests fill that queue and check that every queued handshake still
completes, that connections dying while queued leave it cleanly (the
ASan+UBSan run catches a stale entry), and that open connections keep
being served meanwhile."""

import socket
import ssl

from client import Conn
from conftest import SCALE, free_port, wait_port
from test_tls import TlsConn, ca, tls_config, tls_factory, tls_sg  # noqa: F401 (fixtures)
from tls_manual import ManualTlsClient


def test_burst_of_handshakes_all_complete_and_dead_ones_leave_the_queue(tls_factory, ca, backends):
    a, _ = backends
    admin_port = free_port()
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], admin={"listen": ["127.0.0.1:%d" % admin_port]}))
    wait_port(admin_port, 10 * SCALE, proc=sg.proc)
    sni = "%d-abc.sandbox.test" % a.port
    request = b"GET /echo HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % sg.tls_host(a.port).encode()
    # An open connection, served before, during and after the burst.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with TlsConn(sg.tls_port, ctx, sni) as open_conn:
        assert open_conn.request("GET", "/echo?before", sg.tls_host(a.port)).status == 200
        burst = [ManualTlsClient(sg.tls_port, sni) for _ in range(60)]
        for h in burst:
            h.hello()
        # Every third one dies with its ClientHello unanswered or queued.
        for i in range(0, len(burst), 3):
            burst[i].reset()
        assert open_conn.request("GET", "/echo?during", sg.tls_host(a.port)).status == 200
        for i, h in enumerate(burst):
            if i % 3 == 0:
                continue
            got = h.finish(request)
            assert got.startswith(b"HTTP/1.1 200"), (i, got[:200])
        assert open_conn.request("GET", "/echo?after", sg.tls_host(a.port)).status == 200
    # The worker is healthy after the burst: plain and TLS both answer.
    with Conn(sg.port) as c:
        assert c.request("GET", "/echo", sg.host(a.port)).status == 200
    # 60 ClientHellos arriving together are far more than one turn's budget
    # (about 0.5 ms): most of them waited in the queue.
    sg.admin_port = admin_port
    m = sg.metrics()
    assert m.value("sandgate_tls_handshakes_deferred_total") >= 10, m.value("sandgate_tls_handshakes_deferred_total")
    assert m.value("sandgate_tls_handshakes_total", result="ok") >= 40 + 1  # the burst and the open connection


def test_connection_closed_by_handshake_timeout_while_queued(tls_factory, ca, backends):
    """Bytes that are not a whole ClientHello leave the handshake waiting for
    more; the handshake timeout then closes it, queued or not."""
    a, _ = backends
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], tls={"handshake_timeout": "1s"}))
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", sg.tls_port), timeout=10 * SCALE)
        # a TLS handshake record header announcing 512 bytes, and 10 of them
        s.sendall(b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + b"\x00" * 4)
        socks.append(s)
    for s in socks:
        s.settimeout(10 * SCALE)
        assert s.recv(100) == b""  # closed by sandgate, no bytes
        s.close()
    ctx = ca.client_context()
    with TlsConn(sg.tls_port, ctx, "%d-abc.sandbox.test" % a.port) as c:
        assert c.request("GET", "/echo", sg.tls_host(a.port)).status == 200


def _read_until_closed(sock):
    """Everything the server sends until it closes (FIN or RST)."""
    got = b""
    sock.settimeout(10 * SCALE)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not data:
            return got
        got += data


def test_more_than_a_buffer_before_a_queued_handshake_is_refused_unanswered(tls_factory, ca, backends):
    """A ClientHello waiting in the queue keeps its bytes in a 64 KiB read
    buffer while the socket is read on. A client that sends more than that
    before its turn comes is no TLS client: sandgate closes it without
    answering the ClientHello (no ServerHello) and counts it, instead of
    dropping bytes and handshaking on a cut stream."""
    a, _ = backends
    admin_port = free_port()
    sg = tls_factory(tls_config([ca.issue(["*.sandbox.test"])], admin={"listen": ["127.0.0.1:%d" % admin_port]}))
    wait_port(admin_port, 10 * SCALE, proc=sg.proc)
    sg.admin_port = admin_port
    before = sg.metrics()
    sni = "%d-abc.sandbox.test" % a.port
    flood = [ManualTlsClient(sg.tls_port, sni) for _ in range(60)]
    for h in flood:
        h.hello()
    # 64 KiB more on each: with its ClientHello that is more than a buffer.
    # The ones whose handshake already ran fail on these bytes (not TLS
    # records) after their ServerHello; the queued ones must be refused.
    junk = b"\x00" * 65536
    for h in flood:
        try:
            h.sock.sendall(junk)
        except OSError:
            pass  # already closed by sandgate
    answered = 0
    for h in flood:
        got = _read_until_closed(h.sock)
        h.sock.close()
        assert got == b"" or got[0] == 0x16, got[:16]  # nothing, or a handshake record first
        answered += got[:1] == b"\x16"
    after = sg.metrics()
    refused = after.value("sandgate_tls_early_input_refused_total") - before.value(
        "sandgate_tls_early_input_refused_total")
    failed = after.value("sandgate_tls_handshakes_total", result="failed") - before.value(
        "sandgate_tls_handshakes_total", result="failed")
    # 60 ClientHellos at once are far beyond one turn's budget: many wait.
    assert refused >= 1, (refused, answered)
    # Each connection failed exactly once, refused or not ...
    assert failed == len(flood), (failed, refused)
    # ... and a refused one never got an answer to its ClientHello.
    assert answered <= len(flood) - refused, (answered, refused)
    ctx = ca.client_context()
    with TlsConn(sg.tls_port, ctx, sni) as c:
        assert c.request("GET", "/echo", sg.tls_host(a.port)).status == 200
