#!/usr/bin/env bash
# bench/run.sh — tower-ws-hub (`hub_server`) against the hand-rolled axum baseline (`baseline`).
#
#   bench/run.sh                         # every scenario, REPS repetitions each
#   bench/run.sh local_burst idle        # only these scenarios
#   REPS=1 bench/run.sh local_burst      # quick look while developing
#
# Scenarios: local_burst redis2_burst rooms rate1000 rate100 idle broadcast_rss redis_publish
# local_rate1000 local_rate100 inbound_rss rooms_long (see BENCHMARKS.md for what each one does
# and what it is expected to show; the local_rate* ones are the rate scenarios on a single
# instance, rooms_long is rooms with ten times the messages, for A/B runs steadier than rooms).
#
# Environment:
#   REPS=3               repetitions per scenario and implementation (project and baseline
#                        alternate: P B, then B P, ... so that drift hits both alike)
#   RESULTS_DIR=...      where the JSON reports go (default bench/results/<timestamp>)
#   CARGO_TARGET_DIR     cargo's target directory (default: the workspace's target/)
#   LOADGEN_THREADS=1    load-generator runtime threads (1 = current-thread runtime)
#   LOADGEN_FLAGS=       extra `loadgen pubsub` flags for the pubsub scenarios, e.g.
#                        "--publishers-share-thread" (burst publishers paced by the
#                        subscribers' reads, as before session 11)
#   SERVER_WORKERS=      tokio workers for both servers (default: see WORKERS_SPLIT)
#   WORKERS_SPLIT=1      without SERVER_WORKERS, each of a scenario's N instances gets
#                        nproc / N workers (at least 1): one worker per core for one instance,
#                        one each for the two instances of a two-instance scenario on two
#                        cores, as tokio's default gives each instance on machines (or in
#                        containers, or CPU sets) of its share of the cores; 0: every instance
#                        one worker per core, four workers on two cores (the default before
#                        session 14; see BENCHMARKS.md, sessions 13 and 14); both servers alike
#   NODELAY=0            1 sets TCP_NODELAY on the servers' accepted sockets
#   HUB_FLAGS=           extra hub_server flags, e.g. "--keep-no-extensions" (project only)
#   HUB_BIN=, BASELINE_BIN=, BASELINE_FLAGS=
#                        other binaries for the two sides, and extra flags for the baseline
#                        side: to compare two builds or settings of the hub with the same
#                        alternation and table, e.g. BASELINE_BIN=$CARGO_TARGET_DIR/release/hub_server
#                        BASELINE_FLAGS="--max-write-interval-us 16000" (the "baseline" column
#                        is then that hub; `redis_publish` has no baseline and ignores them)
#   SKIP_BUILD=0         1 reuses the binaries already built
#   BENCH_COMMIT=        what to record as the measured commit (default: git describe)
#
# The script builds the release binaries, raises the open-file limit, starts and stops every
# server itself (and a throwaway redis-server for the Redis scenarios), and stops everything it
# started when it exits, however it exits. Everything listens on 127.0.0.1 only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
REPS=${REPS:-3}
LOADGEN_THREADS=${LOADGEN_THREADS:-1}
LOADGEN_FLAGS=${LOADGEN_FLAGS:-}
ALL_SCENARIOS="local_burst redis2_burst rooms rate1000 rate100 idle broadcast_rss redis_publish
    local_rate1000 local_rate100 inbound_rss rooms_long"
ALL_SCENARIOS=$(echo $ALL_SCENARIOS)
SCENARIOS=${*:-$ALL_SCENARIOS}
OUT=${RESULTS_DIR:-$HERE/results/$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release

PIDS=()
INSTANCES=1

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

forget_pid() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

# stop PID: SIGTERM, up to 5 s of grace, then SIGKILL.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# start_server IMPL NAME [flags...]: starts a server on a free port; sets SERVER_PID, SERVER_ADDR.
start_server() {
    local impl=$1 name=$2 bin extra_flags
    shift 2
    # HUB_FLAGS / BASELINE_FLAGS: extra flags for one side (see the top).
    case $impl in
        project) bin=${HUB_BIN:-$BIN/hub_server} extra_flags=${HUB_FLAGS:-} ;;
        baseline) bin=${BASELINE_BIN:-$BIN/baseline} extra_flags=${BASELINE_FLAGS:-} ;;
    esac
    local flags=(--addr 127.0.0.1:0)
    if [[ -n ${SERVER_WORKERS:-} ]]; then
        flags+=(--workers "$SERVER_WORKERS")
    elif [[ ${WORKERS_SPLIT:-1} == 1 ]]; then
        local share=$(($(nproc) / INSTANCES))
        flags+=(--workers "$((share > 0 ? share : 1))")
    fi
    [[ ${NODELAY:-0} == 1 ]] && flags+=(--nodelay)
    if [[ -n $extra_flags ]]; then
        read -r -a extra <<<"$extra_flags"
        flags+=("${extra[@]}")
    fi
    "$bin" "${flags[@]}" "$@" >"$OUT/logs/$name.out" 2>"$OUT/logs/$name.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do
        if grep -q 'listening on' "$OUT/logs/$name.out" 2>/dev/null; then
            SERVER_ADDR=$(awk '/listening on/ {print $3; exit}' "$OUT/logs/$name.out")
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "error: $impl server did not start:"
    cat "$OUT/logs/$name.err" >&2
    return 1
}

