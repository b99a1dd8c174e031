"""Private sandboxes (traffic access token) and per-sandbox concurrency
limits (max_incoming_connections), both set through the admin API."""

import asyncio
import json
import re
import threading
import time

import pytest
import websockets

from backends import WsBackend
from client import Conn, one_request
from conftest import DOMAIN, SCALE

TOKEN = "Tr4ffic-T0ken_9f8e7d6c"
WRONG = "Tr4ffic-T0ken_9f8e7d6X"
DEFAULT_HEADER = "X-Traffic-Access-Token"


def names_seen(doc):
    return [n.lower() for n, _ in doc["headers"]]


def register(sg, sid, addr, **extra):
    doc = {"address": addr}
    doc.update(extra)
    r = sg.admin.put(sid, doc)
    assert r.status == 201, r
    return r


@pytest.fixture
def psg(admin_factory, tmp_path):
    """sandgate (access log to a file) with "priv" (token, 127.0.0.2, masked)
    and "pub" (no token, 127.0.0.3) registered."""
    sg = admin_factory(access_log=str(tmp_path / "access.log"))
    sg.access_log = tmp_path / "access.log"
    register(sg, "priv", "127.0.0.2", traffic_access_token=TOKEN, mask_request_host="localhost:${PORT}")
    register(sg, "pub", "127.0.0.3")
    return sg


def assert_403(r, name, header=DEFAULT_HEADER):
    assert r.status == 403, r
    assert r.error_name == name, r
    doc = r.json()
    assert doc["code"] == 403, doc
    assert header.lower() in doc["message"].lower(), doc
    assert TOKEN not in r.body.decode("latin-1")


def test_token_missing_wrong_right(psg, backends):
    a, _ = backends
    host = psg.host(a.port, "priv")
    r = one_request(psg.port, "GET", "/echo", host=host)
    assert_403(r, "token_missing")
    r = one_request(psg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, WRONG)])
    assert_403(r, "token_invalid")
    for bad in ("", TOKEN[:-1], TOKEN + "x", TOKEN.lower(), " " + TOKEN + "x"):
        r = one_request(psg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, bad)])
        assert r.status == 403 and r.error_name == "token_invalid", (bad, r)
    assert a.conns == [], "a refused request reached the backend"

    # right token (header name in any case): proxied, the token stripped
    for name in (DEFAULT_HEADER, DEFAULT_HEADER.lower(), DEFAULT_HEADER.upper()):
        r = one_request(psg.port, "POST", "/echo", host=host, headers=[(name, TOKEN)], body=b"payload")
        assert r.status == 200, (name, r)
        doc = r.json()
        assert doc["backend"] == "abc"
        assert doc["body_len"] == 7
        assert DEFAULT_HEADER.lower() not in names_seen(doc), doc["headers"]
        assert ["localhost:%d" % a.port] == [v for n, v in doc["headers"] if n.lower() == "host"]
    # optional whitespace around the value is not part of it (RFC 9110 5.5)
    r = one_request(psg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, "  %s\t " % TOKEN)])
    assert r.status == 200, r
    # the header twice: whatever the verdict, neither copy goes upstream
    for pair in ((TOKEN, WRONG), (WRONG, TOKEN), (TOKEN, TOKEN)):
        r = one_request(psg.port, "GET", "/echo?dup", host=host,
                        headers=[(DEFAULT_HEADER, pair[0]), (DEFAULT_HEADER, pair[1])])
        assert r.status in (200, 400, 403), (pair, r)
        if r.status == 200:
            assert DEFAULT_HEADER.lower() not in names_seen(r.json()), (pair, r.json()["headers"])
    raw = a.raw_all()
    assert TOKEN.encode() not in raw
    assert WRONG.encode() not in raw
    assert DEFAULT_HEADER.lower().encode() not in raw.lower()


