//! Streamed append-entries, client side: openraft's replication stream to one follower of one
//! group carried by one bidirectional gRPC call (`RaftTransport/AppendStream`), with up to a
//! window of requests (`RaftConfig::append_stream_window`) sent before their replies arrive.
//!
//! Why: openraft's default `stream_append` sends one append-entries, waits for its reply, then
//! sends the next. A follower answers only after its log is flushed, so each round of a busy
//! group paid a round trip plus a follower fsync, and nothing overlapped them. On one HTTP/2
//! stream the requests arrive in the order sent, so the follower can take the next batch while
//! it flushes the last (its group commit then covers both).
//!
//! Invariants:
//! - Replies are yielded in request order, one per request (the server answers a stream in
//!   order, see `super::service`). A call with requests in flight must progress: no reply
//!   within the RPC's hard TTL of the later of the oldest request and the last reply, a closed
//!   or failed call, or a failure reply ends the stream with `Unreachable`, after which
//!   openraft opens a new stream from the last acknowledged entry.
//! - The gRPC call is opened when the first request is ready and closed after [`IDLE_CLOSE`]
//!   without a request in flight, so an idle or quiesced group holds no HTTP/2 stream; the
//!   next request opens a new call; so does a call the peer ends while nothing is in flight
//!   (a node ends every call when it shuts down). Requests are never split across calls while
//!   one is unanswered (a call closes only with nothing in flight), so order holds across
//!   calls too.
//! - An append-entries without entries, when no call is open, goes as a unary RPC (through the
//!   peer's heartbeat batcher, `super::coalesce`) and its reply is awaited before the next
//!   request: openraft's heartbeat worker sends each heartbeat as a one-request stream, and an
//!   idle group's commit updates are the same, so they keep costing one slot in a coalesced
//!   batch rather than a call each. Nothing else is in flight meanwhile, so order holds.
//! - The group is named in the first request of each call only.
//! - In tests every request passes the node's fault gate and every reply the reply gate
//!   (`super::faults`), as unary RPCs do.

use std::collections::VecDeque;
use std::time::Duration;

use drawbridge_proto::raft as pb;
use futures::Stream;
use futures::StreamExt;
use openraft::base::BoxStream;
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::StreamAppendError;
use openraft::raft::StreamAppendResult;
use openraft_multi::GroupRouter;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::group_kind::GroupKind;
use super::router;
use super::router::Router;
use super::router::SendError;
use super::wire;
use crate::codec;
use crate::types::GroupId;
use crate::types::NodeId;

/// How long a call stays open with nothing in flight.
pub(crate) const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// One open `AppendStream` call.
struct Call {
    /// Feeds the call's request stream.
    tx: mpsc::Sender<pb::RaftRequest>,
    replies: tonic::Streaming<pb::RaftReply>,
}

/// The state of one replication stream (see the module docs).
struct Session<S> {
    router: Router,
    target: NodeId,
    group: GroupId,
    input: S,
    /// Most requests in flight.
    window: usize,
    option: RPCOption,
    ttl: Duration,
    call: Option<Call>,
    /// When each request awaiting its reply was sent, oldest first. Non-empty only while
    /// `call` is open.
    sent: VecDeque<Instant>,
    /// When the last reply arrived.
    last_reply: Instant,
    input_done: bool,
    failed: bool,
}

/// What one step of a session produced.
enum Step<C: GroupKind> {
    Reply(StreamAppendResult<C>),
    Fail(RPCError<C>),
    End,
}

/// The reply stream of a replication stream to `target` for `group` (see the module docs).
pub(crate) fn stream_append<C, S>(
    router: Router,
    window: usize,
    target: NodeId,
    group: GroupId,
    input: S,
    option: RPCOption,
) -> BoxStream<'static, Result<StreamAppendResult<C>, RPCError<C>>>
where
    C: GroupKind,
    S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
{
    let session = Session {
        router,
        target,
        group,
        input,
        window: window.max(1),
        ttl: option.hard_ttl(),
        option,
        call: None,
        sent: VecDeque::new(),
        last_reply: Instant::now(),
        input_done: false,
        failed: false,
    };
    Box::pin(futures::stream::unfold(session, |mut s| async move {
        if s.failed {
            return None;
        }
        match s.step::<C>().await {
            Step::Reply(r) => Some((Ok(r), s)),
            Step::Fail(e) => {
                s.failed = true;
                s.call = None;
                Some((Err(e), s))
            }
            Step::End => None,
        }
    }))
}

