"""Real backends ("sandboxes") for the integration tests.

RawBackend is a threaded HTTP/1.1 server over raw sockets: it records every
connection (id, peer port, raw bytes received) and answers on a few paths:

  /echo (and any unknown path)  JSON with what it saw: method, raw target,
                                headers in order and case, raw head, body
                                length and sha256, trailers, connection id.
  /status/<code>                answers with that status (204/304 without body,
                                304 carries Content-Length: 5).
  /download?size=N&mode=cl|chunked|close[&trailers=1][&chunk=B&gap=S]
                                N bytes of the deterministic payload; with
                                gap, in pieces of B bytes S seconds apart.
  /sse?mode=chunked|close&gap=S event "one", sleep S, event "two".
  /partial?size=N&sent=M&mode=cl|chunked&how=fin|rst
                                announces N bytes, sends M, then dies.
  /nohead                       reads the request, never answers; records when
                                the proxy closes the connection.
  /upload-watch                 reads the body, records start/end (EOF or
                                complete) as events.
  /close-delimited?size=N       answers without length and closes.
  /acked?size=N&piece=P&mode=cl|chunked
                                sends N payload bytes in P-byte pieces, each
                                only once the proxy has ACKed everything
                                before it (TCP_INFO unacked == 0); records the
                                waits (seconds, head first) as an "ack_waits"
                                event.

WsBackend is a websockets (asyncio) echo server run in its own thread.
"""

import asyncio
import hashlib
import json
import socket
import struct
import threading
import time
import urllib.parse

from httpio import (
    BLOCK,
    Closed,
    SockReader,
    header_all,
    header_get,
    is_chunked,
    iter_payload,
    parse_head,
    read_chunked,
)


class Request:
    def __init__(self, conn, raw_head):
        self.conn = conn
        self.raw_head = raw_head
        start, self.headers = parse_head(raw_head)
        self.request_line = start
        parts = start.split(" ")
        self.method, self.target, self.version = parts[0], parts[1], parts[2]
        u = urllib.parse.urlsplit(self.target)
        self.path = u.path
        self.query = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        self.trailers = []
        self.body_done = False
        self.body_len = 0
        self.body_sha = None
        self.close_after = False

    def header(self, name, default=None):
        return header_get(self.headers, name, default)

    def header_all(self, name):
        return header_all(self.headers, name)

    def consume_body(self, consume):
        """Streams the request body to consume(memoryview)."""
        if self.body_done:
            return
        r = self.conn.reader
        if is_chunked(self.headers):
            self.trailers = read_chunked(r, consume)
        else:
            cl = self.header("Content-Length")
            if cl is not None:
                r.stream(int(cl), consume)
        self.body_done = True

    def hash_body(self):
        h = hashlib.sha256()
        n = [0]

        def eat(mv):
            h.update(mv)
            n[0] += len(mv)

        self.consume_body(eat)
        self.body_len = n[0]
        self.body_sha = h.hexdigest()
        return self.body_len, self.body_sha

    def send(self, data):
        self.conn.sock.sendall(data)

    def respond(self, status, headers=(), body=b"", reason="X"):
        hs = list(headers)
        names = {n.lower() for n, _ in hs}
        if "content-length" not in names and "transfer-encoding" not in names and status not in (204, 304):
            hs.append(("Content-Length", str(len(body))))
        if self.close_after:
            hs.append(("Connection", "close"))
        head = "HTTP/1.1 %d %s\r\n" % (status, reason)
        head += "".join("%s: %s\r\n" % (n, v) for n, v in hs) + "\r\n"
        data = head.encode("latin-1")
        if self.method != "HEAD" and status not in (204, 304):
            data += body
        self.send(data)


class BackendConn:
    def __init__(self, backend, sock, peer, cid):
        self.backend = backend
        self.sock = sock
        self.peer = peer
        self.id = cid
        self.reader = SockReader(sock)
        self.opened = time.monotonic()
        self.closed = None
        self.requests = 0

    @property
    def raw(self):
        return bytes(self.reader.raw)


