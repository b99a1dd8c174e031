"""sandgate's egress role end to end (spec: the egress interface). One sandgate
runs in the host namespace with nft_apply on; the sandbox at 10.231.0.2 is
re-registered (DELETE, then PUT) with each case's policy, and every case
checks both what the client in the sandbox saw and what the destination
servers recorded.

What "blocked" looks like from the sandbox: TCP from the sandbox is always
redirected to sandgate's egress listeners, so the kernel completes the
handshake and a blocked connection is accepted and then closed by sandgate.
The client sees a successful connect followed by EOF or a reset, and never
a byte from the destination (curl: exit 52 "empty reply" or 56 "recv
failure" for HTTP, 35 or 56 for TLS). The destination never sees a
connection. Blocked UDP is dropped: no answer, nothing recorded.

Allowed TCP goes through sandgate, which dials from the host side: the
destination sees the peer 198.51.100.1, never the sandbox's own address.
Allowed UDP is forwarded: the destination sees 10.231.0.2."""

import itertools
import time

import pytest

from conftest import (HOST_INET_SIDE, HOST_SBX_SIDE, NFT_TABLE, NS53, S10, S11, S12, SBX_ADDR,
                      SCALE, decision_delta, sh)

BANNER = b"SSH-2.0-sgt\r\n"
INTERNET_OFF = {"allow_internet_access": False}


def only_allowed(*rules):
    """Internet off plus allow_out rules."""
    return {"allow_internet_access": False, "network": {"allow_out": list(rules)}}


def settle():
    """Lets a wrongly let-through connection reach its server before a test
    checks that nothing arrived (the client has already seen the close)."""
    time.sleep(0.3 * SCALE)


# ---------------------------------------------------------------------------
# checks: each asserts the client's view and the servers' records


def _url(scheme, host, port, path):
    default = 80 if scheme == "http" else 443
    return "%s://%s%s%s" % (scheme, host, "" if port == default else ":%d" % port, path)


def http_ok(sbx, peers, dst, name=None, headers=(), served_by=None, path="/", host_seen=None):
    """GET http://<name or dst><path> with name pinned to dst (curl
    --resolve): 200 from served_by (default dst), which recorded exactly one
    connection from sandgate carrying the request; no other server saw
    anything. Returns the server's record."""
    served_by = served_by or dst
    m = peers.mark()
    resolve = ["%s:80:%s" % (name, dst)] if name else []
    r = sbx.curl(_url("http", name or dst, 80, path), resolve=resolve, headers=headers)
    host_seen = host_seen or name or dst
    assert r.rc == 0 and r.code == "200", r
    assert r.body == "sgt-http listener=%s:80 host=%s\n" % (served_by, host_seen), r
    conns = peers.wait_closed("http", m, "%s:80" % served_by)
    assert len(conns) == 1, conns
    c = conns[0]
    assert c.peer_ip == HOST_INET_SIDE, "not dialed by sandgate: %r" % c
    assert c.data.startswith(b"GET %s HTTP/1.1\r\n" % path.encode()), c
    assert b"\r\nHost: %s\r\n" % host_seen.encode() in c.data, c
    assert c.data.endswith(b"\r\n\r\n"), c
    act = peers.activity(m)
    assert set(act) == {"http"} and len(act["http"]) == 1, act
    return c


def http_blocked(sbx, peers, dst, name=None, headers=(), path="/", port=80):
    m = peers.mark()
    resolve = ["%s:%d:%s" % (name, port, dst)] if name else []
    r = sbx.curl(_url("http", name or dst, port, path), resolve=resolve, headers=headers)
    assert r.code == "000" and r.body == "", r
    # accepted (redirected to sandgate), then closed without a byte
    assert r.rc in (52, 56), "expected an empty reply / recv failure, got %r" % r
    settle()
    assert peers.activity(m) == {}, "a blocked connection reached a server"
    return r


def https_ok(sbx, peers, dst, name, served_by=None, path="/"):
    served_by = served_by or dst
    m = peers.mark()
    r = sbx.curl(_url("https", name, 443, path), resolve=["%s:443:%s" % (name, dst)])
    assert r.rc == 0 and r.code == "200", r
    assert r.body == "sgt-https listener=%s:443 host=%s\n" % (served_by, name), r
    conns = peers.wait_closed("https", m, "%s:443" % served_by)
    assert len(conns) == 1, conns
    c = conns[0]
    assert c.peer_ip == HOST_INET_SIDE, "not dialed by sandgate: %r" % c
    assert c.sni == name and c.tls_error is None, c
    assert c.data.startswith(b"GET %s HTTP/1.1\r\nHost: %s\r\n" % (path.encode(), name.encode())), c
    act = peers.activity(m)
    assert set(act) == {"https"} and len(act["https"]) == 1, act
    return c


