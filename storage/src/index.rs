//! Sparse index files: the offset index (`.index`) and, through the same [`EntryFile`], the
//! time index (`.timeindex`, see [`crate::time_index`]).
//!
//! An offset-index entry is 16 bytes, little-endian:
//! `rel_offset: u32` (batch base offset − segment base offset) · `position: u32` (byte position
//! of the batch in the `.log`) · `raft_index: u64`. One entry is written for the first batch
//! of a segment and then for the first batch that starts at least `index_interval_bytes`
//! after the previous entry, so a lookup scans at most about one interval of log.
//!
//! Invariants:
//! - Along the file, `position` strictly increases, `raft_index` strictly increases and
//!   `rel_offset` never decreases (control batches share the base offset of the next data
//!   batch). So both lookups are binary searches.
//! - The first entry, if any, has `position` 0.
//! - A sealed segment's index is memory-mapped read-only (`Mmap`, safe slices); the active
//!   segment's index lives in a `Vec` mirrored to the file with `pwrite` as entries are added.
//!   The file is not synced on `Log::sync` (recovery rebuilds its tail from the log); it is
//!   synced when the segment is sealed.
//! - Entries are trusted for *where to start scanning*, never for data: every lookup checks the
//!   batch it lands on, and recovery verifies the last entry against the log.
//!
//! Worked example — segment `00000000000000000100.log`, entries
//! `[(0, 0, 7), (40, 4120, 9), (95, 8230, 12)]`. Looking up offset 150: the last entry with
//! `rel_offset ≤ 50` is `(40, 4120, 9)`; read batches from byte 4120 until one spans offset
//! 150. Looking up raft index 10: the last entry with `raft_index ≤ 10` is again
//! `(40, 4120, 9)`; skip one batch.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::powerloss;

/// A fixed-size entry of an index file.
pub(crate) trait Entry: Copy + std::fmt::Debug {
    /// Encoded size.
    const LEN: usize;
    /// Decodes from exactly `LEN` bytes.
    fn decode(b: &[u8]) -> Self;
    /// Encodes into `LEN` bytes.
    fn encode(&self, out: &mut [u8]);
}

/// One offset-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Batch base offset minus segment base offset.
    pub rel_offset: u32,
    /// Byte position of the batch.
    pub position: u32,
    /// Raft index of the batch.
    pub raft_index: u64,
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

impl Entry for IndexEntry {
    const LEN: usize = 16;
    fn decode(b: &[u8]) -> Self {
        IndexEntry {
            rel_offset: u32::from_le_bytes(arr(&b[0..4])),
            position: u32::from_le_bytes(arr(&b[4..8])),
            raft_index: u64::from_le_bytes(arr(&b[8..16])),
        }
    }
    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.rel_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
        out[8..16].copy_from_slice(&self.raft_index.to_le_bytes());
    }
}

enum Store<E> {
    /// Sealed: a read-only map of the whole file.
    Mapped { map: Mmap, count: usize },
    /// Active: entries in memory, mirrored to the file.
    Owned(Vec<E>),
}

/// An index file of fixed-size entries.
pub(crate) struct EntryFile<E: Entry> {
    path: PathBuf,
    file: File,
    store: Store<E>,
    /// Entries from this one on are in memory only (written in batches by `flush`).
    flushed: usize,
}

impl<E: Entry> std::fmt::Debug for EntryFile<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryFile")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish()
    }
}

