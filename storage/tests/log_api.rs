//! The public API of `Log`: offsets, raft metadata, reads, high watermark, roll, truncation,
//! purge, retention, compaction, tailing and group commit.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use drawbridge_storage::{
    BatchKind, BatchMeta, GroupCommit, Log, LogConfig, ReadLimits, RecordBatchBuilder,
    RetentionPolicy, StorageError, SyncPolicy,
};

#[test]
fn dense_offsets_and_control_entries_take_none() {
    let dir = tmp();
    let log = Log::open(dir.path(), LogConfig::default()).expect("open");
    assert_eq!(log.next_offset(), 0);
    assert_eq!(log.newest_offset(), None);
    let a = append_control(&log, BatchKind::RaftMembership, 1, 0, b"membership");
    assert_eq!((a.base_offset, a.next_offset), (0, 0));
    let a = append_data(&log, 1, 1, &[rec(10, None, "a"), rec(11, Some("k"), "b")]);
    assert_eq!((a.base_offset, a.next_offset), (0, 2));
    append_control(&log, BatchKind::RaftBlank, 2, 2, b"");
    let a = append_data(&log, 2, 3, &[rec(12, None, "c")]);
    assert_eq!((a.base_offset, a.next_offset), (2, 3));
    assert_eq!(log.last_raft_entry(), Some((2, 3)));
    assert_eq!(log.first_raft_index(), Some(0));
    assert_eq!(log.newest_offset(), Some(2));

    // Nothing committed yet: readers see nothing.
    assert!(log.read(0, ReadLimits::default()).expect("read").is_empty());
    log.set_high_watermark(Some(1)).expect("hw");
    let got = log.read(0, ReadLimits::default()).expect("read");
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(got[1].key.as_deref(), Some(b"k".as_slice()));
    assert_eq!(got[1].headers[0].0, "h");
    commit_all(&log);
    let got = log.read(1, ReadLimits::default()).expect("read");
    assert_eq!(
        got.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        vec![Bytes::from("b"), Bytes::from("c")]
    );
    assert!(matches!(
        log.set_high_watermark(Some(3)),
        Err(StorageError::InvalidArgument(_))
    ));

    // Raft reads return the bodies exactly.
    let b = log.batches_by_raft_index(0..=3).expect("raft read");
    assert_eq!(b.len(), 4);
    assert_eq!(b[0].meta.kind, BatchKind::RaftMembership);
    assert_eq!(b[0].body, Bytes::from_static(b"membership"));
    assert_eq!(b[1].last_offset(), Some(1));
    assert_eq!(b[2].last_offset(), None);
    assert_eq!(b[3].base_offset, 2);
    assert_eq!(log.batches_by_raft_index(2..).expect("range").len(), 2);
    assert_eq!(log.batches_by_raft_index(4..10).expect("range").len(), 0);
    assert_eq!(
        log.batch_at_raft_index(1)
            .expect("one")
            .map(|b| b.record_count),
        Some(2)
    );
}

#[test]
fn raft_order_is_enforced() {
    let dir = tmp();
    let log = Log::open(dir.path(), LogConfig::default()).expect("open");
    append_data(&log, 3, 10, &[rec(1, None, "a")]);
    let body = drawbridge_storage::encode_records(&[rec(1, None, "b")]).expect("enc");
    let m = |t, i| BatchMeta {
        kind: BatchKind::Data,
        raft_term: t,
        raft_index: i,
    };
    assert!(matches!(
        log.append(m(3, 12), body.clone()),
        Err(StorageError::RaftIndexGap { last: 10, got: 12 })
    ));
    assert!(matches!(
        log.append(m(2, 11), body.clone()),
        Err(StorageError::TermRegression { last: 3, got: 2 })
    ));
    assert!(matches!(
        log.append(m(3, 11), Bytes::from_static(b"short")),
        Err(StorageError::InvalidBatch(_))
    ));
    let ctl = BatchMeta {
        kind: BatchKind::Control(1),
        raft_term: 3,
        raft_index: 11,
    };
    assert!(matches!(
        log.append(ctl, Bytes::new()),
        Err(StorageError::InvalidArgument(_))
    ));
    log.append(m(3, 11), body).expect("in order");
    assert_eq!(log.next_offset(), 2);
}

fn fill(log: &Log, batches: u64, per_batch: usize) {
    let first = log.last_raft_entry().map_or(1, |(_, i)| i + 1);
    for i in 0..batches {
        let base = log.next_offset();
        let recs: Vec<_> = (0..per_batch)
            .map(|j| {
                rec(
                    (base + j as u64) as i64 * 1000,
                    Some(&format!("k{}", (base + j as u64) % 7)),
                    &format!("value-{:0>60}", base + j as u64),
                )
            })
            .collect();
        append_data(log, 1, first + i, &recs);
    }
}

