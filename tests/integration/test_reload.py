"""Configuration reload (SIGHUP and POST /v1/reload): domains, static
sandboxes, limits and log level swap without dropping connections; a broken
file, or a change that needs a restart, keeps the running configuration and
says why with file:line."""

import re
import signal
import time

from client import Conn, build_request
from conftest import MASK, SCALE, default_config
from httpio import BLOCK, iter_payload


def cfg_with(domains, sandboxes, **overrides):
    cfg = default_config(**overrides)
    cfg["domains"] = domains
    cfg["sandboxes"] = sandboxes
    cfg.setdefault("drain_timeout", "3s")
    return cfg


ABC = {"address": "127.0.0.2", "mask": MASK}
DEF = {"address": "127.0.0.3"}


def h(sg, port, sid, domain):
    return "%d-%s.%s:%d" % (port, sid, domain, sg.port)


def get(conn, sg, port, sid, domain, target="/echo"):
    return conn.request("GET", target, host=h(sg, port, sid, domain))


def one(sg, port, sid, domain, target="/echo"):
    with Conn(sg.port) as c:
        return get(c, sg, port, sid, domain, target)


def test_reload_swaps_domains_and_sandboxes_keepalive_survives(ops_factory, backends):
    a, b = backends
    P = a.port
    sg = ops_factory(cfg_with(["sandbox.test"], {"abc": ABC}, workers=2))
    keep = Conn(sg.port)
    upload = Conn(sg.port)
    try:
        r = get(keep, sg, P, "abc", "sandbox.test", "/echo?before=1")
        assert r.status == 200 and r.json()["backend"] == "abc", r
        assert one(sg, P, "def", "other.test").error_name == "host_unknown_domain"
        assert one(sg, P, "def", "sandbox.test").error_name == "sandbox_not_found"
        # an upload to abc in flight across the reload that removes abc
        total = 2 * BLOCK
        upload.send(build_request("POST", "/upload-watch", h(sg, P, "abc", "sandbox.test"),
                                  headers=[("Content-Length", str(total))]))
        chunks = iter_payload(total)
        upload.send(bytes(next(chunks)))
        assert a.wait_for(lambda: [e for e in a.events if e.get("kind") == "upload_progress"],
                          5 * SCALE)

        # 1: add domain other.test and sandbox def, remove sandbox abc (SIGHUP)
        sg.rewrite_config(cfg_with(["sandbox.test", "other.test"], {"def": DEF}, workers=2))
        assert sg.reload() == "applied", sg.stderr_text()[-2000:]
        r = get(keep, sg, P, "def", "other.test", "/echo?after=1")
        assert r.status == 200 and r.json()["backend"] == "def", r
        r = get(keep, sg, P, "def", "sandbox.test", "/echo?after=2")
        assert r.status == 200 and r.json()["backend"] == "def", r
        r = get(keep, sg, P, "abc", "sandbox.test")
        assert r.status == 502 and r.error_name == "sandbox_not_found", r
        assert r.json() == {"sandboxId": "abc", "message": "The sandbox was not found", "code": 502}
        # fresh connections see the same
        r = one(sg, P, "def", "other.test", "/echo?fresh=1")
        assert r.status == 200 and r.json()["backend"] == "def", r
        assert one(sg, P, "abc", "sandbox.test").error_name == "sandbox_not_found"
        # the in-flight upload finishes on the sandbox it started with
        for mv in chunks:
            upload.send(bytes(mv))
        r = upload.read_response()
        assert r.status == 200 and r.body == b"done %d" % total, r
        ends = a.find_events("upload_end")
        assert len(ends) == 1 and ends[0]["complete"], ends

        # 2: drop domain sandbox.test, put abc back (POST /v1/reload)
        sg.rewrite_config(cfg_with(["other.test"], {"def": DEF, "abc": ABC}, workers=2))
        r = sg.admin("POST", "/v1/reload", body=b"")
        assert r.status == 200 and r.json() == {"status": "reloaded"}, r
        r = get(keep, sg, P, "def", "sandbox.test")
        assert r.status == 421 and r.error_name == "host_unknown_domain", r
        r = get(keep, sg, P, "abc", "other.test", "/echo?back=1")
        assert r.status == 200 and r.json()["backend"] == "abc", r
        # abc's mask came back with it
        assert r.json()["headers"][0] == ["Host", "localhost:%d" % P], r.json()["headers"]
        r = get(keep, sg, P, "def", "other.test", "/echo?last=1")
        assert r.status == 200 and r.json()["backend"] == "def", r
        # every request above went over the one client connection opened
        # before the first reload; it is still open
        assert keep.reader.eof is False
    finally:
        keep.close()
        upload.close()


