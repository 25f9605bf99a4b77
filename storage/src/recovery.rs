//! Opening a partition directory: find the segments, check them, repair the tail.
//!
//! Rules (in order):
//! 1. Files named `<20 digits>.log` are segments; `.index`/`.timeindex` without a `.log`, and
//!    leftovers of an interrupted compaction (`*.compacting`) or recovery-point write
//!    (`*.tmp`), are deleted.
//! 2. Every segment but the last is *sealed*: it was synced when it was rolled, so it is
//!    trusted after a cheap check (first batch, last index entry, the batches after it up to
//!    the end of the file, last time-index entry). A sealed segment that fails it is rescanned
//!    in full and truncated at its first bad batch.
//! 3. The last segment is *active*: it is scanned from the last index entries at or below the
//!    recovery point (`recovery.point`, written on clean close: "bytes below this position of
//!    this segment are durable and indexed, and every byte after it is zero"); without one,
//!    from byte 0. The scan stops at the first torn batch, bad CRC or break in continuity;
//!    everything after is zeroed (skipped when the recovery point vouches for it). The point
//!    is deleted durably before the first append after an open, so it never vouches for a
//!    tail that a later, crashed session wrote.
//!    Restart cost is therefore bounded by one segment, never by the size of the log.
//! 4. Segments must continue each other: a segment's name equals the previous segment's next
//!    offset, and its first raft index is the previous last raft index + 1 with a term that
//!    does not decrease. The first segment that does not is deleted with every later one.
//! 5. A missing or unusable index is rebuilt from the log during the scan.
//! 6. An empty directory gets one empty segment at `LogConfig::initial_offset`.
//! 7. After a clean close, `recovery.point` also lists every sealed segment's metadata; when it
//!    names exactly the segments on disk, sealed segments are restored from it and their files
//!    opened on first use (a file whose length differs then is `StorageError::Corrupt`), so
//!    open costs O(1) per sealed segment beyond listing the directory.
//!
//! Nothing here panics on bad bytes: every problem is a truncation (logged with `tracing`) or
//! a typed error for I/O failures.

use std::path::Path;

use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::segment::{SealedMeta, Segment};

/// File name of the recovery point.
pub(crate) const RECOVERY_POINT: &str = "recovery.point";
const POINT_MAGIC: u32 = 0x4442_5250; // "DBRP"

/// Parses a segment file stem.
pub(crate) fn parse_stem(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The clean-shutdown record: the active segment's durable, indexed, zero-tailed length, and
/// the metadata of every sealed segment (so they can be opened lazily).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Point {
    /// Active segment base offset.
    pub base: u64,
    /// Bytes of the active segment that are durable and indexed; zeros after.
    pub len: u64,
    /// Sealed segments, oldest first.
    pub sealed: Vec<SealedMeta>,
}

const POINT_VERSION: u32 = 2;
const ENTRY_LEN: usize = 4 + 8 * 8;

fn put_opt_pair(out: &mut Vec<u8>, v: Option<(u64, u64)>) {
    let (a, b) = v.unwrap_or((0, 0));
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
}

/// Reads `recovery.point`; `None` if missing or not valid.
pub(crate) fn read_point(dir: &Path) -> Option<Point> {
    let raw = std::fs::read(dir.join(RECOVERY_POINT)).ok()?;
    if raw.len() < 32 {
        return None;
    }
    let word = |a: usize| u32::from_le_bytes([raw[a], raw[a + 1], raw[a + 2], raw[a + 3]]);
    let dword = |a: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[a..a + 8]);
        u64::from_le_bytes(b)
    };
    let n = word(24) as usize;
    if word(0) != POINT_MAGIC
        || word(4) != POINT_VERSION
        || raw.len() != 28 + n.checked_mul(ENTRY_LEN)? + 4
    {
        return None;
    }
    let body = raw.len() - 4;
    if crc32c::crc32c(&raw[..body]) != word(body) {
        return None;
    }
    let sealed = (0..n)
        .map(|i| {
            let at = 28 + i * ENTRY_LEN;
            let flags = word(at);
            let v = |k: usize| dword(at + 4 + 8 * k);
            SealedMeta {
                base_offset: v(0),
                len: v(1),
                next_offset: v(2),
                first_raft: (flags & 1 != 0).then(|| (v(3), v(4))),
                last_raft: (flags & 2 != 0).then(|| (v(5), v(6))),
                max_timestamp: (flags & 4 != 0).then(|| v(7) as i64),
            }
        })
        .collect();
    Some(Point {
        base: dword(8),
        len: dword(16),
        sealed,
    })
}

