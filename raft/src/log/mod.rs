//! Raft log storage: one generic [`LogStore`] that implements openraft's `RaftLogStorage` over a
//! [`LogBackend`], plus the pieces it is built from.
//!
//! - [`backend`]: the contract a log backend fulfils (append readable-on-return, explicit sync,
//!   truncate after an index, purge through an index, range reads).
//! - [`file_log`]: a small append-only file backend, used by the metadata group.
//! - [`meta_file`]: vote, committed log id and last-purged log id, written atomically.
//! - [`flusher`]: one thread per node that syncs backends and then fires the raft callbacks
//!   (group commit across groups).
//! - [`store`]: the `RaftLogStorage` / `RaftLogReader` implementation.

pub(crate) mod backend;
pub(crate) mod file_log;
pub(crate) mod flusher;
pub(crate) mod meta_file;
pub(crate) mod store;

pub(crate) use file_log::FileLog;
pub(crate) use flusher::Flusher;
pub(crate) use store::LogStore;
