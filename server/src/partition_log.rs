//! The readable message log of a partition on this node: what Subscribe, FetchMetadata and
//! FetchPartitionMetadata read.
//!
//! **Stop-gap until the raft crate exposes its partition log.** The design (docs/architecture.md)
//! is that a partition's raft log *is* a `drawbridge_storage::Log`, and the server reads it
//! directly. `drawbridge-raft` does not expose that log yet (its partition groups keep their
//! entries in their own file log), so the server keeps a second `drawbridge_storage::Log` per
//! partition — a *committed-record log* — and the partition leader appends every batch to it once
//! raft reports the batch committed (with the offsets raft assigned). All reading code works
//! on `drawbridge_storage::Log`, so switching to the raft crate's log is a change to this file
//! only.
//!
//! Invariants:
//! - Only committed batches are appended, in commit order, at exactly the offsets raft assigned
//!   (a batch whose base offset is not the log's next offset is refused, and the log is reset to
//!   raft's next offset when it is behind: the missing range is then unreadable here).
//! - Everything in this log is committed, so its high watermark is its newest offset.
//!
//! Known limitation of the stop-gap: a follower's committed-record log only holds what it
//! appended while it led; a new leader serves records from the point it took over (older
//! records stay in raft, durable and replicated, but are not readable through this log).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use drawbridge_raft::PartitionId;
use drawbridge_storage::{BatchKind, BatchMeta, Log, LogConfig};

use crate::error::{Result, ServerError};

/// Directory of a partition's committed-record log under the data dir.
pub fn dir_of(data_dir: &Path, id: &PartitionId) -> PathBuf {
    let hex: String = id.stream.bytes().map(|b| format!("{b:02x}")).collect();
    data_dir
        .join("streams")
        .join(format!("{hex}-{}", id.partition))
}

/// Opens (recovering) the committed-record log of a partition.
pub fn open(data_dir: &Path, id: &PartitionId, segment_max_bytes: u64) -> Result<Log> {
    let dir = dir_of(data_dir, id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ServerError::Internal(format!("creating {}: {e}", dir.display())))?;
    let config = LogConfig {
        segment_max_bytes: segment_max_bytes
            .clamp(1 << 20, drawbridge_storage::config::MAX_SEGMENT_BYTES),
        preallocate: false,
        ..LogConfig::default()
    };
    let log = Log::open(&dir, config)?;
    log.set_high_watermark(log.newest_offset())?;
    Ok(log)
}

/// Appends one committed batch (`body` = record set) whose first offset raft assigned as
/// `base_offset`, then publishes it to readers.
///
/// The batch's raft index in this log is its own sequence (last + 1): raft's indexes include
/// entries that carry no records. With `sync` the batch is durable when this returns.
pub fn append_committed(
    log: &Log,
    base_offset: u64,
    term: u64,
    body: Bytes,
    sync: bool,
) -> Result<()> {
    let next = log.next_offset();
    if next < base_offset {
        tracing::warn!(
            dir = %log.dir().display(),
            next,
            base_offset,
            "committed-record log is behind raft; skipping the gap"
        );
        log.reset(base_offset)?;
    } else if next > base_offset {
        return Err(ServerError::Internal(format!(
            "committed-record log at offset {next} refuses a batch at {base_offset}"
        )));
    }
    let (last_term, last_index) = log.last_raft_entry().unwrap_or((0, 0));
    let meta = BatchMeta {
        kind: BatchKind::Data,
        raft_term: term.max(last_term),
        raft_index: last_index + 1,
    };
    log.append(meta, body)?;
    if sync {
        log.sync()?;
    }
    log.set_high_watermark(log.newest_offset())?;
    Ok(())
}

/// Deletes a partition's committed-record log.
pub fn remove(data_dir: &Path, id: &PartitionId) -> Result<()> {
    let dir = dir_of(data_dir, id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ServerError::Internal(format!(
            "removing {}: {e}",
            dir.display()
        ))),
    }
}
