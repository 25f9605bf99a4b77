//! Disk-full protection on the partition leader (issue 7, fault 5).
//!
//! Before a partition leader proposes new messages it asks [`DiskGuard::check`] whether the file
//! system of `data.dir` still has `storage.min.free.bytes` available. Below that margin the
//! messages are refused instead of being proposed: the raft log append would otherwise hit
//! ENOSPC, which stops the partition's raft group.
//! - unary Publish on the leader's node: `ResourceExhausted`;
//! - PublishAsync on the leader's node: an `asyncError` (INTERNAL, Liftbridge's retryable class)
//!   with an empty Ack;
//! - everything that reaches the ingest (NATS publishers, and API publishes through another
//!   node): dropped with a warn log and counted; a message that names an ack inbox gets an
//!   UNKNOWN error ack (Ack.Error has no better fitting code and the proto is frozen).
//!
//! A leader that stays below the margin hands its partitions to in-sync replicas with space
//! within seconds ([`crate::disk_handoff`]), so the refusals last only until clients find the
//! new leader; when every replica is below the margin it keeps leading and refusing.
//!
//! Invariants:
//! - At most one `statvfs(2)` per [`CACHE_FOR`]: the result is cached and shared by every
//!   partition of the node, so the check is not a syscall per message.
//! - A margin of 0 disables the check; a free-space figure that cannot be read (statvfs
//!   failed) never refuses anything (the append path still reports real errors).
//! - Refusals only grow the counter (Prometheus `_total`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long one free-space reading is reused.
pub const CACHE_FOR: Duration = Duration::from_millis(200);

/// The file system of the data directory is below the configured margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "insufficient disk space on the partition leader: {free} bytes free, \
     storage.min.free.bytes is {min}"
)]
pub struct DiskFull {
    /// Bytes available when last read.
    pub free: u64,
    /// The configured margin.
    pub min: u64,
}

/// The cached free-space reading and the refusal counter of one node.
#[derive(Debug, Default)]
pub struct DiskGuard {
    /// `(read at, bytes free)` of the last `statvfs`.
    cache: Mutex<Option<(Instant, Option<u64>)>>,
    /// Messages refused because the disk was below the margin.
    pub rejected: AtomicU64,
    /// Partition leaderships handed off because the disk was below the margin
    /// ([`crate::disk_handoff`]).
    pub handoffs: AtomicU64,
}

impl DiskGuard {
    /// Bytes free on the file system of `dir`, at most [`CACHE_FOR`] old.
    pub fn free_bytes(&self, dir: &Path) -> Option<u64> {
        let now = Instant::now();
        let mut cache = self.cache.lock();
        if let Some((at, free)) = *cache {
            if now.duration_since(at) < CACHE_FOR {
                return free;
            }
        }
        let free = crate::stats::disk_free_bytes(dir);
        *cache = Some((now, free));
        free
    }

    /// `Err` when `dir`'s file system has less than `min` bytes available (`min` = 0: never).
    pub fn check(&self, dir: &Path, min: u64) -> Result<(), DiskFull> {
        if min == 0 {
            return Ok(());
        }
        match self.free_bytes(dir) {
            Some(free) if free < min => Err(DiskFull { free, min }),
            _ => Ok(()),
        }
    }

    /// Counts `n` refused messages; true when this refusal should be logged (the 1st, 2nd,
    /// 4th, 8th, ... so a full disk does not flood the log).
    pub fn count_rejected(&self, n: u64) -> bool {
        let before = self.rejected.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        // A power of two was crossed in (before, after].
        before == 0 || (u64::BITS - before.leading_zeros()) != (u64::BITS - after.leading_zeros())
    }

    /// Messages refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_margin_never_refuses_and_huge_margin_always_does() {
        let g = DiskGuard::default();
        let dir = std::env::temp_dir();
        assert_eq!(g.check(&dir, 0), Ok(()));
        let e = g.check(&dir, u64::MAX).err();
        assert!(e.is_some_and(|e| e.min == u64::MAX && e.free < u64::MAX));
        // An unreadable directory never refuses.
        let g = DiskGuard::default();
        assert_eq!(g.check(Path::new("/no/such/dir/here"), u64::MAX), Ok(()));
    }

    #[test]
    fn readings_are_cached() {
        let g = DiskGuard::default();
        let dir = std::env::temp_dir();
        assert!(g.free_bytes(&dir).is_some());
        // Within CACHE_FOR the cached value is returned even for another path.
        assert!(g.free_bytes(Path::new("/no/such/dir/here")).is_some());
    }

    #[test]
    fn refusals_log_at_powers_of_two() {
        let g = DiskGuard::default();
        let logged: Vec<bool> = (0..9).map(|_| g.count_rejected(1)).collect();
        assert_eq!(
            logged,
            [true, true, false, true, false, false, false, true, false]
        );
        assert_eq!(g.rejected(), 9);
    }
}