def test_token_checked_on_every_request_of_a_connection(psg, backends):
    a, _ = backends
    host = psg.host(a.port, "priv")
    with Conn(psg.port) as c:
        r1 = c.request("GET", "/echo?n=1", host=host, headers=[(DEFAULT_HEADER, TOKEN)])
        assert r1.status == 200, r1
        r2 = c.request("GET", "/echo?n=2", host=host)
        assert_403(r2, "token_missing")
    requests_seen = [e["line"] for e in a.find_events("request")]
    assert requests_seen == ["GET /echo?n=1 HTTP/1.1"], requests_seen
    # pipelined: right, wrong -- only the first reaches the backend
    with Conn(psg.port) as c:
        c.send(b"GET /echo?n=3 HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n"
               b"GET /echo?n=4 HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n"
               % (host.encode(), DEFAULT_HEADER.encode(), TOKEN.encode(),
                  host.encode(), DEFAULT_HEADER.encode(), WRONG.encode()))
        assert c.read_response().status == 200
        r = c.read_response()
        assert r.status == 403 and r.error_name == "token_invalid", r
    requests_seen = [e["line"] for e in a.find_events("request")]
    assert requests_seen == ["GET /echo?n=1 HTTP/1.1", "GET /echo?n=3 HTTP/1.1"], requests_seen


def test_token_header_stripped_for_public_and_static_sandboxes(psg, backends):
    a, b = backends
    for sid, be in (("pub", b), ("abc", a), ("def", b)):
        r = one_request(psg.port, "GET", "/echo", host=psg.host(be.port, sid),
                        headers=[(DEFAULT_HEADER, TOKEN), ("X-Other", "kept")])
        assert r.status == 200, (sid, r)
        doc = r.json()
        assert DEFAULT_HEADER.lower() not in names_seen(doc), (sid, doc["headers"])
        assert ("X-Other", "kept") in [tuple(h) for h in doc["headers"]]
    assert TOKEN.encode() not in a.raw_all() + b.raw_all()


def test_token_never_in_access_log_or_error_log(psg, backends):
    a, _ = backends
    host = psg.host(a.port, "priv")
    statuses = []
    for hs in ([], [(DEFAULT_HEADER, WRONG)], [(DEFAULT_HEADER, TOKEN)]):
        r = one_request(psg.port, "GET", "/echo?q=%s" % TOKEN, host=host, headers=hs)
        statuses.append(r.status)
    assert statuses == [403, 403, 200]
    # a registration echo must not leak either
    assert TOKEN.encode() not in psg.admin.get("priv").body
    deadline = time.monotonic() + 3 * SCALE
    lines = []
    while time.monotonic() < deadline:
        text = psg.access_log.read_text() if psg.access_log.exists() else ""
        lines = [l for l in text.splitlines() if l.strip()]
        if len(lines) >= 3:
            break
        time.sleep(0.05)
    assert len(lines) >= 3, lines
    recs = [json.loads(l) for l in lines]  # one JSON object a line
    mine = [rec for rec in recs if rec.get("sandbox") == "priv"]
    assert sorted(rec.get("status") for rec in mine) == [200, 403, 403], recs
    blob = psg.access_log.read_text() + psg.stderr_text()
    with open(psg.stdout_path, "rb") as f:
        blob += f.read().decode("latin-1")
    assert TOKEN not in blob
    assert WRONG not in blob


def test_token_not_in_default_stdout_access_log(admin_factory, backends):
    a, _ = backends
    sg = admin_factory()
    register(sg, "privs", "127.0.0.2", traffic_access_token=TOKEN)
    host = sg.host(a.port, "privs")
    assert one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, TOKEN)]).status == 200
    assert one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, WRONG)]).status == 403
    deadline = time.monotonic() + 3 * SCALE
    while True:
        with open(sg.stdout_path, "rb") as f:
            out = f.read().decode("latin-1")
        lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        if len([l for l in lines if l.get("sandbox") == "privs"]) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted(l["status"] for l in lines if l.get("sandbox") == "privs") == [200, 403], out
    assert TOKEN not in out and WRONG not in out