/// Writes `recovery.point` atomically (tmp, fsync, rename, fsync dir).
pub(crate) fn write_point(dir: &Path, point: &Point) -> Result<()> {
    let mut raw = Vec::with_capacity(32 + point.sealed.len() * ENTRY_LEN);
    raw.extend_from_slice(&POINT_MAGIC.to_le_bytes());
    raw.extend_from_slice(&POINT_VERSION.to_le_bytes());
    raw.extend_from_slice(&point.base.to_le_bytes());
    raw.extend_from_slice(&point.len.to_le_bytes());
    let n = u32::try_from(point.sealed.len())
        .map_err(|_| StorageError::InvalidArgument("too many segments".into()))?;
    raw.extend_from_slice(&n.to_le_bytes());
    for m in &point.sealed {
        let flags = u32::from(m.first_raft.is_some())
            | u32::from(m.last_raft.is_some()) << 1
            | u32::from(m.max_timestamp.is_some()) << 2;
        raw.extend_from_slice(&flags.to_le_bytes());
        raw.extend_from_slice(&m.base_offset.to_le_bytes());
        raw.extend_from_slice(&m.len.to_le_bytes());
        raw.extend_from_slice(&m.next_offset.to_le_bytes());
        put_opt_pair(&mut raw, m.first_raft);
        put_opt_pair(&mut raw, m.last_raft);
        raw.extend_from_slice(&m.max_timestamp.unwrap_or(0).to_le_bytes());
    }
    let crc = crc32c::crc32c(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{RECOVERY_POINT}.tmp"));
    let dst = dir.join(RECOVERY_POINT);
    let replaced = (|| {
        std::fs::write(&tmp, &raw).map_err(|e| StorageError::io("writing", &tmp, e))?;
        crate::powerloss::created(&tmp);
        let f = std::fs::File::open(&tmp).map_err(|e| StorageError::io("opening", &tmp, e))?;
        fsutil::fdatasync(&f, &tmp)?;
        std::fs::rename(&tmp, &dst).map_err(|e| StorageError::io("renaming", &dst, e))
    })();
    if let Err(e) = replaced {
        // A full disk at close: no recovery point (the next open scans the tail), and no
        // half-written tmp file holding space either.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    crate::powerloss::renamed(&tmp, &dst);
    fsutil::fsync_dir(dir)
}

/// Removes `recovery.point` (the caller fsyncs the directory).
pub(crate) fn remove_point(dir: &Path) -> Result<()> {
    let p = dir.join(RECOVERY_POINT);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("deleting", &p, e)),
    }
}