def https_blocked(sbx, peers, dst, name=None):
    m = peers.mark()
    if name:
        r = sbx.curl(_url("https", name, 443, "/"), resolve=["%s:443:%s" % (name, dst)])
    else:
        r = sbx.curl(_url("https", dst, 443, "/"), insecure=True)
    assert r.code == "000" and r.body == "", r
    assert r.rc in (35, 52, 56), "expected a TLS connect error / recv failure, got %r" % r
    settle()
    assert peers.activity(m) == {}, "a blocked connection reached a server"
    return r


def ssh_ok(sbx, peers, dst, port=22):
    """Server-speaks-first: the banner arrives before the client sends, then
    the echo; half-close travels both ways."""
    m = peers.mark()
    payload = b"hello from the sandbox\n"
    out = sbx.tcp("%s:%d" % (dst, port), send=payload, read_first=3, shut_wr=True)
    assert out["connected"] and out["send_error"] is None, out
    assert out["received"] == BANNER + payload and out["end"] == "eof", out
    conns = peers.wait_closed("ssh", m, "%s:%d" % (dst, port))
    assert len(conns) == 1 and conns[0].data == payload, conns
    assert conns[0].peer_ip == HOST_INET_SIDE, conns
    act = peers.activity(m)
    assert set(act) == {"ssh"} and len(act["ssh"]) == 1, act


def tcp_blocked(sbx, peers, dst, send=b"hello\n"):
    """A raw TCP connection: accepted (by sandgate's listener), then EOF or
    reset, no byte received; no server saw anything."""
    m = peers.mark()
    out = sbx.tcp(dst, send=send, read_first=3, shut_wr=True, timeout=4)
    assert out["connected"], "the connect itself failed (not redirected?): %r" % out
    assert out["received"] == b"", out
    assert out["end"] in ("eof", "reset"), out
    settle()
    assert peers.activity(m) == {}, "a blocked connection reached a server"
    return out


def udp_ok(sbx, peers, dst, port=7):
    m = peers.mark()
    payload = b"udp %s %f" % (dst.encode(), time.time())
    assert sbx.udp("%s:%d" % (dst, port), payload) == payload
    (dg,) = peers.datagrams("udp", m)
    assert dg[1] == payload and dg[2] == "%s:%d" % (dst, port), dg
    assert dg[0].startswith(SBX_ADDR + ":"), "UDP is forwarded, not proxied: %r" % (dg,)


def udp_blocked(sbx, peers, dst, port=7):
    m = peers.mark()
    assert sbx.udp("%s:%d" % (dst, port), b"should be dropped") is None
    settle()
    assert peers.activity(m) == {}, "a dropped datagram reached a server"


# ---------------------------------------------------------------------------
# the matrix


def test_no_rules_everything_works(gate, register, peers, sbx):
    register({})
    http_ok(sbx, peers, S10)
    http_ok(sbx, peers, S11, name="other.test")
    https_ok(sbx, peers, S10, "allowed.test")
    ssh_ok(sbx, peers, S10)
    udp_ok(sbx, peers, S10)
    udp_ok(sbx, peers, S12)


def test_internet_off_blocks_everything(gate, register, peers, sbx):
    register(INTERNET_OFF)
    http_blocked(sbx, peers, S10)
    http_blocked(sbx, peers, S10, name="allowed.test")
    https_blocked(sbx, peers, S10, name="allowed.test")
    https_blocked(sbx, peers, S11)
    tcp_blocked(sbx, peers, "%s:22" % S10)
    udp_blocked(sbx, peers, S10)
    udp_blocked(sbx, peers, S12)


def test_deny_one_cidr(gate, register, peers, sbx):
    register({"network": {"deny_out": ["203.0.113.11/32"]}})
    http_blocked(sbx, peers, S11)
    http_blocked(sbx, peers, S11, name="other.test")
    http_ok(sbx, peers, S10)
    http_ok(sbx, peers, S12, name="other.test")
    tcp_blocked(sbx, peers, "%s:22" % S11)
    ssh_ok(sbx, peers, S10)
    https_blocked(sbx, peers, S11, name="other.test")
    https_ok(sbx, peers, S10, "other.test")