def _lines_with(text, needle):
    return [ln for ln in text.splitlines() if needle in ln]


def test_reload_with_broken_file_keeps_running_config(ops_factory, backends):
    a, _ = backends
    P = a.port
    sg = ops_factory(cfg_with(["sandbox.test"], {"abc": ABC}, workers=2))
    keep = Conn(sg.port)
    try:
        assert get(keep, sg, P, "abc", "sandbox.test").status == 200
        with open(sg.config_path) as f:
            good = f.read()
        lines = good.splitlines()
        # errors at known lines: an unknown key, a bad duration, a bad id; and
        # a new domain that must not take effect
        broken = list(lines)
        i_dom = next(i for i, ln in enumerate(broken) if ln.strip() == '- "sandbox.test"')
        broken.insert(i_dom + 1, '  - "new.test"')
        broken.append("frobnicate: 1")
        n_unknown = len(broken)
        i_head = next(i for i, ln in enumerate(broken) if "request_head:" in ln)
        broken[i_head] = broken[i_head].split(":")[0] + ': "soon"'
        broken.append("log_level: loud")
        n_level = len(broken)
        sg.write_config_text("\n".join(broken) + "\n")
        assert sg.reload() == "rejected"
        err = sg.stderr_text()
        rejected = _lines_with(err, "reload rejected")
        for n, what in ((i_head + 1, "request_head"), (n_unknown, "frobnicate"), (n_level, "log_level")):
            tag = "%s:%d:" % (sg.config_path, n)
            assert any(tag in ln and what in ln for ln in rejected), (tag, what, rejected)
        assert "reload: applied" not in err
        # the old configuration keeps serving, old and new connections alike
        assert get(keep, sg, P, "abc", "sandbox.test").status == 200
        assert one(sg, P, "abc", "sandbox.test").status == 200
        assert one(sg, P, "abc", "new.test").error_name == "host_unknown_domain"

        # YAML syntax error
        sg.write_config_text(good + "sandboxes: [unclosed\n")
        before = len(_lines_with(sg.stderr_text(), "reload rejected"))
        assert sg.reload() == "rejected"
        new = _lines_with(sg.stderr_text(), "reload rejected")[before:]
        assert any(re.search(re.escape(sg.config_path) + r":\d+:", ln) for ln in new), new
        assert get(keep, sg, P, "abc", "sandbox.test").status == 200

        # missing file
        import os

        os.rename(sg.config_path, sg.config_path + ".away")
        assert sg.reload() == "rejected"
        os.rename(sg.config_path + ".away", sg.config_path)
        assert get(keep, sg, P, "abc", "sandbox.test").status == 200

        # changes that need a restart
        for key, cfg in (("workers", cfg_with(["sandbox.test"], {"abc": ABC}, workers=3)),):
            sg.rewrite_config(cfg)
            before = len(_lines_with(sg.stderr_text(), "reload rejected"))
            assert sg.reload() == "rejected"
            new = _lines_with(sg.stderr_text(), "reload rejected")[before:]
            assert any("restart" in ln and key in ln for ln in new), new
        sg.listener_spec = dict(sg.listener_spec, extra={})
        sg.ports["extra"] = sg.ports["plain"] + 1 if sg.ports["plain"] < 65000 else 20000
        sg.rewrite_config(cfg_with(["sandbox.test"], {"abc": ABC}, workers=2))
        before = len(_lines_with(sg.stderr_text(), "reload rejected"))
        assert sg.reload() == "rejected"
        new = _lines_with(sg.stderr_text(), "reload rejected")[before:]
        assert any("restart" in ln and "listen" in ln for ln in new), new
        del sg.listener_spec["extra"]
        del sg.ports["extra"]
        assert get(keep, sg, P, "abc", "sandbox.test").status == 200
        assert sg.thread_names().count("sandgate-w2") == 0

        # and a good file afterwards is applied
        sg.rewrite_config(cfg_with(["sandbox.test", "new.test"], {"abc": ABC}, workers=2))
        assert sg.reload() == "applied"
        r = get(keep, sg, P, "abc", "new.test")
        assert r.status == 200 and r.json()["backend"] == "abc", r
    finally:
        keep.close()


