"""Admin API: sandbox registration (PUT / GET / list / DELETE) with every
validation error, auth, health / readiness / metrics / reload, routing of
registered sandboxes, and DELETE / replacing PUT cutting live connections
(WebSocket, streaming download, pooled upstream connections)."""

import asyncio
import json
import re
import signal
import subprocess
import time

import pytest
import websockets

from backends import WsBackend
from client import Conn, one_request
from conftest import (
    DOMAIN,
    SANDGATE_BIN,
    SCALE,
    AdminClient,
    admin_config,
    finish_exited,
    free_port,
    to_yaml,
)
from httpio import wait_closed

RECORD_KEYS = ["id", "address", "mask_request_host", "has_traffic_access_token",
               "max_incoming_connections", "allow_internet_access", "network"]
# The egress policy every record without one echoes (see tests/egress/).
NO_EGRESS_RULES = {"allow_internet_access": True, "network": {"allow_out": [], "deny_out": []}}


def hget(doc, name):
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


@pytest.fixture
def asg(admin_factory):
    """sandgate with an admin API (memory store, no token)."""
    return admin_factory()


# ---------------------------------------------------------------------------
# CRUD
# ---------------------------------------------------------------------------

def test_put_create_replace_get_delete(asg):
    ad = asg.admin
    r = ad.put("sb1", {"address": "127.0.0.2", "mask_request_host": "localhost:${PORT}",
                       "traffic_access_token": "tok-SECRET-123", "max_incoming_connections": 7})
    assert r.status == 201, r
    assert r.header("Content-Type", "").startswith("application/json")
    doc = r.json()
    assert list(doc) == RECORD_KEYS or sorted(doc) == sorted(RECORD_KEYS), doc
    assert doc == {"id": "sb1", "address": "127.0.0.2", "mask_request_host": "localhost:${PORT}",
                   "has_traffic_access_token": True, "max_incoming_connections": 7,
                   **NO_EGRESS_RULES}
    assert b"tok-SECRET-123" not in r.body

    g = ad.get("sb1")
    assert g.status == 200, g
    assert g.json() == doc
    assert b"tok-SECRET-123" not in g.body

    # replace: 200, the new record wholesale (unset fields go back to none)
    r2 = ad.put("sb1", {"address": "::1"})
    assert r2.status == 200, r2
    assert r2.json() == {"id": "sb1", "address": "::1", "mask_request_host": None,
                         "has_traffic_access_token": False, "max_incoming_connections": None,
                         **NO_EGRESS_RULES}
    assert ad.get("sb1").json() == r2.json()

    # explicit nulls are "none"
    r3 = ad.put("sb1", {"address": "127.0.0.3", "mask_request_host": None,
                        "traffic_access_token": None, "max_incoming_connections": None})
    assert r3.status == 200, r3
    assert r3.json()["mask_request_host"] is None
    assert r3.json()["has_traffic_access_token"] is False

    d = ad.delete("sb1")
    assert d.status == 204, d
    assert d.body == b""
    g2 = ad.get("sb1")
    assert g2.status == 404, g2
    assert g2.json()["code"] == 404
    d2 = ad.delete("sb1")
    assert d2.status == 404, d2


def test_put_boundary_values_accepted(asg):
    ad = asg.admin
    long_id = "a" * 64
    r = ad.put(long_id, {"address": "10.1.2.3", "max_incoming_connections": 1000000,
                         "traffic_access_token": "!"})
    assert r.status == 201, r
    assert r.json()["id"] == long_id
    assert r.json()["max_incoming_connections"] == 1000000
    r = ad.put("0", {"address": "fe80::1234", "max_incoming_connections": 1,
                     "mask_request_host": "example.com"})
    assert r.status == 201, r
    assert r.json()["address"] == "fe80::1234"
    assert r.json()["mask_request_host"] == "example.com"
    assert r.json()["has_traffic_access_token"] is False
    # a token of every visible ASCII character
    tok = "".join(chr(c) for c in range(0x21, 0x7F))
    r = ad.put("vis", {"address": "10.0.0.1", "traffic_access_token": tok})
    assert r.status == 201, r
    assert tok.encode() not in r.body


