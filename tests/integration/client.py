"""Raw-socket HTTP/1.1 client used by the tests: it writes exactly the bytes
given (odd header case, smuggling shapes, pipelines) and parses responses
strictly enough to notice framing mistakes."""

import json
import socket

from httpio import Closed, SockReader, header_all, header_get, is_chunked, parse_head, read_chunked


class Response:
    def __init__(self, status, reason, headers, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.raw_head = raw_head
        self.body = b""
        self.trailers = []
        self.framing = None  # 'length' | 'chunked' | 'close' | 'none'
        self.interim = []  # 1xx responses seen before this one

    def header(self, name, default=None):
        return header_get(self.headers, name, default)

    def header_all(self, name):
        return header_all(self.headers, name)

    def json(self):
        return json.loads(self.body)

    @property
    def error_name(self):
        return self.header("X-Sandgate-Error")

    def __repr__(self):
        return "<Response %d %s %r body=%r>" % (
            self.status,
            self.reason,
            self.headers,
            self.body[:300],
        )


def build_request(method, target, host=None, headers=(), body=None, version="HTTP/1.1"):
    """Builds request bytes. `host` adds a Host line first (None: no Host).
    Content-Length is added when body is given and headers don't frame it."""
    lines = ["%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    names = {n.lower() for n, _ in headers}
    for n, v in headers:
        lines.append("%s: %s" % (n, v))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body:
        data += body
    return data


class Conn:
    """One client connection to sandgate."""

    def __init__(self, port, timeout=10.0, addr="127.0.0.1"):
        self.sock = socket.create_connection((addr, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = SockReader(self.sock)

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, target, host=None, headers=(), body=None):
        self.send(build_request(method, target, host, headers, body))
        return self.read_response(method)

    def read_head(self):
        head = self.reader.read_until(b"\r\n\r\n", limit=1 << 20)
        start, headers = parse_head(head)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError("bad status line %r" % start)
        return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, head)

    def read_response(self, method="GET", consume=None):
        """Reads one final response (skipping 1xx other than 101). Body goes to
        resp.body unless `consume` is given (then it is streamed to it)."""
        interim = []
        while True:
            resp = self.read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.interim = interim
        body = bytearray()
        sink = consume or (lambda mv: body.extend(mv))
        if method == "HEAD" or resp.status in (101, 204, 304):
            resp.framing = "none"
        elif is_chunked(resp.headers):
            resp.framing = "chunked"
            resp.trailers = read_chunked(self.reader, sink)
        elif resp.header("Content-Length") is not None:
            resp.framing = "length"
            n = int(resp.header("Content-Length"))
            self.reader.stream(n, sink)
        else:
            resp.framing = "close"
            _, how = self.reader.stream_to_eof(sink)
            resp.close_how = how
        resp.body = bytes(body)
        return resp

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def one_request(port, method, target, host=None, headers=(), body=None, timeout=10.0):
    with Conn(port, timeout=timeout) as c:
        return c.request(method, target, host, headers, body)


__all__ = ["Closed", "Conn", "Response", "build_request", "one_request"]
