"""WebSocket through sandgate: 101 then a byte tunnel both ways."""

import asyncio
import os

import pytest
import websockets

from backends import WsBackend
from conftest import SCALE


@pytest.fixture
def ws_backend():
    # port shared with nothing else; 127.0.0.2 is sandbox "abc" (masked)
    be = WsBackend("127.0.0.2").start()
    yield be
    be.stop()


async def ws_session(sg, be, big):
    uri = "ws://%d-abc.sandbox.test:%d/chat?room=1" % (be.port, sg.port)
    async with websockets.connect(uri, host="127.0.0.1", port=sg.port, max_size=None,
                                  compression=None, open_timeout=10 * SCALE) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        await ws.send(big)
        echoed = await asyncio.wait_for(ws.recv(), 30 * SCALE)
        assert len(echoed) == len(big)
        assert echoed == big
        for i in range(50):
            await ws.send("m%d" % i)
        for i in range(50):
            assert await ws.recv() == "m%d" % i


def test_websocket_echo_with_10mib_message(sg, ws_backend):
    big = os.urandom(10 << 20)
    asyncio.run(ws_session(sg, ws_backend, big))
    assert ws_backend.hosts == ["localhost:%d" % ws_backend.port]
    assert ws_backend.messages == 53
    hdrs = dict((k.lower(), v) for k, v in ws_backend.request_headers[0])
    assert hdrs.get("upgrade", "").lower() == "websocket"
    assert hdrs.get("x-forwarded-host") == "%d-abc.sandbox.test:%d" % (ws_backend.port, sg.port)


def test_websocket_close_propagates(sg, ws_backend):
    async def run():
        uri = "ws://%d-abc.sandbox.test:%d/" % (ws_backend.port, sg.port)
        ws = await websockets.connect(uri, host="127.0.0.1", port=sg.port, open_timeout=10 * SCALE)
        await ws.send("x")
        assert await ws.recv() == "x"
        await asyncio.wait_for(ws.close(), 5 * SCALE)
        assert ws.close_code == 1000

    asyncio.run(run())


def test_websocket_to_closed_port_is_502(sg):
    from backends import closed_port

    port = closed_port("127.0.0.2")

    async def run():
        uri = "ws://%d-abc.sandbox.test:%d/" % (port, sg.port)
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as ei:
            await websockets.connect(uri, host="127.0.0.1", port=sg.port, open_timeout=10 * SCALE)
        assert ei.value.status_code == 502

    asyncio.run(run())


def raw_upgrade_handler(backend, req):
    """101 with the first tunnel bytes in the same write, then echo upper-cased."""
    backend.event(kind="upgrade_request", headers=list(req.headers))
    req.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\nserver-first")
    r = req.conn.reader
    while True:
        if r.buf:
            data = bytes(r.buf)
            r.buf.clear()
            req.send(data.upper())
        if not r.fill():
            break
    backend.event(kind="upgrade_eof")
    return False


def test_raw_upgrade_tunnels_both_ways(sg, backends):
    from client import Conn
    from httpio import wait_closed

    a, _ = backends
    a.route("/raw-upgrade", raw_upgrade_handler)
    with Conn(sg.port, timeout=5 * SCALE) as c:
        c.send(b"GET /raw-upgrade HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: x-test\r\n\r\n"
               % sg.host(a.port).encode())
        r = c.read_head()
        assert r.status == 101, r
        assert (r.header("Upgrade") or "").lower() == "x-test"
        assert c.reader.read_exact(len(b"server-first")) == b"server-first"
        for word in (b"hello", b"tunnel" * 10000, b"\x00\xff binary"):
            c.send(word)
            assert c.reader.read_exact(len(word)) == word.upper()
        # client half-close reaches the backend as EOF, which then closes
        c.sock.shutdown(__import__("socket").SHUT_WR)
        assert a.wait_for(lambda: a.find_events("upgrade_eof"), 5 * SCALE)
        how, extra = wait_closed(c.sock, 5 * SCALE)
        assert how is not None and extra == b""
    hs = dict((n.lower(), v) for n, v in a.find_events("upgrade_request")[0]["headers"])
    assert hs.get("upgrade") == "x-test"
    assert "upgrade" in hs.get("connection", "").lower()
