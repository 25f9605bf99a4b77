//! [`Log`]: the shared handle of one partition's log.
//!
//! Concurrency model (who holds what):
//! - `maintenance` (mutex) serializes the operations that change the segment *list*:
//!   truncation, purge, retention, compaction. Taken before `writer`.
//! - `writer` (mutex) serializes appends, rolls and truncation: there is one writer, the raft
//!   log store. The write itself (`pwritev`) runs under `writer` only, so readers are not
//!   blocked by it.
//! - `state` (`RwLock`) guards the segment list and tail metadata. Readers hold it only to
//!   take a segment view (`SegView`) and an index position (O(log n)); the writer holds it
//!   to publish a batch that is already written.
//! - `watermark` (`tokio::sync::watch`) carries the high watermark to tailing readers.
//!
//! Invariants:
//! - Offsets are dense: a data batch gets `base_offset` = the previous data batch's
//!   `base_offset + offset_span`; control batches take none.
//! - Raft indexes are contiguous (`last + 1`) and terms never decrease; the first batch of an
//!   empty log may have any index (after a purge or snapshot the raft layer knows where it is).
//! - A batch is readable as soon as `append` returns; it is durable once a later
//!   [`Log::sync`] returns.
//! - Readers of records never see offsets above the high watermark.

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::batch::{BatchMeta, BATCH_HEADER_LEN};
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::record_set::RecordSet;
use crate::recovery;
use crate::segment::{Located, SegView, Segment};

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// First offset of a data batch; for a control batch, the next offset (it takes none).
    pub base_offset: u64,
    /// Offset after the batch (`base_offset` for control batches).
    pub next_offset: u64,
    /// The batch's raft index.
    pub raft_index: u64,
}

/// A batch read back by raft index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Kind, term, index.
    pub meta: BatchMeta,
    /// First offset (next offset for control batches).
    pub base_offset: u64,
    /// Offsets the batch takes (0 for control).
    pub offset_span: u32,
    /// Records present (0 for control).
    pub record_count: u32,
    /// The body exactly as appended (a record set for data, opaque for control), zero-copy.
    /// For batches compacted by [`Log::compact`] the record set holds fewer records.
    pub body: Bytes,
}

impl StoredBatch {
    /// Offset after the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.offset_span)
    }

    /// Last offset of a data batch (what to publish as the high watermark once this entry is
    /// committed); `None` for control batches.
    pub fn last_offset(&self) -> Option<u64> {
        (self.offset_span > 0).then(|| self.next_offset() - 1)
    }
}

/// What [`Log::purge_through`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of `.log` deleted.
    pub bytes_deleted: u64,
}

/// The watermark broadcast to tailing readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Watermark {
    /// Last committed offset (inclusive).
    pub hw: Option<u64>,
    /// Set by [`Log::close`].
    pub closed: bool,
}

/// Segment list and tail metadata.
#[derive(Debug)]
pub(crate) struct State {
    /// Sorted by base offset; the last one is active.
    pub segments: Vec<Segment>,
    /// (term, index) of the last batch in the log.
    pub last_raft: Option<(u64, u64)>,
    /// `cum_max[i]`: largest record timestamp in segments `0..=i` (for timestamp lookups).
    pub cum_max: Vec<Option<i64>>,
    /// A recovery point exists on disk: delete it (durably) before the next append.
    pub point_live: bool,
    /// A failed write may have left bytes after the active segment's end: zero them at close.
    pub dirty_tail: bool,
    /// Segments sealed since the last sync: their files, synced by the next [`Log::sync`].
    pub pending_sync: Vec<(std::fs::File, PathBuf)>,
    /// Set by close.
    pub closed: bool,
}

impl State {
    pub(crate) fn active(&self) -> &Segment {
        // `segments` is never empty (recovery creates one): see `recovery::recover`.
        &self.segments[self.segments.len() - 1]
    }

    pub(crate) fn active_mut(&mut self) -> &mut Segment {
        let n = self.segments.len();
        &mut self.segments[n - 1]
    }

    pub(crate) fn next_offset(&self) -> u64 {
        self.active().next_offset
    }

