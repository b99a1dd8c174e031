"""Command line: --version, --check-config (good and bad files), flags over file."""

import re
import subprocess

import pytest

from backends import backend_pair
from client import one_request
from conftest import SANDGATE_BIN, SCALE, free_port

GOOD = """\
listen: ["127.0.0.1:{port}"]
domains: ["sandbox.test"]
workers: 1
sandboxes:
  abc: {{address: 127.0.0.2, mask: "localhost:${{PORT}}"}}
  def: {{address: 127.0.0.3}}
timeouts: {{request_head: 2s, keepalive_idle: 75s, upstream_connect: 5s, upstream_retry_window: 1.5s, upstream_response_head: 300s, stream_idle: 10m, upstream_idle: 60s}}
limits: {{max_header_size: 64KiB}}
"""


def run(args, timeout=10):
    p = subprocess.run([SANDGATE_BIN] + args, capture_output=True, timeout=timeout * SCALE)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def test_version():
    rc, out = run(["--version"])
    assert rc == 0, out
    assert re.search(r"\d+\.\d+\.\d+", out), out


def test_check_config_good(tmp_path):
    port = free_port()
    f = tmp_path / "good.yaml"
    f.write_text(GOOD.format(port=port))
    rc, out = run(["--config", str(f), "--check-config"])
    assert rc == 0, out
    # it checked and exited: nothing may be listening now
    with pytest.raises(OSError):
        import socket

        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


# (name, file text, line number the error must point at); --check-config does
# not bind, so the listen port in these files does not matter.
G = GOOD.format(port=18080)
BAD = [
    ("workers_not_a_number", G.replace("workers: 1", "workers: many"), 3),
    ("bad_duration", G.replace("request_head: 2s", "request_head: 2 parsecs"), 7),
    ("bad_sandbox_address", G.replace("address: 127.0.0.3", "address: not-an-address"), 6),
    ("bad_listen_port", G.replace('"127.0.0.1:18080"', '"127.0.0.1:99999"'), 1),
    ("bad_size", G.replace("64KiB", "lots"), 8),
    ("bad_sandbox_id", G.replace("  def:", "  De_F!:"), 6),
    ("yaml_syntax", G.replace("workers: 1\n", "workers: [1\n"), None),
]
for _name, _text, _line in BAD:
    assert _text != G, _name


@pytest.mark.parametrize("name,text,line", BAD, ids=[b[0] for b in BAD])
def test_check_config_bad(tmp_path, name, text, line):
    f = tmp_path / ("%s.yaml" % name)
    f.write_text(text)
    rc, out = run(["--config", str(f), "--check-config"])
    assert rc == 1, "expected exit 1, got %d; output:\n%s" % (rc, out)
    locs = re.findall(re.escape(str(f)) + r":(\d+): \S", out)
    assert locs, "no '%s:<line>: message' in output:\n%s" % (f, out)
    if line is not None:
        assert locs == [str(line)], "expected one error, at line %d; got lines %s:\n%s" % (line, locs, out)


def test_check_config_unknown_key(tmp_path):
    """A misspelt setting is reported, not silently ignored."""
    f = tmp_path / "typo.yaml"
    f.write_text(G.replace("workers: 1", "wrokers: 1"))
    rc, out = run(["--config", str(f), "--check-config"])
    assert rc == 1, out
    assert re.search(re.escape(str(f)) + r":3: \S", out), out


def test_bad_flag_exits_nonzero():
    rc, out = run(["--workers", "lots", "--check-config"])
    assert rc != 0, out
    assert out.strip(), "no message for a bad flag"


def test_flags_override_file(sandgate_factory):
    """--listen / --domain / --sandbox given on the command line win over the file."""
    a, b = backend_pair()
    try:
        file_port = free_port()
        flag_port = free_port()
        sandgate_factory(
            listen=["127.0.0.1:%d" % file_port],
            listen_port=flag_port,
            args=["--listen", "127.0.0.1:%d" % flag_port, "--domain", "other.test",
                  "--sandbox", "xyz=127.0.0.2,mask=xyz.local:${PORT}"],
        )
        import socket

        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", file_port), timeout=0.5).close()
        r = one_request(flag_port, "GET", "/echo", host="%d-xyz.other.test" % a.port)
        assert r.status == 200, r
        doc = r.json()
        assert doc["backend"] == "abc"
        assert ("Host", "xyz.local:%d" % a.port) in [tuple(h) for h in doc["headers"]], doc["headers"]
        # the file's domain list was replaced by --domain
        r = one_request(flag_port, "GET", "/echo", host="%d-abc.sandbox.test" % a.port)
        assert r.status == 421, r
        assert r.error_name == "host_unknown_domain"
    finally:
        a.stop()
        b.stop()
