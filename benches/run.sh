#!/usr/bin/env bash
# Benchmark driver for piqchat-inbox.
#
# Builds release, then on this machine (loopback only):
#   1. the ceilings every result is read against: the disk's fsync rate
#      (4 KiB write + fdatasync; 100 KiB files by 1 and 8 writers), Ed25519
#      verifications per second, and `piqchat-load hello` (a minimal hyper
#      server) under the info scenario over each protocol,
#   2. cold start (spawn -> first served GetInfo; median of many runs) and
#      idle RSS,
#   3. every scenario with piqchat-load, each against a freshly started
#      server (so peak RSS is per scenario): grpc for all, grpc-web and json
#      for info / list / send-100k; list-big / info-big on a database seeded
#      with 1,000,000 parcels of other users before the server starts,
#   4. opt-in: the under-attack scenario (SCENARIOS="under-attack", over gRPC
#      unless ALL_PROTOCOLS=1): legitimate lists and sends measured per phase
#      while an attacker floods; DURATION / WARMUP are per phase and
#      CONCURRENCY is the flood's requests in flight,
# and writes results.json and results.md into $OUT; results.md gives each
# scenario's server CPU per call and its fraction of the ceiling that bounds it.
#
# Settings (environment):
#   DURATION=10s WARMUP=2s CONCURRENCY=64   load shape
#   SCENARIOS="info list ..."               subset of scenarios (under-attack only when listed)
#   ATTACK_ARGS="--slow-uploads 100 ..."    further piqchat-load options for under-attack
#   SERVER_NOFILE=1024                      the server's open-file limit (default: inherited)
#   ALL_PROTOCOLS=1                         every scenario over all three protocols
#   BIG_PARCELS=1000000                     size of the seeded database
#   COLDSTART_RUNS=20                       cold start runs
#   OUT=bench-results/<time>                where results go
#   KEEP=1                                  keep the temp folder (databases, server logs)
#   MICRO=1                                 also run the criterion micro-benchmarks
#   CARGO_TARGET_DIR                        as for cargo
#   RATE_LIMITS=off                         the server's rate limits (off by default here)
# The server runs with its defaults (plus BIND_ADDRESS=127.0.0.1 and a free
# port); anything else in the environment that the server reads (RUST_LOG,
# MAX_..., ...) is passed through unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-64}
SCENARIOS=${SCENARIOS:-"info list send-100k send-group exchange accept download-1m list-big info-big"}
BIG_PARCELS=${BIG_PARCELS:-1000000}
COLDSTART_RUNS=${COLDSTART_RUNS:-20}
OUT=${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-target}
# The load generator drives a few keys from one address far past any rate
# limit meant for people; RATE_LIMITS=on (or single RATE_LIMIT_* values)
# measures with them.
export RATE_LIMITS=${RATE_LIMITS:-off}

echo "== building (release)"
cargo build --release --bins
SERVER=$(realpath "$TARGET/release/piqchat-inbox")
LOAD=$(realpath "$TARGET/release/piqchat-load")
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/piqchat-bench.XXXXXX")
LABEL=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

