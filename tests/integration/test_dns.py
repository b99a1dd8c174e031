"""The DNS lookup source against a real DNS server (dns_server.py, dnslib):
A / AAAA resolution, TXT settings (mask, token, connection limit, bad
values failing closed), TTL caching and its clamps, the negative cache,
a dead server (503 lookup_failed, nothing cached), query coalescing,
lookup order against static sandboxes, and the DNS metrics.

Every test counts the queries the server really received (its stats file)
rather than trusting sandgate's own view. One worker everywhere: the cache
and the coalescing are per worker."""

import hashlib
import socket
import threading
import time

import pytest

from backends import RawBackend
from client import Conn, one_request
from conftest import SCALE, parse_prometheus, to_yaml

TOKEN = "dns-Tr4ffic-T0ken_42"
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()
TOKEN_HEADER = "X-Traffic-Access-Token"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def gate(admin_factory, dns, lookup_order=("static", "dns"), dns_conf=None, **overrides):
    """sandgate with the DNS source on `dns`, the default static sandboxes
    (abc at 127.0.0.2 masked, def at 127.0.0.3), one worker and an admin
    listener (for /metrics; the admin source is not in lookup_order)."""
    return admin_factory(dns=dns.sandgate_conf(**(dns_conf or {})),
                         lookup_order=list(lookup_order), **overrides)


def get(sg, sid, port, path="/echo", headers=(), timeout=10.0):
    return one_request(sg.port, "GET", path, host=sg.host(port, sid), headers=headers,
                       timeout=timeout * SCALE)


def reached(r):
    """The backend address that answered a proxied /echo."""
    assert r.status == 200, r
    return r.json()["local"][0]


def host_seen(r):
    hs = [v for n, v in r.json()["headers"] if n.lower() == "host"]
    assert len(hs) == 1, r.json()["headers"]
    return hs[0]


def check_error(r, status, name, sid, message):
    assert r.status == status, r
    assert r.error_name == name, r
    assert r.header("Content-Type", "").startswith("application/json"), r
    assert r.json() == {"sandboxId": sid, "message": message, "code": status}, r.body


def check_lookup_failed(r, sid):
    check_error(r, 503, "lookup_failed", sid, "sandbox lookup failed")


def check_not_found(r, sid):
    check_error(r, 502, "sandbox_not_found", sid, "The sandbox was not found")


def resolutions(dns, name):
    """(A, AAAA, TXT) queries the server received for <name>.<zone>."""
    return tuple(dns.queries(name, t) for t in ("A", "AAAA", "TXT"))


def metrics(sg):
    r = sg.admin.request("GET", "/metrics")
    assert r.status == 200, r
    return parse_prometheus(r.body.decode())


def dns_counters(sg):
    m = metrics(sg)
    out = {ev: m.value("sandgate_dns_total", event=ev)
           for ev in ("queries", "cache_hits", "negative_hits", "failures", "coalesced")}
    for src in ("static", "admin", "dns"):
        for res in ("found", "not_found", "failed", "pending"):
            out[(src, res)] = m.value("sandgate_lookups_total", source=src, result=res)
    return out


def delta(after, before):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


class Gate:
    """Backend route that holds each request until released."""

    def __init__(self):
        self.release = threading.Event()

    def __call__(self, backend, req):
        req.hash_body()
        backend.event(kind="held", conn=req.conn.id)
        self.release.wait(30)
        req.respond(200, [("Content-Type", "text/plain")], b"released", reason="OK")
        return True


def held(be):
    return len(be.find_events("held"))


# ---------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------