/// Opens and repairs the segments of `dir`; the last one is active. Never empty. Also returns
/// whether a recovery point was found (it must be deleted before the first append).
pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<(Vec<Segment>, bool)> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("creating directory", dir, e))?;
    let mut logs = Vec::new();
    let mut others = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = parse_stem(&name, ".log") {
            logs.push(base);
        } else {
            others.push(name);
        }
    }
    logs.sort_unstable();
    let mut changed_dir = false;
    for name in others {
        let orphan_index = parse_stem(&name, ".index").or_else(|| parse_stem(&name, ".timeindex"));
        let leftover = name.ends_with(".compacting") || name.ends_with(".tmp");
        if leftover || orphan_index.is_some_and(|b| logs.binary_search(&b).is_err()) {
            let p = dir.join(&name);
            tracing::info!(file = %p.display(), "removing leftover file");
            std::fs::remove_file(&p).map_err(|e| StorageError::io("deleting", &p, e))?;
            changed_dir = true;
        }
    }
    let point = read_point(dir);
    // Clean shutdown: the summary names exactly the segments on disk. Sealed segments are
    // restored from it without touching their files (opened on first use); only the active
    // one is opened, scanned from its last index entry, and its tail is known to be zero.
    if let Some(p) = point.as_ref().filter(|p| {
        logs.last() == Some(&p.base)
            && p.sealed.len() + 1 == logs.len()
            && p.sealed.iter().zip(&logs).all(|(m, &b)| m.base_offset == b)
    }) {
        let mut segments: Vec<Segment> = p.sealed.iter().map(|m| Segment::lazy(dir, *m)).collect();
        let (active, lost) = Segment::open(dir, p.base, config, false, p.len, true)?;
        if lost {
            tracing::warn!(segment = %active.log_path.display(), "active segment truncated during recovery");
        }
        segments.push(active);
        if changed_dir {
            fsutil::fsync_dir(dir)?;
        }
        return Ok((segments, true));
    }
    let mut segments: Vec<Segment> = Vec::with_capacity(logs.len());
    for (i, &base) in logs.iter().enumerate() {
        let last = i + 1 == logs.len();
        let (trusted, clean) = match &point {
            Some(p) if p.base == base => (p.len, true),
            _ => (0, false),
        };
        let (seg, lost) = Segment::open(dir, base, config, !last, trusted, clean && last)?;
        if lost {
            tracing::warn!(segment = %seg.log_path.display(), "segment truncated during recovery");
        }
        let fits = match segments.last() {
            None => true,
            Some(prev) => {
                let raft_ok = match (prev.last_raft, seg.first_raft) {
                    (Some((pt, pi)), Some((t, idx))) => pi.checked_add(1) == Some(idx) && t >= pt,
                    _ => true,
                };
                seg.base_offset == prev.next_offset && raft_ok && (seg.first_raft.is_some() || last)
            }
        };
        if !fits {
            tracing::warn!(segment = %seg.log_path.display(), "segment does not continue the log; deleting it and every later segment");
            drop(seg);
            for &b in &logs[i..] {
                let (l, x, t) = crate::segment::paths(dir, b);
                for p in [l, x, t] {
                    match std::fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StorageError::io("deleting", &p, e)),
                    }
                }
            }
            changed_dir = true;
            break;
        }
        segments.push(seg);
    }
    match segments.last_mut() {
        None => {
            let seg = Segment::create(dir, config.initial_offset, config)?;
            segments.push(seg);
            changed_dir = true;
        }
        Some(seg) if seg.sealed => {
            seg.reactivate(config)?;
            // The reactivated segment's tail must be rescanned as active metadata: it is
            // already fully known from the cheap check.
        }
        Some(_) => {}
    }
    if changed_dir {
        fsutil::fsync_dir(dir)?;
    }
    Ok((segments, point.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        assert_eq!(parse_stem("00000000000000000042.log", ".log"), Some(42));
        assert_eq!(parse_stem("0000000000000000042.log", ".log"), None);
        assert_eq!(parse_stem("0000000000000000004x.log", ".log"), None);
        assert_eq!(parse_stem("99999999999999999999.log", ".log"), None);
        assert_eq!(parse_stem("00000000000000000042.index", ".log"), None);
    }

    #[test]
    fn point_roundtrip_and_garbage() -> Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::io("tempdir", Path::new("/tmp"), e))?;
        assert_eq!(read_point(dir.path()), None);
        let p = Point {
            base: 7,
            len: 4096,
            sealed: vec![SealedMeta {
                base_offset: 0,
                len: 100,
                next_offset: 7,
                first_raft: Some((1, 1)),
                last_raft: None,
                max_timestamp: Some(-5),
            }],
        };
        write_point(dir.path(), &p)?;
        assert_eq!(read_point(dir.path()), Some(p));
        std::fs::write(dir.path().join(RECOVERY_POINT), b"garbage")
            .map_err(|e| StorageError::io("w", dir.path(), e))?;
        assert_eq!(read_point(dir.path()), None);
        Ok(())
    }
}
