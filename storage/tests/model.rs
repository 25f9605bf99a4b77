//! Property test: the log against a model (a `Vec` of entries).
//!
//! Operations: append (random records, keys, timestamps, control entries), sync, crash
//! (drop what was not synced, tear the tail at a random byte, maybe flip a bit in the unsynced
//! tail, maybe damage the active index), clean reopen, read by offset, read backwards, read by
//! time, raft lookup, truncate_after, roll (small segments), retention, compaction, commit.
//! After a crash everything synced must be there, and what is served must match the model.
//! Case count: `PROPTEST_CASES` (default 48).

mod common;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use drawbridge_storage::{
    encode_records, BatchKind, BatchMeta, Log, LogConfig, ReadLimits, Record, RetentionPolicy,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: Vec<(Option<u8>, u16, i64)>,
        control: Option<u8>,
    },
    Sync,
    Crash {
        keep: u16,
        flip: Option<(u16, u8)>,
        damage_index: bool,
    },
    Reopen,
    Read {
        at: u16,
    },
    ReadReverse {
        at: u16,
    },
    ReadTime {
        t: i64,
    },
    RaftLookup {
        at: u16,
    },
    TruncateAfter {
        back: u8,
    },
    Roll,
    Retain {
        keep: u16,
    },
    Compact,
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (proptest::collection::vec((proptest::option::of(0u8..6), 0u16..300, 0i64..1000), 1..12), proptest::option::weighted(0.2, 1u8..4))
            .prop_map(|(records, control)| Op::Append { records, control }),
        2 => Just(Op::Sync),
        1 => (any::<u16>(), proptest::option::of((any::<u16>(), 0u8..8)), any::<bool>())
            .prop_map(|(keep, flip, damage_index)| Op::Crash { keep, flip, damage_index }),
        1 => Just(Op::Reopen),
        2 => any::<u16>().prop_map(|at| Op::Read { at }),
        1 => any::<u16>().prop_map(|at| Op::ReadReverse { at }),
        1 => (0i64..1100).prop_map(|t| Op::ReadTime { t }),
        1 => any::<u16>().prop_map(|at| Op::RaftLookup { at }),
        1 => (0u8..6).prop_map(|back| Op::TruncateAfter { back }),
        1 => Just(Op::Roll),
        1 => (0u16..200).prop_map(|keep| Op::Retain { keep }),
        1 => Just(Op::Compact),
        2 => Just(Op::Commit),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    term: u64,
    index: u64,
    kind: BatchKind,
    base: u64,
    body: Bytes,
    /// For data: the records (None once compacted away).
    records: Vec<Option<Record>>,
}

struct Model {
    entries: Vec<Entry>,
    /// Entries guaranteed durable.
    durable: usize,
    /// Active segment base and durable byte length.
    durable_pos: (u64, u64),
    next_offset: u64,
    hw: Option<u64>,
    term: u64,
    compacted: bool,
}