impl<E: Entry> EntryFile<E> {
    fn open_file(path: &Path) -> Result<File> {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StorageError::io("opening index", path, e))
    }

    /// Opens (creating if missing) an index for the active segment: entries are read into
    /// memory; a trailing partial entry is dropped.
    pub(crate) fn open_owned(path: &Path) -> Result<Self> {
        let mut file = Self::open_file(path)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)
            .map_err(|e| StorageError::io("reading index", path, e))?;
        let entries: Vec<E> = raw.chunks_exact(E::LEN).map(E::decode).collect();
        let flushed = entries.len();
        Ok(EntryFile {
            path: path.to_path_buf(),
            file,
            store: Store::Owned(entries),
            flushed,
        })
    }

    /// Opens (creating if missing) the index of a sealed segment as a read-only map.
    pub(crate) fn open_mapped(path: &Path) -> Result<Self> {
        let file = Self::open_file(path)?;
        let map = map_file(&file, path)?;
        let count = map.len() / E::LEN;
        Ok(EntryFile {
            path: path.to_path_buf(),
            file,
            store: Store::Mapped { map, count },
            flushed: count,
        })
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        match &self.store {
            Store::Mapped { count, .. } => *count,
            Store::Owned(v) => v.len(),
        }
    }

    /// Entry `i` (`i < len()`).
    pub(crate) fn get(&self, i: usize) -> Option<E> {
        match &self.store {
            Store::Mapped { map, count } => {
                (i < *count).then(|| E::decode(&map[i * E::LEN..(i + 1) * E::LEN]))
            }
            Store::Owned(v) => v.get(i).copied(),
        }
    }

    /// The last entry.
    pub(crate) fn last(&self) -> Option<E> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// Number of leading entries for which `pred` holds (binary search; `pred` must be
    /// true on a prefix).
    pub(crate) fn partition_point(&self, mut pred: impl FnMut(&E) -> bool) -> usize {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(e) if pred(&e) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// Appends an entry (active index only).
    /// Entries are written to the file in batches (every 64 entries, and by [`Self::flush`]
    /// at sync, seal and close): the file may lag the memory, and recovery rebuilds the rest.
    pub(crate) fn push(&mut self, e: E) -> Result<()> {
        match &mut self.store {
            Store::Owned(v) => v.push(e),
            Store::Mapped { .. } => {
                return Err(StorageError::InvalidArgument(
                    "push to a sealed index".into(),
                ));
            }
        }
        if self.len() - self.flushed >= 64 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the entries not yet in the file.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let Store::Owned(v) = &self.store else {
            return Ok(());
        };
        if self.flushed >= v.len() {
            return Ok(());
        }
        let mut raw = vec![0u8; (v.len() - self.flushed) * E::LEN];
        for (i, e) in v[self.flushed..].iter().enumerate() {
            e.encode(&mut raw[i * E::LEN..(i + 1) * E::LEN]);
        }
        let start = (self.flushed * E::LEN) as u64;
        self.file
            .write_all_at(&raw, start)
            .map_err(|e| StorageError::io("writing index", &self.path, e))?;
        powerloss::wrote(&self.path, start, start + raw.len() as u64);
        self.flushed = v.len();
        Ok(())
    }

    /// Keeps the first `n` entries (the index becomes owned).
    pub(crate) fn truncate(&mut self, n: usize) -> Result<()> {
        self.make_owned();
        if let Store::Owned(v) = &mut self.store {
            v.truncate(n);
        }
        self.flushed = self.flushed.min(n);
        let len = (self.flushed * E::LEN) as u64;
        powerloss::truncated(&self.path, len);
        self.file
            .set_len(len)
            .map_err(|e| StorageError::io("truncating index", &self.path, e))
    }

    /// Replaces all entries (used when rebuilding).
    pub(crate) fn replace(&mut self, entries: Vec<E>) -> Result<()> {
        let mut raw = vec![0u8; entries.len() * E::LEN];
        for (i, e) in entries.iter().enumerate() {
            e.encode(&mut raw[i * E::LEN..(i + 1) * E::LEN]);
        }
        powerloss::truncated(&self.path, 0);
        self.file
            .set_len(0)
            .map_err(|e| StorageError::io("truncating index", &self.path, e))?;
        self.file
            .write_all_at(&raw, 0)
            .map_err(|e| StorageError::io("writing index", &self.path, e))?;
        powerloss::wrote(&self.path, 0, raw.len() as u64);
        self.flushed = entries.len();
        self.store = Store::Owned(entries);
        Ok(())
    }

    /// Turns a mapped index into an owned one (reactivation).
    pub(crate) fn make_owned(&mut self) {
        if let Store::Mapped { .. } = self.store {
            let entries: Vec<E> = (0..self.len()).filter_map(|i| self.get(i)).collect();
            self.flushed = entries.len();
            self.store = Store::Owned(entries);
        }
    }

    /// Switches to a read-only map (sealing); syncs first when `sync`.
    pub(crate) fn seal(&mut self, sync: bool) -> Result<()> {
        self.flush()?;
        let len = (self.len() * E::LEN) as u64;
        powerloss::truncated(&self.path, len);
        self.file
            .set_len(len)
            .map_err(|e| StorageError::io("truncating index", &self.path, e))?;
        if sync {
            fsutil::fdatasync(&self.file, &self.path)?;
        }
        let map = map_file(&self.file, &self.path)?;
        let count = map.len() / E::LEN;
        self.store = Store::Mapped { map, count };
        Ok(())
    }

    /// A second handle on the file (for a deferred sync) and its path.
    pub(crate) fn dup(&self) -> Result<(File, PathBuf)> {
        let f = self
            .file
            .try_clone()
            .map_err(|e| StorageError::io("duplicating handle of", &self.path, e))?;
        Ok((f, self.path.clone()))
    }

    /// Flush, then `fdatasync` of the file.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.flush()?;
        fsutil::fdatasync(&self.file, &self.path)
    }
}