impl<S> Session<S> {
    /// Runs until the next reply, a failure, or the end of the stream.
    async fn step<C>(&mut self) -> Step<C>
    where
        C: GroupKind,
        S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
    {
        loop {
            let oldest = self.sent.front().copied();
            if oldest.is_none() && self.input_done {
                return Step::End;
            }
            let can_send = !self.input_done && self.sent.len() < self.window;
            // In flight: the call must make progress, a reply within the TTL of the later of
            // the oldest request and the last reply (requests queue behind each other at the
            // follower). Idle: the call closes.
            let deadline = oldest.map_or_else(
                || Instant::now() + IDLE_CLOSE,
                |t| t.max(self.last_reply) + self.ttl,
            );
            let Session {
                call, input, sent, ..
            } = self;
            tokio::select! {
                biased;
                reply = next_reply(call), if call.is_some() => {
                    if sent.is_empty() {
                        // The peer ended an idle call (it is shutting down), or sent a reply
                        // nobody asked for: close it; the next request opens another.
                        self.call = None;
                        continue;
                    }
                    sent.pop_front();
                    self.last_reply = Instant::now();
                    return match reply {
                        Ok(r) => match self.decode::<C>(r) {
                            Ok(r) => Step::Reply(r),
                            Err(e) => Step::Fail(e.into_rpc()),
                        },
                        Err(e) => Step::Fail(e.into_rpc()),
                    };
                }
                req = input.next(), if can_send => match req {
                    Some(req) if req.entries.is_empty() && self.call.is_none() => {
                        return self.unary(req).await;
                    }
                    Some(req) => {
                        if let Err(e) = self.send(&req).await {
                            return Step::Fail(e.into_rpc());
                        }
                    }
                    None => {
                        self.input_done = true;
                        if self.sent.is_empty() {
                            self.call = None;
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline), if oldest.is_some() || call.is_some() => {
                    if oldest.is_some() {
                        return Step::Fail(
                            SendError::Unreachable(format!(
                                "append stream to node {} group {}: no reply within {:?}",
                                self.target, self.group, self.ttl
                            ))
                            .into_rpc(),
                        );
                    }
                    // Idle: close the call; the next request opens another.
                    self.call = None;
                }
            }
        }
    }

    /// Sends an append-entries without entries as a unary RPC and waits for its reply.
    async fn unary<C>(&mut self, req: AppendEntriesRequest<C>) -> Step<C>
    where
        C: GroupKind,
    {
        let prev = req.prev_log_id.clone();
        let sent = GroupRouter::<C, GroupId>::append_entries(
            &self.router,
            self.target,
            self.group.clone(),
            req,
            self.option.clone(),
        )
        .await;
        match sent {
            Ok(AppendEntriesResponse::Success) => Step::Reply(Ok(prev)),
            Ok(AppendEntriesResponse::PartialSuccess(matched)) => {
                // As openraft's sequential stream: a partial success ends the stream.
                if matched != prev {
                    self.input_done = true;
                }
                Step::Reply(Ok(matched))
            }
            Ok(AppendEntriesResponse::Conflict) => match prev {
                Some(p) => Step::Reply(Err(StreamAppendError::Conflict(p))),
                None => Step::Fail(
                    SendError::Network(format!(
                        "node {} group {}: a conflict at the start of the log",
                        self.target, self.group
                    ))
                    .into_rpc(),
                ),
            },
            Ok(AppendEntriesResponse::HigherVote(v)) => {
                Step::Reply(Err(StreamAppendError::HigherVote(v)))
            }
            Err(e) => Step::Fail(e),
        }
    }

    /// Sends one request, opening a call if none is open.
    async fn send<C: GroupKind>(&mut self, req: &AppendEntriesRequest<C>) -> Result<(), SendError> {
        self.router.fault_gate(self.target).await?;
        let payload = codec::encode(req).map_err(|e| SendError::Network(e.to_string()))?;
        let mut msg = pb::RaftRequest {
            group: None,
            payload: payload.into(),
        };
        match &self.call {
            Some(call) => call.tx.try_send(msg).map_err(|_| {
                SendError::Unreachable(format!("append stream to node {} closed", self.target))
            })?,
            None => {
                msg.group = Some(wire::group_to_pb(&self.group));
                // One slot more than can be in flight: sending never waits.
                let (tx, rx) = mpsc::channel(self.window + 1);
                tx.try_send(msg).map_err(|_| {
                    SendError::Unreachable("append stream channel closed".to_string())
                })?;
                let mut client = self.router.client(self.target)?;
                let open = client.append_stream(ReceiverStream::new(rx));
                let target = self.target;
                let what = || format!("opening an append stream to node {target}");
                let replies = router::within(self.ttl, what, open).await?;
                self.call = Some(Call { tx, replies });
            }
        }
        self.sent.push_back(Instant::now());
        Ok(())
    }

    /// The openraft result in a reply.
    fn decode<C: GroupKind>(
        &self,
        reply: pb::RaftReply,
    ) -> Result<StreamAppendResult<C>, SendError> {
        self.router.fault_reply(self.target)?;
        router::decode_reply(self.target, &self.group, reply)
    }
}

/// The next reply of the open call: a closed call or a gRPC error is `Unreachable`.
async fn next_reply(call: &mut Option<Call>) -> Result<pb::RaftReply, SendError> {
    let Some(call) = call else {
        return Err(SendError::Unreachable(
            "append stream: reply awaited without a call".to_string(),
        ));
    };
    match call.replies.message().await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(SendError::Unreachable(
            "append stream closed with requests unanswered".to_string(),
        )),
        Err(status) => Err(SendError::Unreachable(format!("append stream: {status}"))),
    }
}
