"""A sandbox that answers broken HTTP.

Rule (README, "Error responses": once response bytes have been sent, an
error can only cut the connection): the client's response fails visibly,
  - 502 `upstream_bad_response` when nothing of the response was sent yet
    (interim 1xx responses already forwarded may precede it), or
  - the connection is cut (EOF / RST) before the response is complete,
and never looks like a clean, complete response. The upstream connection
that carried the broken response is closed by sandgate and never reused: a
following request (on the same client connection when it is still open)
reaches the sandbox on a new connection.

A second group ("clean") sends a valid response followed by stray bytes
(a body on a 204, bytes past Content-Length shaped like a response): the
client gets the valid response, the stray bytes are never delivered as the
answer to the next request, and the connection is not reused.
"""

import socket
import struct
import time

import pytest

from client import Closed, Conn
from conftest import SCALE
from httpio import wait_closed

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


def flood_1xx(n):
    return b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" * n


# name -> (bytes the sandbox sends (a list: parts 100 ms apart), what it does
# next, expected outcome)
# next: "keep" (keeps the connection open and reads on: a reuse would show
# up as a second request on it), "fin" (closes), "rst" (resets).
CASES = {
    # status line
    "status_line_garbage": (b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "status_code_letters": (b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "status_code_4_digits": (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "status_line_http2": (b"HTTP/2 200\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "garbage_before_status": (b"hello\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "binary_before_status": (b"\x00\x01\x02HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "unsolicited_101": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    # framing headers
    "content_length_conflict": (OK_HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "keep", "bad"),
    "content_length_list": (OK_HEAD + b"Content-Length: 5, 6\r\n\r\nhello!", "keep", "bad"),
    "content_length_negative": (OK_HEAD + b"Content-Length: -1\r\n\r\nhello", "keep", "bad"),
    "content_length_and_chunked": (OK_HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"5\r\nhello\r\n0\r\n\r\n", "keep", "bad"),
    # head bytes
    "header_bare_lf": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "keep", "bad"),
    "header_nul": (OK_HEAD + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "header_obs_fold": (OK_HEAD + b"X-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "header_empty_name": (OK_HEAD + b": a\r\nContent-Length: 2\r\n\r\nok", "keep", "bad"),
    "header_space_before_colon": (OK_HEAD + b"Content-Length : 2\r\n\r\nok", "keep", "bad"),
    "head_over_128k": (OK_HEAD + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(140))
                       + b"Content-Length: 2\r\n\r\nok", "keep", "bad"),
    "head_single_header_over_128k": (OK_HEAD + b"X-Big: " + b"b" * (140 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok",
                                     "keep", "bad"),
    "head_2000_fields": (OK_HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"Content-Length: 2\r\n\r\nok",
                         "keep", "bad"),
    "interim_1xx_flood": (flood_1xx(1000) + OK_HEAD + b"Content-Length: 2\r\n\r\nok", "keep", "bad"),
    # head ends, then nothing more
    "head_truncated_fin": (b"HTTP/1.1 200 OK\r\nContent-Le", "fin", "bad"),
    "head_truncated_rst": (b"HTTP/1.1 200 OK\r\nContent-Le", "rst", "bad"),
    # bodies (the head may already be with the client: then a cut)
    "chunk_size_invalid": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",
                           "keep", "bad"),
    "chunk_size_overflow": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
                            "keep", "bad"),
    "chunk_data_not_crlf": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", "keep", "bad"),
    "chunked_truncated_fin": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "fin", "bad"),
    "chunked_truncated_rst": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "rst", "bad"),
    "chunked_truncated_mid_chunk": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n10\r\nhello", "fin", "bad"),
    "chunked_no_last_chunk_crlf": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n", "fin", "bad"),
    "length_truncated_fin": (OK_HEAD + b"Content-Length: 100\r\n\r\n0123456789", "fin", "bad"),
    "length_truncated_rst": (OK_HEAD + b"Content-Length: 100\r\n\r\n0123456789", "rst", "bad"),
    # the defect arrives 100 ms after a valid head and first chunk: sandgate
    # has sent the head already, so the client connection must be cut
    "split_chunk_size_invalid": ([OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                                  b"zz\r\nhello\r\n0\r\n\r\n"], "keep", "bad"),
    "split_chunk_data_not_crlf": ([OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                                   b"5\r\nhelloXX0\r\n\r\n"], "keep", "bad"),
    "split_chunk_ext_bare_lf": ([OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                                 b"5;a\nhello\r\n0\r\n\r\n"], "keep", "bad"),
    "split_chunk_size_overflow": ([OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                                   b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"], "keep", "bad"),
    # nothing at all
    "closes_without_answer": (b"", "fin", "closed"),
    # valid response, then stray bytes on the connection
    "body_on_204": (b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\npoisoned", "keep", "clean"),
    "bytes_after_length": (OK_HEAD + b"Content-Length: 2\r\n\r\nok"
                           b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned", "keep", "clean"),
    "bytes_after_last_chunk": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                               b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned", "keep", "clean"),
    # the stray response arrives 100 ms later, while the connection idles in the pool
    "late_bytes_on_idle_connection": ([OK_HEAD + b"Content-Length: 2\r\n\r\nok",
                                       b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"], "keep", "clean"),
}


def broken_handler(backend, req):
    name = req.path.split("/")[2]
    data, nxt, _ = CASES[name]
    req.hash_body()
    backend.event(kind="broken_sent", conn=req.conn.id, case=name)
    try:
        parts = data if isinstance(data, list) else [data]
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.1)
            if part:
                req.send(part)
        if len(parts) > 1:
            backend.event(kind="late_sent", conn=req.conn.id)
        if nxt == "keep":
            return True
        time.sleep(0.05)
        if nxt == "rst":
            req.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    return False


def read_outcome(c):
    """("response", resp) for a complete response, else ("cut", why)."""
    try:
        r = c.read_response()
    except Closed as e:
        return "cut", "closed: %s" % e
    except (ValueError, IndexError) as e:  # bytes that do not parse: the client notices too
        return "cut", "unparseable: %s" % e
    except OSError as e:
        return "cut", "reset: %r" % e
    return "response", r


@pytest.mark.parametrize("case", list(CASES))
def test_broken_response(sandgate_factory, raw_backend_factory, case):
    _, _, expect = CASES[case]
    be = raw_backend_factory("127.0.0.2")
    be.route("/broken/", broken_handler)
    sg = sandgate_factory(timeouts={"upstream_response_head": "5s", "stream_idle": "5s"})
    host = sg.host(be.port).encode()

    c = Conn(sg.port, timeout=10 * SCALE)
    try:
        # a healthy exchange first, so the broken one uses a pooled connection
        c.send(b"GET /echo?warm=1 HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        warm = c.read_response()
        assert warm.status == 200
        warm_conn = warm.json()["conn_id"]

        c.send(b"GET /broken/%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (case.encode(), host))
        kind, r = read_outcome(c)
        assert be.wait_for(lambda: be.find_events("broken_sent"), 5 * SCALE)
        broken_conn = be.find_events("broken_sent")[0]["conn"]
        assert broken_conn == warm_conn, "the broken response did not come on the pooled connection"

        if expect == "bad":
            if kind == "response":
                assert r.status == 502 and r.error_name == "upstream_bad_response", \
                    "a broken response reached the client as %r" % r
                if case == "interim_1xx_flood":
                    assert len(r.interim) < 1000, "all 1000 interim responses forwarded before the 502"
        elif expect == "closed":
            assert kind == "response" and r.status == 502 and r.error_name == "upstream_closed", r
        else:  # clean
            assert kind == "response", r
            assert r.status in (200, 204) and b"poisoned" not in r.body, r

        # the next request: same client connection when it is still open
        open_ = kind == "response" and (r.header("Connection") or "").lower() != "close"
        if not open_:
            how, extra = wait_closed(c.sock, 3 * SCALE)
            assert how in ("eof", "reset"), "client connection left open after a cut"
            c.close()
            c = Conn(sg.port, timeout=10 * SCALE)
        if case == "late_bytes_on_idle_connection":
            # let the stray bytes land while the connection idles in the pool
            # (once a new request is on it, they would be a valid answer)
            assert be.wait_for(lambda: be.find_events("late_sent"), 5 * SCALE)
            time.sleep(0.1)
        c.send(b"GET /echo?after=1 HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        r2 = c.read_response()
    finally:
        c.close()
    assert r2.status == 200 and b"poisoned" not in r2.body, r2
    doc = r2.json()
    assert doc["target"] == "/echo?after=1", doc
    assert doc["conn_id"] != broken_conn, "upstream connection %d reused after %s" % (broken_conn, case)
    # and sandgate let go of the broken one
    closed = be.wait_for(lambda: [e for e in be.find_events("conn_closed") if e["conn"] == broken_conn], 3 * SCALE)
    assert closed, "sandgate kept the upstream connection of the broken response open"
    assert sg.alive()


def test_1xx_flood_without_final_response(sandgate_factory, raw_backend_factory):
    """A sandbox that sends interim responses and never a final one (20 every
    20 ms for up to 8 s): sandgate ends the exchange within
    upstream_response_head (3 s) plus slack, its memory stays bounded, and
    the client is not fed an unbounded number of interim responses."""
    be = raw_backend_factory("127.0.0.2")
    stop = []

    def endless(backend, req):
        req.hash_body()
        sent = 0
        t_end = time.monotonic() + 8 * SCALE
        try:
            while not stop and time.monotonic() < t_end:
                req.send(flood_1xx(20))
                sent += 20
                time.sleep(0.02)
        except OSError:
            pass
        backend.event(kind="flood_end", sent=sent)
        return False

    be.route("/flood", endless)
    sg = sandgate_factory(timeouts={"upstream_response_head": "3s"})
    rss0 = sg.rss_kib()
    got = 0
    final = None
    how = None
    t0 = time.monotonic()
    with Conn(sg.port, timeout=10 * SCALE) as c:
        c.send(b"GET /flood HTTP/1.1\r\nHost: %s\r\n\r\n" % sg.host(be.port).encode())
        try:
            while time.monotonic() - t0 < 12 * SCALE:
                r = c.read_head()
                if r.status >= 200:
                    final = r
                    break
                got += 1
            how = "final"
        except (Closed, OSError) as e:
            how = "cut: %r" % e
    elapsed = time.monotonic() - t0
    stop.append(1)
    assert be.wait_for(lambda: be.find_events("flood_end"), 12 * SCALE)
    sent = be.find_events("flood_end")[0]["sent"]
    assert sg.alive()
    assert sg.rss_kib() - rss0 < 64 * 1024 * SCALE
    assert final is None or (final.status in (502, 504) and final.error_name in (
        "upstream_bad_response", "upstream_head_timeout")), final
    assert elapsed < 3 + 2 * SCALE, ("exchange lasted %.1fs (%s) with upstream_response_head 3s: interim "
                                     "responses keep it alive" % (elapsed, how))
    assert got < 1000, ("%d interim responses forwarded (sandbox sent %d): a sandbox can feed a client "
                        "unbounded 1xx" % (got, sent))
