#!/usr/bin/python3
"""Sample sandbox service: answers every request with a JSON description of
what it received (method, target, Host, all headers, body length), so a
client can see what sandgate forwarded.

GET /slow?seconds=N waits N seconds (at most 60) before answering: a request
that is still in flight when sandgate is asked to stop.
"""
import argparse
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sandgate-sample-echo"
    # Head and body go out in two writes: without this, Nagle's algorithm
    # and delayed ACKs add 40 ms to every response (the `load` profile).
    disable_nagle_algorithm = True

    def _body_length(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return n
                n += len(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return len(self.rfile.read(length)) if length else 0

    def _answer(self):
        body_length = self._body_length()
        url = urlsplit(self.path)
        if url.path == "/slow":
            seconds = float(parse_qs(url.query).get("seconds", ["2"])[0])
            # tests/docker waits for this line before stopping sandgate.
            sys.stderr.write("echo: slow request started\n")
            sys.stderr.flush()
            time.sleep(min(max(seconds, 0), 60))
        out = json.dumps({
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_length": body_length,
        }, indent=1).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _answer

    def log_message(self, fmt, *args):
        sys.stderr.write("echo: %s %s\n" % (self.address_string(), fmt % args))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=3000)
    args = ap.parse_args()
    # PID 1 in its container: without a handler SIGTERM would be ignored
    # and `docker stop` would wait for its timeout.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("0.0.0.0", args.port), Echo).serve_forever()


if __name__ == "__main__":
    main()
