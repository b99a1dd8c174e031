"""While a body streams through, sandgate has the kernel acknowledge what it
has read at once (TCP_QUICKACK: sg_stream_ack_now in net/stream_tcp.c).
Linux otherwise delays the ACK on a connection it judges interactive (ours
are: a request follows a response) by up to 40 ms, and a sender whose
window waits on that ACK stalls for the whole timer: that was the tail of
the 1 MiB benchmark rows (p99 50-80 ms).

The sender in these tests waits for each piece's ACK before sending the
next (the worst case of a window-limited sender) and reads the wait from its
own socket's TCP_INFO; a few small exchanges first make the connection
interactive. Without the change each body stalled once on the 40 ms timer
(the timer firing ends the kernel's "interactive" guess until the next
exchange); with it every wait is the time sandgate takes to read."""

import time

import pytest

from backends import tcp_unacked
from client import Conn, build_request
from conftest import SCALE
from test_tls import TlsConn, ca, tls_config, tls_factory, tls_sg  # noqa: F401 (fixtures)

MIB = 1 << 20
DELAYED_ACK_S = 0.040  # the kernel's minimum delayed-ACK timeout
ROUNDS = 3
SIZE, PIECE = MIB // 2, 16 * 1024  # pieces under one loopback segment


def open_conn(sg, ca, transport):
    if transport == "tls":
        return TlsConn(sg.tls_port, ca.client_context(), "x.sandbox.test", timeout=30 * SCALE)
    return Conn(sg.port, timeout=30 * SCALE)


def host_for(sg, transport, port):
    return sg.tls_host(port) if transport == "tls" else sg.host(port)


def warm_up(c, host):
    """Small request/response exchanges on one connection: afterwards Linux
    treats both of sandgate's sockets of it as interactive (delayed ACKs)."""
    for i in range(3):
        r = c.request("GET", "/echo?warm=%d" % i, host=host)
        assert r.status == 200, r
    return r.json()["conn_id"]


def wait_acked(sock):
    t0 = time.monotonic()
    while tcp_unacked(sock) and time.monotonic() - t0 < 2.0:
        time.sleep(0.0002)
    return time.monotonic() - t0


def assert_no_timer_stalls(rounds, what):
    """rounds: the ACK waits of each body. A wait of half the timer or more
    is a stall; one round may have one (a scheduling hiccup on a busy test
    machine), not every round."""
    assert len(rounds) == ROUNDS and all(len(w) >= 8 for w in rounds), (what, rounds)
    stalled = [r for r in rounds if max(r) >= DELAYED_ACK_S / 2]
    shown = [["%.1f" % (w * 1000) for w in r] for r in stalled]
    assert len(stalled) <= 1, "%s: ACK waits in ms of the stalled bodies: %s" % (what, shown)


@pytest.mark.parametrize("transport,mode", [("plain", "cl"), ("plain", "chunked"), ("tls", "cl")],
                         ids=["plain-spliced", "plain-chunked", "tls"])
def test_response_body_bytes_are_acked_as_read(tls_sg, ca, backends, transport, mode):  # noqa: F811
    a, _ = backends
    with open_conn(tls_sg, ca, transport) as c:
        host = host_for(tls_sg, transport, a.port)
        for i in range(ROUNDS):
            conn_id = warm_up(c, host)
            r = c.request("GET", "/acked?size=%d&piece=%d&mode=%s" % (SIZE, PIECE, mode), host=host)
            assert r.status == 200 and len(r.body) == SIZE, r
        evs = a.wait_for(lambda: [e for e in a.events if e["kind"] == "ack_waits"][ROUNDS - 1:], 10 * SCALE)
        assert evs, a.events
    # one upstream connection carried everything: its sockets were the
    # interactive ones
    reqs = [e for e in a.events if e["kind"] == "request"]
    assert {e["conn"] for e in reqs} == {conn_id}, reqs
    assert_no_timer_stalls([e["waits"] for e in a.events if e["kind"] == "ack_waits"],
                           "response %s/%s" % (transport, mode))


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_request_body_bytes_are_acked_as_read(tls_sg, ca, backends, transport):  # noqa: F811
    a, _ = backends
    piece = bytes(range(256)) * (PIECE // 256)
    rounds = []
    with open_conn(tls_sg, ca, transport) as c:
        host = host_for(tls_sg, transport, a.port)
        for i in range(ROUNDS):
            warm_up(c, host)
            c.send(build_request("POST", "/upload-watch", host, [("Content-Length", str(SIZE))]))
            waits = []
            for sent in range(PIECE, SIZE + 1, PIECE):
                c.send(piece)
                if sent < SIZE:  # the last piece's ACK may ride on the response
                    waits.append(wait_acked(c.sock))
            r = c.read_response()
            assert r.status == 200 and r.body == b"done %d" % SIZE, r
            rounds.append(waits)
    assert_no_timer_stalls(rounds, "upload %s" % transport)
