//! The error type of the raft layer.
//!
//! Every failure the server can see is a [`RaftError`] variant with the structure it needs to map
//! it to a gRPC status in one place: "not the leader, try node N at address A", "no such group",
//! "timed out", "storage failed". openraft errors are converted here and never escape the crate.

use std::io;

use crate::types::GroupId;
use crate::types::NodeId;

/// Errors of the raft layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This node is not the leader of the group; the leader is `leader_id` at `leader_addr` when
    /// known.
    #[error("not the leader of {group}; leader is {leader_id:?} at {leader_addr:?}")]
    NotLeader {
        /// The group the request was for.
        group: GroupId,
        /// The current leader, when this node knows it.
        leader_id: Option<NodeId>,
        /// The current leader's raft address, when known.
        leader_addr: Option<String>,
    },
    /// The proposal was appended by a leader that lost leadership before it committed: it may or
    /// may not commit through the next leader, so a retry needs deduplication.
    #[error("proposal to {group} discarded on leader change; commit status unknown; leader is {leader_id:?}")]
    CommitUnknown {
        /// The group.
        group: GroupId,
        /// The new leader, when known.
        leader_id: Option<NodeId>,
        /// Its raft address, when known.
        leader_addr: Option<String>,
    },
    /// The group is not hosted on this node.
    #[error("raft group {0} is not hosted on this node")]
    GroupNotFound(GroupId),
    /// The group already exists on this node.
    #[error("raft group {0} already exists on this node")]
    GroupExists(GroupId),
    /// The group's raft instance has stopped (shutdown, or a fatal storage error).
    #[error("raft group {group} stopped: {reason}")]
    Stopped {
        /// The group.
        group: GroupId,
        /// Why it stopped.
        reason: String,
    },
    /// A wait did not finish in time.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        ms: u64,
    },
    /// The request was rejected by the state machine (e.g. stream already exists).
    #[error("rejected: {0}")]
    Rejected(String),
    /// A membership change failed.
    #[error("membership change failed: {0}")]
    Membership(String),
    /// Invalid settings.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// Local storage failed.
    #[error("storage: {0}")]
    Storage(#[from] io::Error),
    /// The transport failed (bind, connect).
    #[error("transport: {0}")]
    Transport(String),
    /// Bytes from disk or from a peer did not decode.
    #[error("corrupt or undecodable {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
}
