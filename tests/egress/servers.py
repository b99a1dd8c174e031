#!/usr/bin/python3
"""Peers and probes for the egress end-to-end tests, one script with
subcommands. The tests run each one inside a network namespace:

    ip netns exec <ns> /usr/bin/python3 servers.py <subcommand> ...

Servers (run until SIGTERM, exit 0). Each binds every --listen ADDR:PORT,
then writes --ready-file, and appends one JSON line per event to --log
(O_APPEND, one write per line, so lines never interleave):

    {"ev": "accept", "conn": "<pid>-<n>", "listener": "203.0.113.10:80",
     "peer": "198.51.100.1:40312", "server": "<--name>", "t": ...}
    {"ev": "data",   "conn": ..., "b64": "<bytes received, base64>"}
    {"ev": "tls",    "conn": ..., "sni": "allowed.test" | null}      (https)
    {"ev": "close",  "conn": ..., "how": "eof" | "reset" | "timeout" | "error: ..."}
    {"ev": "datagram", "listener": ..., "peer": ..., "b64": ...}       (udp-echo)
    {"ev": "accept", ..., "original_dst": "203.0.113.10:22"}           (origdst)

  http      answers every request head with 200 and the body
            "sgt-http listener=<ADDR:PORT> host=<Host>\\n", Connection: close
  https     the same over TLS (--cert/--key), body "sgt-https ..."
  ssh       speaks first ("SSH-2.0-sgt\\r\\n" on accept), then echoes
  udp-echo  sends every datagram back
  origdst   records SO_ORIGINAL_DST of each accepted connection and closes

Probes (run once, print one JSON object on stdout, exit 0 unless misused):

  probe-tcp  --dst A:P [--send-b64 X] [--read-first S] [--shut-wr] [--chunks N --gap S]
             -> {"connected", "error", "received_b64", "end": eof|reset|timeout|error,
                 "send_error"}
  probe-udp  --dst A:P --send-b64 X -> {"received_b64": ... | null, "peer"}
  probe-dns  --server A --name N -> {"answered", "rcode", "a": [...]}
  probe-tls  --dst A:P --sni N --cafile F --send-b64 X [--split-segments N]
             [--split-records N] -> {"connected", "handshake", "error", "received_b64", "end"}
             The first flight (the ClientHello) can be cut into several TLS
             records and/or sent as several TCP segments with pauses between.
"""

import argparse
import base64
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time

BANNER = b"SSH-2.0-sgt\r\n"
SO_ORIGINAL_DST = 80


def b64(data):
    return base64.b64encode(data).decode("ascii")


