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
//! - A purge rewrites the file with the surviving entries via tmp + fsync + rename + dir fsync;
//!   a purge that fails leaves the file and the in-memory entries as they were (the tmp file is
//!   removed).
//! - `len` is the file's length after every call returns: an append that fails cuts the file
//!   back to `len` before it returns, so an `O_APPEND` retry lands right after the last good
//!   frame and a short write on a full disk leaves no garbage ([`super::nospace`]). If that
//!   cut fails, the log is *poisoned*: every later append fails (fatal for the group) rather
//!   than write after bytes that are not a frame.

use std::collections::BTreeMap;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
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
use super::nospace;
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
    /// A failed append could not cut the file back to `len`: refuse every later append.
    poisoned: bool,
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
                poisoned: false,
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
        if inner.poisoned {
            return Err(io::Error::other(format!(
                "raft log {} holds bytes after its last good frame (a failed append could \
                 not be cut back); refusing to append",
                self.path.display()
            )));
        }
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
        if let Err(e) = nospace::write_all(&mut inner.file, &self.path, &buf) {
            // Cut a short write off (see the module docs).
            let len = inner.len;
            if let Err(cut) = inner.file.set_len(len) {
                inner.poisoned = true;
                return Err(io::Error::other(format!(
                    "append to raft log {} failed ({e}) and cutting it back to {len} bytes \
                     failed too: {cut}",
                    self.path.display()
                )));
            }
            return Err(e);
        }
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
        let mut buf = Vec::new();
        let mut rebuilt = BTreeMap::new();
        for (index, (_, e)) in inner.entries.range(log_id.index + 1..) {
            let start = buf.len() as u64;
            frame(&codec::encode_io(e)?, &mut buf);
            rebuilt.insert(*index, (start, e.clone()));
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = File::create(&tmp)?;
            powerloss::created(&tmp);
            nospace::write_all(&mut f, &tmp, &buf)?;
            powerloss::sync_file(&f, &tmp, false)
        })();
        if let Err(e) = written {
            // Leave the log as it was (a retry rewrites the tmp file from scratch).
            if let Err(rm) = fs::remove_file(&tmp) {
                warn!(path = %tmp.display(), error = %rm, "removing a failed purge's tmp file");
            }
            return Err(e);
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
        inner.poisoned = false;
        Ok(())
    }

    /// Yes: a failed append is cut back, a failed purge changes nothing (module docs).
    fn retries_when_full(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::flusher::Flusher;
    use crate::log::nospace;
    use crate::log::store::{LogStore, StoreHooks};
    use crate::types::MetaTypes;
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::testing::blank_ent;
    use openraft::RaftLogReader;

    type Log = FileLog<MetaTypes>;

    fn ents(from: u64, to: u64) -> Vec<<MetaTypes as RaftTypeConfig>::Entry> {
        (from..=to)
            .map(|i| blank_ent::<MetaTypes>(1, 1, i))
            .collect()
    }

    fn indexes(log: &Log) -> io::Result<Vec<u64>> {
        Ok(log.read(0, u64::MAX)?.iter().map(|e| e.index()).collect())
    }

    #[test]
    fn a_failed_append_is_cut_back_and_its_retry_lands_once() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("log");
        let log = Log::open(&p)?;
        log.append(ents(1, 3))?;
        let good = fs::metadata(&p)?.len();
        nospace::inject_full(&p, 1);
        let e = log
            .append(ents(4, 5))
            .err()
            .ok_or_else(|| io::Error::other("no failure"))?;
        assert!(nospace::is_no_space(&e), "{e}");
        // The short write (half the bytes) was cut off; nothing new is readable.
        assert_eq!(fs::metadata(&p)?.len(), good);
        assert_eq!(indexes(&log)?, vec![1, 2, 3]);
        log.append(ents(4, 5))?;
        log.append(ents(6, 6))?;
        drop(log);
        let log = Log::open(&p)?;
        assert_eq!(indexes(&log)?, vec![1, 2, 3, 4, 5, 6]);
        Ok(())
    }

    #[test]
    fn a_failed_purge_changes_nothing() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("log");
        let log = Log::open(&p)?;
        log.append(ents(1, 4))?;
        let tmp = dir.path().join("log.tmp");
        nospace::inject_full(&tmp, 1);
        let through = openraft::testing::log_id::<MetaTypes>(1, 1, 2);
        let e = log
            .purge_through(&through)
            .err()
            .ok_or_else(|| io::Error::other("no failure"))?;
        assert!(nospace::is_no_space(&e), "{e}");
        assert!(!tmp.exists(), "the failed purge left its tmp file");
        assert_eq!(indexes(&log)?, vec![1, 2, 3, 4]);
        log.purge_through(&through)?;
        log.append(ents(5, 5))?;
        drop(log);
        assert_eq!(indexes(&Log::open(&p)?)?, vec![3, 4, 5]);
        Ok(())
    }

    /// The store waits out a full disk in the log and in the journal: the append's callback
    /// and the saved vote succeed once the writes go through, and each lands exactly once.
    #[tokio::test]
    async fn the_store_waits_out_a_full_disk() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (lp, jp) = (dir.path().join("log"), dir.path().join("journal"));
        let flusher = Flusher::start(&jp)?;
        let mut store = LogStore::open(
            Arc::new(Log::open(&lp)?),
            b"m".to_vec(),
            flusher,
            StoreHooks::default(),
        )?;
        let waits = nospace::waits();
        // Three failed attempts: 50 + 100 + 200 ms of backoff.
        nospace::inject_full(&lp, 3);
        let (tx, rx) = <MetaTypes as openraft::type_config::TypeConfigExt>::oneshot();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.append(ents(1, 3), IOFlushed::signal(tx)),
        )
        .await
        .map_err(|_| io::Error::other("append still waiting after 10 s"))??;
        rx.await
            .map_err(|_| io::Error::other("callback dropped"))??;
        assert!(nospace::waits() >= waits + 3);
        // The journal: two failed attempts, then the vote is durable.
        nospace::inject_full(&jp, 2);
        let vote = <openraft::alias::VoteOf<MetaTypes>>::new(2, 1);
        tokio::time::timeout(std::time::Duration::from_secs(10), store.save_vote(&vote))
            .await
            .map_err(|_| io::Error::other("save_vote still waiting after 10 s"))??;
        assert!(nospace::waits() >= waits + 5);
        assert_eq!(store.read_vote().await?, Some(vote));
        drop(store);
        assert_eq!(indexes(&Log::open(&lp)?)?, vec![1, 2, 3]);
        let (live, valid) = crate::log::journal::replay(&fs::read(&jp)?)?;
        assert_eq!(valid as u64, fs::metadata(&jp)?.len());
        assert!(live.contains_key(b"m".as_slice()));
        Ok(())
    }

    #[test]
    fn other_errors_are_not_retried() -> io::Result<()> {
        // A gap is a plain error, not "no space": the store returns it to openraft.
        let dir = tempfile::tempdir()?;
        let log = Log::open(&dir.path().join("log"))?;
        log.append(ents(1, 1))?;
        let e = log
            .append(ents(3, 3))
            .err()
            .ok_or_else(|| io::Error::other("no failure"))?;
        assert!(!nospace::is_no_space(&e));
        Ok(())
    }
}
