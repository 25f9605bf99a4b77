//! [`LogStore`]: openraft's `RaftLogStorage` and `RaftLogReader` over a [`LogBackend`] plus the
//! group's record in the node's raft state journal.
//!
//! Invariants:
//! - `append` returns once the entries are readable. Under [`LogSyncPolicy::Always`] (the
//!   default, and the only policy the metadata group uses) its callback fires from the node's
//!   flusher thread after an fsync of the backend that started after the append (durable before
//!   the callback, as openraft requires). Under the lazy policies (`Interval`, `Never`) the
//!   callback fires as soon as the entries are written to the OS page cache, and the flusher
//!   syncs the backend later (every interval) or never: a *process* crash loses nothing, a
//!   *machine* crash may lose an acknowledged suffix (the documented trade).
//! - Vote, committed and last-purged ids are persisted as one record (the group's whole
//!   [`MetaState`]) in the node's journal through the same flusher. Records are built from the
//!   latest *submitted* state and queued under one lock, so the journal's last record of the
//!   group always carries the newest vote.
//! - `save_vote` returns once its record is durable; the flusher's FIFO rounds make every
//!   append submitted before it durable too (openraft's IO ordering). The vote is published to
//!   readers only then.
//! - `purge` records `last_purged` durably *before* deleting entries, so after a crash the store
//!   re-applies the purge at open and never reports purged entries.
//! - `save_committed` is a lower bound on disk: it is queued (not awaited) at most every
//!   [`COMMITTED_PERSIST_INTERVAL`]; after a crash the group re-applies from an older commit
//!   point and learns the newer one from the leader. The in-memory value is exact.
//! - When the backend [`retries_when_full`](LogBackend::retries_when_full) (the metadata
//!   group's file log), an `append` or `purge` that finds the disk full waits (async sleep,
//!   backing off) and retries until it succeeds instead of failing the group
//!   ([`nospace`] says why that is raft-safe); the entries are written once.
//!   Other errors, and any error of a backend that does not retry, are returned to openraft.
//! - `read_committed` never reports a commit point past the log's end (or its purge point): a
//!   machine crash may leave the journal's committed record ahead of log entries that were not
//!   yet synced, and openraft must not try to apply entries that are gone.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use parking_lot::Mutex;

use super::backend::LogBackend;
use super::flusher::Flusher;
use super::flusher::SyncTarget;
use super::meta_file::MetaState;
use super::nospace;
use crate::codec;
use crate::config::LogSyncPolicy;

/// How often, at most, `save_committed` rewrites the meta file.
pub(crate) const COMMITTED_PERSIST_INTERVAL: Duration = Duration::from_millis(100);

/// Called from the flusher thread with the last durable log id after each successful flush.
pub(crate) type FlushHook<C> = Arc<dyn Fn(&LogIdOf<C>) + Send + Sync>;

/// Called for every entry `append` makes readable, before its flush is queued.
pub(crate) type AppendHook<C> = Arc<dyn Fn(&<C as RaftTypeConfig>::Entry) + Send + Sync>;

/// Called when the log is about to be truncated, with the index of the last entry kept
/// (`None`: none kept).
pub(crate) type TruncateHook = Arc<dyn Fn(Option<u64>) + Send + Sync>;

/// Observers of the store's IO, used by partition groups for LEADER acks.
pub(crate) struct StoreHooks<C: RaftTypeConfig> {
    /// See [`AppendHook`].
    pub(crate) on_append: Option<AppendHook<C>>,
    /// See [`FlushHook`].
    pub(crate) on_flushed: Option<FlushHook<C>>,
    /// See [`TruncateHook`].
    pub(crate) on_truncated: Option<TruncateHook>,
}

impl<C: RaftTypeConfig> Default for StoreHooks<C> {
    fn default() -> Self {
        Self {
            on_append: None,
            on_flushed: None,
            on_truncated: None,
        }
    }
}

struct Shared<C: RaftTypeConfig, B> {
    backend: Arc<B>,
    /// The group's key in the state journal.
    key: Vec<u8>,
    /// The latest submitted meta state (exact committed id in memory).
    meta: Mutex<MetaState<VoteOf<C>, LogIdOf<C>>>,
    /// The last vote known durable (what `read_vote` returns).
    durable_vote: Mutex<Option<VoteOf<C>>>,
    /// When the meta file was last written for a committed update.
    committed_written_at: Mutex<Option<Instant>>,
    flusher: Flusher,
    /// Optional observers of appends and of local durability (LEADER acks).
    hooks: StoreHooks<C>,
    /// When appends are synced relative to their callback.
    sync: LogSyncPolicy,
}

