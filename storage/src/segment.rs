//! One segment: `NNNNNNNNNNNNNNNNNNNN.log` plus its `.index` and `.timeindex`.
//!
//! A segment is *active* (the last one; appended to) or *sealed* (immutable, memory-mapped).
//!
//! Invariants:
//! - The file name is the segment's base offset, 20 digits zero-padded. A segment is rolled
//!   only when it holds at least one data record, so the next base offset is strictly larger
//!   and names never collide, even though control batches take no offset (a segment may start
//!   with control batches; they carry the base offset of the next data batch).
//! - Batches are contiguous from byte 0 to `len`; raft indexes increase by exactly 1 and
//!   terms never decrease from batch to batch; every batch's `base_offset` equals the previous
//!   batch's `base_offset + offset_span` (the first equals the segment's base offset).
//! - The active `.log` is preallocated ahead of `len` in growing steps (the first
//!   [`PREALLOC_STEP`], then doubling up to `segment_max_bytes`, or more when one batch is
//!   larger), so thousands of idle partitions do not each reserve a whole segment of disk;
//!   bytes after `len` read as zeros. Appends use `pwritev(2)`, never a writable map,
//!   so a full disk is an error, not a `SIGBUS`.
//! - Readers see the file through one read-only `Mmap` (of the allocated length for the
//!   active segment, of exactly `len` for a sealed one), wrapped once in a `Bytes` so every
//!   record slice is zero-copy. Slices never extend past `len`, so shrinking the file to `len`
//!   at seal time cannot fault a reader.
//! - A sealed segment restored from a clean shutdown's summary (`recovery.point`) opens its
//!   files on first use, so opening a log costs O(1) per sealed segment.
//! - Sealing shrinks the `.log` to `len` and maps it; its sync is deferred to the next
//!   `Log::sync` (which syncs every segment sealed since the previous one before the active
//!   one). At open a sealed segment is trusted by its index plus a check of its last batches;
//!   one that fails the check (a crash before that sync) is rescanned in full.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::batch::{
    decode_batch, encode_header, BatchKind, BatchMeta, DecodedBatch, BATCH_HEADER_LEN,
};
use crate::config::LogConfig;
use crate::error::{DecodeError, Result, StorageError};
use crate::fsutil;
use crate::index::{map_file, EntryFile, IndexEntry};
use crate::powerloss;
use crate::record_set::RecordSetHeader;
use crate::time_index::TimeEntry;

/// The 20-digit file stem of a base offset.
pub(crate) fn stem(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

/// Paths of the three files of a segment.
/// The first preallocation of an active segment (capped by `segment_max_bytes`).
pub(crate) const PREALLOC_STEP: u64 = 4 << 20;

/// Bytes to preallocate for a new (or reactivated) active segment.
fn first_allocation(config: &LogConfig) -> u64 {
    PREALLOC_STEP.min(config.segment_max_bytes)
}

/// The next allocation after `allocated`: double, capped at `segment_max_bytes`; past the cap
/// (a batch larger than a segment) grow by a quarter segment.
fn next_allocation(config: &LogConfig, allocated: u64) -> u64 {
    let max = config.segment_max_bytes;
    if allocated < max {
        allocated.saturating_mul(2).max(PREALLOC_STEP).min(max)
    } else {
        allocated + max / 4
    }
}

pub(crate) fn paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf, PathBuf) {
    let s = stem(base_offset);
    (
        dir.join(format!("{s}.log")),
        dir.join(format!("{s}.index")),
        dir.join(format!("{s}.timeindex")),
    )
}

/// Owner of a memory map for `Bytes::from_owner`.
struct MapOwner(memmap2::Mmap);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A batch located in a segment.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// Byte position.
    pub position: u64,
    /// Decoded frame (body range relative to the segment start).
    pub batch: DecodedBatch,
}

impl Located {
    /// Position after the batch.
    pub(crate) fn end(&self) -> u64 {
        self.position + u64::from(self.batch.header.batch_len)
    }
}

/// One segment.
pub(crate) struct Segment {
    /// Base offset (the file name).
    pub base_offset: u64,
    /// Path of the `.log`.
    pub log_path: PathBuf,
    /// The partition directory (to open the files lazily).
    dir: PathBuf,
    /// The open files: set at creation for the active segment, on first use for a sealed
    /// segment restored from a clean shutdown's summary (so open costs O(1) per segment).
    files: OnceLock<Files>,
    /// Batches already verified (shared with views).
    verified: Arc<Verified>,
    /// Valid bytes.
    pub len: u64,
    /// Current file size (preallocated size for the active segment).
    pub allocated: u64,
    /// Offset after the last data record.
    pub next_offset: u64,
    /// (term, index) of the first batch.
    pub first_raft: Option<(u64, u64)>,
    /// (term, index) of the last batch.
    pub last_raft: Option<(u64, u64)>,
    /// Largest record timestamp (upper bound after compaction).
    pub max_timestamp: Option<i64>,
    /// Base timestamp of the first data batch (segment age for rolling).
    pub first_timestamp: Option<i64>,
    /// Position of the last offset-index entry.
    last_index_pos: Option<u64>,
    /// Position of the last time-index entry.
    last_time_pos: Option<u64>,
    /// (rel offset, position) of the last data batch (for the seal time entry).
    last_data_batch: Option<(u32, u32)>,
    /// Sealed (immutable) or active.
    pub sealed: bool,
}

