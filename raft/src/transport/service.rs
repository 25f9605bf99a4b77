//! Server side of the transport: the `RaftTransport` gRPC service, dispatching by group id.
//!
//! Invariants:
//! - An unknown group, a stopped group or an undecodable payload is answered with a typed
//!   `RaftFailure`, never a panic and never a gRPC transport error (so the sender can tell
//!   "the peer is up but lacks the group" from "the peer is down").
//! - An `AppendStream` call names its group in its first request; its requests reach the
//!   group's raft in arrival order and are answered in that order, each with the same effect
//!   on the group's clock and catch-up hold as a unary append-entries (below).
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
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;

use drawbridge_proto::raft as pb;
use drawbridge_proto::raft::raft_failure::Code;
use drawbridge_proto::raft::raft_transport_server::RaftTransport;
use futures::StreamExt;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::VoteOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::base::BoxStream;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::StreamAppendError;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::vote::RaftVote;
use openraft::Raft;
use parking_lot::Mutex;
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
    streams: Arc<StreamCounters>,
}

/// The `AppendStream` calls a node serves: counters (see `RaftNode::transport_stats`) and the
/// signal that ends them all when the node shuts down (a call otherwise lasts as long as its
/// sender keeps it, and the server's graceful shutdown would wait for it).
#[derive(Debug)]
pub(crate) struct StreamCounters {
    /// Calls open now.
    pub(crate) open: AtomicU64,
    /// Calls accepted so far.
    pub(crate) served: AtomicU64,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for StreamCounters {
    fn default() -> Self {
        Self {
            open: AtomicU64::new(0),
            served: AtomicU64::new(0),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

impl StreamCounters {
    /// Ends every open call and every call accepted from now on.
    pub(crate) fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Self::close_all`] was called.
    fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }
}

/// Counts one open call from its creation to its drop.
struct OpenStream(Arc<StreamCounters>);

impl OpenStream {
    fn new(c: Arc<StreamCounters>) -> Self {
        c.open.fetch_add(1, AtomicOrdering::Relaxed);
        c.served.fetch_add(1, AtomicOrdering::Relaxed);
        Self(c)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, AtomicOrdering::Relaxed);
    }
}

impl TransportService {
    /// A service answering for the groups in `registry`.
    pub(crate) fn new(registry: Arc<GroupRegistry>) -> Self {
        Self {
            registry,
            liveness: Arc::default(),
            streams: Arc::default(),
        }
    }

    /// The counters of the `AppendStream` calls this service serves.
    pub(crate) fn stream_counters(&self) -> Arc<StreamCounters> {
        self.streams.clone()
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
    catch_up_target_of(&req)
}

/// [`catch_up_target`] of a decoded request.
fn catch_up_target_of(req: &AppendEntriesRequest<PartitionTypes>) -> Option<CatchUpTarget> {
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

    /// [`Self::reached_by`] for the result of a streamed request (the log id it matched).
    fn reached_by_stream(&self, res: &StreamAppendResult<PartitionTypes>) -> bool {
        matches!(res, Ok(Some(m)) if m.index >= self.commit)
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

/// The reply stream of an `AppendStream` call.
type ReplyStream = BoxStream<'static, Result<pb::RaftReply, Status>>;

/// A reply stream of one reply.
fn one_reply(reply: pb::RaftReply) -> ReplyStream {
    Box::pin(futures::stream::once(async move { Ok(reply) }))
}

impl TransportService {
    /// Serves one `AppendStream` call: finds the group named by the first request and hands
    /// the call's requests to its raft in order (see [`serve_stream`]). For a partition group,
    /// each request and reply has the same effect on the group's clock and catch-up hold as a
    /// unary append-entries (see the module docs).
    async fn append_stream_replies(
        &self,
        mut input: tonic::Streaming<pb::RaftRequest>,
    ) -> ReplyStream {
        let first = match input.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Box::pin(futures::stream::empty()),
            Err(status) => return Box::pin(futures::stream::once(async move { Err(status) })),
        };
        let group = match wire::group_from_pb(first.group.clone()) {
            Ok(g) => g,
            Err(e) => return one_reply(wire::failure(Code::BadRequest, e.to_string())),
        };
        let requests = futures::stream::once(async move { Ok(first) }).chain(input);
        match &group {
            GroupId::Metadata => match self.registry.metadata() {
                Some(raft) => serve_stream(raft, requests, |_| (), |(), _| {}),
                None => one_reply(wire::failure(
                    Code::GroupNotFound,
                    format!("group {group} not hosted"),
                )),
            },
            GroupId::Partition(p) => match self.registry.partition(p) {
                Some(g) => {
                    let raft = g.raft().clone();
                    let on_request = g.clone();
                    let before = move |req: &AppendEntriesRequest<PartitionTypes>| {
                        on_request.clock.wake();
                        if from_leader(on_request.raft(), &req.vote) {
                            on_request.clock.touch();
                        }
                        if on_request.clock.catch_up.holds() {
                            catch_up_target_of(req)
                        } else {
                            None
                        }
                    };
                    let after =
                        move |target: Option<CatchUpTarget>,
                              res: &StreamAppendResult<PartitionTypes>| {
                            if !matches!(res, Err(StreamAppendError::HigherVote(_))) {
                                g.clock.touch();
                            }
                            if target.is_some_and(|t| t.reached_by_stream(res)) {
                                g.clock.catch_up.caught_up();
                            }
                        };
                    serve_stream(raft, requests, before, after)
                }
                None => one_reply(wire::failure(
                    Code::GroupNotFound,
                    format!("group {group} not hosted"),
                )),
            },
        }
    }
}

/// Hands a call's requests to `raft`'s `stream_append` in arrival order and answers each in
/// order. `before` runs on each decoded request as openraft takes it, `after` on its result
/// with what `before` returned. An undecodable request ends the input; the replies to the
/// requests before it are sent, then a `BAD_REQUEST` failure. A stopped raft answers
/// `GROUP_STOPPED` and ends the stream; so does a conflict or a higher vote (after its reply).
fn serve_stream<C, SM, P>(
    raft: Raft<C, SM>,
    requests: impl futures::Stream<Item = Result<pb::RaftRequest, Status>> + Send + 'static,
    mut before: impl FnMut(&AppendEntriesRequest<C>) -> P + Send + 'static,
    mut after: impl FnMut(P, &StreamAppendResult<C>) + Send + 'static,
) -> ReplyStream
where
    C: GroupKind,
    SM: RaftStateMachine<C, SnapshotData = C::Snapshot>,
    P: Send + 'static,
{
    let pending: Arc<Mutex<VecDeque<P>>> = Arc::default();
    let bad: Arc<Mutex<Option<String>>> = Arc::default();
    let (pending_in, bad_in) = (pending.clone(), bad.clone());
    let decoded = requests.scan((), move |(), r| {
        let next = match r {
            Ok(m) => match codec::decode::<AppendEntriesRequest<C>>("append entries", &m.payload) {
                Ok(req) => {
                    pending_in.lock().push_back(before(&req));
                    Some(req)
                }
                Err(e) => {
                    *bad_in.lock() = Some(e.to_string());
                    None
                }
            },
            // The call failed or the sender reset it: no more requests.
            Err(_) => None,
        };
        futures::future::ready(next)
    });
    let replies = raft.stream_append(decoded).map(move |r| {
        let p = pending.lock().pop_front();
        Ok(match r {
            Ok(res) => {
                if let Some(p) = p {
                    after(p, &res);
                }
                match codec::encode(&res) {
                    Ok(bytes) => wire::success(bytes),
                    Err(e) => wire::failure(Code::Unknown, e.to_string()),
                }
            }
            Err(fatal) => wire::failure(Code::GroupStopped, fatal.to_string()),
        })
    });
    let tail = futures::stream::once(async move { bad.lock().take() })
        .filter_map(|b| futures::future::ready(b.map(|m| Ok(wire::failure(Code::BadRequest, m)))));
    Box::pin(replies.chain(tail))
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    type AppendStreamStream = ReplyStream;

    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<pb::RaftRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let open = OpenStream::new(self.streams.clone());
        let replies = self.append_stream_replies(req.into_inner()).await;
        // The count drops with the reply stream, when the call ends.
        let replies = replies
            .map(move |r| {
                let _ = &open;
                r
            })
            .take_until(self.streams.closed());
        Ok(Response::new(Box::pin(replies)))
    }

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
