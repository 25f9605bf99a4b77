//! The `RaftNetworkFactory` of one group: binds the shared [`Router`] to a group id.
//!
//! Invariant: creating a client records the target's address in the router, so a peer learned
//! from a membership config is dialable by every group on this node.

use openraft::RaftNetworkFactory;
use openraft_multi::GroupNetworkAdapter;
use tracing::warn;

use super::group_kind::GroupKind;
use super::router::Router;
use crate::types::GroupId;
use crate::types::Node;
use crate::types::NodeId;

/// Network factory for one group.
#[derive(Debug, Clone)]
pub(crate) struct NetworkFactory {
    router: Router,
    group: GroupId,
}

impl NetworkFactory {
    /// A factory for `group` over `router`.
    pub(crate) fn new(router: Router, group: GroupId) -> Self {
        Self { router, group }
    }
}

impl<C: GroupKind> RaftNetworkFactory<C> for NetworkFactory {
    type Network = GroupNetworkAdapter<C, GroupId, Router>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        if let Err(e) = self.router.set_peer(target, &node.addr) {
            warn!(target, addr = %node.addr, error = %e, "cannot dial raft peer");
        }
        GroupNetworkAdapter::new(self.router.clone(), target, self.group.clone())
    }
}