/// Positions of batches whose records CRC has been verified, so that repeated random reads of
/// a large batch do not re-hash it (direct-mapped and lossy: a miss only costs a re-check).
/// Replaced by a fresh cache whenever bytes at a position can change (truncation).
#[derive(Debug)]
pub(crate) struct Verified {
    slots: Box<[std::sync::atomic::AtomicU64]>,
}

impl Verified {
    const SLOTS: usize = 512;

    fn new() -> Arc<Verified> {
        Arc::new(Verified {
            slots: (0..Self::SLOTS)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        })
    }

    fn slot(&self, pos: u64) -> &std::sync::atomic::AtomicU64 {
        let h = pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        &self.slots[(h as usize) % Self::SLOTS]
    }

    fn contains(&self, pos: u64) -> bool {
        self.slot(pos).load(std::sync::atomic::Ordering::Relaxed) == pos + 1
    }

    fn insert(&self, pos: u64) {
        self.slot(pos)
            .store(pos + 1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The open files of a segment.
pub(crate) struct Files {
    /// The `.log`, shared with the writer for `pwritev` outside the state lock.
    pub file: Arc<File>,
    /// The read-only map of the `.log` as `Bytes`.
    pub data: Bytes,
    /// Offset index.
    pub index: EntryFile<IndexEntry>,
    /// Time index.
    pub time_index: EntryFile<TimeEntry>,
}

fn not_open(path: &Path) -> StorageError {
    StorageError::InvalidArgument(format!(
        "segment {} used before its files were opened",
        path.display()
    ))
}

/// The files, mutably (they must be open).
fn fm<'a>(files: &'a mut OnceLock<Files>, path: &Path) -> Result<&'a mut Files> {
    files.get_mut().ok_or_else(|| not_open(path))
}

/// Metadata of a sealed segment kept in the clean-shutdown summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedMeta {
    /// Base offset.
    pub base_offset: u64,
    /// Valid bytes (= file length).
    pub len: u64,
    /// Next offset.
    pub next_offset: u64,
    /// First (term, index).
    pub first_raft: Option<(u64, u64)>,
    /// Last (term, index).
    pub last_raft: Option<(u64, u64)>,
    /// Largest record timestamp.
    pub max_timestamp: Option<i64>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("base_offset", &self.base_offset)
            .field("len", &self.len)
            .field("next_offset", &self.next_offset)
            .field("first_raft", &self.first_raft)
            .field("last_raft", &self.last_raft)
            .field("sealed", &self.sealed)
            .finish()
    }
}

fn map_bytes(file: &File, path: &Path) -> Result<Bytes> {
    let map = map_file(file, path)?;
    Ok(Bytes::from_owner(MapOwner(map)))
}

/// Decodes the batch at `pos` of `data`, not reading at or past `limit`.
pub(crate) fn decode_at(data: &[u8], pos: u64, limit: u64) -> Result<DecodedBatch, DecodeError> {
    let limit = limit.min(data.len() as u64);
    if pos >= limit {
        return Err(DecodeError::Truncated {
            needed: pos + 1,
            available: limit,
        });
    }
    let mut d = decode_batch(&data[pos as usize..limit as usize])?;
    d.body = d.body.start + pos as usize..d.body.end + pos as usize;
    Ok(d)
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Reached the limit exactly.
    Clean,
    /// Found an invalid batch at `position`.
    Invalid { position: u64, reason: DecodeError },
}

