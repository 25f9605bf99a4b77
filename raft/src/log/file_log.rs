//! A small append-only file log: the metadata group's raft log.
//!
//! Format of `log` file: a sequence of frames `len: u32 LE | crc32: u32 LE | postcard(entry)`.
//! Every entry is also kept in memory (the metadata log is small and is purged after every
//! snapshot), keyed by raft index with the file position of its frame.
//!
//! Invariants:
//! - Frames in the file are in strictly increasing, consecutive raft index order.
//! - Recovery keeps the longest prefix of valid frames and cuts the file after it (a torn or
//!   corrupt tail is an unsynced write that was never acknowledged).
//! - A purge rewrites the file with the surviving entries via tmp + fsync + rename + dir fsync.

use std::collections::BTreeMap;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::marker::PhantomData;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use drawbridge_storage::powerloss;
use openraft::alias::LogIdOf;
use openraft::entry::RaftEntry;
use openraft::RaftTypeConfig;
use parking_lot::Mutex;
use tracing::warn;

use super::backend::LogBackend;
use super::flusher::SyncTarget;
use super::meta_file::sync_dir;
use crate::codec;

struct Inner<C: RaftTypeConfig> {
    /// The open log file, appended to under the lock.
    file: File,
    /// A second handle on the same file for fsync outside the lock.
    sync_handle: Arc<File>,
    /// Length of the valid part of the file.
    len: u64,
    /// Raft index → (frame start position, entry).
    entries: BTreeMap<u64, (u64, C::Entry)>,
}

/// An append-only file log for one raft group (see the module docs).
pub(crate) struct FileLog<C: RaftTypeConfig> {
    path: PathBuf,
    inner: Mutex<Inner<C>>,
    _c: PhantomData<C>,
}

impl<C: RaftTypeConfig> std::fmt::Debug for FileLog<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog").field("path", &self.path).finish()
    }
}

fn frame(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
}

impl<C> FileLog<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    /// Opens (or creates) the log file at `path`, recovering a torn tail.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut entries = BTreeMap::new();
        let mut pos = 0usize;
        let mut prev: Option<u64> = None;
        while pos + 8 <= bytes.len() {
            let len =
                u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
                    as usize;
            let crc = u32::from_le_bytes([
                bytes[pos + 4],
                bytes[pos + 5],
                bytes[pos + 6],
                bytes[pos + 7],
            ]);
            let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32fast::hash(body) != crc {
                break;
            }
            let Ok(entry) = codec::decode_io::<C::Entry>("raft log entry", body) else {
                break;
            };
            let index = entry.index();
            if prev.is_some_and(|p| p + 1 != index) {
                break;
            }
            prev = Some(index);
            entries.insert(index, (pos as u64, entry));
            pos += 8 + len;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        if (pos as u64) < bytes.len() as u64 {
            warn!(path = %path.display(), valid = pos, len = bytes.len(), "cutting torn tail of raft log");
            powerloss::truncated(path, pos as u64);
            file.set_len(pos as u64)?;
            powerloss::sync_file(&file, path, false)?;
        } else if bytes.is_empty() {
            powerloss::created(path);
            sync_dir(path)?;
        }
        let sync_handle = Arc::new(file.try_clone()?);
        Ok(Self {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                sync_handle,
                len: pos as u64,
                entries,
            }),
            _c: PhantomData,
        })
    }
}

impl<C> SyncTarget for FileLog<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    fn sync_now(&self) -> io::Result<()> {
        let handle = self.inner.lock().sync_handle.clone();
        powerloss::sync_file(&handle, &self.path, true)
    }
}

impl<C> LogBackend<C> for FileLog<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    fn append(&self, entries: Vec<C::Entry>) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let mut next = inner.entries.keys().next_back().map(|i| i + 1);
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for e in entries {
            let index = e.index();
            if let Some(n) = next {
                if n != index {
                    return Err(io::Error::other(format!(
                        "raft log hole: expected index {n}, got {index}"
                    )));
                }
            }
            next = Some(index + 1);
            let start = inner.len + buf.len() as u64;
            frame(&codec::encode_io(&e)?, &mut buf);
            placed.push((index, start, e));
        }
        inner.file.write_all(&buf)?;
        powerloss::wrote(&self.path, inner.len, inner.len + buf.len() as u64);
        inner.len += buf.len() as u64;
        for (index, start, e) in placed {
            inner.entries.insert(index, (start, e));
        }
        Ok(())
    }

    fn read(&self, start: u64, end: u64) -> io::Result<Vec<C::Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let inner = self.inner.lock();
        Ok(inner
            .entries
            .range(start..end)
            .map(|(_, (_, e))| e.clone())
            .collect())
    }

    fn last_log_id(&self) -> io::Result<Option<LogIdOf<C>>> {
        Ok(self
            .inner
            .lock()
            .entries
            .values()
            .next_back()
            .map(|(_, e)| e.log_id()))
    }

    fn truncate_after(&self, index: Option<u64>) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let from = index.map_or(0, |i| i + 1);
        let Some((_, (pos, _))) = inner.entries.range(from..).next() else {
            return Ok(());
        };
        let pos = *pos;
        powerloss::truncated(&self.path, pos);
        inner.file.set_len(pos)?;
        powerloss::sync_file(&inner.file, &self.path, false)?;
        inner.len = pos;
        let _removed = inner.entries.split_off(&from);
        Ok(())
    }

    fn purge_through(&self, log_id: &LogIdOf<C>) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let keep = inner.entries.split_off(&(log_id.index + 1));
        let mut buf = Vec::new();
        let mut rebuilt = BTreeMap::new();
        for (index, (_, e)) in keep {
            let start = buf.len() as u64;
            frame(&codec::encode_io(&e)?, &mut buf);
            rebuilt.insert(index, (start, e));
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp)?;
            powerloss::created(&tmp);
            f.write_all(&buf)?;
            powerloss::sync_file(&f, &tmp, false)?;
        }
        fs::rename(&tmp, &self.path)?;
        powerloss::renamed(&tmp, &self.path);
        sync_dir(&self.path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        inner.sync_handle = Arc::new(file.try_clone()?);
        inner.file = file;
        inner.len = buf.len() as u64;
        inner.entries = rebuilt;
        Ok(())
    }
}