# start_redis NAME: a throwaway redis-server without persistence; sets REDIS_PID, REDIS_URL.
start_redis() {
    local port
    port=$("$BIN/loadgen" free-port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        >"$OUT/logs/$1.redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
        if [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]]; then
            REDIS_URL=redis://127.0.0.1:$port
            return 0
        fi
        sleep 0.1
    done
    log "error: redis-server did not start"
    return 1
}

# Scenario definitions: instances, whether Redis is needed, and the load-generator command.
instances_of() {
    case $1 in
        local_burst | idle | broadcast_rss | local_rate* | inbound_rss) echo 1 ;;
        *) echo 2 ;;
    esac
}

needs_redis() {
    [[ $(instances_of "$1") -gt 1 || $1 == redis_publish ]]
}

# loadgen_args SCENARIO URL...: the load-generator command line.
loadgen_args() {
    local scenario=$1
    shift
    local urls=() url
    for url in "$@"; do urls+=(--url "ws://$url/ws/{room}"); done
    case $scenario in
        local_burst)
            echo pubsub "${urls[@]}" --subscribers 1000 --publishers 1 --messages 200 --size 64 \
                --server-stats ;;
        redis2_burst)
            echo pubsub "${urls[@]}" --subscribers 1000 --publishers 1 --messages 200 --size 64 \
                --publish-via first --server-stats ;;
        rooms)
            echo pubsub "${urls[@]}" --rooms 1000 --subscribers 5000 --publishers 10 \
                --messages 1000 --size 64 --publish-via all --server-stats ;;
        rooms_long)
            echo pubsub "${urls[@]}" --rooms 1000 --subscribers 5000 --publishers 10 \
                --messages 10000 --size 64 --publish-via all --server-stats ;;
        rate1000 | local_rate1000)
            echo pubsub "${urls[@]}" --subscribers 1000 --publishers 1 --rate 1000 --duration 10 \
                --size 64 --publish-via first --server-stats ;;
        rate100 | local_rate100)
            echo pubsub "${urls[@]}" --subscribers 1000 --publishers 1 --rate 100 --duration 10 \
                --size 64 --publish-via first --server-stats ;;
        idle)
            # Browser handshakes: what a server keeps of the request per connection counts.
            echo idle "${urls[@]}" --connections 10000 --rooms 100 --settle 2 \
                --browser-headers ;;
        inbound_rss)
            # Each connection alone in its room sends one 60 000-byte message: what is left
            # of it in the server once it is read.
            echo idle "${urls[@]}" --connections 2000 --rooms 2000 --settle 2 \
                --send-once 60000 \
                --browser-headers ;;
        broadcast_rss)
            echo pubsub "${urls[@]}" --subscribers 2000 --publishers 1 --messages 1 --size 65536 \
                --watch-rss 5 ;;
    esac
}

# run_one SCENARIO IMPL REP
run_one() {
    local scenario=$1 impl=$2 rep=$3
    local name=${scenario}__${impl}__${rep}
    local n redis_flags=() addrs=() server_pids=() i
    n=$(instances_of "$scenario")
    INSTANCES=$n
    if needs_redis "$scenario"; then
        start_redis "$name"
        redis_flags=(--redis "$REDIS_URL")
    fi
    for i in $(seq "$n"); do
        start_server "$impl" "$name.$i" "${redis_flags[@]}"
        addrs+=("$SERVER_ADDR")
        server_pids+=("$SERVER_PID")
    done
    local args
    # shellcheck disable=SC2207 # the arguments contain no spaces
    args=($(loadgen_args "$scenario" "${addrs[@]}"))
    if [[ ${args[0]} == pubsub ]]; then
        # shellcheck disable=SC2206 # flags are split on purpose
        args+=($LOADGEN_FLAGS)
    fi
    log "== $scenario / $impl / rep $rep (servers: ${addrs[*]}; load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    local status=0
    timeout 600 "$BIN/loadgen" --threads "$LOADGEN_THREADS" "${args[@]}" \
        --label "$scenario/$impl/$rep" >"$OUT/$name.json" 2>"$OUT/logs/$name.loadgen.err" ||
        status=$?
    cat "$OUT/logs/$name.loadgen.err" >&2
    if [[ $status -ne 0 ]]; then
        log "   loadgen failed (exit $status); report moved to logs/"
        mv "$OUT/$name.json" "$OUT/logs/$name.failed.json"
    fi
    for i in "${server_pids[@]}"; do stop "$i"; done
    if needs_redis "$scenario"; then stop "$REDIS_PID"; fi
    # Let sockets in TIME_WAIT and the CPU settle before the next run.
    sleep 1
}

