//! Compaction by key on a 3-node partition group: each replica compacts its own log at its own
//! time (no raft purge), appends go on meanwhile, and a follower that was down catches up from a
//! leader whose log is compacted — it accepts the compacted entries (emptied ones included) with
//! its offsets in step, and every replica ends with the same logical content.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_raft::PartitionId;
use drawbridge_raft::PartitionLogSettings;
use drawbridge_raft::PartitionReplica;
use drawbridge_storage::ChecksumMode;
use drawbridge_storage::CompactionOutcome;
use drawbridge_storage::ReadLimits;
use drawbridge_storage::Record;

use crate::harness::eventually;
use crate::harness::fast_timings;
use crate::harness::partition_leader;
use crate::harness::Cluster;

const T: Duration = Duration::from_secs(10);

fn small() -> PartitionLogSettings {
    PartitionLogSettings {
        segment_max_bytes: Some(4096),
        segment_max_age: None,
    }
}

/// The records of batch `i`: two of key `k{i % 4}` (so a superseded batch empties out
/// entirely) and, every third batch, a keyless one.
fn records(i: u32) -> Vec<Record> {
    let key = Bytes::from(format!("k{}", i % 4));
    let mut records: Vec<Record> = (0..2)
        .map(|j| Record {
            timestamp: i64::from(i) * 10 + j,
            key: Some(key.clone()),
            headers: Vec::new(),
            value: Bytes::from(format!("value-{i}-{j}-{:0>150}", 0)),
        })
        .collect();
    if i % 3 == 0 {
        records.push(Record {
            timestamp: i64::from(i) * 10 + 5,
            key: None,
            headers: Vec::new(),
            value: Bytes::from(format!("keyless-{i}")),
        });
    }
    records
}

/// Batch `i` encoded, and its record count.
fn batch(i: u32) -> (Bytes, u32) {
    let records = records(i);
    let n = records.len() as u32;
    (
        drawbridge_storage::encode_records(&records).expect("encode records"),
        n,
    )
}

/// What batches `0..batches` appended, by offset (offsets are given out in append order).
fn original_records(batches: u32) -> std::collections::BTreeMap<u64, Record> {
    let mut out = std::collections::BTreeMap::new();
    for i in 0..batches {
        for rec in records(i) {
            out.insert(out.len() as u64, rec);
        }
    }
    out
}

async fn append_range(r: &PartitionReplica, range: std::ops::Range<u32>) -> u64 {
    let mut next = 0;
    for i in range {
        let (body, n) = batch(i);
        let o = r.append(body, n, T).await.expect("append");
        next = o.base_offset + u64::from(n);
    }
    next
}

async fn compact(r: &PartitionReplica) -> CompactionOutcome {
    let r = r.clone();
    tokio::task::spawn_blocking(move || r.compact_by_key())
        .await
        .expect("compaction thread")
        .expect("compact")
}