BAD_BODIES = [
    # (id, body, field)
    ("ABC", {"address": "127.0.0.2"}, "id"),
    ("a-b", {"address": "127.0.0.2"}, "id"),
    ("a_b", {"address": "127.0.0.2"}, "id"),
    ("a.b", {"address": "127.0.0.2"}, "id"),
    ("a" * 65, {"address": "127.0.0.2"}, "id"),
    ("ok", {}, "address"),
    ("ok", {"address": "not-an-ip"}, "address"),
    ("ok", {"address": "localhost"}, "address"),
    ("ok", {"address": "127.0.0.1:80"}, "address"),
    ("ok", {"address": "[::1]"}, "address"),
    ("ok", {"address": "256.1.1.1"}, "address"),
    ("ok", {"address": ""}, "address"),
    ("ok", {"address": 2130706433}, "address"),
    ("ok", {"address": None}, "address"),
    ("ok", {"address": "127.0.0.2", "mask_request_host": "local host:${PORT}"}, "mask_request_host"),
    ("ok", {"address": "127.0.0.2", "mask_request_host": "a\r\nX-Evil: 1"}, "mask_request_host"),
    ("ok", {"address": "127.0.0.2", "mask_request_host": "a\nb"}, "mask_request_host"),
    ("ok", {"address": "127.0.0.2", "mask_request_host": "h\u00e9llo:${PORT}"}, "mask_request_host"),
    ("ok", {"address": "127.0.0.2", "mask_request_host": 80}, "mask_request_host"),
    ("ok", {"address": "127.0.0.2", "traffic_access_token": ""}, "traffic_access_token"),
    ("ok", {"address": "127.0.0.2", "traffic_access_token": "has space"}, "traffic_access_token"),
    ("ok", {"address": "127.0.0.2", "traffic_access_token": "tab\there"}, "traffic_access_token"),
    ("ok", {"address": "127.0.0.2", "traffic_access_token": "new\r\nline"}, "traffic_access_token"),
    ("ok", {"address": "127.0.0.2", "traffic_access_token": "caf\u00e9"}, "traffic_access_token"),
    ("ok", {"address": "127.0.0.2", "traffic_access_token": "del\x7f"}, "traffic_access_token"),
    ("ok", {"address": "127.0.0.2", "traffic_access_token": 12345}, "traffic_access_token"),
    ("ok", {"address": "127.0.0.2", "max_incoming_connections": 0}, "max_incoming_connections"),
    ("ok", {"address": "127.0.0.2", "max_incoming_connections": -1}, "max_incoming_connections"),
    ("ok", {"address": "127.0.0.2", "max_incoming_connections": 1.5}, "max_incoming_connections"),
    ("ok", {"address": "127.0.0.2", "max_incoming_connections": "10"}, "max_incoming_connections"),
    ("ok", {"address": "127.0.0.2", "max_incoming_connections": True}, "max_incoming_connections"),
    ("ok", {"address": "127.0.0.2", "max_incoming_connections": 1000001}, "max_incoming_connections"),
    ("ok", {"address": "127.0.0.2", "bogus": 1}, "bogus"),
    ("ok", {"address": "127.0.0.2", "mask": "localhost:${PORT}"}, "mask"),
]


def test_put_validation_errors(asg):
    ad = asg.admin
    failures = []
    for sid, body, field in BAD_BODIES:
        r = ad.put(sid, body)
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if r.status != 400 or not isinstance(doc, dict) or doc.get("field") != field \
                or doc.get("code") != 400 or not isinstance(doc.get("message"), str) or not doc["message"]:
            failures.append((sid, body, field, r))
            continue
        # nothing was stored (ids that are valid at all)
        if re.fullmatch(r"[a-z0-9]{1,64}", sid):
            g = ad.get(sid)
            if g.status != 404:
                failures.append(("stored anyway", sid, body, g))
    assert not failures, "\n".join(repr(f) for f in failures)
    lst = ad.request("GET", "/v1/sandboxes")
    assert lst.json() == {"sandboxes": [], "next": None}


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b'{"address": "127.0.0.2",}',
                                 b"[]", b'"127.0.0.2"', b"null",
                                 b'{"address": "127.0.0.2", "address": "127.0.0.3"}'])
def test_put_invalid_json_is_400_without_field(asg, raw):
    r = asg.admin.put("ok", raw)
    assert r.status == 400, r
    doc = r.json()
    assert "field" not in doc, doc
    assert doc["code"] == 400 and doc["message"], doc
    assert asg.admin.get("ok").status == 404