def test_no_host_header_decides_on_the_address(gate, register, peers, sbx):
    register({"network": {"deny_out": ["203.0.113.11/32"]}})
    req = b"GET /nohost HTTP/1.0\r\n\r\n"
    m = peers.mark()
    out = sbx.tcp("%s:80" % S10, send=req, timeout=4)
    assert out["received"].startswith(b"HTTP/1.1 200 OK\r\n") and out["end"] == "eof", out
    (c,) = peers.wait_closed("http", m, "%s:80" % S10)
    assert c.data == req and c.peer_ip == HOST_INET_SIDE, c
    tcp_blocked(sbx, peers, "%s:80" % S11, send=req)


def test_allow_beats_deny(gate, register, peers, sbx):
    register({"network": {"deny_out": ["203.0.113.0/24"], "allow_out": ["203.0.113.10"]}})
    http_ok(sbx, peers, S10)
    http_blocked(sbx, peers, S12)
    ssh_ok(sbx, peers, S10)
    tcp_blocked(sbx, peers, "%s:22" % S12)
    udp_ok(sbx, peers, S10)
    udp_blocked(sbx, peers, S12)


def test_domain_rules_http_and_https(gate, register, peers, sbx):
    register(only_allowed("allowed.test"))
    http_ok(sbx, peers, S10, name="allowed.test", path="/d")
    https_ok(sbx, peers, S10, "allowed.test", path="/d")
    http_blocked(sbx, peers, S11, name="other.test")
    https_blocked(sbx, peers, S11, name="other.test")
    # a subdomain is not the name itself
    http_blocked(sbx, peers, S10, name="www.allowed.test")
    # an address is not a name: the Host is an IP, decided on the address
    http_blocked(sbx, peers, S10)
    # ASCII case-insensitive; the Host's port is not part of the name
    http_ok(sbx, peers, S10, headers=["Host: ALLOWED.Test"], host_seen="ALLOWED.Test")
    http_ok(sbx, peers, S10, headers=["Host: allowed.test:80"], host_seen="allowed.test:80")
    m = peers.mark()
    req = b"GET /sni-case HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
    out = sbx.tls("%s:443" % S10, "ALLOWED.Test", req)
    assert out["handshake"] and out["received"].startswith(b"HTTP/1.1 200 OK\r\n"), out
    (c,) = peers.wait_closed("https", m, "%s:443" % S10)
    assert c.data == req and c.peer_ip == HOST_INET_SIDE, c
    # sandgate resolved the name itself through the configured resolver
    assert peers.dns.queries("allowed") >= 1


def test_domain_trailing_dot_in_host(gate, register, peers, sbx):
    register(only_allowed("allowed.test."))
    http_ok(sbx, peers, S10, headers=["Host: allowed.test."], host_seen="allowed.test.")
    http_ok(sbx, peers, S10, name="allowed.test")


def test_wildcard_domain(gate, register, peers, sbx):
    register(only_allowed("*.allowed.test"))
    http_ok(sbx, peers, S10, name="www.allowed.test")
    http_ok(sbx, peers, S10, name="a.b.allowed.test")
    https_ok(sbx, peers, S10, "www.allowed.test")
    https_ok(sbx, peers, S10, "a.b.allowed.test")
    http_blocked(sbx, peers, S10, name="allowed.test")
    https_blocked(sbx, peers, S10, name="allowed.test")
    http_blocked(sbx, peers, S11, name="other.test")


def test_domain_allow_is_not_undone_by_a_deny_cidr(gate, register, peers, sbx):
    """A name allowed by a domain rule is dialed at its resolved address,
    which is checked against the always-denied ranges only."""
    register({"allow_internet_access": False,
              "network": {"allow_out": ["allowed.test"], "deny_out": ["203.0.113.10/32"]}})
    http_ok(sbx, peers, S10, name="allowed.test")
    http_blocked(sbx, peers, S10)


def test_https_to_bare_ip_with_domain_rules_is_blocked(gate, register, peers, sbx):
    register(only_allowed("allowed.test"))
    https_blocked(sbx, peers, S10)
    https_blocked(sbx, peers, S12)
    https_ok(sbx, peers, S10, "allowed.test")


