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
#      for info / list / send-100k / send-one; list-big / info-big on a
#      database seeded with 1,000,000 parcels of other users before the
#      server starts; send-one (every connection into ONE recipient) twice
#      back to back on the same server and database, with a quota high
#      enough for both; backlog: send-one into a recipient with N parcels
#      already waiting, seeded before the server starts, once per N,
#   3b. with PEER_URL: the same scenarios against the original Node server
#      (JSON only; today `info`), each right after ours,
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
#   PROTOCOLS="grpc"                        every scenario over just these protocols
#   BIG_PARCELS=1000000                     size of the seeded database
#   BACKLOG="0 1000 10000"                  parcels waiting for the backlog scenario's recipient
#                                           (one server and one run per value; 100 KiB
#                                           attachment rows, sparse files)
#   SEND_ONE_ROUNDS=2                       timed phases of send-one on one server
#   SERVER_BIN=path/to/piqchat-inbox        measure this server binary instead of the one built here
#   HIGH_QUOTA_PARCELS=1000000              the waiting-parcel quota per recipient for send-one
#   HIGH_QUOTA_BYTES=1099511627776          and backlog (the configuration's maxima)
#   PEER_URL=http://127.0.0.1:3000          the original Node server (loopback), measured right
#                                           after ours in each scenario it supports (info)
#   PEER_PID=<pid>                          its PID, for its CPU per call and RSS
#   PEER_PREFIX=/api                        where the peer mounts its routes
#   COLDSTART_RUNS=20                       cold start runs
#   OUT=bench-results/<time>                where results go
#   KEEP=1                                  keep the temp folder (databases, server logs)
#   MICRO=1                                 also run the criterion micro-benchmarks
#   CARGO_TARGET_DIR                        as for cargo
#   RATE_LIMITS=off                         the server's rate limits (off by default here)
#   BACKENDS="sqlite"                       what the server stores in, each scenario once per entry:
#                                           sqlite (its own file), postgres (a fresh database per
#                                           scenario on BENCH_DATABASE_URL), postgres-2 (two
#                                           instances on one fresh database and one attachment
#                                           folder; the connections alternate between them and
#                                           their CPU is summed). list-big / info-big are seeded
#                                           in SQLite and run on sqlite only; under-attack does
#                                           not run on postgres-2 (it drives one server).
#   BENCH_DATABASE_URL=postgres://...       PostgreSQL admin URL for postgres / postgres-2 (a
#                                           loopback server; needs CREATE DATABASE; psql must be
#                                           installed). Every scenario gets its own database
#                                           piqchat_bench_*, dropped afterwards (kept with KEEP=1).
# The server runs with its defaults (plus BIND_ADDRESS=127.0.0.1 and a free
# port); anything else in the environment that the server reads (RUST_LOG,
# MAX_..., ...) is passed through unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-64}
SCENARIOS=${SCENARIOS:-"info list send-100k send-group send-one backlog exchange accept download-1m list-big info-big"}
BACKLOG=${BACKLOG:-"0 1000 10000"}
SEND_ONE_ROUNDS=${SEND_ONE_ROUNDS:-2}
HIGH_QUOTA_PARCELS=${HIGH_QUOTA_PARCELS:-1000000}
HIGH_QUOTA_BYTES=${HIGH_QUOTA_BYTES:-1099511627776}
# Scenarios piqchat-load can run against the Node peer (its unsigned calls).
PEER_SCENARIOS="info"
BIG_PARCELS=${BIG_PARCELS:-1000000}
COLDSTART_RUNS=${COLDSTART_RUNS:-20}
OUT=${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-target}
# The load generator drives a few keys from one address far past any rate
# limit meant for people; RATE_LIMITS=on (or single RATE_LIMIT_* values)
# measures with them.
export RATE_LIMITS=${RATE_LIMITS:-off}
# One sender signs every send of send-100k / send-one: at the disk's rate
# that passes the default 10,000 live nonces per key within a run.
export NONCE_MAX_PER_KEY=${NONCE_MAX_PER_KEY:-10000000}
BACKENDS=${BACKENDS:-sqlite}
for backend in $BACKENDS; do
    case $backend in
        sqlite) ;;
        postgres | postgres-2)
            if [[ -z "${BENCH_DATABASE_URL:-}" ]]; then
                echo "BACKENDS=$BACKENDS needs BENCH_DATABASE_URL (a PostgreSQL admin URL, e.g. postgres://postgres@127.0.0.1:5432/postgres)" >&2
                exit 1
            fi
            command -v psql >/dev/null || { echo "the postgres backends need psql (to create the databases)" >&2; exit 1; }
            ;;
        *)
            echo "unknown backend $backend in BACKENDS: use sqlite, postgres or postgres-2" >&2
            exit 1
            ;;
    esac
