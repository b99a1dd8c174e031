"""Keep-alive: pipelined requests answered in order, upstream connections
pooled per destination (address, port)."""

import hashlib
import json
import os
import socket
import time

import pytest

from client import Conn, build_request
from conftest import MASK


def test_pipelining_20_requests_in_one_send(sg, backends):
    a, b = backends
    reqs = []
    expect = []
    for i in range(20):
        sid, be = (("abc", a) if i % 3 else ("def", b))
        host = sg.host(be.port, sid)
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
    with Conn(sg.port, timeout=20) as c:
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
        # nothing extra
        c.sock.settimeout(0.3)
        try:
            assert c.sock.recv(100) == b""
        except OSError:
            pass


def test_sequential_requests_reuse_one_upstream_connection(sg, backends):
    a, _ = backends
    ids = []
    with Conn(sg.port) as c:
        for i in range(5):
            r = c.request("GET", "/echo?seq=%d" % i, host=sg.host(a.port))
            assert r.status == 200, r
            ids.append((r.json()["conn_id"], tuple(r.json()["peer"])))
    assert len(set(ids)) == 1, ids
    assert len(a.conns) == 1, [(c.id, c.peer) for c in a.conns]


def test_separate_client_connections_share_pooled_upstream(sg, backends):
    a, _ = backends
    ids = []
    for i in range(4):
        with Conn(sg.port) as c:
            r = c.request("POST", "/echo?client=%d" % i, host=sg.host(a.port), body=b"x" * i)
            assert r.status == 200, r
            ids.append(r.json()["conn_id"])
    assert len(set(ids)) == 1, ids
    assert len(a.conns) == 1, [(c.id, c.peer) for c in a.conns]


def test_pool_is_shared_by_sandboxes_on_one_address(sandgate_factory, backends):
    """Two sandboxes on the same address and port (one with a mask, one
    without) are one server to the pool: the second reuses the first's idle
    connection, and each request still carries its own sandbox's Host."""
    a, _ = backends
    sg = sandgate_factory(sandboxes={"abc": {"address": "127.0.0.2", "mask": MASK},
                                     "twin": {"address": "127.0.0.2"}})
    hosts = {}
    ids = set()
    for sid in ("abc", "twin", "abc", "twin"):
        with Conn(sg.port) as c:
            r = c.request("GET", "/echo", host=sg.host(a.port, sid))
            assert r.status == 200, r
            doc = r.json()
            ids.add(doc["conn_id"])
            hosts[sid] = [v for n, v in doc["headers"] if n.lower() == "host"]
    assert ids == {1}, ids
    assert len(a.conns) == 1
    assert hosts["abc"] == ["localhost:%d" % a.port], hosts
    assert hosts["twin"] == [sg.host(a.port, "twin")], hosts


def test_pool_is_keyed_by_address_and_port(sg, backends, raw_backend_factory):
    a, b = backends
    a2 = raw_backend_factory("127.0.0.2", name="abc-other-port")
    seen = {}
    for _ in range(3):
        for sid, be in (("abc", a), ("def", b), ("abc", a2)):
            with Conn(sg.port) as c:
                r = c.request("GET", "/echo", host=sg.host(be.port, sid))
                assert r.status == 200, r
                doc = r.json()
                assert doc["backend"] == be.name
                seen.setdefault(be.name, set()).add(doc["conn_id"])
    assert {k: len(v) for k, v in seen.items()} == {"abc": 1, "def": 1, "abc-other-port": 1}


def test_upstream_closed_pooled_connection_is_not_reused(sg, backends):
    """The backend closes its idle keep-alive connection; the next request
    must succeed on a fresh connection instead of failing."""
    a, _ = backends
    with Conn(sg.port) as c:
        r1 = c.request("GET", "/echo?n=1", host=sg.host(a.port))
        assert r1.status == 200
        for bc in list(a.conns):
            bc.sock.shutdown(socket.SHUT_RDWR)
        time.sleep(0.3)
        r2 = c.request("GET", "/echo?n=2", host=sg.host(a.port))
    assert r2.status == 200, r2
    assert r2.json()["conn_id"] != r1.json()["conn_id"]


def test_connection_close_from_client(sg, backends):
    a, _ = backends
    with Conn(sg.port) as c:
        r = c.request("GET", "/echo", host=sg.host(a.port), headers=[("Connection", "close")])
        assert r.status == 200
        from httpio import wait_closed

        how, extra = wait_closed(c.sock, 3)
    assert how is not None and extra == b"", "connection left open after Connection: close"


