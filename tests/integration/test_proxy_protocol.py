"""PROXY protocol v1/v2 on listeners with `proxy_protocol: true`: the carried
client address feeds X-Forwarded-For and the access log; connections without
a valid header are closed without an HTTP response; a header sent to a
listener that does not enable the protocol is a bad request (400)."""

import ipaddress
import json
import os
import socket
import ssl
import struct
import time

import pytest

from client import Conn, build_request
from conftest import SCALE, default_config, read_json_lines, wait_json_lines
from httpio import wait_closed

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src="1.2.3.4", dst="5.6.7.8", sport=1111, dport=80, proto=None):
    proto = proto or ("TCP6" if ":" in src else "TCP4")
    return ("PROXY %s %s %s %d %d\r\n" % (proto, src, dst, sport, dport)).encode()


def v2(src="1.2.3.4", dst="5.6.7.8", sport=1111, dport=80, command=1, tlvs=b"", family=None):
    """Binary header; command 1 = PROXY, 0 = LOCAL."""
    if family is None:
        family = 0x21 if ":" in src else 0x11
    if family in (0x11, 0x12):
        addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    elif family in (0x21, 0x22):
        addrs = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
                 + struct.pack("!HH", sport, dport))
    else:
        addrs = b""
    body = addrs + tlvs
    return V2_SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


@pytest.fixture
def pp(ops_factory, backends, tmp_path):
    """(sandgate, abc backend, access log path): listeners `plain` (port) and
    `pp` (proxy_protocol: true), one worker."""
    a, _ = backends
    log = str(tmp_path / "access.log")
    cfg = default_config(workers=1, access_log=log, drain_timeout="3s")
    sg = ops_factory(cfg, listeners={"plain": {}, "pp": {"proxy_protocol": True}}, admin=False)
    return sg, a, log


def host(sg, a):
    return "%d-abc.sandbox.test" % a.port


def xff(resp):
    doc = resp.json()
    return [v for n, v in doc["headers"] if n.lower() == "x-forwarded-for"]


VALID = {
    "v1_tcp4": (v1(), "1.2.3.4"),
    "v1_tcp6": (v1("2001:db8::1", "2001:db8::2", 40000, 443), "2001:db8::1"),
    "v1_max_ports": (v1("255.255.255.255", "0.0.0.0", 65535, 0), "255.255.255.255"),
    "v2_tcp4": (v2("1.2.3.4", "5.6.7.8"), "1.2.3.4"),
    "v2_tcp6": (v2("2001:db8::7", "2001:db8::8"), "2001:db8::7"),
    "v2_tlvs": (v2("10.9.8.7", "5.6.7.8", tlvs=tlv(0x01, b"h2") + tlv(0x04, b"") + tlv(0xE0, b"x" * 300)),
                "10.9.8.7"),
}


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_header_sets_client_address(pp, case, split):
    sg, a, log = pp
    header, client = VALID[case]
    with Conn(sg.ports["pp"]) as c:
        req = build_request("GET", "/echo?n=1", host(sg, a))
        if split == "whole":
            c.send(header + req)  # header and request in one segment
        else:
            for i in range(len(header)):
                c.send(header[i:i + 1])
                time.sleep(0.002)
            c.send(req)
        r = c.read_response()
        assert r.status == 200, r
        assert xff(r) == [client], r.json()["headers"]
        # later requests on the connection keep the carried address
        r = c.request("GET", "/echo?n=2", host=host(sg, a), headers=[("X-Forwarded-For", "9.9.9.9")])
        assert r.status == 200, r
        vals = xff(r)
        assert len(vals) == 1 and [x.strip() for x in vals[0].split(",")] == ["9.9.9.9", client], vals
    lines = wait_json_lines(log, 2)
    assert [x["client"] for x in lines] == [client, client], lines
    assert [x["path"] for x in lines] == ["/echo", "/echo"]


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n",
                                    b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1111 80\r\n",
                                    v2(command=0),
                                    v2(family=0x00, command=1)],
                         ids=["v1_unknown", "v1_unknown_with_addresses", "v2_local", "v2_unspec"])