def test_put_chunked_body_is_411(asg):
    body = json.dumps({"address": "127.0.0.2"}).encode()
    with Conn(asg.admin_port, timeout=5 * SCALE) as c:
        c.send(b"PUT /v1/sandboxes/chunky HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        r = c.read_response()
    assert r.status == 411, r
    assert r.json()["code"] == 411
    assert asg.admin.get("chunky").status == 404


def test_list_paging_in_id_order(asg):
    ad = asg.admin
    ids = ["z9", "a10", "a9", "b", "0z", "m", "mm", "a", "9"] + ["p%02d" % i for i in range(16)]
    for i, sid in enumerate(ids):
        assert ad.put(sid, {"address": "10.0.0.%d" % (i + 1)}).status == 201
    want = sorted(ids)
    first = ad.request("GET", "/v1/sandboxes")
    assert first.status == 200
    assert [s["id"] for s in first.json()["sandboxes"]] == want
    assert first.json()["next"] is None
    assert all(sorted(s) == sorted(RECORD_KEYS) for s in first.json()["sandboxes"])
    # pages of 4, following next
    got, after, pages = [], None, 0
    while True:
        q = "/v1/sandboxes?limit=4" + ("&after=%s" % after if after else "")
        doc = ad.request("GET", q).json()
        pages += 1
        assert len(doc["sandboxes"]) <= 4
        got += [s["id"] for s in doc["sandboxes"]]
        if doc["next"] is None:
            break
        assert doc["next"] == doc["sandboxes"][-1]["id"]
        after = doc["next"]
    assert got == want
    assert pages in (7, 8)  # 25 ids: 7 pages (an empty 8th is tolerated)
    # after an id that does not exist: the ids that sort after it
    doc = ad.request("GET", "/v1/sandboxes?after=mb&limit=1000").json()
    assert [s["id"] for s in doc["sandboxes"]] == [i for i in want if i > "mb"]
    assert doc["next"] is None
    assert ad.request("GET", "/v1/sandboxes?limit=1").json()["next"] == want[0]
    doc = ad.request("GET", "/v1/sandboxes?limit=1&after=%s" % want[-1]).json()
    assert doc == {"sandboxes": [], "next": None}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "", "1.5", "99999999999999999999"])
def test_list_bad_limit_is_400(asg, limit):
    r = asg.admin.request("GET", "/v1/sandboxes?limit=%s" % limit)
    assert r.status == 400, r
    assert r.json()["field"] == "limit", r
    assert r.json()["code"] == 400


# ---------------------------------------------------------------------------
# health, readiness, metrics, reload
# ---------------------------------------------------------------------------

