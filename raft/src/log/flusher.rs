//! Group commit for the whole node: one thread makes appended log entries *and* raft state
//! records (vote, committed, purged — see [`journal`](super::journal)) durable, across all
//! groups, and then completes the waiters.
//!
//! A round: take every queued job; append the round's state records to the journal (one
//! `write`); `fdatasync` every distinct log target of the round and the journal **in parallel**
//! (up to [`MAX_SYNC_THREADS`] scoped threads: concurrent fsyncs on different files share the
//! file system's journal commits — measured on the reference disk, 3.2 ms per file one after the
//! other vs. ≈0.1–0.4 ms per file with 8–32 in flight); then fire the callbacks in submission
//! order.
//!
//! Invariants:
//! - Jobs complete in submission order (FIFO queue, a drained round fires its callbacks in
//!   order, and a round fires nothing before all its syncs returned). So when a state record's
//!   callback fires, every append submitted before it — to any group — is durable too: a saved
//!   vote never overtakes earlier appends, as openraft's IO ordering requires.
//! - A callback fires only after a sync that *started after* its job was queued (appends return
//!   before their job is queued), so a successful callback means the data is on disk.
//! - State records of one key are written in submission order; the journal's last record of a
//!   key wins on replay.
//! - A failed journal write or sync fails every state-record job of the round; a failed log
//!   sync fails the jobs of that log only. Exception: a journal *write* that finds the disk
//!   full (ENOSPC, EDQUOT) is retried on this thread, backing off, until it succeeds
//!   ([`nospace`](super::nospace)); the round (and every round queued behind it, of every
//!   group) waits meanwhile, so completion order is kept. Sync errors are never retried.
//!
//! Lazy logs (partition groups under [`LogSyncPolicy::Interval`](crate::LogSyncPolicy)) are not
//! synced on the ack path: the store acknowledges after the write and only
//! [`Flusher::mark_dirty`]s the log. The same thread syncs every log marked since its last lazy
//! round once the oldest mark is `interval` old (the shortest interval any caller asked for),
//! and once more when the last handle is dropped. Lazy syncs have no callbacks and are counted
//! apart ([`FlusherStats::lazy_syncs`]), so `log_syncs` counts ack-path syncs only.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use tracing::warn;

use super::journal::Journal;
use super::journal::LiveMap;

/// Most threads one round uses to issue fsyncs concurrently.
pub(crate) const MAX_SYNC_THREADS: usize = 16;

/// Something that can be made durable.
pub(crate) trait SyncTarget: Send + Sync + 'static {
    /// Makes prior writes durable.
    fn sync_now(&self) -> io::Result<()>;
}

type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Work {
    /// Sync a log.
    Sync(Arc<dyn SyncTarget>),
    /// Append (key, value) to the state journal and sync it (`None`: tombstone).
    Record(Vec<u8>, Option<Vec<u8>>),
    /// Nothing to do: wakes the thread so it re-reads the lazy deadline.
    Wake,
}

struct Job {
    work: Work,
    done: Option<Done>,
}

/// Counters of the flusher (for tests, benches and logs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlusherStats {
    /// Rounds run.
    pub(crate) rounds: u64,
    /// Log fsyncs issued.
    pub(crate) log_syncs: u64,
    /// Journal fsyncs issued.
    pub(crate) journal_syncs: u64,
    /// State records written.
    pub(crate) records: u64,
    /// Background fsyncs of lazily synced logs (not on any ack path).
    pub(crate) lazy_syncs: u64,
}

/// Logs written under an interval policy since the last lazy round.
#[derive(Default)]
struct Lazy {
    /// Distinct dirty logs (by pointer), in first-marked order.
    dirty: Vec<Arc<dyn SyncTarget>>,
    keys: HashSet<usize>,
    /// When the oldest unsynced mark was made (`None`: nothing dirty).
    since: Option<Instant>,
    /// Shortest interval any caller asked for.
    interval: Option<Duration>,
}

