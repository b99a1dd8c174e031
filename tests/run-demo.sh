#!/bin/sh
# `make run`: a demo sandbox service on 127.0.0.1:3000 and sandgate on its
# embedded default config in front of it. Ctrl-C stops both.
set -eu
BIN=${1:-build/sandgate}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO_DIR=$(mktemp -d)
cat >"$DEMO_DIR/index.html" <<'HTML'
<!doctype html><title>sandgate demo</title>
<h1>Hello from the demo sandbox</h1>
<p>This page is served by a process on 127.0.0.1:3000 and reached through sandgate.</p>
HTML
/usr/bin/python3 -m http.server 3000 --bind 127.0.0.1 --directory "$DEMO_DIR" >/dev/null 2>&1 &
DEMO_PID=$!
cleanup() {
    kill "$DEMO_PID" 2>/dev/null || true
    rm -rf "$DEMO_DIR"
}
trap cleanup EXIT INT TERM

CERT=$("$ROOT/certs/make-dev-certs.sh" sandbox.localhost "$ROOT/certs/dev")
KEY=${CERT%.pem}.key

cat <<MSG

sandgate is starting on its embedded default config (domain sandbox.localhost,
sandbox "demo" at 127.0.0.1) with plain HTTP on 127.0.0.1:8080 and HTTPS on
127.0.0.1:8443 (development certificate from certs/dev/). Try:

    curl http://3000-demo.sandbox.localhost:8080/
    curl --cacert $ROOT/certs/dev/ca.pem https://3000-demo.sandbox.localhost:8443/

If your resolver does not map *.localhost to 127.0.0.1, add
    --resolve 3000-demo.sandbox.localhost:8443:127.0.0.1

Unknown sandbox and closed port, for the error pages:

    curl http://3000-nosuch.sandbox.localhost:8080/
    curl http://3999-demo.sandbox.localhost:8080/

Ctrl-C stops sandgate and the demo service.

MSG
"$ROOT/$BIN" --listen 127.0.0.1:8080 --listen-tls 127.0.0.1:8443 --tls-cert "$CERT,$KEY" || true
