"""Timeouts: upstream connect (504), upstream response head (504), slow
request head (408), idle keep-alive connection."""

import json
import socket
import time

from client import Conn, one_request
from conftest import SCALE
from httpio import wait_closed


def test_upstream_connect_timeout(sandgate_factory, blackhole):
    addr, port = blackhole
    sg = sandgate_factory(
        sandboxes={"hang": {"address": addr}},
        timeouts={"upstream_connect": "1s", "upstream_retry_window": "1.5s"},
    )
    t0 = time.monotonic()
    r = one_request(sg.port, "GET", "/", host=sg.host(port, "hang"), timeout=30)
    elapsed = time.monotonic() - t0
    assert r.status == 504, r
    assert r.error_name == "upstream_connect_timeout", r
    assert json.loads(r.body)["code"] == 504
    assert 0.9 <= elapsed <= 1.0 + 1.5 + 2.0 * SCALE, elapsed


def test_upstream_response_head_timeout(sandgate_factory, backends):
    a, _ = backends
    sg = sandgate_factory(timeouts={"upstream_response_head": "1s"})
    t0 = time.monotonic()
    r = one_request(sg.port, "GET", "/nohead", host=sg.host(a.port), timeout=30)
    elapsed = time.monotonic() - t0
    assert r.status == 504, r
    assert r.error_name == "upstream_head_timeout", r
    assert 0.9 <= elapsed <= 1.0 + 2.0 * SCALE, elapsed
    # and sandgate dropped the upstream connection that never answered
    ev = a.wait_for(lambda: a.find_events("nohead_closed"), 3 * SCALE)
    assert ev, "backend connection still open after the 504"


def test_upstream_head_timeout_not_applied_to_slow_body(sandgate_factory, backends):
    """The response-head timer stops at the head: a body that takes longer
    than upstream_response_head still streams (SSE with a 2 s gap)."""
    a, _ = backends
    sg = sandgate_factory(timeouts={"upstream_response_head": "1s"})
    r = one_request(sg.port, "GET", "/sse?mode=chunked&gap=2", host=sg.host(a.port), timeout=30)
    assert r.status == 200, r
    assert b"data: one" in r.body and b"data: two" in r.body


def test_slow_header_trickle_gets_408(sandgate_factory, backends):
    a, _ = backends
    sg = sandgate_factory(timeouts={"request_head": "1s"})
    with Conn(sg.port, timeout=30) as c:
        head = ("GET /echo?slow=1 HTTP/1.1\r\nHost: %s\r\nX-Slow: %s\r\n\r\n"
                % (sg.host(a.port), "z" * 200)).encode()
        t0 = time.monotonic()
        got = b""
        i = 0
        c.sock.settimeout(0.1)
        # one byte every 50 ms: bytes keep arriving, but the head is never complete in time
        while time.monotonic() - t0 < 5 * SCALE and i < len(head) - 4:
            try:
                c.sock.sendall(head[i:i + 1])
            except OSError:
                break
            i += 1
            try:
                d = c.sock.recv(65536)
                if not d:
                    break
                got += d
                break
            except socket.timeout:
                pass
            except ConnectionResetError:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        c.sock.settimeout(5 * SCALE)
        how, rest = wait_closed(c.sock, 5 * SCALE)
        got += rest
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"X-Sandgate-Error: request_timeout" in got, got[:500]
    assert how in ("eof", "reset"), "connection not closed after 408"
    assert 0.9 <= elapsed <= 1.0 + 1.5 * SCALE, elapsed
    assert b"slow=1" not in a.raw_all()


def test_stalled_header_gets_408(sandgate_factory):
    sg = sandgate_factory(timeouts={"request_head": "1s"})
    with Conn(sg.port, timeout=30) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: 3000-abc.sandbox.test\r\n")
        t0 = time.monotonic()
        how, got = wait_closed(c.sock, 5 * SCALE)
        elapsed = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert how in ("eof", "reset")
    assert 0.9 <= elapsed <= 1.0 + 1.5 * SCALE, elapsed


def test_idle_keepalive_connection_closed(sandgate_factory, backends):
    a, _ = backends
    sg = sandgate_factory(timeouts={"keepalive_idle": "1s"})
    with Conn(sg.port, timeout=30) as c:
        r = c.request("GET", "/echo", host=sg.host(a.port))
        assert r.status == 200
        t0 = time.monotonic()
        how, _ = wait_closed(c.sock, 5 * SCALE)
        elapsed = time.monotonic() - t0
    assert how in ("eof", "reset"), "idle keep-alive connection never closed"
    assert 0.8 <= elapsed <= 1.0 + 1.5 * SCALE, elapsed