    pub(crate) fn earliest_offset(&self) -> u64 {
        self.segments[0].base_offset
    }

    pub(crate) fn refresh(&mut self) {
        self.last_raft = self.segments.iter().rev().find_map(|s| s.last_raft);
        let mut m: Option<i64> = None;
        self.cum_max = self
            .segments
            .iter()
            .map(|s| {
                m = match (m, s.max_timestamp) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                m
            })
            .collect();
    }

    /// Index of the segment holding `offset` (the last with base ≤ offset).
    pub(crate) fn segment_for_offset(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    /// Index of the segment holding raft index `index`, if any.
    pub(crate) fn segment_for_raft(&self, index: u64) -> Option<usize> {
        let n = self
            .segments
            .partition_point(|s| s.first_raft.is_some_and(|(_, i)| i <= index));
        let i = n.checked_sub(1)?;
        self.segments[i]
            .last_raft
            .is_some_and(|(_, l)| l >= index)
            .then_some(i)
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub maintenance: Mutex<()>,
    pub writer: Mutex<()>,
    pub syncer: Mutex<()>,
    pub state: RwLock<State>,
    pub watermark: watch::Sender<Watermark>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if !st.closed {
            if let Err(e) = close_state(&self.dir, st) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "closing log on drop failed");
            }
        }
    }
}

/// Syncs the active segment and its indexes and records the recovery point.
fn close_state(dir: &Path, st: &mut State) -> Result<()> {
    st.closed = true;
    for (f, p) in std::mem::take(&mut st.pending_sync) {
        fsutil::fdatasync(&f, &p)?;
    }
    if st.dirty_tail {
        st.active().zero_tail()?;
        st.dirty_tail = false;
    }
    st.active_mut().sync_indexes()?;
    let a = st.active();
    fsutil::fdatasync(&*a.file()?, &a.log_path)?;
    let n = st.segments.len();
    let point = recovery::Point {
        base: a.base_offset,
        len: a.len,
        sealed: st.segments[..n - 1]
            .iter()
            .map(Segment::sealed_meta)
            .collect(),
    };
    recovery::write_point(dir, &point)?;
    st.point_live = true;
    Ok(())
}