def test_healthz_readyz_metrics(asg, backends):
    a, _ = backends
    h = asg.admin.request("GET", "/healthz")
    assert (h.status, h.json()) == (200, {"status": "ok"})
    assert h.header("Content-Type", "").startswith("application/json")
    rd = asg.admin.request("GET", "/readyz")
    assert (rd.status, rd.json()) == (200, {"status": "ready"})

    def total_requests():
        m = asg.admin.request("GET", "/metrics")
        assert m.status == 200, m
        assert m.header("Content-Type", "").startswith("text/plain"), m.headers
        text = m.body.decode()
        for line in text.splitlines():
            assert line.startswith("#") or re.fullmatch(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? \S+', line), line
        return text, sum(float(l.split()[-1]) for l in text.splitlines()
                         if l.startswith("sandgate_responses_total"))

    text, before = total_requests()
    assert "# TYPE" in text
    for i in range(3):
        assert one_request(asg.port, "GET", "/echo", host=asg.host(a.port)).status == 200
    assert one_request(asg.port, "GET", "/", host=asg.host(a.port, "nosuch")).status == 502
    # counters are bumped on the worker right around the last write: allow
    # the scrape a moment to see them, but never more than the 4
    deadline = time.monotonic() + 2 * SCALE
    while True:
        _, after = total_requests()
        if after - before >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert after - before == 4, (before, after)
    time.sleep(0.1)
    assert total_requests()[1] == after


def test_readyz_is_503_while_draining(admin_factory, backends):
    a, _ = backends
    sg = admin_factory(drain_timeout="20s")
    # an open SSE stream keeps the drain going
    c = Conn(sg.port, timeout=10 * SCALE)
    c.send(b"GET /sse?gap=3 HTTP/1.1\r\nHost: %s\r\n\r\n" % sg.host(a.port).encode())
    assert c.read_head().status == 200
    assert a.wait_for(lambda: a.find_events("sse_first_sent"), 5 * SCALE)
    sg.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2 * SCALE
    r = None
    while time.monotonic() < deadline:
        r = AdminClient(sg.admin_port).request("GET", "/readyz")
        if r.status == 503:
            break
        time.sleep(0.05)
    assert r is not None and r.status == 503, r
    assert r.json() == {"status": "draining"}
    h = AdminClient(sg.admin_port).request("GET", "/healthz")
    assert h.status == 200, h
    c.close()
    rc, problem = finish_exited(sg, 10 * SCALE)
    assert problem is None, problem
    assert rc == 0, sg.stderr_text()


def test_reload_applies_and_rejects(admin_factory, backends):
    a, _ = backends
    port = free_port()
    cfg = admin_config(port)
    sg = admin_factory(config=cfg, admin_port=port)
    assert one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "ghi")).status == 502
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["listen"] = ["127.0.0.1:%d" % sg.port]
    cfg2["sandboxes"]["ghi"] = {"address": "127.0.0.2"}
    with open(sg.config_path, "w") as f:
        f.write(to_yaml(cfg2) + "\n")
    r = sg.admin.request("POST", "/v1/reload")
    assert (r.status, r.json()) == (200, {"status": "reloaded"}), r
    deadline = time.monotonic() + 3 * SCALE
    while True:
        rr = one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "ghi"))
        if rr.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rr.status == 200 and rr.json()["backend"] == "abc", rr

    # a broken file: 500, errors listed, the running config kept
    with open(sg.config_path, "w") as f:
        f.write(to_yaml(cfg2) + "\nno_such_key_at_all: 1\n")
    r = sg.admin.request("POST", "/v1/reload")
    assert r.status == 500, r
    doc = r.json()
    assert doc["message"] == "reload rejected", doc
    assert isinstance(doc["errors"], list) and doc["errors"], doc
    assert any("no_such_key_at_all" in e for e in doc["errors"]), doc
    assert one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "ghi")).status == 200
    assert sg.admin.request("GET", "/v1/reload").status == 405


# ---------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------

ADMIN_TOKEN = "adm1n-T0ken.secret"


def _assert_401(r):
    assert r.status == 401, r
    assert (r.header("WWW-Authenticate") or "").split()[0].lower() == "bearer", r.headers
    assert r.json()["code"] == 401


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_admin_token_required(admin_factory, how):
    if how == "yaml":
        sg = admin_factory(token=ADMIN_TOKEN)
    else:
        sg = admin_factory(args=["--admin-token", ADMIN_TOKEN])
        sg.admin.token = ADMIN_TOKEN
    anon = AdminClient(sg.admin_port)
    # health and readiness need no token
    assert anon.request("GET", "/healthz").status == 200
    assert anon.request("GET", "/readyz").status == 200
    protected = [("GET", "/metrics", None), ("GET", "/v1/sandboxes", None),
                 ("GET", "/v1/sandboxes/x1", None), ("PUT", "/v1/sandboxes/x1", {"address": "127.0.0.2"}),
                 ("DELETE", "/v1/sandboxes/x1", None), ("POST", "/v1/reload", None)]
    bad_auth = [None, "Bearer", "Bearer ", "Bearer wrong", "Bearer " + ADMIN_TOKEN[:-1],
                "Bearer " + ADMIN_TOKEN + "x", "Basic " + ADMIN_TOKEN, ADMIN_TOKEN,
                "Bearer " + ADMIN_TOKEN.upper()]
    for method, path, body in protected:
        for auth in bad_auth:
            hs = {"Authorization": auth} if auth is not None else {}
            r = anon.request(method, path, body=body, headers=hs)
            _assert_401(r)
    # nothing above was applied
    ok = sg.admin
    assert ok.get("x1").status == 404
    assert ok.request("GET", "/metrics").status == 200
    assert ok.put("x1", {"address": "127.0.0.2"}).status == 201
    assert ok.request("GET", "/v1/sandboxes").json()["sandboxes"][0]["id"] == "x1"
    # the scheme is case-insensitive (RFC 7235)
    assert anon.request("GET", "/v1/sandboxes/x1", headers={"Authorization": "bearer " + ADMIN_TOKEN}).status == 200
    assert ok.delete("x1").status == 204
    assert ADMIN_TOKEN not in sg.stderr_text()


