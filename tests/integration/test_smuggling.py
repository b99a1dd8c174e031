"""Request smuggling shapes and malformed requests: sandgate answers 400 and
closes the connection, and the backend never sees the smuggled request."""

import pytest

from client import Closed, Conn
from conftest import SCALE
from httpio import wait_closed

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n"


def cases():
    s = SMUGGLED
    return [
        ("cl_and_te", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(s)) + s),
        ("te_and_cl", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n0\r\n\r\n" % (5 + len(s)) + s),
        ("duplicate_cl_differing", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\nContent-Length: %d\r\n\r\nhello" % (5 + len(s)) + s),
        ("duplicate_cl_equal", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + s),
        ("duplicate_cl_in_one_line", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5, 5\r\n\r\nhello" + s),
        ("invalid_chunk_size", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + s),
        ("chunk_size_overflow", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"10000000000000005\r\nhello\r\n0\r\n\r\n" + s),
        ("obs_fold", "bad_request",
         b"GET /first HTTP/1.1\r\nHost: {H}\r\nX-Folded: a\r\n folded\r\n\r\n" + s),
        ("obs_fold_transfer_encoding", "bad_request",
         b"POST /first HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" + s),
        ("bare_lf", "bad_request",
         b"GET /first HTTP/1.1\nHost: {H}\nX-A: b\n\n" + s),
        ("nul_in_header", "bad_request",
         b"GET /first HTTP/1.1\r\nHost: {H}\r\nX-A: a\x00b\r\n\r\n" + s),
        ("two_host_headers", "bad_request",
         b"GET /first HTTP/1.1\r\nHost: {H}\r\nHost: {H2}\r\n\r\n" + s),
        ("absolute_form_host_conflict", "host_conflict",
         b"GET http://{H2}/first HTTP/1.1\r\nHost: {H}\r\n\r\n" + s),
    ]


CASES = cases()


@pytest.mark.parametrize("name,err,raw", CASES, ids=[c[0] for c in CASES])
def test_smuggling_shape_rejected(sg, backends, name, err, raw):
    a, b = backends
    h = ("%d-def.sandbox.test" % b.port).encode()
    h2 = ("%d-abc.sandbox.test" % a.port).encode()
    data = raw.replace(b"{H}", h).replace(b"{H2}", h2)
    with Conn(sg.port, timeout=10 * SCALE) as c:
        c.send(data)
        r = c.read_response()
        how, extra = wait_closed(c.sock, 3 * SCALE)
    assert r.status == 400, r
    assert r.error_name == err, r
    assert how in ("eof", "reset"), "connection left open after %s; extra bytes %r" % (name, extra[:200])
    assert extra == b"", "bytes after the 400: %r" % extra[:300]
    for be in (a, b):
        seen = be.raw_all()
        assert b"/smuggled" not in seen, "backend %s received %r" % (be.name, seen[:600])


def test_valid_request_after_rejections_still_works(sg, backends):
    """Sanity for the cases above: the same bytes without the defect go through."""
    a, b = backends
    h = "%d-def.sandbox.test" % b.port
    with Conn(sg.port) as c:
        c.send(("POST /first HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n0\r\n\r\n" % h).encode())
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["body_len"] == 5
        c.send(SMUGGLED.replace(b"{H}", h.encode()))
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["target"] == "/smuggled"


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_error_response_does_not_reparse_request_body(sg, backends, framing):
    """A request sandgate refuses (unknown sandbox) may carry a body that looks
    like a request; it must be skipped or the connection closed, never parsed
    as the next request."""
    a, _ = backends
    inner = b"GET /smuggled HTTP/1.1\r\nHost: %d-abc.sandbox.test\r\n\r\n" % a.port
    if framing == "length":
        first = b"POST / HTTP/1.1\r\nHost: 3000-nosuch.sandbox.test\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
    else:
        first = (b"POST / HTTP/1.1\r\nHost: 3000-nosuch.sandbox.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n")
    with Conn(sg.port, timeout=5 * SCALE) as c:
        c.send(first)
        r = c.read_response()
        assert r.status == 502 and r.error_name == "sandbox_not_found", r
        closing = (r.header("Connection") or "").lower() == "close"
        try:
            c.send(b"GET /echo?after=1 HTTP/1.1\r\nHost: %d-abc.sandbox.test\r\n\r\n" % a.port)
            r2 = c.read_response()
        except (Closed, ConnectionResetError, BrokenPipeError) as e:  # closed: acceptable
            r2 = e
    if not isinstance(r2, Exception):
        assert not closing, "response after 'Connection: close'"
        assert r2.status == 200 and r2.json()["target"] == "/echo?after=1", r2
    assert b"/smuggled" not in a.raw_all()
