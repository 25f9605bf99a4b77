//! The openraft type configurations and the ids every other module shares.
//!
//! Invariants:
//! - A log id is `(term, index)`: both configs use `leader_id_std::LeaderId`, so the committed
//!   leader id inside a log id is just the term (no node id is stored per entry).
//! - Node ids are `u64`, stable for the life of a node's data directory.
//! - These types never leave this crate: the server sees [`GroupId`], [`NodeId`] and our own
//!   handles, never an openraft type.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::metadata::MetadataCommand;
use crate::metadata::MetadataResponse;
use crate::partition::PartitionRequest;
use crate::partition::PartitionResponse;

/// Identifies a Drawbridge node (a process with its own data directory).
pub type NodeId = u64;

/// How a node is reached: its raft transport address, `host:port`.
pub(crate) type Node = openraft::BasicNode;

/// Identifies a partition raft group: the stream name and the partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionId {
    /// Stream name, as created by the client.
    pub stream: String,
    /// Partition number within the stream, `0..partitions`.
    pub partition: i32,
}

impl PartitionId {
    /// Builds a partition id.
    pub fn new(stream: impl Into<String>, partition: i32) -> Self {
        Self {
            stream: stream.into(),
            partition,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stream, self.partition)
    }
}

/// Identifies one raft group hosted on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GroupId {
    /// The cluster-wide metadata group.
    Metadata,
    /// The group replicating one partition.
    Partition(PartitionId),
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Metadata => f.write_str("metadata"),
            GroupId::Partition(p) => write!(f, "partition:{p}"),
        }
    }
}

/// The leader id type of both configs: `(term, voted_for)`; committed form is the term alone.
pub(crate) type StdLeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;

openraft::declare_raft_types!(
    /// Type config of the metadata group.
    pub MetaTypes:
        D = MetadataCommand,
        R = MetadataResponse,
        NodeId = NodeId,
        Node = Node,
        LeaderId = StdLeaderId,
);

openraft::declare_raft_types!(
    /// Type config of every partition group.
    pub PartitionTypes:
        D = PartitionRequest,
        R = PartitionResponse,
        NodeId = NodeId,
        Node = Node,
        LeaderId = StdLeaderId,
);

/// The metadata group's raft handle.
pub(crate) type MetaRaft = openraft::Raft<MetaTypes, crate::metadata::MetaStateMachine>;
/// A partition group's raft handle.
pub(crate) type PartitionRaft =
    openraft::Raft<PartitionTypes, crate::partition::PartitionStateMachine>;