/// Maps `file` read-only.
pub(crate) fn map_file(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the mapping is read-only and only this process writes the partition directory.
    // Files are never shrunk below a range that a live slice covers: sealing shrinks the log
    // to its valid length, and slices only ever cover valid batches; index maps are replaced,
    // never shrunk, while in use.
    unsafe { Mmap::map(file) }.map_err(|e| StorageError::io("mapping", path, e))
}

/// Offset-index lookups.
impl EntryFile<IndexEntry> {
    /// The last entry whose `rel_offset ≤ rel`.
    pub(crate) fn floor_offset(&self, rel: u64) -> Option<IndexEntry> {
        let n = self.partition_point(|e| u64::from(e.rel_offset) <= rel);
        n.checked_sub(1).and_then(|i| self.get(i))
    }

    /// The last entry whose `raft_index ≤ index`.
    pub(crate) fn floor_raft(&self, index: u64) -> Option<IndexEntry> {
        let n = self.partition_point(|e| e.raft_index <= index);
        n.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Drops entries pointing at or after `position`.
    pub(crate) fn truncate_at_position(&mut self, position: u64) -> Result<()> {
        let n = self.partition_point(|e| u64::from(e.position) < position);
        self.truncate(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_lookup_seal_reopen() -> Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::io("tempdir", Path::new("/tmp"), e))?;
        let path = dir.path().join("0.index");
        let mut idx = EntryFile::<IndexEntry>::open_owned(&path)?;
        for i in 0..100u32 {
            idx.push(IndexEntry {
                rel_offset: i * 10,
                position: i * 4096,
                raft_index: 1000 + u64::from(i) * 3,
            })?;
        }
        let check = |idx: &EntryFile<IndexEntry>| {
            assert_eq!(idx.len(), 100);
            assert_eq!(idx.floor_offset(0).map(|e| e.position), Some(0));
            assert_eq!(idx.floor_offset(55).map(|e| e.rel_offset), Some(50));
            assert_eq!(idx.floor_offset(10_000).map(|e| e.rel_offset), Some(990));
            assert_eq!(idx.floor_raft(999), None);
            assert_eq!(idx.floor_raft(1004).map(|e| e.raft_index), Some(1003));
        };
        check(&idx);
        idx.seal(true)?;
        check(&idx);
        drop(idx);
        let idx = EntryFile::<IndexEntry>::open_mapped(&path)?;
        check(&idx);
        let mut idx = EntryFile::<IndexEntry>::open_owned(&path)?;
        check(&idx);
        idx.truncate_at_position(4096 * 50)?;
        assert_eq!(idx.len(), 50);
        drop(idx);
        // A torn trailing entry is ignored.
        let f = File::options()
            .append(true)
            .open(&path)
            .map_err(|e| StorageError::io("open", &path, e))?;
        f.write_all_at(&[1, 2, 3], 50 * 16)
            .map_err(|e| StorageError::io("write", &path, e))?;
        let idx = EntryFile::<IndexEntry>::open_owned(&path)?;
        assert_eq!(idx.len(), 50);
        Ok(())
    }
}