done

echo "== building (release)"
cargo build --release --bins
# SERVER_BIN: another build of the server to measure (e.g. an earlier
# commit's, for before/after in one sitting); the load generator is this one.
SERVER=$(realpath "${SERVER_BIN:-$TARGET/release/piqchat-inbox}")
LOAD=$(realpath "$TARGET/release/piqchat-load")
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/piqchat-bench.XXXXXX")
LABEL=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

SERVER_PIDS=()
URLS=()
# Extra environment for the next servers (e.g. a higher quota).
SERVER_ENV=()
stop_server() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
    URLS=()
}
PG_DATABASES=()
# pg_url DB: BENCH_DATABASE_URL with its database replaced by DB.
pg_url() {
    local url=${BENCH_DATABASE_URL%%\?*} query=
    [[ "$BENCH_DATABASE_URL" != *\?* ]] || query="?${BENCH_DATABASE_URL#*\?}"
    local rest=${url#*://}
    echo "${url%%://*}://${rest%%/*}/$1$query"
}
drop_database() {
    psql "$BENCH_DATABASE_URL" -qX -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null || echo "!! could not drop database $1"
}
cleanup() {
    stop_server
    if [[ "${KEEP:-}" != 1 ]]; then
        for db in "${PG_DATABASES[@]}"; do
            drop_database "$db"
        done
    fi
    if [[ "${KEEP:-}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# start_server DIR [DATABASE_URL [LOG]]: starts a server on a free loopback
# port, on DIR/inbox.sqlite or on DATABASE_URL when given, with attachments
# in DIR/attachments and its log in DIR/LOG (server.log); appends to
# SERVER_PIDS and URLS.
start_server() {
    local dir=$1 database_url=${2:-} log=$1/${3:-server.log}
    local database=(DATABASE_PATH="$dir/inbox.sqlite")
    # Instances of one cluster cannot share the default metrics port.
    [[ -z "$database_url" ]] || database=(DATABASE_URL="$database_url" METRICS_ADDRESS=127.0.0.1:0)
    mkdir -p "$dir"
    (
        cd "$dir"
        if [[ -n "${SERVER_NOFILE:-}" ]]; then
            ulimit -n "$SERVER_NOFILE"
        fi
        exec env "${database[@]}" "${SERVER_ENV[@]}" \
            PARCEL_ATTACHMENTS_UPLOAD_PATH="$dir/attachments" \
            BIND_ADDRESS=127.0.0.1 PORT=0 \
            "$SERVER" serve >"$log" 2>&1
    ) &
    local pid=$!
    SERVER_PIDS+=("$pid")
    local addr=
    for _ in $(seq 1 300); do
        addr=$(sed 's/\x1b\[[0-9;]*m//g' "$log" 2>/dev/null |
            grep -o 'addr=127\.0\.0\.1:[0-9]*' | head -1 | cut -d= -f2 || true)
        [[ -n "$addr" ]] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$log" >&2
            echo "the server did not start" >&2
            exit 1
        fi
        sleep 0.05
    done
    [[ -n "$addr" ]] || { echo "the server did not report its address" >&2; exit 1; }
    URLS+=("http://$addr")
}

echo "== machine"
{
    echo "commit: $LABEL"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "load: duration $DURATION, warm-up $WARMUP, $CONCURRENCY connections"
    echo "backends: $BACKENDS"
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
    if [[ -n "${PROTOCOLS:-}" ]]; then
        echo "$PROTOCOLS"
        return
    fi
    if [[ "${ALL_PROTOCOLS:-}" == 1 ]]; then
        echo "grpc grpc-web json"
        return
    fi
    case $1 in
        info | list | send-100k | send-one) echo "grpc grpc-web json" ;;
        *) echo "grpc" ;;
    esac
}

seeded=
# run_case SCENARIO PROTOCOL BACKEND [N]: one scenario against freshly
# started servers; N is the backlog scenario's waiting parcels.
run_case() {
    local scenario=$1 protocol=$2 backend=$3 backlog=${4:-}
    local dir name database db= extra=()
    if [[ "$backend" != sqlite && ( "$scenario" == list-big || "$scenario" == info-big || "$scenario" == backlog ) ]]; then
        echo "== $scenario over $protocol on $backend: skipped (the seeded database is SQLite)"
        return
    fi
    if [[ "$backend" == postgres-2 && "$scenario" == under-attack ]]; then
        echo "== $scenario on $backend: skipped (under-attack drives one server)"
        return
    fi
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
        backlog)
            dir=$WORK/backlog-$backlog-$protocol
            echo "== seeding one recipient with $backlog waiting parcels (server stopped)"
            mkdir -p "$dir"
            "$LOAD" seed-backlog --database "$dir/inbox.sqlite" --attachments "$dir/attachments" \
                --parcels "$backlog" --key-out "$dir/recipient.json"
            extra=(--recipient-key "$dir/recipient.json")
            ;;
        *)
            dir=$WORK/$scenario-$protocol
            ;;
    esac
    # SQLite results keep the names they always had.
    name=$scenario-$protocol
    [[ "$scenario" != backlog ]] || name=backlog-$backlog-$protocol
    database=$dir/inbox.sqlite
    if [[ "$backend" != sqlite ]]; then
        name=$scenario-$protocol-$backend
        dir=$WORK/$name
        db=piqchat_bench_$$_${name//-/_}
        psql "$BENCH_DATABASE_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null
        PG_DATABASES+=("$db")
        database=$(pg_url "$db")
    fi
    SERVER_ENV=()
    case $scenario in
        under-attack)
            # shellcheck disable=SC2206 # options are split on purpose
            extra=(${ATTACK_ARGS:-})
            ;;
        send-one | backlog)
            # Every send goes to one recipient: the default quota (1,000
            # waiting) would refuse most of them.
            SERVER_ENV=(MAX_WAITING_PARCELS_PER_RECIPIENT="$HIGH_QUOTA_PARCELS"
                MAX_WAITING_ATTACHMENT_BYTES_PER_RECIPIENT="$HIGH_QUOTA_BYTES")
            [[ "$scenario" != send-one ]] || extra+=(--rounds "$SEND_ONE_ROUNDS")
            ;;
    esac
    echo "== $scenario${backlog:+ N=$backlog} over $protocol on $backend"
    case $backend in
        sqlite) start_server "$dir" ;;
        postgres) start_server "$dir" "$database" ;;
        postgres-2)
            start_server "$dir" "$database" server-1.log
            start_server "$dir" "$database" server-2.log
            ;;
    esac
    SERVER_ENV=()
    local targets=(--url "${URLS[0]}") url pid
    for url in "${URLS[@]:1}"; do
        targets+=(--also-url "$url")
    done
    for pid in "${SERVER_PIDS[@]}"; do
        targets+=(--server-pid "$pid")
    done
    (
        # The attacker of under-attack holds about 2,600 connections.
        [[ "$scenario" != under-attack ]] || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        exec "$LOAD" run "${targets[@]}" --database "$database" \
            --scenario "$scenario" --protocol "$protocol" \
            --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
            --label "$LABEL" --backend "$backend" \
            --json "$OUT/run-$name.json" "${extra[@]}"
    ) || echo "!! $scenario over $protocol on $backend failed"
    stop_server
    # Attachments of the send scenarios are not needed any more.
    [[ "$dir" == "$WORK/big" ]] || rm -rf "$dir"
    if [[ -n "$db" && "${KEEP:-}" != 1 ]]; then
        drop_database "$db"
        unset 'PG_DATABASES[-1]'
    fi
}