def test_custom_token_header_name(admin_factory, backends):
    a, _ = backends
    hname = "e2b-traffic-access-token"
    sg = admin_factory(token_header=hname)
    register(sg, "e2b", "127.0.0.2", traffic_access_token=TOKEN)
    host = sg.host(a.port, "e2b")
    r = one_request(sg.port, "GET", "/echo", host=host)
    assert_403(r, "token_missing", header=hname)
    # the default name is not the configured one
    r = one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, TOKEN)])
    assert_403(r, "token_missing", header=hname)
    r = one_request(sg.port, "GET", "/echo", host=host, headers=[("E2B-Traffic-Access-Token", WRONG)])
    assert_403(r, "token_invalid", header=hname)
    assert a.conns == []
    r = one_request(sg.port, "GET", "/echo", host=host, headers=[("E2B-Traffic-Access-Token", TOKEN)])
    assert r.status == 200, r
    assert hname not in names_seen(r.json()), r.json()["headers"]
    assert TOKEN.encode() not in a.raw_all()


# ---------------------------------------------------------------------------
# WebSocket
# ---------------------------------------------------------------------------

@pytest.fixture
def ws_backend():
    be = WsBackend("127.0.0.2").start()
    yield be
    be.stop()


def test_websocket_token(psg, ws_backend):
    uri = "ws://%d-priv.%s:%d/sock" % (ws_backend.port, DOMAIN, psg.port)

    async def refused(headers):
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as ei:
            await websockets.connect(uri, host="127.0.0.1", port=psg.port, extra_headers=headers,
                                     open_timeout=10 * SCALE)
        return ei.value.status_code, ei.value.headers

    async def run():
        st, hs = await refused([])
        assert st == 403 and hs.get("X-Sandgate-Error") == "token_missing", (st, hs)
        st, hs = await refused([(DEFAULT_HEADER, WRONG)])
        assert st == 403 and hs.get("X-Sandgate-Error") == "token_invalid", (st, hs)
        assert ws_backend.request_headers == []
        async with websockets.connect(uri, host="127.0.0.1", port=psg.port,
                                      extra_headers=[(DEFAULT_HEADER, TOKEN)],
                                      open_timeout=10 * SCALE) as ws:
            await ws.send("secret-ok")
            assert await ws.recv() == "secret-ok"

    asyncio.run(run())
    assert len(ws_backend.request_headers) == 1
    names = [n.lower() for n, _ in ws_backend.request_headers[0]]
    assert DEFAULT_HEADER.lower() not in names, ws_backend.request_headers[0]
    assert all(TOKEN not in v for _, v in ws_backend.request_headers[0])
    assert ws_backend.hosts == ["localhost:%d" % ws_backend.port]


# ---------------------------------------------------------------------------
# max_incoming_connections
# ---------------------------------------------------------------------------

class Gate:
    """Backend route that holds each request until released."""

    def __init__(self):
        self.release = threading.Event()

    def __call__(self, backend, req):
        req.hash_body()
        backend.event(kind="held", conn=req.conn.id)
        self.release.wait(30)
        req.respond(200, [("Content-Type", "text/plain")], b"released", reason="OK")
        return True


def _held_count(be):
    return len(be.find_events("held"))


def assert_429(r, limit):
    assert r.status == 429, r
    assert r.error_name == "too_many_connections", r
    doc = r.json()
    assert doc["code"] == 429
    assert re.search(r"\b%d\b" % limit, doc["message"]), doc


