#!/usr/bin/python3
"""A small authoritative DNS server for sandgate's DNS lookup source tests.

Serves A, AAAA and TXT from a JSON zone file over UDP and TCP on one port,
re-reading the file whenever its mtime (or size) changes, so a test can edit
records while the server runs. Unknown names answer NXDOMAIN; a known name
without records of the asked type answers NOERROR with no answer (NODATA);
both carry the zone's SOA in the authority section.

    /usr/bin/python3 dns_server.py --port P --zone-file F --stats-file S \
        [--mute-file M] [--addr 127.0.0.1] [--ready-file R] [--verbose]

--port 0 picks a free port (the same one for UDP and TCP); the port is
printed as "dns_server ready port=P" on stdout and written to --ready-file.

Zone file (JSON):

    {
      "zone": "sb.test",          # names below are relative to it (or absolute with a final '.')
      "ttl": 30,                  # default TTL (default 30)
      "negative_ttl": 5,          # SOA minimum (default 5)
      "records": {
        "abc": {"A": ["10.0.0.1"], "AAAA": ["fd00::1"],
                "TXT": ["traffic_access_token_sha256=...", ["two", "strings"]],
                "ttl": 60,                          # this name's default
                "ttls": {"A": 5, "TXT": 120}},      # per type
        "broken": {"rcode": "SERVFAIL"},            # answer with this rcode (NXDOMAIN, REFUSED, ...)
        "dead":   {"drop": true},                   # never answer this name
        "slow":   {"A": ["10.0.0.2"], "delay_ms": 300}
      }
    }

A TXT item is one record: a string (split into 255-byte character-strings
when longer) or a list of strings (one character-string each). A record's
value may also be a single string instead of a list.

Stats file (JSON, rewritten atomically after every query, received queries
are counted even when dropped):

    {"total": 9, "dropped": 0, "tcp": 0,
     "names": {"abc.sb.test": {"A": 3, "AAAA": 3, "TXT": 3, "total": 9}}}

Mute file: while it exists, every query is dropped (a dead server).

UDP answers over 512 bytes are sent truncated (header and question, TC set),
as a server without EDNS would, so clients retry over TCP.
"""

import argparse
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSLabel, DNSRecord

UDP_MAX = 512


def _txt_strings(item):
    """One TXT record's character-strings, as bytes of at most 255."""
    if isinstance(item, list):
        parts = [p.encode() if isinstance(p, str) else bytes(p) for p in item]
    else:
        raw = item.encode() if isinstance(item, str) else bytes(item)
        parts = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    for p in parts:
        if len(p) > 255:
            raise ValueError("TXT character-string longer than 255 bytes")
    return parts


def _as_list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


class Zone:
    """The parsed zone file; immutable once built."""

    def __init__(self, doc):
        self.origin = DNSLabel(doc.get("zone", "."))
        self.ttl = int(doc.get("ttl", 30))
        self.negative_ttl = int(doc.get("negative_ttl", 5))
        self.names = {}
        for name, rec in (doc.get("records") or {}).items():
            if name.endswith("."):
                label = DNSLabel(name)
            elif name in ("", "@"):
                label = self.origin
            else:
                label = self.origin.add(name)
            self.names[self._key(label)] = self._entry(rec or {})

    @staticmethod
    def _key(label):
        return str(label).lower().rstrip(".")

    def _entry(self, rec):
        ttl = int(rec.get("ttl", self.ttl))
        ttls = {k.upper(): int(v) for k, v in (rec.get("ttls") or {}).items()}
        rcode = rec.get("rcode")
        if rcode is not None and not isinstance(rcode, int):
            rcode = getattr(RCODE, str(rcode).upper())
        return {
            "A": [A(a) for a in _as_list(rec.get("A"))],
            "AAAA": [AAAA(a) for a in _as_list(rec.get("AAAA"))],
            "TXT": [TXT(_txt_strings(t)) for t in _as_list(rec.get("TXT"))],
            "ttls": {t: ttls.get(t, ttl) for t in ("A", "AAAA", "TXT")},
            "rcode": rcode,
            "drop": bool(rec.get("drop")),
            "delay": float(rec.get("delay_ms", 0)) / 1000.0,
        }

    def lookup(self, qname):
        return self.names.get(self._key(qname))

    def soa(self):
        return RR(
            self.origin,
            QTYPE.SOA,
            ttl=self.negative_ttl,
            rdata=SOA(
                self.origin.add("ns"),
                self.origin.add("hostmaster"),
                (1, 3600, 600, 86400, self.negative_ttl),
            ),
        )


