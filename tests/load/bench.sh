#!/bin/sh
# Side-by-side benchmark: sandgate vs nginx vs HAProxy (see tests/load/README.md).
#   tests/load/bench.sh            full run (~15 minutes)
#   QUICK=1 tests/load/bench.sh    short run (~2 minutes)
# Installs wrk, nginx-light and haproxy when missing (Debian packages; their
# distro services are kept from starting), builds sandgate when its binary is
# missing, then hands over to bench.py, which starts and stops every process.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

need=""
command -v wrk >/dev/null 2>&1 || need="$need wrk"
[ -x /usr/sbin/nginx ] || need="$need nginx-light"
[ -x /usr/sbin/haproxy ] || need="$need haproxy"
if [ "${BENCH_PROFILE:-0}" = 1 ]; then
    command -v valgrind >/dev/null 2>&1 || need="$need valgrind"
    command -v perf >/dev/null 2>&1 || need="$need linux-perf"
fi
command -v cc >/dev/null 2>&1 || need="$need gcc"
[ -f /usr/include/openssl/ssl.h ] || need="$need libssl-dev"
if [ -n "$need" ]; then
    echo "bench: installing$need" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    # Keep the packages' own nginx/haproxy services from starting.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
    [ "$own_policy" -eq 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x "${SANDGATE_BIN:-$ROOT/build/sandgate}" ]; then
    make -C "$ROOT" build
fi

# 10,000 idle connections need more than the usual 1024 descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec /usr/bin/python3 "$HERE/bench.py" "$@"