skip() {
    log "== $1: skipped: $2"
    printf '%s: skipped: %s\n' "$1" "$2" >>"$OUT/skipped.txt"
}

main() {
    mkdir -p "$OUT/logs"
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building release binaries (target dir: $TARGET)"
        (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -p tower-ws-hub-bench --bins)
    fi
    local bin
    for bin in "$BIN/loadgen" "${HUB_BIN:-$BIN/hub_server}" "${BASELINE_BIN:-$BIN/baseline}"; do
        if [[ ! -x $bin ]]; then
            log "error: $bin not found: build the release binaries first (without SKIP_BUILD=1), or point CARGO_TARGET_DIR, HUB_BIN or BASELINE_BIN at them"
            exit 1
        fi
    done
    ulimit -n "$(ulimit -Hn)"
    log "open-file limit: $(ulimit -n)"
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "nproc: $(nproc)"
        echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
        echo "kernel: $(uname -r)"
        echo "rustc: $(rustc --version)"
        echo "commit: ${BENCH_COMMIT:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)}"
        echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "reps: $REPS, loadgen threads: $LOADGEN_THREADS (flags: ${LOADGEN_FLAGS:-none}), server workers:" \
            "${SERVER_WORKERS:-default}, workers split: ${WORKERS_SPLIT:-1}, nodelay: ${NODELAY:-0}"
        echo "project: ${HUB_BIN:-$BIN/hub_server} ${HUB_FLAGS:-}"
        echo "baseline: ${BASELINE_BIN:-$BIN/baseline} ${BASELINE_FLAGS:-}"
    } >"$OUT/machine.txt"
    local project_redis=no have_redis=no
    if "${HUB_BIN:-$BIN/hub_server}" --check --redis redis://127.0.0.1:1 >/dev/null 2>&1; then
        project_redis=yes
    fi
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        have_redis=yes
    fi
    local scenario rep impl
    for scenario in $SCENARIOS; do
        if [[ " $ALL_SCENARIOS " != *" $scenario "* ]]; then
            log "unknown scenario: $scenario (known: $ALL_SCENARIOS)"
            exit 2
        fi
        if [[ $scenario == redis_publish ]]; then
            if [[ $have_redis != yes ]]; then
                skip "$scenario" "redis-server / redis-cli not installed"
                continue
            fi
            # The project's publish path alone (absolute target: 300k msg/s); no baseline.
            for rep in $(seq "$REPS"); do
                start_redis "redis_publish.$rep"
                log "== redis_publish rep $rep"
                "$BIN/redis_publish" --redis "$REDIS_URL" --messages 1000000 --size 64 \
                    | tee "$OUT/redis_publish.$rep.json"
                stop "$REDIS_PID"
            done
            continue
        fi
        if needs_redis "$scenario"; then
            if [[ $project_redis != yes ]]; then
                skip "$scenario" "${HUB_BIN:-$BIN/hub_server} refused --redis (built without the redis feature?)"
                continue
            fi
            if [[ $have_redis != yes ]]; then
                skip "$scenario" "redis-server / redis-cli not installed"
                continue
            fi
        fi
        for rep in $(seq "$REPS"); do
            if ((rep % 2 == 1)); then
                run_one "$scenario" project "$rep"
                run_one "$scenario" baseline "$rep"
            else
                run_one "$scenario" baseline "$rep"
                run_one "$scenario" project "$rep"
            fi
        done
    done
    local order
    order=$(echo "$ALL_SCENARIOS" | tr ' ' ',')
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
    "$BIN/loadgen" summarize "$OUT" --order "$order" >"$OUT/summary.md"
    echo
    cat "$OUT/machine.txt"
    echo
    cat "$OUT/summary.md"
    if [[ -f $OUT/skipped.txt ]]; then
        echo
        cat "$OUT/skipped.txt"
    fi
    echo
    echo "raw reports: $OUT"
}

main