class State:
    """Zone (reloaded on change), mute switch and counters; thread-safe."""

    def __init__(self, zone_file, stats_file, mute_file, verbose):
        self.zone_file = zone_file
        self.stats_file = stats_file
        self.mute_file = mute_file
        self.verbose = verbose
        self.lock = threading.Lock()
        self.zone = Zone({})
        self.zone_sig = None
        self.stats = {"total": 0, "dropped": 0, "tcp": 0, "names": {}}
        self._reload()
        self._write_stats()

    def _reload(self):
        try:
            st = os.stat(self.zone_file)
        except FileNotFoundError:
            self.zone, self.zone_sig = Zone({}), None
            return
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self.zone_sig:
            return
        try:
            with open(self.zone_file) as f:
                zone = Zone(json.load(f))
        except (ValueError, OSError, AttributeError) as e:
            # A half-written file: keep the old zone, try again next query.
            print("dns_server: zone file not loaded: %s" % e, file=sys.stderr, flush=True)
            return
        self.zone, self.zone_sig = zone, sig

    def _write_stats(self):
        tmp = "%s.tmp.%d" % (self.stats_file, os.getpid())
        with open(tmp, "w") as f:
            json.dump(self.stats, f, sort_keys=True)
        os.replace(tmp, self.stats_file)

    def begin(self, qname, qtype, tcp):
        """Counts the query; returns (zone, muted) to answer it with."""
        with self.lock:
            self._reload()
            muted = bool(self.mute_file) and os.path.exists(self.mute_file)
            key = Zone._key(qname)
            per = self.stats["names"].setdefault(key, {"total": 0})
            per[qtype] = per.get(qtype, 0) + 1
            per["total"] += 1
            self.stats["total"] += 1
            if tcp:
                self.stats["tcp"] += 1
            entry = self.zone.lookup(qname)
            if muted or (entry and entry["drop"]):
                self.stats["dropped"] += 1
            self._write_stats()
            return self.zone, muted


def build_reply(zone, request):
    """Returns the reply record, or None to stay silent."""
    q = request.q
    reply = DNSRecord(
        DNSHeader(id=request.header.id, qr=1, aa=1, ra=1, rd=request.header.rd), q=q
    )
    if request.header.opcode != 0 or q.qclass != 1:
        reply.header.rcode = RCODE.NOTIMP
        return reply
    entry = zone.lookup(q.qname)
    if entry is None:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(zone.soa())
        return reply
    if entry["drop"]:
        return None
    if entry["delay"]:
        time.sleep(entry["delay"])
    if entry["rcode"] is not None:
        reply.header.rcode = entry["rcode"]
        return reply
    qtype = QTYPE[q.qtype]
    if qtype in ("A", "AAAA", "TXT"):
        for rdata in entry[qtype]:
            reply.add_answer(RR(q.qname, q.qtype, ttl=entry["ttls"][qtype], rdata=rdata))
    if not reply.rr:
        reply.add_auth(zone.soa())
    return reply


def truncated(request):
    """Header and question only, TC set: the client should ask over TCP."""
    t = DNSRecord(
        DNSHeader(id=request.header.id, qr=1, aa=1, ra=1, rd=request.header.rd, tc=1),
        q=request.q,
    )
    return t.pack()


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        state = self.server.state
        tcp = self.server.socket_type == socket.SOCK_STREAM
        if tcp:
            self.request.settimeout(5)
            while True:  # a TCP client may send several queries
                head = self._recv_exact(2)
                if head is None:
                    return
                data = self._recv_exact(struct.unpack("!H", head)[0])
                if data is None:
                    return
                out = self._answer(state, data, True)
                if out is None:
                    continue
                self.request.sendall(struct.pack("!H", len(out)) + out)
        else:
            data, sock = self.request
            out = self._answer(state, data, False)
            if out is not None:
                sock.sendto(out, self.client_address)

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.request.recv(n - len(buf))
            except (socket.timeout, OSError):
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _answer(self, state, data, tcp):
        try:
            request = DNSRecord.parse(data)
        except Exception:  # garbage: ignore, as a real server would
            return None
        if not request.questions:
            return None
        q = request.q
        zone, muted = state.begin(q.qname, QTYPE.get(q.qtype, str(q.qtype)), tcp)
        if muted:
            return None
        reply = build_reply(zone, request)
        if state.verbose:
            print(
                "dns_server: %s %s %s -> %s"
                % (
                    "tcp" if tcp else "udp",
                    q.qname,
                    QTYPE.get(q.qtype, q.qtype),
                    "drop" if reply is None else RCODE.get(reply.header.rcode),
                ),
                flush=True,
            )
        if reply is None:
            return None
        out = reply.pack()
        if not tcp and len(out) > UDP_MAX:
            out = truncated(request)
        return out


class UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    allow_reuse_address = True


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def open_servers(addr, port, state):
    """UDP and TCP servers on the same port (port 0: a free one)."""
    for _ in range(20):
        udp_cls = type("U", (UDPServer,), {"address_family": _family(addr)})
        tcp_cls = type("T", (TCPServer,), {"address_family": _family(addr)})
        udp = udp_cls((addr, port), Handler)
        chosen = udp.server_address[1]
        try:
            tcp = tcp_cls((addr, chosen), Handler)
        except OSError:
            udp.server_close()
            if port:
                raise
            continue
        udp.state = tcp.state = state
        return udp, tcp
    raise OSError("no port free for both UDP and TCP")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--zone-file", required=True)
    ap.add_argument("--stats-file", required=True)
    ap.add_argument("--mute-file")
    ap.add_argument("--ready-file")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    state = State(args.zone_file, args.stats_file, args.mute_file, args.verbose)
    udp, tcp = open_servers(args.addr, args.port, state)
    port = udp.server_address[1]
    for srv in (udp, tcp):
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.ready_file)
    print("dns_server ready port=%d" % port, flush=True)
    while not done.wait(0.5):
        pass
    udp.shutdown()
    tcp.shutdown()
    udp.server_close()
    tcp.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