class RawBackend:
    """Threaded raw HTTP/1.1 backend bound to (addr, port)."""

    def __init__(self, addr, port=0, name=None, sock=None):
        self.addr = addr
        self.name = name or addr
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
        self.lsock = sock
        self.port = sock.getsockname()[1]
        self.conns = []
        self.events = []
        self.routes = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.threads = []
        self._next_id = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        t = threading.Thread(target=self._accept_loop, name="backend-%s" % self.name, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stopping = True
        for t in self.threads[:1]:
            t.join(5)
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.cond:
            conns = list(self.conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads[1:]:
            t.join(5)

    def _accept_loop(self):
        while not self.stopping:
            try:
                s, peer = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(120)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.cond:
                self._next_id += 1
                c = BackendConn(self, s, peer, self._next_id)
                self.conns.append(c)
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    # -- bookkeeping -------------------------------------------------------
    def event(self, **kw):
        kw.setdefault("t", time.monotonic())
        with self.cond:
            self.events.append(kw)
            self.cond.notify_all()

    def wait_for(self, pred, timeout):
        """Waits until pred() is truthy (checked under the lock); returns its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    return v
                self.cond.wait(min(left, 0.05))

    def find_events(self, kind):
        with self.cond:
            return [e for e in self.events if e.get("kind") == kind]

    def raw_all(self):
        with self.cond:
            return b"".join(c.raw for c in self.conns)

    def route(self, prefix, fn):
        """fn(backend, req) handles requests whose path starts with prefix."""
        self.routes[prefix] = fn

    # -- serving -----------------------------------------------------------
    def _serve(self, c):
        try:
            while not self.stopping:
                try:
                    head = c.reader.read_until(b"\r\n\r\n", limit=1 << 20)
                except Closed:
                    break
                req = Request(c, head)
                c.requests += 1
                self.event(kind="request", conn=c.id, line=req.request_line)
                if (req.header("Connection") or "").lower() == "close":
                    req.close_after = True
                keep = self._dispatch(req)
                if keep is False or req.close_after:
                    break
                if not req.body_done:
                    req.hash_body()
        except (Closed, OSError, ValueError) as e:
            self.event(kind="conn_error", conn=c.id, error=repr(e))
        finally:
            c.closed = time.monotonic()
            self.event(kind="conn_closed", conn=c.id)
            try:
                c.sock.close()
            except OSError:
                pass

    def _dispatch(self, req):
        for prefix, fn in self.routes.items():
            if req.path.startswith(prefix):
                return fn(self, req)
        p = req.path
        if p.startswith("/status/"):
            return self.h_status(req)
        if p.startswith("/download"):
            return self.h_download(req)
        if p.startswith("/sse"):
            return self.h_sse(req)
        if p.startswith("/partial"):
            return self.h_partial(req)
        if p.startswith("/nohead"):
            return self.h_nohead(req)
        if p.startswith("/upload-watch"):
            return self.h_upload_watch(req)
        if p.startswith("/close-delimited"):
            return self.h_close_delimited(req)
        if p.startswith("/acked"):
            return self.h_acked(req)
        return self.h_echo(req)

    def echo_doc(self, req):
        return {
            "backend": self.name,
            "method": req.method,
            "target": req.target,
            "version": req.version,
            "request_line": req.request_line,
            "headers": [[n, v] for n, v in req.headers],
            "raw_head": req.raw_head.decode("latin-1"),
            "conn_id": req.conn.id,
            "conn_requests": req.conn.requests,
            "peer": list(req.conn.peer),
            "local": [self.addr, self.port],
            "body_len": req.body_len,
            "body_sha256": req.body_sha,
            "trailers": [[n, v] for n, v in req.trailers],
        }

    def h_echo(self, req):
        if (req.header("Expect") or "").lower() == "100-continue":
            req.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        req.hash_body()
        body = json.dumps(self.echo_doc(req)).encode()
        req.respond(200, [("Content-Type", "application/json")], body, reason="OK")
        return True

    def h_status(self, req):
        req.hash_body()
        code = int(req.path.split("/")[2])
        hs = [("X-Status-Test", str(code))]
        if code == 304:
            hs.append(("ETag", '"v1"'))
            hs.append(("Content-Length", "5"))  # length of the GET body; no body follows
        req.respond(code, hs, b"hello" if code not in (204, 304) else b"", reason="S")
        return True

    def h_download(self, req):
        req.hash_body()
        size = int(req.query.get("size", "0"))
        mode = req.query.get("mode", "cl")
        trailers = req.query.get("trailers") == "1"
        step = int(req.query.get("chunk", str(BLOCK)))
        gap = float(req.query.get("gap", "0"))
        if mode == "cl":
            req.send(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      "Content-Length: %d\r\n\r\n" % size).encode())
            for mv in iter_payload(size):
                if not gap:
                    req.send(mv)
                    continue
                for off in range(0, len(mv), step):
                    time.sleep(gap)
                    req.send(mv[off: off + step])
            return True
        if mode == "chunked":
            h = hashlib.sha256()
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
            if trailers:
                head += "Trailer: X-Checksum, X-Count\r\n"
            req.send((head + "\r\n").encode())
            for mv in iter_payload(size):
                # vary chunk sizes within the block
                off = 0
                while off < len(mv):
                    piece = mv[off: off + step]
                    h.update(piece)
                    req.send(b"%x\r\n" % len(piece))
                    req.send(piece)
                    req.send(b"\r\n")
                    off += len(piece)
            tail = b"0\r\n"
            if trailers:
                tail += b"X-Checksum: " + h.hexdigest().encode() + b"\r\nX-Count: " + str(size).encode() + b"\r\n"
            req.send(tail + b"\r\n")
            return True
        # close-delimited
        req.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for mv in iter_payload(size):
            req.send(mv)
        return False

    def h_sse(self, req):
        req.hash_body()
        mode = req.query.get("mode", "chunked")
        gap = float(req.query.get("gap", "2"))
        ev1 = b"event: tick\ndata: one\n\n"
        ev2 = b"event: tick\ndata: two\n\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        if mode == "chunked":
            req.send(head + b"Transfer-Encoding: chunked\r\n\r\n")
            req.send(b"%x\r\n%s\r\n" % (len(ev1), ev1))
            self.event(kind="sse_first_sent")
            time.sleep(gap)
            self.event(kind="sse_second_sent")
            req.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev2), ev2))
            return True
        req.send(head + b"\r\n" + ev1)
        self.event(kind="sse_first_sent")
        time.sleep(gap)
        self.event(kind="sse_second_sent")
        req.send(ev2)
        return False

    def h_partial(self, req):
        req.hash_body()
        size = int(req.query.get("size", str(100 * BLOCK)))
        sent = int(req.query.get("sent", str(BLOCK)))
        mode = req.query.get("mode", "cl")
        how = req.query.get("how", "fin")
        if mode == "cl":
            req.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            for mv in iter_payload(sent):
                req.send(mv)
        else:
            req.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for mv in iter_payload(sent):
                req.send(b"%x\r\n" % len(mv) + bytes(mv) + b"\r\n")
        time.sleep(0.2)
        if how == "rst":
            req.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.event(kind="partial_closing", how=how)
        return False

    def h_nohead(self, req):
        req.hash_body()
        self.event(kind="nohead_waiting", conn=req.conn.id)
        # Wait for the proxy to give up on us; note when.
        r = req.conn.reader
        try:
            while r.fill():
                pass
            how = "eof"
        except Closed:
            how = "reset"
        except socket.timeout:
            how = "timeout"
        self.event(kind="nohead_closed", conn=req.conn.id, how=how)
        return False

    def h_upload_watch(self, req):
        self.event(kind="upload_start", conn=req.conn.id)
        n = [0]
        first = [True]

        def eat(mv):
            n[0] += len(mv)
            if first[0] and n[0] >= BLOCK:
                first[0] = False
                self.event(kind="upload_progress", n=n[0])

        try:
            req.consume_body(eat)
        except (Closed, OSError) as e:
            self.event(kind="upload_end", complete=False, n=n[0], error=repr(e))
            return False
        self.event(kind="upload_end", complete=True, n=n[0])
        req.respond(200, [], b"done %d" % n[0], reason="OK")
        return True

    def h_acked(self, req):
        req.hash_body()
        size = int(req.query.get("size", "0"))
        piece = int(req.query.get("piece", "65536"))
        chunked = req.query.get("mode", "cl") == "chunked"
        sock = req.conn.sock
        waits = []

        def send_acked(data):
            sock.sendall(data)
            t0 = time.monotonic()
            while tcp_unacked(sock) and time.monotonic() - t0 < 2.0:
                time.sleep(0.0002)
            waits.append(time.monotonic() - t0)

        framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: %d" % size
        send_acked(("HTTP/1.1 200 OK\r\n%s\r\n\r\n" % framing).encode())
        sent = 0
        for mv in iter_payload(size):
            for off in range(0, len(mv), piece):
                part = bytes(mv[off: off + piece])
                sent += len(part)
                if chunked:
                    part = b"%x\r\n" % len(part) + part + b"\r\n" + (b"0\r\n\r\n" if sent == size else b"")
                if sent == size:
                    sock.sendall(part)  # the last piece's ACK may ride on the next request
                else:
                    send_acked(part)
        self.event(kind="ack_waits", waits=waits)
        return True

    def h_close_delimited(self, req):
        req.hash_body()
        size = int(req.query.get("size", "100000"))
        req.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for mv in iter_payload(size):
            req.send(mv)
        return False


def tcp_unacked(sock):
    """Segments sent on sock and not yet acknowledged (struct tcp_info's
    tcpi_unacked: seven u8 fields and a byte of bit fields, then u32 rto,
    ato, snd_mss, rcv_mss, unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return struct.unpack_from("I", info, 24)[0]


def backend_pair(addr_a="127.0.0.2", addr_b="127.0.0.3", names=("abc", "def")):
    """Two RawBackends on the same port at two addresses."""
    for _ in range(50):
        a = socket.socket()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        a.bind((addr_a, 0))
        port = a.getsockname()[1]
        b = socket.socket()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            b.bind((addr_b, port))
        except OSError:
            a.close()
            b.close()
            continue
        return (RawBackend(addr_a, name=names[0], sock=a).start(),
                RawBackend(addr_b, name=names[1], sock=b).start())
    raise RuntimeError("no common free port")


def closed_port(addr):
    """A port on addr with nothing listening (bound then released)."""
    s = socket.socket()
    s.bind((addr, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class WsBackend:
    """websockets echo server on (addr, port) in a thread; records the Host
    header of every handshake in `.hosts`."""

    def __init__(self, addr, port=0):
        import websockets

        self.websockets = websockets
        self.addr = addr
        self.port = port
        self.hosts = []
        self.request_headers = []
        self.messages = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error = None

    async def _handler(self, ws, path=None):
        self.hosts.append(ws.request_headers.get("Host"))
        self.request_headers.append(list(ws.request_headers.raw_items()))
        async for msg in ws:
            self.messages += 1
            await ws.send(msg)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def main():
            self.server = await self.websockets.serve(
                self._handler, self.addr, self.port, max_size=None, compression=None)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()
            self.stop_fut = self.loop.create_future()
            await self.stop_fut
            self.server.close()
            await self.server.wait_closed()

        try:
            self.loop.run_until_complete(main())
        except Exception as e:  # surfaced by start()
            self.error = e
            self.ready.set()
        finally:
            self.loop.close()

    def start(self):
        self.thread.start()
        self.ready.wait(10)
        if self.error:
            raise self.error
        return self

    def stop(self):
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(lambda: self.stop_fut.done() or self.stop_fut.set_result(None))
        self.thread.join(10)


# ---------------------------------------------------------------------------
# Strict request-stream parser and a recording backend (test_smuggling_table,
# test_hostile). The parser answers "what would a strict HTTP/1.1 server make
# of these bytes": a list of complete requests, where the data stopped, and
# the first violation. Anything it calls an error is something a backend
# could read in more than one way.

import re as _re

_TCHAR = _re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = _re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = _re.compile(rb"HTTP/1\.[01]\Z")
_FIELD_VALUE_BAD = _re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = _re.compile(rb"[0-9A-Fa-f]{1,15}\Z")


class ParsedRequest:
    def __init__(self, method, target, version, headers, raw_head):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # [(name str, value str)]
        self.raw_head = raw_head
        self.body = b""
        self.trailers = []
        self.complete = False

    def header_all(self, name):
        return header_all(self.headers, name)

    def __repr__(self):
        return "<ParsedRequest %s %s complete=%s body=%d>" % (
            self.method, self.target, self.complete, len(self.body))


class StrictParseError(ValueError):
    pass


def _parse_one(data, pos):
    """Parses one request at data[pos:]. Returns (ParsedRequest, end) for a
    complete request, (ParsedRequest or None, None) when the data ends inside
    it; raises StrictParseError on any violation."""
    head_end = data.find(b"\r\n\r\n", pos)
    if head_end < 0:
        chunk = data[pos:]
        for i, ch in enumerate(chunk):
            if ch == 0x0A and (i == 0 or chunk[i - 1] != 0x0D):
                raise StrictParseError("bare LF in head")
        return None, None
    raw_head = data[pos:head_end + 4]
    lines = raw_head[:-4].split(b"\r\n")
    for ln in lines:
        if b"\n" in ln or b"\r" in ln:
            raise StrictParseError("bare CR/LF in head")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise StrictParseError("request line %r" % lines[0])
    method, target, version = parts
    if not _TCHAR.match(method):
        raise StrictParseError("method %r" % method)
    if not _TARGET.match(target):
        raise StrictParseError("target %r" % target)
    if not _VERSION.match(version):
        raise StrictParseError("version %r" % version)
    headers = []
    for ln in lines[1:]:
        if ln[:1] in (b" ", b"\t"):
            raise StrictParseError("obs-fold")
        name, colon, value = ln.partition(b":")
        if not colon or not _TCHAR.match(name):
            raise StrictParseError("header line %r" % ln)
        value = value.strip(b" \t")
        if _FIELD_VALUE_BAD.search(value):
            raise StrictParseError("control byte in %r" % ln)
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    req = ParsedRequest(method.decode(), target.decode("latin-1"), version.decode(), headers, raw_head)
    if len(header_all(headers, "host")) != 1:
        raise StrictParseError("Host count %d" % len(header_all(headers, "host")))
    te = header_all(headers, "transfer-encoding")
    cl = header_all(headers, "content-length")
    p = head_end + 4
    if te:
        if cl or len(te) != 1 or te[0].lower() != "chunked" or version == b"HTTP/1.0":
            raise StrictParseError("framing TE=%r CL=%r" % (te, cl))
        body = bytearray()
        while True:
            eol = data.find(b"\r\n", p)
            if eol < 0:
                if b"\n" in data[p:]:
                    raise StrictParseError("bare LF in chunk line")
                req.body = bytes(body)
                return req, None
            line = data[p:eol]
            size_s, _, ext = line.partition(b";")
            if not _HEX.match(size_s) or b"\n" in ext or b"\r" in ext or _FIELD_VALUE_BAD.search(ext):
                raise StrictParseError("chunk line %r" % line)
            size = int(size_s, 16)
            p = eol + 2
            if size == 0:
                break
            if len(data) < p + size + 2:
                body += data[p:p + size]
                req.body = bytes(body)
                return req, None
            body += data[p:p + size]
            if data[p + size:p + size + 2] != b"\r\n":
                raise StrictParseError("chunk data not followed by CRLF")
            p += size + 2
        while True:  # trailers
            eol = data.find(b"\r\n", p)
            if eol < 0:
                req.body = bytes(body)
                return req, None
            line = data[p:eol]
            p = eol + 2
            if not line:
                break
            name, colon, _ = line.partition(b":")
            if not colon or not _TCHAR.match(name):
                raise StrictParseError("trailer %r" % line)
            req.trailers.append(line)
        req.body = bytes(body)
    elif cl:
        if len(cl) != 1 or not _re.match(r"[0-9]{1,15}\Z", cl[0]):
            raise StrictParseError("Content-Length %r" % cl)
        n = int(cl[0])
        if len(data) < p + n:
            req.body = bytes(data[p:])
            return req, None
        req.body = bytes(data[p:p + n])
        p += n
    req.complete = True
    return req, p


def parse_request_stream(data):
    """Splits the bytes one connection carried into requests.

    Returns (requests, rest, error): every request parsed (the last one may be
    incomplete, complete=False), the bytes after the last complete request
    that did not start a request, and the first violation (or None)."""
    data = bytes(data)
    out = []
    pos = 0
    while pos < len(data):
        try:
            req, end = _parse_one(data, pos)
        except StrictParseError as e:
            return out, data[pos:], str(e)
        if req is not None:
            out.append(req)
        if end is None:
            return out, b"" if req is not None else data[pos:], None
        pos = end
    return out, b"", None


class RecConn:
    def __init__(self, cid, sock, peer):
        self.id = cid
        self.sock = sock
        self.peer = peer
        self.raw = bytearray()
        self.answered = 0
        self.end = None  # "eof" | "reset" once the peer went away
        self.parse_error = None
        self.refused = False  # answered 400 after a parse error


class RecordingBackend:
    """Reads everything each connection sends (no cap, no framing
    assumptions), parses it with parse_request_stream and answers every
    complete, valid request with 200 and a small JSON body
    {"target", "body_len", "n"} (n = index on the connection). After a parse
    error it answers 400 with Connection: close once, shuts down its write
    side and only records from then on. `respond=False` records without
    answering."""

    def __init__(self, addr="127.0.0.3", port=0, respond=True):
        self.addr = addr
        self.respond = respond
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((addr, port))
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        self.cond = threading.Condition()
        self.stopping = False
        self.threads = []

    def start(self):
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stopping = True
        self.threads[0].join(5)
        self.lsock.close()
        with self.cond:
            conns = list(self.conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads[1:]:
            t.join(5)

    def _accept(self):
        while not self.stopping:
            try:
                s, peer = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(0.2)
            with self.cond:
                c = RecConn(len(self.conns) + 1, s, peer)
                self.conns.append(c)
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c):
        try:
            while True:
                try:
                    d = c.sock.recv(65536)
                except socket.timeout:
                    if self.stopping:
                        break
                    continue
                except OSError:
                    c.end = "reset"
                    break
                if not d:
                    c.end = "eof"
                    break
                with self.cond:
                    c.raw += d
                    reqs, _, err = parse_request_stream(c.raw)
                    c.parse_error = err
                    todo = [r for r in reqs if r.complete][c.answered:]
                    self.cond.notify_all()
                if not self.respond:
                    continue
                if err:
                    if not c.refused:
                        # a strict server answers 400 and stops answering;
                        # keep recording whatever else arrives
                        c.refused = True
                        try:
                            c.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                           b"Connection: close\r\n\r\n")
                            c.sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                    continue
                for r in todo:
                    body = json.dumps({"target": r.target, "body_len": len(r.body), "n": c.answered}).encode()
                    try:
                        c.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    except OSError:
                        break
                    c.answered += 1
        finally:
            with self.cond:
                if c.end is None:
                    c.end = "closed"
                self.cond.notify_all()
            try:
                c.sock.close()
            except OSError:
                pass

    def wait_for(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v or time.monotonic() >= deadline:
                    return v
                self.cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def snapshot(self):
        """[(conn id, raw bytes, end)] of every connection so far."""
        with self.cond:
            return [(c.id, bytes(c.raw), c.end) for c in self.conns]

    def all_closed(self):
        with self.cond:
            return all(c.end is not None for c in self.conns)
