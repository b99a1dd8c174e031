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


# ---- request bodies (uploads) ------------------------------------------------

def spliced_in(sg):
    return sg.metrics().value("sandgate_spliced_request_bytes_total")


def upload_body(n, seed=1):
    return hashlib.sha256(b"%d" % seed).digest() * (n // 32) + b"x" * (n % 32)


def test_large_uploads_are_spliced_whole_and_connection_reused(ops_factory, backends):
    """Content-Length uploads from a plain client move client -> sandbox by
    splice(2): the sandbox gets every byte in order, the next request on the
    same client connection (pipelined right behind the body) is parsed
    normally, and the pooled upstream connection carries them all."""
    a, _ = backends
    sg = ops_factory(sg_cfg())
    s0 = spliced_in(sg)
    sizes = [5 * MIB + 17, 300 * 1024]
    bodies = [upload_body(n, i) for i, n in enumerate(sizes)]
    with Conn(sg.port, timeout=30 * SCALE) as c:
        c.send(build_request("POST", "/echo?u=0", host(sg, a.port), body=bodies[0]) +
               build_request("GET", "/echo?after=upload", host(sg, a.port)))
        r = c.read_response()
        assert r.status == 200, r
        doc = r.json()
        assert doc["body_len"] == sizes[0]
        assert doc["body_sha256"] == hashlib.sha256(bodies[0]).hexdigest()
        r = c.read_response()
        assert r.status == 200 and r.json()["target"].endswith("after=upload"), r
        r = c.request("POST", "/echo?u=1", host=host(sg, a.port), body=bodies[1])
        assert r.status == 200 and r.json()["body_sha256"] == hashlib.sha256(bodies[1]).hexdigest()
    assert len(a.conns) == 1, [(x.id, x.peer) for x in a.conns]
    moved = sg.wait_metric("sandgate_spliced_request_bytes_total", {}, lambda v: v > s0) - s0
    # all but what came with each head or in the first reads took the splice
    assert sum(sizes) - 2 * 256 * 1024 < moved <= sum(sizes), (moved, sizes)


def test_client_cutting_a_spliced_upload_cuts_the_sandbox(ops_factory, backends):
    """Content-Length 8 MiB, 2 MiB sent, then FIN or RST: the sandbox's
    connection is closed (never left waiting for the rest), no descriptor
    leaks, and the next client is served."""
    a, _ = backends
    sg = ops_factory(sg_cfg())
    with Conn(sg.port) as c:  # warm up: pooled connection, splice objects
        assert c.request("POST", "/echo", host=host(sg, a.port), body=b"w" * 1000).status == 200
    time.sleep(0.2)
    fds0 = open_fds(sg.pid)
    s0 = spliced_in(sg)
    for how in ("fin", "rst"):
        s = socket.create_connection(("127.0.0.1", sg.port), timeout=10 * SCALE)
        head = build_request("POST", "/echo?cut=" + how, host(sg, a.port), body=b"")
        head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % (8 * MIB))
        assert b"Content-Length: %d" % (8 * MIB) in head
        s.sendall(head)
        chunk = upload_body(256 * 1024)
        for _ in range(8):
            s.sendall(chunk)
        n_closed = sum(1 for x in a.conns if x.closed)
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        assert a.wait_for(lambda: sum(1 for x in a.conns if x.closed) > n_closed, 10 * SCALE), how
    assert spliced_in(sg) > s0  # the cut uploads were on the splice path
    deadline = time.monotonic() + 5 * SCALE
    while open_fds(sg.pid) > fds0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(sg.pid) <= fds0, (fds0, os.listdir("/proc/%d/fd" % sg.pid))
    with Conn(sg.port) as c:
        body = upload_body(MIB, 7)
        r = c.request("POST", "/echo", host=host(sg, a.port), body=body)
        assert r.status == 200 and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_sandbox_answering_mid_upload_ends_it(ops_factory, backends):
    """The sandbox reads 300 KiB of a 16 MiB upload, answers 413 and closes:
    the client gets the 413, the connection is not kept (its body was not
    read), nothing hangs."""
    a, _ = backends
    sg = ops_factory(sg_cfg())

    def reject(backend, req):
        req.conn.reader.stream(300 * 1024, lambda mv: None)
        req.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
                 b"too big\n")
        return False

    a.route("/reject", reject)
    s = socket.create_connection(("127.0.0.1", sg.port), timeout=15 * SCALE)
    head = build_request("POST", "/reject", host(sg, a.port), body=b"")
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % (16 * MIB))
    s.sendall(head)
    chunk = upload_body(64 * 1024)
    sent = 0
    s.settimeout(0.2)
    got = b""
    t0 = time.monotonic()
    while b"too big\n" not in got and time.monotonic() - t0 < 15 * SCALE:
        try:
            if sent < 16 * MIB:
                s.sendall(chunk)
                sent += len(chunk)
        except (socket.timeout, BrokenPipeError, ConnectionResetError):
            pass
        try:
            d = s.recv(65536)
            if not d:
                break
            got += d
        except socket.timeout:
            pass
        except ConnectionResetError:
            break
    s.close()
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    assert b"too big\n" in got


def test_chunked_uploads_are_not_spliced(ops_factory, backends):
    a, _ = backends
    sg = ops_factory(sg_cfg())
    s0 = spliced_in(sg)
    body = upload_body(2 * MIB, 3)
    with Conn(sg.port, timeout=30 * SCALE) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
               % host(sg, a.port).encode())
        for off in range(0, len(body), 256 * 1024):
            piece = body[off:off + 256 * 1024]
            c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert spliced_in(sg) == s0
