//! The payloads of partition groups.
//!
//! Invariant: offsets are a pure function of the committed log prefix — each data entry with
//! `record_count = n` takes the next `n` offsets; blank and membership entries take none — so
//! every replica assigns the same offsets.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

/// One proposed batch of records: the body of one raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRequest {
    /// Encoded record set (opaque to the raft layer; built by the storage crate's codec).
    pub records: Bytes,
    /// Number of records in `records` (= offsets the entry takes).
    pub record_count: u32,
    /// Proposal tag chosen by the proposing node for LEADER acks (0 = none). Not meaningful on
    /// other nodes.
    pub tag: u64,
    /// Base offset of the batch, filled in when the entry is read back from the partition's
    /// storage log (which assigns offsets); `None` on proposal. Never serialized.
    #[serde(skip)]
    pub base_offset: Option<u64>,
}

impl fmt::Display for PartitionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch({} records, {} bytes)",
            self.record_count,
            self.records.len()
        )
    }
}

/// Offsets assigned to a committed batch: `base_offset .. base_offset + record_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    /// First offset of the batch.
    pub base_offset: u64,
    /// Number of records.
    pub record_count: u32,
}

impl Offsets {
    /// Last offset of the batch, `None` for an empty batch.
    pub fn last_offset(&self) -> Option<u64> {
        (self.record_count > 0).then(|| self.base_offset + u64::from(self.record_count) - 1)
    }
}

/// What applying an entry returns to its proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionResponse {
    /// A data entry: its offsets.
    Data(Offsets),
    /// A blank or membership entry (takes no offsets).
    Control,
}

/// The metadata-only snapshot of a partition group (applied log id and membership travel in the
/// openraft snapshot meta next to it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// Next offset to assign.
    pub next_offset: u64,
    /// Last committed offset (inclusive), `None` if nothing was ever committed.
    pub high_watermark: Option<u64>,
    /// Earliest offset still retained by the leader's log.
    pub earliest_offset: u64,
}
