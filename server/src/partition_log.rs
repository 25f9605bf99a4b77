//! The readable message log of a partition on this node: what Subscribe, FetchMetadata and
//! FetchPartitionMetadata read.
//!
//! A partition's raft log *is* its `drawbridge_storage::Log` (docs/architecture.md): one raft
//! entry is one record batch, and blank/membership entries are control batches that take no
//! offsets. The raft crate owns that log and exposes it through
//! [`PartitionReplica::log`](drawbridge_raft::PartitionReplica::log); the server only reads it.
//!
//! Invariants:
//! - Offsets are assigned by the log when raft appends an entry, identically on every replica.
//! - The log's high watermark is set by raft as entries are *applied* (i.e. committed), on every
//!   replica, before the proposer learns the batch's offsets. Readers are bounded by it, so
//!   they never see a record raft may still truncate.
//! - Any replica (a new leader after a failover included) serves every committed record its
//!   log holds, not only those written while it led.
//! - The server never appends to, truncates or resets this log; it only reads it (and closes
//!   it at shutdown, after raft stopped).

use drawbridge_raft::PartitionReplica;
use drawbridge_storage::Log;

/// The readable log of a hosted partition replica (a shared handle on the raft log).
pub fn open(replica: &PartitionReplica) -> Log {
    replica.log()
}
