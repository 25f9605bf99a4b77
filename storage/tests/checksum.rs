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
