"""A TLS client driven by hand over memory BIOs, for tests that need control
of what leaves in which segment: the ClientHello is made at creation and
sent by hello(); finish() completes the handshake and sends the client's
Finished and the request in one segment, as browsers and wrk do, so the
server finds application data waiting when its handshake completes. No
certificate verification: these tests are about timing and system calls."""

import re
import socket
import ssl
import struct

from conftest import SCALE


class ManualTlsClient:
    def __init__(self, port, sni, tls13_only=False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if tls13_only:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20 * SCALE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.client_hello = self.outgoing.read()

    def hello(self):
        self.sock.sendall(self.client_hello)

    def reset(self):
        """Leaves with a RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _receive(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        self.incoming.write(data)

    def hello_and_finish(self, request):
        self.hello()
        return self.finish(request)

    def finish(self, request):
        """Completes the handshake, sends request with the Finished, returns
        the response (head and Content-Length body) and closes."""
        try:
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if self.outgoing.pending:
                        self.sock.sendall(self.outgoing.read())
                    self._receive()
            self.tls.write(request)
            self.sock.sendall(self.outgoing.read())  # Finished and the request together
            got = b""
            while True:
                end = got.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"(?im)^content-length:\s*(\d+)\r$", got[:end + 2])
                    if m is None or len(got) >= end + 4 + int(m.group(1)):
                        return got
                try:
                    got += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    self._receive()
        finally:
            self.sock.close()