#[test]
fn rolls_reads_across_segments_and_reopens() {
    let dir = tmp();
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 100, 5);
    assert!(log.segment_count() > 5, "segments {}", log.segment_count());
    let bases = log.segment_base_offsets();
    for w in bases.windows(2) {
        assert!(w[0] < w[1]);
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"00000000000000000000.log".to_owned()));
    assert!(names.contains(&format!("{:020}.timeindex", bases[1])));
    commit_all(&log);
    let all = log.read(0, ReadLimits::records(10_000)).expect("read");
    assert_eq!(all.len(), 500);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value, Bytes::from(format!("value-{i:0>60}")));
    }
    // Every offset is found through the index.
    for o in (0..500).step_by(37) {
        let r = log.read(o, ReadLimits::records(1)).expect("read one");
        assert_eq!(r[0].offset, o);
    }
    // Raft lookups across segments.
    for i in (1..=100).step_by(13) {
        let b = log.batch_at_raft_index(i).expect("raft").expect("present");
        assert_eq!(b.meta.raft_index, i);
        assert_eq!(b.base_offset, (i - 1) * 5);
    }
    // Reverse.
    let rev = log.read_reverse(500, ReadLimits::records(12)).expect("rev");
    assert_eq!(
        rev.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (488..500).rev().collect::<Vec<_>>()
    );
    let rev = log
        .read_reverse(u64::MAX, ReadLimits::records(10_000))
        .expect("rev all");
    assert_eq!(rev.len(), 500);
    assert!(rev.windows(2).all(|w| w[0].offset == w[1].offset + 1));
    // Timestamps: record at offset o has ts o*1000.
    assert_eq!(log.offset_for_timestamp(0).expect("ts"), Some(0));
    assert_eq!(log.offset_for_timestamp(123_001).expect("ts"), Some(124));
    assert_eq!(log.offset_for_timestamp(499_000).expect("ts"), Some(499));
    assert_eq!(log.offset_for_timestamp(499_001).expect("ts"), None);
    let (next, last) = (log.next_offset(), log.last_raft_entry());
    log.close().expect("close");
    assert!(matches!(
        log.append(
            BatchMeta {
                kind: BatchKind::RaftBlank,
                raft_term: 1,
                raft_index: 101
            },
            Bytes::new()
        ),
        Err(StorageError::Closed)
    ));
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!((log.next_offset(), log.last_raft_entry()), (next, last));
    assert_eq!(log.segment_base_offsets(), bases);
    commit_all(&log);
    assert_eq!(
        log.read(0, ReadLimits::records(10_000))
            .expect("read")
            .len(),
        500
    );
    assert_eq!(log.offset_for_timestamp(250_500).expect("ts"), Some(251));
}

#[test]
fn read_limits_and_bytes() {
    let dir = tmp();
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 10, 10);
    commit_all(&log);
    let r = log
        .read(
            3,
            ReadLimits {
                max_records: 1000,
                max_bytes: 1,
            },
        )
        .expect("read");
    assert_eq!(r.len(), 1);
    let r = log.read(3, ReadLimits::records(17)).expect("read");
    assert_eq!(r.first().map(|r| r.offset), Some(3));
    assert_eq!(r.len(), 17);
    assert!(log
        .read(100, ReadLimits::default())
        .expect("past end")
        .is_empty());
}

#[test]
fn truncate_after_cuts_raft_suffix_across_segments() {
    let dir = tmp();
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 60, 3);
    let segs = log.segment_count();
    assert!(segs > 3);
    log.set_high_watermark(Some(20)).expect("hw");
    log.truncate_after(Some(10)).expect("truncate");
    assert_eq!(log.last_raft_entry(), Some((1, 10)));
    assert_eq!(log.next_offset(), 30);
    assert!(log.segment_count() < segs);
    assert!(log.batch_at_raft_index(11).expect("read").is_none());
    // The high watermark came down with the cut.
    assert_eq!(log.high_watermark(), Some(20));
    // New entries continue at raft index 11 with a higher term, offsets continue at 30.
    let a = append_data(&log, 2, 11, &[rec(1, None, "new")]);
    assert_eq!(a.base_offset, 30);
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(log.last_raft_entry(), Some((2, 11)));
    assert_eq!(log.next_offset(), 31);
    log.truncate_after(None).expect("truncate all");
    assert_eq!(log.last_raft_entry(), None);
    assert_eq!(log.next_offset(), 0);
    assert_eq!(log.segment_count(), 1);
    append_data(&log, 5, 1, &[rec(1, None, "again")]);
    assert_eq!(log.next_offset(), 1);
}

