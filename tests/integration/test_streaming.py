"""Bodies stream both ways: SSE latency, 1 GiB each way with bounded RSS,
chunked bodies with trailers, close-delimited responses, bodiless responses,
Expect: 100-continue."""

import hashlib
import os
import subprocess
import threading
import time

import pytest

from client import Conn
from conftest import RSS_GROWTH_LIMIT_KIB, SCALE
from httpio import BLOCK, iter_payload, payload_sha256, wait_closed

GiB = 1 << 30


class RssSampler:
    def __init__(self, sg, interval=0.05):
        self.sg = sg
        self.interval = interval
        self.samples = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                self.samples.append(self.sg.rss_kib())
            except (OSError, RuntimeError):
                return
            self.stop_ev.wait(self.interval)

    def __enter__(self):
        self.base = self.sg.rss_kib()
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join()
        self.samples.append(self.sg.rss_kib())

    @property
    def growth_kib(self):
        return max(self.samples) - self.base


@pytest.mark.parametrize("mode", ["chunked", "close"])
def test_sse_events_arrive_immediately(sg, backends, mode):
    a, _ = backends
    with Conn(sg.port, timeout=10 * SCALE) as c:
        t0 = time.monotonic()
        c.send(b"GET /sse?mode=%s&gap=2 HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
               % (mode.encode(), sg.host(a.port).encode()))
        got = bytearray()
        t_first = t_second = None
        while t_second is None:
            d = c.sock.recv(65536)
            if not d:
                break
            got += d
            if t_first is None and b"data: one\n\n" in got:
                t_first = time.monotonic() - t0
            if b"data: two\n\n" in got:
                t_second = time.monotonic() - t0
    assert t_first is not None, bytes(got)
    assert t_first < 1.0, "first event took %.2fs (buffered?)" % t_first
    assert t_second is not None and t_second >= 1.9, (t_second, bytes(got))
    assert got.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in got


def test_upload_1gib_content_length(sg, backends):
    a, _ = backends
    size = GiB
    # warm-up request so RSS baseline includes connection setup
    with Conn(sg.port) as c:
        assert c.request("GET", "/echo", host=sg.host(a.port)).status == 200
    h = hashlib.sha256()
    with Conn(sg.port, timeout=60 * SCALE) as c, RssSampler(sg) as rss:
        c.send(b"PUT /echo HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Length: %d\r\n\r\n" % (sg.host(a.port).encode(), size))
        for mv in iter_payload(size):
            c.sock.sendall(mv)
            h.update(mv)
        r = c.read_response()
    assert r.status == 200, r
    doc = r.json()
    assert doc["body_len"] == size
    assert doc["body_sha256"] == h.hexdigest()
    assert rss.growth_kib < RSS_GROWTH_LIMIT_KIB, "RSS grew %d KiB (base %d KiB)" % (rss.growth_kib, rss.base)


