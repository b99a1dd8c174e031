"""Errors sandgate answers itself: status, X-Sandgate-Error, JSON / HTML body."""

import json
import socket
import threading
import time

import pytest

from backends import RawBackend, closed_port
from client import Conn, one_request
from conftest import SCALE


def check_json(r, status, name):
    assert r.status == status, r
    assert r.error_name == name, r
    assert r.header("Content-Type", "").startswith("application/json"), r
    return json.loads(r.body)


def test_unknown_sandbox_json(sg):
    r = one_request(sg.port, "GET", "/", host=sg.host(3000, "nosuchbox"))
    doc = check_json(r, 502, "sandbox_not_found")
    assert doc == {"sandboxId": "nosuchbox", "message": "The sandbox was not found", "code": 502}


@pytest.mark.parametrize("headers", [
    [("Sec-Fetch-Mode", "navigate")],
    [("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")],
    [("Accept", "text/html;q=0.1, application/json")],
], ids=["sec-fetch-navigate", "accept-browser", "accept-html-first-with-q"])
def test_unknown_sandbox_html_for_browsers(sg, headers):
    r = one_request(sg.port, "GET", "/", host=sg.host(3000, "nosuchbox"), headers=headers)
    assert r.status == 502, r
    assert r.error_name == "sandbox_not_found"
    assert r.header("Content-Type", "").startswith("text/html"), r
    body = r.body.decode()
    assert "<html" in body.lower()
    assert "nosuchbox" in body
    assert "The sandbox was not found" in body


@pytest.mark.parametrize("headers", [
    [],
    [("Accept", "application/json, text/html")],
    [("Accept", "*/*"), ("Sec-Fetch-Mode", "cors")],
], ids=["no-accept", "json-first", "fetch-cors"])
def test_unknown_sandbox_json_for_scripts(sg, headers):
    r = one_request(sg.port, "GET", "/", host=sg.host(3000, "nosuchbox"), headers=headers)
    doc = check_json(r, 502, "sandbox_not_found")
    assert doc["sandboxId"] == "nosuchbox"


def test_error_content_length_matches_body(sg):
    # keep-alive error responses must be framed correctly: a second request
    # on the same connection still gets its own answer.
    with Conn(sg.port) as c:
        r1 = c.request("GET", "/", host=sg.host(3000, "nosuchbox"))
        assert r1.framing == "length"
        assert int(r1.header("Content-Length")) == len(r1.body)
        if r1.header("Connection", "").lower() != "close":
            r2 = c.request("GET", "/", host=sg.host(3000, "other"))
            assert r2.status == 502 and r2.json()["sandboxId"] == "other"


MALFORMED = [
    ("no-port", "abc.sandbox.test"),
    ("port-zero", "0-abc.sandbox.test"),
    ("port-too-big", "65536-abc.sandbox.test"),
    ("port-not-decimal", "3x00-abc.sandbox.test"),
    ("empty-id", "3000-.sandbox.test"),
    ("id-bad-char", "3000-ab_c.sandbox.test"),
    ("id-too-long", "3000-%s.sandbox.test" % ("a" * 65)),
    ("empty-port", "-abc.sandbox.test"),
]