/// A cheaply cloneable handle to one partition's log. One writer (the raft log store) and any
/// number of readers share it.
#[derive(Clone)]
pub struct Log {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering it: see `recovery` for the
    /// rules. The high watermark starts at `None`: the raft layer republishes it as it
    /// re-applies committed entries.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let (segments, point_live) = recovery::recover(&dir, &config)?;
        let mut state = State {
            segments,
            point_live,
            dirty_tail: false,
            last_raft: None,
            cum_max: Vec::new(),
            pending_sync: Vec::new(),
            closed: false,
        };
        state.refresh();
        let (tx, _rx) = watch::channel(Watermark::default());
        Ok(Log {
            shared: Arc::new(Shared {
                dir,
                config,
                maintenance: Mutex::new(()),
                writer: Mutex::new(()),
                syncer: Mutex::new(()),
                state: RwLock::new(state),
                watermark: tx,
            }),
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The configuration.
    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    /// Appends one batch (one raft entry).
    ///
    /// Correctness rules:
    /// 1. Calls are serialized by the log, but the caller must append raft entries in order:
    ///    `meta.raft_index` = last raft index + 1 (any value when the log is empty), and
    ///    `meta.raft_term` ≥ the last term. Otherwise [`StorageError::RaftIndexGap`] /
    ///    [`StorageError::TermRegression`] and nothing is written.
    /// 2. For [`crate::BatchKind::Data`] the body must be a record set from
    ///    [`crate::RecordBatchBuilder`] or a compacted form of one (fewer records, possibly
    ///    none, same span: what a replica that compacted sends when raft replicates from it);
    ///    its header is checked; its records CRC is trusted unless `LogConfig::verify_appends`.
    ///    Control bodies are opaque.
    /// 3. The batch is readable (by raft index) when this returns, but **not durable**: call
    ///    [`Log::sync`] or a [`crate::GroupCommit`] before acknowledging.
    /// 4. On error nothing is published; a partially written tail is overwritten by the next
    ///    append and, after a crash, cut by recovery.
    pub fn append(&self, meta: BatchMeta, body: Bytes) -> Result<Appended> {
        let _w = self.shared.writer.lock();
        self.append_locked(meta, &body)
    }

    /// Appends several batches under one lock acquisition (same rules as [`Log::append`]).
    /// Stops at the first error; batches before it stay appended.
    pub fn append_all(&self, batches: &[(BatchMeta, Bytes)]) -> Result<Vec<Appended>> {
        let _w = self.shared.writer.lock();
        batches
            .iter()
            .map(|(m, b)| self.append_locked(*m, b))
            .collect()
    }

    fn append_locked(&self, meta: BatchMeta, body: &[u8]) -> Result<Appended> {
        let config = &self.shared.config;
        let (base_offset, roll, point_live) = {
            let st = self.shared.state.read();
            if st.closed {
                return Err(StorageError::Closed);
            }
            if let Some((term, index)) = st.last_raft {
                if index.checked_add(1) != Some(meta.raft_index) {
                    return Err(StorageError::RaftIndexGap {
                        last: index,
                        got: meta.raft_index,
                    });
                }
                if meta.raft_term < term {
                    return Err(StorageError::TermRegression {
                        last: term,
                        got: meta.raft_term,
                    });
                }
            }
            let a = st.active();
            let batch_len = (BATCH_HEADER_LEN + body.len()) as u64;
            let span = if meta.kind.is_data() {
                crate::record_set::RecordSetHeader::parse(body)
                    .map_or(0, |h| u64::from(h.offset_span()))
            } else {
                0
            };
            let has_data = a.next_offset > a.base_offset;
            let too_big = a.len + batch_len > config.segment_max_bytes;
            let too_old = match (config.segment_max_age, a.first_timestamp) {
                (Some(age), Some(first)) => {
                    let age_ns = i64::try_from(age.as_nanos()).unwrap_or(i64::MAX);
                    now_ns().saturating_sub(first) >= age_ns
                }
                _ => false,
            };
            // Relative offsets are u32: roll before they could overflow.
            let rel_full = a.next_offset - a.base_offset + span > u64::from(u32::MAX);
            (
                a.next_offset,
                has_data && (too_big || too_old || rel_full),
                st.point_live,
            )
        };
        let (header, rs) = Segment::prepare(meta, base_offset, body, config.verify_appends)?;
        // The recovery point vouches for a zero tail: retire it before writing one.
        if point_live {
            self.retire_point()?;
        }
        if roll {
            self.roll_locked()?;
        }
        let batch_len = (BATCH_HEADER_LEN + body.len()) as u64;
        let fast = {
            let st = self.shared.state.read();
            let a = st.active();
            (a.len + batch_len <= a.allocated).then(|| (a.file(), a.log_path.clone(), a.len))
        };
        let (file, path, pos) = match fast {
            Some((file, path, pos)) => (file?, path, pos),
            None => {
                let mut st = self.shared.state.write();
                let a = st.active_mut();
                a.ensure_capacity(config, batch_len)?;
                (a.file()?, a.log_path.clone(), a.len)
            }
        };
        if let Err(e) = fsutil::pwritev_all(&file, &path, pos, &[&header, body]) {
            self.shared.state.write().dirty_tail = true;
            return Err(e);
        }
        let mut st = self.shared.state.write();
        let n = st.segments.len();
        let a = &mut st.segments[n - 1];
        a.publish(config, &header, rs, body.len())?;
        let next_offset = a.next_offset;
        let max_ts = a.max_timestamp;
        st.last_raft = Some((meta.raft_term, meta.raft_index));
        let prev = if n >= 2 { st.cum_max[n - 2] } else { None };
        st.cum_max[n - 1] = match (prev, max_ts) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        Ok(Appended {
            base_offset,
            next_offset,
            raft_index: meta.raft_index,
        })
    }

    /// Seals the active segment (if it holds at least one data record) and starts a new one.
    /// Returns whether a roll happened. The sealed segment is synced by the next
    /// [`Log::sync`].
    pub fn roll(&self) -> Result<bool> {
        let _w = self.shared.writer.lock();
        let has_data = {
            let st = self.shared.state.read();
            let a = st.active();
            a.next_offset > a.base_offset
        };
        if !has_data {
            return Ok(false);
        }
        self.roll_locked()?;
        Ok(true)
    }

    fn roll_locked(&self) -> Result<()> {
        let config = &self.shared.config;
        // Only the writer changes the tail, and we hold the writer lock.
        let next = self.shared.state.read().next_offset();
        // Create (and preallocate) the new segment first, outside the state lock: a full disk
        // fails here, before anything changes. Its directory entry is made durable by the
        // next `sync`, together with the sealed segment.
        let new = Segment::create(&self.shared.dir, next, config)?;
        let mut st = self.shared.state.write();
        let pending = st.active_mut().seal()?;
        st.pending_sync.extend(pending);
        st.segments.push(new);
        st.refresh();
        tracing::debug!(dir = %self.shared.dir.display(), base_offset = next, "rolled segment");
        Ok(())
    }

    /// Makes every append that returned before this call durable: `fdatasync` of every
    /// segment sealed since the last sync (log and indexes), then of the active `.log`. The
    /// active segment's index files are not synced here: recovery rebuilds their tail.
    /// Calls are serialized, so a sync that returns never relies on one still running.
    pub fn sync(&self) -> Result<()> {
        let _s = self.shared.syncer.lock();
        let (pending, file, path) = {
            let mut st = self.shared.state.write();
            // Index entries go to the page cache with the data they describe (not synced).
            st.active_mut().flush_indexes()?;
            let pending = std::mem::take(&mut st.pending_sync);
            let a = st.active();
            (pending, a.file()?, a.log_path.clone())
        };
        for (i, (f, p)) in pending.iter().enumerate() {
            if let Err(e) = fsutil::fdatasync(f, p) {
                // Keep what is still unsynced for the next attempt.
                let mut st = self.shared.state.write();
                st.pending_sync.extend(pending.into_iter().skip(i));
                return Err(e);
            }
        }
        if !pending.is_empty() {
            fsutil::fsync_dir(&self.shared.dir)?;
        }
        fsutil::fdatasync(&file, &path)
    }

    /// Syncs and records the recovery point (so the next open scans only from the last index
    /// entry), then refuses further appends and wakes tailing readers with
    /// [`StorageError::Closed`]. Also done on drop of the last handle.
    pub fn close(&self) -> Result<()> {
        let _w = self.shared.writer.lock();
        let mut st = self.shared.state.write();
        if st.closed {
            return Ok(());
        }
        let r = close_state(&self.shared.dir, &mut st);
        self.shared.watermark.send_modify(|w| w.closed = true);
        r
    }

    /// Base offset and valid byte length of the active segment (for metrics and tests).
    pub fn active_segment(&self) -> (u64, u64) {
        let st = self.shared.state.read();
        let a = st.active();
        (a.base_offset, a.len)
    }

    /// Test support: drops this handle as a crash would — nothing is synced, no recovery
    /// point is written, tailing readers get [`StorageError::Closed`]. Other clones must be
    /// dropped too before the directory is reopened.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.shared.state.write().closed = true;
        self.shared.watermark.send_modify(|w| w.closed = true);
    }

    /// (term, index) of the last batch, `None` if the log holds no batch.
    pub fn last_raft_entry(&self) -> Option<(u64, u64)> {
        self.shared.state.read().last_raft
    }

    /// Raft index of the first batch still stored.
    pub fn first_raft_index(&self) -> Option<u64> {
        let st = self.shared.state.read();
        st.segments
            .iter()
            .find_map(|s| s.first_raft)
            .map(|(_, i)| i)
    }

    /// Offset the next data record gets (Kafka's log end offset).
    pub fn next_offset(&self) -> u64 {
        self.shared.state.read().next_offset()
    }

    /// First offset still stored (the base of the first segment).
    pub fn earliest_offset(&self) -> u64 {
        self.shared.state.read().earliest_offset()
    }

    /// Last offset written, committed or not (`None` before the first record).
    pub fn newest_offset(&self) -> Option<u64> {
        self.next_offset().checked_sub(1)
    }

    /// Bytes of all `.log` files (valid bytes).
    pub fn size_bytes(&self) -> u64 {
        self.shared
            .state
            .read()
            .segments
            .iter()
            .map(|s| s.len)
            .sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.shared.state.read().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.shared
            .state
            .read()
            .segments
            .iter()
            .map(|s| s.base_offset)
            .collect()
    }

    /// Sets the commit point: the last committed offset (inclusive), Liftbridge's high
    /// watermark; `None` = nothing committed. Wakes tailing readers.
    ///
    /// Correctness rules:
    /// 1. Only offsets raft has committed may be published: readers treat everything at or
    ///    below it as final, and [`Log::truncate_after`] must never cut below it.
    /// 2. It must not exceed [`Log::newest_offset`] ([`StorageError::InvalidArgument`]).
    pub fn set_high_watermark(&self, hw: Option<u64>) -> Result<()> {
        if let Some(h) = hw {
            let next = self.next_offset();
            if h >= next {
                return Err(StorageError::InvalidArgument(format!(
                    "high watermark {h} beyond the newest offset (next offset {next})"
                )));
            }
        }
        self.shared.watermark.send_if_modified(|w| {
            let changed = w.hw != hw;
            w.hw = hw;
            changed
        });
        Ok(())
    }

    /// The last committed offset, inclusive (`None`: nothing committed).
    pub fn high_watermark(&self) -> Option<u64> {
        self.shared.watermark.borrow().hw
    }

    /// Exclusive end of what readers may see.
    pub(crate) fn committed_end(&self) -> u64 {
        self.high_watermark().map_or(0, |h| h + 1)
    }

    /// Reads the batch with raft index `index`, if stored.
    pub fn batch_at_raft_index(&self, index: u64) -> Result<Option<StoredBatch>> {
        Ok(self
            .batches_by_raft_index(index..=index)?
            .into_iter()
            .next())
    }

    /// Reads the batches whose raft index is in `range` (those stored: purged or not-yet-
    /// appended indexes are simply absent), in order, zero-copy. O(log n) to find the start.
    pub fn batches_by_raft_index(&self, range: impl RangeBounds<u64>) -> Result<Vec<StoredBatch>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end_incl = match range.end_bound() {
            Bound::Included(&e) => e,
            Bound::Excluded(&e) => match e.checked_sub(1) {
                Some(e) => e,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        let mut out = Vec::new();
        if start > end_incl {
            return Ok(out);
        }
        let verify = self.shared.config.verify_reads;
        let mut cursor = start;
        loop {
            let (view, pos) = {
                let st = self.shared.state.read();
                let first = st
                    .segments
                    .iter()
                    .find_map(|s| s.first_raft)
                    .map(|(_, i)| i);
                let Some(last) = st.last_raft.map(|(_, i)| i) else {
                    return Ok(out);
                };
                if let Some(f) = first {
                    cursor = cursor.max(f);
                }
                if cursor > last || cursor > end_incl {
                    return Ok(out);
                }
                let Some(si) = st.segment_for_raft(cursor) else {
                    return Ok(out);
                };
                let seg = &st.segments[si];
                (seg.view()?, seg.raft_start(cursor)?)
            };
            let target = cursor;
            let Some(mut l) = view.find(
                pos,
                |b| b.header.raft_index >= target,
                |b| b.header.raft_index > target,
            )?
            else {
                return Ok(out);
            };
            loop {
                let idx = l.batch.header.raft_index;
                if idx > end_incl {
                    return Ok(out);
                }
                if verify {
                    view.verify(&l)?;
                }
                out.push(stored(&view, &l));
                if idx == u64::MAX {
                    return Ok(out);
                }
                cursor = idx + 1;
                let next = l.end();
                if next >= view.len {
                    break;
                }
                l = view.batch_at(next)?;
            }
        }
    }

    /// The raft index of the first stored batch at or after raft index `from` whose bytes fail
    /// a check (frame CRC, records CRC, structure), or `None` if every such batch is sound.
    /// Reads (and hashes) every batch from `from` to the end of the log: the caller bounds the
    /// cost by choosing `from` (the raft layer passes its restart point, see
    /// [`Log::truncate_at_first_corrupt`]).
    pub fn first_corrupt_raft_index(&self, from: u64) -> Result<Option<u64>> {
        let mut cursor = from;
        loop {
            let (view, pos) = {
                let st = self.shared.state.read();
                let first = st
                    .segments
                    .iter()
                    .find_map(|s| s.first_raft)
                    .map(|(_, i)| i);
                let Some(last) = st.last_raft.map(|(_, i)| i) else {
                    return Ok(None);
                };
                if let Some(f) = first {
                    cursor = cursor.max(f);
                }
                if cursor > last {
                    return Ok(None);
                }
                let Some(si) = st.segment_for_raft(cursor) else {
                    return Ok(None);
                };
                let seg = &st.segments[si];
                let opened = seg.view().and_then(|v| Ok((v, seg.raft_start(cursor)?)));
                match opened {
                    Ok(o) => o,
                    Err(StorageError::Corrupt { .. }) => return Ok(Some(cursor)),
                    Err(e) => return Err(e),
                }
            };
            let target = cursor;
            let found = view.find(
                pos,
                |b| b.header.raft_index >= target,
                |b| b.header.raft_index > target,
            );
            let mut l = match found {
                Ok(Some(l)) => l,
                // The segment holds the index (its raft range says so) but no batch for it.
                Ok(None) | Err(StorageError::Corrupt { .. }) => return Ok(Some(target)),
                Err(e) => return Err(e),
            };
            loop {
                let idx = l.batch.header.raft_index;
                if view.verify(&l).is_err() {
                    return Ok(Some(idx));
                }
                let Some(next_index) = idx.checked_add(1) else {
                    return Ok(None);
                };
                cursor = next_index;
                let next = l.end();
                if next >= view.len {
                    break;
                }
                l = match view.batch_at(next) {
                    Ok(l) => l,
                    Err(StorageError::Corrupt { .. }) => return Ok(Some(cursor)),
                    Err(e) => return Err(e),
                };
            }
        }
    }

    /// Finds the first batch at or after raft index `from` that fails a check
    /// ([`Log::first_corrupt_raft_index`]) and deletes it and everything after it
    /// ([`Log::truncate_after`]); returns its raft index (`None`: nothing was wrong, nothing
    /// changed). Logged at WARN.
    ///
    /// Why it exists: after a clean close, recovery trusts the records CRCs below the
    /// recovery point (they are checked on read), so a bit flipped there is only found when
    /// raft reads the entry — and a raft log read error stops the group. Raft calls this at
    /// open on the entries it is about to re-apply or replicate, so a corrupt batch is cut
    /// (and re-replicated by the leader) instead of being served, voted with, or read.
    ///
    /// Correctness rules:
    /// 1. Call it before raft reads the log state: it may remove committed entries, which is
    ///    only sound on a replica that re-learns them from the leader (the raft layer clamps
    ///    its commit point to the log end, and the leader re-sends what is missing).
    /// 2. The high watermark is lowered if the cut falls below it (see `truncate_after`).
    pub fn truncate_at_first_corrupt(&self, from: u64) -> Result<Option<u64>> {
        let Some(bad) = self.first_corrupt_raft_index(from)? else {
            return Ok(None);
        };
        tracing::warn!(
            dir = %self.shared.dir.display(),
            raft_index = bad,
            "corrupt batch in the log; truncating the log before it (the leader re-sends it)"
        );
        self.truncate_after(bad.checked_sub(1))?;
        Ok(Some(bad))
    }

    /// Deletes every batch whose raft index is greater than `last` (`None`: every batch).
    /// Durable when it returns (the cut is zeroed and synced, later segments are unlinked
    /// and the directory synced).
    ///
    /// Correctness rules:
    /// 1. Only uncommitted entries may be truncated: if the cut falls below the high watermark
    ///    the watermark is lowered (and a warning logged), but readers may already have seen
    ///    those records.
    /// 2. A `Bytes` of a truncated batch obtained earlier may see its bytes replaced (zeros,
    ///    then later appends): drop such handles; raft never uses entries it truncated.
    /// 3. After `truncate_after(None)` the log is empty and the next data batch reuses the
    ///    log's start offset ([`Log::earliest_offset`]).
    pub fn truncate_after(&self, last: Option<u64>) -> Result<()> {
        let _m = self.shared.maintenance.lock();
        let _w = self.shared.writer.lock();
        let config = &self.shared.config;
        let mut st = self.shared.state.write();
        let Some((_, last_index)) = st.last_raft else {
            return Ok(());
        };
        if last.is_some_and(|l| l >= last_index) {
            return Ok(());
        }
        // Find the segment and byte position where the cut starts.
        let (si, pos) = match last {
            None => (0, 0),
            Some(l) => match st.segment_for_raft(l) {
                Some(si) => {
                    let seg = &st.segments[si];
                    let view = seg.view()?;
                    let start = seg.raft_start(l)?;
                    match view.find(
                        start,
                        |b| b.header.raft_index >= l,
                        |b| b.header.raft_index > l,
                    )? {
                        Some(loc) if loc.batch.header.raft_index == l => (si, loc.end()),
                        _ => {
                            return Err(StorageError::corrupt(
                                &seg.log_path,
                                start,
                                crate::error::DecodeError::Invalid(
                                    "raft index missing from its segment",
                                ),
                            ))
                        }
                    }
                }
                // Below the first stored index: everything goes.
                None => (0, 0),
            },
        };
        recovery::remove_point(&self.shared.dir)?;
        st.point_live = false;
        let removed: Vec<Segment> = st.segments.drain(si + 1..).collect();
        for seg in &removed {
            seg.delete_files()?;
        }
        fsutil::fsync_dir(&self.shared.dir)?;
        st.active_mut().truncate_to(config, pos)?;
        st.refresh();
        let next = st.next_offset();
        drop(st);
        let hw = self.high_watermark();
        if hw.is_some_and(|h| h >= next) {
            tracing::warn!(dir = %self.shared.dir.display(), ?hw, next, "truncation below the high watermark");
            let new_hw = next.checked_sub(1);
            self.shared.watermark.send_modify(|w| w.hw = new_hw);
        }
        Ok(())
    }

    /// Deletes whole sealed segments all of whose batches have raft index ≤ `through`, oldest
    /// first (openraft's `purge`, which may be lazy: the active segment and any segment
    /// reaching past `through` are kept). The raft layer persists its last-purged log id
    /// itself.
    ///
    /// Correctness rules:
    /// 1. Only entries covered by a snapshot may be purged (openraft guarantees it).
    /// 2. When `through` ≥ the last raft index, the log becomes **empty** (as by
    ///    [`Log::reset`] at the current next offset) so that the next append may start at
    ///    `through + 1`.
    pub fn purge_through(&self, through: u64) -> Result<PurgeOutcome> {
        let last = self.last_raft_entry().map(|(_, i)| i);
        if last.is_some_and(|l| through >= l) {
            let next = self.next_offset();
            return self.reset(next);
        }
        let _m = self.shared.maintenance.lock();
        self.delete_prefix(|seg| seg.last_raft.is_some_and(|(_, i)| i <= through))
    }

    /// Empties the log and restarts it at offset `next_offset`: the next data batch gets that
    /// offset, and the next batch may have any raft index. For installing a raft snapshot on
    /// a replica whose log is behind or divergent: offsets are a function of the log prefix,
    /// which such a replica does not have, so the snapshot must carry the next offset.
    ///
    /// Correctness rules:
    /// 1. Durable when it returns.
    /// 2. `next_offset` must not be below the committed offsets readers have seen.
    /// 3. A crash in the middle may leave the old log (a suffix of it): after opening, if
    ///    [`Log::last_raft_entry`] is below the raft layer's last-purged index, call `reset`
    ///    again.
    pub fn reset(&self, next_offset: u64) -> Result<PurgeOutcome> {
        let _m = self.shared.maintenance.lock();
        let _w = self.shared.writer.lock();
        let config = &self.shared.config;
        let mut st = self.shared.state.write();
        recovery::remove_point(&self.shared.dir)?;
        st.point_live = false;
        let mut out = PurgeOutcome::default();
        let same_name = st.active().base_offset == next_offset;
        if same_name {
            // Reuse the active file (never shrink a mapped file): zero it.
            st.active_mut().truncate_to(config, 0)?;
        } else {
            // A sealed segment with the same name is unlinked first: its mapped readers keep
            // the old inode, and `create` never shrinks a file somebody maps.
            if let Some(i) = st
                .segments
                .iter()
                .position(|s| s.base_offset == next_offset)
            {
                let old = st.segments.remove(i);
                out.segments_deleted += 1;
                out.bytes_deleted += old.len;
                old.delete_files()?;
            }
            let new = Segment::create(&self.shared.dir, next_offset, config)?;
            st.segments.push(new);
            fsutil::fsync_dir(&self.shared.dir)?;
        }
        let n = st.segments.len();
        let removed: Vec<Segment> = st.segments.drain(..n - 1).collect();
        for seg in &removed {
            seg.delete_files()?;
            out.segments_deleted += 1;
            out.bytes_deleted += seg.len;
        }
        fsutil::fsync_dir(&self.shared.dir)?;
        st.refresh();
        drop(st);
        let hw = self.high_watermark();
        if hw.is_some_and(|h| h >= next_offset) {
            let new_hw = next_offset.checked_sub(1);
            self.shared.watermark.send_modify(|w| w.hw = new_hw);
        }
        Ok(out)
    }

    /// Deletes `recovery.point` durably if it exists: before anything changes what it vouches
    /// for (an append, a deleted or rewritten segment).
    pub(crate) fn retire_point(&self) -> Result<()> {
        if self.shared.state.read().point_live {
            recovery::remove_point(&self.shared.dir)?;
            fsutil::fsync_dir(&self.shared.dir)?;
            self.shared.state.write().point_live = false;
        }
        Ok(())
    }

    /// Deletes the longest prefix of sealed segments for which `pred` holds.
    pub(crate) fn delete_prefix(
        &self,
        mut pred: impl FnMut(&Segment) -> bool,
    ) -> Result<PurgeOutcome> {
        self.retire_point()?;
        let mut st = self.shared.state.write();
        let n = st.segments.len();
        let mut k = 0;
        while k + 1 < n && st.segments[k].sealed && pred(&st.segments[k]) {
            k += 1;
        }
        if k == 0 {
            return Ok(PurgeOutcome::default());
        }
        let removed: Vec<Segment> = st.segments.drain(..k).collect();
        st.refresh();
        drop(st);
        let mut out = PurgeOutcome::default();
        for seg in &removed {
            seg.delete_files()?;
            out.segments_deleted += 1;
            out.bytes_deleted += seg.len;
        }
        fsutil::fsync_dir(&self.shared.dir)?;
        Ok(out)
    }

    /// A receiver of the watermark (for tailing readers).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Watermark> {
        self.shared.watermark.subscribe()
    }
}

/// Builds a [`StoredBatch`] from a located batch.
pub(crate) fn stored(view: &SegView, l: &Located) -> StoredBatch {
    let h = &l.batch.header;
    StoredBatch {
        meta: h.meta(),
        base_offset: h.base_offset,
        offset_span: h.offset_span,
        record_count: l.batch.records.map_or(0, |r| r.record_count),
        body: view.body(l),
    }
}

/// Parses the record set of a located data batch (header already validated).
pub(crate) fn record_set(view: &SegView, l: &Located) -> Result<RecordSet> {
    RecordSet::parse(view.body(l)).map_err(|e| StorageError::corrupt(&view.path, l.position, e))
}

/// Wall-clock now in Unix nanoseconds.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
