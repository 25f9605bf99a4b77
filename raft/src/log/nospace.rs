//! Waiting out a full disk (ENOSPC, EDQUOT) in the metadata group's log and the node's raft
//! state journal instead of failing the write.
//!
//! Why: openraft stops a group for good when a log-storage call returns an error. For the
//! metadata group that means a node that never again takes part in cluster metadata (and a
//! /readyz that stays 503), for a condition that is usually temporary: an operator frees space,
//! retention deletes a segment. So the two writers that every metadata change goes through
//! ([`FileLog`](super::FileLog) appends and purges, [`Journal`](super::journal::Journal)
//! appends) treat "no space" as *wait and retry*, and every other io error as fatal, as before.
//!
//! Invariants:
//! - Only [`is_no_space`] errors are retried; anything else is returned at once.
//! - A write that failed for lack of space leaves its file exactly as before the write: the
//!   writer cuts the file back to its last good length (`set_len`) before it waits, so a
//!   partial frame never stays on disk and the retried write lands exactly once, right after
//!   the last good frame (both files are `O_APPEND`: the next write goes to EOF, which is why
//!   the cut matters). When the cut itself fails the writer refuses every later write (the
//!   file would otherwise hold garbage between two good frames).
//! - Waits back off from [`FIRST_WAIT`] doubling to [`MAX_WAIT`], without an upper bound on
//!   their number: a write waits as long as the disk is full. One WARN when a writer starts
//!   waiting, one INFO when its write succeeds again; every wait is counted ([`waits`],
//!   exported by the server as `drawbridge_raft_disk_full_waits_total`).
//! - What blocks while it waits, and why that is raft-safe:
//!   - a metadata log append (or purge) is awaited by the metadata group's openraft core, so
//!     that group makes no progress on this node; the wait is an async sleep, no runtime worker
//!     is held. To the other members the node looks paused: a follower stops acknowledging
//!     (the leader keeps the entries for it), a leader stops appending and heartbeat replies
//!     show a stale node, so the others elect a new leader once its lease runs out. Nothing is
//!     acknowledged that is not on disk, so no raft guarantee depends on the wait's length.
//!   - a journal append blocks the node's flusher thread, so *every* group's fsync callbacks
//!     and saved votes on this node wait with it (FIFO order is kept: nothing completes out of
//!     order). Partition groups on a full disk are refused new messages earlier (the server's
//!     `storage.min.free.bytes` check), so in practice only elections and commit records wait.
//! - fsync errors are *not* retried, whatever their kind: after a failed fsync the kernel may
//!   have dropped the dirty pages, so a retry could report success for data that is gone.
//!
//! State machine snapshots (the `snapshot` file of the metadata group and of every partition
//! group, [`meta_file::store_framed`](super::meta_file::store_framed)) are the one other kind
//! of file a group writes while it runs, and they are treated differently:
//! - A snapshot that openraft builds on its own schedule (or that retention asks for) is
//!   optional: the log still holds everything it would cover. When writing it finds the disk
//!   full it is *abandoned* ([`SnapshotSkips::abandoned`]): its tmp file is removed, the
//!   previous snapshot stays current (openraft is told so, which purges nothing), one WARN per
//!   streak of abandoned snapshots, each counted ([`snapshots_abandoned`], exported as
//!   `drawbridge_raft_snapshots_abandoned_total`). openraft builds again at its next trigger,
//!   but not within [`MAX_WAIT`] of an abandoned one ([`SnapshotSkips::deferring`]: the
//!   builder is refused, which openraft takes as "deferred").
//! - A snapshot that must exist is waited for like a log write (backoff, no bound): one
//!   installed from the leader (the follower's log was reset to continue it), and one openraft
//!   rebuilds at startup because the log was purged past the persisted one.

use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use tracing::info;
use tracing::warn;

/// The first wait after a write failed for lack of space.
pub(crate) const FIRST_WAIT: Duration = Duration::from_millis(50);
/// The longest wait between two attempts.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(2);

static WAITS: AtomicU64 = AtomicU64::new(0);
static SNAPSHOTS_ABANDONED: AtomicU64 = AtomicU64::new(0);

/// Snapshots abandoned so far, in this process, because writing them found the disk full.
pub(crate) fn snapshots_abandoned() -> u64 {
    SNAPSHOTS_ABANDONED.load(Ordering::Relaxed)
}

/// Waits made so far, in this process, because a metadata log or journal write found the disk
/// full (each backoff step counts one).
pub(crate) fn waits() -> u64 {
    WAITS.load(Ordering::Relaxed)
}

/// Whether `e` says the file system (or the user's quota) has no room left.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The backoff state of one write that found the disk full.
#[derive(Debug)]
pub(crate) struct Backoff {
    what: &'static str,
    path: String,
    next: Duration,
    since: Option<Instant>,
}

impl Backoff {
    /// A write of `what` to `target` (both for the logs) that has not failed yet.
    pub(crate) fn new(what: &'static str, target: String) -> Self {
        Self {
            what,
            path: target,
            next: FIRST_WAIT,
            since: None,
        }
    }