fn sum(r: &PartitionReplica, to: u64, mode: ChecksumMode) -> (u64, u64) {
    let s = r.log().checksum_with(0, to, mode).expect("checksum");
    (s.records, s.checksum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_compact_independently_and_a_lagging_follower_takes_compacted_entries() {
    let mut c = Cluster::start(3, fast_timings()).await;
    let p = PartitionId::new("compacted", 0);
    let replicas: Vec<PartitionReplica> = futures::future::join_all(
        c.running()
            .map(|n| n.create_partition_group_with(p.clone(), c.replicas(), small())),
    )
    .await
    .into_iter()
    .map(|r| r.expect("create group"))
    .collect();
    let leader = partition_leader(&replicas, T).await;
    let follower = replicas
        .iter()
        .find(|r| !r.is_leader())
        .cloned()
        .expect("a follower");
    let lagger = (1..=3)
        .find(|i| *i != leader.group_node() && *i != follower.group_node())
        .expect("a third node");
    drop(replicas);
    c.stop(lagger).await;

    // The leader compacts while appends go on.
    append_range(&leader, 0..60).await;
    let (appended, out) = tokio::join!(append_range(&leader, 60..80), compact(&leader));
    assert!(
        out.segments_rewritten > 0 && out.records_removed > 0,
        "{out:?}"
    );
    // The follower compacts later, at another point of the log.
    append_range(&leader, 80..100).await;
    let end = append_range(&leader, 100..110).await;
    assert!(end > appended);
    eventually("follower applied", T, || follower.next_offset() == end).await;
    let out = compact(&follower).await;
    assert!(out.records_removed > 0, "{out:?}");
    // The leader's emptied batches are still raft entries with their offsets.
    let entries = leader
        .log()
        .batches_by_raft_index(..)
        .expect("leader entries");
    assert!(
        entries
            .iter()
            .any(|b| b.meta.kind.is_data() && b.record_count == 0),
        "some batch lost every record"
    );

    // Leadership moves to the follower before the lagger returns. Why: the old leader's
    // replication stream to the down lagger keeps its last unacknowledged payload and resends
    // it as is, so entries it read before its compaction would reach the lagger uncompacted
    // (the original records: correct, but the assertions below would depend on timing). A new
    // leader's streams start after both compactions, so everything it sends is read from a
    // compacted log.
    let moved = leader.transfer_leadership(T).await.expect("transfer");
    assert_eq!(moved, Some(follower.group_node()));
    eventually("follower leads", T, || follower.is_leader()).await;
    let term = follower.term();

    // The lagger comes back: raft replicates the new leader's compacted entries to it.
    c.restart(lagger).await;
    let back = c
        .node(lagger)
        .create_partition_group_with(p.clone(), c.replicas(), small())
        .await
        .expect("re-create group");
    eventually("lagger catches up", T, || back.next_offset() == end).await;
    eventually("lagger log hw", T, || {
        back.log().high_watermark() == Some(end - 1)
    })
    .await;
    for r in [&leader, &follower] {
        eventually("log hw", T, || r.log().high_watermark() == Some(end - 1)).await;
    }
    let all = |r: &PartitionReplica| r.log().read(0, ReadLimits::records(100_000)).expect("read");
    let original = original_records(110);
    assert!(
        all(&leader).len() < original.len(),
        "the old leader's log is compacted"
    );
    // Every replica holds a subset of what was appended, each record at its own offset.
    for r in [&leader, &follower, &back] {
        for rec in all(r) {
            let want = original.get(&rec.offset).expect("an appended offset");
            assert_eq!(&rec.to_record(), want, "offset {}", rec.offset);
        }
    }
    // The lagger took compacted entries, emptied ones included, with offsets in step.
    let taken = back
        .log()
        .batches_by_raft_index(..)
        .expect("lagger entries");
    assert!(
        taken
            .iter()
            .any(|b| b.meta.kind.is_data() && b.record_count == 0),
        "the lagger took an emptied batch"
    );
    if follower.term() == term && follower.is_leader() {
        // One leader throughout the catch-up: the lagger holds exactly its records.
        assert_eq!(all(&back), all(&follower));
    } else {
        eprintln!("leadership changed during the catch-up; exact comparison skipped");
    }
    // Logical content is the same everywhere, however far each replica compacted.
    let logical = sum(&leader, end - 1, ChecksumMode::LatestPerKey);
    assert_eq!(sum(&follower, end - 1, ChecksumMode::LatestPerKey), logical);
    assert_eq!(sum(&back, end - 1, ChecksumMode::LatestPerKey), logical);
    let out = compact(&back).await;
    assert_eq!(sum(&back, end - 1, ChecksumMode::LatestPerKey), logical);
    eprintln!("lagger's own compaction afterwards: {out:?}");
    // Newest value of every key is there on every replica.
    for r in [&leader, &follower, &back] {
        for k in 0..4u32 {
            let key = Bytes::from(format!("k{k}"));
            let newest = all(r)
                .into_iter()
                .filter(|v| v.key.as_ref() == Some(&key))
                .map(|v| v.value)
                .last()
                .expect("key present");
            let last_batch = (0..110).rev().find(|i| i % 4 == k).expect("batch");
            assert!(
                newest.starts_with(format!("value-{last_batch}-1-").as_bytes()),
                "newest of k{k}"
            );
        }
    }
    // The group still appends at the next offset.
    let (body, n) = batch(500);
    let now = partition_leader(&[leader.clone(), follower.clone(), back.clone()], T).await;
    let o = now.append(body, n, T).await.expect("append after");
    assert_eq!(o.base_offset, end);
    eventually("lagger follows", T, || {
        back.next_offset() == end + u64::from(n)
    })
    .await;
    c.shutdown().await;
}
