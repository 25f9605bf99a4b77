//! `RaftConfig::partition_log_sync`: the lazy policies acknowledge partition appends without an
//! fsync on the ack path, `Always` fsyncs before every acknowledgement. Measured with the node's
//! flusher counters (`io_stats().log_syncs` counts ack-path log fsyncs only) on a single node,
//! whose metadata group is idle while the partition is written.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_raft::LogSyncPolicy;
use drawbridge_raft::PartitionId;
use drawbridge_raft::RaftConfig;
use drawbridge_raft::RaftNode;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use crate::harness::fast_timings;
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
