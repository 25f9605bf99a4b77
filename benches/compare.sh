#!/usr/bin/env bash
# End-to-end comparison of issue 6: Drawbridge against NATS JetStream (and Liftbridge when
# $LIFTBRIDGE_ADDR is set), on loopback, in one run, on this machine.
#
#   benches/compare.sh                 # full: 1,000,000-message consume, 5 s per pipelined shape
#   MODE=medium benches/compare.sh     # a few minutes
#   QUICK=1 benches/compare.sh         # seconds per system: checks the harness, not a benchmark
#
# Environment:
#   CARGO_TARGET_DIR   where release binaries are built (default: <repo>/target)
#   LIFTBRIDGE_ADDR    HOST:PORT of a Liftbridge-API server to include as system (e)
#   LIFTBRIDGE_PID     its PID, to record its memory (optional)
#   NATS_SERVER        nats-server binary (default: from PATH, or /usr/sbin/nats-server)
#   SYSTEMS            space-separated subset of: embedded-sync embedded-lazy nats-sync
#                      nats-lazy cluster3-sync jetstream liftbridge (default: all)
#   WORKLOADS          comma-separated subset of sync,pipelined,consume,e2e (default: all)
#   CONSUME_ROUNDS     reads of the preloaded partition per consume workload; the median
#                      round is reported (default 1)
#   RESULTS_NAME       output base name in benches/results (default: latest; quick for QUICK=1)
#   KEEP=1             keep the temporary directory (logs, data) for inspection
#   SKIP_BUILD=1       use the release binaries already in $CARGO_TARGET_DIR
#   LOADGEN_EXTRA      more `loadgen bench` arguments for every system, e.g.
#                      "--consume-client raw" (read with the plain tonic stub, not the client)
#
# What it starts (loopback only, free ports, one temp dir) and stops by PID on exit:
#   (a) drawbridge-server --embedded-nats, sync before ack; then the same with lazy sync
#   (b) nats-server -js, and drawbridge-server on it, sync before ack; then lazy sync
#   (c) 3 drawbridge-servers on that nats-server, streams with replication factor 3, ack ALL
#   (d) NATS JetStream on that nats-server, file storage, 1 replica
#   (e) the server at $LIFTBRIDGE_ADDR (started by you, not by this script)
# Each Drawbridge system gets a fresh server and data dir; resident memory is sampled from
# /proc/PID/status while its workloads run.
#
# Output: benches/results/$RESULTS_NAME.{jsonl,md,svg}.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/benches/results
mkdir -p "$RESULTS"

if [[ "${QUICK:-0}" == 1 ]]; then MODE=quick; fi
MODE=${MODE:-full}
case "$MODE" in
  quick)
    SYNC_MESSAGES=100; SHAPES=1x256,1x1024,4x256,4x1024; PIPELINED_SECS=1
    CONSUME_MESSAGES=20000; E2E_RATE=1000; E2E_SECS=2; HW_MIB=64; HW_SECS=1
    DEFAULT_NAME=quick ;;
  medium)
    SYNC_MESSAGES=1000; SHAPES=1x256,1x1024,4x256,4x1024; PIPELINED_SECS=3
    CONSUME_MESSAGES=200000; E2E_RATE=5000; E2E_SECS=5; HW_MIB=256; HW_SECS=2
    DEFAULT_NAME=latest ;;
  full)
    SYNC_MESSAGES=2000; SHAPES=1x256,1x1024,4x256,4x1024; PIPELINED_SECS=5
    CONSUME_MESSAGES=1000000; E2E_RATE=5000; E2E_SECS=10; HW_MIB=1024; HW_SECS=3
    DEFAULT_NAME=latest ;;
  *) echo "compare.sh: MODE must be quick, medium or full" >&2; exit 2 ;;
esac
NAME=${RESULTS_NAME:-$DEFAULT_NAME}
SYSTEMS=${SYSTEMS:-"embedded-sync embedded-lazy nats-sync nats-lazy cluster3-sync jetstream liftbridge"}
want() { [[ " $SYSTEMS " == *" $1 "* ]]; }

NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
[[ -x "$NATS_SERVER" ]] || { echo "compare.sh: nats-server not found (set NATS_SERVER)" >&2; exit 1; }

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building release binaries into $CARGO_TARGET_DIR"
  # Two invocations, so the server is built with its own features (async-nats' jetstream
  # feature is the load generator's only).
  (cd "$ROOT" && cargo build --release -p drawbridge-server --bin drawbridge-server)
  (cd "$ROOT" && cargo build --release -p drawbridge-benches --bin loadgen)
