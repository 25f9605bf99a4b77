//! Server side of the transport: the `RaftTransport` gRPC service, dispatching by group id.
//!
//! Invariants:
//! - An unknown group, a stopped group or an undecodable payload is answered with a typed
//!   `RaftFailure`, never a panic and never a gRPC transport error (so the sender can tell
//!   "the peer is up but lacks the group" from "the peer is down").
//! - A request without a group on `AppendEntries` is a batch of coalesced heartbeats
//!   (`super::coalesce`); each is handled as if it had come alone.
//! - A partition group's last-contact clock (which its election timer reads, see
//!   `crate::scheduler`) is stamped only for the group's current leader or a candidate it
//!   voted for: when an append-entries or snapshot arrives under a committed vote not older
//!   than the local one, when the group accepted one (the reply carries no higher vote), and
//!   when it granted a vote.
//! - A liveness beat (`super::liveness`) stamps the clock of each group it adds that follows
//!   the sender in that term, and marks it quiet if its log matches too (then every later beat
//!   of the sender counts as contact for it, until a beat removes it); any append-entries,
//!   snapshot or vote for a group clears the mark. While a group is quiet and the beat is
//!   younger than openraft's lease, pre-votes for it are refused (a quiesced follower's
//!   openraft lease has run out; this stands in for it). A pre-vote for a group this node leads
//!   quiesced is refused too, and wakes the group: a member lost contact, heartbeats resume.
//! - A transfer-leader request, once openraft handled it, hands the group back to the scheduler
//!   if it was parked on its leader node's liveness stamp (`crate::scheduler`, rule 5): the
//!   group may be campaigning and, should it win, must start heartbeating.
//! - While a partition group holds its votes after an unclean restart
//!   (`crate::partition::unclean`), votes and pre-votes for it are answered with a rejecting
//!   `VoteResponse` and never reach openraft; the hold ends when an accepted append-entries
//!   leaves its log matching the leader's up to a commit index of the leader's own term.

use std::cmp::Ordering;
use std::sync::Arc;

use drawbridge_proto::raft as pb;
use drawbridge_proto::raft::raft_failure::Code;
use drawbridge_proto::raft::raft_transport_server::RaftTransport;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::VoteOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::vote::RaftVote;
use openraft::Raft;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::coalesce::answer_within;
use super::coalesce::BeatBatch;
use super::coalesce::BeatReply;
use super::group_kind::GroupKind;
use super::liveness;
use super::liveness::LivenessBeat;
use super::registry::GroupRegistry;
use super::wire;
use crate::codec;
use crate::types::GroupId;
use crate::types::PartitionRaft;
use crate::types::PartitionTypes;

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
    /// What this node keeps of its peers' liveness beats.
    liveness: Arc<liveness::Receiver>,
}

impl TransportService {
    /// A service answering for the groups in `registry`.
    pub(crate) fn new(registry: Arc<GroupRegistry>) -> Self {
        Self {
            registry,
            liveness: Arc::default(),
        }
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
        if req.group.is_none() && matches!(rpc, Rpc::Append) {
            return self.dispatch_beats(&req.payload).await;
        }
        let group = match wire::group_from_pb(req.group) {
            Ok(g) => g,
            Err(e) => return wire::failure(Code::BadRequest, e.to_string()),
        };
        self.dispatch_group(group, rpc, &req.payload).await
    }

    /// A coalesced batch of heartbeats (see `super::coalesce`): every group's request is handled
    /// concurrently and answered in order.
    async fn dispatch_beats(&self, payload: &[u8]) -> pb::RaftReply {
        let (limit_ms, batch) = match codec::decode::<BeatBatch>("coalesced heartbeats", payload) {
            Ok(b) => b,
            Err(e) => return wire::failure(Code::BadRequest, e.to_string()),
        };
        let within = answer_within(limit_ms);
        let replies = batch.into_iter().map(|(group, p)| async move {
            let one = self.dispatch_group(group, Rpc::Append, &p);
            match tokio::time::timeout(within, one).await {
                Ok(r) => r,
                Err(_) => wire::failure(Code::Unknown, format!("no answer within {within:?}")),
            }
        });
        let list: Vec<BeatReply> = futures::future::join_all(replies)
            .await
            .into_iter()
            .map(BeatReply::from_pb)
            .collect();
        match codec::encode(&list) {
            Ok(bytes) => wire::success(bytes),
            Err(e) => wire::failure(Code::Unknown, e.to_string()),
        }
    }

