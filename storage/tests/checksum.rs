//! `Log::checksum`: replicas holding the same records agree, however their batches and
//! segments are laid out; a differing record, a missing one or an uncommitted range do not.

mod common;

use common::*;
use drawbridge_storage::{BatchKind, Log, LogConfig, Record, StorageError};

fn records(n: i64, odd: Option<i64>) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let v = if Some(i) == odd {
                "X".to_owned()
            } else {
                format!("v{i}")
            };
            rec(i, (i % 3 == 0).then_some("k"), &v)
        })
        .collect()
}

/// Appends `recs` in batches of `per_batch`, with a control entry first; `roll` starts a new
/// segment after every batch.
fn replica(
    dir: &std::path::Path,
    config: LogConfig,
    recs: &[Record],
    per_batch: usize,
    roll: bool,
) -> Log {
    let log = Log::open(dir, config).expect("open");
    append_control(&log, BatchKind::RaftMembership, 1, 0, b"m");
    for (i, chunk) in recs.chunks(per_batch).enumerate() {
        append_data(&log, 1, i as u64 + 1, chunk);
        if roll {
            log.roll().expect("roll");
        }
    }
    commit_all(&log);
    log
}

#[test]
fn same_records_same_checksum_whatever_the_layout() {
    let (d1, d2, d3) = (tmp(), tmp(), tmp());
    let a = replica(
        d1.path(),
        LogConfig::default(),
        &records(200, None),
        7,
        false,
    );
    let b = replica(d2.path(), small_config(), &records(200, None), 50, true);
    let c = replica(
        d3.path(),
        LogConfig::default(),
        &records(200, Some(120)),
        7,
        false,
    );
    assert!(b.segment_count() > 1);
    let full = a.checksum(0, 199).expect("sum");
    assert_eq!(full.records, 200);
    assert_eq!(full, b.checksum(0, 199).expect("sum"));
    assert_ne!(full, c.checksum(0, 199).expect("sum"));
    // Ranges that stop before the odd record agree.
    assert_eq!(
        a.checksum(10, 119).expect("sum"),
        c.checksum(10, 119).expect("sum")
    );
    assert_ne!(
        a.checksum(0, 100).expect("sum"),
        a.checksum(0, 101).expect("sum")
    );
}

#[test]
fn uncommitted_records_are_not_summed() {
    let d = tmp();
    let log = Log::open(d.path(), LogConfig::default()).expect("open");
    append_data(&log, 1, 1, &records(5, None));
    let e = log.checksum(0, 0).expect_err("nothing committed");
    assert!(matches!(e, StorageError::InvalidArgument(_)), "{e:?}");
    log.set_high_watermark(Some(2)).expect("hw");
    assert_eq!(log.checksum(0, 2).expect("sum").records, 3);
    assert!(log.checksum(0, 3).is_err());
}

/// Keyed records (5 keys, 2 records per batch, so whole batches empty out) and every 4th
/// record keyless; `odd` changes one value.
fn keyed(n: i64, odd: Option<i64>) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let v = if Some(i) == odd {
                "X".to_owned()
            } else {
                format!("v{i:0>120}")
            };
            let key = format!("k{}", i % 5);
            rec(i, (i % 4 != 3).then_some(key.as_str()), &v)
        })
        .collect()
}

#[test]
fn latest_per_key_checksum_ignores_compaction_and_replicated_compacted_batches_fit() {
    use drawbridge_storage::{ChecksumMode::LatestPerKey, ReadLimits};
    let (d1, d2, d3, d4) = (tmp(), tmp(), tmp(), tmp());
    let compacted = replica(d1.path(), small_config(), &keyed(200, None), 2, false);
    let plain = replica(d2.path(), LogConfig::default(), &keyed(200, None), 2, false);
    let changed = replica(d3.path(), small_config(), &keyed(200, Some(198)), 2, false);
    let last = compacted.last_raft_entry().expect("entries").1;
    let out = compacted.compact(last).expect("compact");
    assert!(out.records_removed > 0, "{out:?}");
    let sum = compacted.checksum_with(0, 199, LatestPerKey).expect("sum");
    assert_eq!(sum, plain.checksum_with(0, 199, LatestPerKey).expect("sum"));
    assert_ne!(
        sum,
        changed.checksum_with(0, 199, LatestPerKey).expect("sum")
    );
    // The raw checksums differ (records were removed), and so would a stale key's value.
    assert_ne!(
        compacted.checksum(0, 199).expect("sum"),
        plain.checksum(0, 199).expect("sum")
    );
    assert!(sum.records < 200);

    // A follower replicating the compacted entries (as raft reads them) accepts every batch,
    // emptied ones included, and its offsets stay in step with the source.
    let batches = compacted.batches_by_raft_index(..).expect("read entries");
    assert!(
        batches
            .iter()
            .any(|b| b.meta.kind == BatchKind::Data && b.record_count == 0),
        "some batch lost every record"
    );
    let follower = Log::open(d4.path(), small_config()).expect("open");
    for b in &batches {
        let a = follower.append(b.meta, b.body.clone()).expect("append");
        assert_eq!(a.base_offset, b.base_offset);
    }
    commit_all(&follower);
    assert_eq!(follower.next_offset(), compacted.next_offset());
    assert_eq!(follower.next_offset(), 200);
    assert_eq!(
        follower.read(0, ReadLimits::records(1000)).expect("read"),
        compacted.read(0, ReadLimits::records(1000)).expect("read")
    );
    assert_eq!(
        follower.checksum_with(0, 199, LatestPerKey).expect("sum"),
        sum
    );
    // It still appends after them, and survives a reopen (recovery accepts compacted batches).
    let next = follower.last_raft_entry().expect("entries").1 + 1;
    let a = append_data(&follower, 1, next, &keyed(3, None));
    assert_eq!(a.base_offset, 200);
    drop(follower);
    let follower = Log::open(d4.path(), small_config()).expect("reopen");
    assert_eq!(follower.next_offset(), 203);
}
