"""The egress harness on its own, without sandgate: the namespaces, links and
routes are what README.md says, every peer answers and records what it got,
the probes see what they should, the kernel in the host namespace can do what
sandgate's rules need (nat redirect + SO_ORIGINAL_DST), and teardown leaves
nothing behind. If these fail, test_egress.py's failures say nothing about
sandgate."""

import os
import signal
import subprocess


from conftest import (HOST_INET_SIDE, HOST_SBX_SIDE, INET_ADDR, NS53, PYTHON, S10, S11, S12,
                      SBX_ADDR, Peers, SandboxClient, Topology, require_netns, sh,
                      wait_file)

BANNER = b"SSH-2.0-sgt\r\n"


def test_links_and_routes(topology):
    t = topology
    assert t.run(t.host, ["sysctl", "-n", "net.ipv4.ip_forward"], check=True).stdout.strip() == "1"
    route = t.run(t.sbx, ["ip", "-4", "route", "get", S10], check=True).stdout
    assert "via %s" % HOST_SBX_SIDE in route and "src %s" % SBX_ADDR in route, route
    route = t.run(t.host, ["ip", "-4", "route", "get", S12], check=True).stdout
    assert "via %s" % INET_ADDR in route and "src %s" % HOST_INET_SIDE in route, route
    route = t.run(t.inet, ["ip", "-4", "route", "get", SBX_ADDR], check=True).stdout
    assert "via %s" % HOST_INET_SIDE in route, route
    inet_addrs = t.run(t.inet, ["ip", "-4", "-o", "addr"], check=True).stdout
    for a in (S10, S11, S12, NS53, INET_ADDR):
        assert " %s/" % a in inet_addrs, inet_addrs
    # the management link: the root namespace reaches the host namespace
    assert t.mgmt_root.startswith("10.232.") and t.mgmt_host.startswith("10.232.")
    route = sh(["ip", "-4", "route", "get", t.mgmt_host]).stdout
    assert "dev %s" % t.if_mgmt_root in route and "src %s" % t.mgmt_root in route, route


def test_http_forwarded_and_recorded(peers, sbx):
    m = peers.mark()
    r = sbx.curl("http://%s/hello?x=1" % S10)
    assert r.rc == 0 and r.code == "200", r
    assert r.body == "sgt-http listener=%s:80 host=%s\n" % (S10, S10), r
    (c,) = peers.wait_closed("http", m, "%s:80" % S10)
    # plain forwarding: the server sees the sandbox's own address
    assert c.peer_ip == SBX_ADDR, c
    assert c.data.startswith(b"GET /hello?x=1 HTTP/1.1\r\nHost: %s\r\n" % S10.encode()), c
    assert c.data.endswith(b"\r\n\r\n") and c.closed == "eof", c
    # nothing anywhere else: the logs tell servers and addresses apart
    act = peers.activity(m)
    assert set(act) == {"http"}, act
    assert {e["listener"] for e in act["http"] if e["ev"] == "accept"} == {"%s:80" % S10}

    m = peers.mark()
    r = sbx.curl("http://other.test/", resolve=["other.test:80:%s" % S11])
    assert r.code == "200" and "listener=%s:80 host=other.test" % S11 in r.body, r
    assert not peers.conns("http", m, "%s:80" % S10)
    assert len(peers.wait_closed("http", m, "%s:80" % S11)) == 1


def test_https_sni_and_bare_ip(peers, sbx):
    m = peers.mark()
    r = sbx.curl("https://allowed.test/s", resolve=["allowed.test:443:%s" % S12])
    assert r.rc == 0 and r.code == "200", r
    assert r.body == "sgt-https listener=%s:443 host=allowed.test\n" % S12, r
    (c,) = peers.wait_closed("https", m, "%s:443" % S12)
    assert c.sni == "allowed.test" and c.tls_error is None, c
    assert c.data.startswith(b"GET /s HTTP/1.1\r\nHost: allowed.test\r\n"), c
    # the wildcard and the two-level name verify too
    for name in ("www.allowed.test", "a.b.allowed.test"):
        r = sbx.curl("https://%s/" % name, resolve=["%s:443:%s" % (name, S10)])
        assert r.code == "200", (name, r)
    # curl sends no SNI for an IP literal (what "HTTPS to a bare IP" relies on)
    m = peers.mark()
    r = sbx.curl("https://%s/ip" % S11, insecure=True)
    assert r.code == "200", r
    (c,) = peers.wait_closed("https", m, "%s:443" % S11)
    assert c.sni is None, c


