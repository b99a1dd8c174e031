"""Request smuggling, table-driven: every shape below must get sandgate's own
error (400, or 414 / 431 where stated) and a closed connection, and the
sandbox behind it (a RecordingBackend: it keeps every byte each connection
carried and parses them with a strict HTTP/1.1 parser) must never receive
anything that parses as two requests.

What the backend may have received, per row (`backend`):
  none    nothing at all (sandgate refused the head).
  prefix  sandgate forwarded a valid head and body prefix before the defect
          arrived (the body was split over two sends): at most one request,
          not complete, no parse violation, and the upstream connection was
          closed (the sandbox must not wait for the rest or reuse it).
  one     a valid first request was pipelined before the defective one:
          exactly one complete well-formed request, /first.
  lenient the Transfer-Encoding value differs from `chunked` only by optional
          whitespace, which RFC 9112 5.5 says to strip. Two outcomes are
          safe and accepted: 400 + close with nothing forwarded, or the request
          forwarded with the header re-emitted exactly as
          `Transfer-Encoding: chunked` and the backend seeing exactly one
          complete request whose body is the chunk payload (the smuggled
          request stays body). Forwarding the odd whitespace byte for byte
          would fail: a lax backend might not see `chunked` there. The
          `double_space` request line (RFC 9112 3 lets a recipient split on
          whitespace runs) is lenient the same way: 400, or the backend sees
          `GET /first HTTP/1.1` and then the client's pipelined second request.

Every row also checks that no request line `GET /smuggled` reached the
backend as a request (outside the lenient outcome), and that after the error
no byte follows on the client connection. The recorder answers 400 and stops
answering after the first byte its strict parser rejects, like a strict
server would.

Rows build their bytes from a Ctx at run time (the Host carries the
recorder's port, and chunk sizes depend on its length). One sandgate serves
the whole table; its exit is checked (sanitizer reports) at module teardown.
"""

import socket
import time

import pytest

from backends import RecordingBackend, parse_request_stream
from client import Closed, Conn
from conftest import SCALE
from httpio import wait_closed

MAX_HEAD = 64 * 1024  # limits.max_header_size default


class Ctx:
    """What a row's bytes depend on: H (the routed Host, sandbox `def` =
    the recorder), H2 (another valid Host) and S (the smuggled request)."""

    def __init__(self, h, h2):
        self.H = h
        self.H2 = h2
        self.S = b"GET /smuggled HTTP/1.1\r\nHost: " + h + b"\r\n\r\n"


def post(c, headers, body, version=b"HTTP/1.1", target=b"/first"):
    """POST with a Host line first and the given raw header lines."""
    return (b"POST " + target + b" " + version + b"\r\nHost: " + c.H + b"\r\n"
            + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)


def get(c, extra=b"", line=None):
    """GET /first with Host, extra raw header bytes, then the smuggled request."""
    return (line or b"GET /first HTTP/1.1") + b"\r\nHost: " + c.H + b"\r\n" + extra + b"\r\n" + c.S


def hide(c):
    """A chunked body whose one chunk is the smuggled request."""
    return b"%x\r\n" % len(c.S) + c.S + b"\r\n0\r\n\r\n"


def row(name, build, status=400, err="bad_request", backend="none", split=None, errs=None):
    """build(ctx) -> bytes; split(ctx) -> offset of a second send."""
    return pytest.param(build, status, errs or (err,), backend, split, id=name)


