"""System calls sandgate makes per request and per connection, counted with
strace. They are most of what a proxied request costs (tests/load: about
three quarters of sandgate's CPU time is the kernel), and unlike timings
they are exact: a change that adds a call to every request or connection
fails here, on any machine."""

import hashlib
import re
import shutil
import signal
import subprocess
import time

import pytest

from client import Conn
from conftest import SCALE
from httpio import payload_sha256
from test_tls import TlsConn, ca, tls_config, tls_factory, tls_sg  # noqa: F401 (fixtures)
from tls_manual import ManualTlsClient

IO_CALLS = ("read", "readv", "recvfrom", "write", "writev", "sendto")
CALLS = ",".join(IO_CALLS + ("epoll_ctl", "accept4", "close", "splice"))
# With -yy strace names a socket descriptor "17<TCP:[a:p->b:q]>"; file
# descriptors (the access log) are left out of the counts.
LINE = re.compile(r"^\d+\s+(\w+)\((?:\d+(<[^>]*>)?)?")


class Strace:
    """strace -f on a running sandgate. Attachment is confirmed by a marker
    request showing up in the trace; count() then covers only the calls made
    after the last marker."""

    def __init__(self, pid, path, send_marker):
        exe = shutil.which("strace")
        if not exe:
            pytest.skip("strace not installed")
        self.path = path
        self.proc = subprocess.Popen([exe, "-f", "-qq", "-yy", "-s", "200", "-o", str(path), "-p", str(pid),
                                      "-e", "trace=" + CALLS], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10 * SCALE
        while True:
            send_marker()
            if path.exists() and b"syscall-marker" in path.read_bytes():
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.skip("strace could not attach: %s" % self.proc.stderr.read().decode(errors="replace"))
            time.sleep(0.05)
        send_marker()  # the last marker: counting starts after it

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def lines(self):
        """The calls traced after the last marker (stops tracing)."""
        self.stop()
        lines = self.path.read_text(errors="replace").splitlines()
        last = max(i for i, line in enumerate(lines) if "syscall-marker" in line)
        return lines[last + 1:]

    def count(self):
        counts = {}
        for line in self.lines():
            m = LINE.match(line)
            if not m or (m.group(1) in IO_CALLS and not (m.group(2) or "").startswith("<TCP")):
                continue
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        return counts


def test_keepalive_request_is_four_calls_and_no_epoll_changes(sg, backends, tmp_path):
    """A warm keep-alive request: one read from the client, one write to the
    sandbox, one read of its answer, one write to the client (head and body
    in one call), and no epoll registration changes."""
    a, _ = backends
    n = 40
    with Conn(sg.port) as c:
        def marker():
            assert c.request("GET", "/echo?syscall-marker", sg.host(a.port)).status == 200

        tr = Strace(sg.pid, tmp_path / "strace.txt", marker)
        for i in range(n):
            assert c.request("GET", "/echo?i=%d" % i, sg.host(a.port)).status == 200
        counts = tr.count()
    reads = sum(counts.get(k, 0) for k in IO_CALLS[:3])
    writes = sum(counts.get(k, 0) for k in IO_CALLS[3:])
    # At least one of each per hop; a Python sandbox may now and then answer
    # in two segments, each then read and forwarded on its own.
    assert 2 * n <= reads <= 2 * n + n // 4, counts
    assert 2 * n <= writes <= 2 * n + n // 4, counts
    assert counts.get("epoll_ctl", 0) == 0, counts


def test_tls_connection_registers_with_epoll_once(tls_sg, backends, tmp_path):
    """A new TLS connection whose request arrives with the client's Finished
    and which closes after its response costs two or three epoll_ctl calls:
    the registration at accept, libuv's removal at close, and at times a
    re-arm for the closing shutdown. Stopping and
    restarting the socket's reading (at the handshake's end, and again
    around the closing shutdown) used to add two more each time: libuv
    re-registers with ADD, gets EEXIST, then MOD."""
    a, _ = backends
    sg = tls_sg
    sni = "%d-abc.sandbox.test" % a.port
    host = sg.tls_host(a.port).encode()

    def req(path):
        return b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)

    def get(path):
        return ManualTlsClient(sg.tls_port, sni, tls13_only=True).hello_and_finish(req(path))

    def marker():
        assert get(b"/echo?syscall-marker").startswith(b"HTTP/1.1 200")

    tr = Strace(sg.pid, tmp_path / "strace.txt", marker)
    n = 20
    for i in range(n):
        got = get(b"/echo?i=%d" % i)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
    time.sleep(0.2 * SCALE)  # the last connection's close
    counts = tr.count()
    assert counts.get("accept4", 0) >= n, counts
    # Two per connection (the sandbox connection is pooled), and when the
    # client is still connected as the response ends, libuv's shutdown
    # re-arms the socket once (EPOLL_CTL_MOD); 85 in all before the
    # handshake's end and the lingering close stopped toggling the socket.
    assert counts.get("epoll_ctl", 0) <= 3 * n + 2, counts


