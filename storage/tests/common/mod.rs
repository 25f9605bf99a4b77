//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use drawbridge_storage::{encode_records, Appended, BatchKind, BatchMeta, Log, LogConfig, Record};

/// A small-segment config so tests roll often.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// A record with value `v`, optional key, timestamp `ts`.
pub fn rec(ts: i64, key: Option<&str>, v: &str) -> Record {
    Record {
        timestamp: ts,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        headers: vec![("h".to_owned(), Bytes::from_static(b"x"))],
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}

/// Appends `records` as one data batch at raft (term, index).
pub fn append_data(log: &Log, term: u64, index: u64, records: &[Record]) -> Appended {
    let body = encode_records(records).expect("encode");
    log.append(
        BatchMeta {
            kind: BatchKind::Data,
            raft_term: term,
            raft_index: index,
        },
        body,
    )
    .expect("append data")
}

/// Appends a control entry.
pub fn append_control(
    log: &Log,
    kind: BatchKind,
    term: u64,
    index: u64,
    payload: &[u8],
) -> Appended {
    log.append(
        BatchMeta {
            kind,
            raft_term: term,
            raft_index: index,
        },
        Bytes::copy_from_slice(payload),
    )
    .expect("append control")
}

/// Commits everything written so far.
pub fn commit_all(log: &Log) {
    log.set_high_watermark(log.newest_offset()).expect("hw");
}

/// A temp dir.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