def test_admin_reload_good_and_bad(ops_factory, backends):
    a, b = backends
    P = b.port
    sg = ops_factory(cfg_with(["sandbox.test"], {"abc": ABC}))
    assert one(sg, P, "def", "sandbox.test").error_name == "sandbox_not_found"
    sg.rewrite_config(cfg_with(["sandbox.test"], {"abc": ABC, "def": DEF}))
    r = sg.admin("POST", "/v1/reload", body=b"")
    assert r.status == 200 and r.json() == {"status": "reloaded"}, r
    r = one(sg, P, "def", "sandbox.test")
    assert r.status == 200 and r.json()["backend"] == "def", r

    with open(sg.config_path) as f:
        good = f.read()
    sg.write_config_text(good + "unknown_thing: 2\ndrain_timeout: forever\n")
    n = good.count("\n")
    r = sg.admin("POST", "/v1/reload", body=b"")
    assert r.status == 500, r
    doc = r.json()
    assert isinstance(doc.get("errors"), list) and len(doc["errors"]) == 2, doc
    assert "%s:%d:" % (sg.config_path, n + 1) in doc["errors"][0] and "unknown_thing" in doc["errors"][0]
    assert "%s:%d:" % (sg.config_path, n + 2) in doc["errors"][1] and "drain_timeout" in doc["errors"][1]
    # the same errors are in the log
    assert any("reload rejected" in ln and "unknown_thing" in ln for ln in sg.stderr_text().splitlines())
    # still the running config: def still served
    assert one(sg, P, "def", "sandbox.test").status == 200

    sg.rewrite_config(cfg_with(["sandbox.test"], {"abc": ABC}, workers=4))
    r = sg.admin("POST", "/v1/reload", body=b"")
    assert r.status == 500, r
    assert any("restart" in e and "workers" in e for e in r.json()["errors"]), r.json()
    assert one(sg, P, "def", "sandbox.test").status == 200

    assert sg.admin("GET", "/v1/reload").status == 405
    assert sg.admin("PUT", "/v1/reload", body=b"").status == 405


def test_reload_applies_limits_timeouts_and_log_level(ops_factory, backends):
    a, _ = backends
    P = a.port
    base = dict(workers=1, limits={"max_header_size": "64KiB"})
    sg = ops_factory(cfg_with(["sandbox.test"], {"abc": ABC}, **base))
    keep = Conn(sg.port)
    try:
        big = [("X-Big", "b" * 3000)]
        r = keep.request("GET", "/echo", host=h(sg, P, "abc", "sandbox.test"), headers=big)
        assert r.status == 200, r
        cfg = cfg_with(["sandbox.test"], {"abc": ABC}, workers=1, limits={"max_header_size": "2KiB"},
                       timeouts={"request_head": "300ms"}, log_level="warn")
        sg.rewrite_config(cfg)
        r = sg.admin("POST", "/v1/reload", body=b"")
        assert r.status == 200, r
        # limits: the same request on the same connection is now too large
        r = keep.request("GET", "/echo", host=h(sg, P, "abc", "sandbox.test"), headers=big)
        assert r.status == 431 and r.error_name == "headers_too_large", r
        # timeouts: a stalled head gets 408 after the new, short timeout
        with Conn(sg.port) as c:
            t0 = time.monotonic()
            c.send(b"GET /echo HTTP/1.1\r\nHost: x")
            r = c.read_response()
            took = time.monotonic() - t0
            assert r.status == 408 and r.error_name == "request_timeout", r
            assert took < 3 * SCALE, took
        # log level warn: info lines (SIGUSR1 reopen) are no longer written
        n_info = sg.stderr_text().count("access log reopened")
        sg.signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert sg.stderr_text().count("access log reopened") == n_info
        sg.rewrite_config(cfg_with(["sandbox.test"], {"abc": ABC}, **base))
        assert sg.admin("POST", "/v1/reload", body=b"").status == 200
        sg.signal(signal.SIGUSR1)
        sg.wait_log("access log reopened", n_info + 1)
        with Conn(sg.port) as c:
            r = c.request("GET", "/echo", host=h(sg, P, "abc", "sandbox.test"), headers=big)
            assert r.status == 200, r
    finally:
        keep.close()
