"""The admin store is durable: every acknowledged PUT/DELETE survives a
kill -9, torn log tails are dropped at startup, registrations survive a
clean restart."""

import http.client
import json
import os
import random
import signal
import threading
import time

import pytest

from client import one_request
from conftest import SCALE, admin_config, attach_admin, free_port, kill9

TOKEN = "durable-Token-42"


def view(rec):
    """What a record looks like, minus its id."""
    return (rec["address"], rec["mask_request_host"], rec["has_traffic_access_token"],
            rec["max_incoming_connections"])


class Store:
    """Starts sandgate again and again on one store file (fresh ports each
    time, like a supervisor restarting it)."""

    def __init__(self, sandgate_factory, path, **overrides):
        self.factory = sandgate_factory
        self.path = path
        self.overrides = overrides
        self.sg = None

    def start(self):
        port = free_port()
        cfg = admin_config(port, store=self.path, **self.overrides)
        self.sg = attach_admin(self.factory(config=cfg), port)
        return self.sg

    def state(self):
        return {rec["id"]: view(rec) for rec in self.sg.admin.list_all(limit=7)}


# ---------------------------------------------------------------------------
# registration storm + kill -9
# ---------------------------------------------------------------------------

N_THREADS = 4
IDS_PER_THREAD = 12


def random_doc(rng):
    doc = {"address": "10.%d.%d.%d" % (rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))}
    if rng.random() < 0.3:
        doc["mask_request_host"] = rng.choice(["localhost:${PORT}", "h%d.internal" % rng.randrange(1000)])
    if rng.random() < 0.3:
        doc["traffic_access_token"] = "tok%d" % rng.randrange(10 ** 9)
    if rng.random() < 0.3:
        doc["max_incoming_connections"] = rng.randrange(1, 1000000)
    if rng.random() < 0.1:
        doc["address"] = "fd00::%x" % rng.randrange(1, 65535)
    return doc


def doc_view(doc):
    return (doc["address"], doc.get("mask_request_host"), "traffic_access_token" in doc,
            doc.get("max_incoming_connections"))


class Stormer(threading.Thread):
    """PUT/DELETE on its own ids as fast as the admin API answers. Per id it
    keeps the last acknowledged state and, when the connection broke
    mid-request, the state that request would have produced."""

    def __init__(self, port, ids, expected, seed):
        super().__init__(daemon=True)
        self.port = port
        self.ids = ids
        self.acked = dict(expected)  # id -> view or None (absent)
        self.inflight = {}           # id -> candidate view of the op that got no answer
        self.rng = random.Random(seed)
        self.n_acked = 0
        self.errors = []

    def run(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10 * SCALE)
        except OSError:
            return
        while True:
            sid = self.rng.choice(self.ids)
            if self.rng.random() < 0.7:
                doc = random_doc(self.rng)
                method, body, cand = "PUT", json.dumps(doc), doc_view(doc)
            else:
                method, body, cand = "DELETE", None, None
            self.inflight[sid] = cand
            try:
                conn.request(method, "/v1/sandboxes/%s" % sid, body=body,
                             headers={"Content-Type": "application/json"} if body else {})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException):
                return  # killed: this op is in doubt (inflight keeps it)
            del self.inflight[sid]
            if method == "PUT":
                want = 200 if self.acked.get(sid) is not None else 201
                if r.status != want:
                    self.errors.append((method, sid, body, r.status, data, "expected %d" % want))
                    return
                got = json.loads(data)
                if got["id"] != sid or view(got) != cand:
                    self.errors.append((method, sid, body, got))
                    return
            else:
                want = 204 if self.acked.get(sid) is not None else 404
                if r.status != want:
                    self.errors.append((method, sid, r.status, data, "expected %d" % want))
                    return
            self.acked[sid] = cand
            self.n_acked += 1


def test_acknowledged_changes_survive_kill9_storm(sandgate_factory, tmp_path):
    st = Store(sandgate_factory, tmp_path / "storm.wal")
    rng = random.Random(int(os.environ.get("SANDGATE_STORM_SEED", "20261127")))
    expected = {}  # id -> view; what the store holds after the last restart
    rounds = 6
    total_acked = 0
    in_doubt_total = 0
    sg = st.start()
    assert st.state() == {}
    for rnd in range(rounds):
        ids = [["t%di%d" % (t, k) for k in range(IDS_PER_THREAD)] for t in range(N_THREADS)]
        stormers = [Stormer(sg.admin_port, ids[t], {i: expected.get(i) for i in ids[t]},
                            seed=rng.randrange(1 << 30)) for t in range(N_THREADS)]
        for s in stormers:
            s.start()
        # let the storm run, then kill at a random moment
        time.sleep(rng.uniform(0.25, 0.9) * SCALE)
        problem = kill9(sg)
        assert problem is None, problem
        for s in stormers:
            s.join(15 * SCALE)
            assert not s.is_alive(), "a storm thread hangs after the kill"
            assert not s.errors, s.errors
        acked = sum(s.n_acked for s in stormers)
        assert acked > 0, "round %d: no request was acknowledged before the kill" % rnd
        total_acked += acked

        sg = st.start()  # must start, whatever the kill left behind
        actual = st.state()
        known = set(i for s in stormers for i in s.ids)
        stray = set(actual) - known - set(expected)
        assert not stray, "ids never written: %s" % sorted(stray)
        lost = []
        for s in stormers:
            for sid in s.ids:
                have = actual.get(sid)
                allowed = [s.acked.get(sid)]
                if sid in s.inflight:
                    allowed.append(s.inflight[sid])
                    in_doubt_total += 1
                if have not in allowed:
                    lost.append((sid, "have", have, "acknowledged", s.acked.get(sid),
                                 "in flight", s.inflight.get(sid, "-")))
        assert not lost, "round %d: acknowledged changes lost after kill -9:\n%s" % (
            rnd, "\n".join(map(repr, lost)))
        expected = actual  # the next round storms this process
    assert total_acked >= rounds * 5, total_acked
    assert in_doubt_total > 0, "no kill ever caught a request in flight"
    # a clean stop and start keeps the last round's state
    assert sg.stop() is None
    st.start()
    assert st.state() == expected


