"""Harness for sandgate's egress end-to-end tests: three real network
namespaces (sandbox, host, internet) the tests make and remove themselves,
recording peers in the "internet" and on the host side, the DNS server from
tests/integration, and sandgate started in the host namespace from an inline
YAML config. See README.md for the topology.

Everything runs as root; without root or `ip netns` every test skips.

Reused from tests/integration/conftest.py (imported, not copied): Sandgate
(stop, exit status and sanitizer checks), to_yaml, SCALE, AdminClient,
DnsServer, parse_prometheus, wait_port."""

import base64
import fcntl
import importlib.util
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
SERVERS = os.path.join(HERE, "servers.py")
PYTHON = "/usr/bin/python3"


def _load_integration_conftest():
    # Under its own module name: pytest owns the name "conftest".
    spec = importlib.util.spec_from_file_location(
        "sgt_integration_conftest", os.path.join(INTEGRATION, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


itc = _load_integration_conftest()
SCALE = itc.SCALE
SANDGATE_BIN = itc.SANDGATE_BIN

# -- addresses (README.md) ------------------------------------------------------
SBX_ADDR = "10.231.0.2"          # the sandbox, as registered
HOST_SBX_SIDE = "10.231.0.1"     # host side toward the sandbox (its default route)
HOST_INET_SIDE = "198.51.100.1"  # host side toward the internet (sandgate dials from here)
INET_ADDR = "198.51.100.2"
S10, S11, S12 = "203.0.113.10", "203.0.113.11", "203.0.113.12"
NS53 = "203.0.113.53"
INET_HOSTS = (S10, S11, S12)
ADMIN_PORT = 9901
ADMIN_TOKEN = "egress-e2e-admin-token"
EGRESS_PORTS = {"listen_http": 15080, "listen_tls": 15443, "listen_other": 15000}
NFT_TABLE = "sandgate"
NAMES = ("allowed.test", "www.allowed.test", "a.b.allowed.test", "other.test", "internal.test")

# DNS zone `test` (dns_server.py syntax, names relative to the zone).
ZONE_RECORDS = {
    "allowed": {"A": [S10]},
    "www.allowed": {"A": [S10]},
    "a.b.allowed": {"A": [S10]},
    "other": {"A": [S11]},
    "twelve": {"A": [S12]},
    "internal": {"A": [HOST_SBX_SIDE]},  # rebinding: a public name, an internal address
    "nsprobe": {"A": [S10]},
}


def require_netns():
    """Skips the calling test unless we are root and can make a namespace."""
    if os.geteuid() != 0:
        pytest.skip("egress tests need root (network namespaces, nftables)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 `ip` not installed")
    probe = "sgt-probe-%s" % secrets.token_hex(3)
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("`ip netns` not available: %s" % r.stderr.strip())
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    for tool in ("curl", "nft"):
        if shutil.which(tool) is None:
            pytest.skip("%s not installed" % tool)


def sh(argv, check=True, timeout=30, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s -> %d\n%s%s" % (" ".join(argv), r.returncode, r.stdout, r.stderr))
    return r


# ---------------------------------------------------------------------------
# topology


class Topology:
    """The three namespaces and their links. Names carry a random suffix so
    parallel runs do not collide; the root-side management /30 is the first
    free one from 10.232.0.0/30 on (picked under a lock file). destroy() is
    idempotent and also undoes a half-made topology."""

    def __init__(self):
        sfx = secrets.token_hex(2)
        self.suffix = sfx
        self.sbx = "sgt-sbx-%s" % sfx
        self.host = "sgt-host-%s" % sfx
        self.inet = "sgt-inet-%s" % sfx
        self.namespaces = (self.sbx, self.host, self.inet)
        # veth names (<= 15 chars): sandbox / host-to-sandbox, host-to-inet /
        # inet, management root side / host side
        self.if_sbx, self.if_host_sbx = "sg%ssb" % sfx, "sg%shs" % sfx
        self.if_host_inet, self.if_inet = "sg%shi" % sfx, "sg%sin" % sfx
        self.if_mgmt_root, self.if_mgmt_host = "sg%smr" % sfx, "sg%smh" % sfx
        self.mgmt_root = None  # e.g. 10.232.0.1
        self.mgmt_host = None  # e.g. 10.232.0.2 (admin API)
        self.procs = []  # (label, Popen) started in a namespace, stopped by PID
        self.destroyed = False

    # -- build -------------------------------------------------------------------
    def up(self):
        for ns in self.namespaces:
            sh(["ip", "netns", "add", ns])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "link", "add", self.if_sbx, "netns", self.sbx, "type", "veth",
            "peer", "name", self.if_host_sbx, "netns", self.host])
        sh(["ip", "link", "add", self.if_host_inet, "netns", self.host, "type", "veth",
            "peer", "name", self.if_inet, "netns", self.inet])
        # sandbox
        sh(["ip", "-n", self.sbx, "addr", "add", SBX_ADDR + "/24", "dev", self.if_sbx])
        sh(["ip", "-n", self.sbx, "link", "set", self.if_sbx, "up"])
        sh(["ip", "-n", self.sbx, "route", "add", "default", "via", HOST_SBX_SIDE])
        # host side
        sh(["ip", "-n", self.host, "addr", "add", HOST_SBX_SIDE + "/24", "dev", self.if_host_sbx])
        sh(["ip", "-n", self.host, "addr", "add", HOST_INET_SIDE + "/24", "dev", self.if_host_inet])
        for ifn in (self.if_host_sbx, self.if_host_inet):
            sh(["ip", "-n", self.host, "link", "set", ifn, "up"])
        sh(["ip", "-n", self.host, "route", "add", "default", "via", INET_ADDR])
        sh(["ip", "netns", "exec", self.host, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # internet
        sh(["ip", "-n", self.inet, "addr", "add", INET_ADDR + "/24", "dev", self.if_inet])
        sh(["ip", "-n", self.inet, "link", "set", self.if_inet, "up"])
        for a in INET_HOSTS + (NS53,):
            sh(["ip", "-n", self.inet, "addr", "add", a + "/32", "dev", "lo"])
        sh(["ip", "-n", self.inet, "route", "add", "10.231.0.0/24", "via", HOST_INET_SIDE])
        self._up_mgmt()
        return self

    def _up_mgmt(self):
        with open("/tmp/sgt-egress-mgmt.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = set()
            for line in sh(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
                parts = line.split()
                if "inet" in parts:
                    used.add(parts[parts.index("inet") + 1].split("/")[0])
            base = ipaddress.IPv4Address("10.232.0.0")
            for i in range(0, 65536, 4):
                root, host = str(base + i + 1), str(base + i + 2)
                if root not in used and host not in used:
                    break
            else:
                raise RuntimeError("no free /30 in 10.232.0.0/16 for the management link")
            sh(["ip", "link", "add", self.if_mgmt_root, "type", "veth",
                "peer", "name", self.if_mgmt_host, "netns", self.host])
            sh(["ip", "addr", "add", root + "/30", "dev", self.if_mgmt_root])
            sh(["ip", "link", "set", self.if_mgmt_root, "up"])
        sh(["ip", "-n", self.host, "addr", "add", host + "/30", "dev", self.if_mgmt_host])
        sh(["ip", "-n", self.host, "link", "set", self.if_mgmt_host, "up"])
        self.mgmt_root, self.mgmt_host = root, host

    # -- run things inside -------------------------------------------------------
    def run(self, ns, argv, timeout=30, check=False):
        return sh(["ip", "netns", "exec", ns] + list(argv), check=check, timeout=timeout)

    def spawn(self, ns, argv, label, stdout=None, stderr=None):
        """Starts argv in ns (`ip netns exec` execs it: the PID is argv's).
        Stopped by PID in destroy() unless stopped earlier."""
        p = subprocess.Popen(["ip", "netns", "exec", ns] + list(argv), stdin=subprocess.DEVNULL,
                             stdout=stdout or subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)
        self.procs.append((label, p))
        return p

    def listening(self, ns, proto="tcp"):
        """Set of "addr:port" listening (tcp) or bound (udp) in ns."""
        r = self.run(ns, ["ss", "-Hln" + ("t" if proto == "tcp" else "u")], check=True)
        return {line.split()[3] for line in r.stdout.splitlines() if len(line.split()) > 3}

    # -- teardown ------------------------------------------------------------------
    def stop_procs(self):
        problems = []
        for label, p in reversed(self.procs):
            if p.poll() is not None:
                if p.returncode != 0:
                    problems.append("%s exited during the test with %s" % (label, p.returncode))
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                problems.append("%s ignored SIGTERM" % label)
        self.procs = []
        return problems

    def destroy(self):
        """Stops every process started here, deletes the namespaces (their
        veths go with them) and the root-side link. Returns problems."""
        if self.destroyed:
            return []
        self.destroyed = True
        problems = self.stop_procs()
        for ns in self.namespaces:
            r = sh(["ip", "netns", "del", ns], check=False)
            if r.returncode != 0 and "No such file" not in r.stderr:
                problems.append("ip netns del %s: %s" % (ns, r.stderr.strip()))
        if sh(["ip", "link", "show", self.if_mgmt_root], check=False).returncode == 0:
            sh(["ip", "link", "del", self.if_mgmt_root], check=False)
        return problems

    def leftovers(self):
        """Names of this topology still present (namespaces, root links)."""
        out = []
        listed = sh(["ip", "netns", "list"]).stdout
        out += [ns for ns in self.namespaces if ns in listed.split()]
        links = sh(["ip", "-o", "link", "show"]).stdout
        out += [i for i in (self.if_mgmt_root,) if (" %s@" % i) in links or (" %s:" % i) in links]
        return out


# ---------------------------------------------------------------------------
# recording peers


class Conn:
    """One TCP connection as a peer recorded it."""

    def __init__(self, cid, listener, peer):
        self.cid = cid
        self.listener = listener
        self.peer = peer
        self.data = b""
        self.sni = None
        self.tls_error = None
        self.original_dst = None
        self.closed = None  # how, once closed

    @property
    def peer_ip(self):
        return self.peer.rpartition(":")[0]

    def __repr__(self):
        return "<Conn %s %s<-%s %r closed=%s sni=%s>" % (
            self.cid, self.listener, self.peer, self.data[:200], self.closed, self.sni)


class NetnsDnsServer(itc.DnsServer):
    """tests/integration's DnsServer, run in a namespace on ADDR:53 with the
    zone `test`. Everything but starting it is inherited."""

    def __init__(self, workdir, topo, ns, addr):
        super().__init__(workdir, zone="test")
        self.topo, self.ns, self.addr = topo, ns, addr
        self.negative_ttl = 5

    def start(self):
        self.write()
        for p in (self.ready_file, self.mute_file):
            if os.path.exists(p):
                os.unlink(p)
        self.proc = self.topo.spawn(
            self.ns,
            [PYTHON, itc.DNS_SERVER_SCRIPT, "--port", "53", "--addr", self.addr,
             "--zone-file", self.zone_file, "--stats-file", self.stats_file,
             "--mute-file", self.mute_file, "--ready-file", self.ready_file],
            "dns_server.py", stderr=open(self.stderr_path, "wb"))
        wait_file(self.ready_file, self.proc, "dns_server.py", self.stderr_text)
        self.port = 53
        return self

    @property
    def address(self):
        return "%s:53" % self.addr

    def total(self):
        return self.stats()["total"]


def wait_file(path, proc, label, stderr_text, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s:\n%s" % (label, proc.returncode, stderr_text()))
        if os.path.exists(path):
            return
        time.sleep(0.02)
    raise RuntimeError("%s not ready within %ds:\n%s" % (label, timeout, stderr_text()))


class Peers:
    """The recording servers (servers.py) and the DNS server.

    In the internet namespace: `http` on .10/.11/.12 and 198.51.100.2 port 80,
    `https` on .10/.11/.12:443 (trustme certificate for NAMES and the three
    addresses), `ssh` on .10/.11/.12:22, `udp` echo on .10/.11/.12:7, DNS
    on 203.0.113.53:53. In the host namespace: `host-http` on 10.231.0.1 and
    198.51.100.1 ports 80 and 8081, `host-udp` echo on the same addresses
    port 7. Every server logs to <workdir>/<name>.jsonl (servers.py)."""

    def __init__(self, workdir, topo):
        self.workdir = workdir
        self.topo = topo
        self.logs = {}
        self.dns = None
        os.makedirs(workdir, exist_ok=True)
        import trustme

        self.ca = trustme.CA()
        leaf = self.ca.issue_cert(*(NAMES + INET_HOSTS))
        self.ca_file = os.path.join(workdir, "ca.pem")
        self.cert_file = os.path.join(workdir, "cert.pem")
        self.key_file = os.path.join(workdir, "key.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        leaf.cert_chain_pems[0].write_to_path(self.cert_file)
        for pem in leaf.cert_chain_pems[1:]:
            with open(self.cert_file, "ab") as f:
                f.write(pem.bytes())
        leaf.private_key_pem.write_to_path(self.key_file)

    def start_server(self, ns, kind, name, listens, extra=()):
        log = os.path.join(self.workdir, "%s.jsonl" % name)
        ready = os.path.join(self.workdir, "%s.ready" % name)
        err = os.path.join(self.workdir, "%s.stderr" % name)
        open(log, "w").close()
        argv = [PYTHON, SERVERS, kind, "--log", log, "--ready-file", ready, "--name", name]
        for a in listens:
            argv += ["--listen", a]
        p = self.topo.spawn(ns, argv + list(extra), "servers.py %s (%s)" % (kind, name),
                            stderr=open(err, "wb"))
        self.logs[name] = log

        def err_text():
            with open(err, "rb") as f:
                return f.read().decode("utf-8", "replace")

        return p, ready, err_text

    def start(self, with_host_side=True):
        t = self.topo
        started = [
            self.start_server(t.inet, "http", "http", ["%s:80" % a for a in INET_HOSTS + (INET_ADDR,)]),
            self.start_server(t.inet, "https", "https", ["%s:443" % a for a in INET_HOSTS],
                              ["--cert", self.cert_file, "--key", self.key_file]),
            self.start_server(t.inet, "ssh", "ssh", ["%s:22" % a for a in INET_HOSTS]),
            self.start_server(t.inet, "udp-echo", "udp", ["%s:7" % a for a in INET_HOSTS]),
        ]
        if with_host_side:
            hosts = (HOST_SBX_SIDE, HOST_INET_SIDE)
            started += [
                self.start_server(t.host, "http", "host-http",
                                  ["%s:%d" % (a, p) for a in hosts for p in (80, 8081)]),
                self.start_server(t.host, "udp-echo", "host-udp", ["%s:7" % a for a in hosts]),
            ]
        dns_dir = os.path.join(self.workdir, "dns")
        os.makedirs(dns_dir, exist_ok=True)
        self.dns = NetnsDnsServer(dns_dir, t, t.inet, NS53)
        self.dns.records = {k: dict(v) for k, v in ZONE_RECORDS.items()}
        self.dns.start()
        for proc, ready, err_text in started:
            wait_file(ready, proc, "servers.py", err_text)
        return self

    # -- reading the logs ------------------------------------------------------------
    def mark(self):
        """A point in every log; pass it as `since` to see only later events."""
        return {name: len(self._lines(name)) for name in self.logs}

    def _lines(self, name):
        with open(self.logs[name], "rb") as f:
            data = f.read()
        # a line being appended right now is not complete yet
        return data.split(b"\n")[:-1]

    def events(self, name, since=None):
        lines = self._lines(name)
        if since is not None:
            lines = lines[since.get(name, 0):]
        return [json.loads(line) for line in lines]

    def conns(self, name, since=None, listener=None):
        out = {}
        for ev in self.events(name, since):
            cid = ev.get("conn")
            if ev["ev"] == "accept":
                c = out[cid] = Conn(cid, ev["listener"], ev["peer"])
                c.original_dst = ev.get("original_dst")
            elif cid in out:
                c = out[cid]
                if ev["ev"] == "data":
                    c.data += base64.b64decode(ev["b64"])
                elif ev["ev"] == "tls":
                    c.sni = ev.get("sni")
                    c.tls_error = ev.get("error")
                elif ev["ev"] == "close":
                    c.closed = ev["how"]
        conns = list(out.values())
        if listener is not None:
            conns = [c for c in conns if c.listener == listener]
        return conns

    def datagrams(self, name, since=None, listener=None):
        return [(ev["peer"], base64.b64decode(ev["b64"]), ev["listener"])
                for ev in self.events(name, since)
                if ev["ev"] == "datagram" and (listener is None or ev["listener"] == listener)]

    def activity(self, since):
        """New traffic since the mark: {name: [accept and datagram events]}
        for every server that saw any (late events of older connections,
        like their close, do not count)."""
        out = {}
        for n in self.logs:
            evs = [e for e in self.events(n, since) if e["ev"] in ("accept", "datagram")]
            if evs:
                out[n] = evs
        return out

    def wait_closed(self, name, since, listener, count=1, timeout=5):
        """Waits until `count` connections at listener are closed; returns them."""
        deadline = time.monotonic() + timeout * SCALE
        while True:
            conns = self.conns(name, since, listener)
            if len([c for c in conns if c.closed]) >= count or time.monotonic() > deadline:
                return conns
            time.sleep(0.02)

    def stop(self):
        problems = []
        if self.dns is not None and self.dns.proc is not None and self.dns.proc.poll() is None:
            p = self.dns.stop()
            if p:
                problems.append(p)
        return problems


# ---------------------------------------------------------------------------
# the sandbox side: clients run inside the sandbox namespace


class CurlResult:
    def __init__(self, rc, code, body, stderr):
        self.rc, self.code, self.body, self.stderr = rc, code, body, stderr

    def __repr__(self):
        return "<curl rc=%d code=%s body=%r stderr=%r>" % (self.rc, self.code, self.body[:300], self.stderr[-300:])


class SandboxClient:
    def __init__(self, topo, peers):
        self.topo = topo
        self.ns = topo.sbx
        self.ca_file = peers.ca_file

    def curl(self, url, resolve=(), headers=(), insecure=False, max_time=8):
        argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(max_time * SCALE),
                "-o", "-", "-w", "\n%{http_code}"]
        for r in resolve:
            argv += ["--resolve", r]
        for h in headers:
            argv += ["-H", h]
        argv += ["-k"] if insecure else ["--cacert", self.ca_file]
        r = self.topo.run(self.ns, argv + [url], timeout=max_time * SCALE + 10)
        body, _, code = r.stdout.rpartition("\n")
        return CurlResult(r.returncode, code, body, r.stderr)

    def _probe(self, argv, timeout):
        r = self.topo.run(self.ns, [PYTHON, SERVERS] + argv, timeout=timeout + 15)
        if r.returncode != 0:
            raise RuntimeError("probe %s failed: %s" % (argv, r.stderr))
        return json.loads(r.stdout)

    def tcp(self, dst, send=b"", read_first=0.0, shut_wr=False, chunks=1, gap=0.0, timeout=5.0):
        """-> dict(connected, error, received: bytes, end, send_error)."""
        argv = ["probe-tcp", "--dst", dst, "--timeout", str(timeout * SCALE),
                "--chunks", str(chunks), "--gap", str(gap)]
        if send:
            argv += ["--send-b64", base64.b64encode(send).decode()]
        if read_first:
            argv += ["--read-first", str(read_first)]
        if shut_wr:
            argv += ["--shut-wr"]
        out = self._probe(argv, timeout * SCALE)
        out["received"] = base64.b64decode(out.pop("received_b64"))
        return out

    def udp(self, dst, payload, timeout=1.0, src=""):
        """The echoed datagram, or None when nothing came back."""
        out = self._probe(["probe-udp", "--dst", dst, "--send-b64",
                           base64.b64encode(payload).decode(), "--timeout", str(timeout),
                           "--src", src], timeout)
        return None if out["received_b64"] is None else base64.b64decode(out["received_b64"])

    def dns(self, name, server=NS53, timeout=1.0):
        return self._probe(["probe-dns", "--server", server, "--name", name,
                            "--timeout", str(timeout)], timeout)

    def tls(self, dst, sni, send, split_segments=1, split_records=1, gap=0.1, timeout=5.0):
        argv = ["probe-tls", "--dst", dst, "--sni", sni, "--cafile", self.ca_file,
                "--send-b64", base64.b64encode(send).decode(), "--split-segments",
                str(split_segments), "--split-records", str(split_records), "--gap", str(gap),
                "--timeout", str(timeout * SCALE)]
        out = self._probe(argv, timeout * SCALE)
        out["received"] = base64.b64decode(out.pop("received_b64"))
        return out


# ---------------------------------------------------------------------------
# sandgate in the host namespace


class NetnsAdminClient(itc.AdminClient):
    """tests/integration's AdminClient, pointed at the admin API across the
    management link (it dials 127.0.0.1 itself; every connection it makes is
    re-aimed before it connects, which http.client does lazily)."""

    def __init__(self, host, port, token):
        self.admin_host = host
        super().__init__(port, token)

    @property
    def conn(self):
        return self._conn

    @conn.setter
    def conn(self, c):
        if c is not None:
            c.host = self.admin_host
        self._conn = c


class NetnsSandgate(itc.Sandgate):
    """Sandgate run as `ip netns exec <host ns> $SANDGATE_BIN --config F`;
    ready once the admin API answers over the management link and the three
    egress listeners listen. stop() (inherited) checks the exit status and
    stderr for sanitizer reports."""

    def __init__(self, workdir, config, topo, name="sandgate-egress"):
        super().__init__(workdir, config, (), None, name)
        self.topo = topo
        self.ingress_fallback = False

    def start(self, attempts=1):
        for fallback in (False, True):
            cfg = dict(self.config)
            if fallback:
                # An egress-only host may have no ingress listener (spec); if
                # this build insists, give it one nobody uses.
                cfg["listen"] = ["127.0.0.1:18080"]
                self.ingress_fallback = True
            self.config_path = os.path.join(self.workdir, "%s.yaml" % self.name)
            with open(self.config_path, "w") as f:
                f.write(itc.to_yaml(cfg) + "\n")
            self.stderr_path = os.path.join(self.workdir, "%s.stderr" % self.name)
            self.stdout_path = os.path.join(self.workdir, "%s.stdout" % self.name)
            env = dict(os.environ)
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.topo.host, SANDGATE_BIN, "--config", self.config_path],
                stdout=open(self.stdout_path, "wb"), stderr=open(self.stderr_path, "wb"),
                stdin=subprocess.DEVNULL, env=env)
            if self._wait_ready(10 * SCALE):
                self.admin = NetnsAdminClient(self.topo.mgmt_host, ADMIN_PORT, ADMIN_TOKEN)
                return self
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("sandgate not ready within %.0fs (admin %s:%d, egress ports %s); "
                                   "stderr:\n%s" % (10 * SCALE, self.topo.mgmt_host, ADMIN_PORT,
                                                    sorted(EGRESS_PORTS.values()), self.stderr_text()))
            if fallback or "no listen address" not in self.stderr_text():
                break
        self.stopped = True  # the error below carries the exit status and stderr
        raise RuntimeError("sandgate exited with %s at startup; config:\n%s\nstderr:\n%s"
                           % (self.proc.returncode, open(self.config_path).read(), self.stderr_text()))

    def _wait_ready(self, timeout):
        if not itc.wait_port(ADMIN_PORT, timeout, addr=self.topo.mgmt_host, proc=self.proc):
            return False
        want = {"0.0.0.0:%d" % p for p in EGRESS_PORTS.values()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if want <= self.topo.listening(self.topo.host):
                return True
            time.sleep(0.05)
        return False

    # -- admin and kernel state ----------------------------------------------------
    def nft_ruleset(self):
        """The table as loaded in the host namespace's kernel ("" if absent)."""
        r = self.topo.run(self.topo.host, ["nft", "list", "table", "inet", NFT_TABLE])
        return r.stdout if r.returncode == 0 else ""

    def wait_rules(self, address, present, timeout=5):
        """Waits until the loaded ruleset does (or no longer does) mention
        the address: the rules after a PUT (DELETE) are in force."""
        deadline = time.monotonic() + timeout * SCALE
        while True:
            text = self.nft_ruleset()
            if (address in text) == present:
                return text
            if time.monotonic() > deadline:
                raise AssertionError("nft table inet %s %s %s after %.0fs:\n%s\n--- sandgate stderr ---\n%s"
                                     % (NFT_TABLE, "never mentioned" if present else "still mentions",
                                        address, timeout * SCALE, text, self.stderr_text()[-3000:]))
            time.sleep(0.05)

    def metrics(self):
        r = self.admin.request("GET", "/metrics")
        assert r.status == 200, r
        return itc.parse_prometheus(r.body.decode("utf-8"))

    def decisions(self):
        """{(protocol, decision, reason): count} of sandgate_egress_decisions_total."""
        return {(lab.get("protocol"), lab.get("decision"), lab.get("reason")): v
                for lab, v in self.metrics().samples("sandgate_egress_decisions_total")}

    def wait_log(self, needle, timeout=5):
        deadline = time.monotonic() + timeout * SCALE
        while True:
            text = self.stderr_text()
            lines = [ln for ln in text.splitlines() if needle(ln)]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


def egress_config(workdir, mgmt_host, **egress_overrides):
    egress = {
        "listen_http": "0.0.0.0:%d" % EGRESS_PORTS["listen_http"],
        "listen_tls": "0.0.0.0:%d" % EGRESS_PORTS["listen_tls"],
        "listen_other": "0.0.0.0:%d" % EGRESS_PORTS["listen_other"],
        "nameserver": NS53,
        "resolvers": ["%s:53" % NS53],
        "nft_apply": True,
        "nft_table": NFT_TABLE,
    }
    egress.update(egress_overrides)
    return {
        "domains": ["sandbox.test"],
        "workers": 1,
        "listen": [],
        "admin": {"listen": ["%s:%d" % (mgmt_host, ADMIN_PORT)], "token": ADMIN_TOKEN,
                  "store": os.path.join(workdir, "admin.wal")},
        "egress": egress,
    }


def decision_delta(before, after):
    """Changed counters: {(protocol, decision, reason): increase}."""
    out = {}
    for k, v in after.items():
        d = v - before.get(k, 0)
        if d:
            out[k] = d
    return out


# ---------------------------------------------------------------------------
# fixtures (module scope: one world per test file, torn down at its end)


@pytest.fixture(scope="module")
def topology(request):
    require_netns()
    topo = Topology()
    request.addfinalizer(lambda: _finish(request, topo.destroy()))
    return topo.up()


def _finish(request, problems):
    """Fails the test being torn down with the problems. A module's teardown
    can also run at session end (after -x stopped the run), where a failure
    would crash pytest: then they are printed instead."""
    if not problems:
        return
    msg = "\n".join(problems)
    if request.session.shouldfail or request.session.shouldstop:
        sys.stderr.write("\negress teardown problems:\n%s\n" % msg)
        return
    pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="module")
def peers(topology, tmp_path_factory, request):
    p = Peers(str(tmp_path_factory.mktemp("peers")), topology)
    request.addfinalizer(lambda: _finish(request, p.stop()))
    return p.start()


@pytest.fixture(scope="module")
def sbx(topology, peers):
    return SandboxClient(topology, peers)


@pytest.fixture(scope="module")
def gate(topology, peers, tmp_path_factory, request):
    if not os.path.exists(SANDGATE_BIN):
        pytest.fail("sandgate binary %s not built" % SANDGATE_BIN, pytrace=False)
    workdir = str(tmp_path_factory.mktemp("sandgate"))
    sg = NetnsSandgate(workdir, egress_config(workdir, topology.mgmt_host, sniff_timeout="2s",
                                                sandbox_interfaces=[topology.if_host_sbx]),
                       topology)

    def stop():
        if sg.proc is not None:
            _finish(request, [p for p in [sg.stop()] if p])

    request.addfinalizer(stop)
    return sg.start()


_ids = itertools.count(1)


@pytest.fixture
def register(gate):
    """register(doc, expect=201) -> sandbox id: PUTs a sandbox at 10.231.0.2
    with doc's fields and waits until its rules are loaded. One address
    belongs to one sandbox, so the previous registration of the test (if
    any) is deleted first; the last one is deleted at teardown."""
    made = []

    def unregister(sid):
        r = gate.admin.delete(sid)
        assert r.status in (204, 404), r
        gate.wait_rules(SBX_ADDR, present=False)

    def reg(doc=None, sid=None):
        while made:
            unregister(made.pop())
        sid = sid or "eg%d" % next(_ids)
        body = dict({"address": SBX_ADDR}, **(doc or {}))
        r = gate.admin.put(sid, body)
        assert r.status == 201, "PUT %s %r -> %r" % (sid, body, r)
        made.append(sid)
        gate.wait_rules(SBX_ADDR, present=True)
        return sid

    yield reg
    for sid in made:
        if gate.alive():
            unregister(sid)