def test_local_or_unknown_header_keeps_socket_address(pp, header):
    sg, a, log = pp
    with Conn(sg.ports["pp"]) as c:
        c.send(header + build_request("GET", "/echo", host(sg, a)))
        r = c.read_response()
        assert r.status == 200, r
        assert xff(r) == ["127.0.0.1"], r.json()["headers"]
    assert wait_json_lines(log, 1)[0]["client"] == "127.0.0.1"


REJECTED = {
    "no_header": (build_request("GET", "/echo", "HOSTX"), False),
    "truncated_v1_then_close": (b"PROXY TCP4 1.2.3.4 5.6.", True),
    "truncated_v2_then_close": (v2()[:20], True),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, False),
    "v1_bad_address": (v1("1.2.3.256") + build_request("GET", "/echo", "HOSTX"), False),
    "v1_leading_zero": (b"PROXY TCP4 01.2.3.4 5.6.7.8 1111 80\r\n" + build_request("GET", "/echo", "HOSTX"), False),
    "v1_port_too_big": (v1(sport=70000) + build_request("GET", "/echo", "HOSTX"), False),
    "v1_family_mismatch": (b"PROXY TCP4 2001:db8::1 5.6.7.8 1111 80\r\n" + build_request("GET", "/echo", "HOSTX"), False),
    "v1_lf_only": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\n" + build_request("GET", "/echo", "HOSTX"), False),
    "v1_too_long": (b"PROXY UNKNOWN " + b"a" * 200 + b"\r\n" + build_request("GET", "/echo", "HOSTX"), False),
    "v1_lowercase": (b"proxy TCP4 1.2.3.4 5.6.7.8 1111 80\r\n" + build_request("GET", "/echo", "HOSTX"), False),
    "v2_bad_version": (V2_SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12 + build_request("GET", "/echo", "HOSTX"), False),
    "v2_bad_command": (V2_SIG + b"\x22\x11\x00\x0c" + b"\x00" * 12 + build_request("GET", "/echo", "HOSTX"), False),
    "v2_udp": (v2(family=0x12) + build_request("GET", "/echo", "HOSTX"), False),
    "v2_short_address_block": (V2_SIG + b"\x21\x11\x00\x04" + b"\x01\x02\x03\x04" + build_request("GET", "/echo", "HOSTX"), False),
    "v2_tlv_overruns": (v2(tlvs=b"\x01\x00\x10ab") + build_request("GET", "/echo", "HOSTX"), False),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_invalid_or_missing_header_is_closed_without_response(pp, case):
    sg, a, log = pp
    data, half_close = REJECTED[case]
    data = data.replace(b"HOSTX", host(sg, a).encode())
    s = socket.create_connection(("127.0.0.1", sg.ports["pp"]), timeout=10)
    try:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        how, extra = wait_closed(s, 3 * SCALE)
        assert how is not None, "connection left open"
        assert extra == b"", "got bytes back: %r" % extra[:200]
        assert time.monotonic() - t0 < 2 * SCALE
    finally:
        s.close()
    # nothing reached the sandbox, nothing was logged as a request
    time.sleep(0.1)
    assert a.raw_all() == b""
    assert not os.path.exists(log) or read_json_lines(log) == []
    # and the listener still serves a valid client
    with Conn(sg.ports["pp"]) as c:
        c.send(v1() + build_request("GET", "/echo", host(sg, a)))
        r = c.read_response()
        assert r.status == 200 and xff(r) == ["1.2.3.4"], r


def test_second_header_after_the_first_is_a_bad_request(pp):
    sg, a, _ = pp
    with Conn(sg.ports["pp"]) as c:
        c.send(v1() + build_request("GET", "/echo", host(sg, a)))
        assert c.read_response().status == 200
        c.send(v1("6.6.6.6") + build_request("GET", "/echo?smuggled=1", host(sg, a)))
        r = c.read_response()
        assert r.status == 400 and r.error_name == "bad_request", r
        how, _ = wait_closed(c.sock, 3 * SCALE)
        assert how is not None
    assert b"smuggled" not in a.raw_all()