def split_hostport(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def fmt_addr(addr):
    return "%s:%d" % (addr[0], addr[1])


# ---------------------------------------------------------------------------
# servers


class Recorder:
    """Appends JSON lines to one log; shared by every thread of a server."""

    def __init__(self, path, name):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.name = name
        self.lock = threading.Lock()
        self.count = 0

    def new_conn(self):
        with self.lock:
            self.count += 1
            return "%d-%d" % (os.getpid(), self.count)

    def emit(self, **fields):
        fields["server"] = self.name
        fields["t"] = time.time()
        line = (json.dumps(fields, sort_keys=True) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)


def recv_recorded(sock, rec, cid, n=65536):
    """One recv; records what came. Returns bytes (b"" on EOF) or raises."""
    chunk = sock.recv(n)
    if chunk:
        rec.emit(ev="data", conn=cid, b64=b64(chunk))
    return chunk


def drain_until_eof(sock, rec, cid, timeout):
    """Reads and records until EOF; returns how it ended."""
    sock.settimeout(timeout)
    try:
        while True:
            if not recv_recorded(sock, rec, cid):
                return "eof"
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except (OSError, ssl.SSLError) as e:
        return "error: %s" % e


def serve_http_conn(sock, rec, cid, listener, kind):
    sock.settimeout(10)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = recv_recorded(sock, rec, cid)
            if not chunk:
                return "eof"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        host = "-"
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                host = value.strip().decode("latin-1")
            elif name.strip().lower() == b"content-length":
                length = int(value.strip() or b"0")
        while len(rest) < length:
            chunk = recv_recorded(sock, rec, cid)
            if not chunk:
                return "eof"
            rest += chunk
        body = ("sgt-%s listener=%s host=%s\n" % (kind, listener, host)).encode()
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        if isinstance(sock, ssl.SSLSocket):
            return drain_until_eof(sock, rec, cid, 2)
        sock.shutdown(socket.SHUT_WR)
        return drain_until_eof(sock, rec, cid, 2)
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except (OSError, ssl.SSLError, ValueError) as e:
        return "error: %s" % e


def serve_ssh_conn(sock, rec, cid):
    sock.settimeout(10)
    try:
        sock.sendall(BANNER)
        while True:
            chunk = recv_recorded(sock, rec, cid)
            if not chunk:
                sock.shutdown(socket.SHUT_WR)
                return "eof"
            sock.sendall(chunk)
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        return "error: %s" % e


def original_dst(sock):
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return "%s:%d" % (socket.inet_ntoa(raw[4:8]), port)


def handle_tcp(args, rec, conn, peer, listener, tls_ctx):
    cid = rec.new_conn()
    extra = {}
    if args.cmd == "origdst":
        try:
            extra["original_dst"] = original_dst(conn)
        except OSError as e:
            extra["original_dst"] = "error: %s" % e
    rec.emit(ev="accept", conn=cid, listener=listener, peer=fmt_addr(peer), **extra)
    how = "closed"
    try:
        if args.cmd == "http":
            how = serve_http_conn(conn, rec, cid, listener, "http")
        elif args.cmd == "https":
            conn.settimeout(10)
            tconn = tls_ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            conn = tconn
            try:
                tconn.do_handshake()
            except (OSError, ssl.SSLError) as e:
                rec.emit(ev="tls", conn=cid, sni=getattr(tconn, "sgt_sni", None), error=str(e))
                how = "handshake failed"
            else:
                rec.emit(ev="tls", conn=cid, sni=getattr(tconn, "sgt_sni", None))
                how = serve_http_conn(conn, rec, cid, listener, "https")
        elif args.cmd == "ssh":
            how = serve_ssh_conn(conn, rec, cid)
    finally:
        rec.emit(ev="close", conn=cid, how=how)
        try:
            conn.close()
        except OSError:
            pass


def tcp_listener(args, rec, addr, tls_ctx):
    host, port = split_hostport(addr)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(128)
    listener = "%s:%d" % (host, port)

    def loop():
        while True:
            conn, peer = ls.accept()
            # The accepted socket's own address names the listener (for
            # 0.0.0.0 listeners: the address the client reached).
            local = fmt_addr(conn.getsockname()) if host in ("0.0.0.0", "::") else listener
            threading.Thread(
                target=handle_tcp, args=(args, rec, conn, peer, local, tls_ctx), daemon=True
            ).start()

    return loop


def udp_listener(args, rec, addr):
    host, port = split_hostport(addr)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    listener = "%s:%d" % (host, port)

    def loop():
        while True:
            data, peer = s.recvfrom(65536)
            rec.emit(ev="datagram", listener=listener, peer=fmt_addr(peer), b64=b64(data))
            s.sendto(data, peer)

    return loop


def run_server(args):
    rec = Recorder(args.log, args.name or args.cmd)
    tls_ctx = None
    if args.cmd == "https":
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(args.cert, args.key)

        def on_sni(sslsock, name, ctx):
            sslsock.sgt_sni = name  # read back after the handshake

        tls_ctx.sni_callback = on_sni
    loops = []
    for addr in args.listen:
        if args.cmd == "udp-echo":
            loops.append(udp_listener(args, rec, addr))
        else:
            loops.append(tcp_listener(args, rec, addr, tls_ctx))
    for loop in loops:
        threading.Thread(target=loop, daemon=True).start()
    # The handler only appends to a list: Event.set() there could deadlock
    # on the Event's own lock when the signal lands while this thread holds
    # it (inside Event.wait), and the server would "ignore" SIGTERM.
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % os.getpid())
    os.replace(tmp, args.ready_file)
    while not stop:
        time.sleep(0.2)  # a signal cuts the sleep short
    os.close(rec.fd)
    os._exit(0)  # daemon threads may sit in accept/recv


# ---------------------------------------------------------------------------
# probes