impl Segment {
    fn open_log(path: &Path, create: bool) -> Result<File> {
        File::options()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| StorageError::io("opening segment", path, e))
    }

    /// Creates a new, empty active segment (the caller fsyncs the directory).
    pub(crate) fn create(dir: &Path, base_offset: u64, config: &LogConfig) -> Result<Segment> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let file = Self::open_log(&log_path, true)?;
        file.set_len(0)
            .map_err(|e| StorageError::io("truncating segment", &log_path, e))?;
        if config.preallocate {
            fsutil::preallocate(&file, &log_path, first_allocation(config))?;
        }
        let allocated = file
            .metadata()
            .map_err(|e| StorageError::io("stat", &log_path, e))?
            .len();
        let data = map_bytes(&file, &log_path)?;
        let mut index = EntryFile::open_owned(&index_path)?;
        index.replace(Vec::new())?;
        let mut time_index = EntryFile::open_owned(&time_path)?;
        time_index.replace(Vec::new())?;
        for p in [&log_path, &index_path, &time_path] {
            powerloss::created(p);
        }
        // The `.log` is preallocated: its data ends at 0, not at its size.
        powerloss::truncated(&log_path, 0);
        Ok(Segment {
            base_offset,
            log_path,
            dir: dir.to_path_buf(),
            files: OnceLock::from(Files {
                file: Arc::new(file),
                data,
                index,
                time_index,
            }),
            verified: Verified::new(),
            len: 0,
            allocated,
            next_offset: base_offset,
            first_raft: None,
            last_raft: None,
            max_timestamp: None,
            first_timestamp: None,
            last_index_pos: None,
            last_time_pos: None,
            last_data_batch: None,
            sealed: false,
        })
    }

    /// Opens an existing segment for recovery. `sealed` selects the cheap check (trust the
    /// index, verify the batches after its last entry, which must end exactly at the end of the
    /// file); otherwise the segment is scanned from `trusted_len`'s last index entry (the
    /// recovery point, 0 if unknown) and its tail is zeroed. A sealed segment that fails the
    /// cheap check is rescanned fully. Returns the segment and whether it lost bytes.
    /// `clean`: `trusted_len` comes from a recovery point written at a clean close with no
    /// append since, so every byte after it is already zero and need not be zeroed again.
    pub(crate) fn open(
        dir: &Path,
        base_offset: u64,
        config: &LogConfig,
        sealed: bool,
        trusted_len: u64,
        clean: bool,
    ) -> Result<(Segment, bool)> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let file = Self::open_log(&log_path, false)?;
        let file_len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", &log_path, e))?
            .len();
        let data = map_bytes(&file, &log_path)?;
        let files = Files {
            file: Arc::new(file),
            data,
            index: if sealed {
                EntryFile::open_mapped(&index_path)?
            } else {
                EntryFile::open_owned(&index_path)?
            },
            time_index: if sealed {
                EntryFile::open_mapped(&time_path)?
            } else {
                EntryFile::open_owned(&time_path)?
            },
        };
        let mut seg = Segment {
            base_offset,
            log_path,
            dir: dir.to_path_buf(),
            files: OnceLock::from(files),
            verified: Verified::new(),
            len: 0,
            allocated: file_len,
            next_offset: base_offset,
            first_raft: None,
            last_raft: None,
            max_timestamp: None,
            first_timestamp: None,
            last_index_pos: None,
            last_time_pos: None,
            last_data_batch: None,
            sealed,
        };
        if sealed {
            if seg.cheap_check(file_len) {
                return Ok((seg, false));
            }
            tracing::warn!(segment = %seg.log_path.display(), "sealed segment failed its check; rescanning it");
            let f = fm(&mut seg.files, &seg.log_path)?;
            f.index.make_owned();
            f.time_index.make_owned();
            seg.sealed = false;
            let lost = seg.recover_scan(config, 0, false)?;
            seg.seal_after_recovery()?;
            return Ok((seg, lost));
        }
        let lost = seg.recover_scan(config, trusted_len, clean)?;
        // The active `.log` may be preallocated past its data: its data ends at `len`.
        powerloss::truncated(&seg.log_path, seg.len);
        Ok((seg, lost))
    }

    /// Verifies a sealed segment: first batch, last index entry, and every batch after it up
    /// to the end of the file; the last time-index entry. Fills the metadata. No panics.
    fn cheap_check(&mut self, file_len: u64) -> bool {
        let Some(f) = self.files.get() else {
            return false;
        };
        let (data, index, time_index) = (f.data.clone(), &f.index, &f.time_index);
        let Some(first_entry) = index.get(0) else {
            return false;
        };
        let Some(last_entry) = index.last() else {
            return false;
        };
        if first_entry.position != 0 || first_entry.rel_offset != 0 {
            return false;
        }
        let Ok(first) = decode_at(&data, 0, file_len) else {
            return false;
        };
        if first.header.base_offset != self.base_offset
            || first.header.raft_index != first_entry.raft_index
        {
            return false;
        }
        let first_raft = Some((first.header.raft_term, first.header.raft_index));
        let first_timestamp = first.records.map(|r| r.base_timestamp);
        let mut pos = u64::from(last_entry.position);
        let Ok(at) = decode_at(&data, pos, file_len) else {
            return false;
        };
        if at.header.base_offset != self.base_offset + u64::from(last_entry.rel_offset)
            || at.header.raft_index != last_entry.raft_index
        {
            return false;
        }
        let mut prev: Option<(u64, u64)> = None;
        let mut next = at.header.base_offset;
        let mut last_data = None;
        while pos < file_len {
            let Ok(b) = decode_at(&data, pos, file_len) else {
                return false;
            };
            if b.verify_records(&data).is_err() || !continues(prev, next, &b) {
                return false;
            }
            prev = Some((b.header.raft_term, b.header.raft_index));
            next = b.header.next_offset();
            if b.header.kind.is_data() {
                last_data = Some(pos);
            }
            pos += u64::from(b.header.batch_len);
        }
        if pos != file_len {
            return false;
        }
        let Some(t) = time_index.last() else {
            return false;
        };
        if last_data.is_some_and(|p| u64::from(t.position) > p) {
            return false;
        }
        self.allocated = file_len;
        if !self.time_entry_checks(&t) {
            return false;
        }
        self.first_raft = first_raft;
        self.first_timestamp = first_timestamp;
        self.len = file_len;
        self.next_offset = next;
        self.last_raft = prev;
        self.max_timestamp = Some(t.max_timestamp);
        true
    }

    /// Scans from the last index entries at or below `trusted_len` (0: from the start),
    /// validating CRCs and continuity, rebuilding index entries after the start, truncating
    /// at the first bad batch and zeroing everything after it. Returns true if bytes were cut.
    fn recover_scan(&mut self, config: &LogConfig, trusted_len: u64, clean: bool) -> Result<bool> {
        let trusted_len = trusted_len.min(self.allocated);
        let f = self.files.get().ok_or_else(|| not_open(&self.log_path))?;
        let off_start = f
            .index
            .partition_point(|e| u64::from(e.position) <= trusted_len)
            .checked_sub(1)
            .and_then(|i| f.index.get(i))
            .filter(|e| self.entry_checks(e));
        let time_start = f
            .time_index
            .partition_point(|e| u64::from(e.position) <= trusted_len)
            .checked_sub(1)
            .and_then(|i| f.time_index.get(i))
            .filter(|e| self.time_entry_checks(e));
        let starts = match (off_start, time_start, f.index.get(0)) {
            (Some(o), Some(t), Some(first)) if first.position == 0 => Some((o, t)),
            _ => None,
        };
        let verify_below = if clean { trusted_len } else { 0 };
        let cut = match self.scan_and_rebuild(config, starts, verify_below)? {
            Some(cut) => cut,
            // The batch at a trusted start is bad: rebuild the whole segment.
            None => self.scan_and_rebuild(config, None, 0)?.unwrap_or(true),
        };
        // Drop stale index entries past the valid end, and make every byte after it zero, so
        // that a batch that was never durable cannot reappear behind later appends.
        let len = self.len;
        let f = fm(&mut self.files, &self.log_path)?;
        f.index.truncate_at_position(len)?;
        f.time_index.truncate_at_position(len)?;
        let file = f.file.clone();
        // After a clean close with no append since (the recovery point is deleted durably
        // before the first append after an open), the tail is already zero.
        let tail_is_zero = clean && self.len == trusted_len;
        if self.len < self.allocated && !tail_is_zero {
            fsutil::zero_range(&file, &self.log_path, self.len, self.allocated - self.len)?;
            fsutil::fdatasync(&file, &self.log_path)?;
        }
        Ok(cut)
    }

    /// One recovery scan from `starts` (offset-index and time-index entries to keep; `None`:
    /// from byte 0 with empty indexes). `Ok(None)` if the batch at a nonzero start is bad.
    /// Records CRCs are checked for batches ending after `verify_below` (bytes below it were
    /// synced at a clean close; bit rot there is caught when read).
    fn scan_and_rebuild(
        &mut self,
        config: &LogConfig,
        starts: Option<(IndexEntry, TimeEntry)>,
        verify_below: u64,
    ) -> Result<Option<bool>> {
        let limit = self.allocated;
        let (off_pos, time_pos) = match starts {
            Some((o, t)) => (Some(u64::from(o.position)), Some(u64::from(t.position))),
            None => (None, None),
        };
        let start = match (off_pos, time_pos) {
            (Some(o), Some(t)) => o.min(t),
            _ => 0,
        };
        let f = fm(&mut self.files, &self.log_path)?;
        let keep = off_pos.map_or(0, |o| {
            f.index.partition_point(|e| u64::from(e.position) <= o)
        });
        f.index.truncate(keep)?;
        let keep = time_pos.map_or(0, |t| {
            f.time_index.partition_point(|e| u64::from(e.position) <= t)
        });
        f.time_index.truncate(keep)?;
        let data = f.data.clone();
        self.last_index_pos = off_pos;
        self.last_time_pos = time_pos;
        self.max_timestamp = starts.map(|(_, t)| t.max_timestamp);
        self.first_raft = None;
        self.last_raft = None;
        self.first_timestamp = None;
        self.last_data_batch = None;
        self.next_offset = self.base_offset;
        if start > 0 {
            // The first batch of the segment lies behind a trusted entry.
            if let Ok(first) = decode_at(&data, 0, limit) {
                self.first_raft = Some((first.header.raft_term, first.header.raft_index));
                self.first_timestamp = first.records.map(|r| r.base_timestamp);
            }
        }
        let mut pos = start;
        let mut prev: Option<(u64, u64)> = None;
        let mut next: Option<u64> = None;
        let mut end = ScanEnd::Clean;
        while pos < limit {
            let checked = decode_at(&data, pos, limit).and_then(|b| {
                if pos + u64::from(b.header.batch_len) > verify_below {
                    b.verify_records(&data)?;
                }
                Ok(b)
            });
            let b = match checked {
                Ok(b) => b,
                Err(reason) => {
                    end = ScanEnd::Invalid {
                        position: pos,
                        reason,
                    };
                    break;
                }
            };
            let expected_next = next.unwrap_or(if pos == 0 {
                self.base_offset
            } else {
                b.header.base_offset
            });
            if !continues(prev, expected_next, &b) {
                end = ScanEnd::Invalid {
                    position: pos,
                    reason: DecodeError::Invalid("batch does not continue the log"),
                };
                break;
            }
            let index_it = off_pos.is_none_or(|o| pos > o);
            let time_it = time_pos.is_none_or(|t| pos > t);
            self.note_batch(config, pos, &b, index_it, time_it)?;
            prev = Some((b.header.raft_term, b.header.raft_index));
            next = Some(b.header.next_offset());
            pos += u64::from(b.header.batch_len);
        }
        if start > 0 && pos == start {
            return Ok(None);
        }
        self.len = pos;
        Ok(Some(match &end {
            ScanEnd::Invalid { position, reason } => {
                // All zeros is just the preallocated tail, not a loss.
                let from = (*position as usize).min(data.len());
                let to = data.len().min(from + BATCH_HEADER_LEN);
                let zeros = data[from..to].iter().all(|&b| b == 0);
                if !zeros {
                    tracing::warn!(segment = %self.log_path.display(), position, %reason, "truncating log at invalid batch");
                }
                !zeros
            }
            ScanEnd::Clean => false,
        }))
    }

    fn entry_checks(&self, e: &IndexEntry) -> bool {
        let Some(f) = self.files.get() else {
            return false;
        };
        decode_at(&f.data, u64::from(e.position), self.allocated).is_ok_and(|b| {
            b.header.base_offset == self.base_offset + u64::from(e.rel_offset)
                && b.header.raft_index == e.raft_index
        })
    }

    fn time_entry_checks(&self, e: &TimeEntry) -> bool {
        let Some(f) = self.files.get() else {
            return false;
        };
        decode_at(&f.data, u64::from(e.position), self.allocated).is_ok_and(|b| {
            b.header.base_offset == self.base_offset + u64::from(e.rel_offset)
                && b.records
                    .is_some_and(|r| r.max_timestamp <= e.max_timestamp)
        })
    }

    /// Updates metadata and indexes for a batch at `pos` (append and recovery).
    fn note_batch(
        &mut self,
        config: &LogConfig,
        pos: u64,
        b: &DecodedBatch,
        index_it: bool,
        time_it: bool,
    ) -> Result<()> {
        let h = &b.header;
        if self.first_raft.is_none() {
            self.first_raft = Some((h.raft_term, h.raft_index));
        }
        self.last_raft = Some((h.raft_term, h.raft_index));
        let rel = u32::try_from(h.base_offset - self.base_offset)
            .map_err(|_| StorageError::InvalidArgument("relative offset exceeds u32".into()))?;
        let pos32 = u32::try_from(pos)
            .map_err(|_| StorageError::InvalidArgument("position exceeds u32".into()))?;
        let interval = u64::from(config.index_interval_bytes);
        if index_it && self.last_index_pos.is_none_or(|p| pos >= p + interval) {
            fm(&mut self.files, &self.log_path)?
                .index
                .push(IndexEntry {
                    rel_offset: rel,
                    position: pos32,
                    raft_index: h.raft_index,
                })?;
            self.last_index_pos = Some(pos);
        }
        if let Some(rs) = b.records {
            self.next_offset = h.next_offset();
            if self.first_timestamp.is_none() {
                self.first_timestamp = Some(rs.base_timestamp);
            }
            self.last_data_batch = Some((rel, pos32));
            if time_it {
                let running = self
                    .max_timestamp
                    .map_or(rs.max_timestamp, |m| m.max(rs.max_timestamp));
                self.max_timestamp = Some(running);
                if self.last_time_pos.is_none_or(|p| pos >= p + interval) {
                    fm(&mut self.files, &self.log_path)?
                        .time_index
                        .push(TimeEntry {
                            max_timestamp: running,
                            rel_offset: rel,
                            position: pos32,
                        })?;
                    self.last_time_pos = Some(pos);
                }
            }
        } else {
            // A control batch carries the next offset as its base offset.
            self.next_offset = self.next_offset.max(h.base_offset);
        }
        Ok(())
    }

    /// Makes room for `n` more bytes at `len`, growing the preallocation and remapping if
    /// needed. Called under the state lock before a write.
    pub(crate) fn ensure_capacity(&mut self, config: &LogConfig, n: u64) -> Result<()> {
        let need = self.len + n;
        if need <= self.allocated {
            return Ok(());
        }
        let new_len = need.max(next_allocation(config, self.allocated));
        let f = fm(&mut self.files, &self.log_path)?;
        if config.preallocate {
            fsutil::preallocate(&f.file, &self.log_path, new_len)?;
        } else {
            f.file
                .set_len(new_len)
                .map_err(|e| StorageError::io("extending segment", &self.log_path, e))?;
        }
        f.data = map_bytes(&f.file, &self.log_path)?;
        self.allocated = new_len;
        Ok(())
    }

    /// Builds the header for appending `body` as `meta` at the current tail, after validating
    /// the body. Returns the header and the decoded record-set header (data only).
    pub(crate) fn prepare(
        meta: BatchMeta,
        base_offset: u64,
        body: &[u8],
        verify: bool,
    ) -> Result<([u8; BATCH_HEADER_LEN], Option<RecordSetHeader>)> {
        if let BatchKind::Control(c) = meta.kind {
            if c < 3 {
                return Err(StorageError::InvalidArgument(format!(
                    "control kind code {c} is reserved"
                )));
            }
        }
        let rs = if meta.kind.is_data() {
            // A record set without records is accepted: it is a batch compaction emptied,
            // replicated by raft to a follower (it still spans its offsets; see
            // `crate::compaction`). `RecordBatchBuilder` never builds one.
            let rs = RecordSetHeader::parse(body).map_err(StorageError::InvalidBatch)?;
            if verify {
                let set = crate::record_set::RecordSet::parse(Bytes::copy_from_slice(body))
                    .map_err(StorageError::InvalidBatch)?;
                set.verify().map_err(StorageError::InvalidBatch)?;
            }
            Some(rs)
        } else {
            None
        };
        let total = (BATCH_HEADER_LEN + body.len()) as u64;
        if total > crate::batch::MAX_BATCH_LEN {
            return Err(StorageError::InvalidBatch(DecodeError::BadLength(total)));
        }
        let span = rs.map_or(0, |r| r.offset_span());
        Ok((encode_header(meta, base_offset, span, body), rs))
    }

    /// Publishes a batch that was written at `len` (under the state lock).
    pub(crate) fn publish(
        &mut self,
        config: &LogConfig,
        header: &[u8; BATCH_HEADER_LEN],
        rs: Option<RecordSetHeader>,
        body_len: usize,
    ) -> Result<()> {
        let pos = self.len;
        let h = crate::batch::BatchHeader {
            batch_len: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            crc: 0,
            kind: BatchKind::from_code(header[9]),
            flags: 0,
            offset_span: u32::from_le_bytes([header[12], header[13], header[14], header[15]]),
            base_offset: u64::from_le_bytes(arr8(&header[16..24])),
            raft_term: u64::from_le_bytes(arr8(&header[24..32])),
            raft_index: u64::from_le_bytes(arr8(&header[32..40])),
        };
        let d = DecodedBatch {
            header: h,
            body: (pos as usize + BATCH_HEADER_LEN)..(pos as usize + BATCH_HEADER_LEN + body_len),
            records: rs,
        };
        self.note_batch(config, pos, &d, true, true)?;
        self.len = pos + (BATCH_HEADER_LEN + body_len) as u64;
        Ok(())
    }

    /// Seals the segment: final time-index entry, shrink the `.log` to `len`, map it at its
    /// exact size. Nothing is synced here (a roll must not stall appends on a 256 MiB sync):
    /// the returned handles (log, index, time index) are synced by the next `Log::sync`.
    pub(crate) fn seal(&mut self) -> Result<Vec<(File, PathBuf)>> {
        if let (Some(max), Some((rel, pos))) = (self.max_timestamp, self.last_data_batch) {
            // The last entry must carry the segment's maximum; if the maximum grew after it,
            // there are data batches after it, so the new entry's position is larger.
            let f = fm(&mut self.files, &self.log_path)?;
            if f.time_index.last().is_none_or(|t| t.max_timestamp < max) {
                f.time_index.push(TimeEntry {
                    max_timestamp: max,
                    rel_offset: rel,
                    position: pos,
                })?;
            }
        }
        self.seal_files(false)?;
        let f = fm(&mut self.files, &self.log_path)?;
        let log = f
            .file
            .try_clone()
            .map_err(|e| StorageError::io("duplicating handle of", &self.log_path, e))?;
        Ok(vec![
            (log, self.log_path.clone()),
            f.index.dup()?,
            f.time_index.dup()?,
        ])
    }

    fn seal_after_recovery(&mut self) -> Result<()> {
        self.seal_files(true)
    }

    /// Shrinks the `.log` to `len`, maps everything read-only; syncs when `sync`.
    fn seal_files(&mut self, sync: bool) -> Result<()> {
        let len = self.len;
        let f = fm(&mut self.files, &self.log_path)?;
        powerloss::truncated(&self.log_path, len);
        f.file
            .set_len(len)
            .map_err(|e| StorageError::io("shrinking segment", &self.log_path, e))?;
        if sync {
            fsutil::fdatasync(&f.file, &self.log_path)?;
        }
        f.index.seal(sync)?;
        f.time_index.seal(sync)?;
        f.data = map_bytes(&f.file, &self.log_path)?;
        self.allocated = len;
        self.sealed = true;
        Ok(())
    }

    /// Makes a sealed segment active again (raft truncation reached into it).
    pub(crate) fn reactivate(&mut self, config: &LogConfig) -> Result<()> {
        self.open_files()?;
        let f = fm(&mut self.files, &self.log_path)?;
        f.index.make_owned();
        f.time_index.make_owned();
        let target = first_allocation(config).max(self.len);
        if config.preallocate && self.allocated < target {
            fsutil::preallocate(&f.file, &self.log_path, target)?;
            self.allocated = target;
        }
        f.data = map_bytes(&f.file, &self.log_path)?;
        if self.first_timestamp.is_none() {
            self.first_timestamp = decode_at(&f.data, 0, self.len)
                .ok()
                .and_then(|b| b.records.map(|r| r.base_timestamp));
        }
        self.sealed = false;
        // Interval bookkeeping restarts from the last entries.
        self.last_index_pos = f.index.last().map(|e| u64::from(e.position));
        self.last_time_pos = f.time_index.last().map(|e| u64::from(e.position));
        Ok(())
    }

    /// Zeroes every byte after `len` durably (after a failed write left bytes there).
    pub(crate) fn zero_tail(&self) -> Result<()> {
        let f = self.open_files()?;
        fsutil::zero_range(
            &f.file,
            &self.log_path,
            self.len,
            self.allocated.saturating_sub(self.len),
        )?;
        fsutil::fdatasync(&f.file, &self.log_path)
    }

    /// Cuts the segment at `pos` (a batch boundary), zeroing the rest durably and
    /// recomputing the tail metadata by scanning from the last index entry before `pos`.
    pub(crate) fn truncate_to(&mut self, config: &LogConfig, pos: u64) -> Result<()> {
        if self.sealed {
            self.reactivate(config)?;
        }
        let allocated = self.allocated;
        let f = fm(&mut self.files, &self.log_path)?;
        fsutil::zero_range(&f.file, &self.log_path, pos, allocated.saturating_sub(pos))?;
        fsutil::fdatasync(&f.file, &self.log_path)?;
        f.index.truncate_at_position(pos)?;
        f.time_index.truncate_at_position(pos)?;
        self.verified = Verified::new();
        self.len = pos;
        // Recompute the tail from the last remaining entries (bounded scan).
        let _ = self.recover_scan(config, pos, false)?;
        Ok(())
    }

    /// The open files, opening them on first use (a sealed segment restored from a clean
    /// shutdown's summary). The file must have exactly the length the summary recorded.
    pub(crate) fn open_files(&self) -> Result<&Files> {
        if let Some(f) = self.files.get() {
            return Ok(f);
        }
        let (log_path, index_path, time_path) = paths(&self.dir, self.base_offset);
        let file = Self::open_log(&log_path, false)?;
        let file_len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", &log_path, e))?
            .len();
        if file_len != self.len {
            return Err(StorageError::corrupt(
                &log_path,
                file_len,
                DecodeError::Invalid("segment length differs from the shutdown summary"),
            ));
        }
        let files = Files {
            data: map_bytes(&file, &log_path)?,
            file: Arc::new(file),
            index: EntryFile::open_mapped(&index_path)?,
            time_index: EntryFile::open_mapped(&time_path)?,
        };
        // Another reader may have won the race: either value is equivalent.
        let _ = self.files.set(files);
        self.files.get().ok_or_else(|| not_open(&self.log_path))
    }

    /// A sealed segment known from the clean-shutdown summary; files open on first use.
    pub(crate) fn lazy(dir: &Path, m: SealedMeta) -> Segment {
        let (log_path, _, _) = paths(dir, m.base_offset);
        Segment {
            base_offset: m.base_offset,
            log_path,
            dir: dir.to_path_buf(),
            files: OnceLock::new(),
            verified: Verified::new(),
            len: m.len,
            allocated: m.len,
            next_offset: m.next_offset,
            first_raft: m.first_raft,
            last_raft: m.last_raft,
            max_timestamp: m.max_timestamp,
            first_timestamp: None,
            last_index_pos: None,
            last_time_pos: None,
            last_data_batch: None,
            sealed: true,
        }
    }

    /// The summary entry of a sealed segment.
    pub(crate) fn sealed_meta(&self) -> SealedMeta {
        SealedMeta {
            base_offset: self.base_offset,
            len: self.len,
            next_offset: self.next_offset,
            first_raft: self.first_raft,
            last_raft: self.last_raft,
            max_timestamp: self.max_timestamp,
        }
    }

    /// The `.log` handle (for `pwritev` and `fdatasync`).
    pub(crate) fn file(&self) -> Result<Arc<File>> {
        Ok(self.open_files()?.file.clone())
    }

    /// Writes index entries still in memory to the index files (page cache).
    pub(crate) fn flush_indexes(&mut self) -> Result<()> {
        self.open_files()?;
        let f = fm(&mut self.files, &self.log_path)?;
        f.index.flush()?;
        f.time_index.flush()
    }

    /// Flushes and syncs the index files (clean close).
    pub(crate) fn sync_indexes(&mut self) -> Result<()> {
        self.open_files()?;
        let f = fm(&mut self.files, &self.log_path)?;
        f.index.sync()?;
        f.time_index.sync()
    }

    /// Where to start scanning for offset `offset` (index floor; 0 without entry).
    pub(crate) fn offset_start(&self, offset: u64) -> Result<u64> {
        let rel = offset.saturating_sub(self.base_offset);
        Ok(self
            .open_files()?
            .index
            .floor_offset(rel)
            .map_or(0, |e| u64::from(e.position)))
    }

    /// Where to start scanning for raft index `index`.
    pub(crate) fn raft_start(&self, index: u64) -> Result<u64> {
        Ok(self
            .open_files()?
            .index
            .floor_raft(index)
            .map_or(0, |e| u64::from(e.position)))
    }

    /// Where to start scanning for the first record with timestamp ≥ `t` (the batch after
    /// the last time-index entry below `t`).
    pub(crate) fn time_start(&self, t: i64) -> Result<u64> {
        let f = self.open_files()?;
        Ok(match f.time_index.last_below(t) {
            Some(e) => {
                let p = u64::from(e.position);
                match decode_at(&f.data, p, self.len) {
                    Ok(b) => p + u64::from(b.header.batch_len),
                    Err(_) => 0,
                }
            }
            None => 0,
        })
    }

    /// A lock-free view for readers.
    pub(crate) fn view(&self) -> Result<SegView> {
        Ok(SegView {
            base_offset: self.base_offset,
            data: self.open_files()?.data.clone(),
            len: self.len,
            path: self.log_path.clone(),
            verified: self.verified.clone(),
        })
    }

    /// Deletes the three files (the caller fsyncs the directory).
    pub(crate) fn delete_files(&self) -> Result<()> {
        let (log_path, index_path, time_path) = paths(&self.dir, self.base_offset);
        for p in [log_path, index_path, time_path] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("deleting", &p, e)),
            }
        }
        Ok(())
    }

    /// Offsets spanned by the segment.
    pub(crate) fn offset_count(&self) -> u64 {
        self.next_offset - self.base_offset
    }
}

