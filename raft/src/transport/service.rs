//! Server side of the transport: the `RaftTransport` gRPC service, dispatching by group id.
//!
//! Invariants:
//! - An unknown group, a stopped group or an undecodable payload is answered with a typed
//!   `RaftFailure`, never a panic and never a gRPC transport error (so the sender can tell
//!   "the peer is up but lacks the group" from "the peer is down").

use std::sync::Arc;

use drawbridge_proto::raft as pb;
use drawbridge_proto::raft::raft_failure::Code;
use drawbridge_proto::raft::raft_transport_server::RaftTransport;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::VoteOf;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::Raft;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::group_kind::GroupKind;
use super::registry::GroupRegistry;
use super::wire;
use crate::codec;
use crate::types::GroupId;

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    PreVote,
    Snapshot,
    TransferLeader,
}

/// The transport service of one node.
#[derive(Debug, Clone)]
pub(crate) struct TransportService {
    registry: Arc<GroupRegistry>,
}

impl TransportService {
    /// A service answering for the groups in `registry`.
    pub(crate) fn new(registry: Arc<GroupRegistry>) -> Self {
        Self { registry }
    }

    /// Handles one request in its own task, so that a request the peer stops waiting for
    /// (its RPC timed out while this node was busy) is still delivered to the group: a late
    /// heartbeat still resets the follower's election timer, a late vote is still recorded.
    async fn dispatch(&self, req: pb::RaftRequest, rpc: Rpc) -> pb::RaftReply {
        let me = self.clone();
        match tokio::spawn(async move { me.dispatch_inline(req, rpc).await }).await {
            Ok(reply) => reply,
            Err(e) => wire::failure(Code::Unknown, format!("raft request task failed: {e}")),
        }
    }

    async fn dispatch_inline(&self, req: pb::RaftRequest, rpc: Rpc) -> pb::RaftReply {
        let group = match wire::group_from_pb(req.group) {
            Ok(g) => g,
            Err(e) => return wire::failure(Code::BadRequest, e.to_string()),
        };
        match &group {
            GroupId::Metadata => match self.registry.metadata() {
                Some(raft) => handle(&raft, rpc, &req.payload).await,
                None => wire::failure(Code::GroupNotFound, format!("group {group} not hosted")),
            },
            GroupId::Partition(p) => match self.registry.partition(p) {
                Some(g) => handle(g.raft(), rpc, &req.payload).await,
                None => wire::failure(Code::GroupNotFound, format!("group {group} not hosted")),
            },
        }
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> pb::RaftReply {
    match r {
        Ok(v) => match codec::encode(&v) {
            Ok(bytes) => wire::success(bytes),
            Err(e) => wire::failure(Code::Unknown, e.to_string()),
        },
        Err(e) => wire::failure(Code::GroupStopped, e.to_string()),
    }
}

async fn handle<C, SM>(raft: &Raft<C, SM>, rpc: Rpc, payload: &[u8]) -> pb::RaftReply
where
    C: GroupKind,
    SM: RaftStateMachine<C, SnapshotData = C::Snapshot>,
{
    let bad = |e: crate::error::RaftError| wire::failure(Code::BadRequest, e.to_string());
    match rpc {
        Rpc::Append => match codec::decode::<AppendEntriesRequest<C>>("append entries", payload) {
            Ok(req) => reply(raft.append_entries(req).await),
            Err(e) => bad(e),
        },
        Rpc::Vote => match codec::decode::<VoteRequest<C>>("vote", payload) {
            Ok(req) => reply(raft.vote(req).await),
            Err(e) => bad(e),
        },
        Rpc::PreVote => match codec::decode::<VoteRequest<C>>("pre-vote", payload) {
            Ok(req) => reply(raft.pre_vote(req).await),
            Err(e) => bad(e),
        },
        Rpc::Snapshot => {
            match codec::decode::<(VoteOf<C>, SnapshotMetaOf<C>, C::Snapshot)>("snapshot", payload)
            {
                Ok((vote, meta, snapshot)) => reply(
                    raft.install_full_snapshot(vote, Snapshot { meta, snapshot })
                        .await,
                ),
                Err(e) => bad(e),
            }
        }
        Rpc::TransferLeader => {
            match codec::decode::<TransferLeaderRequest<C>>("transfer leader", payload) {
                Ok(req) => reply(raft.handle_transfer_leader(req).await),
                Err(e) => bad(e),
            }
        }
    }
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.dispatch(req.into_inner(), Rpc::Append).await,
        ))
    }

    async fn vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.dispatch(req.into_inner(), Rpc::Vote).await,
        ))
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.dispatch(req.into_inner(), Rpc::PreVote).await,
        ))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.dispatch(req.into_inner(), Rpc::Snapshot).await,
        ))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.dispatch(req.into_inner(), Rpc::TransferLeader).await,
        ))
    }
}
