#!/usr/bin/python3
"""Docker stage of the CI: the sandgate image and the compose stack, end to end.

    /usr/bin/python3 tests/docker/test_docker.py        (as root)

1. Uses the running Docker engine, or starts dockerd itself (and stops that
   one, by PID, at the end). Prints "SKIP: <reason>" and exits 0 only when
   no engine can run here at all (dockerd does not come up).
2. Base image: $SANDGATE_BASE_IMAGE, else debian:bookworm-slim (local or
   pulled), else a local one from debootstrap (docker/make-base-image.sh,
   tarball cached in /var/cache/sandgate-docker between runs).
3. Builds the sandgate image from a temporary context holding only
   CMakeLists.txt, ingress/ and docker/, and the sample image; checks the
   image size (< 60 MB) and that it runs as a non-root user.
4. docker-compose up (docker/compose.yaml, ports published on free loopback
   ports), then through sandgate: HTTPS and plain HTTP to the echo sandbox
   (found through the DNS zone, Host masked to localhost:3000), an unknown
   sandbox (502), a sandbox registered through the admin API, a WebSocket
   over TLS to the WebSocket sandbox, a short wrk run (`load` profile), and
   `docker-compose stop sandgate` while a slow request is in flight (the
   request completes with 200, sandgate exits 0).
5. down -v, removes the images it tagged and its temporary files; keeps the
   base image and the build cache so the next run is quick.

Environment: DOCKER (CLI; default /usr/bin/docker when present: Debian's CLI
matches Debian's daemon), DOCKER_COMPOSE (default docker-compose, else
`docker compose`), SANDGATE_BASE_IMAGE, SANDGATE_DOCKER_CACHE,
DOCKER_BUILDKIT (default 1), SANDGATE_DOCKER_KEEP=1 (leave the stack up
after a failure, for inspection).
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
CA = REPO / "certs" / "dev" / "ca.pem"
DOMAIN = "sandbox.localhost"
MAX_IMAGE_BYTES = 60 * 1000 * 1000
BUDGET_SECONDS = 600
ADMIN_TOKEN = "sandgate-compose-dev-token"  # docker/sandgate.yaml
RUN_ID = f"{os.getpid()}"
PROJECT = f"sandgate-test-{RUN_ID}"
IMAGE = f"sandgate:test-{RUN_ID}"
SAMPLES_IMAGE = f"sandgate-samples:test-{RUN_ID}"
T0 = time.monotonic()


class Skip(Exception):
    pass


class Fail(Exception):
    pass


def log(msg):
    print(f"[docker {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def docker_cli():
    if os.environ.get("DOCKER"):
        return os.environ["DOCKER"].split()
    if os.path.exists("/usr/bin/docker"):
        return ["/usr/bin/docker"]
    found = shutil.which("docker")
    if not found:
        raise Fail("no docker CLI: install docker.io (and docker-compose, debootstrap); see .ci/install-deps")
    return [found]


DOCKER = docker_cli()


def run(cmd, check=True, timeout=300, capture=True, env=None, **kw):
    """Runs cmd; returns CompletedProcess (stdout/stderr text when captured)."""
    try:
        p = subprocess.run(cmd, check=False, timeout=timeout, text=True,
                           stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.PIPE if capture else None,
                           env=env, **kw)
    except subprocess.TimeoutExpired:
        raise Fail(f"timed out after {timeout}s: {' '.join(map(str, cmd))}")
    if check and p.returncode != 0:
        out = ((p.stdout or "") + (p.stderr or ""))[-4000:] if capture else ""
        raise Fail(f"exit {p.returncode}: {' '.join(map(str, cmd))}\n{out}")
    return p


def docker(*args, **kw):
    return run(DOCKER + list(args), **kw)


def engine_up():
    try:
        return subprocess.run(DOCKER + ["info", "--format", "{{.ServerVersion}}"], timeout=20,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class Dockerd:
    """A dockerd started by this test, stopped (by PID) when the test ends."""

    def __init__(self, workdir):
        self.proc = None
        self.log_path = Path(workdir) / "dockerd.log"

    def start(self):
        exe = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(exe):
            raise Fail("no Docker engine running and no dockerd: install docker.io (see .ci/install-deps)")
        if os.geteuid() != 0:
            raise Skip("no Docker engine running, and starting dockerd needs root")
        base = [exe, "--host=unix:///var/run/docker.sock", "--pidfile=/run/sandgate-test-dockerd.pid"]
        # Default networking first; without usable iptables, published ports
        # still work through docker-proxy and builds use the host network.
        for extra in ([], ["--iptables=false", "--ip-masq=false"]):
            log(f"starting {' '.join(base[:1] + extra)}")
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(base + extra, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                if engine_up():
                    log(f"dockerd up (pid {self.proc.pid})")
                    return
                time.sleep(0.5)
            self.stop()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise Skip("dockerd cannot run here: " + " | ".join(tail))

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        log(f"stopping the dockerd this test started (pid {self.proc.pid})")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def compose_cli():
    if os.environ.get("DOCKER_COMPOSE"):
        return os.environ["DOCKER_COMPOSE"].split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(DOCKER + ["compose", "version"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode == 0:
        return DOCKER + ["compose"]
    raise Fail("no docker-compose: install docker-compose (see .ci/install-deps)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_image():
    forced = os.environ.get("SANDGATE_BASE_IMAGE")
    if forced:
        return forced
    if docker("image", "inspect", "debian:bookworm-slim", check=False).returncode == 0:
        return "debian:bookworm-slim"
    p = docker("pull", "-q", "debian:bookworm-slim", check=False, timeout=120)
    if p.returncode == 0:
        return "debian:bookworm-slim"
    why = ((p.stderr or "").strip().splitlines() or ["?"])[-1][:160]
    log(f"debian:bookworm-slim cannot be pulled ({why}): local base image from debootstrap")
    env = dict(os.environ, DOCKER=" ".join(DOCKER))
    p = run([str(REPO / "docker" / "make-base-image.sh"), "sandgate-base:bookworm"], env=env,
            timeout=900, capture=True)
    return p.stdout.strip().splitlines()[-1]


def build_images(base, workdir):
    env = dict(os.environ)
    env.setdefault("DOCKER_BUILDKIT", "1")
    ctx = Path(workdir) / "context"
    ctx.mkdir()
    shutil.copy2(REPO / "CMakeLists.txt", ctx)
    shutil.copytree(REPO / "ingress", ctx / "ingress")
    shutil.copytree(REPO / "docker", ctx / "docker")
    # --network host: builds need the Debian mirror, and do not depend on
    # the engine's NAT that way.
    common = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}"]
    t = time.monotonic()
    docker(*common, "-f", str(ctx / "docker" / "Dockerfile"), "-t", IMAGE, str(ctx), env=env, timeout=900)
    log(f"built {IMAGE} in {time.monotonic() - t:.0f}s")
    t = time.monotonic()
    docker(*common, "-t", SAMPLES_IMAGE, str(REPO / "docker" / "samples"), env=env, timeout=900)
    log(f"built {SAMPLES_IMAGE} in {time.monotonic() - t:.0f}s")


def check_image():
    info = json.loads(docker("image", "inspect", IMAGE).stdout)[0]
    size = info["Size"]
    log(f"image size {size / 1e6:.1f} MB (limit {MAX_IMAGE_BYTES / 1e6:.0f} MB)")
    if size >= MAX_IMAGE_BYTES:
        raise Fail(f"image {IMAGE} is {size} bytes, over {MAX_IMAGE_BYTES}")
    user = info["Config"].get("User") or ""
    if user.split(":")[0] in ("", "0", "root"):
        raise Fail(f"image runs as root (Config.User={user!r})")
    if not (info["Config"].get("Healthcheck") or {}).get("Test"):
        raise Fail("image has no HEALTHCHECK")
    if info["Config"].get("StopSignal") not in ("SIGTERM", None):
        raise Fail(f"stop signal {info['Config'].get('StopSignal')}")
    out = docker("run", "--rm", IMAGE, "--version").stdout.strip()
    log(f"image user {user}, `--version`: {out}")


class Stack:
    def __init__(self, base):
        self.cmd = compose_cli() + ["-f", str(COMPOSE_FILE), "-p", PROJECT]
        self.https, self.http, self.admin = free_port(), free_port(), free_port()
        self.env = dict(os.environ, BASE_IMAGE=base, SANDGATE_IMAGE=IMAGE,
                        SANDGATE_SAMPLES_IMAGE=SAMPLES_IMAGE,
                        SANDGATE_HTTPS_PORT=str(self.https), SANDGATE_HTTP_PORT=str(self.http),
                        SANDGATE_ADMIN_PORT=str(self.admin))
        self.env.pop("COMPOSE_PROFILES", None)

    def __call__(self, *args, **kw):
        kw.setdefault("env", self.env)
        return run(self.cmd + list(args), **kw)

    def container(self, service):
        cid = self("ps", "-q", service).stdout.strip()
        if not cid:
            raise Fail(f"no container for service {service}")
        return cid

    def logs(self, *services):
        return self("logs", "--no-color", *services, check=False).stdout


def curl(url, *extra, timeout=30):
    """HTTPS/HTTP request through sandgate on loopback: (status, headers, body)."""
    host = url.split("/")[2]
    name, _, port = host.partition(":")
    with tempfile.NamedTemporaryFile("r") as hdr:
        p = run(["curl", "-sS", "--max-time", str(timeout), "--cacert", str(CA),
                 "--resolve", f"{name}:{port}:127.0.0.1", "-D", hdr.name, "-o", "-", *extra, url],
                check=False, timeout=timeout + 5)
        head = hdr.read()
    if p.returncode != 0:
        raise Fail(f"curl {url}: exit {p.returncode}: {p.stderr.strip()}")
    lines = head.strip().splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, p.stdout


def wait_healthy(stack, service, timeout=90):
    cid = stack.container(service)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = json.loads(docker("inspect", "-f", "{{json .State}}", cid).stdout)
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return cid
        if not state.get("Running"):
            raise Fail(f"{service} exited ({state.get('ExitCode')}):\n{stack.logs(service)[-3000:]}")
        time.sleep(0.5)
    raise Fail(f"{service} not healthy after {timeout}s:\n{stack.logs(service)[-3000:]}")


def expect(cond, what, detail=""):
    if not cond:
        raise Fail(f"{what}\n{detail}"[:4000])
    log(f"ok: {what}")


def retry_until_200(url, timeout=30):
    """The sample sandboxes start alongside sandgate: wait for their ports."""
    deadline = time.monotonic() + timeout
    while True:
        status, headers, body = curl(url)
        if status == 200 or time.monotonic() > deadline:
            return status, headers, body
        time.sleep(0.5)


async def websocket_roundtrip(port):
    import websockets  # Debian's python3-websockets

    ctx = ssl.create_default_context(cafile=str(CA))
    name = f"8000-ws.{DOMAIN}"
    async with websockets.connect(f"wss://{name}:{port}/", ssl=ctx, host="127.0.0.1", port=port,
                                  server_hostname=name, open_timeout=15) as ws:
        await ws.send("hello through sandgate")
        echo = await asyncio.wait_for(ws.recv(), 10)
        await ws.send(b"\x00\x01binary\xff")
        echo_bin = await asyncio.wait_for(ws.recv(), 10)
        await ws.send("__host__")
        host = await asyncio.wait_for(ws.recv(), 10)
    return echo, echo_bin, host


def exercise(stack):
    https = f"https://3000-echo.{DOMAIN}:{stack.https}"

    # HTTPS to the echo sandbox, looked up in the DNS zone, Host masked.
    status, headers, body = retry_until_200(f"{https}/hello?x=1")
    expect(status == 200, "HTTPS GET through sandgate reaches the echo sandbox", body)
    seen = json.loads(body)
    expect(seen["host"] == "localhost:3000", "mask from the DNS TXT record: echo saw Host localhost:3000",
           seen)
    fwd = {k.lower(): v for k, v in seen["headers"]}
    expect(fwd.get("x-forwarded-host") == f"3000-echo.{DOMAIN}:{stack.https}"
           and fwd.get("x-forwarded-proto") == "https", "X-Forwarded-Host/-Proto set", seen)
    expect(seen["path"] == "/hello?x=1", "request target forwarded unchanged", seen)
    dns_log = stack.logs("dns")
    expect("query[A] echo.sandboxes.internal" in dns_log and "query[TXT] echo.sandboxes.internal" in dns_log,
           "sandgate looked echo up in the DNS zone (dnsmasq log)", dns_log[-2000:])

    status, _, body = curl(f"{https}/upload", "--data-binary", "@" + str(COMPOSE_FILE))
    expect(status == 200 and json.loads(body)["body_length"] == COMPOSE_FILE.stat().st_size,
           "POST body forwarded whole", body)

    status, _, body = curl(f"http://3000-echo.{DOMAIN}:{stack.http}/plain")
    expect(status == 200 and json.loads(body)["host"] == "localhost:3000", "plain HTTP listener works", body)

    status, headers, body = curl(f"https://3000-nosuchbox.{DOMAIN}:{stack.https}/")
    expect(status == 502 and headers.get("x-sandgate-error") == "sandbox_not_found",
           "unknown sandbox (NXDOMAIN): 502 sandbox_not_found", body)

    # Admin API on the published port: health without a token, registration
    # with it; the registered sandbox (no mask) answers with Host unchanged.
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.admin}/healthz", timeout=10) as r:
        expect(r.status == 200, "admin /healthz on the published admin port")
    req = urllib.request.Request(f"http://127.0.0.1:{stack.admin}/v1/sandboxes/adm", method="PUT",
                                 data=json.dumps({"address": "172.30.0.10"}).encode(),
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        expect(r.status in (200, 201), "sandbox registered through the admin API")
    status, _, body = curl(f"https://3000-adm.{DOMAIN}:{stack.https}/")
    expect(status == 200 and json.loads(body)["host"] == f"3000-adm.{DOMAIN}:{stack.https}",
           "admin-registered sandbox reached, Host unchanged without a mask", body)

    # WebSocket over TLS to the WebSocket sandbox.
    echo, echo_bin, host = asyncio.run(websocket_roundtrip(stack.https))
    expect(echo == "hello through sandgate" and echo_bin == b"\x00\x01binary\xff",
           "WebSocket (wss) text and binary messages echoed through sandgate", (echo, echo_bin))
    expect(host == f"8000-ws.{DOMAIN}:{stack.https}", "WebSocket upgrade carried the public Host", host)

    # Non-root at run time: every process of the container.
    cid = stack.container("sandgate")
    top = docker("top", cid, "-o", "uid,pid,comm").stdout.strip().splitlines()[1:]
    uids = {line.split()[0] for line in top}
    expect(top and "0" not in uids and "root" not in uids, f"container processes run as uid {sorted(uids)}",
           "\n".join(top))

    # The `load` profile: a short wrk run inside the compose network.
    p = stack("--profile", "load", "run", "--rm", "load", "-t1", "-c4", "-d2s",
              f"https://3000-echo.{DOMAIN}:8443/", timeout=120)
    expect("Requests/sec" in p.stdout and "Non-2xx" not in p.stdout and "Socket errors" not in p.stdout,
           "load profile (wrk) ran without errors", p.stdout)


def drain(stack):
    """docker-compose stop while a slow request is in flight: it completes."""
    cid = stack.container("sandgate")
    url = f"https://3000-echo.{DOMAIN}:{stack.https}/slow?seconds=3"
    out = tempfile.NamedTemporaryFile("r")
    slow = subprocess.Popen(["curl", "-sS", "--max-time", "30", "--cacert", str(CA), "--resolve",
                             f"3000-echo.{DOMAIN}:{stack.https}:127.0.0.1", "-o", out.name,
                             "-w", "%{http_code}", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # Stop only once the request is in flight: the echo service logs it.
    echo = stack.container("echo")
    deadline = time.monotonic() + 15
    while docker("logs", echo).stderr.count("slow request started") < 1:
        if time.monotonic() > deadline or slow.poll() is not None:
            raise Fail("the slow request did not reach the echo sandbox")
        time.sleep(0.1)
    t = time.monotonic()
    stack("stop", "sandgate", timeout=60)
    stopped_in = time.monotonic() - t
    code, err = slow.communicate(timeout=30)
    body = out.read()
    out.close()
    expect(slow.returncode == 0 and code == "200" and '"/slow?seconds=3"' in body,
           f"in-flight request completed with 200 during `stop` (stop took {stopped_in:.1f}s)",
           f"curl exit {slow.returncode} code {code} {err}\n{body}")
    state = json.loads(docker("inspect", "-f", "{{json .State}}", cid).stdout)
    logs = stack.logs("sandgate")
    expect(state["ExitCode"] == 0 and "draining" in logs,
           "sandgate drained on SIGTERM and exited 0 (not killed)", f"{state}\n{logs[-2000:]}")


def main():
    if os.geteuid() != 0:
        print("SKIP: the Docker test needs root (dockerd, debootstrap)")
        return 0
    for tool in ("curl",):
        if not shutil.which(tool):
            raise Fail(f"{tool} missing (see .ci/install-deps)")
    workdir = tempfile.mkdtemp(prefix="sandgate-docker-")
    dockerd = Dockerd(workdir)
    stack = None
    built = False
    ok = False
    try:
        if not engine_up():
            dockerd.start()
        else:
            log("using the running Docker engine")
        compose_cli()
        base = base_image()
        log(f"base image {base}")
        build_images(base, workdir)
        built = True
        check_image()

        run([str(REPO / "certs" / "make-dev-certs.sh"), DOMAIN], timeout=60)
        stack = Stack(base)
        t = time.monotonic()
        stack("up", "-d", "--no-build", timeout=180)
        wait_healthy(stack, "sandgate")
        log(f"stack up and healthy in {time.monotonic() - t:.1f}s (https 127.0.0.1:{stack.https}, "
            f"http :{stack.http}, admin :{stack.admin})")
        exercise(stack)
        drain(stack)
        ok = True
    finally:
        keep = not ok and os.environ.get("SANDGATE_DOCKER_KEEP") == "1"
        if stack and not keep:
            if not ok:
                print(stack.logs()[-6000:], file=sys.stderr)
            stack("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=120)
        elif keep:
            log(f"SANDGATE_DOCKER_KEEP=1: stack {PROJECT} left up")
        if built and not keep:
            docker("image", "rm", IMAGE, SAMPLES_IMAGE, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        if not keep:
            dockerd.stop()
    total = time.monotonic() - T0
    log(f"PASS in {total:.0f}s")
    if total > BUDGET_SECONDS:
        log(f"WARNING: over the {BUDGET_SECONDS}s budget of the docker stage")
    return 0


def on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sys.exit(main())
    except Skip as e:
        print(f"SKIP: {e}")
        sys.exit(0)
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