#[test]
fn truncate_below_hw_lowers_it() {
    let dir = tmp();
    let log = Log::open(dir.path(), LogConfig::default()).expect("open");
    fill(&log, 5, 2);
    commit_all(&log);
    log.truncate_after(Some(2)).expect("truncate");
    assert_eq!(log.high_watermark(), Some(3));
}

#[test]
fn purge_and_retention_delete_whole_sealed_segments() {
    let dir = tmp();
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 80, 4);
    let segs = log.segment_count();
    let out = log.purge_through(20).expect("purge");
    assert!(out.segments_deleted >= 1);
    let first = log.first_raft_index().expect("first");
    assert!(first <= 21 && first > 1, "first raft index {first}");
    assert_eq!(log.segment_count(), segs - out.segments_deleted);
    assert!(matches!(
        log.read(0, ReadLimits::default()),
        Err(StorageError::OffsetOutOfRange { .. })
    ));

    // Retention: nothing above the high watermark goes.
    let policy = RetentionPolicy {
        max_messages: Some(50),
        ..RetentionPolicy::default()
    };
    assert_eq!(log.retention_plan(&policy, 0).segments, 0);
    commit_all(&log);
    let plan = log.retention_plan(&policy, 0);
    assert!(plan.segments > 0);
    let out = log.enforce_retention(&policy, 0).expect("retention");
    assert_eq!(out.segments_deleted, plan.segments);
    assert_eq!(log.earliest_offset(), plan.new_earliest_offset);
    // At least the limit is kept, and less than one more segment.
    let kept = log.next_offset() - log.earliest_offset();
    assert!((50..50 + 4 * 20).contains(&kept), "kept {kept}");

    let policy = RetentionPolicy {
        max_bytes: Some(0),
        ..RetentionPolicy::default()
    };
    log.enforce_retention(&policy, 0).expect("retention");
    assert_eq!(log.segment_count(), 1, "only the active segment stays");
    // Age: all record timestamps are tiny, so everything sealed is old.
    fill(&log, 40, 4);
    commit_all(&log);
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_secs(1)),
        ..RetentionPolicy::default()
    };
    assert!(
        log.enforce_retention(&policy, 10_000_000_000)
            .expect("age")
            .segments_deleted
            > 0
    );
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn compaction_keeps_newest_per_key_and_offsets() {
    let dir = tmp();
    let log = Log::open(dir.path(), small_config()).expect("open");
    // keys k0..k6 repeat; one keyless record per batch.
    for round in 0..30u64 {
        let base = log.next_offset();
        let recs = vec![
            rec(
                base as i64,
                Some(&format!("k{}", round % 7)),
                &format!("v{base:0>200}"),
            ),
            rec(base as i64 + 1, None, &format!("nokey{:0>200}", base + 1)),
        ];
        append_data(&log, 1, round + 1, &recs);
    }
    commit_all(&log);
    let before = log.read(0, ReadLimits::records(1000)).expect("read");
    assert_eq!(before.len(), 60);
    let last_sealed_raft = {
        // compact everything sealed
        log.last_raft_entry().expect("last").1
    };
    let out = log.compact(last_sealed_raft).expect("compact");
    assert!(out.segments_rewritten > 0);
    assert!(out.records_removed > 0);
    let after = log.read(0, ReadLimits::records(1000)).expect("read");
    // Keyless records all stay; for each key only the newest stays (or ones in the active segment).
    let nokey = after.iter().filter(|r| r.key.is_none()).count();
    assert_eq!(nokey, 30);
    for r in &after {
        let same = before
            .iter()
            .find(|b| b.offset == r.offset)
            .expect("offset existed");
        assert_eq!(same, r, "records keep offsets and content");
    }
    let newest: std::collections::HashMap<_, _> = before
        .iter()
        .filter_map(|r| r.key.clone().map(|k| (k, r.offset)))
        .collect();
    for (k, off) in &newest {
        assert!(
            after
                .iter()
                .any(|r| r.key.as_ref() == Some(k) && r.offset == *off),
            "newest of key kept"
        );
    }
    // Raft lookups still work for compacted batches, offsets still dense.
    for i in 1..=30 {
        let b = log.batch_at_raft_index(i).expect("raft").expect("present");
        assert_eq!(b.base_offset, (i - 1) * 2);
    }
    // The first remaining record (offset 0, key k0, was superseded) answers a time lookup.
    assert_eq!(
        log.offset_for_timestamp(0).expect("ts"),
        Some(after[0].offset)
    );
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    commit_all(&log);
    assert_eq!(log.read(0, ReadLimits::records(1000)).expect("read"), after);
}

