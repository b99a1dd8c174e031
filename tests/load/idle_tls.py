#!/usr/bin/python3
"""Idle TLS connections for the memory-per-connection row of tests/load.

  idle_tls.py PORT N IDS_FILE BACKEND_PORT

Opens N TLS connections to 127.0.0.1:PORT one after another (full
handshakes, SNI = the Host of the sandbox each one will use), then prints
"opened <n_ok> <n_failed>" and waits for a line on stdin. On that line it sends
one small keep-alive request on every connection and reads the response,
prints "requested <n_ok> <n_failed>", waits for another line, closes all and
exits. The caller measures the proxy's memory at each pause.
"""

import socket
import ssl
import sys


def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError
        body += chunk
    return status


def main():
    port, n, ids_file, bport = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ids = [line.strip() for line in open(ids_file) if line.strip()]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    failed = 0
    for i in range(n):
        host = "%s-%s.sandbox.test" % (bport, ids[i % len(ids)])
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s = ctx.wrap_socket(raw, server_hostname=host)
            conns.append((s, host))
        except OSError:
            failed += 1
    print("opened %d %d" % (len(conns), failed), flush=True)
    sys.stdin.readline()
    ok = bad = 0
    for s, host in conns:
        try:
            s.sendall(("GET /small HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
            if read_response(s) == 200:
                ok += 1
            else:
                bad += 1
        except (OSError, EOFError):
            bad += 1
    print("requested %d %d" % (ok, bad), flush=True)
    sys.stdin.readline()
    for s, _ in conns:
        s.close()


if __name__ == "__main__":
    main()