fi
SERVER=$CARGO_TARGET_DIR/release/drawbridge-server
LOADGEN=$CARGO_TARGET_DIR/release/loadgen
for b in "$SERVER" "$LOADGEN"; do [[ -x "$b" ]] || { echo "compare.sh: $b missing" >&2; exit 1; }; done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drawbridge-compare.XXXXXX")
# Written as the run goes, so an interrupted run still leaves its figures behind
# (`loadgen report --input` renders a partial file too).
RUN=$RESULTS/$NAME.jsonl
: >"$RUN"
PIDS=()

stop_pid() { # PID: SIGTERM, up to 15 s, then SIGKILL
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "pid $pid did not exit after SIGTERM; SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

json() { # KEY VALUE ... -> one JSON object (values are strings unless they look numeric)
  local out="{" sep="" k v
  while (($#)); do
    k=$1 v=$2; shift 2
    if [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then out+="$sep\"$k\":$v"
    else v=${v//\\/\\\\}; v=${v//\"/\\\"}; out+="$sep\"$k\":\"$v\""; fi
    sep=","
  done
  echo "$out}" >>"$RUN"
}
note() { echo "note: $*"; json kind note text "$*"; }

free_port() { "$LOADGEN" free-port; }
wait_port() { # PORT SECONDS PID
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    kill -0 "$3" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# --- memory sampling -------------------------------------------------------------------------
SAMPLER=""
start_sampler() { # PID... : max VmRSS and max RssAnon of each into $WORK/{rss,anon}.<pid>
  local pids=("$@")
  (
    while true; do
      for p in "${pids[@]}"; do
        local kb anon prev
        read -r kb anon < <(awk '/^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} END {print r, a}' \
          "/proc/$p/status" 2>/dev/null || true)
        [[ -n "$kb" ]] || continue
        prev=0
        [[ -f "$WORK/rss.$p" ]] && prev=$(<"$WORK/rss.$p")
        ((kb > prev)) && echo "$kb" >"$WORK/rss.$p"
        prev=0
        [[ -f "$WORK/anon.$p" ]] && prev=$(<"$WORK/anon.$p")
        ((${anon:-0} > prev)) && echo "$anon" >"$WORK/anon.$p"
      done
      sleep 0.5
    done
  ) &
  SAMPLER=$!
  PIDS+=("$SAMPLER")
}
stop_sampler() { # SYSTEM NAME=PID... : rss records
  local system=$1; shift
  stop_pid "$SAMPLER"
  local item name pid hwm max anon
  for item in "$@"; do
    name=${item%%=*} pid=${item#*=}
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    max=$(cat "$WORK/rss.$pid" 2>/dev/null || echo 0)
    anon=$(cat "$WORK/anon.$pid" 2>/dev/null || echo 0)
    rm -f "$WORK/rss.$pid" "$WORK/anon.$pid"
    json kind rss system "$system" process "$name" max_rss_kb "${max:-0}" hwm_kb "${hwm:-0}" \
      max_anon_kb "${anon:-0}"
  done
}

# --- servers ---------------------------------------------------------------------------------
LAZY_CONFIG=$WORK/lazy.yaml
cat >"$LAZY_CONFIG" <<'EOF'
storage:
  sync:
    policy: interval
    interval: 1s
EOF

start_drawbridge() { # ID PORT RAFT_PORT NS NATS(embedded:PORT|URL) SYNC(sync|lazy) [extra args]
  local id=$1 port=$2 raft=$3 ns=$4 nats=$5 sync=$6; shift 6
  local dir=$WORK/$id
  mkdir -p "$dir/data"
  local args=(--server-id "$id" --namespace "$ns" --port "$port"
    --raft-listen "127.0.0.1:$raft" --data-dir "$dir/data")
  if [[ "$nats" == embedded:* ]]; then
    echo "listen: \"127.0.0.1:${nats#embedded:}\"" >"$dir/nats.conf"
    args+=(--embedded-nats-config "$dir/nats.conf")
  else
    args+=(--nats-servers "$nats")
  fi
  [[ "$sync" == lazy ]] && args+=(--config "$LAZY_CONFIG")
  LIFTBRIDGE_HOST=127.0.0.1 LIFTBRIDGE_LISTEN="127.0.0.1:$port" \
    "$SERVER" "${args[@]}" "$@" </dev/null >"$dir/server.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

NATS_PID=""
NATS_URL=""
ensure_nats() {
  [[ -n "$NATS_PID" ]] && return 0
  local port
  port=$(free_port)
  mkdir -p "$WORK/nats/js"
  "$NATS_SERVER" -a 127.0.0.1 -p "$port" -js -sd "$WORK/nats/js" </dev/null \
    >"$WORK/nats/nats.log" 2>&1 &
  NATS_PID=$!
  PIDS+=("$NATS_PID")
  wait_port "$port" 15 "$NATS_PID" || { echo "nats-server did not start" >&2; tail "$WORK/nats/nats.log" >&2; exit 1; }
  NATS_URL=nats://127.0.0.1:$port
}

LOADGEN_ARGS=(--workloads "${WORKLOADS:-sync,pipelined,consume,e2e}" --sync-messages "$SYNC_MESSAGES" --shapes "$SHAPES" --pipelined-secs "$PIPELINED_SECS"
  --consume-messages "$CONSUME_MESSAGES" --consume-rounds "${CONSUME_ROUNDS:-1}" --e2e-rate "$E2E_RATE" --e2e-secs "$E2E_SECS")
FAILED=()
loadgen_run() { # SYSTEM loadgen-args...
  local system=$1; shift
  # Other work on the machine skews every figure: record how busy it was.
  note "load average before \`$system\`: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
  local extra=()
  read -r -a extra <<<"${LOADGEN_EXTRA:-}"
  if ! "$LOADGEN" bench --system "$system" "${LOADGEN_ARGS[@]}" --out "$RUN" "$@" "${extra[@]}" >/dev/null; then
    FAILED+=("$system")
    echo "!! $system: some workloads failed (see the report)" >&2
  fi
}

run_single() { # SYSTEM NATS-MODE(embedded|nats) SYNC DESCRIPTION DURABILITY
  local system=$1 mode=$2 sync=$3
  echo "== $system"
  json kind system system "$system" description "$4" durability "$5"
  local port raft nats
  port=$(free_port); raft=$(free_port)
  if [[ "$mode" == embedded ]]; then nats=embedded:$(free_port); else ensure_nats; nats=$NATS_URL; fi
  start_drawbridge "$system" "$port" "$raft" "$system" "$nats" "$sync"
  local pid=$STARTED
  if ! wait_port "$port" 30 "$pid"; then
    note "$system did not start; skipped (log: $(tail -3 "$WORK/$system/server.log" | tr '\n' ' '))"
    stop_pid "$pid"; return 0
  fi
  local procs=("drawbridge-server=$pid") sampled=("$pid")
  if [[ "$mode" == nats ]]; then procs+=("nats-server=$NATS_PID"); sampled+=("$NATS_PID"); fi
  start_sampler "${sampled[@]}"
  loadgen_run "$system" --target liftbridge --addr "127.0.0.1:$port" --server-pids "$pid"
  stop_sampler "$system" "${procs[@]}"
  stop_pid "$pid"
}

run_cluster() {
  local system=drawbridge-cluster3-sync
  echo "== $system"
  ensure_nats
  json kind system system "$system" \
    description "3 drawbridge-servers on nats-server, replication factor 3, ack policy ALL" \
    durability "fsync before ack (default policy) on the leader; ALL = committed by the raft quorum"
  local ids=(c3-node-0 c3-node-1 c3-node-2) ports=() rafts=() pids=() i
  for i in 0 1 2; do ports+=("$(free_port)"); rafts+=("$(free_port)"); done
  for i in 0 1 2; do
    local peers=()
    for j in 0 1 2; do ((j != i)) && peers+=("${ids[$j]}"); done
    start_drawbridge "${ids[$i]}" "${ports[$i]}" "${rafts[$i]}" "$system" "$NATS_URL" sync \
      --raft-bootstrap-peers "$(IFS=,; echo "${peers[*]}")"
    pids+=("$STARTED")
  done
  for i in 0 1 2; do
    if ! wait_port "${ports[$i]}" 60 "${pids[$i]}"; then
      note "$system node $i did not start; skipped (log: $(tail -3 "$WORK/${ids[$i]}/server.log" | tr '\n' ' '))"
      for p in "${pids[@]}"; do stop_pid "$p"; done
      return 0
    fi
  done
  start_sampler "${pids[@]}" "$NATS_PID"
  loadgen_run "$system" --target liftbridge --ack-policy all --replication-factor 3 \
    --server-pids "$(IFS=,; echo "${pids[*]}")" --addr "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
  stop_sampler "$system" "drawbridge-server(node-0)=${pids[0]}" "drawbridge-server(node-1)=${pids[1]}" \
    "drawbridge-server(node-2)=${pids[2]}" "nats-server=$NATS_PID"
  for p in "${pids[@]}"; do stop_pid "$p"; done
}

# --- the run ---------------------------------------------------------------------------------
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)
note "mode **$MODE**, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($CPU), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r); $("$NATS_SERVER" --version 2>&1 | head -1); commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
note "load generator and servers share the machine's CPUs; every system runs alone (one after the other), on loopback, data in $(df -P "$WORK" | awk 'NR==2 {print $1}')"
note "workloads per size (256 B, 1 KiB): sync publish $SYNC_MESSAGES msgs; pipelined $SHAPES for $PIPELINED_SECS s each; consume $CONSUME_MESSAGES msgs from earliest; publish-to-subscriber at $E2E_RATE msgs/s for $E2E_SECS s"
note "JetStream 2.9 acknowledges a publish once written to its file store, **without fsync** (it syncs every 2 minutes by default): its durability matches Drawbridge's lazy-sync rows, not the sync-before-ack rows"

echo "== hardware baselines"
"$LOADGEN" hw --dir "$WORK" --write-mib "$HW_MIB" --secs "$HW_SECS" --out "$RUN"

want embedded-sync && run_single drawbridge-embedded-sync embedded sync \
  "drawbridge-server, embedded NATS" "fsync before ack (storage.sync.policy always, the default)"
want embedded-lazy && run_single drawbridge-embedded-lazy embedded lazy \
  "drawbridge-server, embedded NATS" "lazy: storage.sync.policy interval, 1 s"
want nats-sync && run_single drawbridge-nats-sync nats sync \
  "drawbridge-server on nats-server $("$NATS_SERVER" --version 2>&1 | awk '{print $NF}')" "fsync before ack (default)"
want nats-lazy && run_single drawbridge-nats-lazy nats lazy \
  "drawbridge-server on nats-server" "lazy: storage.sync.policy interval, 1 s"
want cluster3-sync && run_cluster

if want jetstream; then
  echo "== jetstream"
  ensure_nats
  json kind system system jetstream description "NATS JetStream (nats-server -js), file storage, 1 replica" \
    durability "no fsync before ack (JetStream 2.9 default)"
  start_sampler "$NATS_PID"
  loadgen_run jetstream --target jetstream --addr "$NATS_URL" --server-pids "$NATS_PID"
  stop_sampler jetstream "nats-server=$NATS_PID"
fi

if want liftbridge; then
  if [[ -n "${LIFTBRIDGE_ADDR:-}" ]]; then
    echo "== liftbridge at $LIFTBRIDGE_ADDR"
    json kind system system liftbridge description "Liftbridge-API server at $LIFTBRIDGE_ADDR (not started here)" \
      durability "as configured there (Liftbridge: no fsync before ack by default)"
    [[ -n "${LIFTBRIDGE_PID:-}" ]] && start_sampler "$LIFTBRIDGE_PID"
    loadgen_run liftbridge --target liftbridge --addr "$LIFTBRIDGE_ADDR"
    [[ -n "${LIFTBRIDGE_PID:-}" ]] && stop_sampler liftbridge "liftbridge=$LIFTBRIDGE_PID"
  else
    note "Liftbridge (e) skipped: LIFTBRIDGE_ADDR is not set"
    echo "(e) Liftbridge skipped: set LIFTBRIDGE_ADDR=HOST:PORT to include a Liftbridge-API server"
  fi
fi

"$LOADGEN" report --input "$RUN" --md "$RESULTS/$NAME.md" --svg "$RESULTS/$NAME.svg" \
  --title "Drawbridge vs NATS JetStream ($MODE run)"
echo "== wrote $RESULTS/$NAME.md, $RESULTS/$NAME.svg, $RESULTS/$NAME.jsonl"
if ((${#FAILED[@]})); then echo "failed workloads in: ${FAILED[*]}" >&2; fi
