"""Large response bodies of known length between plain sockets move by
splice(2) (net/splice.c): the bytes must arrive whole and in order, the
connection and the pooled upstream connection must stay usable, a cut on
either side must be a cut (never a hang), and sandgate_spliced_bytes_total
shows which bytes took the path. TLS clients and chunked bodies take the
ordinary path."""

import hashlib
import os
import socket
import time

from client import Conn, build_request
from conftest import SCALE, default_config
from httpio import payload_sha256, wait_closed

MIB = 1 << 20


def sg_cfg():
    return default_config(drain_timeout="3s")


def host(sg, port, sid="abc"):
    return "%d-%s.sandbox.test:%d" % (port, sid, sg.port)


def spliced(sg):
    return sg.metrics().value("sandgate_spliced_bytes_total")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test_large_content_length_bodies_are_spliced_whole_and_connection_reused(ops_factory, backends):
    a, _ = backends
    sg = ops_factory(sg_cfg())
    s0 = spliced(sg)
    sizes = [3 * MIB + 17, 70 * 1024, MIB]
    with Conn(sg.port, timeout=30 * SCALE) as c:
        # two requests in one send: the second waits behind a spliced body
        c.send(build_request("GET", "/download?size=%d" % sizes[0], host(sg, a.port)) +
               build_request("GET", "/download?size=%d" % sizes[1], host(sg, a.port)))
        for n in sizes[:2]:
            r = c.read_response()
            assert r.status == 200, r
            assert len(r.body) == n
            assert hashlib.sha256(r.body).hexdigest() == payload_sha256(n)
        r = c.request("GET", "/download?size=%d" % sizes[2], host=host(sg, a.port))
        assert r.status == 200 and len(r.body) == sizes[2]
        assert hashlib.sha256(r.body).hexdigest() == payload_sha256(sizes[2])
        r = c.request("GET", "/echo?after=splice", host=host(sg, a.port))
        assert r.status == 200, r
    # one upstream connection carried all four responses: its parser and
    # pool state were right after each splice
    assert len(a.conns) == 1, [(x.id, x.peer) for x in a.conns]
    moved = sg.wait_metric("sandgate_spliced_bytes_total", {}, lambda v: v > s0) - s0
    # all but the bytes that arrived with each head took the splice path
    assert sum(sizes) - 3 * 256 * 1024 < moved <= sum(sizes), (moved, sizes)


def test_small_chunked_and_tls_bodies_are_not_spliced(ops_factory, backends):
    a, _ = backends
    sg = ops_factory(sg_cfg())
    s0 = spliced(sg)
    with Conn(sg.port, timeout=30 * SCALE) as c:
        r = c.request("GET", "/download?size=%d" % (40 * 1024), host=host(sg, a.port))
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == payload_sha256(40 * 1024)
        r = c.request("GET", "/download?size=%d&mode=chunked" % (2 * MIB), host=host(sg, a.port))
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == payload_sha256(2 * MIB)
    assert spliced(sg) == s0


def test_sandbox_cutting_a_spliced_body_cuts_the_client(ops_factory, backends):
    """Content-Length 8 MiB, 1 MiB sent, then FIN or RST: the client gets
    fewer bytes and a closed connection, never a hang or a padded body."""
    a, _ = backends
    sg = ops_factory(sg_cfg())
    for how in ("fin", "rst"):
        with Conn(sg.port, timeout=10 * SCALE) as c:
            c.send(build_request("GET", "/partial?size=%d&sent=%d&how=%s" % (8 * MIB, MIB, how),
                                 host(sg, a.port)))
            head = c.read_head()
            assert head.status == 200
            got = len(c.reader.buf)
            c.reader.buf = b""
            t0 = time.monotonic()
            while True:
                try:
                    chunk = c.sock.recv(1 << 16)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += len(chunk)
            assert time.monotonic() - t0 < 5 * SCALE
            assert MIB - 256 * 1024 <= got <= MIB, (how, got)


def test_client_leaving_mid_splice_closes_upstream_and_leaks_nothing(ops_factory, backends):
    a, _ = backends
    sg = ops_factory(sg_cfg())
    with Conn(sg.port) as c:  # warm up: pooled connection, splice objects
        r = c.request("GET", "/download?size=%d" % MIB, host=host(sg, a.port))
        assert r.status == 200
    time.sleep(0.2)
    fds0 = open_fds(sg.pid)
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", sg.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(build_request("GET", "/download?size=%d&i=%d" % (64 * MIB, i), host(sg, a.port)))
        s.recv(1000)  # the head and a little body: the splice is running
        time.sleep(0.1)
        s.close()
    # every backend connection that served the cut downloads is closed
    assert a.wait_for(lambda: sum(1 for x in a.conns if x.closed) >= 5, 10 * SCALE), \
        [(x.id, x.closed) for x in a.conns]
    deadline = time.monotonic() + 5 * SCALE
    while open_fds(sg.pid) > fds0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(sg.pid) <= fds0, (fds0, os.listdir("/proc/%d/fd" % sg.pid))
    with Conn(sg.port) as c:
        r = c.request("GET", "/download?size=%d" % MIB, host=host(sg, a.port))
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == payload_sha256(MIB)


def test_slow_reader_gets_every_spliced_byte(ops_factory, backends):
    a, _ = backends
    sg = ops_factory(sg_cfg())
    """A reader that takes small bites for a while: the splice waits for the
    socket to drain (the pipe fills, then the sandbox's socket) instead of
    dropping or buffering bytes."""
    n = 3 * MIB
    s = socket.create_connection(("127.0.0.1", sg.port), timeout=30 * SCALE)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.sendall(build_request("GET", "/download?size=%d" % n, host(sg, a.port)))
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    body = buf.split(b"\r\n\r\n", 1)[1]
    h = hashlib.sha256(body)
    got = len(body)
    t_slow = time.monotonic() + 0.5
    while got < n:
        chunk = s.recv(4096 if time.monotonic() < t_slow else 1 << 16)
        assert chunk, "closed after %d of %d bytes" % (got, n)
        h.update(chunk)
        got += len(chunk)
        if time.monotonic() < t_slow:
            time.sleep(0.01)
    s.close()
    assert got == n and h.hexdigest() == payload_sha256(n)
    assert spliced(sg) > 2 * MIB


def test_client_idle_after_spliced_body_times_out_cleanly(ops_factory, backends):
    """After a spliced body the client connection times out like any idle
    keep-alive connection, and closes cleanly."""
    a, _ = backends
    cfg = sg_cfg()
    cfg["timeouts"] = dict(cfg["timeouts"], keepalive_idle="1s")
    sg = ops_factory(cfg)
    with Conn(sg.port, timeout=10 * SCALE) as c:
        r = c.request("GET", "/download?size=%d" % (2 * MIB), host=host(sg, a.port))
        assert r.status == 200 and len(r.body) == 2 * MIB
        how, extra = wait_closed(c.sock, 5 * SCALE)
        assert how is not None and extra == b"", (how, extra)