SERVER_PID=
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
cleanup() {
    stop_server
    if [[ "${KEEP:-}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# start_server DIR: starts the server on DIR/inbox.sqlite on a free loopback
# port; sets SERVER_PID and URL.
start_server() {
    local dir=$1
    mkdir -p "$dir"
    (
        cd "$dir"
        if [[ -n "${SERVER_NOFILE:-}" ]]; then
            ulimit -n "$SERVER_NOFILE"
        fi
        exec env DATABASE_PATH="$dir/inbox.sqlite" \
            PARCEL_ATTACHMENTS_UPLOAD_PATH="$dir/attachments" \
            BIND_ADDRESS=127.0.0.1 PORT=0 \
            "$SERVER" serve >"$dir/server.log" 2>&1
    ) &
    SERVER_PID=$!
    local addr=
    for _ in $(seq 1 300); do
        addr=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/server.log" 2>/dev/null |
            grep -o 'addr=127\.0\.0\.1:[0-9]*' | head -1 | cut -d= -f2 || true)
        [[ -n "$addr" ]] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            cat "$dir/server.log" >&2
            echo "the server did not start" >&2
            exit 1
        fi
        sleep 0.05
    done
    [[ -n "$addr" ]] || { echo "the server did not report its address" >&2; exit 1; }
    URL="http://$addr"
}

echo "== machine"
{
    echo "commit: $LABEL"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "load: duration $DURATION, warm-up $WARMUP, $CONCURRENCY connections"
} | tee "$OUT/machine.txt"

echo "== disk fsync rate"
"$LOAD" fsync --dir "$WORK" --json "$OUT/fsync.json"

echo "== Ed25519 verification rate"
"$LOAD" verify --json "$OUT/verify.json"

echo "== hello-world ceiling (a minimal hyper server, same scenarios)"
"$LOAD" hello >"$WORK/hello.log" 2>&1 &
HELLO_PID=$!
hello_addr=
for _ in $(seq 1 100); do
    hello_addr=$(grep -o 'addr=127\.0\.0\.1:[0-9]*' "$WORK/hello.log" | head -1 | cut -d= -f2 || true)
    [[ -n "$hello_addr" ]] && break
    sleep 0.05
done
[[ -n "$hello_addr" ]] || { cat "$WORK/hello.log" >&2; echo "hello did not start" >&2; exit 1; }
for protocol in grpc grpc-web json; do
    "$LOAD" run --url "http://$hello_addr" --scenario info --protocol "$protocol" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
        --server-pid "$HELLO_PID" --label hello-world \
        --json "$OUT/hello-$protocol.json" || echo "!! hello-world over $protocol failed"
done
kill "$HELLO_PID" 2>/dev/null || true
wait "$HELLO_PID" 2>/dev/null || true

echo "== cold start and idle RSS"
"$LOAD" coldstart --server-bin "$SERVER" --runs "$COLDSTART_RUNS" --dir "$WORK/coldstart" \
    --json "$OUT/coldstart.json"

protocols_for() {
    if [[ "${ALL_PROTOCOLS:-}" == 1 ]]; then
        echo "grpc grpc-web json"
        return
    fi
    case $1 in
        info | list | send-100k) echo "grpc grpc-web json" ;;
        *) echo "grpc" ;;
    esac
}

seeded=
for scenario in $SCENARIOS; do
    for protocol in $(protocols_for "$scenario"); do
        case $scenario in
            list-big | info-big)
                dir=$WORK/big
                if [[ -z "$seeded" ]]; then
                    echo "== seeding $BIG_PARCELS parcels (server stopped)"
                    mkdir -p "$dir"
                    "$LOAD" seed --database "$dir/inbox.sqlite" --parcels "$BIG_PARCELS" \
                        --json "$OUT/seed.json"
                    seeded=1
                fi
                ;;
            *)
                dir=$WORK/$scenario-$protocol
                ;;
        esac
        extra=()
        if [[ "$scenario" == under-attack ]]; then
            # shellcheck disable=SC2206 # options are split on purpose
            extra=(${ATTACK_ARGS:-})
        fi
        echo "== $scenario over $protocol"
        start_server "$dir"
        (
            # The attacker of under-attack holds about 2,600 connections.
            [[ "$scenario" != under-attack ]] || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
            exec "$LOAD" run --url "$URL" --database "$dir/inbox.sqlite" \
                --scenario "$scenario" --protocol "$protocol" \
                --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
                --server-pid "$SERVER_PID" --label "$LABEL" \
                --json "$OUT/run-$scenario-$protocol.json" "${extra[@]}"
        ) || echo "!! $scenario over $protocol failed"
        stop_server
        # Attachments of the send scenarios are not needed any more.
        [[ "$dir" == "$WORK/big" ]] || rm -rf "$dir"
    done
done

echo "== report"
files=("$OUT"/fsync.json "$OUT"/verify.json "$OUT"/coldstart.json)
for f in "$OUT"/hello-*.json; do
    [[ -f "$f" ]] && files+=("$f")
done
[[ -f "$OUT/seed.json" ]] && files+=("$OUT/seed.json")
for f in "$OUT"/run-*.json; do
    [[ -f "$f" ]] && files+=("$f")
done
"$LOAD" report "${files[@]}" --json "$OUT/results.json" --markdown "$OUT/table.md"
{
    echo "# piqchat-inbox benchmark"
    echo
    sed 's/^/    /' "$OUT/machine.txt"
    echo
    cat "$OUT/table.md"
} >"$OUT/results.md"
rm -f "$OUT/table.md"

if [[ "${MICRO:-}" == 1 ]]; then
    echo "== micro-benchmarks"
    cargo bench --bench auth --bench gateway --bench store 2>&1 | tee "$OUT/micro.txt"
fi

echo "results: $OUT/results.md and $OUT/results.json"