def test_resolves_a_record(admin_factory, dns_server, backends):
    a, b = backends
    dns_server.set("vm1", A="127.0.0.3")
    dns_server.set("both", A="127.0.0.2", AAAA="::1")
    sg = gate(admin_factory, dns_server)

    r = get(sg, "vm1", a.port)
    assert reached(r) == "127.0.0.3"
    # no TXT: no mask, the backend sees the Host the client sent
    assert host_seen(r) == sg.host(a.port, "vm1")
    # one resolution asks A, AAAA and TXT of the exact name, once each
    assert resolutions(dns_server, "vm1") == (1, 1, 1)
    # answered from the cache afterwards (default TTL 30 s)
    for _ in range(3):
        assert reached(get(sg, "vm1", a.port)) == "127.0.0.3"
    assert resolutions(dns_server, "vm1") == (1, 1, 1)

    # A and AAAA both present: the A address is used
    assert reached(get(sg, "both", a.port)) == "127.0.0.2"

    # only the exact names were asked: no search domains, nothing over TCP
    st = dns_server.stats()
    assert set(st["names"]) == {"vm1.sandboxes.test", "both.sandboxes.test"}, st
    assert st["tcp"] == 0, st


def _ipv6_loopback_works():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.listen(1)
        c = socket.create_connection(("::1", s.getsockname()[1]), timeout=1)
        c.close()
        s.close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_works(), reason="::1 not usable here")
def test_aaaa_only_record_reaches_ipv6_backend(admin_factory, dns_server, backends):
    a, _ = backends
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s6.bind(("::1", a.port))  # same port as the v4 backends: the Host names it
    v6 = RawBackend("::1", name="v6", sock=s6).start()
    try:
        dns_server.set("six", AAAA="::1", TXT="mask_request_host=localhost:${PORT}")
        sg = gate(admin_factory, dns_server)
        r = get(sg, "six", a.port)
        assert r.status == 200, r
        doc = r.json()
        assert doc["backend"] == "v6", doc
        assert doc["peer"][0] == "::1", doc
        assert host_seen(r) == "localhost:%d" % a.port
        assert resolutions(dns_server, "six") == (1, 1, 1)
        assert not a.find_events("request")
    finally:
        v6.stop()


def test_id_that_cannot_be_a_dns_label_is_not_queried(admin_factory, dns_server, backends):
    a, _ = backends
    sg = gate(admin_factory, dns_server)
    sid = "x" * 64  # a valid sandbox id (1..64) but one label holds at most 63
    check_not_found(get(sg, sid, a.port), sid)
    assert dns_server.stats()["total"] == 0, dns_server.stats()


def test_large_answer_retried_over_tcp(admin_factory, dns_server, backends):
    """A TXT answer over 512 bytes comes back truncated over UDP; the lookup
    must retry over TCP and apply the settings, not fail or drop them."""
    a, _ = backends
    filler = ["note%d=%s" % (i, "z" * 90) for i in range(8)]
    dns_server.set("big", A="127.0.0.2", TXT=filler + ["mask_request_host=localhost:${PORT}"])
    sg = gate(admin_factory, dns_server)
    r = get(sg, "big", a.port)
    assert reached(r) == "127.0.0.2"
    assert host_seen(r) == "localhost:%d" % a.port
    assert dns_server.stats()["tcp"] >= 1, dns_server.stats()


# ---------------------------------------------------------------------------
# TXT settings
# ---------------------------------------------------------------------------

def test_txt_mask(admin_factory, dns_server, backends):
    a, b = backends
    dns_server.set("masked", A="127.0.0.3", TXT="mask_request_host=localhost:${PORT}")
    sg = gate(admin_factory, dns_server)
    r = get(sg, "masked", b.port)
    assert reached(r) == "127.0.0.3"
    assert host_seen(r) == "localhost:%d" % b.port