def te_rows():
    out = [
        # classic CL.TE / TE.CL: either order of the two framing headers
        row("cl_te", lambda c: post(c, [b"Content-Length: %d" % (5 + len(c.S)), b"Transfer-Encoding: chunked"],
                                    b"0\r\n\r\n" + c.S)),
        row("te_cl", lambda c: post(c, [b"Transfer-Encoding: chunked", b"Content-Length: %d" % (5 + len(c.S))],
                                    b"0\r\n\r\n" + c.S)),
        row("te_cl_short", lambda c: post(c, [b"Transfer-Encoding: chunked", b"Content-Length: 3"], b"0\r\n\r\n" + c.S)),
        row("cl_te_xchunked", lambda c: post(c, [b"Content-Length: 4", b"Transfer-Encoding: xchunked"], hide(c))),
    ]
    obfuscated = [
        ("te_xchunked", b"Transfer-Encoding: xchunked", "none"),
        ("te_chunked_x", b"Transfer-Encoding: chunkedx", "none"),
        ("te_space_before_colon", b"Transfer-Encoding : chunked", "none"),
        ("te_tab_before_colon", b"Transfer-Encoding\t: chunked", "none"),
        ("te_chunked_identity", b"Transfer-Encoding: chunked, identity", "none"),
        ("te_identity_chunked", b"Transfer-Encoding: identity, chunked", "none"),
        ("te_chunked_chunked", b"Transfer-Encoding: chunked, chunked", "none"),
        ("te_chunked_trailing_comma", b"Transfer-Encoding: chunked,", "none"),
        ("te_gzip_chunked", b"Transfer-Encoding: gzip, chunked", "none"),
        ("te_quoted", b'Transfer-Encoding: "chunked"', "none"),
        ("te_vertical_tab", b"Transfer-Encoding: \x0bchunked", "none"),
        ("te_form_feed", b"Transfer-Encoding: chunked\x0c", "none"),
        ("te_empty", b"Transfer-Encoding: ", "none"),
        ("te_nul", b"Transfer-Encoding: chunked\x00", "none"),
        ("te_two_headers", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity", "none"),
        ("te_two_headers_chunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "none"),
        ("te_identity_then_chunked", b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked", "none"),
        ("te_obs_fold_value", b"Transfer-Encoding:\r\n chunked", "none"),
        ("te_obs_fold_after", b"Transfer-Encoding: chunked\r\n , identity", "none"),
        # optional whitespace only: 400, or normalised (see module doc)
        ("te_two_spaces", b"Transfer-Encoding:  chunked", "lenient"),
        ("te_trailing_tab", b"Transfer-Encoding: chunked\t", "lenient"),
        ("te_tab_separator", b"Transfer-Encoding:\tchunked", "lenient"),
    ]
    for name, line, be in obfuscated:
        out.append(row(name, lambda c, line=line: post(c, [line], hide(c)), backend=be))
    out.append(row("te_http10", lambda c: post(c, [b"Transfer-Encoding: chunked"], hide(c), version=b"HTTP/1.0")))
    out.append(row("te_http10_cl", lambda c: post(c, [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
                                                  b"0\r\n\r\n" + c.S, version=b"HTTP/1.0")))
    return out


def cl_rows():
    vals = [
        ("cl_dup_differing", lambda c: [b"Content-Length: 5", b"Content-Length: %d" % (5 + len(c.S))]),
        ("cl_dup_equal", lambda c: [b"Content-Length: 5", b"Content-Length: 5"]),
        ("cl_comma_equal", lambda c: [b"Content-Length: 5, 5"]),
        ("cl_comma_differing", lambda c: [b"Content-Length: 5, %d" % (5 + len(c.S))]),
        ("cl_negative", lambda c: [b"Content-Length: -5"]),
        ("cl_plus", lambda c: [b"Content-Length: +5"]),
        ("cl_hex", lambda c: [b"Content-Length: 0x5"]),
        ("cl_decimal_point", lambda c: [b"Content-Length: 5.0"]),
        ("cl_trailing_letter", lambda c: [b"Content-Length: 5a"]),
        ("cl_inner_space", lambda c: [b"Content-Length: 5 5"]),
        ("cl_empty", lambda c: [b"Content-Length: "]),
        ("cl_overflow_wraps_to_5", lambda c: [b"Content-Length: 18446744073709551621"]),  # 2**64 + 5
        ("cl_overflow_huge", lambda c: [b"Content-Length: 99999999999999999999999999"]),
        ("cl_space_before_colon", lambda c: [b"Content-Length : 5"]),
        ("cl_obs_fold", lambda c: [b"Content-Length:\r\n 5"]),
    ]
    return [row(n, lambda c, h=h: post(c, h(c), b"hello" + c.S)) for n, h in vals]


def chunk_rows():
    te = [b"Transfer-Encoding: chunked"]
    tail = b"\r\n0\r\n\r\n"
    vals = [
        ("chunk_size_invalid", b"zz\r\nhello" + tail),
        ("chunk_size_overflow_18f", b"ffffffffffffffffff\r\nhello" + tail),
        ("chunk_size_overflow_wraps", b"10000000000000005\r\nhello" + tail),  # 2**64 + 5
        ("chunk_size_0x", b"0x5\r\nhello" + tail),
        ("chunk_size_leading_space", b" 5\r\nhello" + tail),
        ("chunk_size_negative", b"-5\r\nhello" + tail),
        ("chunk_size_plus", b"+5\r\nhello" + tail),
        ("chunk_size_empty", b"\r\nhello" + tail),
        ("chunk_ext_nul", b"5;\x00\r\nhello" + tail),
        ("chunk_ext_bare_lf", b"5;a=b\nhello" + tail),
        ("chunk_ext_bare_cr", b"5;a=b\rhello" + tail),
        ("chunk_size_bare_lf", b"5\nhello" + tail),
        ("chunk_data_not_crlf", b"5\r\nhelloXX\r\n0\r\n\r\n"),
        ("chunk_data_bare_lf", b"5\r\nhello\n0\r\n\r\n"),
        ("chunk_data_too_long", b"3\r\nhello\r\n0\r\n\r\n"),
        ("last_chunk_bare_lf", b"5\r\nhello\r\n0\n\n"),
        ("trailer_bare_lf", b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n"),
        ("trailer_obs_fold", b"5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"),
        ("trailer_nul", b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n"),
        ("trailer_bare_cr", b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n"),
        ("trailer_empty_name", b"5\r\nhello\r\n0\r\n: b\r\n\r\n"),
        ("trailer_no_colon", b"5\r\nhello\r\n0\r\nX-T b\r\n\r\n"),
    ]
    out = [row(n, lambda c, b=b: post(c, te, b + c.S)) for n, b in vals]
    # The same defects arriving after sandgate has forwarded the head and a
    # valid first chunk: the error is found while streaming.
    first = b"5\r\nhello\r\n"
    split = [
        ("split_chunk_size_invalid", b"zz\r\nhello" + tail),
        ("split_chunk_size_overflow", b"ffffffffffffffffff\r\nhello" + tail),
        ("split_chunk_size_0x", b"0x5\r\nhello" + tail),
        ("split_chunk_ext_bare_lf", b"5;a\nhello" + tail),
        ("split_chunk_data_not_crlf", b"5\r\nhelloXX0\r\n\r\n"),
        ("split_last_chunk_bare_lf", b"0\n\n"),
    ]
    for n, b in split:
        out.append(row(n, lambda c, b=b: post(c, te, first + b + c.S), backend="prefix",
                       split=lambda c: len(post(c, te, first))))
    return out


def line_rows():
    big = b"a" * (MAX_HEAD + 1024)
    return [
        # line endings and control bytes
        row("bare_lf_everywhere", lambda c: b"GET /first HTTP/1.1\nHost: " + c.H + b"\nX-A: b\n\n" + c.S),
        row("bare_lf_request_line", lambda c: get(c, line=b"GET /first HTTP/1.1\n")),
        row("bare_lf_header", lambda c: get(c, b"X-A: b\n")),
        row("bare_lf_head_end", lambda c: b"GET /first HTTP/1.1\r\nHost: " + c.H + b"\r\n\n" + c.S),
        row("bare_cr_header_value", lambda c: get(c, b"X-A: a\rb\r\n")),
        row("bare_cr_line_end", lambda c: get(c, b"X-A: b\r\r\n")),
        row("bare_cr_request_line", lambda c: get(c, line=b"GET /first\rHTTP/1.1")),
        row("nul_header_value", lambda c: get(c, b"X-A: a\x00b\r\n")),
        row("nul_header_name", lambda c: get(c, b"X-\x00A: b\r\n")),
        row("nul_target", lambda c: get(c, line=b"GET /fi\x00rst HTTP/1.1")),
        row("ctl_header_value", lambda c: get(c, b"X-A: a\x01b\r\n")),
        row("del_header_value", lambda c: get(c, b"X-A: a\x7fb\r\n")),
        row("obs_fold_space", lambda c: get(c, b"X-A: a\r\n folded\r\n")),
        row("obs_fold_tab", lambda c: get(c, b"X-A: a\r\n\tfolded\r\n")),
        row("obs_fold_first_header", lambda c: get(c, line=b"GET /first HTTP/1.1\r\n X-A: a")),
        # header names
        row("space_before_colon_host", lambda c: b"GET /first HTTP/1.1\r\nHost : " + c.H + b"\r\n\r\n" + c.S),
        row("space_before_colon_other", lambda c: get(c, b"X-A : b\r\n")),
        row("header_name_space", lambda c: get(c, b"X A: b\r\n")),
        row("header_name_paren", lambda c: get(c, b"X(A): b\r\n")),
        row("header_name_slash", lambda c: get(c, b"X/A: b\r\n")),
        row("header_name_high_bit", lambda c: get(c, b"X\xe9A: b\r\n")),
        row("header_name_empty", lambda c: get(c, b": b\r\n")),
        row("header_name_and_value_empty", lambda c: get(c, b":\r\n")),
        row("header_no_colon", lambda c: get(c, b"X-A b\r\n")),
        # Host
        row("two_host_differing", lambda c: get(c, b"Host: " + c.H2 + b"\r\n")),
        row("two_host_equal", lambda c: get(c, b"Host: " + c.H + b"\r\n")),
        row("host_comma_list", lambda c: b"GET /first HTTP/1.1\r\nHost: " + c.H + b", " + c.H2 + b"\r\n\r\n" + c.S,
            err="host_malformed"),
        row("absolute_form_other_host", lambda c: get(c, line=b"GET http://" + c.H2 + b"/first HTTP/1.1"),
            err="host_conflict"),
        row("absolute_form_userinfo", lambda c: get(c, line=b"GET http://x@" + c.H + b"/first HTTP/1.1")),
        row("absolute_form_no_host_11", lambda c: b"GET http://" + c.H + b"/first HTTP/1.1\r\n\r\n" + c.S,
            err="host_missing"),
        # request line
        row("method_inner_space", lambda c: get(c, line=b"G ET /first HTTP/1.1")),
        row("method_nul", lambda c: get(c, line=b"GET\x00 /first HTTP/1.1")),
        row("method_tab_separator", lambda c: get(c, line=b"GET\t/first HTTP/1.1")),
        # RFC 9112 3 lets a recipient split the request line on whitespace
        # runs; sandgate re-emits the line, so 400 or a normalised pipeline
        row("double_space", lambda c: get(c, line=b"GET  /first HTTP/1.1"), backend="lenient"),
        row("target_inner_space", lambda c: get(c, line=b"GET /fi rst HTTP/1.1")),
        row("target_not_origin_form", lambda c: get(c, line=b"GET first HTTP/1.1")),
        row("connect_method", lambda c: get(c, line=b"CONNECT " + c.H + b":443 HTTP/1.1")),
        # HTTP/0.9 carries no Host, so host_missing is an acceptable name
        row("http09", lambda c: b"GET /first\r\n\r\n" + c.S, errs=("bad_request", "host_missing")),
        row("http09_bare", lambda c: b"GET /\r\n", errs=("bad_request", "host_missing")),
        row("version_missing_minor", lambda c: get(c, line=b"GET /first HTTP/1")),
        row("version_lowercase", lambda c: get(c, line=b"GET /first http/1.1")),
        row("version_junk", lambda c: get(c, line=b"GET /first HTTP/1.1x")),
        row("http2_preface", lambda c: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + c.S),
        row("tls_client_hello_on_plain", lambda c: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32),
        # sizes (max_header_size 64 KiB, 512 fields)
        row("request_line_too_long", lambda c: b"GET /" + big + b" HTTP/1.1\r\nHost: " + c.H + b"\r\n\r\n",
            status=414, err="uri_too_long"),
        row("request_line_too_long_no_crlf", lambda c: b"GET /" + big, status=414, err="uri_too_long"),
        row("header_fields_513", lambda c: get(c, b"".join(b"X-%d: v\r\n" % i for i in range(512))),
            status=431, err="headers_too_large"),
        row("header_fields_2000", lambda c: get(c, b"".join(b"X-%d: v\r\n" % i for i in range(2000))),
            status=431, err="headers_too_large"),
        row("header_single_huge", lambda c: get(c, b"X-Big: " + big + b"\r\n"), status=431, err="headers_too_large"),
        row("header_total_too_large", lambda c: get(c, b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))),
            status=431, err="headers_too_large"),
    ]


def prefix_rows():
    """A valid request first, then a defective one on the same connection."""
    def ok(c):
        return b"GET /first HTTP/1.1\r\nHost: " + c.H + b"\r\n\r\n"

    return [
        row("valid_then_cl_te", lambda c: ok(c) + b"POST /second HTTP/1.1\r\nHost: " + c.H
            + b"\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(c.S)) + c.S,
            backend="one"),
        row("valid_then_bare_lf", lambda c: ok(c) + b"GET /second HTTP/1.1\nHost: " + c.H + b"\n\n" + c.S,
            backend="one"),
        row("valid_then_http09", lambda c: ok(c) + b"GET /second\r\n\r\n" + c.S, backend="one",
            errs=("bad_request", "host_missing")),
        row("valid_then_dup_cl", lambda c: ok(c) + b"POST /second HTTP/1.1\r\nHost: " + c.H
            + b"\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + c.S, backend="one"),
        row("valid_then_te_xchunked", lambda c: ok(c) + b"POST /second HTTP/1.1\r\nHost: " + c.H
            + b"\r\nTransfer-Encoding: xchunked\r\n\r\n" + hide(c), backend="one"),
        row("valid_then_empty_header_name", lambda c: ok(c) + b"GET /second HTTP/1.1\r\nHost: " + c.H
            + b"\r\n: x\r\n\r\n" + c.S, backend="one"),
    ]


ROWS = te_rows() + cl_rows() + chunk_rows() + line_rows() + prefix_rows()


@pytest.fixture
def recorder():
    rb = RecordingBackend("127.0.0.3").start()
    yield rb
    rb.stop()


@pytest.fixture(scope="module")
def shared_sg(tmp_path_factory):
    """One sandgate for the whole table (starting one per row costs more
    than the rows); its exit is checked for sanitizer reports at the end."""
    from conftest import Sandgate, default_config

    sg = Sandgate(str(tmp_path_factory.mktemp("smuggling_table")), default_config(
        timeouts={"request_head": "2s", "keepalive_idle": "10s", "upstream_response_head": "3s"}))
    sg.start()
    yield sg
    problem = sg.stop()
    if problem:
        pytest.fail(problem, pytrace=False)


def backend_requests(rb):
    """(complete requests, incomplete request or None, [(conn id, error,
    rest)], connection ends) over every connection the backend got."""
    complete, partial, bad, ends = [], [], [], []
    for cid, raw, end in rb.snapshot():
        reqs, rest, err = parse_request_stream(raw)
        complete += [r for r in reqs if r.complete]
        partial += [r for r in reqs if not r.complete]
        if err or rest:
            bad.append((cid, err, rest[:200]))
        ends.append(end)
    return complete, partial, bad, ends


def read_until_closed(c, timeout):
    """Responses on c until the connection closes, or until no further
    response comes within a second after one that was not sandgate's own
    error. Returns (responses, how, trailing bytes); how is "open" in the
    latter case."""
    out = []
    while True:
        try:
            r = c.read_response()
        except Closed:
            return out, "closed", bytes(c.reader.buf)
        except socket.timeout:
            if out:
                return out, "open", bytes(c.reader.buf)
            raise
        except OSError:
            return out, "reset", bytes(c.reader.buf)
        out.append(r)
        if r.error_name or (r.header("Connection") or "").lower() == "close":
            how, extra = wait_closed(c.sock, timeout)
            return out, how, bytes(c.reader.buf) + extra
        c.sock.settimeout(1.0 * SCALE)


@pytest.mark.parametrize("build,status,errs,backend,split", ROWS)
def test_smuggling_shape(shared_sg, recorder, build, status, errs, backend, split):
    sg = shared_sg
    assert sg.alive(), "sandgate died earlier in the table"
    ctx = Ctx(("%d-def.sandbox.test" % recorder.port).encode(), ("%d-abc.sandbox.test" % recorder.port).encode())
    data = build(ctx)
    with Conn(sg.port, timeout=10 * SCALE) as c:
        if split:
            cut = split(ctx)
            c.send(data[:cut])
            assert recorder.wait_for(lambda: recorder.conns and b"\r\n\r\n" in recorder.conns[0].raw,
                                     5 * SCALE), "head never forwarded"
            time.sleep(0.05)
            c.send(data[cut:])
        else:
            try:
                c.send(data)
            except (ConnectionResetError, BrokenPipeError):
                pass  # sandgate may answer and close before a large row is sent
        resps, how, extra = read_until_closed(c, 3 * SCALE)

    # let anything sandgate wrongly forwards arrive, and closes propagate
    if backend == "prefix":
        recorder.wait_for(recorder.all_closed, 2 * SCALE)
    time.sleep(0.1 * SCALE)
    complete, partial, bad, ends = backend_requests(recorder)
    seen = recorder.snapshot()
    detail = "client got %r (%s); backend connections %r" % (resps, how, [(i, r[:600], e) for i, r, e in seen])

    assert not bad, "backend received bytes a strict parser rejects: %r; %s" % (bad, detail)

    if backend == "lenient" and resps and resps[0].status == 200:
        # accepted and normalised: the backend saw exactly the requests the
        # client framed, each well-formed (the strict parser found no fault)
        assert not partial, detail
        assert all(r.status == 200 for r in resps), detail
        assert [r.json()["target"] for r in resps] == [q.target for q in complete], detail
        if complete[0].method == "POST":  # TE whitespace rows: the smuggled bytes stayed body
            assert len(complete) == 1 and complete[0].body == ctx.S, detail
            assert b"\r\nTransfer-Encoding: chunked\r\n" in complete[0].raw_head, \
                "TE not re-emitted canonically: %r" % complete[0].raw_head
        else:  # double_space: /first and the pipelined /smuggled, both canonical
            assert [q.target for q in complete] == ["/first", "/smuggled"], detail
            assert complete[0].raw_head.startswith(b"GET /first HTTP/1.1\r\n"), complete[0].raw_head
        return

    assert not [r for r in complete + partial if "smuggled" in r.target], \
        "smuggled request reached the backend: " + detail
    final = resps[-1] if resps else None
    assert final is not None, "no response at all (%s); %s" % (how, detail)
    assert final.status == status, detail
    assert final.error_name in errs, detail
    assert how in ("eof", "reset", "closed"), "connection left open after %s: %s" % (final.status, detail)
    assert extra == b"", "bytes after the error response: %r" % extra[:300]

    if backend == "one":
        assert len(resps) == 2 and resps[0].status == 200, detail
        assert len(complete) == 1 and not partial, detail
        assert complete[0].target == "/first", detail
        assert resps[0].json()["target"] == "/first"
    else:
        assert len(resps) == 1, detail
    if backend in ("none", "lenient"):
        assert not complete and not partial and all(not r for _, r, _ in seen), detail
    if backend == "prefix":
        assert not complete and len(partial) <= 1, detail
        assert seen, "split row: nothing forwarded before the defect"
        assert all(e is not None for e in ends), "upstream connection left open after the 400: %s" % detail


def test_table_size():
    assert len(ROWS) >= 25


def test_control_valid_request_with_smuggled_body(shared_sg, recorder):
    """The harness itself: a valid chunked request whose body looks like a
    request goes through, and the backend sees one request with that body."""
    ctx = Ctx(("%d-def.sandbox.test" % recorder.port).encode(), b"")
    with Conn(shared_sg.port, timeout=10 * SCALE) as c:
        c.send(post(ctx, [b"Transfer-Encoding: chunked"], hide(ctx)))
        r = c.read_response()
        assert r.status == 200, r
        assert r.json() == {"target": "/first", "body_len": len(ctx.S), "n": 0}
        # and the connection is still usable
        c.send(b"GET /again HTTP/1.1\r\nHost: %s\r\n\r\n" % ctx.H)
        assert c.read_response().json()["target"] == "/again"
    complete, partial, bad, _ = backend_requests(recorder)
    assert not bad and not partial
    assert [r.target for r in complete] == ["/first", "/again"]
    assert complete[0].body == ctx.S
