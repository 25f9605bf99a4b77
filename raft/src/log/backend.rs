//! The contract between [`LogStore`](super::LogStore) and the place entries live.
//!
//! A backend stores a contiguous run of raft entries `first..=last` (possibly empty). It knows
//! nothing about votes or commit points; the store keeps those in the meta file.

use std::io;

use openraft::alias::LogIdOf;
use openraft::RaftTypeConfig;

use super::flusher::SyncTarget;

/// Where a group's raft entries live.
///
/// Methods are synchronous and short (buffered writes, in-memory indexes); the only slow call is
/// [`SyncTarget::sync_now`] (fsync), which the node's [`Flusher`](super::Flusher) thread makes.
pub(crate) trait LogBackend<C: RaftTypeConfig>: SyncTarget {
    /// Appends entries after the current last entry.
    ///
    /// Correctness rules:
    /// 1. Entries are consecutive and start at `last + 1`, or at any index when the log is empty
    ///    (after creation, or after a purge that removed every entry). A gap is an error.
    /// 2. On return the entries are readable by [`LogBackend::read`]; they are durable only once
    ///    a later [`SyncTarget::sync_now`] returns.
    fn append(&self, entries: Vec<C::Entry>) -> io::Result<()>;

    /// Returns the entries with index in `start..end` that the log holds, in order.
    fn read(&self, start: u64, end: u64) -> io::Result<Vec<C::Entry>>;

    /// The log id of the last entry held, `None` when empty.
    fn last_log_id(&self) -> io::Result<Option<LogIdOf<C>>>;

    /// Deletes every entry with index greater than `index` (`None`: every entry).
    ///
    /// Correctness rules:
    /// 1. Only ever called for uncommitted entries: readers of committed data never see a
    ///    truncated entry, because they read up to the high watermark only.
    /// 2. Must not leave a hole: it removes a suffix.
    /// 3. Durable on return.
    fn truncate_after(&self, index: Option<u64>) -> io::Result<()>;

    /// Deletes every entry with index `<= log_id.index`; when that is past the last entry the
    /// log becomes empty and the next append may start at `log_id.index + 1`.
    ///
    /// Correctness rules:
    /// 1. Only entries covered by a snapshot are purged (openraft guarantees it).
    /// 2. Removes a prefix; may keep more than asked (whole segments) but reads must then still
    ///    not return entries `<= log_id.index`: the store filters them.
    fn purge_through(&self, log_id: &LogIdOf<C>) -> io::Result<()>;

    /// Whether [`LogBackend::append`] and [`LogBackend::purge_through`] leave the log exactly
    /// as it was when they fail for lack of space ([`is_no_space`](super::nospace::is_no_space)), so the store may
    /// wait and call them again with the same arguments instead of failing the group (see
    /// [`nospace`](super::nospace)).
    ///
    /// No default: a backend must say whether its failed writes can leave a partial record
    /// behind (the partition groups' backend can, and has a supervisor that reopens it).
    fn retries_when_full(&self) -> bool;
}