def test_txt_unknown_keys_ignored_and_keys_case_insensitive(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("mixed", A="127.0.0.2",
                   TXT=["v=spf1 -all", "some_future_key=1", "",
                        ["  MASK_REQUEST_HOST=localhost:${PORT}", "comment without equals"]])
    sg = gate(admin_factory, dns_server)
    r = get(sg, "mixed", a.port)
    assert reached(r) == "127.0.0.2"
    assert host_seen(r) == "localhost:%d" % a.port


def test_txt_token(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("priv", A="127.0.0.2", TXT="traffic_access_token_sha256=%s" % TOKEN_SHA)
    sg = gate(admin_factory, dns_server)

    r = get(sg, "priv", a.port)
    assert r.status == 403 and r.error_name == "token_missing", r
    assert TOKEN_HEADER.lower() in r.json()["message"].lower(), r.body
    r = get(sg, "priv", a.port, headers=[(TOKEN_HEADER, TOKEN + "x")])
    assert r.status == 403 and r.error_name == "token_invalid", r
    r = get(sg, "priv", a.port, headers=[(TOKEN_HEADER, TOKEN_SHA)])  # the hash is not the token
    assert r.status == 403 and r.error_name == "token_invalid", r
    assert not a.find_events("request"), "refused requests reached the backend"

    r = get(sg, "priv", a.port, headers=[(TOKEN_HEADER.lower(), TOKEN)])
    assert reached(r) == "127.0.0.2"
    doc = r.json()
    assert TOKEN_HEADER.lower() not in [n.lower() for n, _ in doc["headers"]], doc["headers"]
    assert TOKEN not in a.raw_all().decode("latin-1")
    assert len(a.find_events("request")) == 1
    # all of it from one resolution
    assert resolutions(dns_server, "priv") == (1, 1, 1)


def test_txt_max_incoming_connections(admin_factory, dns_server, backends):
    a, _ = backends
    g = Gate()
    a.route("/hold", g)
    dns_server.set("lim", A="127.0.0.2", TXT="max_incoming_connections=2")
    sg = gate(admin_factory, dns_server)
    host = sg.host(a.port, "lim")
    holders = [Conn(sg.port, timeout=20 * SCALE) for _ in range(2)]
    try:
        for c in holders:
            c.send(b"GET /hold HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
        assert a.wait_for(lambda: held(a) == 2, 5 * SCALE), held(a)
        r = get(sg, "lim", a.port)
        assert r.status == 429 and r.error_name == "too_many_connections", r
        assert "2" in r.json()["message"], r.body
        assert len(a.find_events("request")) == 2
        # other sandboxes are not limited
        assert reached(get(sg, "def", a.port)) == "127.0.0.3"
        g.release.set()
        for c in holders:
            assert c.read_response().status == 200
        assert get(sg, "lim", a.port).status == 200
    finally:
        g.release.set()
        for c in holders:
            c.close()


def test_txt_limit_survives_cache_refresh(admin_factory, dns_server, backends):
    """The record is re-resolved when its TTL ends; the connection limit is
    about the sandbox, so a refresh of an unchanged record must not forget
    the exchanges already in flight."""
    a, _ = backends
    g = Gate()
    a.route("/hold", g)
    dns_server.set("limr", A="127.0.0.2", TXT="max_incoming_connections=1", ttl=1)
    sg = gate(admin_factory, dns_server)
    host = sg.host(a.port, "limr")
    holder = Conn(sg.port, timeout=20 * SCALE)
    try:
        holder.send(b"GET /hold HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
        assert a.wait_for(lambda: held(a) == 1, 5 * SCALE)
        r = get(sg, "limr", a.port)
        assert r.status == 429, r
        time.sleep(1.3)  # past the 1 s TTL: the next request re-resolves
        r = get(sg, "limr", a.port)
        assert resolutions(dns_server, "limr")[0] == 2, "the record was not refreshed"
        assert r.status == 429 and r.error_name == "too_many_connections", (
            "max_incoming_connections=1 with one exchange in flight, but after the "
            "DNS record was re-resolved a second request was admitted: %r" % r)
    finally:
        g.release.set()
        holder.close()


def test_txt_limit_holds_across_workers(admin_factory, dns_server, backends):
    """max_incoming_connections is per sandbox, not per worker (the admin
    source's limit holds across workers too: test_private.py). Each worker
    resolves and caches the record itself; the limit must still be one."""
    a, _ = backends
    g = Gate()
    a.route("/hold", g)
    dns_server.set("limw", A="127.0.0.2", TXT="max_incoming_connections=1")
    sg = gate(admin_factory, dns_server, workers=2)
    host = sg.host(a.port, "limw")
    conns = [Conn(sg.port, timeout=20 * SCALE) for _ in range(8)]
    try:
        statuses = []
        for i, c in enumerate(conns):
            c.send(b"GET /hold?i=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host.encode()))
        # the refused ones answer at once; the admitted ones wait at the gate
        a.wait_for(lambda: held(a) >= 1, 5 * SCALE)
        time.sleep(0.3 * SCALE)
        admitted = held(a)
        g.release.set()
        for c in conns:
            statuses.append(c.read_response().status)
        assert sorted(set(statuses)) == [200, 429], statuses
        assert admitted == 1 and statuses.count(200) == 1, (
            "max_incoming_connections=1 but %d requests were admitted at once on 2 workers "
            "(statuses %r)" % (admitted, statuses))
    finally:
        g.release.set()
        for c in conns:
            c.close()


BAD_TXT = {
    "limit-zero": "max_incoming_connections=0",
    "limit-not-number": "max_incoming_connections=ten",
    "limit-too-big": "max_incoming_connections=1000001",
    "limit-empty": "max_incoming_connections=",
    "token-short": "traffic_access_token_sha256=" + TOKEN_SHA[:63],
    "token-not-hex": "traffic_access_token_sha256=" + "g" * 64,
    "token-no-equals": "traffic_access_token_sha256:" + TOKEN_SHA,
    "mask-bad-chars": "mask_request_host=local host/x",
    "two-tokens": ["traffic_access_token_sha256=" + TOKEN_SHA,
                   "traffic_access_token_sha256=" + "0" * 64],
}


@pytest.mark.parametrize("txt", list(BAD_TXT.values()), ids=list(BAD_TXT))
def test_bad_txt_value_fails_closed(admin_factory, dns_server, backends, txt):
    a, _ = backends
    # "two-tokens" is two TXT records; the others one record each, next to
    # a valid mask so that a parser stopping at the first string is caught
    records = txt if isinstance(txt, list) else ["mask_request_host=localhost:${PORT}", txt]
    dns_server.set("badtxt", A="127.0.0.2", TXT=records)
    sg = gate(admin_factory, dns_server)
    check_lookup_failed(get(sg, "badtxt", a.port), "badtxt")
    check_lookup_failed(get(sg, "badtxt", a.port, headers=[(TOKEN_HEADER, TOKEN)]), "badtxt")
    assert not a.find_events("request"), "a record with a bad TXT value was served"
    # a failure is not cached: each request asked again
    assert resolutions(dns_server, "badtxt") == (2, 2, 2)
    # fixing the record fixes the sandbox at the next request
    dns_server.set("badtxt", A="127.0.0.2", TXT="max_incoming_connections=3")
    assert reached(get(sg, "badtxt", a.port)) == "127.0.0.2"
    assert resolutions(dns_server, "badtxt") == (3, 3, 3)


# ---------------------------------------------------------------------------
# caching
# ---------------------------------------------------------------------------

def test_ttl_expiry_picks_up_changed_address(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("mover", A="127.0.0.2", ttl=1)
    sg = gate(admin_factory, dns_server)
    t0 = time.monotonic()
    assert reached(get(sg, "mover", a.port)) == "127.0.0.2"
    assert dns_server.queries("mover") == 1
    dns_server.set("mover", A="127.0.0.3", ttl=1)
    # within the TTL: the cached address, no new query
    for _ in range(3):
        assert reached(get(sg, "mover", a.port)) == "127.0.0.2"
    assert time.monotonic() - t0 < 0.9, "too slow to test inside the 1 s TTL"
    assert dns_server.queries("mover") == 1
    time.sleep(max(0.0, t0 + 1.25 - time.monotonic()))
    assert reached(get(sg, "mover", a.port)) == "127.0.0.3"
    assert resolutions(dns_server, "mover") == (2, 2, 2)
    assert reached(get(sg, "mover", a.port)) == "127.0.0.3"
    assert dns_server.queries("mover") == 2


def test_ttl_clamped_and_smallest_address_ttl_wins(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("zero", A="127.0.0.2", ttl=0)                 # -> ttl_min 1 s
    dns_server.set("long", A="127.0.0.2", ttl=3600)              # -> 3600 s (ttl_max 5m: 300 s)
    dns_server.set("pair", A="127.0.0.2", AAAA="::1", ttls={"A": 3600, "AAAA": 1, "TXT": 3600})
    dns_server.set("txtshort", A="127.0.0.2", TXT="x=1", ttls={"A": 3600, "AAAA": 3600, "TXT": 0})
    dns_server.set("capped", A="127.0.0.2", ttl=3600)            # on a sandgate with ttl_max 1s
    sg = gate(admin_factory, dns_server)
    sg_cap = gate(admin_factory, dns_server, dns_conf={"ttl_max": "1s"})
    names = ("zero", "long", "pair", "txtshort")
    t0 = time.monotonic()
    for _ in range(2):
        for n in names:
            assert reached(get(sg, n, a.port)) == "127.0.0.2"
        assert reached(get(sg_cap, "capped", a.port)) == "127.0.0.2"
    assert time.monotonic() - t0 < 0.9
    for n in names + ("capped",):
        assert dns_server.queries(n) == 1, n
    time.sleep(max(0.0, t0 + 1.3 - time.monotonic()))
    for n in names:
        assert reached(get(sg, n, a.port)) == "127.0.0.2"
    assert reached(get(sg_cap, "capped", a.port)) == "127.0.0.2"
    got = {n: dns_server.queries(n) for n in names + ("capped",)}
    assert got == {
        "zero": 2,      # TTL 0 cached for ttl_min (1 s), then asked again
        "long": 1,      # still cached
        "pair": 2,      # the AAAA TTL (1 s) is the smallest address TTL
        "txtshort": 1,  # the TXT TTL does not shorten the cache
        "capped": 2,    # TTL 3600 capped at ttl_max 1 s
    }, got


def test_nxdomain_cached_then_created(admin_factory, dns_server, backends):
    a, _ = backends
    sg = gate(admin_factory, dns_server)
    t0 = time.monotonic()
    check_not_found(get(sg, "later", a.port), "later")
    assert resolutions(dns_server, "later") == (1, 1, 1)
    # the record appears; within negative_ttl (1 s) sandgate neither asks
    # nor serves it
    dns_server.set("later", A="127.0.0.2")
    for _ in range(3):
        check_not_found(get(sg, "later", a.port), "later")
    assert time.monotonic() - t0 < 0.9, "too slow to test inside negative_ttl"
    assert resolutions(dns_server, "later") == (1, 1, 1)
    # after negative_ttl (the SOA minimum is 30 s: sandgate's own bound rules)
    time.sleep(max(0.0, t0 + 1.25 - time.monotonic()))
    assert reached(get(sg, "later", a.port)) == "127.0.0.2"
    assert resolutions(dns_server, "later") == (2, 2, 2)


def test_nodata_is_not_found_and_cached(admin_factory, dns_server, backends):
    """A name with only a TXT record (no address) is not found, remembered
    like NXDOMAIN."""
    a, _ = backends
    dns_server.set("noaddr", TXT="mask_request_host=localhost:${PORT}")
    sg = gate(admin_factory, dns_server)
    check_not_found(get(sg, "noaddr", a.port), "noaddr")
    check_not_found(get(sg, "noaddr", a.port), "noaddr")
    assert resolutions(dns_server, "noaddr") == (1, 1, 1)


# ---------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------

def test_server_down_gives_503_and_recovers(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("vmdown", A="127.0.0.2")
    sg = gate(admin_factory, dns_server)
    dns_server.mute()
    for i in (1, 2):
        t = time.monotonic()
        r = get(sg, "vmdown", a.port)
        took = time.monotonic() - t
        check_lookup_failed(r, "vmdown")
        # bounded by dns.timeout (300 ms, one try), not hung
        assert 0.2 <= took < 2.0 * SCALE, took
        # nothing cached: each request asked the server again
        assert resolutions(dns_server, "vmdown") == (i, i, i)
    assert not a.find_events("request")
    dns_server.unmute()
    assert reached(get(sg, "vmdown", a.port)) == "127.0.0.2"
    assert resolutions(dns_server, "vmdown") == (3, 3, 3)
    # now cached
    assert reached(get(sg, "vmdown", a.port)) == "127.0.0.2"
    assert dns_server.queries("vmdown") == 3
    st = dns_server.stats()
    assert st["dropped"] == 6, st


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
def test_server_error_rcode_gives_503_not_cached(admin_factory, dns_server, backends, rcode):
    a, _ = backends
    dns_server.set("vmerr", rcode=rcode)
    sg = gate(admin_factory, dns_server)
    check_lookup_failed(get(sg, "vmerr", a.port), "vmerr")
    check_lookup_failed(get(sg, "vmerr", a.port), "vmerr")
    assert dns_server.queries("vmerr") == 2
    dns_server.set("vmerr", A="127.0.0.2")
    assert reached(get(sg, "vmerr", a.port)) == "127.0.0.2"


def test_one_query_for_100_concurrent_requests(admin_factory, dns_server, backends):
    a, _ = backends
    n = 100
    # the answer takes a while, so that all requests arrive while it is in
    # flight (the timeout is raised above the delay for this test)
    dns_server.set("crowd", A="127.0.0.2", delay_ms=int(600 * SCALE))
    sg = gate(admin_factory, dns_server, dns_conf={"timeout": "%ds" % int(5 * SCALE)})
    host = sg.host(a.port, "crowd").encode()
    before = dns_counters(sg)
    conns = [Conn(sg.port, timeout=20 * SCALE) for _ in range(n)]
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        try:
            barrier.wait(10)
            conns[i].send(b"GET /echo?i=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host))
            results[i] = conns[i].read_response()
        except Exception as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30 * SCALE)
    finally:
        for c in conns:
            c.close()
    bad = [(i, r) for i, r in enumerate(results) if getattr(r, "status", None) != 200]
    assert not bad, bad[:5]
    assert all(r.json()["local"][0] == "127.0.0.2" for r in results)
    assert resolutions(dns_server, "crowd") == (1, 1, 1)
    d = delta(dns_counters(sg), before)
    assert d.get("queries") == 1, d
    assert d.get("coalesced") == n - 1, d
    assert d.get(("dns", "found")) == n, d


def test_clients_leaving_during_a_query_do_not_disturb_the_others(admin_factory, dns_server, backends):
    """Half of the requests waiting on one in-flight resolution disconnect;
    the rest still get their answer, and the answer is cached."""
    a, _ = backends
    dns_server.set("leavers", A="127.0.0.2", delay_ms=int(500 * SCALE))
    sg = gate(admin_factory, dns_server, dns_conf={"timeout": "%ds" % int(5 * SCALE)})
    host = sg.host(a.port, "leavers").encode()
    conns = [Conn(sg.port, timeout=20 * SCALE) for _ in range(10)]
    try:
        for i, c in enumerate(conns):
            c.send(b"GET /echo?i=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host))
        time.sleep(0.15 * SCALE)
        for c in conns[::2]:
            c.close()
        for c in conns[1::2]:
            r = c.read_response()
            assert reached(r) == "127.0.0.2"
        assert len(a.find_events("request")) == 5
    finally:
        for c in conns:
            c.close()
    assert reached(get(sg, "leavers", a.port)) == "127.0.0.2"
    assert resolutions(dns_server, "leavers") == (1, 1, 1)


def test_reload_while_a_query_is_in_flight(admin_factory, dns_server, backends):
    """POST /v1/reload (a static sandbox added) while requests wait on DNS:
    they are answered, and both sources work afterwards."""
    a, b = backends
    dns_server.set("during", A="127.0.0.3", delay_ms=int(600 * SCALE))
    sg = gate(admin_factory, dns_server, dns_conf={"timeout": "%ds" % int(5 * SCALE)})
    host = sg.host(a.port, "during").encode()
    conns = [Conn(sg.port, timeout=20 * SCALE) for _ in range(3)]
    try:
        for c in conns:
            c.send(b"GET /echo HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        time.sleep(0.1 * SCALE)
        cfg = dict(sg.config, listen=["127.0.0.1:%d" % sg.port])
        cfg["sandboxes"] = dict(cfg["sandboxes"], ghi={"address": "127.0.0.3"})
        with open(sg.config_path, "w") as f:
            f.write(to_yaml(cfg) + "\n")
        r = sg.admin.request("POST", "/v1/reload", body=b"")
        assert r.status == 200, r
        assert not b.find_events("request"), "the answer came before the reload: nothing in flight"
        for c in conns:
            assert reached(c.read_response()) == "127.0.0.3"
    finally:
        for c in conns:
            c.close()
    assert reached(get(sg, "ghi", a.port)) == "127.0.0.3"
    dns_server.set("after", A="127.0.0.2")
    assert reached(get(sg, "after", a.port)) == "127.0.0.2"
    assert dns_server.queries("during") == 1


# ---------------------------------------------------------------------------
# lookup order
# ---------------------------------------------------------------------------

def test_lookup_order_static_first(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("abc", A="127.0.0.3")  # static abc is 127.0.0.2, masked
    dns_server.set("dnsonly", A="127.0.0.3")
    sg = gate(admin_factory, dns_server, lookup_order=["static", "dns"])
    r = get(sg, "abc", a.port)
    assert reached(r) == "127.0.0.2"
    assert host_seen(r) == "localhost:%d" % a.port
    assert dns_server.queries("abc", "total") == 0, "static answered; DNS must not be asked"
    # ids the static table lacks still go to DNS
    assert reached(get(sg, "dnsonly", a.port)) == "127.0.0.3"


def test_lookup_order_default_is_static_first(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("abc", A="127.0.0.3")
    dns_server.set("dnsonly", A="127.0.0.3")
    sg = admin_factory(dns=dns_server.sandgate_conf())  # no lookup_order
    assert reached(get(sg, "abc", a.port)) == "127.0.0.2"
    assert reached(get(sg, "dnsonly", a.port)) == "127.0.0.3"
    assert dns_server.queries("abc", "total") == 0


def test_lookup_order_dns_first(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("abc", A="127.0.0.3")
    sg = gate(admin_factory, dns_server, lookup_order=["dns", "static"])
    r = get(sg, "abc", a.port)
    assert reached(r) == "127.0.0.3"
    assert host_seen(r) == sg.host(a.port, "abc")  # the DNS record, no mask
    assert resolutions(dns_server, "abc") == (1, 1, 1)
    # DNS says NXDOMAIN for def: the static table answers next
    r = get(sg, "def", a.port)
    assert reached(r) == "127.0.0.3"
    assert resolutions(dns_server, "def") == (1, 1, 1)
    # neither knows it
    check_not_found(get(sg, "nowhere", a.port), "nowhere")


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------

def test_metrics(admin_factory, dns_server, backends):
    a, _ = backends
    dns_server.set("mfound", A="127.0.0.2")
    dns_server.set("mdown", A="127.0.0.2")
    sg = gate(admin_factory, dns_server)
    m0 = dns_counters(sg)

    assert reached(get(sg, "mfound", a.port)) == "127.0.0.2"   # query
    m1 = dns_counters(sg)
    assert delta(m1, m0) == {"queries": 1, ("dns", "pending"): 1, ("dns", "found"): 1}

    assert reached(get(sg, "mfound", a.port)) == "127.0.0.2"   # cache hit
    m2 = dns_counters(sg)
    assert delta(m2, m1) == {"cache_hits": 1, ("dns", "found"): 1}

    check_not_found(get(sg, "mnx", a.port), "mnx")             # NXDOMAIN
    m3 = dns_counters(sg)
    assert delta(m3, m2) == {"queries": 1, ("dns", "pending"): 1, ("dns", "not_found"): 1}

    check_not_found(get(sg, "mnx", a.port), "mnx")             # negative cache
    m4 = dns_counters(sg)
    assert delta(m4, m3) == {"negative_hits": 1, ("dns", "not_found"): 1}

    dns_server.mute()
    check_lookup_failed(get(sg, "mdown", a.port), "mdown")     # timeout
    dns_server.unmute()
    m5 = dns_counters(sg)
    assert delta(m5, m4) == {"queries": 1, "failures": 1, ("dns", "pending"): 1, ("dns", "failed"): 1}

    assert reached(get(sg, "abc", a.port)) == "127.0.0.2"      # static
    m6 = dns_counters(sg)
    assert delta(m6, m5) == {("static", "found"): 1}

    # sandgate's query count agrees with what the server received
    server_a = sum(dns_server.queries(n) for n in ("mfound", "mnx", "mdown"))
    assert server_a == m6["queries"] - m0["queries"] == 3