def test_non_loopback_admin_without_token_refuses_to_start(tmp_path):
    port = free_port()
    for extra_cfg, args in [({"admin": {"listen": ["0.0.0.0:%d" % port]}}, []),
                            ({}, ["--admin-listen", "0.0.0.0:%d" % port]),
                            ({"admin": {"listen": ["0.0.0.0:%d" % port]}}, ["--check-config"])]:
        cfg = {"listen": ["127.0.0.1:%d" % free_port()], "domains": [DOMAIN], "workers": 1}
        cfg.update(extra_cfg)
        path = tmp_path / "nl.yaml"
        path.write_text(to_yaml(cfg) + "\n")
        p = subprocess.run([SANDGATE_BIN, "--config", str(path)] + args, capture_output=True,
                           timeout=10 * SCALE, stdin=subprocess.DEVNULL)
        err = p.stderr.decode(errors="replace")
        assert p.returncode == 1, (p.returncode, err)
        assert "token" in err.lower(), err
        assert "admin" in err.lower(), err
    # with a token the same file is fine (checked only: nothing is bound)
    p = subprocess.run([SANDGATE_BIN, "--config", str(path), "--admin-token", "t0k", "--check-config"],
                       capture_output=True, timeout=10 * SCALE, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr


def test_admin_flags(sandgate_factory, tmp_path, backends):
    a, _ = backends
    port = free_port()
    store = tmp_path / "flags.wal"
    sg = sandgate_factory(args=["--admin-listen", "127.0.0.1:%d" % port, "--admin-store", str(store),
                                "--admin-token", "flagtok"])
    from conftest import attach_admin

    attach_admin(sg, port, "flagtok")
    assert AdminClient(port).request("GET", "/v1/sandboxes").status == 401
    assert sg.admin.put("flg", {"address": "127.0.0.2"}).status == 201
    assert b'"flg"' in store.read_bytes()
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "flg"))
    assert r.status == 200 and r.json()["backend"] == "abc", r


# ---------------------------------------------------------------------------
# routing of registered sandboxes
# ---------------------------------------------------------------------------

def test_registered_sandbox_routed_with_and_without_mask(asg, backends):
    a, b = backends
    ad = asg.admin
    assert ad.put("reg1", {"address": "127.0.0.2", "mask_request_host": "inner-${PORT}.local:${PORT}"}).status == 201
    assert ad.put("reg2", {"address": "127.0.0.3"}).status == 201
    host1 = asg.host(a.port, "reg1")
    r = one_request(asg.port, "GET", "/echo?x=1", host=host1)
    assert r.status == 200, r
    doc = r.json()
    assert doc["backend"] == "abc"
    assert doc["target"] == "/echo?x=1"
    assert hget(doc, "Host") == ["inner-%d.local:%d" % (a.port, a.port)]
    assert hget(doc, "X-Forwarded-Host") == [host1]
    host2 = asg.host(b.port, "reg2")
    r = one_request(asg.port, "GET", "/echo", host=host2)
    assert r.status == 200, r
    assert r.json()["backend"] == "def"
    assert hget(r.json(), "Host") == [host2]
    assert hget(r.json(), "X-Forwarded-Host") == []

    # replace moves it; delete makes it unknown
    assert ad.put("reg2", {"address": "127.0.0.2"}).status == 200
    r = one_request(asg.port, "GET", "/echo", host=host2)
    assert r.status == 200 and r.json()["backend"] == "abc", r
    assert ad.delete("reg2").status == 204
    r = one_request(asg.port, "GET", "/echo", host=host2)
    assert r.status == 502, r
    assert r.json() == {"sandboxId": "reg2", "message": "The sandbox was not found", "code": 502}
    # never registered
    assert one_request(asg.port, "GET", "/echo", host=asg.host(a.port, "reg3")).status == 502


def test_lookup_order_static_before_admin_by_default(admin_factory, backends):
    a, b = backends
    sg = admin_factory()
    # "abc" is static at 127.0.0.2; the admin record points elsewhere
    assert sg.admin.put("abc", {"address": "127.0.0.3"}).status == 201
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "abc"))
    assert r.status == 200 and r.json()["backend"] == "abc", r


