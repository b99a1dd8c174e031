"""No file descriptor leaks: after a batch of varied traffic (successes,
errors, aborts, timeouts, pipelining, WebSocket, concurrency) sandgate's fd
count returns to what it was right after start."""

import asyncio
import socket
import struct
import threading
import time

import websockets

from backends import WsBackend, closed_port
from client import Closed, Conn, build_request, one_request
from conftest import SCALE
from httpio import BLOCK, iter_payload, wait_closed


def settle_fds(sg, baseline, timeout):
    deadline = time.monotonic() + timeout
    while True:
        n = sg.fd_count()
        if n <= baseline or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def test_fd_count_returns_to_baseline(sandgate_factory, backends, blackhole):
    a, b = backends
    bh_addr, bh_port = blackhole
    sg = sandgate_factory(
        sandboxes={
            "abc": {"address": "127.0.0.2", "mask": "localhost:${PORT}"},
            "def": {"address": "127.0.0.3"},
            "hang": {"address": bh_addr},
        },
        timeouts={"request_head": "1s", "keepalive_idle": "2s", "upstream_idle": "1s",
                  "upstream_connect": "1s", "upstream_retry_window": "0.5s",
                  "upstream_response_head": "1s"},
        limits={"max_header_size": "8KiB"},
    )
    time.sleep(0.3)
    before = sg.fds()
    baseline = len(before)
    ha, hb = sg.host(a.port, "abc"), sg.host(b.port, "def")

    # plain requests, keep-alive, both sandboxes
    with Conn(sg.port) as c:
        for i in range(5):
            assert c.request("GET", "/echo?i=%d" % i, host=ha if i % 2 else hb).status == 200
    # pipelining
    with Conn(sg.port) as c:
        c.send(b"".join(build_request("GET", "/echo?p=%d" % i, ha) for i in range(10)))
        for i in range(10):
            assert c.read_response().status == 200
    # concurrency: 20 clients at once
    errors = []

    def worker(k):
        try:
            with Conn(sg.port) as c:
                for j in range(5):
                    r = c.request("POST", "/echo?k=%d&j=%d" % (k, j), host=ha if k % 2 else hb, body=b"z" * 1000)
                    assert r.status == 200
        except Exception as e:  # collected and asserted below
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
    [t.start() for t in ts]
    [t.join(30) for t in ts]
    assert not errors, errors
    # errors sandgate answers itself
    assert one_request(sg.port, "GET", "/", host=sg.host(3000, "nosuch")).status == 502
    assert one_request(sg.port, "GET", "/", host="x.sandbox.test").status == 400
    assert one_request(sg.port, "GET", "/", host="1-a.elsewhere.test").status == 421
    assert one_request(sg.port, "GET", "/", host=sg.host(closed_port("127.0.0.2"), "abc")).status == 502
    assert one_request(sg.port, "GET", "/", host=sg.host(bh_port, "hang"), timeout=30).status == 504
    assert one_request(sg.port, "GET", "/nohead", host=ha, timeout=30).status == 504
    assert one_request(sg.port, "GET", "/", host=ha, headers=[("X-Big", "b" * 10000)]).status == 431
    with Conn(sg.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               % ha.encode())
        assert c.read_response().status == 400
    # slow head -> 408
    with Conn(sg.port) as c:
        c.send(b"GET / HTTP/1.1\r\n")
        how, got = wait_closed(c.sock, 5 * SCALE)
        assert got.startswith(b"HTTP/1.1 408")
    # client aborts mid-upload
    c = Conn(sg.port)
    c.send(b"POST /upload-watch HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (ha.encode(), 50 * BLOCK))
    for mv in iter_payload(2 * BLOCK):
        c.sock.sendall(mv)
    a.wait_for(lambda: a.find_events("upload_progress"), 5 * SCALE)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    # backend dies mid-download
    with Conn(sg.port) as c:
        c.send(b"GET /partial?size=%d&sent=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (10 * BLOCK, BLOCK, ha.encode()))
        try:
            c.read_response()
            raise AssertionError("partial response completed")
        except Closed:
            pass
    # client leaves while waiting for a response
    c = Conn(sg.port)
    c.send(b"GET /sse?gap=1 HTTP/1.1\r\nHost: %s\r\n\r\n" % ha.encode())
    c.read_head()
    c.close()
    # WebSocket (its own backend on 127.0.0.2)
    ws_be = WsBackend("127.0.0.2").start()
    try:
        async def ws():
            uri = "ws://%d-abc.sandbox.test:%d/" % (ws_be.port, sg.port)
            async with websockets.connect(uri, host="127.0.0.1", port=sg.port) as w:
                await w.send("ping")
                assert await w.recv() == "ping"
            # and one dropped without a close handshake
            w = await websockets.connect(uri, host="127.0.0.1", port=sg.port)
            await w.send("x")
            await w.recv()
            w.transport.abort()

        asyncio.run(ws())
    finally:
        ws_be.stop()
    # a connection opened and never used
    idle = socket.create_connection(("127.0.0.1", sg.port))
    time.sleep(0.1)
    idle.close()

    assert sg.alive()
    # client connections are closed; pooled upstream ones expire after upstream_idle (1 s)
    n = settle_fds(sg, baseline, 8 * SCALE)
    if n != baseline:
        now = sg.fds()
        extra = {k: v for k, v in now.items() if before.get(k) != v}
        raise AssertionError("fd count %d, baseline %d; new fds: %s" % (n, baseline, extra))
