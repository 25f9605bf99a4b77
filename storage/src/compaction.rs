//! Compaction by key: rewrite sealed segments keeping only the newest record per key.
//!
//! Rules:
//! 1. Only sealed segments whose batches all have raft index ≤ `max_raft_index` and whose
//!    offsets are all at or below the high watermark are rewritten. The raft layer passes its
//!    applied index: those entries are committed, so raft never truncates or rewrites them.
//!    Raft may still read a compacted entry to replicate it to a lagging follower; that is
//!    sound because a compacted batch is still a valid entry — same raft term and index, same
//!    base offset and offset span, fewer records, records CRC recomputed — and the follower
//!    stores exactly what it would hold after compacting itself (`Log::append` accepts a
//!    record set with fewer records than its span, even none). Replicas compact
//!    independently; compare them with [`crate::ChecksumMode::LatestPerKey`].
//! 2. "Newest" is decided over every committed record of the log (later segments and the
//!    active one included). Records without a key are always kept.
//! 3. Offsets never move: each batch keeps its header (base offset, span, raft term and
//!    index, kind); only its records shrink. A batch that loses every record stays as an
//!    empty batch, so raft-index lookups and offset continuity still hold.
//! 4. Crash safety: the new `.log`, `.index` and `.timeindex` are written as `*.compacting`,
//!    synced, renamed over the old files (time index, index, then log) and the directory is
//!    synced. A crash before the renames leaves leftovers that recovery deletes; a crash
//!    between renames leaves an index that does not match its log, which recovery detects
//!    and rebuilds.
//! 5. Readers holding `Bytes` of the old file keep a valid mapping of the old inode.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::batch::encode_header;
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::index::{Entry, IndexEntry};
use crate::log::{record_set, Log};
use crate::record::record_key;
use crate::record_set::{RecordSetHeader, RECORD_SET_HEADER_LEN};
use crate::segment::{paths, SegView, Segment};
use crate::time_index::TimeEntry;

/// What [`Log::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionOutcome {
    /// Segments rewritten.
    pub segments_rewritten: usize,
    /// Records removed.
    pub records_removed: u64,
    /// `.log` bytes of the rewritten segments before.
    pub bytes_before: u64,
    /// … and after.
    pub bytes_after: u64,
}

impl Log {
    /// Compacts eligible sealed segments (see the module rules). Appends and reads continue
    /// meanwhile; retention, purge and truncation wait.
    pub fn compact(&self, max_raft_index: u64) -> Result<CompactionOutcome> {
        let _m = self.shared.maintenance.lock();
        let end = self.committed_end();
        let (views, candidates) = {
            let st = self.shared.state.read();
            let views: Vec<SegView> = st
                .segments
                .iter()
                .map(Segment::view)
                .collect::<Result<_>>()?;
            let candidates: Vec<usize> = st
                .segments
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.sealed
                        && s.next_offset <= end
                        && s.last_raft.is_some_and(|(_, i)| i <= max_raft_index)
                })
                .map(|(i, _)| i)
                .collect();
            (views, candidates)
        };
        let mut out = CompactionOutcome::default();
        let Some(&first) = candidates.first() else {
            return Ok(out);
        };
        // Newest committed offset of every key, from the first candidate on.
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        for view in &views[first..] {
            for_each_record_key(view, end, |key, off| {
                latest.insert(key.to_vec(), off);
            })?;
        }
        let config = &self.shared.config;
        // Rewritten segments change length: the shutdown summary must not vouch for them.
        self.retire_point()?;
        for ci in candidates {
            let view = &views[ci];
            let Some((removed, new_len)) = rewrite(&self.shared.dir, view, &latest, config)? else {
                continue;
            };
            let (seg, _) =
                Segment::open(&self.shared.dir, view.base_offset, config, true, 0, false)?;
            let mut st = self.shared.state.write();
            if let Some(slot) = st
                .segments
                .iter_mut()
                .find(|s| s.base_offset == view.base_offset && s.sealed)
            {
                *slot = seg;
            }
            st.refresh();
            out.segments_rewritten += 1;
            out.records_removed += removed;
            out.bytes_before += view.len;
            out.bytes_after += new_len;
        }
        Ok(out)
    }
}

