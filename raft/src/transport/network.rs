//! The `RaftNetworkFactory` of one group: binds the shared [`Router`] to a group id.
//!
//! Invariants:
//! - Creating a client records the target's address in the router, so a peer learned from a
//!   membership config is dialable by every group on this node.
//! - Every RPC goes through openraft-multi's adapter over the router, except replication
//!   streams, which ride one `AppendStream` call each when the router has them on
//!   (`super::append_stream`), else openraft's one-request-at-a-time default.

use std::future::Future;

use futures::Stream;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::network::stream_append_sequential;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::RaftNetworkFactory;
use openraft_multi::GroupNetworkAdapter;
use tracing::warn;

use super::append_stream;
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
    type Network = GroupNetwork<C>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        if let Err(e) = self.router.set_peer(target, &node.addr) {
            warn!(target, addr = %node.addr, error = %e, "cannot dial raft peer");
        }
        GroupNetwork {
            rpc: GroupNetworkAdapter::new(self.router.clone(), target, self.group.clone()),
            router: self.router.clone(),
            target,
            group: self.group.clone(),
        }
    }
}

/// The network of one group towards one peer.
pub(crate) struct GroupNetwork<C: GroupKind> {
    /// Unary RPCs.
    rpc: GroupNetworkAdapter<C, GroupId, Router>,
    router: Router,
    target: NodeId,
    group: GroupId,
}

impl<C: GroupKind> RaftNetworkV2<C> for GroupNetwork<C> {
    type SnapshotData = C::Snapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.rpc.append_entries(rpc, option).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
    {
        let window = self.router.stream_window();
        if window == 0 {
            return stream_append_sequential(self, input, option);
        }
        let replies = append_stream::stream_append(
            self.router.clone(),
            window,
            self.target,
            self.group.clone(),
            input,
            option,
        );
        Box::pin(async move { Ok(replies) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc.vote(rpc, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc.pre_vote(rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        self.rpc.full_snapshot(vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.rpc.transfer_leader(req, option).await
    }

    fn backoff(&self) -> Option<Backoff> {
        self.rpc.backoff()
    }
}