# Request heads are parsed in the read buffer they arrive in when they come
# whole, gathered when they span reads (ingress/proxy/conn.c); body bytes
# that came with the head go to the sandbox from that read buffer, again on
# a retry. Each shape: the client's sends (100 ms apart) for a head and a
# body; every one must reach the sandbox intact, then a second request on
# the same connection.
REQUEST_SHAPES = {
    "whole_head_with_body_part": lambda head, body: [head + body[:30000], body[30000:]],
    "head_split_body_part_in_last_read": lambda head, body: [head[:20], head[20:] + body[:20000], body[20000:]],
    "head_and_whole_body_in_one_read": lambda head, body: [head + body],
}


@pytest.mark.parametrize("shape", sorted(REQUEST_SHAPES))
def test_request_head_shapes_deliver_every_body_byte(sg, backends, shape):
    a, _ = backends
    body = os.urandom(50000)
    head = b"POST /echo?shape=1 HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (
        sg.host(a.port).encode(), len(body))
    with Conn(sg.port) as c:
        for i, part in enumerate(REQUEST_SHAPES[shape](head, body)):
            if i:
                time.sleep(0.1)
            c.send(part)
        r = c.read_response()
        assert r.status == 200, r
        doc = r.json()
        assert doc["body_len"] == len(body) and doc["body_sha256"] == hashlib.sha256(body).hexdigest(), doc
        assert c.request("GET", "/echo?after=1", host=sg.host(a.port)).status == 200


def test_pipelined_requests_with_bodies_in_one_read(sg, backends):
    a, _ = backends
    bodies = [b"a" * 3000, b"b" * 7000]
    data = b"".join(b"POST /echo?k=%d HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
                    % (k, sg.host(a.port).encode(), len(b), b) for k, b in enumerate(bodies))
    with Conn(sg.port) as c:
        c.send(data)
        for k, b in enumerate(bodies):
            r = c.read_response()
            assert r.status == 200, r
            doc = r.json()
            assert doc["target"] == "/echo?k=%d" % k, doc
            assert doc["body_sha256"] == hashlib.sha256(b).hexdigest(), doc


def test_request_retried_on_a_fresh_connection_carries_its_body(sandgate_factory, raw_backend_factory):
    """A pooled upstream connection that closes on the next request without
    answering: the request, whose body came in the same read as its head,
    is sent again whole on a fresh connection."""
    be = raw_backend_factory("127.0.0.2")

    def flaky(backend, req):
        n, sha = req.hash_body()
        if req.conn.requests == 2:
            return False  # the second request on a connection: closed unanswered
        req.respond(200, [("Content-Type", "application/json")],
                    json.dumps({"conn": req.conn.id, "body_len": n, "body_sha256": sha}).encode())
        return True

    be.route("/flaky", flaky)
    sg = sandgate_factory()
    host = sg.host(be.port).encode()
    body = bytes(range(256)) * 20
    with Conn(sg.port) as c:
        r1 = c.request("GET", "/flaky?n=1", host=sg.host(be.port))
        assert r1.status == 200
        c.send(b"POST /flaky?n=2 HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" % (host, len(body), body))
        r2 = c.read_response()
    assert r2.status == 200, r2
    doc = r2.json()
    assert doc["conn"] != r1.json()["conn"]  # answered on a fresh connection
    assert doc["body_len"] == len(body) and doc["body_sha256"] == hashlib.sha256(body).hexdigest(), doc
    assert len(be.find_events("request")) == 3  # the second request went twice


def test_pool_keeps_every_connection_a_burst_needed(sg, backends):
    """48 clients at once, twice: the second burst reuses the first's 48
    upstream connections instead of reconnecting (an idle limit below the
    burst closed the surplus and made every later burst churn)."""
    a, _ = backends
    n = 48
    conns = [Conn(sg.port, timeout=20) for _ in range(n)]
    try:
        for burst in range(2):
            # each response is held 0.3 s, so all n are in flight together
            req = build_request("GET", "/download?size=10&chunk=5&gap=0.3&burst=%d" % burst, sg.host(a.port))
            for c in conns:
                c.send(req)
            for c in conns:
                r = c.read_response()
                assert r.status == 200, r
                assert len(r.body) == 10
            assert len(a.conns) == n, "burst %d: %d upstream connections for %d clients" % (burst, len(a.conns), n)
    finally:
        for c in conns:
            c.close()