/// Calls `f(key, offset)` for every keyed record below `end` in `view`, in offset order.
fn for_each_record_key(view: &SegView, end: u64, mut f: impl FnMut(&[u8], u64)) -> Result<()> {
    let mut pos = 0;
    while pos < view.len {
        let l = view.batch_at(pos)?;
        let h = l.batch.header;
        if h.kind.is_data() && h.base_offset < end {
            view.verify(&l)?;
            let set = record_set(view, &l)?;
            let region = set.region();
            for fr in set.frames() {
                let (frame, _) =
                    fr.map_err(|e| StorageError::corrupt(&view.path, l.position, e))?;
                let off = h.base_offset.saturating_add(u64::from(frame.offset_delta));
                if off >= end {
                    break;
                }
                if let Some(k) = record_key(&region, frame)
                    .map_err(|e| StorageError::corrupt(&view.path, l.position, e))?
                {
                    f(k, off);
                }
            }
        }
        pos = l.end();
    }
    Ok(())
}

fn tmp(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".compacting");
    PathBuf::from(s)
}

struct Out {
    path: PathBuf,
    w: BufWriter<File>,
}

impl Out {
    fn create(path: PathBuf) -> Result<Out> {
        let f = File::create(&path).map_err(|e| StorageError::io("creating", &path, e))?;
        crate::powerloss::created(&path);
        Ok(Out {
            path,
            w: BufWriter::with_capacity(1 << 20, f),
        })
    }
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(|e| StorageError::io("writing", &self.path, e))
    }
    fn finish(self) -> Result<PathBuf> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| StorageError::io("writing", &self.path, e.into_error()))?;
        fsutil::fdatasync(&f, &self.path)?;
        Ok(self.path)
    }
}

/// Rewrites one segment. `None` when nothing would be removed.
///
/// A failure before the renames (a full disk, typically) removes the `*.compacting` files it
/// wrote, best effort, so they do not hold on to space until the next recovery; the segment
/// is left as it was.
fn rewrite(
    dir: &Path,
    view: &SegView,
    latest: &HashMap<Vec<u8>, u64>,
    config: &LogConfig,
) -> Result<Option<(u64, u64)>> {
    let (log_p, idx_p, time_p) = paths(dir, view.base_offset);
    let written = match write_rewritten(dir, view, latest, config) {
        Ok(w) => w,
        Err(e) => {
            for p in [tmp(&log_p), tmp(&idx_p), tmp(&time_p)] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(rm) if rm.kind() == std::io::ErrorKind::NotFound => {}
                    Err(rm) => tracing::warn!(path = %p.display(), error = %rm,
                        "removing a failed compaction's file"),
                }
            }
            return Err(e);
        }
    };
    let Some((removed, pos, [log_tmp, idx_tmp, time_tmp])) = written else {
        return Ok(None);
    };
    for (from, to) in [(&time_tmp, &time_p), (&idx_tmp, &idx_p), (&log_tmp, &log_p)] {
        std::fs::rename(from, to).map_err(|e| StorageError::io("renaming", to, e))?;
        crate::powerloss::renamed(from, to);
    }
    fsutil::fsync_dir(dir)?;
    Ok(Some((removed, pos)))
}

