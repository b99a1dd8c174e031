#!/usr/bin/python3
"""WebSocket echo backend and round-trip client for tests/load (standard
library only, minimal RFC 6455 framing: unfragmented frames <= 125 bytes).

  wsecho.py server ADDR[,ADDR...] PORT     echo every frame back (unmasked)
  wsecho.py client HOST PORT HOSTHEADER N SIZE
      one connection: upgrade, then N sequential round trips of SIZE-byte
      masked binary frames; prints one JSON line with the round-trip
      latencies (microseconds) and the wall time of the N round trips.
"""

import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B1B"


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("connection closed in head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def serve_conn(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head, rest = read_head(sock)
        key = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip().encode()
        if key is None:
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        pending = bytearray(rest)

        def need(n):
            while len(pending) < n:
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError()
                pending.extend(chunk)

        while True:
            need(2)
            b0, b1 = pending[0], pending[1]
            ln = b1 & 0x7F
            masked = b1 & 0x80
            if ln > 125:
                return
            total = 2 + (4 if masked else 0) + ln
            need(total)
            payload = bytes(pending[total - ln : total])
            if masked:
                mask = pending[2:6]
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            del pending[:total]
            op = b0 & 0x0F
            if op == 8:
                sock.sendall(bytes([0x88, 0]))
                return
            sock.sendall(bytes([0x80 | op, ln]) + payload)
    except (EOFError, OSError):
        pass
    finally:
        sock.close()


def server(addrs, port):
    listeners = []
    for a in addrs.split(","):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a, port))
        s.listen(128)
        listeners.append(s)

    def accept_loop(s):
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve_conn, args=(c,), daemon=True).start()

    for s in listeners[1:]:
        threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
    print("ready", flush=True)
    accept_loop(listeners[0])


def client(host, port, host_header, n, size):
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    s.sendall(
        b"GET /ws HTTP/1.1\r\nHost: " + host_header.encode() + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head, rest = read_head(s)
    if not head.startswith("HTTP/1.1 101"):
        print(json.dumps({"error": head.split("\r\n")[0]}), flush=True)
        return 1
    assert not rest
    payload = bytes(range(size % 256)) * (size // 256) + bytes(size % 256)
    payload = (payload + bytes(size))[:size]
    mask = b"\x11\x22\x33\x44"
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    frame = bytes([0x82, 0x80 | size]) + mask + masked
    expect = bytes([0x82, size]) + payload
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        a = time.perf_counter_ns()
        s.sendall(frame)
        got = recv_exact(s, len(expect))
        lat.append((time.perf_counter_ns() - a) / 1000.0)
        if got != expect:
            print(json.dumps({"error": "echo mismatch"}), flush=True)
            return 1
    wall = time.perf_counter() - t0
    s.sendall(bytes([0x88, 0x80]) + mask)
    s.close()
    lat.sort()
    print(
        json.dumps(
            {
                "n": n,
                "wall_s": wall,
                "p50_us": lat[len(lat) // 2],
                "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "mean_us": sum(lat) / len(lat),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(client(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])))
