//! Reading records: forward from an offset, backward from an offset, by timestamp, and
//! tailing (async, woken by the high watermark).
//!
//! Invariants:
//! - Only committed records are returned: offsets ≤ the high watermark.
//! - Records are zero-copy `Bytes` slices of the segment's memory map — sealed *and* active
//!   segments are read through a read-only map (appends go through `pwritev`, which updates the
//!   same page cache), so no read copies record bytes.
//! - The state lock is held only to pick a segment and an index position; decoding runs
//!   without it.
//! - Each data batch's records CRC is verified before its records are returned (unless
//!   `LogConfig::verify_reads` is off): corrupt bytes are an error, never served. The result is
//!   remembered per batch position while the segment is open (a lossy cache), so random reads
//!   into a 1 MiB batch do not re-hash it every time.
//! - An offset below [`crate::Log::earliest_offset`] is [`StorageError::OffsetOutOfRange`].

use tokio::sync::watch;

use crate::error::{Result, StorageError};
use crate::log::{record_set, Log, Watermark};
use crate::record::{record_timestamp, RecordView};

/// How much one read returns. At least one record is returned if any is available, even if
/// it alone exceeds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Maximum number of records.
    pub max_records: usize,
    /// Approximate maximum bytes (sum of key and value lengths).
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_records: 1024,
            max_bytes: 1 << 20,
        }
    }
}

impl ReadLimits {
    /// At most `n` records, no byte limit.
    pub fn records(n: usize) -> Self {
        ReadLimits {
            max_records: n,
            max_bytes: usize::MAX,
        }
    }
}

fn record_size(r: &RecordView) -> usize {
    r.value.len() + r.key.as_ref().map_or(0, |k| k.len())
}

