//! Raft log storage: one generic [`LogStore`] that implements openraft's `RaftLogStorage` over a
//! `LogBackend` (see `backend`), plus the pieces it is built from.
//!
//! - [`backend`]: the contract a log backend fulfils (append readable-on-return, explicit sync,
//!   truncate after an index, purge through an index, range reads).
//! - [`file_log`]: a small append-only file backend, used by the metadata group.
//! - [`journal`]: the node's raft state journal: vote, committed and last-purged log ids of
//!   every group, one append-only file group-committed by the flusher.
//! - [`meta_file`]: the per-group state type and atomically replaced framed files (snapshots).
//! - [`nospace`]: waiting out ENOSPC/EDQUOT in the metadata log and the journal (cut back,
//!   back off, retry) instead of failing the group.
//! - [`snapshot_file`]: a state machine's snapshot file, and whether a write to it abandons
//!   or waits when the disk is full (shared by the metadata and partition state machines).
//! - [`flusher`]: one thread per node that syncs backends and the journal (in parallel) and then
//!   fires the raft callbacks (group commit across groups).
//! - [`storage_log`]: the partition groups' backend, a `drawbridge_storage::Log` (the raft log
//!   *is* the partition's message log).
//! - [`store`]: the `RaftLogStorage` / `RaftLogReader` implementation.

pub(crate) mod backend;
pub(crate) mod file_log;
pub(crate) mod flusher;
pub(crate) mod journal;
pub(crate) mod meta_file;
pub(crate) mod nospace;
pub(crate) mod snapshot_file;
pub(crate) mod storage_log;
pub(crate) mod store;

pub(crate) use file_log::FileLog;
pub(crate) use flusher::Flusher;
pub(crate) use storage_log::StorageLog;
pub(crate) use store::LogStore;
