//! Network partitions on the raft transport (`drawbridge_raft::testing::NetworkFaults`): a
//! leader cut off from the majority cannot commit, the majority elects a new leader and goes on,
//! and after healing every replica converges without losing a committed entry. Then seeded
//! random faults (isolations, one-way blocks, drops, delays); a failing seed is printed so it
//! replays with `RAFT_FAULT_SEED=<seed>`.
//!
//! Invariant checked (raft's "leader completeness" as the client sees it): every entry whose
//! proposal returned committed is, after healing, at the offset it was given, with its value, in
//! every replica's log; and the replicas' logs are identical up to the common high watermark
//! (`Log::checksum`).

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use drawbridge_raft::testing::NetworkFaults;
use drawbridge_raft::NodeId;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionReplica;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use crate::harness::fast_timings;
use crate::harness::partition_leader;
use crate::harness::Cluster;

const T: Duration = Duration::from_secs(10);

/// Seeds run by default; `RAFT_FAULT_SEED` runs one instead.
const SEEDS: [u64; 3] = [7, 11, 2024];

/// How long faults are injected per seed.
const CHAOS: Duration = Duration::from_secs(6);

/// A one-record batch holding `value`.
fn batch(value: &str) -> Bytes {
    let r = Record {
        timestamp: 1,
        key: None,
        headers: Vec::new(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    };
    drawbridge_storage::encode_records(&[r]).expect("encode")
}

/// Committed entries as their proposers saw them: offset → value.
type Acked = BTreeMap<u64, String>;

/// Waits (≤ 30 s) until every replica has the same high watermark and log end, at least the
/// newest acknowledged offset; then checks every acknowledged entry in every replica's log and
/// compares the replicas' checksums. Returns the common high watermark.
async fn converged(replicas: &[PartitionReplica], acked: &Acked, what: &str) -> Option<u64> {
    let want = acked.keys().next_back().copied();
    let deadline = Instant::now() + Duration::from_secs(30);
    let hw = loop {
        let hws: Vec<Option<u64>> = replicas.iter().map(|r| r.log().high_watermark()).collect();
        let nexts: Vec<u64> = replicas.iter().map(|r| r.next_offset()).collect();
        let agreed = hws.iter().all(|h| *h == hws[0])
            && nexts.iter().all(|n| *n == nexts[0])
            && hws[0].map_or(0, |h| h + 1) == nexts[0]
            && hws[0] >= want;
        if agreed {
            break hws[0];
        }
        assert!(
            Instant::now() < deadline,
            "{what}: replicas did not converge: high watermarks {hws:?}, next offsets {nexts:?}, \
             newest acknowledged {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut sums = Vec::new();
    for r in replicas {
        let log = r.log();
        let got: BTreeMap<u64, String> = log
            .read(0, ReadLimits::records(1_000_000))
            .expect("read")
            .into_iter()
            .map(|v| (v.offset, String::from_utf8_lossy(&v.value).into_owned()))
            .collect();
        for (o, v) in acked {
            assert_eq!(
                got.get(o),
                Some(v),
                "{what}: node {} lost or changed the committed entry at offset {o}",
                r.group_node()
            );
        }
        if let Some(hw) = hw {
            sums.push((r.group_node(), log.checksum(0, hw).expect("checksum")));
        }
    }
    assert!(
        sums.iter().all(|(_, s)| *s == sums[0].1),
        "{what}: replicas diverge: {sums:?}"
    );
    hw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_cannot_commit() {
    let faults = NetworkFaults::new(1);
    let c = Cluster::start_faulty(3, fast_timings(), faults.clone()).await;
    let p = PartitionId::new("partitioned", 0);
    let replicas = c.create_partition(&p).await;
    let old = partition_leader(&replicas, T).await;
    let old_id = old.group_node();
    let mut acked = Acked::new();
    for i in 0..5 {
        let v = format!("before-{i}");
        let o = old.append(batch(&v), 1, T).await.expect("append before");
        acked.insert(o.base_offset, v);
    }
    let majority: Vec<NodeId> = (1..=3).filter(|n| *n != old_id).collect();
    faults.partition(&[old_id], &majority);

    // The old leader still takes proposals, but none commits.
    let mut stranded = Vec::new();
    for i in 0..3 {
        let mut prop = old.propose(batch(&format!("stranded-{i}")), 1);
        if prop.appended_locally(Duration::from_secs(2)).await.is_ok() {
            stranded.push(prop);
        }
    }
    // The majority elects a new leader and commits.
    let deadline = Instant::now() + T;
    let new = loop {
        if let Some(r) = replicas
            .iter()
            .find(|r| r.group_node() != old_id && r.is_leader())
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no leader on the majority side");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for i in 0..5 {
        let v = format!("majority-{i}");
        let o = new
            .append(batch(&v), 1, T)
            .await
            .expect("append on the majority");
        acked.insert(o.base_offset, v);
    }
    for prop in stranded {
        let r = prop.committed(Duration::from_secs(1)).await;
        assert!(
            r.is_err(),
            "an entry proposed on the cut-off leader was acknowledged as committed: {r:?}"
        );
    }
    assert!(faults.dropped() > 0);

    faults.heal();
    converged(&replicas, &acked, "after healing").await;
    // The deposed leader follows the new one.
    let deadline = Instant::now() + T;
    while old.is_leader() || old.leader().is_none() {
        assert!(Instant::now() < deadline, "the old leader did not rejoin");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiesced_leader_cut_off_is_replaced_and_nothing_committed_is_lost() {
    let faults = NetworkFaults::new(3);
    let c = Cluster::start_faulty(3, fast_timings(), faults.clone()).await;
    let p = PartitionId::new("quiet-partitioned", 0);
    let replicas = c.create_partition(&p).await;
    let old = partition_leader(&replicas, T).await;
    let old_id = old.group_node();
    let mut acked = Acked::new();
    for i in 0..3 {
        let v = format!("before-{i}");
        let o = old.append(batch(&v), 1, T).await.expect("append before");
        acked.insert(o.base_offset, v);
    }
    // Idle: the leader quiesces the group (no more heartbeats, only liveness beats).
    let deadline = Instant::now() + T;
    while c.node(old_id).quiesced_partition_groups() != 1 {
        assert!(Instant::now() < deadline, "the group did not quiesce");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_term = old.term();
    let majority: Vec<NodeId> = (1..=3).filter(|n| *n != old_id).collect();
    faults.partition(&[old_id], &majority);

    // The majority stops getting the old leader's liveness beats and elects a new leader.
    let deadline = Instant::now() + T;
    let new = loop {
        if let Some(r) = replicas
            .iter()
            .find(|r| r.group_node() != old_id && r.is_leader())
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no leader on the majority side");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(new.term() > old_term);
    for i in 0..3 {
        let v = format!("majority-{i}");
        let o = new
            .append(batch(&v), 1, T)
            .await
            .expect("append on the majority");
        acked.insert(o.base_offset, v);
    }
    faults.heal();
    converged(&replicas, &acked, "after healing").await;
    let deadline = Instant::now() + T;
    while old.is_leader() || old.leader().is_none() {
        assert!(Instant::now() < deadline, "the old leader did not rejoin");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.shutdown().await;
}

/// SplitMix64: the test's own seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counts of one seeded run.
#[derive(Debug, Default)]
struct Totals {
    attempted: u64,
    acknowledged: u64,
    failed: u64,
    faults: u64,
    dropped: u64,
}

/// One seeded run: a writer appends one-record batches to whichever replica leads while a
/// chaos loop injects faults for [`CHAOS`]; then everything heals and must converge.
async fn random_run(seed: u64) -> Totals {
    let faults = NetworkFaults::new(seed);
    let c = Cluster::start_faulty(3, fast_timings(), faults.clone()).await;
    let p = PartitionId::new("chaos", 0);
    let replicas = c.create_partition(&p).await;
    partition_leader(&replicas, T).await;
    let mut totals = Totals::default();
    let mut acked = Acked::new();
    let end = Instant::now() + CHAOS;
    let writer = async {
        let mut n = 0u64;
        let (mut attempted, mut failed) = (0u64, 0u64);
        while Instant::now() < end {
            let Some(leader) = replicas.iter().find(|r| r.is_leader()) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let v = format!("v{n}");
            n += 1;
            attempted += 1;
            match leader
                .append(batch(&v), 1, Duration::from_millis(1500))
                .await
            {
                Ok(o) => {
                    let before = acked.insert(o.base_offset, v.clone());
                    assert!(
                        before.is_none(),
                        "seed {seed}: offset {} acknowledged twice ({before:?}, {v})",
                        o.base_offset
                    );
                }
                Err(_) => failed += 1,
            }
        }
        (attempted, failed)
    };
    let chaos = async {
        let mut rng = Rng(seed ^ 0x5eed);
        let mut injected = 0u64;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(200 + rng.below(400))).await;
            let node = 1 + rng.below(3);
            let others: Vec<NodeId> = (1..=3).filter(|n| *n != node).collect();
            match rng.below(6) {
                0 => faults.partition(&[node], &others),
                1 => {
                    if let Some(l) = replicas.iter().find(|r| r.is_leader()) {
                        let l = l.group_node();
                        let rest: Vec<NodeId> = (1..=3).filter(|n| *n != l).collect();
                        faults.partition(&[l], &rest);
                    }
                }
                2 => faults.block(node, others[rng.below(2) as usize]),
                3 => faults.set_drop_rate(rng.below(30) as f64 / 100.0),
                4 => faults.set_delay(Duration::ZERO, Duration::from_millis(rng.below(60))),
                _ => faults.heal(),
            }
            injected += 1;
        }
        injected
    };
    let ((attempted, failed), injected) = tokio::join!(writer, chaos);
    totals.attempted = attempted;
    totals.failed = failed;
    totals.faults = injected;
    totals.dropped = faults.dropped();
    faults.heal();
    // One more committed entry after healing: the cluster works again. A leader that was cut
    // off may still believe it leads for a moment after the heal (NotLeader once the others'
    // newer term reaches it), so the append is retried against whoever leads then, a bounded
    // number of times; each attempt has its own value, so one that timed out but committed
    // anyway is just an unacknowledged entry.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    let (o, v) = loop {
        attempt += 1;
        let v = format!("after-heal-{attempt}");
        let leader = partition_leader(&replicas, T).await;
        match leader.append(batch(&v), 1, T).await {
            Ok(o) => break (o, v),
            Err(e) => {
                assert!(
                    attempt < 20 && Instant::now() < deadline,
                    "seed {seed}: append after heal: {e} ({attempt} attempts)"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    acked.insert(o.base_offset, v);
    totals.acknowledged = acked.len() as u64;
    converged(&replicas, &acked, &format!("seed {seed}")).await;
    c.shutdown().await;
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_network_faults_lose_no_committed_entry() {
    let seeds: Vec<u64> = match std::env::var("RAFT_FAULT_SEED") {
        Ok(s) => vec![s.trim().parse().expect("RAFT_FAULT_SEED is a number")],
        Err(_) => SEEDS.to_vec(),
    };
    for seed in seeds {
        match tokio::spawn(random_run(seed)).await {
            Ok(t) => eprintln!("network faults: seed {seed}: {t:?}"),
            Err(e) => panic!(
                "network faults: seed {seed} failed: {e}\nreplay: RAFT_FAULT_SEED={seed} cargo test \
                 -p drawbridge-raft --test raft random_network_faults"
            ),
        }
    }
}