def test_lookup_order_admin_first(admin_factory, backends):
    a, b = backends
    sg = admin_factory(lookup_order=["admin", "static"])
    assert sg.admin.put("abc", {"address": "127.0.0.3"}).status == 201
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "abc"))
    assert r.status == 200 and r.json()["backend"] == "def", r
    assert sg.admin.delete("abc").status == 204
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "abc"))
    assert r.status == 200 and r.json()["backend"] == "abc", r


def test_lookup_order_without_admin_ignores_registrations(admin_factory, backends):
    a, _ = backends
    sg = admin_factory(lookup_order=["static"])
    assert sg.admin.put("onlyadm", {"address": "127.0.0.2"}).status == 201
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "onlyadm"))
    assert r.status == 502, r


# ---------------------------------------------------------------------------
# DELETE / replacing PUT cut live connections
# ---------------------------------------------------------------------------

CUT_WITHIN = 2.0 * SCALE


@pytest.fixture
def ws_backend():
    be = WsBackend("127.0.0.2").start()
    yield be
    be.stop()


def _ws_uri(sg, be, sid):
    return "ws://%d-%s.%s:%d/live" % (be.port, sid, DOMAIN, sg.port)


@pytest.mark.parametrize("how", ["delete", "replace"])
def test_delete_cuts_open_websockets_on_every_worker(admin_factory, ws_backend, how):
    sg = admin_factory(workers=3)
    ad = sg.admin
    assert ad.put("wsa", {"address": "127.0.0.2"}).status == 201
    assert ad.put("wsb", {"address": "127.0.0.2"}).status == 201

    async def run():
        async def open_ws(sid):
            w = await websockets.connect(_ws_uri(sg, ws_backend, sid), host="127.0.0.1", port=sg.port,
                                         open_timeout=10 * SCALE, close_timeout=1)
            await w.send("ping")
            assert await w.recv() == "ping"
            return w

        # several tunnels, spread over the workers by SO_REUSEPORT
        was = [await open_ws("wsa") for _ in range(6)]
        wb = await open_ws("wsb")
        t0 = time.monotonic()
        if how == "delete":
            r = ad.delete("wsa")
            assert r.status == 204, r
        else:
            r = ad.put("wsa", {"address": "127.0.0.2"})
            assert r.status == 200, r
        for i, wa in enumerate(was):
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(wa.recv(), max(0.1, CUT_WITHIN + 3 - (time.monotonic() - t0)))
            cut = time.monotonic() - t0
            assert cut < CUT_WITHIN, "WebSocket %d still open %.2fs after %s" % (i, cut, how)
        # the other sandbox's WebSocket is untouched
        await wb.send("still")
        assert await asyncio.wait_for(wb.recv(), 5 * SCALE) == "still"
        await wb.close()
        # after a replace the sandbox takes new tunnels
        if how == "replace":
            w = await open_ws("wsa")
            await w.close()

    asyncio.run(run())


def _trickle_handler(backend, req):
    req.hash_body()
    req.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend.event(kind="trickle_started", conn=req.conn.id)
    try:
        for _ in range(int(60 / 0.02)):
            req.send(b"400\r\n" + b"t" * 1024 + b"\r\n")
            time.sleep(0.02)
    except OSError as e:
        backend.event(kind="trickle_write_failed", conn=req.conn.id, error=repr(e))
    return False


def _read_until_cut(c, timeout):
    """Reads (discarding) until EOF/reset; returns seconds taken or None."""
    t0 = time.monotonic()
    how, _ = wait_closed(c.sock, timeout)
    return (time.monotonic() - t0) if how else None