impl Lazy {
    /// When the next lazy round is due.
    fn deadline(&self) -> Option<Instant> {
        match (self.since, self.interval) {
            (Some(s), Some(i)) => Some(s + i),
            _ => None,
        }
    }

    fn take(&mut self) -> Vec<Arc<dyn SyncTarget>> {
        self.keys.clear();
        self.since = None;
        std::mem::take(&mut self.dirty)
    }
}

/// Handle to the node's flusher thread. Cloning shares the thread; it exits when every handle
/// is dropped.
#[derive(Clone)]
pub(crate) struct Flusher {
    tx: mpsc::Sender<Job>,
    /// The journal's live state as of the last completed round (what a re-opened group reads).
    live: Arc<Mutex<LiveMap>>,
    stats: Arc<Mutex<FlusherStats>>,
    /// Logs awaiting a lazy (interval) sync; read by the thread.
    lazy: Arc<Mutex<Lazy>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("stats", &*self.stats.lock())
            .finish()
    }
}

impl Flusher {
    /// Opens the state journal at `journal_path` and starts the flusher thread.
    pub(crate) fn start(journal_path: &Path) -> io::Result<Self> {
        let journal = Journal::open(journal_path)?;
        let live = Arc::new(Mutex::new(journal.live().clone()));
        let stats = Arc::new(Mutex::new(FlusherStats::default()));
        let lazy = Arc::new(Mutex::new(Lazy::default()));
        let (tx, rx) = mpsc::channel::<Job>();
        let (l, s, z) = (live.clone(), stats.clone(), lazy.clone());
        thread::Builder::new()
            .name("raft-flusher".into())
            .spawn(move || run(rx, journal, &l, &s, &z))?;
        Ok(Self {
            tx,
            live,
            stats,
            lazy,
        })
    }

    /// Marks `target` as written but not synced: it is fsynced by a lazy round at most
    /// `interval` after the oldest unsynced mark (no callback; see the module docs).
    pub(crate) fn mark_dirty(&self, target: Arc<dyn SyncTarget>, interval: Duration) {
        let interval = interval.max(Duration::from_millis(1));
        let wake = {
            let mut z = self.lazy.lock();
            let key = Arc::as_ptr(&target) as *const () as usize;
            if z.keys.insert(key) {
                z.dirty.push(target);
            }
            let shorter = z.interval.is_none_or(|i| interval < i);
            if shorter {
                z.interval = Some(interval);
            }
            let first = z.since.is_none();
            if first {
                z.since = Some(Instant::now());
            }
            first || shorter
        };
        if wake {
            // A failed send means the thread is gone (shutdown): nothing left to sync for.
            let _ = self.tx.send(Job {
                work: Work::Wake,
                done: None,
            });
        }
    }

    /// The latest state stored under `key` (as of the last completed round).
    pub(crate) fn load(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.live.lock().get(key).cloned()
    }

    /// Counters so far.
    pub(crate) fn stats(&self) -> FlusherStats {
        *self.stats.lock()
    }

    fn send(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            if let Some(done) = job.done {
                done(Err(io::Error::other("raft flusher stopped")));
            }
        }
    }

    /// Queues `done` to run after the next sync of `target`. If the thread is gone (shutdown)
    /// `done` runs at once with an error.
    pub(crate) fn submit(&self, target: Arc<dyn SyncTarget>, done: Done) {
        self.send(Job {
            work: Work::Sync(target),
            done: Some(done),
        });
    }

    /// Queues a state record; `done` (if any) runs once it is durable.
    pub(crate) fn record(&self, key: Vec<u8>, value: Option<Vec<u8>>, done: Option<Done>) {
        self.send(Job {
            work: Work::Record(key, value),
            done,
        });
    }

    /// Queues a state record and waits until it is durable.
    pub(crate) async fn record_durable(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.record(
            key,
            value,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.await
            .map_err(|_| io::Error::other("raft flusher dropped a record"))?
    }
}

