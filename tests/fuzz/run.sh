#!/usr/bin/env bash
# Builds every tests/fuzz/fuzz_*.c as a libFuzzer binary (clang, ASan+UBSan)
# and runs each for SECONDS_PER_HARNESS (default 60) on a scratch copy of its
# committed corpus. Prints executions per harness; exits non-zero when any
# harness crashed, leaked, hit a timeout or ran out of memory, leaving the
# input under build-fuzz/crashes/<harness>/.
#
#   tests/fuzz/run.sh [SECONDS_PER_HARNESS]
#
# Environment: FUZZ_ONLY="host config" runs just those harnesses;
# FUZZ_OUT (default build-fuzz/) the build and scratch directory;
# FUZZ_JOBS (default nproc) parallel compiles; CC (default clang);
# FUZZ_CFLAGS extra flags for the harness files only (e.g.
# -DSG_FUZZ_TOLERATE_KNOWN to fuzz past open findings, see README.md).
set -euo pipefail

SECONDS_PER=${1:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/build-fuzz}
FUZZ=$ROOT/tests/fuzz
CC=${CC:-clang}
JOBS=${FUZZ_JOBS:-$(nproc)}
LLHTTP_SRC=${LLHTTP_SRC:-/usr/share/llhttp}
LLHTTP_INC=${LLHTTP_INC:-/usr/share/include/llhttp}

# shellcheck disable=SC2054 # the commas belong to -fsanitize
# The errors: a harness that drifts from an interface it calls through (a
# hook's signature, a renamed function) must fail the build, not warn.
CFLAGS=(-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
    -Werror=incompatible-function-pointer-types -Werror=implicit-function-declaration
    -std=gnu11 -D_GNU_SOURCE -I"$ROOT/ingress" -I"$LLHTTP_INC")

# Per-harness sources (relative to ingress/; "llhttp" = the three llhttp
# files; a glob such as config/*.c follows its module's files) and libraries. A harness missing here is linked against every
# ingress source and every library (slower to build the first time, never
# wrong), so a new harness works before it gets its line.
declare -A SRCS LIBS DICT
SRCS[proxy_protocol]="net/proxy_protocol.c"
SRCS[host]="route/host.c core/slice.c"
SRCS[request_head]="llhttp http/h1.c http/h1_head.c http/head.c http/rewrite.c http/errpage.c
    route/host.c route/mask.c core/slice.c core/strbuf.c core/error.c"
LIBS[request_head]="-ljansson"
DICT[request_head]=http.dict
SRCS[response_head]="llhttp http/h1.c http/h1_head.c http/head.c http/rewrite.c core/slice.c
    core/strbuf.c"
DICT[response_head]=http.dict
SRCS[config]="config/*.c egress/policy.c route/mask.c core/slice.c core/strbuf.c core/log.c
    core/accesslog.c"
LIBS[config]="-lyaml -ljansson"
DICT[config]=config.dict
# libuv is faked inside the harness (see its header comment): not linked.
SRCS[admin_json]="llhttp admin/admin.c admin/sandboxes.c http/h1.c http/head.c route/store.c
    route/store_wal.c route/sandbox.c route/mask.c egress/egress.c egress/nft.c egress/policy.c
    core/qsbr.c core/slice.c core/strbuf.c core/log.c core/accesslog.c"
LIBS[admin_json]="-ljansson -lcrypto -lpthread"
DICT[admin_json]=admin_json.dict
SRCS[dns_txt]="route/dns_txt.c route/sandbox.c route/mask.c egress/policy.c core/slice.c
    core/strbuf.c"
LIBS[dns_txt]="-ljansson -lcrypto"
SRCS[sni]="egress/sniff.c core/slice.c"
SRCS[http_host]="llhttp egress/sniff.c core/slice.c"
SRCS[tls_record]="tls/record.c"
LIBS[tls_record]="-lcrypto"
DICT[http_host]=http.dict
ALL_LIBS="-luv -lcares -lyaml -ljansson -lssl -lcrypto -lpthread"

command -v "$CC" >/dev/null || {
    echo "run.sh: $CC not found (apt-get install clang)" >&2
    exit 2
}