def test_tls_probe_splits_the_client_hello(peers, sbx):
    req = b"GET /split HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    for segs, recs in ((1, 1), (4, 1), (1, 3), (3, 3)):
        m = peers.mark()
        out = sbx.tls("%s:443" % S10, "allowed.test", req, split_segments=segs, split_records=recs)
        assert out["handshake"], (segs, recs, out)
        assert out["received"].startswith(b"HTTP/1.1 200 OK\r\n"), out
        (c,) = peers.wait_closed("https", m, "%s:443" % S10)
        assert c.sni == "allowed.test" and c.data == req, c


def test_ssh_like_speaks_first_and_echoes(peers, sbx):
    m = peers.mark()
    out = sbx.tcp("%s:22" % S11, send=b"ping\n", read_first=2, shut_wr=True)
    assert out["connected"] and out["end"] == "eof", out
    assert out["received"] == BANNER + b"ping\n", out
    (c,) = peers.wait_closed("ssh", m, "%s:22" % S11)
    assert c.data == b"ping\n" and c.peer_ip == SBX_ADDR, c
    # a client that only listens still gets the banner
    out = sbx.tcp("%s:22" % S10, read_first=2, timeout=1)
    assert out["received"] == BANNER, out


def test_udp_echo_recorded(peers, sbx):
    m = peers.mark()
    assert sbx.udp("%s:7" % S11, b"dgram-1") == b"dgram-1"
    (dg,) = peers.datagrams("udp", m)
    assert dg[0].startswith(SBX_ADDR + ":") and dg[1:] == (b"dgram-1", "%s:7" % S11), dg
    # no listener: nothing comes back, nothing is recorded
    m = peers.mark()
    assert sbx.udp("%s:9" % S11, b"x", timeout=0.5) is None
    assert peers.activity(m) == {}


def test_dns_answers_the_zone(peers, sbx):
    before = peers.dns.queries("allowed")
    assert sbx.dns("allowed.test")["a"] == [S10]
    assert sbx.dns("ALLOWED.Test")["a"] == [S10]
    assert sbx.dns("a.b.allowed.test")["a"] == [S10]
    assert sbx.dns("other.test")["a"] == [S11]
    assert sbx.dns("internal.test")["a"] == [HOST_SBX_SIDE]
    nx = sbx.dns("nowhere.test")
    assert nx["answered"] and nx["rcode"] == "NXDOMAIN" and nx["a"] == [], nx
    assert peers.dns.queries("allowed") == before + 2
    # a server that is not there: no answer
    assert sbx.dns("allowed.test", server=S12, timeout=0.5)["answered"] is False


def test_host_side_servers_reachable_without_sandgate(peers, sbx):
    """So that their silence in test_egress.py is sandgate's doing."""
    m = peers.mark()
    r = sbx.curl("http://%s:8081/p" % HOST_SBX_SIDE)
    assert r.body == "sgt-http listener=%s:8081 host=%s:8081\n" % (HOST_SBX_SIDE, HOST_SBX_SIDE), r
    r = sbx.curl("http://%s/p" % HOST_INET_SIDE)
    assert r.code == "200", r
    assert len(peers.conns("host-http", m)) == 2
    assert sbx.udp("%s:7" % HOST_INET_SIDE, b"u") == b"u"
    assert sbx.udp("%s:7" % HOST_SBX_SIDE, b"v") == b"v"
    assert [d[2] for d in peers.datagrams("host-udp", m)] == ["%s:7" % HOST_INET_SIDE,
                                                              "%s:7" % HOST_SBX_SIDE]