# ---------------------------------------------------------------------------
# torn tails
# ---------------------------------------------------------------------------

def _crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _wal_line(doc):
    text = json.dumps(doc, separators=(",", ":")).encode()
    return b"%08x %s\n" % (_crc32c(text), text)


def _put_line(sid, addr):
    return _wal_line({"op": "put", "id": sid, "address": addr, "mask": None, "token_sha256": None,
                      "max_incoming_connections": 0})


@pytest.mark.parametrize("tail", ["partial", "no_newline", "bad_crc"])
def test_torn_last_line_is_ignored(sandgate_factory, tmp_path, backends, tail):
    a, _ = backends
    path = tmp_path / "torn.wal"
    st = Store(sandgate_factory, path)
    sg = st.start()
    assert sg.admin.put("keep1", {"address": "127.0.0.2", "traffic_access_token": TOKEN}).status == 201
    assert sg.admin.put("keep2", {"address": "10.0.0.2"}).status == 201
    assert sg.stop() is None
    before = path.read_bytes()
    assert before.endswith(b"\n")

    good = _put_line("torn", "10.7.7.7")
    if tail == "partial":
        junk = good[: len(good) // 2]
    elif tail == "no_newline":
        junk = good[:-1]
    else:
        junk = b"00000000" + good[8:]
        assert junk != good
    with open(path, "ab") as f:
        f.write(junk)

    sg = st.start()  # starts despite the torn tail
    state = st.state()
    assert set(state) == {"keep1", "keep2"}, state
    assert state["keep1"] == ("127.0.0.2", None, True, None)
    assert "torn" in sg.stderr_text().lower() or "dropped" in sg.stderr_text().lower(), sg.stderr_text()
    # the store keeps working, and later appends start on a clean line
    assert sg.admin.put("after", {"address": "10.0.0.3"}).status == 201
    assert sg.admin.delete("keep2").status == 204
    r = one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "keep1"),
                    headers=[("X-Traffic-Access-Token", TOKEN)])
    assert r.status == 200, r
    assert sg.stop() is None
    st.start()
    assert set(st.state()) == {"keep1", "after"}


def test_hand_written_complete_line_is_replayed(sandgate_factory, tmp_path):
    """Control for the torn-tail test: the same line, complete and with a
    newline, is a real record (so the torn ones were dropped for the tear)."""
    path = tmp_path / "whole.wal"
    path.write_bytes(_put_line("whole", "10.7.7.7"))
    st = Store(sandgate_factory, path)
    st.start()
    assert st.state() == {"whole": ("10.7.7.7", None, False, None)}


# ---------------------------------------------------------------------------
# clean restart
# ---------------------------------------------------------------------------

def test_registrations_survive_clean_restart(sandgate_factory, tmp_path, backends):
    a, b = backends
    st = Store(sandgate_factory, tmp_path / "clean.wal")
    sg = st.start()
    ad = sg.admin
    assert ad.put("keep", {"address": "127.0.0.2", "mask_request_host": "localhost:${PORT}",
                           "traffic_access_token": TOKEN, "max_incoming_connections": 5}).status == 201
    assert ad.put("moved", {"address": "127.0.0.2"}).status == 201
    assert ad.put("moved", {"address": "127.0.0.3"}).status == 200
    assert ad.put("gone", {"address": "127.0.0.2"}).status == 201
    assert ad.delete("gone").status == 204
    for i in range(30):
        assert ad.put("bulk%02d" % i, {"address": "10.0.1.%d" % (i + 1)}).status == 201
    want = st.state()
    assert sg.stop() is None
    assert TOKEN.encode() not in (tmp_path / "clean.wal").read_bytes(), "token stored in clear"

    sg = st.start()
    assert st.state() == want
    assert want["keep"] == ("127.0.0.2", "localhost:${PORT}", True, 5)
    assert "gone" not in want
    # routed as before: token still enforced, mask applied, new address kept
    host = sg.host(a.port, "keep")
    r = one_request(sg.port, "GET", "/echo", host=host)
    assert r.status == 403 and r.error_name == "token_missing", r
    r = one_request(sg.port, "GET", "/echo", host=host, headers=[("X-Traffic-Access-Token", TOKEN)])
    assert r.status == 200, r
    assert [v for n, v in r.json()["headers"] if n.lower() == "host"] == ["localhost:%d" % a.port]
    r = one_request(sg.port, "GET", "/echo", host=sg.host(b.port, "moved"))
    assert r.status == 200 and r.json()["backend"] == "def", r
    assert one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "gone")).status == 502