def test_spoofed_destination_dials_the_resolved_address(gate, register, peers, sbx):
    """The sandbox claims allowed.test lives at .12; sandgate resolves the
    name itself and dials .10. The .12 servers see nothing (http_ok checks
    that no other server saw anything)."""
    register(only_allowed("allowed.test"))
    http_ok(sbx, peers, S12, name="allowed.test", served_by=S10)
    https_ok(sbx, peers, S12, "allowed.test", served_by=S10)
    http_ok(sbx, peers, S11, headers=["Host: allowed.test"], served_by=S10, host_seen="allowed.test")


def test_rebinding_to_an_internal_address_is_blocked(gate, register, peers, sbx):
    register(only_allowed("internal.test"))
    before = gate.decisions()
    asked = peers.dns.queries("internal")
    http_blocked(sbx, peers, S10, name="internal.test")
    https_blocked(sbx, peers, S10, name="internal.test")
    # blocked after resolving (the name matched), not for a name mismatch
    assert peers.dns.queries("internal") > asked
    delta = decision_delta(before, gate.decisions())
    assert delta == {("http", "deny", "always_denied"): 1, ("tls", "deny", "always_denied"): 1}, delta


@pytest.mark.parametrize("policy", [
    {},
    {"network": {"allow_out": ["10.0.0.0/8"]}},
    {"network": {"allow_out": [HOST_SBX_SIDE, "10.232.0.0/16"]}},
    {"allow_internet_access": False, "network": {"allow_out": ["10.0.0.0/8"]}},
], ids=["no-rules", "allow-10/8", "allow-host-addresses", "internet-off-allow-10/8"])
def test_private_ranges_always_blocked(gate, register, peers, sbx, topology, policy):
    """The host side's internal addresses stay out of reach whatever the
    rules say: TCP is redirected to sandgate and denied (always_denied);
    UDP and other non-TCP to the host itself is dropped by the input rule.
    The host's public-side address (198.51.100.1, outside every private
    range) is refused too: sandgate never dials one of its own host's
    addresses."""
    register(policy)
    http_blocked(sbx, peers, HOST_SBX_SIDE, port=8081)
    http_blocked(sbx, peers, HOST_SBX_SIDE)
    http_blocked(sbx, peers, HOST_SBX_SIDE, name="allowed.test")
    # the admin API across the management link
    tcp_blocked(sbx, peers, "%s:9901" % topology.mgmt_host,
                send=b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    # sandgate's own listeners, addressed directly
    tcp_blocked(sbx, peers, "%s:15000" % HOST_SBX_SIDE)
    http_blocked(sbx, peers, HOST_INET_SIDE)
    http_blocked(sbx, peers, HOST_INET_SIDE, port=8081)
    udp_blocked(sbx, peers, HOST_SBX_SIDE)
    udp_blocked(sbx, peers, HOST_INET_SIDE)


def test_forged_source_addresses_are_dropped(gate, register, peers, sbx, topology):
    """A sandbox that forges a source address which is no registered
    sandbox's would match none of the per-sandbox rules; with
    egress.sandbox_interfaces the host drops everything from such a source
    on the sandbox interface, while the real address keeps working."""
    register({})
    forged = "10.231.0.77"
    sh(["ip", "-n", topology.sbx, "addr", "add", forged + "/32", "dev", topology.if_sbx])
    try:
        udp_ok(sbx, peers, S10)
        m = peers.mark()
        assert sbx.udp("%s:7" % S10, b"forged", src=forged) is None
        settle()
        assert peers.activity(m) == {}, "a forged datagram reached a server"
    finally:
        sh(["ip", "-n", topology.sbx, "addr", "del", forged + "/32", "dev", topology.if_sbx])


def test_server_speaks_first_with_cidr_rules(gate, register, peers, sbx):
    register({"network": {"allow_out": ["203.0.113.10"], "deny_out": ["0.0.0.0/0"]}})
    ssh_ok(sbx, peers, S10)
    tcp_blocked(sbx, peers, "%s:22" % S11)
    tcp_blocked(sbx, peers, "%s:22" % S12)


def test_udp_allowed_and_denied_by_cidr(gate, register, peers, sbx):
    register({"network": {"deny_out": ["203.0.113.11"]}})
    udp_ok(sbx, peers, S10)
    udp_ok(sbx, peers, S12)
    udp_blocked(sbx, peers, S11)


def test_nameserver_auto_allowed_with_domain_rules(gate, register, peers, sbx):
    register(only_allowed("allowed.test"))
    asked = peers.dns.queries("nsprobe")
    ans = sbx.dns("nsprobe.test")
    assert ans["answered"] and ans["a"] == [S10], ans
    assert peers.dns.queries("nsprobe") == asked + 1
    # only the nameserver: other UDP stays blocked
    udp_blocked(sbx, peers, S10)


def test_nameserver_not_allowed_without_domain_rules(gate, register, peers, sbx):
    register(INTERNET_OFF)
    ans = sbx.dns("nsprobe2.test")
    assert not ans["answered"], ans
    assert peers.dns.queries("nsprobe2") == 0


def test_tls_client_hello_split_over_segments_and_records(gate, register, peers, sbx):
    register(only_allowed("allowed.test"))
    req = b"GET /split HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
    for segs, recs in ((4, 1), (1, 3), (3, 3)):
        m = peers.mark()
        out = sbx.tls("%s:443" % S12, "allowed.test", req, split_segments=segs, split_records=recs)
        assert out["handshake"], (segs, recs, out)
        assert out["received"].startswith(b"HTTP/1.1 200 OK\r\n"), (segs, recs, out)
        assert b"listener=%s:443" % S10.encode() in out["received"], out
        (c,) = peers.wait_closed("https", m, "%s:443" % S10)
        assert c.sni == "allowed.test" and c.data == req, c


def test_sniff_failures_are_denied(gate, register, peers, sbx):
    """A head or ClientHello that stalls past egress.sniff_timeout (2s
    here) or grows past sniff_max_bytes (16 KiB) is denied even where the
    policy would allow it."""
    register({})
    before = gate.decisions()
    m = peers.mark()
    t0 = time.monotonic()
    out = sbx.tcp("%s:80" % S10, send=b"GET / HTTP/1.1\r\nHost: allow", timeout=8)
    took = time.monotonic() - t0
    assert out["received"] == b"" and out["end"] in ("eof", "reset"), out
    assert 1.5 <= took < 7 * SCALE, took
    out = sbx.tcp("%s:80" % S10, send=b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000, timeout=4)
    assert out["received"] == b"" and out["end"] in ("eof", "reset"), out
    # a TLS record header announcing a ClientHello that never comes
    out = sbx.tcp("%s:443" % S10, send=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", timeout=8)
    assert out["received"] == b"" and out["end"] in ("eof", "reset"), out
    settle()
    assert peers.activity(m) == {}
    delta = decision_delta(before, gate.decisions())
    assert delta == {("http", "deny", "sniff_failed"): 2, ("tls", "deny", "sniff_failed"): 1}, delta


def test_head_and_body_in_one_read_past_the_cap_are_forwarded(gate, register, peers, sbx):
    """sniff_max_bytes caps what is judged, not what is forwarded: a small
    head followed at once by a body bigger than the cap (one write, so
    sandgate reads both together) is allowed on its Host and arrives whole."""
    register({"allow_internet_access": False, "network": {"allow_out": ["allowed.test"]}})
    body = bytes(range(256)) * 160  # 40 KiB > 16 KiB cap
    head = (b"POST /upload HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body))
    m = peers.mark()
    out = sbx.tcp("%s:80" % S12, send=head + body, timeout=8)
    assert out["received"].startswith(b"HTTP/1.1 200"), out
    conns = peers.wait_closed("http", m, "%s:80" % S10)
    assert len(conns) == 1 and conns[0].data == head + body, (len(conns), len(conns[0].data))


def test_network_settings_fixed_at_creation(gate, register):
    doc = {"allow_internet_access": False,
           "network": {"allow_out": ["ALLOWED.test.", "203.0.113.10"], "deny_out": ["203.0.113.0/24"]}}
    sid = register(doc)
    got = gate.admin.get(sid)
    assert got.status == 200, got
    g = got.json()
    assert g["allow_internet_access"] is False, g
    assert sorted(g["network"]["allow_out"]) == ["203.0.113.10", "allowed.test"], g
    assert sorted(g["network"]["deny_out"]) == ["0.0.0.0/0", "203.0.113.0/24"], g
    # the same settings again, also in their normalised spelling, and with
    # only other fields changed
    body = dict(doc, address=SBX_ADDR)
    assert gate.admin.put(sid, body).status == 200
    norm = {"address": SBX_ADDR, "allow_internet_access": False,
            "network": {"allow_out": ["allowed.test", "203.0.113.10"], "deny_out": ["203.0.113.0/24"]}}
    r = gate.admin.put(sid, norm)
    assert r.status == 200, r
    r = gate.admin.put(sid, dict(body, max_incoming_connections=5))
    assert r.status == 200, r
    # any change of the network settings: 409
    changes = [
        dict(body, network={"allow_out": ["allowed.test"], "deny_out": ["203.0.113.0/24"]}),
        dict(body, network={"allow_out": ["ALLOWED.test.", "203.0.113.10"]}),
        {"address": SBX_ADDR},
    ]
    for change in changes:
        r = gate.admin.put(sid, change)
        assert r.status == 409, (change, r)
        j = r.json()
        assert j.get("field") == "network", j
        assert "network settings are fixed at creation; delete and re-create the sandbox" in (
            j.get("error"), j.get("message")), j
    got = gate.admin.get(sid).json()
    assert got["network"] == g["network"] and got["allow_internet_access"] is False, got


DOMAIN_NEEDS_DENY_ALL = "domain rules need deny_out to contain 0.0.0.0/0"
_bad_ids = itertools.count(1)


@pytest.mark.parametrize("network,field,value,says", [
    ({"allow_out": ["203.0.113.10", "allowed.test"]}, "network.allow_out[1]", "allowed.test",
     DOMAIN_NEEDS_DENY_ALL),
    ({"allow_out": ["allowed.test"], "deny_out": ["203.0.113.0/24"]}, "network.allow_out[0]",
     "allowed.test", DOMAIN_NEEDS_DENY_ALL),
    ({"deny_out": ["0.0.0.0/0", "allowed.test"]}, "network.deny_out[1]", "allowed.test", None),
    ({"deny_out": ["10.0.0.1/8"]}, "network.deny_out[0]", "10.0.0.1/8", None),
    ({"deny_out": ["0.0.0.0/0"], "allow_out": ["203.0.113.10", "1.2.3.4/33"]},
     "network.allow_out[1]", "1.2.3.4/33", None),
    ({"deny_out": ["0.0.0.0/0"], "allow_out": [""]}, "network.allow_out[0]", "", None),
    ({"deny_out": ["0.0.0.0/0"], "allow_out": ["a.*.allowed.test"]}, "network.allow_out[0]",
     "a.*.allowed.test", None),
], ids=["domain-without-deny-all", "domain-with-narrow-deny", "domain-in-deny",
        "host-bits-set", "prefix-out-of-range", "empty", "inner-wildcard"])
def test_bad_network_rules_are_400(gate, network, field, value, says):
    sid = "bad%d" % next(_bad_ids)
    r = gate.admin.put(sid, {"address": "10.231.0.99", "network": network})
    assert r.status == 400, r
    j = r.json()
    msg = j.get("error") or j.get("message") or ""
    assert field in msg and '"%s"' % value in msg, j
    if says:
        assert says in msg, j
    assert gate.admin.get(sid).status == 404


def test_nftables_endpoint_shows_the_loaded_rules(gate, register):
    sid = register({"network": {"deny_out": ["203.0.113.11"]}})
    r = gate.admin.request("GET", "/v1/egress/nftables")
    assert r.status == 200, r
    assert (r.header("Content-Type") or "").startswith("text/plain"), r
    text = r.body.decode()
    assert "table inet %s" % NFT_TABLE in text and SBX_ADDR in text, text
    loaded = gate.nft_ruleset()
    assert "table inet %s" % NFT_TABLE in loaded and "203.0.113.11" in loaded, loaded
    # the ruleset is loaded as a whole, our table only: nothing else appeared
    tables = gate.topo.run(gate.topo.host, ["nft", "list", "tables"], check=True).stdout.split("\n")
    assert [t for t in tables if t.strip()] == ["table inet %s" % NFT_TABLE], tables
    assert gate.admin.delete(sid).status == 204
    gate.wait_rules(SBX_ADDR, present=False)
    r = gate.admin.request("GET", "/v1/egress/nftables")
    assert r.status == 200 and SBX_ADDR not in r.body.decode(), r


def test_metrics_count_decisions(gate, register, peers, sbx, topology):
    register(only_allowed("allowed.test"))
    before = gate.decisions()
    http_ok(sbx, peers, S10, name="allowed.test")             # http allow domain
    http_blocked(sbx, peers, S11, name="other.test")          # http deny cidr (0.0.0.0/0)
    https_ok(sbx, peers, S10, "allowed.test")                 # tls allow domain
    https_blocked(sbx, peers, S10)                            # tls deny cidr (no SNI)
    tcp_blocked(sbx, peers, "%s:22" % S10)                    # other deny cidr
    tcp_blocked(sbx, peers, "%s:8081" % HOST_SBX_SIDE)        # other deny always_denied
    # the nameserver, auto-allowed as a CIDR, over TCP: other allow cidr
    out = sbx.tcp("%s:53" % NS53, shut_wr=True, timeout=4)
    assert out["connected"] and out["end"] == "eof", out
    # a source that is no sandbox (the root namespace): other deny unknown_sandbox
    r = sh(["/usr/bin/python3", "-c",
            "import socket; s = socket.create_connection(('%s', 15000), timeout=5); "
            "s.settimeout(5); print(repr(s.recv(10)))" % topology.mgmt_host], check=False)
    assert r.stdout.strip() == "b''" or "reset" in r.stderr, r
    expected = {
        ("http", "allow", "domain"): 1, ("http", "deny", "cidr"): 1,
        ("tls", "allow", "domain"): 1, ("tls", "deny", "cidr"): 1,
        ("other", "deny", "cidr"): 1, ("other", "deny", "always_denied"): 1,
        ("other", "allow", "cidr"): 1, ("other", "deny", "unknown_sandbox"): 1,
    }
    deadline = time.monotonic() + 3 * SCALE
    while True:
        delta = decision_delta(before, gate.decisions())
        if delta == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert delta == expected, delta
    # a policy without deny rules: reason default
    register({})
    before = gate.decisions()
    http_ok(sbx, peers, S10)
    ssh_ok(sbx, peers, S11)
    delta = decision_delta(before, gate.decisions())
    assert delta == {("http", "allow", "default"): 1, ("other", "allow", "default"): 1}, delta


def _blocked_lines(gate, **want):
    """'egress blocked' lines of sandgate's stderr whose key=value fields
    include `want` (waits up to 5 s for one)."""
    def fields(line):
        rest = line.split("egress blocked", 1)[1]
        return dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)

    return gate.wait_log(lambda ln: "egress blocked" in ln and all(
        fields(ln).get(k) == v for k, v in want.items()))


def test_blocked_attempts_are_logged(gate, register, peers, sbx, topology):
    sid = register({"network": {"deny_out": ["203.0.113.11/32"]}})
    tcp_blocked(sbx, peers, "%s:22" % S11)
    lines = _blocked_lines(gate, sandbox=sid, src=SBX_ADDR, dst="%s:22" % S11, name="-",
                           protocol="other", reason="cidr", rule="203.0.113.11/32")
    assert len(lines) == 1, gate.stderr_text()[-3000:]
    http_blocked(sbx, peers, S11, name="other.test")
    lines = _blocked_lines(gate, sandbox=sid, src=SBX_ADDR, dst="%s:80" % S11, name="other.test",
                           protocol="http", reason="cidr", rule="203.0.113.11/32")
    assert len(lines) == 1, gate.stderr_text()[-3000:]
    tcp_blocked(sbx, peers, "%s:8081" % HOST_SBX_SIDE)
    lines = _blocked_lines(gate, sandbox=sid, dst="%s:8081" % HOST_SBX_SIDE, protocol="other",
                           reason="always_denied")
    assert len(lines) == 1, gate.stderr_text()[-3000:]
    # allowed connections are not logged as blocked
    n = gate.stderr_text().count("egress blocked")
    http_ok(sbx, peers, S10)
    assert gate.stderr_text().count("egress blocked") == n
    # no sandbox at all
    sh(["/usr/bin/python3", "-c",
        "import socket; s = socket.create_connection(('%s', 15000), timeout=5); s.settimeout(5); "
        "s.recv(10)" % topology.mgmt_host], check=False)
    lines = _blocked_lines(gate, sandbox="-", src=topology.mgmt_root, reason="unknown_sandbox")
    assert len(lines) >= 1, gate.stderr_text()[-3000:]


def test_sandgate_still_healthy(gate):
    """Last: the admin API answers and the process is alive (teardown then
    checks its exit status and stderr for sanitizer reports)."""
    assert gate.alive(), gate.stderr_text()[-3000:]
    r = gate.admin.request("GET", "/healthz")
    assert r.status == 200, r
    assert gate.metrics().samples("sandgate_egress_decisions_total")
