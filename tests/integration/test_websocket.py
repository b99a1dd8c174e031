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
