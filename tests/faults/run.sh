#!/usr/bin/env bash
# Loops the fault tests for N minutes and prints totals (issue 7).
#
#   tests/faults/run.sh --minutes 30 [--filter NAME] [--no-raft]
#
# Each round runs the process fault tests (tests/tests/faults.rs, one cluster at a time; this
# includes the network-partition tests, `--filter isolated` or `--filter cut_from_nats` select
# them: as root with nftables each re-runs itself in a private network namespace whose loopback
# carries the whole cluster and cuts links with nft rules; without root or nft they use per-link
# TCP proxies on 127.0.0.1 instead, or fail when CI is set; DRAWBRIDGE_LINKS=proxy forces the
# proxies), the cluster disk-full tests
# (tests/tests/diskfull_cluster.rs: a follower's, then the partition leader's tmpfs filled;
# they need root for the mounts, and are skipped with a note without it unless CI is set),
# and
# the in-process network-partition tests of drawbridge-raft with a fresh random seed
# (RAFT_FAULT_SEED) and its power-loss tests (POWER_LOSS_SEED, 4 cuts each), until the time
# is up. Every checker report line ("checker: attempted ...", not the LEADER-ack test's line,
# whose losses are allowed)
# is summed; a failing round keeps its output in $OUT/round-<n>.log and the script exits
# non-zero at the end. The seed of a failing raft round is printed so it replays.
set -u -o pipefail

minutes=10
filter=""
raft=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --filter) filter="$2"; shift 2 ;;
    --no-raft) raft=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
OUT="${OUT:-$(mktemp -d -t drawbridge-faults-XXXXXX)}"
mkdir -p "$OUT" || { echo "cannot create $OUT" >&2; exit 2; }
echo "fault loop: $minutes minute(s), logs in $OUT"

cargo build -p drawbridge-server --bin drawbridge-server --locked >/dev/null 2>&1 || {
  echo "building drawbridge-server failed" >&2; exit 1; }
cargo test -p drawbridge-tests --test faults --test diskfull_cluster --locked --no-run \
  >/dev/null 2>&1 || { echo "building the fault tests failed" >&2; exit 1; }
if [ "$raft" = 1 ]; then
  cargo test -p drawbridge-raft --test raft --locked --no-run >/dev/null 2>&1 || {
    echo "building the raft tests failed" >&2; exit 1; }
fi

end=$(( $(date +%s) + minutes * 60 ))
round=0
failed=0
declare -A total=([attempted]=0 [acknowledged]=0 [read]=0 [lost]=0 [duplicated]=0 [divergent]=0)
reports=0
raft_runs=0
power_runs=0
declare -A ptotal=([attempted]=0 [acked]=0 [lost]=0 [dup]=0 [divergent]=0)
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  log="$OUT/round-$round.log"
  ok=1
  cargo test -p drawbridge-tests --test faults --locked -- --nocapture --test-threads=1 \
    $filter >"$log" 2>&1 || ok=0
  cargo test -p drawbridge-tests --test diskfull_cluster --locked -- --nocapture \
    --test-threads=1 $filter >>"$log" 2>&1 || ok=0
  if [ "$raft" = 1 ]; then
    seed=$(( (RANDOM << 15) | RANDOM ))
    echo "RAFT_FAULT_SEED=$seed" >>"$log"
    RAFT_FAULT_SEED=$seed cargo test -p drawbridge-raft --test raft --locked -- --nocapture \
      network_partitions >>"$log" 2>&1 || { ok=0; echo "raft seed $seed FAILED (replay: RAFT_FAULT_SEED=$seed)"; }
    raft_runs=$((raft_runs + 1))
    pseed=$(( (RANDOM << 15) | RANDOM ))
    POWER_LOSS_SEED=$pseed POWER_LOSS_ROUNDS=4 cargo test -p drawbridge-raft --test raft --locked \
      -- --nocapture power_loss >>"$log" 2>&1 || { ok=0; echo "power-loss seed $pseed FAILED (replay: POWER_LOSS_SEED=$pseed)"; }
    while read -r line; do
      power_runs=$((power_runs + 1))
      for k in attempted acked lost dup divergent; do
        v=$(sed -n "s/.* $k \([0-9]\+\).*/\1/p" <<<" ${line#*seed}")
        ptotal[$k]=$(( ptotal[$k] + ${v:-0} ))
      done
    done < <(grep -o '^power loss .* attempted.*' "$log" || true)
  fi
  while read -r line; do
    reports=$((reports + 1))
    for k in attempted acknowledged read lost duplicated divergent; do
      v=$(sed -n "s/.* $k \([0-9]\+\).*/\1/p" <<<" ${line#*checker:}")
      total[$k]=$(( total[$k] + ${v:-0} ))
    done
  done < <(grep -v 'LEADER-ack checker' "$log" | grep -o 'checker: attempted.*' || true)
  if [ "$ok" = 1 ]; then
    echo "round $round: ok"
    rm -f "$log"
  else
    failed=$((failed + 1))
    echo "round $round: FAILED (log: $log)"
  fi
done

echo "rounds: $round, failed: $failed, checker reports: $reports, raft seeded runs: $raft_runs"
echo "totals: attempted ${total[attempted]} acknowledged ${total[acknowledged]} read ${total[read]}" \
  "lost ${total[lost]} duplicated ${total[duplicated]} divergent ${total[divergent]}"
echo "power-loss runs (4 seeded cuts each): $power_runs; attempted ${ptotal[attempted]}" \
  "acked ${ptotal[acked]} lost ${ptotal[lost]} dup ${ptotal[dup]} divergent ${ptotal[divergent]}"
[ "$failed" = 0 ]
