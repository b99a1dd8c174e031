"""Small HTTP/1.1 byte-level helpers shared by the test client and the test
backends: a buffered socket reader, head parsing, body framing, and a
deterministic payload generator for the large transfers.

Everything here works on raw sockets on purpose: the tests need to see the
exact bytes sandgate forwards (header case, order, framing), which client
libraries normalise away."""

import functools
import hashlib
import random
import socket
import time

BLOCK = 1 << 20  # 1 MiB: unit of the large transfers
RAW_CAP = 1 << 20  # keep at most this many raw bytes per connection for inspection


class Closed(Exception):
    """The peer closed (EOF) or reset the connection before a complete message."""


class SockReader:
    """Buffered reader over a blocking socket.

    Every byte received is counted in `total`; the first RAW_CAP bytes are kept
    in `raw` so tests can look for smuggled requests in what a peer saw."""

    def __init__(self, sock, keep_raw=True):
        self.sock = sock
        self.buf = bytearray()
        self.raw = bytearray()
        self.keep_raw = keep_raw
        self.total = 0
        self.eof = False
        self.scratch = bytearray(BLOCK)

    def _record(self, data):
        self.total += len(data)
        if self.keep_raw and len(self.raw) < RAW_CAP:
            self.raw += data[: RAW_CAP - len(self.raw)]

    def fill(self, n=65536):
        """Reads once; returns False at EOF. Raises Closed on reset."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(n)
        except (ConnectionResetError, BrokenPipeError) as e:
            self.eof = True
            raise Closed("reset: %s" % e) from e
        if not data:
            self.eof = True
            return False
        self._record(data)
        self.buf += data
        return True

    def read_until(self, delim, limit=1 << 20):
        """Returns bytes up to and including delim; raises Closed at EOF."""
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ValueError("delimiter not found within %d bytes" % limit)
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self.fill():
                raise Closed("EOF before %r (have %d bytes)" % (delim, len(self.buf)))

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self.fill(max(65536, n - len(self.buf))):
                raise Closed("EOF after %d of %d bytes" % (len(self.buf), n))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def stream(self, n, consume):
        """Passes exactly n bytes to consume(memoryview) without keeping them.
        Raises Closed (with .got set) if the peer ends early."""
        got = 0
        if self.buf:
            take = min(n, len(self.buf))
            consume(memoryview(self.buf)[:take])
            del self.buf[:take]
            got += take
        mv = memoryview(self.scratch)
        while got < n:
            want = min(len(self.scratch), n - got)
            try:
                k = self.sock.recv_into(mv[:want])
            except (ConnectionResetError, BrokenPipeError) as e:
                self.eof = True
                err = Closed("reset after %d of %d bytes" % (got, n))
                err.got = got
                raise err from e
            if k == 0:
                self.eof = True
                err = Closed("EOF after %d of %d bytes" % (got, n))
                err.got = got
                raise err
            self._record(mv[:k])
            consume(mv[:k])
            got += k
        return got

    def stream_to_eof(self, consume):
        """Passes bytes to consume until EOF; returns (count, how) where how is
        'eof' or 'reset'."""
        got = 0
        if self.buf:
            consume(memoryview(self.buf))
            got += len(self.buf)
            self.buf.clear()
        mv = memoryview(self.scratch)
        while True:
            try:
                k = self.sock.recv_into(mv)
            except (ConnectionResetError, BrokenPipeError):
                self.eof = True
                return got, "reset"
            if k == 0:
                self.eof = True
                return got, "eof"
            self._record(mv[:k])
            consume(mv[:k])
            got += k


def parse_head(head):
    """Splits a raw head (ending in CRLFCRLF) into (start_line, [(name, value)]).
    Names keep their case; values are stripped of surrounding whitespace."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    start = lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return start, headers


def header_get(headers, name, default=None):
    lname = name.lower()
    for n, v in headers:
        if n.lower() == lname:
            return v
    return default


def header_all(headers, name):
    lname = name.lower()
    return [v for n, v in headers if n.lower() == lname]


def is_chunked(headers):
    te = ",".join(header_all(headers, "transfer-encoding")).lower()
    toks = [t.strip() for t in te.split(",") if t.strip()]
    return bool(toks) and toks[-1] == "chunked"


def read_chunked(reader, consume):
    """Reads a chunked body, passing data to consume; returns the trailers as
    [(name, value)]."""
    while True:
        line = reader.read_until(b"\r\n", limit=4096)
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            break
        reader.stream(size, consume)
        if reader.read_exact(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
    trailers = []
    while True:
        line = reader.read_until(b"\r\n", limit=65536)
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        trailers.append((name, value.strip()))
    return trailers


# ---------------------------------------------------------------------------
# Deterministic payload: block i is an 8-byte little-endian counter followed by
# a fixed pseudo-random 1 MiB - 8 tail, so reordered, repeated or dropped
# blocks change the digest.

_BASE = random.Random(0x5A4D6A7E).randbytes(BLOCK)


def iter_payload(size):
    """Yields memoryviews covering `size` bytes of the payload. Each view is
    only valid until the next one is requested."""
    buf = bytearray(_BASE)
    mv = memoryview(buf)
    i = 0
    left = size
    while left > 0:
        buf[0:8] = i.to_bytes(8, "little")
        n = min(BLOCK, left)
        yield mv[:n]
        left -= n
        i += 1


@functools.lru_cache(maxsize=None)
def payload_sha256(size):
    h = hashlib.sha256()
    for mv in iter_payload(size):
        h.update(mv)
    return h.hexdigest()


def payload_bytes(size):
    return b"".join(bytes(mv) for mv in iter_payload(size))


def send_all(sock, data):
    sock.sendall(data)


def wait_closed(sock, timeout):
    """Reads and discards until the peer closes. Returns ('eof'|'reset', extra)
    or (None, extra) if still open after timeout; extra = bytes read."""
    deadline = time.monotonic() + timeout
    extra = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, bytes(extra)
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return None, bytes(extra)
        except (ConnectionResetError, BrokenPipeError):
            return "reset", bytes(extra)
        if not d:
            return "eof", bytes(extra)
        extra += d