    /// Records a failed attempt (`e`) and returns how long to wait before the next one. Logs a
    /// WARN on the first.
    pub(crate) fn failed(&mut self, e: &io::Error) -> Duration {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            warn!(what = self.what, path = %self.path, error = %e,
                "disk full: waiting for space before retrying the write");
        }
        WAITS.fetch_add(1, Ordering::Relaxed);
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_WAIT);
        wait
    }

    /// Records the success that ends the wait (an INFO if there was one).
    pub(crate) fn succeeded(self) {
        if let Some(since) = self.since {
            info!(what = self.what, path = %self.path, waited_ms = since.elapsed().as_millis() as u64,
                "disk space back: write succeeded after waiting");
        }
    }
}

/// The abandoned-snapshot streak of one group's state machine (see the module docs): a WARN
/// for the first snapshot abandoned after a success, an INFO for the first success after.
#[derive(Debug)]
pub(crate) struct SnapshotSkips {
    what: &'static str,
    skipping: std::sync::atomic::AtomicBool,
    /// When the last snapshot was abandoned.
    last_abandoned: parking_lot::Mutex<Option<Instant>>,
}

impl SnapshotSkips {
    /// No snapshot of `what` (for the logs) abandoned yet.
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            skipping: std::sync::atomic::AtomicBool::new(false),
            last_abandoned: parking_lot::Mutex::new(None),
        }
    }

    /// Whether an optional snapshot should not even be tried now: one was abandoned less than
    /// [`MAX_WAIT`] ago (openraft asks again at every applied entry once its policy says a
    /// snapshot is due; this keeps a full disk from being probed with a snapshot write each
    /// time).
    pub(crate) fn deferring(&self) -> bool {
        self.last_abandoned
            .lock()
            .is_some_and(|at| at.elapsed() < MAX_WAIT)
    }

    /// Counts a snapshot to `path` abandoned because of `e`; WARNs if it starts a streak.
    pub(crate) fn abandoned(&self, path: &Path, e: &io::Error) {
        SNAPSHOTS_ABANDONED.fetch_add(1, Ordering::Relaxed);
        *self.last_abandoned.lock() = Some(Instant::now());
        if !self.skipping.swap(true, Ordering::Relaxed) {
            warn!(what = self.what, path = %path.display(), error = %e,
                "disk full: snapshot abandoned, the previous one stays current (the log keeps \
                 everything); retried at the next snapshot trigger");
        }
    }

    /// Records a snapshot persisted; an INFO if it ends a streak.
    pub(crate) fn persisted(&self, path: &Path) {
        if self.skipping.swap(false, Ordering::Relaxed) {
            info!(what = self.what, path = %path.display(), "disk space back: snapshot persisted");
        }
    }
}

/// Test seam: makes the next `n` writes through [`write_all`] to `path` write half their bytes
/// and then fail with ENOSPC (as a real short write on a full disk does).
#[cfg(test)]
pub(crate) fn inject_full(path: &Path, n: u32) {
    inject::FAILS.lock().insert(path.to_path_buf(), n);
}

#[cfg(test)]
mod inject {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::LazyLock;

    use parking_lot::Mutex;

    pub(super) static FAILS: LazyLock<Mutex<HashMap<PathBuf, u32>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));

    /// Whether the next write to `path` is to fail (and counts it).
    pub(super) fn take(path: &std::path::Path) -> bool {
        let mut m = FAILS.lock();
        match m.get_mut(path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// `file.write_all(buf)`; under `cfg(test)` a write to a path given to `inject_full` writes
/// half of `buf` and fails with ENOSPC instead.
pub(crate) fn write_all(file: &mut std::fs::File, path: &Path, buf: &[u8]) -> io::Result<()> {
    use std::io::Write;
    #[cfg(test)]
    if inject::take(path) {
        file.write_all(&buf[..buf.len() / 2])?;
        return Err(io::Error::from(io::ErrorKind::StorageFull));
    }
    #[cfg(not(test))]
    let _ = path;
    file.write_all(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_no_space_other_errors_are_not() {
        assert!(is_no_space(&io::Error::from_raw_os_error(28)));
        assert!(is_no_space(&io::Error::from_raw_os_error(122)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(5)));
        assert!(!is_no_space(&io::Error::other("x")));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new("test", "/x".into());
        let e = io::Error::from(io::ErrorKind::StorageFull);
        let before = waits();
        let steps: Vec<Duration> = (0..8).map(|_| b.failed(&e)).collect();
        assert_eq!(steps[0], FIRST_WAIT);
        assert_eq!(steps[1], FIRST_WAIT * 2);
        assert_eq!(steps[5], Duration::from_millis(1600));
        assert_eq!(steps[6], MAX_WAIT);
        assert_eq!(steps[7], MAX_WAIT);
        assert!(waits() >= before + 8);
        b.succeeded();
    }
}