/// What a reader needs of a segment, taken under the state lock and used without it: the
/// map (as `Bytes`) and the valid length at that moment.
#[derive(Debug, Clone)]
pub(crate) struct SegView {
    /// Base offset.
    pub base_offset: u64,
    /// The map.
    pub data: Bytes,
    /// Valid bytes when the view was taken.
    pub len: u64,
    /// The `.log` path (for errors).
    pub path: PathBuf,
    /// The segment's verified-batch cache.
    verified: Arc<Verified>,
}

impl SegView {
    /// Walks batches from `start` (below `len`) and returns the first for which `pred` holds.
    pub(crate) fn scan_from(
        &self,
        start: u64,
        mut pred: impl FnMut(&DecodedBatch) -> bool,
    ) -> Result<Option<Located>> {
        let mut pos = start;
        while pos < self.len {
            let b = decode_at(&self.data, pos, self.len)
                .map_err(|e| StorageError::corrupt(&self.path, pos, e))?;
            if pred(&b) {
                return Ok(Some(Located {
                    position: pos,
                    batch: b,
                }));
            }
            pos += u64::from(b.header.batch_len);
        }
        Ok(None)
    }

    /// The batch at `pos` (a batch boundary below `len`).
    pub(crate) fn batch_at(&self, pos: u64) -> Result<Located> {
        let b = decode_at(&self.data, pos, self.len)
            .map_err(|e| StorageError::corrupt(&self.path, pos, e))?;
        Ok(Located {
            position: pos,
            batch: b,
        })
    }