/// Writes and syncs the `*.compacting` files of one segment's rewrite; `None` when nothing
/// would be removed. Returns the records removed, the new length and the files (log, index,
/// time index).
#[allow(clippy::type_complexity)]
fn write_rewritten(
    dir: &Path,
    view: &SegView,
    latest: &HashMap<Vec<u8>, u64>,
    config: &LogConfig,
) -> Result<Option<(u64, u64, [PathBuf; 3])>> {
    // First pass: does anything go?
    let mut doomed = 0u64;
    for_each_record_key(view, u64::MAX, |k, off| {
        if latest.get(k).is_some_and(|&l| l != off) {
            doomed += 1;
        }
    })?;
    if doomed == 0 {
        return Ok(None);
    }
    let (log_p, idx_p, time_p) = paths(dir, view.base_offset);
    let mut log = Out::create(tmp(&log_p))?;
    let mut idx = Out::create(tmp(&idx_p))?;
    let mut tix = Out::create(tmp(&time_p))?;
    let interval = u64::from(config.index_interval_bytes);
    let (mut pos, mut last_idx, mut last_time) = (0u64, None::<u64>, None::<u64>);
    let mut running: Option<i64> = None;
    let mut last_data: Option<(u32, u32)> = None;
    let mut last_time_max: Option<i64> = None;
    let mut removed = 0u64;
    let mut src = 0u64;
    let mut buf = [0u8; 16];
    while src < view.len {
        let l = view.batch_at(src)?;
        let h = l.batch.header;
        let raw = &view.data[l.position as usize..l.end() as usize];
        let rel = u32::try_from(h.base_offset - view.base_offset)
            .map_err(|_| StorageError::InvalidArgument("relative offset exceeds u32".into()))?;
        let pos32 = u32::try_from(pos)
            .map_err(|_| StorageError::InvalidArgument("position exceeds u32".into()))?;
        let written: u64 = match l.batch.records {
            None => {
                log.put(raw)?;
                raw.len() as u64
            }
            Some(rs) => {
                view.verify(&l)?;
                let set = record_set(view, &l)?;
                let region = set.region();
                let mut kept: Vec<u8> = Vec::with_capacity(region.len());
                let mut count = 0u32;
                let mut start = 0usize;
                for fr in set.frames() {
                    let (frame, end) =
                        fr.map_err(|e| StorageError::corrupt(&view.path, l.position, e))?;
                    let off = h.base_offset.saturating_add(u64::from(frame.offset_delta));
                    let key = record_key(&region, frame)
                        .map_err(|e| StorageError::corrupt(&view.path, l.position, e))?;
                    if key
                        .is_some_and(|k| latest.get(k).is_some_and(|&latest_off| latest_off != off))
                    {
                        removed += 1;
                    } else {
                        kept.extend_from_slice(&region[start..end]);
                        count += 1;
                    }
                    start = end;
                }
                let new_rs = RecordSetHeader {
                    records_crc: crc32c::crc32c(&kept),
                    record_count: count,
                    ..rs
                };
                let mut body = vec![0u8; RECORD_SET_HEADER_LEN];
                new_rs.write(&mut body);
                body.extend_from_slice(&kept);
                let header = encode_header(h.meta(), h.base_offset, h.offset_span, &body);
                log.put(&header)?;
                log.put(&body)?;
                let m = running.map_or(rs.max_timestamp, |r| r.max(rs.max_timestamp));
                running = Some(m);
                last_data = Some((rel, pos32));
                if last_time.is_none_or(|p| pos >= p + interval) {
                    TimeEntry {
                        max_timestamp: m,
                        rel_offset: rel,
                        position: pos32,
                    }
                    .encode(&mut buf);
                    tix.put(&buf)?;
                    last_time = Some(pos);
                    last_time_max = Some(m);
                }
                (header.len() + body.len()) as u64
            }
        };
        if last_idx.is_none_or(|p| pos >= p + interval) {
            IndexEntry {
                rel_offset: rel,
                position: pos32,
                raft_index: h.raft_index,
            }
            .encode(&mut buf);
            idx.put(&buf)?;
            last_idx = Some(pos);
        }
        pos += written;
        src = l.end();
    }
    if let (Some(m), Some((rel, p))) = (running, last_data) {
        if last_time_max.is_none_or(|t| t < m) {
            TimeEntry {
                max_timestamp: m,
                rel_offset: rel,
                position: p,
            }
            .encode(&mut buf);
            tix.put(&buf)?;
        }
    }
    let log_tmp = log.finish()?;
    let idx_tmp = idx.finish()?;
    let time_tmp = tix.finish()?;
    Ok(Some((removed, pos, [log_tmp, idx_tmp, time_tmp])))
}