@pytest.mark.parametrize("host", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_host(sg, host):
    r = one_request(sg.port, "GET", "/", host=host)
    doc = check_json(r, 400, "host_malformed")
    assert doc["code"] == 400
    assert doc["message"].startswith("Malformed sandbox host: "), doc
    assert len(doc["message"]) > len("Malformed sandbox host: "), doc


def test_id_of_64_chars_is_valid(sg):
    sid = "a" * 64
    r = one_request(sg.port, "GET", "/", host=sg.host(3000, sid))
    doc = check_json(r, 502, "sandbox_not_found")
    assert doc["sandboxId"] == sid


def test_host_missing(sg):
    with Conn(sg.port) as c:
        c.send(b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n")
        r = c.read_response()
    check_json(r, 400, "host_missing")


@pytest.mark.parametrize("host", ["3000-abc.example.com", "3000-abc.notsandbox.test",
                                  "sandbox.test", "127.0.0.1"])
def test_host_unknown_domain(sg, host):
    r = one_request(sg.port, "GET", "/", host=host)
    check_json(r, 421, "host_unknown_domain")


def test_port_not_open_after_retry_window(sg):
    port = closed_port("127.0.0.2")
    t0 = time.monotonic()
    r = one_request(sg.port, "GET", "/", host=sg.host(port, "abc"), timeout=30)
    elapsed = time.monotonic() - t0
    doc = check_json(r, 502, "port_not_open")
    assert doc == {"sandboxId": "abc", "message": "The sandbox is running but port is not open",
                   "port": port, "code": 502}
    # retried for about upstream_retry_window (1.5 s) before giving up
    assert 1.2 <= elapsed <= 1.5 + 2.0 * SCALE, elapsed


def test_port_not_open_html(sg):
    port = closed_port("127.0.0.2")
    r = one_request(sg.port, "GET", "/", host=sg.host(port, "abc"), timeout=30,
                    headers=[("Sec-Fetch-Mode", "navigate")])
    assert r.status == 502 and r.error_name == "port_not_open", r
    assert r.header("Content-Type").startswith("text/html")
    assert str(port) in r.body.decode() and "abc" in r.body.decode()


def test_backend_that_starts_listening_late_gets_the_request(sg):
    # Reserve the port without listening: connects are refused until listen().
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.2", 0))
    port = s.getsockname()[1]
    backend = RawBackend("127.0.0.2", name="late", sock=s)
    timer = threading.Timer(0.7, backend.start)
    try:
        with Conn(sg.port, timeout=30) as c:
            c.send(b"GET /echo?late=1 HTTP/1.1\r\nHost: %s\r\n\r\n" % sg.host(port, "abc").encode())
            timer.start()
            r = c.read_response()
        assert r.status == 200, r
        doc = r.json()
        assert doc["backend"] == "late"
        assert doc["target"] == "/echo?late=1"
    finally:
        timer.cancel()
        timer.join()
        backend.stop()


def test_headers_too_large(sandgate_factory, backends):
    a, _ = backends
    sg = sandgate_factory(limits={"max_header_size": "8KiB"})
    # just under the limit passes
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port), headers=[("X-Big", "a" * 6000)])
    assert r.status == 200, r
    # one header over the limit
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port), headers=[("X-Big", "a" * 10000)])
    check_json(r, 431, "headers_too_large")
    # many small headers over the limit
    many = [("X-H%03d" % i, "v" * 40) for i in range(300)]
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port), headers=many)
    check_json(r, 431, "headers_too_large")
    # nothing of the oversized requests reached the backend
    assert b"X-H299" not in a.raw_all() and b"a" * 10000 not in a.raw_all()


def test_rejected_head_is_not_judged_by_the_previous_request(sandgate_factory, backends):
    """A head refused before its own view is built (431 here) on a kept-alive
    connection must not be answered from the previous request's headers: the
    first asks for HTML, the second does not, so its error must be JSON."""
    a, _ = backends
    sg = sandgate_factory(limits={"max_header_size": "8KiB"})
    with Conn(sg.port, timeout=5 * SCALE) as c:
        r = c.request("GET", "/echo", host=sg.host(a.port),
                      headers=[("Accept", "text/html,*/*;q=0.8"), ("Sec-Fetch-Mode", "navigate")])
        assert r.status == 200, r
        r = c.request("GET", "/echo", host=sg.host(a.port), headers=[("X-Big", "a" * 10000)])
        check_json(r, 431, "headers_too_large")


@pytest.mark.parametrize("host,status,name", [
    ("3000-ab_c.sandbox.test", 400, "host_malformed"),
    ("3000-abc.example.com", 421, "host_unknown_domain"),
])
def test_other_errors_html_for_navigation(sg, host, status, name):
    r = one_request(sg.port, "GET", "/", host=host, headers=[("Sec-Fetch-Mode", "navigate")])
    assert r.status == status and r.error_name == name, r
    assert r.header("Content-Type", "").startswith("text/html"), r
    assert "<html" in r.body.decode().lower()
