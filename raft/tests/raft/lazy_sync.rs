//! `RaftConfig::partition_log_sync`: the lazy policies acknowledge partition appends without an
//! fsync on the ack path, `Always` fsyncs before every acknowledgement. Measured with the node's
//! flusher counters (`io_stats().log_syncs` counts ack-path log fsyncs only) on a single node,
//! whose metadata group is idle while the partition is written.
//!
//! Unclean restarts under a lazy policy (`raft/src/partition/unclean.rs`): a replica whose node
//! lost power (`drawbridge_storage::powerloss::cut`, so no clean-shutdown marker can be written)
//! holds its votes and elections until a leader caught it up; a clean restart does not; a
//! single-voter group and a group whose voters all restarted unclean still elect a leader.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_raft::LogSyncPolicy;
use drawbridge_raft::NodeId;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionReplica;
use drawbridge_raft::RaftConfig;
use drawbridge_raft::RaftNode;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use drawbridge_storage::powerloss;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::partition_leader;
use crate::harness::Cluster;
use crate::harness::MACHINE;

const T: Duration = Duration::from_secs(10);

fn batch(i: u32) -> Bytes {
    let r = Record {
        timestamp: i64::from(i),
        key: None,
        headers: Vec::new(),
        value: Bytes::from(format!("lazy-{i}")),
    };
    drawbridge_storage::encode_records(&[r]).expect("encode records")
}