/// The raft log store of one group. Cheap to clone; clones share state (the clone is also the
/// log reader).
pub(crate) struct LogStore<C: RaftTypeConfig, B> {
    shared: Arc<Shared<C, B>>,
}

impl<C: RaftTypeConfig, B> Clone for LogStore<C, B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C: RaftTypeConfig, B> Debug for LogStore<C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("key", &self.shared.key)
            .finish()
    }
}

/// Runs blocking file IO off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("blocking task failed: {e}"))),
    }
}

impl<C, B> LogStore<C, B>
where
    C: RaftTypeConfig,
    B: LogBackend<C>,
{
    /// Opens the store: loads the group's state stored under `key` in the node's journal and
    /// re-applies a purge interrupted by a crash.
    pub(crate) fn open(
        backend: Arc<B>,
        key: Vec<u8>,
        flusher: Flusher,
        hooks: StoreHooks<C>,
    ) -> io::Result<Self> {
        Self::open_with_sync(backend, key, flusher, hooks, LogSyncPolicy::Always)
    }

    /// [`LogStore::open`] with an explicit sync policy for appends (see the module docs).
    pub(crate) fn open_with_sync(
        backend: Arc<B>,
        key: Vec<u8>,
        flusher: Flusher,
        hooks: StoreHooks<C>,
        sync: LogSyncPolicy,
    ) -> io::Result<Self> {
        let meta: MetaState<VoteOf<C>, LogIdOf<C>> = match flusher.load(&key) {
            Some(bytes) => codec::decode_io("raft group state", &bytes)?,
            None => MetaState {
                vote: None,
                committed: None,
                last_purged: None,
            },
        };
        if let Some(p) = &meta.last_purged {
            backend.purge_through(p)?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                backend,
                key,
                durable_vote: Mutex::new(meta.vote.clone()),
                meta: Mutex::new(meta),
                committed_written_at: Mutex::new(None),
                flusher,
                hooks,
                sync,
            }),
        })
    }

    /// Applies `change` to the latest submitted state and queues the resulting record (under
    /// the state lock, so records reach the journal in the order of their states). Returns a
    /// receiver of the durability result when `wait` is set.
    fn submit_meta(
        &self,
        change: impl FnOnce(&mut MetaState<VoteOf<C>, LogIdOf<C>>),
        wait: bool,
    ) -> io::Result<Option<tokio::sync::oneshot::Receiver<io::Result<()>>>> {
        let mut m = self.shared.meta.lock();
        change(&mut m);
        let bytes = codec::encode_io(&*m)?;
        if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.shared.flusher.record(
                self.shared.key.clone(),
                Some(bytes),
                Some(Box::new(move |r| {
                    let _ = tx.send(r);
                })),
            );
            Ok(Some(rx))
        } else {
            self.shared
                .flusher
                .record(self.shared.key.clone(), Some(bytes), None);
            Ok(None)
        }
    }

    /// The group's journal key, for log lines.
    fn describe(&self) -> String {
        format!("raft group {}", String::from_utf8_lossy(&self.shared.key))
    }

    async fn write_meta_durable(
        &self,
        change: impl FnOnce(&mut MetaState<VoteOf<C>, LogIdOf<C>>),
    ) -> io::Result<()> {
        match self.submit_meta(change, true)? {
            Some(rx) => rx
                .await
                .map_err(|_| io::Error::other("raft flusher dropped a state record"))?,
            None => Ok(()),
        }
    }
}

impl<C, B> RaftLogReader<C> for LogStore<C, B>
where
    C: RaftTypeConfig,
    B: LogBackend<C>,
{
    async fn try_get_log_entries<RB>(&mut self, range: RB) -> Result<Vec<C::Entry>, io::Error>
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let mut start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(p) = &self.shared.meta.lock().last_purged {
            start = start.max(p.index + 1);
        }
        self.shared.backend.read(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.shared.durable_vote.lock().clone())
    }
}