@pytest.mark.parametrize("limit", [1, 3])
def test_max_incoming_connections(admin_factory, backends, limit):
    a, _ = backends
    gate = Gate()
    a.route("/hold", gate)
    sg = admin_factory(workers=2)
    register(sg, "lim", "127.0.0.2", max_incoming_connections=limit)
    host = sg.host(a.port, "lim")
    held = [Conn(sg.port, timeout=20 * SCALE) for _ in range(limit)]
    try:
        for i, c in enumerate(held):
            c.send(b"GET /hold?i=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host.encode()))
        assert a.wait_for(lambda: _held_count(a) == limit, 5 * SCALE), _held_count(a)
        # the N+1th (several times, on fresh and on one kept-alive connection)
        for _ in range(3):
            assert_429(one_request(sg.port, "GET", "/echo", host=host), limit)
        with Conn(sg.port) as extra:
            assert_429(extra.request("GET", "/echo", host=host), limit)
            assert_429(extra.request("POST", "/echo", host=host, body=b"x" * 1000), limit)
        # other sandboxes are not limited by it
        assert one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "abc")).status == 200
        assert len(a.find_events("request")) == limit + 1
        gate.release.set()
        for c in held:
            r = c.read_response()
            assert r.status == 200 and r.body == b"released", r
        # the held client connections stay open (idle keep-alive is not an
        # exchange); new requests fit again, also more than `limit` in a row
        for i in range(limit + 2):
            r = one_request(sg.port, "GET", "/echo?after=%d" % i, host=host)
            assert r.status == 200, (i, r)
        # and `limit` concurrent ones again
        gate.release.clear()
        a.events.clear()
        for i, c in enumerate(held):
            c.send(b"GET /hold?again=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host.encode()))
        assert a.wait_for(lambda: _held_count(a) == limit, 5 * SCALE), \
            "only %d of %d requests admitted after the first batch finished" % (_held_count(a), limit)
        assert_429(one_request(sg.port, "GET", "/echo", host=host), limit)
        gate.release.set()
        for c in held:
            assert c.read_response().status == 200
    finally:
        gate.release.set()
        for c in held:
            c.close()


def test_max_incoming_connections_counts_websocket_tunnels(admin_factory, ws_backend, backends):
    a, _ = backends
    sg = admin_factory(workers=2)
    register(sg, "wsl", "127.0.0.2", max_incoming_connections=1)
    uri = "ws://%d-wsl.%s:%d/" % (ws_backend.port, DOMAIN, sg.port)
    host = "%d-wsl.%s:%d" % (ws_backend.port, DOMAIN, sg.port)

    async def run():
        ws = await websockets.connect(uri, host="127.0.0.1", port=sg.port, open_timeout=10 * SCALE)
        await ws.send("a")
        assert await ws.recv() == "a"
        # the open tunnel is the one exchange allowed
        assert_429(one_request(sg.port, "GET", "/", host=host), 1)
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as ei:
            await websockets.connect(uri, host="127.0.0.1", port=sg.port, open_timeout=10 * SCALE)
        assert ei.value.status_code == 429
        await ws.close()

    asyncio.run(run())
    # once the tunnel is gone, a request fits again
    deadline = time.monotonic() + 2 * SCALE
    while True:
        r = one_request(sg.port, "GET", "/", host=host)
        if r.status != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status != 429, "the closed WebSocket still counts against the limit"


def test_token_and_limit_together(admin_factory, backends):
    """Refused (403) requests do not use up the limit; a token-carrying
    request over the limit gets 429."""
    a, _ = backends
    gate = Gate()
    a.route("/hold", gate)
    sg = admin_factory()
    register(sg, "both", "127.0.0.2", traffic_access_token=TOKEN, max_incoming_connections=1)
    host = sg.host(a.port, "both")
    for _ in range(5):
        assert one_request(sg.port, "GET", "/echo", host=host).status == 403
    c = Conn(sg.port, timeout=20 * SCALE)
    try:
        c.send(b"GET /hold HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n" % (host.encode(), DEFAULT_HEADER.encode(),
                                                                       TOKEN.encode()))
        assert a.wait_for(lambda: _held_count(a) == 1, 5 * SCALE)
        assert_429(one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, TOKEN)]), 1)
        gate.release.set()
        assert c.read_response().status == 200
    finally:
        gate.release.set()
        c.close()
    r = one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, TOKEN)])
    assert r.status == 200, r