impl Log {
    fn check_range(&self, offset: u64) -> Result<()> {
        let st = self.shared.state.read();
        let earliest = st.earliest_offset();
        if offset < earliest {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                earliest,
                next: st.next_offset(),
            });
        }
        Ok(())
    }

    /// Reads committed records with offset ≥ `from`, in offset order.
    /// Empty when nothing is committed at or after `from`.
    pub fn read(&self, from: u64, limits: ReadLimits) -> Result<Vec<RecordView>> {
        Ok(self.read_from(from, limits)?.0)
    }

    /// Like [`Log::read`], also returning the offset to continue from (past records removed
    /// by compaction as well).
    pub(crate) fn read_from(
        &self,
        from: u64,
        limits: ReadLimits,
    ) -> Result<(Vec<RecordView>, u64)> {
        self.check_range(from)?;
        let end = self.committed_end();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = from;
        let verify = self.shared.config.verify_reads;
        while cursor < end && out.len() < limits.max_records {
            let (view, start, next_seg) = {
                let st = self.shared.state.read();
                if cursor < st.earliest_offset() {
                    return Err(StorageError::OffsetOutOfRange {
                        offset: cursor,
                        earliest: st.earliest_offset(),
                        next: st.next_offset(),
                    });
                }
                let si = st.segment_for_offset(cursor);
                let seg = &st.segments[si];
                (
                    seg.view()?,
                    seg.offset_start(cursor)?,
                    st.segments.get(si + 1).map(|s| s.base_offset),
                )
            };
            let c = cursor;
            let found = view.find(
                start,
                |b| b.header.kind.is_data() && b.header.next_offset() > c,
                |b| b.header.base_offset > c,
            )?;
            let mut pos = found.map_or(view.len, |l| l.position);
            while pos < view.len {
                let l = view.batch_at(pos)?;
                let h = l.batch.header;
                if h.kind.is_data() && h.next_offset() > cursor {
                    if h.base_offset >= end {
                        return Ok((out, cursor));
                    }
                    if verify {
                        view.verify(&l)?;
                    }
                    let set = record_set(&view, &l)?;
                    for r in set.records_from(h.base_offset, cursor) {
                        let r = r.map_err(|e| StorageError::corrupt(&view.path, l.position, e))?;
                        if r.offset < cursor {
                            continue;
                        }
                        if r.offset >= end
                            || out.len() >= limits.max_records
                            || (bytes >= limits.max_bytes && !out.is_empty())
                        {
                            return Ok((out, r.offset.min(end)));
                        }
                        bytes += record_size(&r);
                        cursor = r.offset.saturating_add(1);
                        out.push(r);
                    }
                    // Offsets removed by compaction are skipped, never waited for.
                    cursor = cursor.max(h.next_offset().min(end));
                    if out.len() >= limits.max_records || bytes >= limits.max_bytes {
                        return Ok((out, cursor));
                    }
                }
                pos = l.end();
            }
            match next_seg {
                Some(b) if b > cursor => cursor = b,
                Some(_) => {}
                None => break,
            }
        }
        Ok((out, cursor))
    }

    /// Reads committed records with offset < `before`, newest first. Each step reads one
    /// index window (about `index_interval_bytes`) backwards.
    pub fn read_reverse(&self, before: u64, limits: ReadLimits) -> Result<Vec<RecordView>> {
        let mut upper = self.committed_end().min(before);
        let mut out: Vec<RecordView> = Vec::new();
        let mut bytes = 0usize;
        let verify = self.shared.config.verify_reads;
        while out.len() < limits.max_records && (bytes < limits.max_bytes || out.is_empty()) {
            let (view, mut start) = {
                let st = self.shared.state.read();
                if upper <= st.earliest_offset() {
                    break;
                }
                let seg = &st.segments[st.segment_for_offset(upper - 1)];
                (seg.view()?, seg.offset_start(upper - 1)?)
            };
            let (window, window_base) = loop {
                let mut window = Vec::new();
                let mut window_base = None;
                let mut pos = start;
                while pos < view.len {
                    let l = view.batch_at(pos)?;
                    let h = l.batch.header;
                    window_base.get_or_insert(h.base_offset);
                    if h.base_offset >= upper {
                        break;
                    }
                    if h.kind.is_data() {
                        if verify {
                            view.verify(&l)?;
                        }
                        let set = record_set(&view, &l)?;
                        for r in set.records(h.base_offset) {
                            let r =
                                r.map_err(|e| StorageError::corrupt(&view.path, l.position, e))?;
                            if r.offset < upper {
                                window.push(r);
                            }
                        }
                    }
                    pos = l.end();
                }
                let base = if start == 0 {
                    view.base_offset
                } else {
                    window_base.unwrap_or(upper)
                };
                if base >= upper && start > 0 {
                    // Inconsistent index entry: read the segment from its start.
                    start = 0;
                    continue;
                }
                break (window, base.min(upper.saturating_sub(1)));
            };
            for r in window.into_iter().rev() {
                if out.len() >= limits.max_records || (bytes >= limits.max_bytes && !out.is_empty())
                {
                    return Ok(out);
                }
                bytes += record_size(&r);
                out.push(r);
            }
            upper = window_base;
        }
        Ok(out)
    }

    /// Offset of the first committed record whose timestamp is ≥ `t` (Unix ns), `None` if
    /// there is none. O(log n): a binary search over segments (by running maximum), over the
    /// time index, then a scan of at most about one index interval.
    pub fn offset_for_timestamp(&self, t: i64) -> Result<Option<u64>> {
        let end = self.committed_end();
        let verify = self.shared.config.verify_reads;
        let mut si = {
            let st = self.shared.state.read();
            st.cum_max.partition_point(|m| m.is_none_or(|m| m < t))
        };
        loop {
            let (view, start) = {
                let st = self.shared.state.read();
                let Some(seg) = st.segments.get(si) else {
                    return Ok(None);
                };
                (seg.view()?, seg.time_start(t)?)
            };
            if view.base_offset >= end {
                return Ok(None);
            }
            let mut found =
                view.scan_from(start, |b| b.records.is_some_and(|r| r.max_timestamp >= t))?;
            while let Some(l) = found.take() {
                let h = l.batch.header;
                if h.base_offset >= end {
                    return Ok(None);
                }
                if let Some(rs) = l.batch.records.filter(|r| r.max_timestamp >= t) {
                    if verify {
                        view.verify(&l)?;
                    }
                    let set = record_set(&view, &l)?;
                    let region = set.region();
                    for fr in set.frames() {
                        let (frame, _) =
                            fr.map_err(|e| StorageError::corrupt(&view.path, l.position, e))?;
                        let ts = record_timestamp(&region, frame, rs.base_timestamp)
                            .map_err(|e| StorageError::corrupt(&view.path, l.position, e))?;
                        let off = h.base_offset.saturating_add(u64::from(frame.offset_delta));
                        if off >= end {
                            return Ok(None);
                        }
                        if ts >= t {
                            return Ok(Some(off));
                        }
                    }
                }
                let next = l.end();
                if next < view.len {
                    found = Some(view.batch_at(next)?);
                }
            }
            si += 1;
        }
    }

    /// A tailing reader positioned at `from`.
    pub fn tail(&self, from: u64) -> TailReader {
        TailReader {
            log: self.clone(),
            next: from,
            rx: self.subscribe(),
        }
    }
}

/// Reads committed records from a position onwards, waiting (without polling) for the high
/// watermark to move when it has read everything committed. Cancel-safe: dropping a pending
/// `next_records` future loses nothing.
#[derive(Debug)]
pub struct TailReader {
    log: Log,
    next: u64,
    rx: watch::Receiver<Watermark>,
}

impl TailReader {
    /// The offset the next record will have (at least).
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Returns the next committed records, waiting until at least one exists. Fails with
    /// [`StorageError::Closed`] when the log is closed and
    /// [`StorageError::OffsetOutOfRange`] when retention removed the position.
    pub async fn next_records(&mut self, limits: ReadLimits) -> Result<Vec<RecordView>> {
        loop {
            let closed = self.rx.borrow_and_update().closed;
            if closed {
                return Err(StorageError::Closed);
            }
            let (records, next) = self.log.read_from(self.next, limits)?;
            self.next = self.next.max(next);
            if let Some(last) = records.last() {
                self.next = self.next.max(last.offset.saturating_add(1));
                return Ok(records);
            }
            self.rx.changed().await.map_err(|_| StorageError::Closed)?;
        }
    }
}