#[tokio::test(flavor = "current_thread")]
async fn tail_reader_wakes_on_high_watermark() {
    let dir = tmp();
    let log = Log::open(dir.path(), LogConfig::default()).expect("open");
    let mut tail = log.tail(0);
    let writer = log.clone();
    let task = tokio::spawn(async move {
        for i in 0..5u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            append_data(&writer, 1, i + 1, &[rec(i as i64, None, &format!("m{i}"))]);
            writer.set_high_watermark(Some(i)).expect("hw");
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            tail.next_records(ReadLimits::default()),
        )
        .await
        .expect("woken in time")
        .expect("records");
        seen.extend(got.into_iter().map(|r| r.offset));
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    task.await.expect("writer");
    // Closing wakes a parked reader with Closed.
    let closer = log.clone();
    let pending = tokio::spawn(async move { tail.next_records(ReadLimits::default()).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    closer.close().expect("close");
    let r = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("in time")
        .expect("join");
    assert!(matches!(r, Err(StorageError::Closed)));
}

#[tokio::test(flavor = "current_thread")]
async fn group_commit_completes_waiters_of_many_logs() {
    let gc = GroupCommit::start().expect("flusher");
    let dirs: Vec<_> = (0..4).map(|_| tmp()).collect();
    let logs: Vec<Log> = dirs
        .iter()
        .map(|d| Log::open(d.path(), LogConfig::default()).expect("open"))
        .collect();
    let mut futs = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        for j in 0..10u64 {
            append_data(log, 1, j + 1, &[rec(j as i64, None, &format!("{i}-{j}"))]);
            futs.push(gc.sync(log));
        }
    }
    for f in futs {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("in time")
            .expect("durable");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for log in &logs {
        let tx1 = tx.clone();
        gc.after_append(log, SyncPolicy::Always, move |r| {
            tx1.send(r.is_ok()).expect("send")
        });
        let tx2 = tx.clone();
        gc.after_append(
            log,
            SyncPolicy::Interval(Duration::from_millis(5)),
            move |r| tx2.send(r.is_ok()).expect("send"),
        );
        let tx3 = tx.clone();
        gc.after_append(log, SyncPolicy::Never, move |r| {
            tx3.send(r.is_ok()).expect("send")
        });
    }
    for _ in 0..12 {
        assert!(rx.recv_timeout(Duration::from_secs(10)).expect("callback"));
    }
    drop(gc);
}

#[test]
fn builder_headers_and_empty_values() {
    let dir = tmp();
    let log = Log::open(dir.path(), LogConfig::default()).expect("open");
    let mut b = RecordBatchBuilder::new();
    b.push(5, None, &[], b"");
    b.push(6, Some(b""), &[("a", b""), ("b", b"2")], b"x");
    let body = b.finish().expect("finish");
    log.append(
        BatchMeta {
            kind: BatchKind::Data,
            raft_term: 0,
            raft_index: 0,
        },
        body,
    )
    .expect("append");
    commit_all(&log);
    let r = log.read(0, ReadLimits::default()).expect("read");
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].value.len(), 0);
    assert_eq!(r[1].key.as_deref(), Some(b"".as_slice()));
    assert_eq!(r[1].headers.len(), 2);
}

#[test]
fn purge_past_the_end_empties_and_reset_restarts_offsets() {
    let dir = tmp();
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 30, 4);
    let next = log.next_offset();
    log.purge_through(100).expect("purge all");
    assert_eq!(log.last_raft_entry(), None);
    assert_eq!(log.next_offset(), next);
    assert_eq!(log.segment_count(), 1);
    // A snapshot at raft index 500 says the stream's next offset is 9000.
    log.reset(9000).expect("reset");
    assert_eq!(log.next_offset(), 9000);
    assert_eq!(log.earliest_offset(), 9000);
    let a = append_data(&log, 7, 501, &[rec(1, None, "after snapshot")]);
    assert_eq!(a.base_offset, 9000);
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(log.next_offset(), 9001);
    assert_eq!(log.first_raft_index(), Some(501));
    // Reset to the same name as the active segment reuses it.
    log.reset(9001).expect("reset");
    log.reset(9001).expect("reset again");
    assert_eq!(log.segment_base_offsets(), vec![9001]);
}