def test_management_link_reaches_a_host_namespace_server(topology, peers, tmp_path):
    """The admin API's path: root namespace -> mgmt_host:9901."""
    p, ready, err = peers.start_server(topology.host, "http", "mgmt", ["%s:9901" % topology.mgmt_host])
    wait_file(ready, p, "servers.py", err)
    try:
        r = sh(["curl", "-sS", "--noproxy", "*", "--max-time", "5",
                "http://%s:9901/v1/x" % topology.mgmt_host])
        assert r.stdout == "sgt-http listener=%s:9901 host=%s:9901\n" % (
            topology.mgmt_host, topology.mgmt_host)
        (c,) = peers.conns("mgmt")
        assert c.peer_ip == topology.mgmt_root, c
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 0


HARNESS_NFT = """table inet sgt_harness {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip saddr %s tcp dport 22 redirect to :15999
  }
}
""" % SBX_ADDR


def test_kernel_redirect_and_original_dst(topology, peers, sbx, request):
    """What sandgate's enforcement needs from the kernel in the host
    namespace: an nftables nat redirect for the sandbox's TCP, and the
    original destination readable with SO_ORIGINAL_DST on the accepted
    socket. Uses its own table (not sandgate's) and removes it."""
    t = topology
    p, ready, err = peers.start_server(t.host, "origdst", "origdst", ["0.0.0.0:15999"])
    wait_file(ready, p, "servers.py", err)
    r = subprocess.run(["ip", "netns", "exec", t.host, "nft", "-f", "-"], input=HARNESS_NFT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    request.addfinalizer(lambda: t.run(t.host, ["nft", "delete", "table", "inet", "sgt_harness"]))
    m = peers.mark()
    out = sbx.tcp("%s:22" % S12, send=b"x", read_first=1, timeout=2)
    assert out["connected"] and out["received"] == b"", out
    (c,) = peers.conns("origdst", m)
    assert c.original_dst == "%s:22" % S12 and c.peer_ip == SBX_ADDR, c
    assert "ssh" not in peers.activity(m), "the redirected connection reached the real server"
    # other ports and protocols are untouched by that rule
    assert sbx.tcp("%s:80" % S12, send=b"GET / HTTP/1.0\r\n\r\n", timeout=2)["received"].startswith(b"HTTP/1.1 200")
    t.run(t.host, ["nft", "delete", "table", "inet", "sgt_harness"], check=True)
    out = sbx.tcp("%s:22" % S12, read_first=2, timeout=1)
    assert out["received"] == BANNER, out


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as f:
        return f.read().split()[2] != "Z"


def test_teardown_leaves_nothing(tmp_path, request):
    require_netns()
    topo = Topology()
    request.addfinalizer(topo.destroy)
    topo.up()
    peers = Peers(str(tmp_path / "peers"), topo).start()
    sbx = SandboxClient(topo, peers)
    assert sbx.curl("http://%s/" % S10).code == "200"
    pids = [p.pid for _, p in topo.procs]
    assert len(pids) == 7  # 4 internet servers, 2 host-side, DNS
    for pid in pids:
        # `ip netns exec` execs: the PID we hold is the server's own
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            assert f.read().split(b"\0")[0] == PYTHON.encode()
    assert all(ns in sh(["ip", "netns", "list"]).stdout for ns in topo.namespaces)
    assert peers.stop() == []
    assert topo.destroy() == []
    assert topo.leftovers() == []
    for pid in pids:
        assert not _alive(pid), pid
    # a second destroy is a no-op
    assert topo.destroy() == []


def test_half_made_topology_is_removed(request):
    require_netns()
    topo = Topology()
    request.addfinalizer(topo.destroy)
    sh(["ip", "netns", "add", topo.sbx])
    sh(["ip", "netns", "add", topo.host])
    sh(["ip", "link", "add", topo.if_mgmt_root, "type", "veth", "peer", "name", topo.if_mgmt_host,
        "netns", topo.host])
    assert topo.leftovers()
    assert topo.destroy() == []
    assert topo.leftovers() == []
    # a namespace's veth goes with it: the root-side end is gone too
    assert sh(["ip", "link", "show", topo.if_mgmt_root], check=False).returncode != 0