impl Model {
    fn last_index(&self) -> Option<u64> {
        self.entries.last().map(|e| e.index)
    }
    fn committed_records(&self) -> Vec<(u64, Record)> {
        let end = self.hw.map_or(0, |h| h + 1);
        let mut v = Vec::new();
        for e in &self.entries {
            for (i, r) in e.records.iter().enumerate() {
                let off = e.base + i as u64;
                if let Some(r) = r {
                    if off < end {
                        v.push((off, r.clone()));
                    }
                }
            }
        }
        v
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 4096,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

fn mark_durable(log: &Log, m: &mut Model) {
    m.durable = m.entries.len();
    m.durable_pos = log.active_segment();
}

fn check_reads(log: &Log, m: &Model) -> Result<(), TestCaseError> {
    let want = m.committed_records();
    let earliest = log.earliest_offset();
    let got = log
        .read(earliest, ReadLimits::records(100_000))
        .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
    let want: Vec<_> = want.into_iter().filter(|(o, _)| *o >= earliest).collect();
    prop_assert_eq!(got.len(), want.len(), "committed records");
    for (g, (o, r)) in got.iter().zip(&want) {
        prop_assert_eq!(g.offset, *o);
        prop_assert_eq!(&g.to_record(), r);
    }
    Ok(())
}

/// Simulates the disk after a crash. The segment that was active at the last sync keeps its
/// synced bytes and loses a random part of the rest; segments created after the last sync
/// survive whole, lose their tail, or vanish.
fn crash_files(
    dir: &Path,
    m: &Model,
    keep: u16,
    flip: Option<(u16, u8)>,
    damage_index: bool,
    cur: (u64, u64),
) -> std::io::Result<()> {
    let (dbase, dlen) = m.durable_pos;
    let mut later: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".log").and_then(|s| s.parse::<u64>().ok())
        })
        .filter(|b| *b > dbase)
        .collect();
    later.sort_unstable();
    for (i, b) in later.iter().enumerate() {
        let stem = format!("{b:020}");
        match (usize::from(keep) + i) % 3 {
            0 => {}
            1 => {
                let p = dir.join(format!("{stem}.log"));
                let f = OpenOptions::new().read(true).write(true).open(&p)?;
                let len = f.metadata()?.len();
                f.set_len(len * u64::from(keep % 7) / 7)?;
            }
            _ => {
                for ext in ["log", "index", "timeindex"] {
                    let _ = std::fs::remove_file(dir.join(format!("{stem}.{ext}")));
                }
            }
        }
    }
    let base = dbase;
    if !dir.join(format!("{dbase:020}.log")).exists() {
        // Deleted by retention after the sync: nothing of it to tear.
        return Ok(());
    }
    let cur_len = if cur.0 == dbase {
        cur.1
    } else {
        std::fs::metadata(dir.join(format!("{dbase:020}.log")))?.len()
    };
    let durable_len = dlen.min(cur_len);
    let stem = format!("{base:020}");
    let log_path = dir.join(format!("{stem}.log"));
    let f = OpenOptions::new().read(true).write(true).open(&log_path)?;
    let unsynced = cur_len - durable_len;
    let kept = durable_len + (unsynced * u64::from(keep)) / u64::from(u16::MAX);
    let file_len = f.metadata()?.len();
    if kept < file_len {
        // Lost pages read back as zeros (or the file is shorter).
        if keep % 2 == 0 {
            f.set_len(kept)?;
        } else {
            f.write_all_at(&vec![0u8; (file_len - kept) as usize], kept)?;
        }
    }
    if let Some((at, bit)) = flip {
        if kept > durable_len {
            let pos = durable_len + u64::from(at) % (kept - durable_len);
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, pos)?;
            b[0] ^= 1 << bit;
            f.write_all_at(&b, pos)?;
        }
    }
    if damage_index {
        for ext in ["index", "timeindex"] {
            let p = dir.join(format!("{stem}.{ext}"));
            if let Ok(f) = OpenOptions::new().read(true).write(true).open(&p) {
                let len = f.metadata()?.len();
                if keep % 3 == 0 {
                    f.set_len(len / 2)?;
                } else {
                    f.write_all_at(&[0xAB; 37], len / 3)?;
                }
            }
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let fail = |what: &str, e: drawbridge_storage::StorageError| {
        TestCaseError::fail(format!("{what}: {e}"))
    };
    let mut log = Log::open(dir.path(), config()).map_err(|e| fail("open", e))?;
    let mut m = Model {
        entries: Vec::new(),
        durable: 0,
        durable_pos: (0, 0),
        next_offset: 0,
        hw: None,
        term: 1,
        compacted: false,
    };
    let mut seq = 0i64;
    for op in ops {
        match op {
            Op::Append { records, control } => {
                let index = m.last_index().map_or(1, |i| i + 1);
                let before = log.active_segment().0;
                let (kind, body, recs) = match control {
                    Some(c) => {
                        let kind = match c {
                            1 => BatchKind::RaftBlank,
                            2 => BatchKind::RaftMembership,
                            _ => BatchKind::Control(7),
                        };
                        (kind, Bytes::from(vec![c; usize::from(c) * 5]), Vec::new())
                    }
                    None => {
                        let recs: Vec<Record> = records
                            .iter()
                            .map(|(k, len, ts)| {
                                seq += 1;
                                Record {
                                    timestamp: *ts,
                                    key: k.map(|k| Bytes::from(vec![b'k', k])),
                                    headers: if seq % 3 == 0 {
                                        vec![("n".into(), Bytes::from(seq.to_string()))]
                                    } else {
                                        vec![]
                                    },
                                    value: Bytes::from(format!(
                                        "{seq}:{}",
                                        "v".repeat(usize::from(*len))
                                    )),
                                }
                            })
                            .collect();
                        (
                            BatchKind::Data,
                            encode_records(&recs).map_err(|e| fail("encode", e))?,
                            recs,
                        )
                    }
                };
                let meta = BatchMeta {
                    kind,
                    raft_term: m.term,
                    raft_index: index,
                };
                let a = log
                    .append(meta, body.clone())
                    .map_err(|e| fail("append", e))?;
                prop_assert_eq!(a.base_offset, m.next_offset);
                // A roll does not sync: durability moves only with `sync`.
                let _ = before;
                m.next_offset += recs.len() as u64;
                prop_assert_eq!(a.next_offset, m.next_offset);
                m.entries.push(Entry {
                    term: m.term,
                    index,
                    kind,
                    base: a.base_offset,
                    body,
                    records: recs.into_iter().map(Some).collect(),
                });
            }
            Op::Sync => {
                log.sync().map_err(|e| fail("sync", e))?;
                mark_durable(&log, &mut m);
            }
            Op::Crash {
                keep,
                flip,
                damage_index,
            } => {
                let cur = log.active_segment();
                log.simulate_crash();
                crash_files(dir.path(), &m, keep, flip, damage_index, cur)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                log = Log::open(dir.path(), config()).map_err(|e| fail("reopen after crash", e))?;
                // Everything durable survived; at most the unsynced suffix is gone.
                let last = log.last_raft_entry().map(|(_, i)| i);
                let first_index = m.entries.first().map(|e| e.index);
                let survived = match (last, first_index) {
                    (None, _) => 0,
                    (Some(l), Some(f)) => (l + 1 - f) as usize,
                    (Some(_), None) => {
                        return Err(TestCaseError::fail("entries appeared from nowhere"))
                    }
                };
                prop_assert!(
                    survived >= m.durable,
                    "lost durable entries: {} < {}",
                    survived,
                    m.durable
                );
                prop_assert!(survived <= m.entries.len());
                if survived > 0 {
                    let e = &m.entries[survived - 1];
                    prop_assert_eq!(log.last_raft_entry(), Some((e.term, e.index)));
                }
                m.entries.truncate(survived);
                m.next_offset = m.entries.iter().rev().find(|e| e.kind.is_data()).map_or(
                    log.earliest_offset()
                        .max(m.next_offset.min(log.next_offset())),
                    |e| e.base + e.records.len() as u64,
                );
                prop_assert_eq!(log.next_offset(), m.next_offset);
                m.hw = None;
                mark_durable(&log, &mut m);
                m.durable_pos = (log.active_segment().0, log.active_segment().1);
                // Every surviving entry reads back exactly (bodies of uncompacted ones).
                if let Some(f) = m.entries.first() {
                    let got = log
                        .batches_by_raft_index(f.index..)
                        .map_err(|e| fail("raft read", e))?;
                    prop_assert_eq!(got.len(), m.entries.len());
                    for (g, e) in got.iter().zip(&m.entries) {
                        prop_assert_eq!(g.meta.raft_index, e.index);
                        prop_assert_eq!(g.base_offset, e.base);
                        if !m.compacted {
                            prop_assert_eq!(&g.body, &e.body);
                        }
                    }
                }
            }
            Op::Reopen => {
                drop(log);
                log = Log::open(dir.path(), config()).map_err(|e| fail("reopen", e))?;
                prop_assert_eq!(log.next_offset(), m.next_offset);
                prop_assert_eq!(log.last_raft_entry().map(|(_, i)| i), m.last_index());
                m.hw = None;
                mark_durable(&log, &mut m);
            }
            Op::Read { at } => {
                let want = m.committed_records();
                let earliest = log.earliest_offset();
                let from = earliest + u64::from(at) % (m.next_offset.saturating_sub(earliest) + 1);
                let got = log
                    .read(from, ReadLimits::records(7))
                    .map_err(|e| fail("read", e))?;
                let want: Vec<_> = want
                    .into_iter()
                    .filter(|(o, _)| *o >= from)
                    .take(7)
                    .collect();
                prop_assert_eq!(got.len(), want.len());
                for (g, (o, r)) in got.iter().zip(&want) {
                    prop_assert_eq!(g.offset, *o);
                    prop_assert_eq!(&g.to_record(), r);
                }
            }
            Op::ReadReverse { at } => {
                let want = m.committed_records();
                let earliest = log.earliest_offset();
                let before =
                    earliest + u64::from(at) % (m.next_offset.saturating_sub(earliest) + 2);
                let got = log
                    .read_reverse(before, ReadLimits::records(9))
                    .map_err(|e| fail("reverse", e))?;
                let want: Vec<_> = want
                    .into_iter()
                    .rev()
                    .filter(|(o, _)| *o < before && *o >= earliest)
                    .take(9)
                    .collect();
                prop_assert_eq!(
                    got.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    want.iter().map(|(o, _)| *o).collect::<Vec<_>>()
                );
            }
            Op::ReadTime { t } => {
                let earliest = log.earliest_offset();
                let want = m
                    .committed_records()
                    .into_iter()
                    .find(|(o, r)| *o >= earliest && r.timestamp >= t)
                    .map(|(o, _)| o);
                let got = log.offset_for_timestamp(t).map_err(|e| fail("time", e))?;
                prop_assert_eq!(got, want, "offset_for_timestamp({})", t);
            }
            Op::RaftLookup { at } => {
                if !m.entries.is_empty() {
                    let e = &m.entries[usize::from(at) % m.entries.len()];
                    let got = log
                        .batch_at_raft_index(e.index)
                        .map_err(|e| fail("raft", e))?;
                    let got = got.ok_or_else(|| TestCaseError::fail("raft entry missing"))?;
                    prop_assert_eq!(
                        got.meta,
                        BatchMeta {
                            kind: e.kind,
                            raft_term: e.term,
                            raft_index: e.index
                        }
                    );
                    prop_assert_eq!(got.base_offset, e.base);
                }
            }
            Op::TruncateAfter { back } => {
                let n = m.entries.len();
                let keep = n.saturating_sub(usize::from(back));
                let target = if keep == 0 {
                    None
                } else {
                    Some(m.entries[keep - 1].index)
                };
                let target = if keep == 0 {
                    m.entries.first().map(|e| e.index - 1).filter(|_| false)
                } else {
                    target
                };
                if keep == 0 && m.entries.first().is_some_and(|e| e.index > 1) {
                    // Entries before the first stored one were purged: cut after index first-1.
                    log.truncate_after(m.entries.first().map(|e| e.index - 1))
                        .map_err(|e| fail("truncate", e))?;
                } else {
                    log.truncate_after(target)
                        .map_err(|e| fail("truncate", e))?;
                }
                m.entries.truncate(keep);
                m.next_offset = m
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.kind.is_data())
                    .map_or_else(
                        || m.entries.last().map_or(log.earliest_offset(), |e| e.base),
                        |e| e.base + e.records.len() as u64,
                    );
                prop_assert_eq!(log.next_offset(), m.next_offset);
                prop_assert_eq!(log.last_raft_entry().map(|(_, i)| i), m.last_index());
                m.hw = log.high_watermark();
                m.term += 1;
                mark_durable(&log, &mut m);
            }
            Op::Roll => {
                log.roll().map_err(|e| fail("roll", e))?;
            }
            Op::Retain { keep } => {
                let policy = RetentionPolicy {
                    max_messages: Some(u64::from(keep)),
                    ..RetentionPolicy::default()
                };
                log.enforce_retention(&policy, 0)
                    .map_err(|e| fail("retention", e))?;
                prop_assert!(
                    log.earliest_offset()
                        <= m.hw
                            .map_or(0, |h| h + 1)
                            .max(m.entries.first().map_or(u64::MAX, |e| e.base))
                );
                let first = log.first_raft_index();
                let cut = m
                    .entries
                    .iter()
                    .position(|e| Some(e.index) == first)
                    .unwrap_or(m.entries.len());
                m.entries.drain(..cut);
                m.durable = m.durable.saturating_sub(cut);
            }
            Op::Compact => {
                let Some(last) = m.last_index() else { continue };
                let before = log
                    .read(log.earliest_offset(), ReadLimits::records(100_000))
                    .map_err(|e| fail("read", e))?;
                log.compact(last).map_err(|e| fail("compact", e))?;
                let after = log
                    .read(log.earliest_offset(), ReadLimits::records(100_000))
                    .map_err(|e| fail("read", e))?;
                let newest: HashMap<Bytes, u64> = before
                    .iter()
                    .filter_map(|r| r.key.clone().map(|k| (k, r.offset)))
                    .collect();
                for r in &before {
                    let kept = after.iter().any(|a| a == r);
                    let must = r.key.is_none()
                        || newest.get(r.key.as_ref().unwrap_or(&Bytes::new())) == Some(&r.offset);
                    prop_assert!(
                        kept || !must,
                        "compaction removed a record it must keep: {}",
                        r.offset
                    );
                }
                prop_assert!(after.iter().all(|a| before.contains(a)));
                // Apply to the model.
                for e in &mut m.entries {
                    for (i, r) in e.records.iter_mut().enumerate() {
                        let off = e.base + i as u64;
                        if r.is_some()
                            && before.iter().any(|b| b.offset == off)
                            && !after.iter().any(|a| a.offset == off)
                        {
                            *r = None;
                            m.compacted = true;
                        }
                    }
                }
            }
            Op::Commit => {
                let newest = log.newest_offset();
                log.set_high_watermark(newest).map_err(|e| fail("hw", e))?;
                m.hw = newest;
            }
        }
        check_reads(&log, &m)?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

#[test]
fn common_helpers_compile() {
    let _ = common::small_config();
}