def test_without_store_registrations_are_memory_only(admin_factory, backends):
    a, _ = backends
    sg = admin_factory()
    assert sg.admin.put("mem", {"address": "127.0.0.2"}).status == 201
    assert one_request(sg.port, "GET", "/echo", host=sg.host(a.port, "mem")).status == 200
    assert sg.stop() is None
    sg2 = admin_factory()
    assert sg2.admin.get("mem").status == 404
    assert sg2.admin.list_all() == []


# ---------------------------------------------------------------------------
# fsync before the acknowledgement (syscall order, seen with strace)
# ---------------------------------------------------------------------------

def test_log_synced_before_each_acknowledgement(sandgate_factory, tmp_path):
    """kill -9 cannot tell write() from write()+fsync(): watch the syscalls.
    Every 2xx PUT/DELETE answer must follow a write of the log line and an
    fsync/fdatasync of the log; refused requests write nothing."""
    import re
    import shutil
    import subprocess

    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace not installed")
    path = tmp_path / "synced.wal"
    st = Store(sandgate_factory, path)
    sg = st.start()
    wal_fds = [fd for fd, target in sg.fds().items() if target == str(path)]
    assert len(wal_fds) == 1, sg.fds()
    wal_fd = int(wal_fds[0])
    trace = tmp_path / "strace.txt"
    sp = subprocess.Popen([strace, "-f", "-qq", "-s", "400", "-o", str(trace), "-p", str(sg.pid),
                           "-e", "trace=write,writev,pwrite64,pwritev,sendmsg,sendto,fsync,fdatasync,sync_file_range"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10 * SCALE
        while True:  # attached once a response shows up in the trace
            sg.admin.request("GET", "/healthz")
            if trace.exists() and "HTTP/1.1 200" in trace.read_text(errors="replace"):
                break
            if sp.poll() is not None or time.monotonic() > deadline:
                pytest.skip("strace could not attach: %s" % sp.stderr.read().decode(errors="replace")[-500:])
            time.sleep(0.05)
        ad = sg.admin
        expected_acks = 0
        for i in range(20):
            assert ad.put("fs%d" % (i % 7), {"address": "10.0.0.%d" % (i + 1)}).status in (200, 201)
            expected_acks += 1
            if i % 3 == 0:
                assert ad.delete("fs%d" % (i % 7)).status == 204
                expected_acks += 1
        assert ad.put("BAD", {"address": "10.0.0.1"}).status == 400
        assert ad.put("fsbad", {"address": "nope"}).status == 400
        assert ad.delete("fsabsent").status == 404
        assert ad.request("GET", "/healthz").status == 200
        time.sleep(0.2)
    finally:
        sp.send_signal(signal.SIGINT)
        try:
            sp.wait(10)
        except subprocess.TimeoutExpired:
            sp.kill()
            sp.wait()
    lines = trace.read_text(errors="replace").splitlines()
    call = re.compile(r"^\d+\s+(\w+)\((\d+)(.*)$")
    pending_write = False   # a log line written, not yet synced
    synced_since_ack = False
    acks = 0
    order = []
    for line in lines:
        m = call.match(line)
        if not m:
            continue
        name, fd, rest = m.group(1), int(m.group(2)), m.group(3)
        if fd == wal_fd and name in ("write", "writev", "pwrite64", "pwritev"):
            pending_write = True
            synced_since_ack = False
            order.append("wal-write")
        elif fd == wal_fd and name in ("fsync", "fdatasync"):
            if pending_write:
                synced_since_ack = True
            pending_write = False
            order.append("wal-sync")
        elif '"HTTP/1.1 ' in rest:
            status = int(re.search(r'"HTTP/1\.1 (\d{3})', rest).group(1))
            order.append("resp-%d" % status)
            if status == 204 or (status in (200, 201) and '\\"id\\":' in rest):
                # a mutation's acknowledgement (not a /healthz answer)
                assert synced_since_ack and not pending_write, \
                    "acknowledged before the log was synced; syscalls: %s" % order[-6:]
                acks += 1
                synced_since_ack = False
            elif status >= 400:
                assert order[-2:-1] != ["wal-write"] and not pending_write, \
                    "a refused request wrote the log: %s" % order[-6:]
    assert acks == expected_acks, (acks, expected_acks, order)
