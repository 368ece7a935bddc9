#!/usr/bin/env bash
# bench/ab_burst.sh — the local burst against two or more server builds, alternating, one line
# per run: what BENCHMARKS.md's "What made the difference" tables were made with.
#
#   bench/ab_burst.sh REPS NAME=/path/to/server [NAME=/path/to/server ...]
#
#   cp $CARGO_TARGET_DIR/release/hub_server /tmp/hub_before    # build, copy, change, build again
#   bench/ab_burst.sh 4 before=/tmp/hub_before after=$CARGO_TARGET_DIR/release/hub_server \
#       baseline=$CARGO_TARGET_DIR/release/baseline
#
# Environment: LOADGEN (default: the loadgen next to the first server), LG_ARGS (default: the
# local_burst scenario), SERVER_FLAGS (extra server flags; --nodelay is always set).
set -euo pipefail
ulimit -n "$(ulimit -Hn)"
REPS=$1
shift
first=${1#*=}
LOADGEN=${LOADGEN:-$(dirname "$first")/loadgen}
LG_ARGS=${LG_ARGS:---subscribers 1000 --publishers 1 --messages 200 --size 64}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
for _ in $(seq "$REPS"); do
    for spec in "$@"; do
        name=${spec%%=*}
        bin=${spec#*=}
        # shellcheck disable=SC2086
        "$bin" --addr 127.0.0.1:0 --nodelay ${SERVER_FLAGS:-} >"$TMP/out" 2>"$TMP/err" &
        pid=$!
        for _ in $(seq 50); do
            grep -q 'listening on' "$TMP/out" 2>/dev/null && break
            sleep 0.1
        done
        addr=$(awk '/listening on/ {print $3; exit}' "$TMP/out")
        # shellcheck disable=SC2086
        "$LOADGEN" pubsub --url "ws://$addr/ws/{room}" $LG_ARGS --server-stats >"$TMP/report.json" \
            2>/dev/null
        python3 - "$name" "$TMP/report.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]:10s} {d['deliveries_per_s'] / 1e6:6.2f} M/s  server CPU {d['server_cpu_ms']:7.1f} ms"
      f"  loadgen CPU {d['loadgen_cpu_ms']:7.1f} ms  {d['duration_s'] * 1000:7.1f} ms"
      f"  per server CPU-s {d['deliveries_per_server_cpu_s'] / 1e6:6.2f} M"
      f"  p99 {d['latency_ms']['p99']:.1f} ms  lost {d['lost']} dup {d['duplicated']} ooo {d['out_of_order']}")
PY
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
