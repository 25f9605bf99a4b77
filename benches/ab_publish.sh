#!/usr/bin/env bash
# A/B of drawbridge-server binaries on the publish workloads, alternated, with the server's CPU
# time per acked message (utime+stime from /proc/PID/stat over the load generator's run).
#
#   benches/ab_publish.sh ROUNDS SYNC(sync|lazy) LABEL=SERVER_COMMAND...
#
# SERVER_COMMAND is a binary, or words such as `env DRAWBRIDGE_LOCAL_NATS=0 BINARY` (env execs
# the server, so the PID stays the server's).
# Environment: LOADGEN (default $CARGO_TARGET_DIR/release/loadgen), SHAPES (1x1024,4x256),
# SIZES (256), SYNC_MESSAGES (2000), PIPELINED_SECS (4), OUT (jsonl of every run, default a
# temp file). Each run: a fresh embedded-NATS server and data dir on free loopback ports,
# stopped by PID afterwards. Prints one line per run, with the load average.
set -euo pipefail
ROUNDS=$1 SYNC=$2; shift 2
LOADGEN=${LOADGEN:-$CARGO_TARGET_DIR/release/loadgen}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drawbridge-ab.XXXXXX")
OUT=${OUT:-$WORK/all.jsonl}
PID=""
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"; for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
printf 'storage:\n  sync:\n    policy: interval\n    interval: 1s\n' >"$WORK/lazy.yaml"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  for item in "$@"; do
    label=${item%%=*} bin=${item#*=}
    dir=$WORK/$label.$round; mkdir -p "$dir/data"
    port=$("$LOADGEN" free-port); raft=$("$LOADGEN" free-port); nport=$("$LOADGEN" free-port)
    echo "listen: \"127.0.0.1:$nport\"" >"$dir/nats.conf"
    args=(--server-id "ab-$label" --namespace "ab$round" --port "$port" --raft-listen "127.0.0.1:$raft"
      --data-dir "$dir/data" --embedded-nats-config "$dir/nats.conf")
    [[ "$SYNC" == lazy ]] && args+=(--config "$WORK/lazy.yaml")
    read -ra cmd <<<"$bin"
    LIFTBRIDGE_HOST=127.0.0.1 "${cmd[@]}" "${args[@]}" </dev/null >"$dir/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(ticks "$PID")
    "$LOADGEN" bench --system "$label" --target liftbridge --addr "127.0.0.1:$port" \
      --workloads sync,pipelined --sizes "${SIZES:-256}" --shapes "${SHAPES:-1x1024,4x256}" \
      --sync-messages "${SYNC_MESSAGES:-2000}" --pipelined-secs "${PIPELINED_SECS:-4}" \
      --out "$dir/run.jsonl" >/dev/null
    t1=$(ticks "$PID")
    kill -TERM "$PID"; for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    PID=""
    cat "$dir/run.jsonl" >>"$OUT"
    python3 - "$dir/run.jsonl" "$label" "$round" "$load" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
path, label, rnd, load, ticks, hz = sys.argv[1:]
rs = [json.loads(l) for l in open(path) if l.strip()]
rs = [r for r in rs if r.get("kind") == "result"]
msgs = sum(r["messages"] for r in rs)
us = int(ticks) / int(hz) * 1e6 / msgs if msgs else float("nan")
parts = []
for r in rs:
    if r["workload"] == "sync":
        parts.append(f"sync p50/p99 {r['p50_us']/1000:.3f}/{r['p99_us']/1000:.3f} ms")
    else:
        parts.append(f"{r['publishers']}x{r['window']} {r['msgs_per_sec']:.0f}/s")
print(f"round {rnd} {label:8} load {load:5}  " + "  ".join(parts) + f"  server {us:.2f} us/msg ({msgs} msgs)")
PY
  done
done