fn clone_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// fsyncs every target (and the journal handle, last slot) concurrently.
fn sync_parallel(
    targets: &[Arc<dyn SyncTarget>],
    journal: Option<&(File, PathBuf)>,
) -> Vec<io::Result<()>> {
    let n = targets.len() + usize::from(journal.is_some());
    let one = |i: usize| -> io::Result<()> {
        use crate::fsync_stats::{timed, FsyncKind};
        match targets.get(i) {
            Some(t) => timed(FsyncKind::Log, || t.sync_now()),
            None => match journal {
                Some((f, path)) => timed(FsyncKind::Journal, || {
                    drawbridge_storage::powerloss::sync_file(f, path, true)
                }),
                None => Ok(()),
            },
        }
    };
    if n <= 1 {
        return (0..n).map(one).collect();
    }
    let threads = n.min(MAX_SYNC_THREADS);
    let mut results: Vec<Option<io::Result<()>>> = (0..n).map(|_| None).collect();
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let one = &one;
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| (i, one(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(rs) => {
                    for (i, r) in rs {
                        results[i] = Some(r);
                    }
                }
                Err(_) => warn!("raft fsync thread panicked"),
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("fsync thread lost its result"))))
        .collect()
}

/// Syncs every lazily written log whose round is due (all of them when `force`).
fn lazy_round(lazy: &Mutex<Lazy>, stats: &Mutex<FlusherStats>, force: bool) {
    let targets = {
        let mut z = lazy.lock();
        match z.deadline() {
            Some(d) if force || Instant::now() >= d => z.take(),
            _ => return,
        }
    };
    let results = sync_parallel(&targets, None);
    stats.lock().lazy_syncs += targets.len() as u64;
    for r in results {
        if let Err(e) = r {
            warn!(error = %e, "lazy raft log sync failed");
        }
    }
}

fn run(
    rx: mpsc::Receiver<Job>,
    mut journal: Journal,
    live: &Mutex<LiveMap>,
    stats: &Mutex<FlusherStats>,
    lazy: &Mutex<Lazy>,
) {
    loop {
        let deadline = lazy.lock().deadline();
        let first = match deadline {
            None => match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            },
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(j) => Some(j),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        if let Some(first) = first {
            round(first, &rx, &mut journal, live, stats);
        }
        lazy_round(lazy, stats, false);
    }
    lazy_round(lazy, stats, true);
}

