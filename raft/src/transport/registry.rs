//! Group registry: which raft groups this node hosts, by group id.
//!
//! Invariants:
//! - At most one raft instance per group id.
//! - A removed group's handle is dropped from the map before it is shut down, so the transport
//!   stops routing to it first; in-flight calls finish against the stopping instance and get a
//!   "stopped" error.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::partition::PartitionGroup;
use crate::types::MetaRaft;
use crate::types::PartitionId;

/// Whether this node accepts partition leaderships now (see [`GroupRegistry::may_lead`]).
pub(crate) type LeadGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// The groups hosted by this node.
#[derive(Default)]
pub(crate) struct GroupRegistry {
    metadata: RwLock<Option<MetaRaft>>,
    partitions: RwLock<HashMap<PartitionId, Arc<PartitionGroup>>>,
    /// Set by the server (`RaftNode::set_lead_gate`); none = always.
    lead_gate: RwLock<Option<LeadGate>>,
}

impl std::fmt::Debug for GroupRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRegistry")
            .field("metadata", &self.metadata.read().is_some())
            .field("partitions", &self.partitions.read().len())
            .finish()
    }
}

impl GroupRegistry {
    /// Sets the metadata group's handle.
    pub(crate) fn set_metadata(&self, raft: MetaRaft) {
        *self.metadata.write() = Some(raft);
    }

    /// The metadata group's handle, if started.
    pub(crate) fn metadata(&self) -> Option<MetaRaft> {
        self.metadata.read().clone()
    }

    /// Takes the metadata handle out (shutdown).
    pub(crate) fn take_metadata(&self) -> Option<MetaRaft> {
        self.metadata.write().take()
    }

    /// Registers a partition group; returns false if one is already registered.
    pub(crate) fn insert_partition(&self, id: PartitionId, group: Arc<PartitionGroup>) -> bool {
        let mut map = self.partitions.write();
        if map.contains_key(&id) {
            return false;
        }
        map.insert(id, group);
        true
    }

    /// A partition group, if hosted here.
    pub(crate) fn partition(&self, id: &PartitionId) -> Option<Arc<PartitionGroup>> {
        self.partitions.read().get(id).cloned()
    }

    /// Removes a partition group from routing.
    pub(crate) fn remove_partition(&self, id: &PartitionId) -> Option<Arc<PartitionGroup>> {
        self.partitions.write().remove(id)
    }

    /// Removes every partition group from routing.
    pub(crate) fn drain_partitions(&self) -> Vec<Arc<PartitionGroup>> {
        self.partitions.write().drain().map(|(_, g)| g).collect()
    }

    /// Sets what [`Self::may_lead`] asks.
    pub(crate) fn set_lead_gate(&self, gate: LeadGate) {
        *self.lead_gate.write() = Some(gate);
    }

    /// Whether this node accepts a partition leadership handed to it now (answered to a
    /// leader's `MayLead` probe).
    pub(crate) fn may_lead(&self) -> bool {
        let gate = self.lead_gate.read().clone();
        gate.is_none_or(|g| g())
    }

    /// Ids of the hosted partition groups.
    pub(crate) fn partition_ids(&self) -> Vec<PartitionId> {
        self.partitions.read().keys().cloned().collect()
    }
}