    async fn dispatch_group(&self, group: GroupId, rpc: Rpc, payload: &[u8]) -> pb::RaftReply {
        match &group {
            GroupId::Metadata => match self.registry.metadata() {
                Some(raft) => handle(&raft, rpc, payload, || {}).await.0,
                None => wire::failure(Code::GroupNotFound, format!("group {group} not hosted")),
            },
            GroupId::Partition(p) => match self.registry.partition(p) {
                Some(g) if matches!(rpc, Rpc::PreVote) && g.clock.is_quiesced() => {
                    // This node leads the group quiesced and a member is looking for a leader:
                    // heartbeats resume (which reach it if it can be reached at all).
                    g.waker.wake();
                    wire::failure(
                        Code::Unknown,
                        format!("group {group} is led from here; heartbeats resume"),
                    )
                }
                Some(g) if matches!(rpc, Rpc::PreVote) && g.clock.quiet_lease_runs() => {
                    wire::failure(
                        Code::Unknown,
                        format!("group {group} is quiesced under a live leader"),
                    )
                }
                Some(g) if matches!(rpc, Rpc::Vote | Rpc::PreVote) && g.clock.catch_up.holds() => {
                    held_vote(g.raft())
                }
                Some(g) => {
                    if matches!(rpc, Rpc::Append | Rpc::Snapshot | Rpc::Vote) {
                        g.clock.wake();
                    }
                    // While catching up after an unclean restart, what the leader says it
                    // committed (decoded twice, but only until the group caught up).
                    let catch_up = if matches!(rpc, Rpc::Append) && g.clock.catch_up.holds() {
                        catch_up_target(payload)
                    } else {
                        None
                    };
                    let clock = g.clock.clone();
                    let touch = move || clock.touch();
                    let (reply, contact) = handle(g.raft(), rpc, payload, touch).await;
                    if contact {
                        g.clock.touch();
                    }
                    if matches!(rpc, Rpc::TransferLeader) {
                        // It may campaign now: a follower parked by the scheduler must be
                        // looked at again (`crate::scheduler`, rule 5).
                        g.clock.unpark();
                    }
                    if let Some(target) = catch_up {
                        if target.reached_by(&reply) {
                            g.clock.catch_up.caught_up();
                        }
                    }
                    reply
                }
                None => wire::failure(Code::GroupNotFound, format!("group {group} not hosted")),
            },
        }
    }
}

impl TransportService {
    /// Handles a liveness beat (see `super::liveness`).
    fn liveness_beat(&self, payload: &[u8]) -> pb::RaftReply {
        let beat = match codec::decode::<LivenessBeat>("liveness beat", payload) {
            Ok(b) => b,
            Err(e) => return wire::failure(Code::BadRequest, e.to_string()),
        };
        let reply = self.liveness.apply(&self.registry, &beat);
        match codec::encode(&reply) {
            Ok(bytes) => wire::success(bytes),
            Err(e) => wire::failure(Code::Unknown, e.to_string()),
        }
    }
}

/// The answer to a vote or pre-vote while the group holds its votes after an unclean restart
/// (`crate::partition::unclean`): the local vote, not granted. No last log id: the metrics
/// carry only its index, and the candidate uses it only to delay its next campaign when the
/// voter's log is longer, which a log waiting to be caught up is not meant to claim.
fn held_vote(raft: &PartitionRaft) -> pb::RaftReply {
    let m = crate::wait::metrics(raft);
    let resp = VoteResponse::<PartitionTypes>::new(m.vote, None, false);
    match codec::encode(&resp) {
        Ok(bytes) => wire::success(bytes),
        Err(e) => wire::failure(Code::Unknown, e.to_string()),
    }
}

/// What an append-entries must achieve to end a catch-up: the follower's log matches the
/// leader's up to `commit`, an index the leader committed in its own term.
#[derive(Debug, Clone, Copy)]
struct CatchUpTarget {
    commit: u64,
    /// The last index the request covers (its last entry, else its `prev_log_id`).
    last: Option<u64>,
}

/// The catch-up target of an append-entries payload, if its `leader_commit` is of the
/// sender's term (before a new leader commits an entry of its own term, its commit index may
/// lie below entries that were committed).
fn catch_up_target(payload: &[u8]) -> Option<CatchUpTarget> {
    let req =
        codec::decode::<AppendEntriesRequest<PartitionTypes>>("append entries", payload).ok()?;
    let commit = req.leader_commit?;
    if commit.leader_id.term != req.vote.leader_id.term {
        return None;
    }
    let last = req
        .entries
        .last()
        .map(|e| e.log_id.index)
        .or(req.prev_log_id.map(|p| p.index));
    Some(CatchUpTarget {
        commit: commit.index,
        last,
    })
}

