//! Simulated power loss (issue 7, fault 6), in process: three nodes over real gRPC publish
//! with commit (ALL) acks while, at seeded random moments, the power of one or two nodes is cut
//! (`drawbridge_storage::powerloss`: from the cut on nothing of that node becomes durable, so
//! it can neither ack nor vote on anything it would lose), the node stops without a clean
//! shutdown's syncs, its files are rewritten to a state a disk could hold after the cut
//! (un-synced bytes dropped, zeroed, partly kept or replaced by a torn page of garbage), and it
//! restarts on the same data dir.
//!
//! Checked after every run (the checker of `drawbridge_tests::checker` in miniature: the raft
//! crate cannot depend on the tests crate):
//! - every acknowledged (committed) value is present, at its acknowledged offset, on every
//!   replica once they have converged (none **lost**);
//! - replicas agree offset by offset (none **divergent**), offsets are dense from 0, and no
//!   value is stored twice (none **duplicated**: the publisher never retries);
//! - a restarted node's raft term never goes back below the term it had before the cut (its
//!   vote is synced before it is used, so it cannot vote twice in one term);
//! - nothing panics (a panic fails the test).
//!
//! Policies: under `LogSyncPolicy::Always` one or two of the three nodes lose power at once
//! (committed = durable on a majority, so even two cuts lose nothing committed). Under
//! `LogSyncPolicy::Never` a node acknowledges from the page cache, so a cut node may lose
//! entries it acknowledged; one node is cut per round, and because the restarted node holds
//! its votes until it caught up (`raft/src/partition/unclean.rs`), nothing committed is
//! lost (two cuts at once under a lazy policy can lose committed entries by design). A round
//! starts only once the previous round's victim caught up: a cut before that would make two
//! unclean replicas of three, which holds the group until a clean majority is back.
//!
//! Seeds are printed; `POWER_LOSS_SEED=<n>` replays one, `POWER_LOSS_ROUNDS=<n>` (default 2)
//! runs more cuts per test.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use drawbridge_raft::LogSyncPolicy;
use drawbridge_raft::NodeId;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionReplica;
use drawbridge_raft::RaftConfig;
use drawbridge_storage::powerloss;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::partition_leader;
use crate::harness::Cluster;

const T: Duration = Duration::from_secs(15);
/// Per-append timeout of the publishers (an append to a node that lost power fails).
const APPEND_T: Duration = Duration::from_secs(3);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn batch(value: &str) -> Bytes {
    let r = Record {
        timestamp: 1,
        key: None,
        headers: Vec::new(),
        value: Bytes::from(value.to_owned()),
    };
    drawbridge_storage::encode_records(&[r]).expect("encode records")
}

type Replicas = Arc<Mutex<BTreeMap<NodeId, PartitionReplica>>>;

#[derive(Default)]
struct Totals {
    attempted: u64,
    acked: Vec<(String, u64)>,
}