# run_peer SCENARIO: the same scenario against the Node peer at PEER_URL,
# right after ours, over JSON (its only protocol).
run_peer() {
    local scenario=$1 pid=()
    [[ -n "${PEER_URL:-}" ]] || return 0
    if [[ " $PEER_SCENARIOS " != *" $scenario "* ]]; then
        echo "== $scenario on the Node peer: not implemented (its signed calls; see BENCHMARKS.md)"
        return
    fi
    [[ -z "${PEER_PID:-}" ]] || pid=(--server-pid "$PEER_PID")
    echo "== $scenario over json on the Node peer ($PEER_URL)"
    "$LOAD" run --peer --url "$PEER_URL" --peer-prefix "${PEER_PREFIX:-/api}" "${pid[@]}" \
        --scenario "$scenario" --protocol json \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
        --label peer --json "$OUT/peer-$scenario-json.json" ||
        echo "!! $scenario on the Node peer failed"
}

for scenario in $SCENARIOS; do
    for protocol in $(protocols_for "$scenario"); do
        for backend in $BACKENDS; do
            if [[ "$scenario" == backlog ]]; then
                for n in $BACKLOG; do
                    run_case "$scenario" "$protocol" "$backend" "$n"
                done
            else
                run_case "$scenario" "$protocol" "$backend"
            fi
        done
    done
    run_peer "$scenario"
done

echo "== report"
files=("$OUT"/fsync.json "$OUT"/verify.json "$OUT"/coldstart.json)
for f in "$OUT"/hello-*.json; do
    [[ -f "$f" ]] && files+=("$f")
done
[[ -f "$OUT/seed.json" ]] && files+=("$OUT/seed.json")
for f in "$OUT"/run-*.json "$OUT"/peer-*.json; do
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