/// [`Journal::append`], waiting (this thread sleeps, backing off) as long as the disk is full.
fn append_waiting(journal: &mut Journal, records: &[(Vec<u8>, Option<Vec<u8>>)]) -> io::Result<()> {
    let mut backoff: Option<super::nospace::Backoff> = None;
    loop {
        match journal.append(records) {
            Err(e) if super::nospace::is_no_space(&e) => {
                let b = backoff.get_or_insert_with(|| {
                    super::nospace::Backoff::new(
                        "raft state journal append",
                        journal.path().display().to_string(),
                    )
                });
                thread::sleep(b.failed(&e));
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

/// One group-commit round: `first` and every job queued behind it.
fn round(
    first: Job,
    rx: &mpsc::Receiver<Job>,
    journal: &mut Journal,
    live: &Mutex<LiveMap>,
    stats: &Mutex<FlusherStats>,
) {
    let mut batch = vec![first];
    while let Ok(more) = rx.try_recv() {
        batch.push(more);
    }
    batch.retain(|j| !matches!(j.work, Work::Wake) || j.done.is_some());
    if batch.is_empty() {
        return;
    }
    // Distinct log targets, in first-seen order, and the round's state records.
    let mut targets: Vec<Arc<dyn SyncTarget>> = Vec::new();
    let mut keys: Vec<*const ()> = Vec::new();
    let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for job in &mut batch {
        match &mut job.work {
            Work::Sync(t) => {
                let key = Arc::as_ptr(t) as *const ();
                if !keys.contains(&key) {
                    keys.push(key);
                    targets.push(t.clone());
                }
            }
            Work::Record(k, v) => records.push((std::mem::take(k), v.take())),
            Work::Wake => {}
        }
    }
    let mut journal_result: io::Result<()> = Ok(());
    let mut journal_file = None;
    if !records.is_empty() {
        journal_result = append_waiting(journal, &records)
            .and_then(|()| journal.sync_handle())
            .map(|f| journal_file = Some(f));
    }
    let mut results = sync_parallel(&targets, journal_file.as_ref());
    if journal_file.is_some() {
        if let Some(Err(e)) = results.pop() {
            journal_result = Err(e);
        }
    }
    if let Err(e) = &journal_result {
        warn!(error = %e, "raft state journal write failed");
    } else if !records.is_empty() {
        let mut l = live.lock();
        for (k, v) in records.iter() {
            match v {
                Some(v) => l.insert(k.clone(), v.clone()),
                None => l.remove(k),
            };
        }
    }
    {
        let mut s = stats.lock();
        s.rounds += 1;
        s.log_syncs += targets.len() as u64;
        s.journal_syncs += u64::from(journal_file.is_some());
        s.records += records.len() as u64;
    }
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            warn!(error = %e, target = i, "raft log sync failed");
        }
    }
    for job in batch {
        let r = match &job.work {
            Work::Sync(t) => {
                let key = Arc::as_ptr(t) as *const ();
                match keys.iter().position(|k| *k == key).map(|i| &results[i]) {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(clone_err(e)),
                    None => Err(io::Error::other("flusher lost a sync result")),
                }
            }
            Work::Record(..) => match &journal_result {
                Ok(()) => Ok(()),
                Err(e) => Err(clone_err(e)),
            },
            Work::Wake => Ok(()),
        };
        if let Some(done) = job.done {
            done(r);
        }
    }
    if journal_result.is_ok() {
        if let Err(e) = journal.maybe_compact() {
            warn!(error = %e, "raft state journal compaction failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    struct Counting(AtomicUsize);

    impl SyncTarget for Counting {
        fn sync_now(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn records_are_durable_in_order_and_reload() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("journal");
        let f = Flusher::start(&p)?;
        let target = Arc::new(Counting(AtomicUsize::new(0)));
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50u8 {
            let o = order.clone();
            f.submit(
                target.clone(),
                Box::new(move |r| {
                    assert!(r.is_ok());
                    o.lock().push(i);
                }),
            );
            f.record(vec![i % 3], Some(vec![i]), None);
        }
        f.record_durable(b"last".to_vec(), Some(b"v".to_vec()))
            .await?;
        assert_eq!(*order.lock(), (0..50).collect::<Vec<u8>>());
        assert!(target.0.load(Ordering::SeqCst) >= 1);
        assert_eq!(f.load(&[0]), Some(vec![48]));
        f.record_durable(vec![1], None).await?;
        assert_eq!(f.load(&[1]), None);
        drop(f);
        let j = Journal::open(&p)?;
        assert_eq!(j.live().get(&vec![2u8]), Some(&vec![47u8]));
        assert!(!j.live().contains_key(&vec![1u8]));
        assert_eq!(j.live().get(&b"last".to_vec()), Some(&b"v".to_vec()));
        Ok(())
    }

    #[tokio::test]
    async fn lazy_marks_are_synced_by_interval_rounds_not_on_the_ack_path() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = Flusher::start(&dir.path().join("journal"))?;
        let a = Arc::new(Counting(AtomicUsize::new(0)));
        let b = Arc::new(Counting(AtomicUsize::new(0)));
        for _ in 0..20 {
            f.mark_dirty(a.clone(), Duration::from_millis(30));
            f.mark_dirty(b.clone(), Duration::from_millis(30));
        }
        // Nothing is synced before the interval ran out.
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.stats().lazy_syncs < 2 {
            assert!(Instant::now() < deadline, "no lazy round within 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // One round synced each dirty log once; nothing went through the ack path.
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert_eq!(f.stats().log_syncs, 0);
        // A mark after the round is synced at the latest when the last handle goes.
        f.mark_dirty(a.clone(), Duration::from_secs(3600));
        drop(f);
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.0.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "no final lazy sync within 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}