/// Publishes `<tag>-<i>` values one at a time to whichever replica leads, until `stop`.
async fn publish(
    replicas: Replicas,
    stop: Arc<AtomicBool>,
    tag: String,
    totals: Arc<Mutex<Totals>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..100_000u64 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let leader = replicas
            .lock()
            .expect("replicas")
            .values()
            .find(|r| r.is_leader())
            .cloned();
        let Some(leader) = leader else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let v = format!("{tag}-{i}");
        totals.lock().expect("totals").attempted += 1;
        match leader.append(batch(&v), 1, APPEND_T).await {
            Ok(o) => totals
                .lock()
                .expect("totals")
                .acked
                .push((v, o.base_offset)),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn always(_: NodeId, _: &mut RaftConfig) {}

fn never(_: NodeId, c: &mut RaftConfig) {
    c.partition_log_sync = LogSyncPolicy::Never;
}

/// Runs `rounds` power cuts on a 3-node cluster; `max_victims` nodes at most per cut.
async fn run(name: &str, tweak: fn(NodeId, &mut RaftConfig), max_victims: u64) {
    let seed = powerloss::seed_from_env("POWER_LOSS_SEED");
    let rounds = env_u64("POWER_LOSS_ROUNDS").unwrap_or(2);
    eprintln!("power loss {name}: seed {seed}, {rounds} rounds (replay: POWER_LOSS_SEED={seed})");
    let mut rng = powerloss::Rng::new(seed);
    let mut c = Cluster::start_tweaked(3, fast_timings(), tweak).await;
    let p = PartitionId::new(name, 0);
    let replicas: Replicas = Arc::new(Mutex::new(
        c.create_partition(&p)
            .await
            .into_iter()
            .map(|r| (r.group_node(), r))
            .collect(),
    ));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let mut dropped_bytes = 0u64;
    for round in 0..rounds {
        let all: Vec<PartitionReplica> = replicas
            .lock()
            .expect("replicas")
            .values()
            .cloned()
            .collect();
        partition_leader(&all, T).await;
        // One machine down at a time: the last victim must have caught up (it holds its votes
        // until then), or this cut would make two unclean replicas of three, a case that
        // waits for a clean majority by design (docs/operations.md).
        eventually("the restarted replicas caught up", T, || {
            all.iter().all(|r| !r.holds_votes())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let terms: HashMap<NodeId, u64> = all.iter().map(|r| (r.group_node(), r.term())).collect();
        drop(all);
        let n_victims = 1 + rng.below(max_victims);
        let mut victims: Vec<NodeId> = Vec::new();
        while (victims.len() as u64) < n_victims {
            let v = 1 + rng.below(3);
            if !victims.contains(&v) {
                victims.push(v);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let publishers: Vec<_> = (0..2)
            .map(|k| {
                tokio::spawn(publish(
                    replicas.clone(),
                    stop.clone(),
                    format!("r{round}p{k}"),
                    totals.clone(),
                ))
            })
            .collect();
        let wait = Duration::from_millis(150 + rng.below(600));
        tokio::time::sleep(wait).await;
        let dirs: Vec<PathBuf> = victims
            .iter()
            .map(|v| c.members[(*v - 1) as usize].dir.clone())
            .collect();
        for d in &dirs {
            powerloss::cut(d);
        }
        eprintln!("  round {round}: power cut on nodes {victims:?} after {wait:?}");
        for v in &victims {
            tokio::time::timeout(Duration::from_secs(40), c.stop(*v))
                .await
                .expect("a node without power stops");
        }
        stop.store(true, Ordering::Relaxed);
        for h in publishers {
            h.await.expect("publisher task");
        }
        // Every handle on the dead nodes' logs must be gone before their files are rewritten.
        {
            let mut r = replicas.lock().expect("replicas");
            for v in &victims {
                r.remove(v);
            }
        }
        for (v, d) in victims.iter().zip(&dirs) {
            let restored =
                powerloss::restore(d, rng.next_u64(), true).expect("restore after the cut");
            dropped_bytes += restored.bytes_dropped();
            eprintln!(
                "  node {v}: {} files rewritten, {} un-synced bytes dropped",
                restored.files.len(),
                restored.bytes_dropped()
            );
        }
        for v in &victims {
            let back = c.rejoin(*v, &p).await;
            let before = terms.get(v).copied().unwrap_or(0);
            assert!(
                back.term() >= before,
                "node {v}: term went back from {before} to {} across a power cut (seed {seed})",
                back.term()
            );
            replicas.lock().expect("replicas").insert(*v, back);
        }
    }
    // A final committed write in the last term, then convergence.
    let all: Vec<PartitionReplica> = replicas
        .lock()
        .expect("replicas")
        .values()
        .cloned()
        .collect();
    let leader = partition_leader(&all, T).await;
    let o = leader
        .append(batch("final"), 1, T)
        .await
        .expect("final append");
    totals
        .lock()
        .expect("totals")
        .acked
        .push(("final".into(), o.base_offset));
    let end = o.base_offset + 1;
    let deadline = Instant::now() + T;
    while !all
        .iter()
        .all(|r| r.next_offset() == end && r.log().high_watermark() == Some(end - 1))
    {
        let state: Vec<_> = all
            .iter()
            .map(|r| {
                (
                    r.group_node(),
                    r.next_offset(),
                    r.log().high_watermark(),
                    r.leader(),
                )
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "replicas did not converge on {end} offsets: (node, next offset, hw, leader) {state:?} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs: Vec<(NodeId, Vec<(u64, Bytes)>)> = all
        .iter()
        .map(|r| {
            let recs = r
                .log()
                .read(0, ReadLimits::records(1_000_000))
                .expect("read partition log");
            (
                r.group_node(),
                recs.into_iter().map(|v| (v.offset, v.value)).collect(),
            )
        })
        .collect();
    let (mut lost, mut dup, mut divergent) = (0u64, 0u64, 0u64);
    let reference = &logs[0].1;
    for (node, log) in &logs {
        assert!(
            log.iter().enumerate().all(|(i, (o, _))| *o == i as u64),
            "node {node}: offsets are not dense from 0 (seed {seed})"
        );
        divergent += log
            .iter()
            .zip(reference.iter())
            .filter(|(a, b)| a.1 != b.1)
            .count() as u64;
        divergent += (log.len() as i64 - reference.len() as i64).unsigned_abs();
    }
    let mut seen: HashMap<&[u8], u64> = HashMap::new();
    for (_, v) in reference {
        *seen.entry(v.as_ref()).or_default() += 1;
    }
    dup += seen.values().filter(|n| **n > 1).count() as u64;
    let (attempted, acked) = {
        let t = totals.lock().expect("totals");
        (t.attempted, t.acked.clone())
    };
    for (v, off) in &acked {
        for (node, log) in &logs {
            match log.get(*off as usize) {
                Some((_, got)) if got.as_ref() == v.as_bytes() => {}
                other => {
                    lost += 1;
                    eprintln!(
                        "LOST: {v} acked at offset {off}, node {node} has {:?}",
                        other.map(|(_, b)| String::from_utf8_lossy(b).into_owned())
                    );
                    for r in &all {
                        eprintln!("  node {}: {}", r.group_node(), describe(r, *off));
                    }
                }
            }
        }
    }
    eprintln!(
        "power loss {name} seed {seed}: attempted {} acked {} read {} lost {lost} dup {dup} divergent {divergent}; {dropped_bytes} un-synced bytes dropped",
        attempted + 1,
        acked.len(),
        reference.len()
    );
    assert_eq!(
        (lost, dup, divergent),
        (0, 0, 0),
        "power loss {name}: lost/duplicated/divergent (replay: POWER_LOSS_SEED={seed})"
    );
    assert!(acked.len() > 1, "the run acknowledged something");
    drop(all);
    drop(leader);
    replicas.lock().expect("replicas").clear();
    c.shutdown().await;
}

/// The raft (term, index) of the batches around `offset` on `r` (diagnostics of a failure).
fn describe(r: &PartitionReplica, offset: u64) -> String {
    match r.log().batches_by_raft_index(..) {
        Ok(batches) => batches
            .iter()
            .filter(|b| b.base_offset + 3 >= offset && b.base_offset <= offset + 3)
            .map(|b| {
                format!(
                    "[off {} term {} index {} {:?}]",
                    b.base_offset, b.meta.raft_term, b.meta.raft_index, b.meta.kind
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("unreadable: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_sync_always_loses_nothing_committed() {
    run("power-always", always, 2).await;
}

/// Under a lazy policy a follower's ack counts towards the commit quorum before the entry is
/// on its disk, so the power loss of that one node can leave a committed entry on a minority.
/// It used to be lost: the restarted node (its log now shorter) voted a leader that lacked the
/// entry (seed 1795738041129817719: node 3 at high watermark 205, leader at 200, about one run
/// in six with 4 cuts). A node restarting without a clean shutdown under a lazy policy now
/// holds its votes and elections until a leader caught it up (`raft/src/partition/unclean.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_of_one_node_under_sync_never_loses_nothing_committed() {
    run("power-never", never, 1).await;
}