def read_until_end(sock, deadline, into):
    """Appends received bytes to `into` until EOF, reset or the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return "timeout"
        except ConnectionResetError:
            return "reset"
        except OSError as e:
            return "error: %s" % e
        if not chunk:
            return "eof"
        into.extend(chunk)


def send_pieces(sock, data, pieces, gap):
    """Sends data as `pieces` separate writes with `gap` seconds between."""
    pieces = max(1, min(pieces, len(data) or 1))
    step = -(-len(data) // pieces) if data else 0
    for i in range(pieces):
        part = data[i * step:(i + 1) * step]
        if part:
            sock.sendall(part)
        if gap and i + 1 < pieces:
            time.sleep(gap)


def probe_tcp(args):
    out = {"connected": False, "error": None, "received_b64": "", "end": None, "send_error": None}
    deadline = time.monotonic() + args.timeout
    try:
        sock = socket.create_connection(split_hostport(args.dst), timeout=args.timeout)
    except OSError as e:
        out["error"] = str(e)
        return out
    out["connected"] = True
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = bytearray()
    ended = None
    if args.read_first:
        sock.settimeout(args.read_first)
        try:
            chunk = sock.recv(65536)
            got.extend(chunk)
            if not chunk:
                ended = "eof"
        except socket.timeout:
            pass
        except ConnectionResetError:
            ended = "reset"
        except OSError as e:
            ended = "error: %s" % e
    payload = base64.b64decode(args.send_b64) if args.send_b64 else b""
    if payload and ended is None:
        try:
            send_pieces(sock, payload, args.chunks, args.gap)
        except OSError as e:
            out["send_error"] = str(e)
    if args.shut_wr and ended is None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            out["send_error"] = out["send_error"] or str(e)
    if ended is None:
        ended = read_until_end(sock, deadline, got)
    sock.close()
    out["received_b64"] = b64(bytes(got))
    out["end"] = ended
    return out


def probe_udp(args):
    fam = socket.AF_INET6 if ":" in split_hostport(args.dst)[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(args.timeout)
    if args.src:
        s.bind((args.src, 0))
    s.sendto(base64.b64decode(args.send_b64), split_hostport(args.dst))
    try:
        data, peer = s.recvfrom(65536)
        return {"received_b64": b64(data), "peer": fmt_addr(peer)}
    except (socket.timeout, ConnectionRefusedError):
        return {"received_b64": None, "peer": None}


def probe_dns(args):
    from dnslib import QTYPE, RCODE, DNSRecord

    q = DNSRecord.question(args.name, args.qtype)
    host, _, port = args.server.partition(":")
    try:
        raw = q.send(host, int(port or 53), timeout=args.timeout)
    except (socket.timeout, OSError):
        return {"answered": False, "rcode": None, "a": []}
    reply = DNSRecord.parse(raw)
    return {
        "answered": True,
        "rcode": RCODE.get(reply.header.rcode),
        "a": [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A],
    }


def reframe_records(flight, parts):
    """Cuts the first TLS record of `flight` into `parts` records carrying
    the same handshake bytes (RFC 8446 5.1 lets handshake messages span
    records); the rest of the flight follows unchanged."""
    if parts <= 1 or len(flight) < 5 or flight[0] != 0x16:
        return flight
    length = struct.unpack("!H", flight[3:5])[0]
    body, rest = flight[5:5 + length], flight[5 + length:]
    step = -(-len(body) // parts)
    out = b""
    for i in range(0, len(body), step):
        piece = body[i:i + step]
        out += flight[0:3] + struct.pack("!H", len(piece)) + piece
    return out + rest


def probe_tls(args):
    out = {"connected": False, "handshake": False, "error": None, "received_b64": "", "end": None}
    deadline = time.monotonic() + args.timeout
    ctx = ssl.create_default_context(cafile=args.cafile)
    if not args.sni:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=args.sni or None)
    try:
        sock = socket.create_connection(split_hostport(args.dst), timeout=args.timeout)
    except OSError as e:
        out["error"] = str(e)
        return out
    out["connected"] = True
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = True

    def flush():
        nonlocal first
        data = outgoing.read()
        if not data:
            return
        if first:
            first = False
            send_pieces(sock, reframe_records(data, args.split_records), args.split_segments, args.gap)
        else:
            sock.sendall(data)

    def feed():
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            incoming.write_eof()
            return False
        incoming.write(chunk)
        return True

    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not feed():
                    out["end"] = "eof"
                    out["error"] = "EOF during the handshake"
                    return out
        flush()
        out["handshake"] = True
        tls.write(base64.b64decode(args.send_b64))
        flush()
        got = bytearray()
        while True:
            try:
                got.extend(tls.read(65536))
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                out["end"] = "eof"
                break
            if not feed():
                out["end"] = "eof"
                break
        out["received_b64"] = b64(bytes(got))
    except socket.timeout:
        out["end"] = "timeout"
    except ConnectionResetError:
        out["end"] = "reset"
    except (OSError, ssl.SSLError) as e:
        out["end"] = "error"
        out["error"] = str(e)
    finally:
        sock.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("http", "https", "ssh", "udp-echo", "origdst"):
        p = sub.add_parser(name)
        p.add_argument("--listen", action="append", required=True, help="ADDR:PORT, repeatable")
        p.add_argument("--log", required=True)
        p.add_argument("--ready-file", required=True)
        p.add_argument("--name")
        if name == "https":
            p.add_argument("--cert", required=True)
            p.add_argument("--key", required=True)
    p = sub.add_parser("probe-tcp")
    p.add_argument("--dst", required=True)
    p.add_argument("--send-b64", default="")
    p.add_argument("--read-first", type=float, default=0.0)
    p.add_argument("--shut-wr", action="store_true")
    p.add_argument("--chunks", type=int, default=1)
    p.add_argument("--gap", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("probe-udp")
    p.add_argument("--dst", required=True)
    p.add_argument("--send-b64", required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--src", default="", help="source address to bind (forged-source tests)")
    p = sub.add_parser("probe-dns")
    p.add_argument("--server", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--qtype", default="A")
    p.add_argument("--timeout", type=float, default=1.0)
    p = sub.add_parser("probe-tls")
    p.add_argument("--dst", required=True)
    p.add_argument("--sni", default="")
    p.add_argument("--cafile", required=True)
    p.add_argument("--send-b64", required=True)
    p.add_argument("--split-segments", type=int, default=1)
    p.add_argument("--split-records", type=int, default=1)
    p.add_argument("--gap", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args(argv)

    if args.cmd in ("http", "https", "ssh", "udp-echo", "origdst"):
        run_server(args)
        return 0
    probe = {"probe-tcp": probe_tcp, "probe-udp": probe_udp, "probe-dns": probe_dns,
             "probe-tls": probe_tls}[args.cmd]
    print(json.dumps(probe(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