    /// Zero-copy body of a located batch.
    pub(crate) fn body(&self, l: &Located) -> Bytes {
        self.data.slice(l.batch.body.clone())
    }

    /// Checks the records CRC of a located batch (once per batch while the segment is open).
    pub(crate) fn verify(&self, l: &Located) -> Result<()> {
        if self.verified.contains(l.position) {
            return Ok(());
        }
        l.batch
            .verify_records(&self.data)
            .map_err(|e| StorageError::corrupt(&self.path, l.position, e))?;
        self.verified.insert(l.position);
        Ok(())
    }

    /// Scans from `start` for the first batch satisfying `pred`; if the index sent us past the
    /// target (`overshot` holds for the found batch), rescans from 0 — a corrupt index entry
    /// degrades speed, never correctness.
    pub(crate) fn find(
        &self,
        start: u64,
        pred: impl Fn(&DecodedBatch) -> bool,
        overshot: impl Fn(&DecodedBatch) -> bool,
    ) -> Result<Option<Located>> {
        let found = self.scan_from(start, &pred);
        match found {
            Ok(Some(l)) if start > 0 && overshot(&l.batch) => {
                tracing::warn!(segment = %self.path.display(), "index entry past target; scanning segment");
                self.scan_from(0, &pred)
            }
            Err(e) if start > 0 => {
                tracing::warn!(segment = %self.path.display(), error = %e, "index entry invalid; scanning segment");
                self.scan_from(0, &pred)
            }
            other => other,
        }
    }
}

