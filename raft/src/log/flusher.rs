//! Group commit: one thread per node makes appended entries durable and then completes the raft
//! callbacks, across all groups.
//!
//! Invariants:
//! - Jobs of one backend complete in submission order (the queue is FIFO and a drained batch
//!   fires its callbacks in order), so a group never sees a later append flushed before an
//!   earlier one.
//! - A callback fires only after a `sync` of its backend that *started after* the append
//!   returned, so a successful callback means the entries are on disk.
//! - One `sync` per distinct backend per drained batch: many groups appending at once share the
//!   cost of the queue wake-up, and repeated appends to one group share one fsync.

use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use tracing::warn;

/// Something that can be made durable.
pub(crate) trait SyncTarget: Send + Sync + 'static {
    /// Makes prior writes durable.
    fn sync_now(&self) -> io::Result<()>;
}

type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

struct Job {
    target: Arc<dyn SyncTarget>,
    done: Done,
}

/// Handle to the node's flusher thread. Cloning shares the thread; it exits when every handle
/// is dropped.
#[derive(Clone)]
pub(crate) struct Flusher {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flusher")
    }
}

impl Flusher {
    /// Starts the flusher thread.
    pub(crate) fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("raft-flusher".into())
            .spawn(move || run(rx))?;
        Ok(Self { tx })
    }

    /// Queues `done` to run after the next sync of `target`. If the thread is gone (shutdown)
    /// `done` runs at once with an error.
    pub(crate) fn submit(&self, target: Arc<dyn SyncTarget>, done: Done) {
        if let Err(mpsc::SendError(job)) = self.tx.send(Job { target, done }) {
            (job.done)(Err(io::Error::other("raft flusher stopped")));
        }
    }
}

fn run(rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // One sync per distinct target, in first-seen order.
        let mut results: Vec<(*const (), io::Result<()>)> = Vec::new();
        for job in &batch {
            let key = Arc::as_ptr(&job.target) as *const ();
            if results.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let r = job.target.sync_now();
            if let Err(e) = &r {
                warn!(error = %e, "raft log sync failed");
            }
            results.push((key, r));
        }
        for job in batch {
            let key = Arc::as_ptr(&job.target) as *const ();
            let r = match results.iter().find(|(k, _)| *k == key) {
                Some((_, Ok(()))) => Ok(()),
                Some((_, Err(e))) => Err(io::Error::new(e.kind(), e.to_string())),
                None => Err(io::Error::other("flusher lost a sync result")),
            };
            (job.done)(r);
        }
    }
}
