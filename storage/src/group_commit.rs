//! Group commit: one flusher thread syncs many logs per round.
//!
//! Choose by what the caller needs:
//! - a callback once durable (openraft's `IOFlushed`): [`GroupCommit::sync_then`];
//! - a future to `.await`: [`GroupCommit::sync`];
//! - acknowledgement per [`SyncPolicy`]: [`GroupCommit::after_append`].
//!
//! Invariants:
//! - A waiter is completed only by a sync round that *started after* the waiter was queued,
//!   so every append that returned before the request is covered.
//! - One round syncs each distinct dirty log once, however many waiters it has, then
//!   completes every waiter of that log with the result (errors are cloned to each).
//! - Callbacks run on the flusher thread: they must be short and must not block (sending
//!   on a channel, completing a oneshot, `IOFlushed::io_completed` are fine).
//! - Logs registered by `SyncPolicy::Interval(d)` are synced within about `d` of becoming
//!   dirty.
//! - Dropping the [`GroupCommit`] completes every queued waiter (after a last round) and joins
//!   the thread; requests after that fail with [`StorageError::Closed`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::config::SyncPolicy;
use crate::error::{Result, StorageError};
use crate::log::Log;

type Callback = Box<dyn FnOnce(Result<()>) + Send + 'static>;

#[derive(Default)]
struct Queue {
    waiters: Vec<(Log, Callback)>,
    /// Interval-policy logs: key → (log, deadline).
    dirty: HashMap<usize, (Log, Instant)>,
    shutdown: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    cv: Condvar,
}

/// The group-commit flusher. Cheap to share behind an `Arc`; one per process is enough.
pub struct GroupCommit {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

fn key(log: &Log) -> usize {
    Arc::as_ptr(&log.shared) as usize
}

impl GroupCommit {
    /// Starts the flusher thread.
    pub fn start() -> Result<GroupCommit> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("drawbridge-flusher".into())
            .spawn(move || flusher(&worker))
            .map_err(|e| StorageError::io("spawning flusher", std::path::Path::new("-"), e))?;
        Ok(GroupCommit {
            inner,
            thread: Some(thread),
        })
    }

    /// Calls `done` once every append to `log` that returned before this call is durable (or
    /// with the sync error).
    pub fn sync_then(&self, log: &Log, done: impl FnOnce(Result<()>) + Send + 'static) {
        let mut q = self.inner.queue.lock();
        if q.shutdown {
            drop(q);
            done(Err(StorageError::Closed));
            return;
        }
        q.waiters.push((log.clone(), Box::new(done)));
        drop(q);
        self.inner.cv.notify_one();
    }

    /// Resolves once every append to `log` that returned before this call is durable.
    pub fn sync(&self, log: &Log) -> impl Future<Output = Result<()>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.sync_then(log, move |r| {
            // The receiver may have been dropped (cancelled future): nothing to do.
            let _ = tx.send(r);
        });
        async move { rx.await.map_err(|_| StorageError::Closed)? }
    }

    /// Acknowledges an append per `policy`: `Always` → `done` after a sync round;
    /// `Interval(d)` → `done(Ok)` now and the log is synced within `d`; `Never` → `done(Ok)` now.
    pub fn after_append(
        &self,
        log: &Log,
        policy: SyncPolicy,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        match policy {
            SyncPolicy::Always => self.sync_then(log, done),
            SyncPolicy::Interval(d) => {
                {
                    let mut q = self.inner.queue.lock();
                    if !q.shutdown {
                        let deadline = Instant::now() + d;
                        q.dirty
                            .entry(key(log))
                            .and_modify(|(_, dl)| *dl = (*dl).min(deadline))
                            .or_insert((log.clone(), deadline));
                    }
                }
                self.inner.cv.notify_one();
                done(Ok(()));
            }
            SyncPolicy::Never => done(Ok(())),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.inner.queue.lock().shutdown = true;
        self.inner.cv.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("group-commit flusher thread panicked");
            }
        }
    }
}

fn flusher(inner: &Inner) {
    loop {
        let (waiters, due, stop) = {
            let mut q = inner.queue.lock();
            loop {
                let now = Instant::now();
                let next_deadline = q.dirty.values().map(|(_, d)| *d).min();
                let any_due = next_deadline.is_some_and(|d| d <= now);
                if !q.waiters.is_empty() || any_due || q.shutdown {
                    break;
                }
                match next_deadline {
                    Some(d) => {
                        let _ = inner.cv.wait_for(
                            &mut q,
                            d.saturating_duration_since(now)
                                .max(Duration::from_micros(50)),
                        );
                    }
                    None => inner.cv.wait(&mut q),
                }
            }
            let now = Instant::now();
            let waiters = std::mem::take(&mut q.waiters);
            let due_keys: Vec<usize> = q
                .dirty
                .iter()
                .filter(|(_, (_, d))| *d <= now || q.shutdown)
                .map(|(k, _)| *k)
                .collect();
            let due: Vec<Log> = due_keys
                .iter()
                .filter_map(|k| q.dirty.remove(k))
                .map(|(l, _)| l)
                .collect();
            (waiters, due, q.shutdown)
        };
        // Sync each distinct log once.
        let mut results: HashMap<usize, Result<()>> = HashMap::new();
        for log in waiters.iter().map(|(l, _)| l).chain(due.iter()) {
            results.entry(key(log)).or_insert_with(|| {
                let r = log.sync();
                if let Err(e) = &r {
                    tracing::error!(dir = %log.dir().display(), error = %e, "group-commit sync failed");
                }
                r
            });
        }
        for (log, done) in waiters {
            let r = results.get(&key(&log)).cloned().unwrap_or(Ok(()));
            done(r);
        }
        if stop && inner.queue.lock().waiters.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;

    #[test]
    fn waiters_complete_and_drop_flushes_them() -> Result<()> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageError::io("tempdir", std::path::Path::new("/tmp"), e))?;
        let log = Log::open(dir.path(), LogConfig::default())?;
        let gc = GroupCommit::start()?;
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..100 {
            let tx = tx.clone();
            gc.sync_then(&log, move |r| {
                let _ = tx.send(r.is_ok());
            });
        }
        drop(gc);
        // Every waiter queued before the drop was completed successfully.
        let done: Vec<bool> = rx.try_iter().collect();
        assert_eq!(done.len(), 100);
        assert!(done.iter().all(|ok| *ok));
        Ok(())
    }
}