fn arr8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

/// True if `b` may follow a batch `(term, index)` whose tail offset is `next`.
pub(crate) fn continues(prev: Option<(u64, u64)>, next: u64, b: &DecodedBatch) -> bool {
    if b.header.base_offset != next {
        return false;
    }
    match prev {
        Some((term, index)) => {
            index.checked_add(1) == Some(b.header.raft_index) && b.header.raft_term >= term
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_set::encode_records;
    use crate::Record;

    fn meta(i: u64) -> BatchMeta {
        BatchMeta {
            kind: BatchKind::Data,
            raft_term: 1,
            raft_index: i,
        }
    }

    #[test]
    fn decode_at_respects_limits_and_continuity() -> Result<()> {
        let body = encode_records(&[Record {
            timestamp: 5,
            value: Bytes::from_static(b"v"),
            ..Record::default()
        }])?;
        let (h, _) = Segment::prepare(meta(7), 100, &body, true)?;
        let mut buf = h.to_vec();
        buf.extend_from_slice(&body);
        let len = buf.len() as u64;
        buf.extend_from_slice(&[0u8; 64]);
        let b = decode_at(&buf, 0, len).map_err(StorageError::InvalidBatch)?;
        assert_eq!(b.header.next_offset(), 101);
        assert!(decode_at(&buf, 0, len - 1).is_err(), "limit cuts the batch");
        assert!(
            decode_at(&buf, len, buf.len() as u64).is_err(),
            "zeros are no batch"
        );
        assert!(decode_at(&buf, 10 * len, 20 * len).is_err(), "past the end");
        assert!(continues(Some((1, 6)), 100, &b));
        assert!(!continues(Some((1, 5)), 100, &b), "gap in raft index");
        assert!(!continues(Some((2, 6)), 100, &b), "term went down");
        assert!(!continues(Some((1, 6)), 99, &b), "offset gap");
        Ok(())
    }

    #[test]
    fn reserved_control_codes_and_bodiless_data_are_rejected() -> Result<()> {
        let m = BatchMeta {
            kind: BatchKind::Control(2),
            raft_term: 1,
            raft_index: 1,
        };
        assert!(Segment::prepare(m, 0, b"", false).is_err());
        assert!(Segment::prepare(meta(1), 0, &[0u8; 31], false).is_err());
        // A record set compaction emptied (no records, still spanning its offsets) is a valid
        // replicated entry.
        let mut emptied = [0u8; 32];
        emptied[8..12].copy_from_slice(&2u32.to_le_bytes());
        let (_, rs) = Segment::prepare(meta(1), 0, &emptied, true)?;
        assert_eq!(rs.map(|r| (r.record_count, r.offset_span())), Some((0, 3)));
        Ok(())
    }

    #[test]
    fn create_append_seal_and_lazy_reopen() -> Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::io("tempdir", Path::new("/tmp"), e))?;
        let config = LogConfig {
            segment_max_bytes: 1 << 16,
            index_interval_bytes: 64,
            ..LogConfig::default()
        };
        let mut seg = Segment::create(dir.path(), 0, &config)?;
        for i in 0..50u64 {
            let body = encode_records(&[Record {
                timestamp: i as i64,
                value: Bytes::from(vec![1u8; 20]),
                ..Record::default()
            }])?;
            let (h, rs) = Segment::prepare(meta(i + 1), i, &body, false)?;
            let f = seg.file()?;
            fsutil::pwritev_all(&f, &seg.log_path, seg.len, &[&h, &body])?;
            seg.publish(&config, &h, rs, body.len())?;
        }
        assert_eq!((seg.next_offset, seg.last_raft), (50, Some((1, 50))));
        seg.seal()?;
        let m = seg.sealed_meta();
        drop(seg);
        let lazy = Segment::lazy(dir.path(), m);
        let v = lazy.view()?;
        let l = v
            .find(
                lazy.offset_start(33)?,
                |b| b.header.next_offset() > 33,
                |b| b.header.base_offset > 33,
            )?
            .ok_or_else(|| StorageError::InvalidArgument("offset 33 not found".into()))?;
        assert_eq!(l.batch.header.base_offset, 33);
        let t = v
            .scan_from(lazy.time_start(40)?, |b| {
                b.records.is_some_and(|r| r.max_timestamp >= 40)
            })?
            .ok_or_else(|| StorageError::InvalidArgument("timestamp 40 not found".into()))?;
        assert_eq!(t.batch.header.base_offset, 40);
        // A summary that lies about the length is reported, not trusted.
        let liar = Segment::lazy(
            dir.path(),
            SealedMeta {
                len: m.len + 1,
                ..m
            },
        );
        assert!(matches!(liar.view(), Err(StorageError::Corrupt { .. })));
        Ok(())
    }
}