impl CatchUpTarget {
    /// Whether `reply` (to the request this target came from) shows the log matching the
    /// leader's up to the commit index.
    fn reached_by(&self, reply: &pb::RaftReply) -> bool {
        let Some(pb::raft_reply::Result::Payload(bytes)) = &reply.result else {
            return false;
        };
        let matched = match codec::decode::<AppendEntriesResponse<PartitionTypes>>(
            "append entries response",
            bytes,
        ) {
            Ok(AppendEntriesResponse::Success) => self.last,
            Ok(AppendEntriesResponse::PartialSuccess(m)) => m.map(|m| m.index),
            _ => None,
        };
        matched.is_some_and(|m| m >= self.commit)
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

/// Whether a message sent under `vote` comes from the group's current (or a newer) leader:
/// the vote is committed and not older than the local one. Checked on arrival, so that a slow
/// local log flush does not delay the contact stamp (openraft renews its own leader lease on
/// arrival too).
fn from_leader<C, SM>(raft: &Raft<C, SM>, vote: &VoteOf<C>) -> bool
where
    C: GroupKind,
    SM: RaftStateMachine<C>,
{
    let local = raft.server_metrics().borrow_watched().vote.clone();
    vote.is_committed()
        && matches!(
            RaftVote::partial_cmp(vote, &local),
            Some(Ordering::Greater | Ordering::Equal)
        )
}

/// Handles one request. `on_contact` runs when a message from the group's current leader
/// arrives; the returned flag says whether the request was contact from the leader (an
/// accepted append-entries or snapshot) or a granted vote. Both restart the election timer.
async fn handle<C, SM>(
    raft: &Raft<C, SM>,
    rpc: Rpc,
    payload: &[u8],
    on_contact: impl Fn(),
) -> (pb::RaftReply, bool)
where
    C: GroupKind,
    SM: RaftStateMachine<C, SnapshotData = C::Snapshot>,
{
    let bad = |e: crate::error::RaftError| (wire::failure(Code::BadRequest, e.to_string()), false);
    match rpc {
        Rpc::Append => match codec::decode::<AppendEntriesRequest<C>>("append entries", payload) {
            Ok(req) => {
                if from_leader(raft, &req.vote) {
                    on_contact();
                }
                let r = raft.append_entries(req).await;
                let contact =
                    matches!(&r, Ok(resp) if !matches!(resp, AppendEntriesResponse::HigherVote(_)));
                (reply(r), contact)
            }
            Err(e) => bad(e),
        },
        Rpc::Vote => match codec::decode::<VoteRequest<C>>("vote", payload) {
            Ok(req) => {
                let r = raft.vote(req).await;
                let granted = matches!(&r, Ok(resp) if resp.vote_granted);
                (reply(r), granted)
            }
            Err(e) => bad(e),
        },
        Rpc::PreVote => match codec::decode::<VoteRequest<C>>("pre-vote", payload) {
            Ok(req) => (reply(raft.pre_vote(req).await), false),
            Err(e) => bad(e),
        },
        Rpc::Snapshot => {
            match codec::decode::<(VoteOf<C>, SnapshotMetaOf<C>, C::Snapshot)>("snapshot", payload)
            {
                Ok((vote, meta, snapshot)) => {
                    if from_leader(raft, &vote) {
                        on_contact();
                    }
                    let r = raft
                        .install_full_snapshot(vote.clone(), Snapshot { meta, snapshot })
                        .await;
                    let contact = matches!(&r, Ok(resp) if resp.vote == vote);
                    (reply(r), contact)
                }
                Err(e) => bad(e),
            }
        }
        Rpc::TransferLeader => {
            match codec::decode::<TransferLeaderRequest<C>>("transfer leader", payload) {
                Ok(req) => (reply(raft.handle_transfer_leader(req).await), false),
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

    async fn liveness(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(self.liveness_beat(&req.into_inner().payload)))
    }

    async fn may_lead(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(self.may_lead_answer(req.into_inner())))
    }
}

impl TransportService {
    /// Answers a `MayLead` probe: whether this node would take the group's leadership now
    /// (it hosts the group, its raft runs, and the node's gate allows it: not while its disk
    /// is below the margin, nor once it is shutting down).
    fn may_lead_answer(&self, req: pb::RaftRequest) -> pb::RaftReply {
        let running = match wire::group_from_pb(req.group) {
            Ok(GroupId::Partition(id)) => {
                let Some(g) = self.registry.partition(&id) else {
                    return wire::failure(Code::GroupNotFound, format!("group {id} not hosted"));
                };
                crate::wait::metrics(g.raft()).running_state.is_ok()
            }
            Ok(GroupId::Metadata) => {
                let Some(raft) = self.registry.metadata() else {
                    return wire::failure(Code::GroupNotFound, "metadata group not started");
                };
                crate::wait::metrics(&raft).running_state.is_ok()
            }
            Err(e) => return wire::failure(Code::BadRequest, e.to_string()),
        };
        match codec::encode(&(running && self.registry.may_lead())) {
            Ok(bytes) => wire::success(bytes),
            Err(e) => wire::failure(Code::Unknown, e.to_string()),
        }
    }
}