@pytest.mark.parametrize("how", ["delete", "replace"])
def test_delete_cuts_streaming_download(asg, backends, how):
    a, b = backends
    a.route("/trickle", _trickle_handler)
    b.route("/trickle", _trickle_handler)
    ad = asg.admin
    assert ad.put("dla", {"address": "127.0.0.2"}).status == 201
    assert ad.put("dlb", {"address": "127.0.0.3"}).status == 201
    ca = Conn(asg.port, timeout=10 * SCALE)
    cb = Conn(asg.port, timeout=10 * SCALE)
    try:
        ca.send(b"GET /trickle HTTP/1.1\r\nHost: %s\r\n\r\n" % asg.host(a.port, "dla").encode())
        cb.send(b"GET /trickle HTTP/1.1\r\nHost: %s\r\n\r\n" % asg.host(b.port, "dlb").encode())
        for c in (ca, cb):
            assert c.read_head().status == 200
            c.reader.read_exact(3000)  # streaming is under way
        t0 = time.monotonic()
        r = ad.delete("dla") if how == "delete" else ad.put("dla", {"address": "127.0.0.2"})
        assert r.status == (204 if how == "delete" else 200), r
        took = _read_until_cut(ca, CUT_WITHIN + 3)
        assert took is not None, "download still streaming %.1fs after %s" % (CUT_WITHIN + 3, how)
        assert time.monotonic() - t0 < CUT_WITHIN, "cut after %.2fs" % (time.monotonic() - t0)
        # the backend's connection went too
        assert a.wait_for(lambda: a.find_events("trickle_write_failed"), 3 * SCALE), \
            "backend kept writing into sandgate after %s" % how
        # the other sandbox's download goes on
        cb.sock.settimeout(5 * SCALE)
        n0 = cb.reader.total
        cb.reader.read_exact(len(cb.reader.buf) + 5000)
        assert cb.reader.total > n0
        assert not b.find_events("trickle_write_failed")
    finally:
        ca.close()
        cb.close()


def test_delete_closes_pooled_upstream_connections(asg, backends):
    a, b = backends
    ad = asg.admin
    assert ad.put("pla", {"address": "127.0.0.2"}).status == 201
    assert ad.put("plb", {"address": "127.0.0.3"}).status == 201
    for sid, be in (("pla", a), ("plb", b)):
        with Conn(asg.port) as c:
            r = c.request("GET", "/echo", host=asg.host(be.port, sid))
            assert r.status == 200, r
    time.sleep(0.2)
    # both upstream connections are pooled (open, idle)
    assert [c.closed for c in a.conns] == [None]
    assert [c.closed for c in b.conns] == [None]
    t0 = time.monotonic()
    assert ad.delete("pla").status == 204
    ev = a.wait_for(lambda: a.find_events("conn_closed"), CUT_WITHIN)
    assert ev, "pooled upstream connection of a deleted sandbox still open after %.1fs" % CUT_WITHIN
    assert ev[0]["t"] - t0 < CUT_WITHIN
    time.sleep(0.3)
    assert b.conns[0].closed is None, "the other sandbox's pooled connection was closed"
    # re-registered: served on a fresh upstream connection
    assert ad.put("pla", {"address": "127.0.0.2"}).status == 201
    r = one_request(asg.port, "GET", "/echo", host=asg.host(a.port, "pla"))
    assert r.status == 200, r
    assert r.json()["conn_id"] == 2
    # the survivor still reuses its pooled connection
    r = one_request(asg.port, "GET", "/echo", host=asg.host(b.port, "plb"))
    assert r.status == 200 and r.json()["conn_id"] == 1, r


def test_replacing_put_closes_pooled_upstream_and_uses_new_address(asg, backends):
    a, b = backends
    ad = asg.admin
    assert ad.put("mv", {"address": "127.0.0.2"}).status == 201
    assert one_request(asg.port, "GET", "/echo", host=asg.host(a.port, "mv")).json()["backend"] == "abc"
    time.sleep(0.1)
    assert a.conns[0].closed is None
    assert ad.put("mv", {"address": "127.0.0.3"}).status == 200
    assert a.wait_for(lambda: a.find_events("conn_closed"), CUT_WITHIN), \
        "pooled connection to the old address survived the replacing PUT"
    r = one_request(asg.port, "GET", "/echo", host=asg.host(b.port, "mv"))
    assert r.status == 200 and r.json()["backend"] == "def", r