def test_download_1gib(sg, backends):
    a, _ = backends
    size = GiB
    expected = payload_sha256(size)
    with Conn(sg.port) as c:
        assert c.request("GET", "/echo", host=sg.host(a.port)).status == 200
    h = hashlib.sha256()
    n = [0]

    def eat(mv):
        h.update(mv)
        n[0] += len(mv)

    with Conn(sg.port, timeout=60 * SCALE) as c, RssSampler(sg) as rss:
        c.send(b"GET /download?size=%d&mode=cl HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, sg.host(a.port).encode()))
        r = c.read_response(consume=eat)
    assert r.status == 200, r
    assert r.header("Content-Length") == str(size)
    assert n[0] == size
    assert h.hexdigest() == expected
    assert rss.growth_kib < RSS_GROWTH_LIMIT_KIB, "RSS grew %d KiB (base %d KiB)" % (rss.growth_kib, rss.base)


def test_download_slow_reader_backpressure(sg, backends):
    """A client that reads slowly must not make sandgate buffer the response:
    RSS stays bounded while 256 MiB wait behind a stalled reader."""
    a, _ = backends
    size = 256 * BLOCK
    with Conn(sg.port) as c:
        assert c.request("GET", "/echo", host=sg.host(a.port)).status == 200
    with Conn(sg.port, timeout=60 * SCALE) as c, RssSampler(sg) as rss:
        c.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 65536)
        c.send(b"GET /download?size=%d&mode=cl HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, sg.host(a.port).encode()))
        time.sleep(1.5)  # stall: backend keeps writing, sandgate must stop reading
        stalled_growth = max(rss.samples) - rss.base
        h = hashlib.sha256()
        r = c.read_response(consume=h.update)
    assert r.status == 200
    assert h.hexdigest() == payload_sha256(size)
    assert stalled_growth < RSS_GROWTH_LIMIT_KIB, stalled_growth
    assert rss.growth_kib < RSS_GROWTH_LIMIT_KIB, rss.growth_kib


def test_chunked_upload_with_trailers(sg, backends):
    a, _ = backends
    size = 64 * BLOCK + 12345
    h = hashlib.sha256()
    with Conn(sg.port, timeout=60 * SCALE) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
               % sg.host(a.port).encode())
        for i, mv in enumerate(iter_payload(size)):
            # uneven chunk sizes, including tiny ones
            step = (1, 7, 4096, 65536, BLOCK)[i % 5]
            off = 0
            while off < len(mv):
                piece = mv[off:off + step]
                c.sock.sendall(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
                h.update(piece)
                off += len(piece)
                if step < 100 and off > 300:
                    step = BLOCK
        c.send(b"0\r\nX-Checksum: " + h.hexdigest().encode() + b"\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    doc = r.json()
    assert doc["body_len"] == size
    assert doc["body_sha256"] == h.hexdigest()
    assert ["X-Checksum", h.hexdigest()] in doc["trailers"], doc["trailers"]


def test_chunked_download_with_trailers(sg, backends):
    a, _ = backends
    size = 32 * BLOCK + 777
    with Conn(sg.port, timeout=60 * SCALE) as c:
        c.send(b"GET /download?size=%d&mode=chunked&trailers=1&chunk=100000 HTTP/1.1\r\nHost: %s\r\n\r\n"
               % (size, sg.host(a.port).encode()))
        h = hashlib.sha256()
        r = c.read_response(consume=h.update)
        # keep-alive survives a chunked response with trailers
        r2 = c.request("GET", "/echo?after=1", host=sg.host(a.port))
    assert r.status == 200
    assert r.framing == "chunked"
    assert h.hexdigest() == payload_sha256(size)
    tr = dict((n.lower(), v) for n, v in r.trailers)
    assert tr.get("x-checksum") == payload_sha256(size), r.trailers
    assert tr.get("x-count") == str(size), r.trailers
    assert r2.status == 200 and r2.json()["target"] == "/echo?after=1"


def test_close_delimited_response(sg, backends):
    a, _ = backends
    size = 3 * BLOCK + 5
    with Conn(sg.port, timeout=30 * SCALE) as c:
        c.send(b"GET /close-delimited?size=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, sg.host(a.port).encode()))
        h = hashlib.sha256()
        n = [0]

        def eat(mv):
            h.update(mv)
            n[0] += len(mv)

        r = c.read_response(consume=eat)
        assert r.status == 200
        assert n[0] == size, "got %d of %d bytes (%s)" % (n[0], size, r.framing)
        assert h.hexdigest() == payload_sha256(size)
        if r.framing != "close":
            # re-framed (e.g. chunked): the connection must still close after it
            how, extra = wait_closed(c.sock, 3 * SCALE)
            assert how is not None and extra == b"", (how, extra[:100])
        else:
            assert r.close_how == "eof", "close-delimited body ended by %s" % r.close_how


def assert_in_sync(c, sg, port):
    """The connection is still in sync: the next answer is the right one and
    nothing stray follows it."""
    r = c.request("GET", "/echo?last=1", host=sg.host(port))
    assert r.status == 200 and r.json()["target"] == "/echo?last=1", r
    c.sock.settimeout(0.3)
    try:
        stray = c.sock.recv(100)
    except OSError:
        stray = b""
    assert stray == b"", "unexpected bytes: %r" % stray


def test_head_response_with_content_length_does_not_hang(sg, backends):
    a, _ = backends
    with Conn(sg.port, timeout=5 * SCALE) as c:
        r = c.request("HEAD", "/echo", host=sg.host(a.port))
        assert r.status == 200, r
        assert int(r.header("Content-Length")) > 0  # describes the GET body, none follows
        r = c.request("HEAD", "/download?size=1000000&mode=cl", host=sg.host(a.port))
        assert r.status == 200 and r.header("Content-Length") == "1000000"
        assert_in_sync(c, sg, a.port)


def test_204_response_does_not_hang(sg, backends):
    a, _ = backends
    with Conn(sg.port, timeout=5 * SCALE) as c:
        r = c.request("GET", "/status/204", host=sg.host(a.port))
        assert r.status == 204 and r.header("X-Status-Test") == "204", r
        assert_in_sync(c, sg, a.port)


def test_304_response_with_content_length_does_not_hang(sg, backends):
    a, _ = backends
    with Conn(sg.port, timeout=5 * SCALE) as c:
        r = c.request("GET", "/status/304", host=sg.host(a.port), headers=[("If-None-Match", '"v1"')])
        assert r.status == 304 and r.header("X-Status-Test") == "304", r
        assert r.header("Content-Length") == "5"
        assert_in_sync(c, sg, a.port)


def test_expect_100_continue_with_curl(sg, backends, tmp_path):
    a, _ = backends
    f = tmp_path / "upload.bin"
    data = os.urandom(3 * BLOCK)
    f.write_bytes(data)
    host = "%d-abc.sandbox.test" % a.port
    t0 = time.monotonic()
    p = subprocess.run(
        ["curl", "-sS", "--max-time", str(int(20 * SCALE)), "--expect100-timeout", "10",
         "--resolve", "%s:%d:127.0.0.1" % (host, sg.port),
         "-H", "Expect: 100-continue", "--data-binary", "@%s" % f,
         "-w", "\n%{http_code}", "http://%s:%d/echo" % (host, sg.port)],
        capture_output=True, timeout=30 * SCALE)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    body, _, code = p.stdout.rpartition(b"\n")
    assert code == b"200", p.stdout[-300:]
    import json

    doc = json.loads(body)
    assert doc["body_len"] == len(data)
    assert doc["body_sha256"] == hashlib.sha256(data).hexdigest()
    # curl waited for 100 Continue at most 10 s; getting through quickly means it was relayed
    assert elapsed < 5 * SCALE, elapsed


# Response heads are parsed where they arrive (ingress/proxy/relay.c): in
# the read buffer itself when the head comes whole, gathered when it spans
# reads, with 1xx heads passed on in between; the body bytes that came with
# the final head are written from that read buffer. Each shape: the
# sandbox's sends for a body (100 ms apart, so each is a read of its own),
# and the 1xx statuses the client must see before the 200.
HEAD_SHAPES = {
    "whole_head_with_body_part": (lambda body: [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                                                + body[:30000], body[30000:]], []),
    "head_split_body_part_in_last_read": (lambda body: [b"HTTP/1.1 200 OK\r\nContent-Le",
                                                        b"ngth: %d\r\nX-A: a\r\n\r\n" % len(body) + body[:20000],
                                                        body[20000:]], []),
    "interim_and_final_in_one_read": (lambda body: [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                                                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                                                    + body[:5000], body[5000:]], [103]),
    "interim_then_final_split": (lambda body: [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 2",
                                               b"00 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:7],
                                               body[7:]], [103]),
    "interim_split_then_final_whole": (lambda body: [b"HTTP/1.1 100 Con", b"tinue\r\n\r\n",
                                                     b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                                                     + body], [100]),
}


@pytest.mark.parametrize("shape", sorted(HEAD_SHAPES))
def test_response_head_shapes_deliver_every_body_byte(sandgate_factory, raw_backend_factory, shape):
    be = raw_backend_factory("127.0.0.2")
    body = os.urandom(70000)
    parts, interim = HEAD_SHAPES[shape]

    def handler(backend, req):
        req.hash_body()
        for i, part in enumerate(parts(body)):
            if i:
                time.sleep(0.1)
            req.send(part)
        return True

    be.route("/shape", handler)
    sg = sandgate_factory()
    host = sg.host(be.port).encode()
    with Conn(sg.port, timeout=10 * SCALE) as c:
        for k in range(2):  # the second response reuses both connections
            c.send(b"GET /shape?k=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (k, host))
            r = c.read_response()
            assert r.status == 200, r
            assert [i.status for i in r.interim] == interim, r.interim
            assert len(r.body) == len(body) and r.body == body, len(r.body)
    requests = be.find_events("request")
    assert len(requests) == 2 and len({e["conn"] for e in requests}) == 1  # one upstream connection, reused
    assert sg.alive()
