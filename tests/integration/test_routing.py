"""Routing by Host and the head rewrite: mask, X-Forwarded-*, hop-by-hop
removal, and everything else forwarded byte for byte."""

import requests

from client import Conn, one_request


def hdrs(doc):
    return [tuple(h) for h in doc["headers"]]


def hget(doc, name):
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


def test_two_sandboxes_same_port_different_addresses(sg, backends):
    a, b = backends
    assert a.port == b.port
    ra = requests.get(sg.url("/echo"), headers={"Host": sg.host(a.port, "abc")}, timeout=10)
    rb = requests.get(sg.url("/echo"), headers={"Host": sg.host(b.port, "def")}, timeout=10)
    assert ra.status_code == 200, ra.text
    assert rb.status_code == 200, rb.text
    assert ra.json()["backend"] == "abc"
    assert rb.json()["backend"] == "def"
    assert ra.json()["local"] == ["127.0.0.2", a.port]
    assert rb.json()["local"] == ["127.0.0.3", b.port]


def test_mask_rewrites_host_and_sets_forwarded_host(sg, backends):
    a, _ = backends
    host = sg.host(a.port, "abc")
    r = requests.get(sg.url("/echo"), headers={"Host": host}, timeout=10)
    doc = r.json()
    assert hget(doc, "Host") == ["localhost:%d" % a.port]
    assert hget(doc, "X-Forwarded-Host") == [host]
    assert hget(doc, "X-Forwarded-Proto") == ["http"]
    assert hget(doc, "X-Forwarded-For") == ["127.0.0.1"]


def test_no_mask_keeps_host(sg, backends):
    _, b = backends
    host = sg.host(b.port, "def")
    r = requests.get(sg.url("/echo"), headers={"Host": host}, timeout=10)
    doc = r.json()
    assert hget(doc, "Host") == [host]
    assert hget(doc, "X-Forwarded-Host") == []
    assert hget(doc, "X-Forwarded-Proto") == ["http"]
    assert hget(doc, "X-Forwarded-For") == ["127.0.0.1"]


def test_x_forwarded_for_appended(sg, backends):
    a, _ = backends
    with Conn(sg.port) as c:
        r = c.request("GET", "/echo", host=sg.host(a.port), headers=[("X-Forwarded-For", "10.1.2.3")])
    doc = r.json()
    vals = [p.strip() for v in hget(doc, "X-Forwarded-For") for p in v.split(",")]
    assert vals == ["10.1.2.3", "127.0.0.1"], hget(doc, "X-Forwarded-For")


def test_host_case_port_and_extra_label_parts(sg, backends):
    a, _ = backends
    # upper case, a trailing :port and ignored -parts still route to abc
    for host in ("%d-ABC.Sandbox.TEST:%d" % (a.port, sg.port),
                 "%d-abc-extra-parts.sandbox.test" % a.port):
        r = one_request(sg.port, "GET", "/echo", host=host)
        assert r.status == 200, (host, r)
        assert r.json()["backend"] == "abc"
        assert hget(r.json(), "Host") == ["localhost:%d" % a.port]


def test_hop_by_hop_removed(sg, backends):
    _, b = backends
    sent = [
        ("Connection", "keep-alive, X-Hop, X-Other-Hop"),
        ("X-Hop", "secret"),
        ("X-Other-Hop", "secret2"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("X-Kept", "yes"),
    ]
    with Conn(sg.port) as c:
        r = c.request("GET", "/echo", host=sg.host(b.port, "def"), headers=sent)
    assert r.status == 200, r
    doc = r.json()
    names = [n.lower() for n, _ in doc["headers"]]
    for gone in ("x-hop", "x-other-hop", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert gone not in names, (gone, doc["raw_head"])
    for v in hget(doc, "Connection"):
        toks = {t.strip().lower() for t in v.split(",")}
        assert not toks & {"x-hop", "x-other-hop", "upgrade", "te"}, doc["raw_head"]
    assert hget(doc, "X-Kept") == ["yes"]


def test_header_order_case_method_target_preserved(sg, backends):
    _, b = backends
    target = "/a/../b?x=%2F&y"
    sent = [
        ("x-lower-UPPER", "1"),
        ("ACCEPT", "*/*"),
        ("X-Dup", "first"),
        ("x-sOmE-cAsE", "Value With  Spaces"),
        ("X-Dup", "second"),
        ("cookie", "a=1; b=2"),
        ("User-Agent", "odd/1.0 (x; y)"),
    ]
    with Conn(sg.port) as c:
        r = c.request("PATCH", target, host=sg.host(b.port, "def"), headers=sent, body=b"xyz")
    assert r.status == 200, r
    doc = r.json()
    assert doc["request_line"] == "PATCH %s HTTP/1.1" % target
    lines = doc["raw_head"].split("\r\n")[1:]
    skip = ("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "content-length",
            "connection", "via")
    seen = [ln for ln in lines if ln and ln.split(":", 1)[0].lower() not in skip]
    assert seen == ["%s: %s" % h for h in sent], doc["raw_head"]
    assert hget(doc, "Content-Length") == ["3"]
    assert doc["body_len"] == 3


def test_unusual_methods_pass_through(sg, backends):
    _, b = backends
    for method in ("PROPFIND", "DELETE", "OPTIONS", "PUT"):
        with Conn(sg.port) as c:
            r = c.request(method, "/x/y?z", host=sg.host(b.port, "def"), body=b"" if method == "PUT" else None)
        assert r.status == 200, (method, r)
        assert r.json()["request_line"] == "%s /x/y?z HTTP/1.1" % method


def test_absolute_form_target_routes_by_authority(sg, backends):
    a, _ = backends
    auth = "%d-abc.sandbox.test" % a.port
    with Conn(sg.port) as c:
        r = c.request("GET", "http://%s/abs/path?q=1" % auth, host=auth)
    assert r.status == 200, r
    doc = r.json()
    assert doc["backend"] == "abc"
    assert doc["target"].endswith("/abs/path?q=1"), doc["target"]