def test_limit_released_when_client_leaves_and_on_upstream_errors(admin_factory, backends):
    """Every way an exchange can end gives its slot back: the client
    leaving mid-wait, a 502 for a closed port, pipelined requests on one
    connection count one at a time."""
    from backends import closed_port

    a, _ = backends
    gate = Gate()
    a.route("/hold", gate)
    sg = admin_factory(workers=2, timeouts={"upstream_retry_window": "0s"})
    register(sg, "one", "127.0.0.2", max_incoming_connections=1)
    host = sg.host(a.port, "one")
    try:
        for round_ in range(3):
            c = Conn(sg.port, timeout=10 * SCALE)
            c.send(b"GET /hold?r=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (round_, host.encode()))
            assert a.wait_for(lambda: _held_count(a) == round_ + 1, 5 * SCALE)
            assert_429(one_request(sg.port, "GET", "/echo", host=host), 1)
            c.close()  # the client gives up while the backend holds the request
            deadline = time.monotonic() + 2 * SCALE
            while True:
                r = one_request(sg.port, "GET", "/echo", host=host)
                if r.status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status == 200, "slot not released after the client left (round %d): %r" % (round_, r)
        gate.release.set()
        dead = closed_port("127.0.0.2")
        for _ in range(3):
            r = one_request(sg.port, "GET", "/", host=sg.host(dead, "one"))
            assert r.status == 502 and r.error_name == "port_not_open", r
        assert one_request(sg.port, "GET", "/echo", host=host).status == 200
        # pipelined on one connection: sequential exchanges, never over the limit
        with Conn(sg.port) as c:
            c.send(b"".join(b"GET /echo?p=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host.encode())
                            for i in range(5)))
            for i in range(5):
                r = c.read_response()
                assert r.status == 200, (i, r)
                assert r.json()["target"] == "/echo?p=%d" % i
    finally:
        gate.release.set()


def test_replacing_put_changes_token_and_limit(admin_factory, backends):
    a, _ = backends
    sg = admin_factory()
    register(sg, "rot", "127.0.0.2", traffic_access_token=TOKEN)
    host = sg.host(a.port, "rot")
    assert one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, TOKEN)]).status == 200
    assert sg.admin.put("rot", {"address": "127.0.0.2", "traffic_access_token": WRONG}).status == 200
    r = one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, TOKEN)])
    assert r.status == 403 and r.error_name == "token_invalid", r
    assert one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, WRONG)]).status == 200
    # no token any more: public, the header still stripped
    assert sg.admin.put("rot", {"address": "127.0.0.2"}).status == 200
    r = one_request(sg.port, "GET", "/echo", host=host)
    assert r.status == 200, r
    r = one_request(sg.port, "GET", "/echo", host=host, headers=[(DEFAULT_HEADER, WRONG)])
    assert r.status == 200 and DEFAULT_HEADER.lower() not in names_seen(r.json()), r


def test_finished_exchange_frees_its_slot_before_the_client_closes(admin_factory, backends):
    """An exchange is over once its response is complete: a client that got
    a whole `Connection: close` response but has not closed its socket yet
    is no longer an in-flight request and must not hold the slot."""
    a, _ = backends
    sg = admin_factory()
    register(sg, "fin", "127.0.0.2", max_incoming_connections=1)
    host = sg.host(a.port, "fin")
    with Conn(sg.port) as first:
        r = first.request("GET", "/echo?first", host=host, headers=[("Connection", "close")])
        assert r.status == 200 and r.json()["target"] == "/echo?first", r
        # `first` keeps its socket open for a moment
        r2 = one_request(sg.port, "GET", "/echo?second", host=host)
        assert r2.status == 200, "a completed exchange still counts against the limit: %r" % r2