def traced_download(pid, conn, host, size, query, tmp_path):
    """Downloads size payload bytes over conn with sandgate (pid) under
    strace; checks the body and returns the calls traced for it."""
    def marker():
        assert conn.request("GET", "/echo?syscall-marker", host).status == 200

    tr = Strace(pid, tmp_path / "strace.txt", marker)
    r = conn.request("GET", "/download?size=%d%s" % (size, query), host)
    assert r.status == 200 and len(r.body) == size
    assert hashlib.sha256(r.body).hexdigest() == payload_sha256(size)
    return tr.lines()


# splice(2) from a socket into the pipe vs from the pipe into a socket, as
# strace -yy shows them, and whether the call would have blocked.
SPLICE = re.compile(r"^\d+\s+splice\(\d+<(TCP|pipe)[^)]*\)\s*=\s*(-1 EAGAIN)?")


def test_spliced_body_waits_without_epoll_churn(sg, backends, tmp_path):
    """A large response moves by splice; whenever a splice would block, the
    move waits on exactly one socket. Waiting again on the side already
    watched must cost no epoll_ctl: libuv turns even an unchanged
    uv_poll_start into ADD -> EEXIST -> MOD, which cost about 14 epoll_ctl
    per spliced 1 MiB in the load benchmark. Switching sides costs at most
    three (start the other side, which may be ADD -> EEXIST -> MOD, and
    libuv's lazy removal of the side stopped). A move's fixed cost is about
    seven: uv_poll_init on the dup'd descriptor probes it (ADD, DEL, DEL),
    the watch (ADD) and its close (DEL), and the sandbox socket's own
    registration, dropped while the splice reads it and restored after."""
    a, _ = backends
    size = 8 << 20

    with Conn(sg.port, timeout=30 * SCALE) as c:
        # 128 KiB pieces 5 ms apart: the move drains each piece, then waits
        # for the sandbox's socket again and again.
        lines = traced_download(sg.pid, c, sg.host(a.port), size, "&chunk=131072&gap=0.005", tmp_path)
    waits, moved = [], 0
    for line in lines:
        m = SPLICE.match(line)
        if m:
            moved += 1
            if m.group(2):
                waits.append("from" if m.group(1) == "TCP" else "to")
    epoll_ctl = sum(1 for line in lines if (m := LINE.match(line)) and m.group(1) == "epoll_ctl")
    switches = sum(1 for x, y in zip(waits, waits[1:]) if x != y)
    assert moved >= 2 * size // (256 << 10), (moved, lines[:20])  # the body took the splice path
    assert len(waits) - switches >= 32, waits
    assert epoll_ctl <= 3 * switches + 8, (epoll_ctl, switches, waits)


def test_tls_response_leaves_in_writes_of_two_records(tls_sg, ca, backends, tmp_path):
    """A large response over TLS goes to the client socket every two records
    (32 KiB of plaintext), not in one writev per 64 KiB read: a burst of four
    records outruns TCP's pacing (BBR on this machine), and the kernel then
    holds the rest back behind a pacing timer and sends it from a softirq,
    which cost 17% of the proxy's CPU in the 1 MiB HTTPS benchmark."""
    a, _ = backends
    sg = tls_sg
    size = 4 << 20
    record = 16384 + 22  # full plaintext, header, content type, tag
    with TlsConn(sg.tls_port, ca.client_context(), "%d-abc.sandbox.test" % a.port) as c:
        lines = traced_download(sg.pid, c, sg.tls_host(a.port), size, "", tmp_path)
    client = re.compile(r"^\d+\s+(?:write|writev|sendto|sendmsg)\(\d+<TCP:\[[^\]]*:%d->" % sg.tls_port)
    sizes = [int(line.rsplit("= ", 1)[1].split()[0]) for line in lines
             if client.match(line) and not line.rstrip().endswith("EAGAIN (Resource temporarily unavailable)")]
    assert sum(sizes) >= size, (sum(sizes), sizes[:10])
    # two full records plus the small head record at most; a partial write
    # leaves the rest to a later, smaller call
    assert max(sizes) <= 2 * record + 4096, sorted(sizes)[-5:]
    assert len(sizes) >= size // (2 * record + 4096), len(sizes)