harnesses=()
for f in "$FUZZ"/fuzz_*.c; do
    name=$(basename "$f" .c)
    name=${name#fuzz_}
    if [[ -n "${FUZZ_ONLY:-}" && " $FUZZ_ONLY " != *" $name "* ]]; then continue; fi
    harnesses+=("$name")
done
[[ ${#harnesses[@]} -gt 0 ]] || {
    echo "run.sh: no harness selected" >&2
    exit 2
}

mkdir -p "$OUT/obj" "$OUT/crashes" "$OUT/logs"
# One run at a time per output directory: a second one would rebuild the
# binaries and reset the scratch corpora under the first.
exec 9>"$OUT/.lock"
if ! flock -n 9; then
    echo "run.sh: waiting for another run using $OUT" >&2
    flock 9
fi

# ---- build -----------------------------------------------------------------
obj_of() { # source spec -> object path
    local s=$1
    echo "$OUT/obj/$(echo "${s%.c}" | tr '/' '_').o"
}
src_path() {
    case $1 in
    llhttp/*) echo "$LLHTTP_SRC/${1#llhttp/}" ;;
    *) echo "$ROOT/ingress/$1" ;;
    esac
}
expand() { # harness -> list of source specs
    local - spec=${SRCS[$1]:-ALL} s
    set -f # globs in SRCS are expanded under ingress/ below, not here
    if [[ $spec == ALL ]]; then
        echo llhttp/llhttp.c llhttp/api.c llhttp/http.c
        (cd "$ROOT/ingress" && find . -name '*.c' ! -path ./main.c | sed 's|^\./||' | sort)
        return
    fi
    for s in $spec; do
        if [[ $s == llhttp ]]; then
            echo llhttp/llhttp.c llhttp/api.c llhttp/http.c
        elif [[ $s == *'*'* ]]; then
            (cd "$ROOT/ingress" && compgen -G "$s" | sort)
        else
            echo "$s"
        fi
    done
}

declare -A need
for h in "${harnesses[@]}"; do
    for s in $(expand "$h"); do need[$s]=1; done
done

newest_header=$(find "$ROOT/ingress" -name '*.h' -printf '%T@\n' | sort -n | tail -1)
todo=()
for s in "${!need[@]}"; do
    src=$(src_path "$s")
    o=$(obj_of "$s")
    if [[ ! -f $o || $src -nt $o ]] ||
        { [[ $s != llhttp/* ]] && (($(stat -c %Y "$o") < ${newest_header%.*})); }; then
        todo+=("$s")
    fi
done

compile_one() {
    local s=$1 src o extra=()
    src=$(src_path "$s")
    o=$(obj_of "$s")
    [[ $s == llhttp/* ]] && extra=(-DLLHTTP_STRICT_MODE=1 -w)
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link "${extra[@]}" -c "$src" -o "$o.tmp" &&
        mv "$o.tmp" "$o"
}
export -f compile_one src_path obj_of
export ROOT OUT CC LLHTTP_SRC
export CFLAGS_STR="${CFLAGS[*]}"

t0=$(date +%s)
if [[ ${#todo[@]} -gt 0 ]]; then
    echo "== compiling ${#todo[@]} sources ($JOBS jobs)"
    # CFLAGS is an array; re-split it in the children (no spaces in paths).
    # shellcheck disable=SC2016 # expanded by the child shell
    printf '%s\n' "${todo[@]}" |
        xargs -P "$JOBS" -I{} bash -c 'CFLAGS=($CFLAGS_STR); compile_one "$1"' _ {} || {
        echo "run.sh: compile failed" >&2
        exit 2
    }
fi
pids=()
for h in "${harnesses[@]}"; do
    objs=()
    for s in $(expand "$h"); do objs+=("$(obj_of "$s")"); done
    libs=${LIBS[$h]:-}
    [[ -n ${SRCS[$h]:-} ]] || libs=$ALL_LIBS
    # shellcheck disable=SC2086 # FUZZ_CFLAGS and libs are word lists
    "$CC" "${CFLAGS[@]}" ${FUZZ_CFLAGS:-} -fsanitize=fuzzer "$FUZZ/fuzz_$h.c" "${objs[@]}" $libs \
        -o "$OUT/fuzz_$h" &
    pids+=($!)
    if [[ ${#pids[@]} -ge $JOBS ]]; then
        wait "${pids[0]}" || {
            echo "run.sh: build failed" >&2
            exit 2
        }
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p" || {
    echo "run.sh: build failed" >&2
    exit 2
}; done
echo "== built ${#harnesses[@]} harnesses in $(($(date +%s) - t0)) s"

# ---- run -------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# Harnesses run FUZZ_RUN_JOBS at a time (default: one per core); each is
# single-threaded, so on 2 cores the step takes half the wall time.
RUN_JOBS=${FUZZ_RUN_JOBS:-$(nproc)}
run_one() {
    local h=$1 scratch=$OUT/corpus/$1 crashes=$OUT/crashes/$1 log=$OUT/logs/$1.log rc=0
    local opts=(-max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$crashes/")
    if [[ -n ${DICT[$h]:-} && -f $FUZZ/${DICT[$h]} ]]; then opts+=(-dict="$FUZZ/${DICT[$h]}"); fi
    "$OUT/fuzz_$h" "${opts[@]}" "$scratch" >"$log" 2>&1 || rc=$?
    echo "$rc" >"$OUT/logs/$h.rc"
}
running=()
for h in "${harnesses[@]}"; do
    scratch=$OUT/corpus/$h
    rm -rf "$scratch" "$OUT/logs/$h.rc"
    mkdir -p "$scratch" "$OUT/crashes/$h"
    if [[ -d $FUZZ/corpus/$h ]]; then cp -r "$FUZZ/corpus/$h/." "$scratch/"; fi
    echo "== fuzz_$h (${SECONDS_PER}s, $(find "$scratch" -type f | wc -l) seeds)"
    run_one "$h" &
    running+=($!)
    if [[ ${#running[@]} -ge $RUN_JOBS ]]; then
        wait "${running[0]}" || true
        running=("${running[@]:1}")
    fi
done
for p in "${running[@]}"; do wait "$p" || true; done
failed=()
summary=()
for h in "${harnesses[@]}"; do
    log=$OUT/logs/$h.log
    rc=$(cat "$OUT/logs/$h.rc" 2>/dev/null || echo "?")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    summary+=("$(printf '%-16s execs=%-10s rc=%s' "$h" "${execs:-?}" "$rc")")
    if [[ $rc != 0 ]]; then
        failed+=("$h")
        echo "!! fuzz_$h failed (exit $rc); log: $log"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*CHECK failed|.*runtime error)' "$log" | head -5 || true
        art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        if [[ -n $art ]]; then
            echo "!! input: $art"
            echo "!! reproduce: $OUT/fuzz_$h $art"
        fi
    fi
done

echo "== summary (${SECONDS_PER}s per harness, total $(($(date +%s) - t0)) s)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all harnesses clean"