@pytest.mark.parametrize("header", [v1(), v2()], ids=["v1", "v2"])
def test_header_on_plain_listener_is_a_bad_request(pp, header):
    sg, a, log = pp
    with Conn(sg.port) as c:
        c.send(header + build_request("GET", "/echo?forged=1", host(sg, a)))
        r = c.read_response()
        assert r.status == 400 and r.error_name == "bad_request", r
        how, _ = wait_closed(c.sock, 3 * SCALE)
        assert how is not None, "connection kept open after a 400"
    assert b"forged" not in a.raw_all()
    # the plain listener itself serves with the socket address
    with Conn(sg.port) as c:
        r = c.request("GET", "/echo", host=host(sg, a))
        assert r.status == 200 and xff(r) == ["127.0.0.1"], r
    lines = wait_json_lines(log, 2)
    assert [x["client"] for x in lines] == ["127.0.0.1", "127.0.0.1"], lines
    assert lines[0]["status"] == 400 and lines[0]["error"] == "bad_request"


def test_header_before_tls_client_hello(ops_factory, backends, tmp_path):
    from tls_certs import ScratchCA

    a, _ = backends
    ca = ScratchCA(tmp_path / "pki")
    leaf = ca.issue(["*.sandbox.test"], "pp")
    log = str(tmp_path / "access.log")
    cfg = default_config(workers=1, access_log=log, drain_timeout="3s")
    cfg["tls"] = {"certificates": [{"cert": leaf.chain, "key": leaf.key}]}
    sg = ops_factory(cfg, listeners={"plain": {}, "tlspp": {"tls": True, "proxy_protocol": True}},
                     admin=False)
    port = sg.ports["tlspp"]
    ctx = ca.client_context()
    name = "%d-abc.sandbox.test" % a.port
    for header, client in ((v1("1.2.3.4"), "1.2.3.4"), (v2("2001:db8::5", "2001:db8::6"), "2001:db8::5")):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(header)
        s = ctx.wrap_socket(raw, server_hostname=name)
        try:
            s.sendall(build_request("GET", "/echo?tls=1", name))
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            n = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
            while len(body) < n:
                body += s.recv(65536)
            doc = json.loads(body)
            got = [v for k, v in doc["headers"] if k.lower() == "x-forwarded-for"]
            assert got == [client], doc["headers"]
            assert [v for k, v in doc["headers"] if k.lower() == "x-forwarded-proto"] == ["https"]
        finally:
            s.close()
    # a ClientHello without the header is closed without a handshake
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        ctx.wrap_socket(raw, server_hostname=name)
    raw.close()
    lines = wait_json_lines(log, 2)
    assert [x["client"] for x in lines] == ["1.2.3.4", "2001:db8::5"], lines


def test_stalled_partial_header_times_out(ops_factory, backends):
    a, _ = backends
    cfg = default_config(workers=1, drain_timeout="3s", timeouts={"request_head": "500ms"})
    sg = ops_factory(cfg, listeners={"plain": {}, "pp": {"proxy_protocol": True}}, admin=False)
    for partial in (b"PROXY TCP4 1.2.3.4 5.6", v2()[:14], v1()):
        s = socket.create_connection(("127.0.0.1", sg.ports["pp"]), timeout=10)
        try:
            s.sendall(partial)  # a whole header but no request also stalls
            t0 = time.monotonic()
            how, extra = wait_closed(s, 5 * SCALE)
            took = time.monotonic() - t0
            assert how is not None, "stalled PROXY header kept open"
            assert 0.3 <= took <= 2.5 * SCALE, took
            if partial == v1():
                # the header was complete: this is an HTTP request-head timeout
                assert extra == b"" or extra.startswith(b"HTTP/1.1 408"), extra[:200]
            else:
                assert extra == b"", extra[:200]
        finally:
            s.close()
    assert a.raw_all() == b""