def test_sandboxes_on_one_address_share_pooled_connections_until_one_is_deleted(asg, backends):
    """Pools are per destination: two sandboxes on 127.0.0.2 share one idle
    upstream connection. Deleting either drops the idle connections to that
    address (a freed address may go to a new VM); the other sandbox then gets
    a fresh connection, and a sandbox elsewhere keeps its own."""
    a, b = backends
    ad = asg.admin
    for sid, addr in (("sha", "127.0.0.2"), ("shb", "127.0.0.2"), ("oth", "127.0.0.3")):
        assert ad.put(sid, {"address": addr}).status == 201
    seen = [one_request(asg.port, "GET", "/echo", host=asg.host(a.port, sid)).json()["conn_id"]
            for sid in ("sha", "shb", "sha", "shb")]
    assert seen == [1, 1, 1, 1], seen
    assert one_request(asg.port, "GET", "/echo", host=asg.host(b.port, "oth")).json()["conn_id"] == 1
    time.sleep(0.1)
    assert [c.closed for c in a.conns] == [None]
    assert ad.delete("sha").status == 204
    assert a.wait_for(lambda: a.find_events("conn_closed"), CUT_WITHIN), \
        "idle connection to the deleted sandbox's address survived"
    time.sleep(0.3)
    assert b.conns[0].closed is None, "a pooled connection to another address was closed"
    r = one_request(asg.port, "GET", "/echo", host=asg.host(a.port, "shb"))
    assert r.status == 200 and r.json()["conn_id"] == 2, r
    r = one_request(asg.port, "GET", "/echo", host=asg.host(b.port, "oth"))
    assert r.status == 200 and r.json()["conn_id"] == 1, r


def test_delete_cuts_keepalive_client_connection_in_flight(asg, backends):
    """A request waiting for its response when the sandbox is deleted: the
    client's connection ends (no hang until the head timeout)."""
    a, _ = backends
    ad = asg.admin
    assert ad.put("wt", {"address": "127.0.0.2"}).status == 201
    with Conn(asg.port, timeout=10 * SCALE) as c:
        c.send(b"GET /nohead HTTP/1.1\r\nHost: %s\r\n\r\n" % asg.host(a.port, "wt").encode())
        assert a.wait_for(lambda: a.find_events("nohead_waiting"), 5 * SCALE)
        t0 = time.monotonic()
        assert ad.delete("wt").status == 204
        how, extra = wait_closed(c.sock, CUT_WITHIN + 3)
        assert how is not None, "client connection still open after delete"
        assert time.monotonic() - t0 < CUT_WITHIN
    assert a.wait_for(lambda: a.find_events("nohead_closed"), 3 * SCALE)


def test_admin_pipelined_and_trickled_requests(asg):
    body = json.dumps({"address": "127.0.0.2"}).encode()
    put = b"PUT /v1/sandboxes/pipe HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    get = b"GET /v1/sandboxes/pipe HTTP/1.1\r\nHost: a\r\n\r\n"
    dele = b"DELETE /v1/sandboxes/pipe HTTP/1.1\r\nHost: a\r\n\r\n"
    with Conn(asg.admin_port, timeout=5 * SCALE) as c:
        c.send(put + get + dele + get)
        rs = [c.read_response() for _ in range(4)]
    assert [r.status for r in rs] == [201, 200, 204, 404], rs
    assert rs[1].json()["address"] == "127.0.0.2"
    # one request dribbled a few bytes at a time
    with Conn(asg.admin_port, timeout=5 * SCALE) as c:
        for i in range(0, len(put), 7):
            c.send(put[i:i + 7])
            time.sleep(0.005)
        r = c.read_response()
    assert r.status == 201, r
    assert asg.admin.get("pipe").json()["address"] == "127.0.0.2"


def test_health_endpoints_ignore_a_wrong_token(admin_factory):
    sg = admin_factory(token=ADMIN_TOKEN)
    anon = AdminClient(sg.admin_port)
    for path in ("/healthz", "/readyz"):
        r = anon.request("GET", path, headers={"Authorization": "Bearer wrong"})
        assert r.status == 200, r
    _assert_401(anon.request("GET", "/metrics", headers={"Authorization": "Bearer wrong"}))


def test_reload_changes_admin_token(admin_factory):
    port = free_port()
    cfg = admin_config(port, token="old-token")
    sg = admin_factory(config=cfg, admin_port=port, token="old-token")
    sg.admin.token = "old-token"
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["listen"] = ["127.0.0.1:%d" % sg.port]
    cfg2["admin"]["token"] = "new-token"
    with open(sg.config_path, "w") as f:
        f.write(to_yaml(cfg2) + "\n")
    r = sg.admin.request("POST", "/v1/reload")
    assert r.status == 200, r
    _assert_401(AdminClient(sg.admin_port, "old-token").request("GET", "/v1/sandboxes"))
    assert AdminClient(sg.admin_port, "new-token").request("GET", "/v1/sandboxes").status == 200