impl<C, B> RaftLogStorage<C> for LogStore<C, B>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
    B: LogBackend<C>,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged = self.shared.meta.lock().last_purged.clone();
        let last = self.shared.backend.last_log_id()?;
        let last_log_id = match (last, &last_purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p.clone()),
            (Some(l), _) => Some(l),
            (None, p) => p.clone(),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let v = vote.clone();
        self.write_meta_durable(move |m| m.vote = Some(v)).await?;
        *self.shared.durable_vote.lock() = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let due = {
            let mut at = self.shared.committed_written_at.lock();
            let due = at.is_none_or(|t| t.elapsed() >= COMMITTED_PERSIST_INTERVAL);
            if due {
                *at = Some(Instant::now());
            }
            due
        };
        if due {
            self.submit_meta(move |m| m.committed = committed, false)?;
        } else {
            self.shared.meta.lock().committed = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        let (committed, purged) = {
            let m = self.shared.meta.lock();
            (m.committed.clone(), m.last_purged.clone())
        };
        let Some(c) = committed else {
            return Ok(None);
        };
        // Clamp to the log's end (see the module docs).
        let end = match (self.shared.backend.last_log_id()?, purged) {
            (Some(l), Some(p)) if p.index > l.index => Some(p),
            (Some(l), _) => Some(l),
            (None, p) => p,
        };
        Ok(match end {
            Some(e) if e.index < c.index => Some(e),
            Some(_) => Some(c),
            None => None,
        })
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id());
        if let Some(h) = &self.shared.hooks.on_append {
            entries.iter().for_each(|e| h(e));
        }
        if self.shared.backend.retries_when_full() {
            let mut backoff: Option<nospace::Backoff> = None;
            loop {
                match self.shared.backend.append(entries.clone()) {
                    Ok(()) => break,
                    Err(e) if nospace::is_no_space(&e) => {
                        let b = backoff.get_or_insert_with(|| {
                            nospace::Backoff::new("raft log append", self.describe())
                        });
                        tokio::time::sleep(b.failed(&e)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(b) = backoff {
                b.succeeded();
            }
        } else {
            self.shared.backend.append(entries)?;
        }
        let hook = self.shared.hooks.on_flushed.clone();
        let target: Arc<dyn SyncTarget> = self.shared.backend.clone();
        let lazy_interval = match self.shared.sync {
            LogSyncPolicy::Always => None,
            LogSyncPolicy::Interval { interval_ms } => {
                Some(Some(Duration::from_millis(interval_ms)))
            }
            LogSyncPolicy::Never => Some(None),
        };
        if let Some(interval) = lazy_interval {
            // Lazy: acknowledged once in the page cache (the backend wrote it on return).
            if let Some(interval) = interval {
                self.shared.flusher.mark_dirty(target, interval);
            }
            if let (Some(hook), Some(last)) = (hook, &last) {
                hook(last);
            }
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.shared.flusher.submit(
            target,
            Box::new(move |r| {
                if let (Ok(()), Some(hook), Some(last)) = (&r, hook, &last) {
                    hook(last);
                }
                callback.io_completed(r);
            }),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let backend = self.shared.backend.clone();
        let index = last_log_id.map(|l| l.index);
        // Before the bytes go: a flush completing meanwhile must not report what is cut.
        if let Some(h) = &self.shared.hooks.on_truncated {
            h(index);
        }
        blocking(move || backend.truncate_after(index)).await
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        if self
            .shared
            .meta
            .lock()
            .last_purged
            .as_ref()
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        let l = log_id.clone();
        self.write_meta_durable(move |m| m.last_purged = Some(l))
            .await?;
        let mut backoff: Option<nospace::Backoff> = None;
        loop {
            let backend = self.shared.backend.clone();
            let l = log_id.clone();
            match blocking(move || backend.purge_through(&l)).await {
                Err(e) if nospace::is_no_space(&e) && self.shared.backend.retries_when_full() => {
                    let b = backoff.get_or_insert_with(|| {
                        nospace::Backoff::new("raft log purge", self.describe())
                    });
                    tokio::time::sleep(b.failed(&e)).await;
                }
                r => {
                    if let (Ok(()), Some(b)) = (&r, backoff) {
                        b.succeeded();
                    }
                    return r;
                }
            }
        }
    }
}
