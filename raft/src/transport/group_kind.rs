//! Per-config wire facts: the snapshot payload type of each kind of group.

use serde::de::DeserializeOwned;
use serde::Serialize;

use openraft::RaftTypeConfig;

use crate::metadata::MetadataState;
use crate::partition::PartitionSnapshot;
use crate::types::MetaTypes;
use crate::types::NodeId;
use crate::types::PartitionTypes;

/// A raft type config that the shared transport can carry.
pub(crate) trait GroupKind:
    RaftTypeConfig<NodeId = NodeId, Node = crate::types::Node>
{
    /// The state machine's snapshot payload (metadata only for both kinds, so it fits one RPC).
    type Snapshot: Serialize + DeserializeOwned + Send + Sync + 'static;
}

impl GroupKind for MetaTypes {
    type Snapshot = MetadataState;
}

impl GroupKind for PartitionTypes {
    type Snapshot = PartitionSnapshot;
}