/// Appends `n` single-record batches (both ack levels) on a one-node partition under `sync`;
/// returns the ack-path log fsyncs they caused and checks every record reads back.
async fn ack_path_syncs(sync: LogSyncPolicy, n: u32) -> u64 {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut config = RaftConfig::new(1, "");
    config.metadata = fast_timings();
    config.partition = fast_timings();
    config.partition_log_sync = sync;
    let node = RaftNode::start(config, tmp.path(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start node");
    let addr = node.local_addr().to_string();
    node.metadata()
        .bootstrap(BTreeMap::from([(1, addr.clone())]))
        .await
        .expect("bootstrap");
    node.metadata()
        .wait_for_leader(T)
        .await
        .expect("metadata leader");
    let p = PartitionId::new("lazy", 0);
    let replica = node
        .create_partition_group(p, BTreeMap::from([(1, addr)]))
        .await
        .expect("create group");
    replica.wait_for_leader(T).await.expect("partition leader");
    // The leader's first (blank) entry is committed once a write commits.
    replica.append(batch(0), 1, T).await.expect("first append");
    let before = node.io_stats().log_syncs;
    for i in 1..n {
        let mut prop = replica.propose(batch(i), 1);
        prop.appended_locally(T).await.expect("LEADER ack");
        let o = prop.committed(T).await.expect("ALL ack");
        assert_eq!(o.base_offset, u64::from(i));
    }
    let syncs = node.io_stats().log_syncs - before;
    let read = replica
        .log()
        .read(0, ReadLimits::records(10_000))
        .expect("read back");
    assert_eq!(
        read.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..u64::from(n)).collect::<Vec<_>>()
    );
    node.shutdown().await;
    syncs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_policies_skip_the_fsync_on_the_ack_path() {
    let _shared = MACHINE.read().await;
    let always = ack_path_syncs(LogSyncPolicy::Always, 20).await;
    assert!(
        always >= 19,
        "Always must fsync before each ack: {always} log syncs for 19 sequential appends"
    );
    for lazy in [
        LogSyncPolicy::Interval {
            interval_ms: 60_000,
        },
        LogSyncPolicy::Never,
    ] {
        let syncs = ack_path_syncs(lazy, 20).await;
        assert_eq!(syncs, 0, "{lazy:?} must not fsync on the ack path");
    }
}

fn never(_: NodeId, c: &mut RaftConfig) {
    c.partition_log_sync = LogSyncPolicy::Never;
}

fn never_short_hold(_: NodeId, c: &mut RaftConfig) {
    c.partition_log_sync = LogSyncPolicy::Never;
    c.unclean_restart_hold_ms = Some(1_500);
}

/// Stops node `id` as a power loss would: its syncs fail from now on (so no clean-shutdown
/// marker is written), then its files are rewritten to what a disk could hold after the cut.
async fn lose_power(c: &mut Cluster, id: NodeId, seed: u64) {
    let dir = c.members[(id - 1) as usize].dir.clone();
    powerloss::cut(&dir);
    c.stop(id).await;
    powerloss::restore(&dir, seed, true).expect("restore after the cut");
}

/// Appends `n` batches through whichever replica leads.
async fn write(replicas: &[PartitionReplica], from: u32, n: u32) {
    let leader = partition_leader(replicas, T).await;
    for i in from..from + n {
        leader.append(batch(i), 1, T).await.expect("append");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_restart_holds_votes_until_a_leader_caught_it_up() {
    let mut c = Cluster::start_tweaked(3, fast_timings(), never).await;
    let p = PartitionId::new("hold", 0);
    let replicas = c.create_partition(&p).await;
    write(&replicas, 0, 10).await;
    let leader = partition_leader(&replicas, T).await.group_node();
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let other = (1..=3)
        .find(|n| *n != leader && *n != follower)
        .expect("a third node");
    drop(replicas);
    // A clean stop writes the marker: the restarted replica votes at once.
    c.stop(other).await;
    let back = c.rejoin(other, &p).await;
    assert!(!back.holds_votes(), "a clean restart must not hold votes");
    drop(back);
    // Everyone stops; `follower` loses power, the others stop cleanly.
    lose_power(&mut c, follower, 7).await;
    c.stop(other).await;
    c.stop(leader).await;
    // The unclean replica and one clean one: the clean one cannot win without the unclean
    // one's vote, and the unclean one does not campaign.
    let unclean = c.rejoin(follower, &p).await;
    let clean = c.rejoin(other, &p).await;
    assert!(unclean.holds_votes(), "no leader can have caught it up yet");
    let pair = [unclean.clone(), clean.clone()];
    for _ in 0..30 {
        assert!(
            pair.iter().all(|r| !r.is_leader()),
            "a leader was elected with the vote of a replica that restarted unclean"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unclean.holds_votes());
    // The third replica comes back: a leader is elected, catches the unclean one up, and it
    // votes again; writes work.
    let third = c.rejoin(leader, &p).await;
    let all = [unclean.clone(), clean, third];
    write(&all, 10, 5).await;
    eventually("the unclean replica caught up", T, || {
        !unclean.holds_votes()
    })
    .await;
    drop(all);
    drop(pair);
    drop(unclean);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_group_elects_itself_after_an_unclean_restart() {
    let mut c = Cluster::start_tweaked(1, fast_timings(), never).await;
    let p = PartitionId::new("alone", 0);
    let replicas = c.create_partition(&p).await;
    write(&replicas, 0, 5).await;
    drop(replicas);
    lose_power(&mut c, 1, 11).await;
    let back = c.rejoin(1, &p).await;
    assert!(
        !back.holds_votes(),
        "a lone voter has no one to catch up from"
    );
    // Right after the restart the recovered vote may still name this node leader of the old
    // term while its new campaign runs: retry until it leads again (bounded).
    let deadline = std::time::Instant::now() + T;
    let o = loop {
        match back.append(batch(100), 1, T).await {
            Ok(o) => break o,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no append after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let read = back
        .log()
        .read(0, ReadLimits::records(1_000))
        .expect("read back");
    assert_eq!(read.last().map(|r| r.offset), Some(o.base_offset));
    drop(back);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_whose_voters_all_restarted_unclean_elects_after_the_hold() {
    let mut c = Cluster::start_tweaked(3, fast_timings(), never_short_hold).await;
    let p = PartitionId::new("all-unclean", 0);
    let replicas = c.create_partition(&p).await;
    write(&replicas, 0, 10).await;
    drop(replicas);
    for id in 1..=3 {
        lose_power(&mut c, id, 100 + id).await;
    }
    let mut all = Vec::new();
    for id in 1..=3 {
        all.push(c.rejoin(id, &p).await);
    }
    // Held for `unclean_restart_hold_ms` (1.5 s), then the group elects from what the disks
    // kept, as it would without the hold.
    write(&all, 10, 3).await;
    assert!(all.iter().all(|r| !r.holds_votes()));
    drop(all);
    c.shutdown().await;
}
