//! Catch-up after an unclean stop under a lazy log sync policy (issue 7).
//!
//! Under [`LogSyncPolicy::Interval`](crate::LogSyncPolicy) and
//! [`LogSyncPolicy::Never`](crate::LogSyncPolicy) a follower acknowledges an append (and so
//! counts towards the commit quorum) once it is in the page cache. A machine crash can then
//! take from its log entries that were committed with its help; restarted with the shorter
//! log, its vote could elect a leader that lacks them, and they would be lost. So such a node
//! must not vote, nor campaign, until a leader has brought its log back over everything that
//! was committed.
//!
//! Per partition group, a **clean-shutdown marker** (`clean-shutdown` in the group's dir):
//! - written (file and directory fsynced) only after the group's raft stopped and its log was
//!   closed successfully (closing syncs the log), on a graceful node shutdown or group removal
//!   that keeps the data; a close or sync that fails (a power cut in progress) writes none;
//! - removed (and the removal fsynced) when the group is opened, before its raft starts, so a
//!   marker present at open always means "the last stop synced everything".
//!
//! A group opens **catching up** ([`CatchUp`]) when its dir held a log, no marker was found,
//! the node's policy is lazy, and it is not the group's only voter. While catching up:
//! - vote and pre-vote requests are answered with a rejecting `VoteResponse` (the local vote,
//!   `vote_granted = false`) by the transport, without reaching openraft;
//! - the node's scheduler never triggers an election for it, and openraft's own elections
//!   (its tick, in the `partition_openraft_tick` mode) are switched off until the hold ends;
//! - it accepts append-entries and snapshots as any follower does.
//!
//! It has **caught up** once it accepted an append-entries whose `leader_commit` is an entry of
//! the sending leader's own term and its log then matches the leader's up to that index. (A
//! leader has every committed entry; once it committed one of its own term, every committed
//! entry lies at or below its commit index, so the node's log now holds them all.) A snapshot
//! install alone does not end the catch-up: append-entries follow it at once.
//!
//! Liveness: if a majority of a group's voters restart unclean at once, the group has no
//! leader until enough clean (or caught-up) voters are back to elect one — the price of not
//! losing acknowledged entries. If every voter restarted unclean nobody can ever catch up: the
//! hold ends after `RaftConfig::unclean_restart_hold_ms` (default 5 minutes; `None` waits for
//! ever), and the nodes then vote with what their disks kept (entries committed only in page
//! caches may be lost, as they would be without this module). A single-voter group never
//! holds: there is no one to catch up from.

use std::fs::File;
use std::io;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use drawbridge_storage::powerloss;
use parking_lot::Mutex;
use tracing::info;
use tracing::warn;

/// File name of the clean-shutdown marker in a partition group's directory.
pub(crate) const CLEAN_MARKER: &str = "clean-shutdown";

/// Removes the marker of the group in `dir` (durably); returns whether it was there.
pub(crate) fn take_marker(dir: &Path) -> io::Result<bool> {
    let path = dir.join(CLEAN_MARKER);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            powerloss::sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes the marker of the group in `dir` and makes it durable. Call only after the group's
/// raft stopped and its log closed without error.
pub(crate) fn write_marker(dir: &Path) -> io::Result<()> {
    let path = dir.join(CLEAN_MARKER);
    let r = (|| {
        let mut f = File::create(&path)?;
        powerloss::created(&path);
        let body = b"drawbridge partition group stopped cleanly\n";
        f.write_all(body)?;
        powerloss::wrote(&path, 0, body.len() as u64);
        powerloss::sync_file(&f, &path, false)?;
        powerloss::sync_dir(dir)
    })();
    if r.is_err() {
        // A marker that is not durable must not survive either: best effort, a power cut
        // would drop its entry anyway.
        let _ = std::fs::remove_file(&path);
    }
    r
}

/// Whether a group is still catching up after an unclean stop (see the module docs). Shared
/// by the transport (which answers votes and ends the catch-up) and the scheduler (which does
/// not campaign meanwhile).
#[derive(Default)]
pub(crate) struct CatchUp {
    holding: AtomicBool,
    /// When the hold gives up, if ever.
    until: Mutex<Option<Instant>>,
    /// Runs once when the hold ends (re-enables openraft's own elections, which are off
    /// while holding).
    on_release: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUp")
            .field("holding", &self.holding.load(Ordering::Relaxed))
            .finish()
    }
}

impl CatchUp {
    /// Starts holding votes and elections, for at most `limit` (`None`: until caught up);
    /// `on_release` runs when the hold ends.
    pub(crate) fn begin(
        &self,
        limit: Option<Duration>,
        on_release: impl FnOnce() + Send + 'static,
    ) {
        *self.until.lock() = limit.map(|l| Instant::now() + l);
        *self.on_release.lock() = Some(Box::new(on_release));
        self.holding.store(true, Ordering::Release);
    }

    fn release(&self) {
        if let Some(f) = self.on_release.lock().take() {
            f();
        }
    }

    /// Whether votes and elections are held now. Past the limit, the hold ends (logged once).
    pub(crate) fn holds(&self) -> bool {
        if !self.holding.load(Ordering::Acquire) {
            return false;
        }
        let expired = self.until.lock().is_some_and(|t| Instant::now() >= t);
        if expired && self.holding.swap(false, Ordering::AcqRel) {
            warn!(
                "no leader caught this group up after its unclean restart within the hold \
                 limit: it votes and campaigns with the log its disk kept"
            );
            self.release();
            return false;
        }
        !expired
    }

    /// The group caught up with a leader: it votes and campaigns again.
    pub(crate) fn caught_up(&self) {
        if self.holding.swap(false, Ordering::AcqRel) {
            info!("caught up with the leader after an unclean restart: voting again");
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(!take_marker(dir.path())?);
        write_marker(dir.path())?;
        assert!(take_marker(dir.path())?);
        assert!(!take_marker(dir.path())?, "taking the marker removes it");
        Ok(())
    }

    #[test]
    fn hold_ends_when_caught_up_or_at_the_limit() {
        let c = CatchUp::default();
        assert!(!c.holds());
        let released = std::sync::Arc::new(AtomicBool::new(false));
        let r = released.clone();
        c.begin(None, move || r.store(true, Ordering::Relaxed));
        assert!(c.holds());
        assert!(!released.load(Ordering::Relaxed));
        c.caught_up();
        assert!(!c.holds());
        assert!(released.load(Ordering::Relaxed), "catching up releases");
        let r = released.clone();
        released.store(false, Ordering::Relaxed);
        c.begin(Some(Duration::ZERO), move || {
            r.store(true, Ordering::Relaxed)
        });
        assert!(!c.holds(), "a zero limit ends the hold at once");
        assert!(released.load(Ordering::Relaxed), "expiring releases");
    }
}
