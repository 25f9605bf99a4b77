//! Coalesced heartbeats: the empty append-entries (heartbeats and commit-index updates) that
//! the groups of this node send to one peer travel together, in one RPC per batch.
//!
//! Why: an idle leader sends one heartbeat per follower per heartbeat interval, and with
//! thousands of groups per node the per-RPC cost (an HTTP/2 stream, headers, a server task)
//! dominated. The node's scheduler fires the heartbeats of every group due in the same slot
//! together, so they reach the per-peer batcher within microseconds of each other.
//!
//! Wire: an `AppendEntries` request whose `group` is absent carries a [`BeatBatch`] (postcard):
//! the batch's time limit in ms and `(group id, encoded append-entries request)` pairs. The
//! reply payload is a list of [`BeatReply`], one per request, in the same order. Both ends run
//! the same crate version (see `crate::codec`).
//!
//! Invariants:
//! - Only append-entries *without entries* are coalesced; entries keep their own RPC, so a batch
//!   stays small. Raft tolerates reordering between the two paths (openraft's heartbeat worker
//!   and replication task already use separate, concurrent RPCs).
//! - Every caller gets exactly one answer: its group's reply, or the batch's error (timeout,
//!   transport failure, malformed reply) as its own error. A caller that stopped waiting is
//!   skipped.
//! - The batcher never waits for an RPC: each batch is sent by its own task.
//! - One slow group cannot hold up the others: the receiver answers a group that has not
//!   answered within [`answer_within`] of the batch's limit with a failure (as if its RPC had
//!   timed out), and the reply goes out with everyone else's answers.

use std::time::Duration;

use drawbridge_proto::raft as pb;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::router::SendError;
use crate::codec;
use crate::types::GroupId;
use crate::types::NodeId;

/// Most heartbeats in one RPC.
pub(crate) const MAX_BATCH: usize = 4096;

/// The request payload of a coalesced RPC: the sender's time limit (ms) and the requests.
pub(crate) type BeatBatch = (u64, Vec<(GroupId, Vec<u8>)>);

/// How long the receiver lets one group of a batch take: three quarters of the sender's limit,
/// so the answers of the others arrive in time.
pub(crate) fn answer_within(limit_ms: u64) -> Duration {
    Duration::from_millis(limit_ms.saturating_mul(3) / 4)
}

/// One group's answer inside a coalesced reply (a `pb::RaftReply` in serde form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum BeatReply {
    /// The encoded openraft response.
    Payload(Vec<u8>),
    /// A typed failure (`pb::raft_failure::Code` as i32).
    Failure { code: i32, message: String },
}

impl BeatReply {
    /// The serde form of a proto reply.
    pub(crate) fn from_pb(r: pb::RaftReply) -> Self {
        match r.result {
            Some(pb::raft_reply::Result::Payload(b)) => BeatReply::Payload(b.to_vec()),
            Some(pb::raft_reply::Result::Failure(f)) => BeatReply::Failure {
                code: f.code,
                message: f.message,
            },
            None => BeatReply::Failure {
                code: pb::raft_failure::Code::Unknown as i32,
                message: "empty reply".into(),
            },
        }
    }

    /// The proto form.
    pub(crate) fn into_pb(self) -> pb::RaftReply {
        let result = match self {
            BeatReply::Payload(b) => pb::raft_reply::Result::Payload(b.into()),
            BeatReply::Failure { code, message } => {
                pb::raft_reply::Result::Failure(pb::RaftFailure { code, message })
            }
        };
        pb::RaftReply {
            result: Some(result),
        }
    }
}

/// One queued heartbeat.
pub(crate) struct Beat {
    pub(crate) group: GroupId,
    pub(crate) payload: Vec<u8>,
    pub(crate) ttl: Duration,
    pub(crate) reply: oneshot::Sender<Result<pb::RaftReply, SendError>>,
}

type Client =
    drawbridge_proto::raft::raft_transport_client::RaftTransportClient<tonic::transport::Channel>;

/// Starts the batcher of one peer; it ends when every sender is dropped.
pub(crate) fn spawn_batcher(client: Client, target: NodeId) -> mpsc::UnboundedSender<Beat> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(client, target, rx));
    tx
}

async fn run(client: Client, target: NodeId, mut rx: mpsc::UnboundedReceiver<Beat>) {
    while let Some(first) = rx.recv().await {
        // Let the rest of this burst (the groups due in the same scheduler slot) queue up.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        tokio::spawn(send(client.clone(), target, batch));
    }
}

fn fail_all(replies: Vec<oneshot::Sender<Result<pb::RaftReply, SendError>>>, e: &SendError) {
    for r in replies {
        let again = match e {
            SendError::Unreachable(m) => SendError::Unreachable(m.clone()),
            SendError::Network(m) => SendError::Network(m.clone()),
        };
        let _ = r.send(Err(again));
    }
}

async fn send(mut client: Client, target: NodeId, batch: Vec<Beat>) {
    let ttl = batch
        .iter()
        .map(|b| b.ttl)
        .max()
        .unwrap_or(Duration::from_secs(1));
    let n = batch.len();
    let mut items = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    for b in batch {
        items.push((b.group, b.payload));
        replies.push(b.reply);
    }
    let batch: BeatBatch = (ttl.as_millis() as u64, items);
    let payload = match codec::encode(&batch) {
        Ok(p) => p,
        Err(e) => return fail_all(replies, &SendError::Network(e.to_string())),
    };
    let request = pb::RaftRequest {
        group: None,
        payload: payload.into(),
    };
    let reply = match tokio::time::timeout(ttl, client.append_entries(request)).await {
        Err(_) => {
            let e = format!("{n} coalesced heartbeats to node {target} timed out");
            return fail_all(replies, &SendError::Unreachable(e));
        }
        Ok(Err(status)) => {
            let e = format!("{n} coalesced heartbeats to node {target}: {status}");
            return fail_all(replies, &SendError::Unreachable(e));
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    let list = match reply.result {
        Some(pb::raft_reply::Result::Payload(bytes)) => {
            match codec::decode::<Vec<BeatReply>>("coalesced reply", &bytes) {
                Ok(list) if list.len() == n => list,
                Ok(list) => {
                    let e = format!("node {target} answered {} of {n} heartbeats", list.len());
                    return fail_all(replies, &SendError::Network(e));
                }
                Err(e) => return fail_all(replies, &SendError::Network(e.to_string())),
            }
        }
        Some(pb::raft_reply::Result::Failure(f)) => {
            let e = format!("node {target}: {} ({})", f.message, f.code);
            return fail_all(replies, &SendError::Unreachable(e));
        }
        None => {
            let e = format!("empty coalesced reply from node {target}");
            return fail_all(replies, &SendError::Network(e));
        }
    };
    for (r, item) in replies.into_iter().zip(list) {
        let _ = r.send(Ok(item.into_pb()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PartitionId;

    #[test]
    fn replies_round_trip_through_proto_and_codec() -> Result<(), crate::RaftError> {
        let list = vec![
            BeatReply::Payload(vec![1, 2, 3]),
            BeatReply::Failure {
                code: pb::raft_failure::Code::GroupNotFound as i32,
                message: "x".into(),
            },
        ];
        for r in &list {
            assert_eq!(&BeatReply::from_pb(r.clone().into_pb()), r);
        }
        let bytes = codec::encode(&list)?;
        assert_eq!(codec::decode::<Vec<BeatReply>>("t", &bytes)?, list);
        let batch: BeatBatch = (
            500,
            vec![(GroupId::Partition(PartitionId::new("s", 1)), vec![9])],
        );
        assert_eq!(answer_within(batch.0), Duration::from_millis(375));
        let bytes = codec::encode(&batch)?;
        assert_eq!(codec::decode::<BeatBatch>("t", &bytes)?, batch);
        assert!(codec::decode::<BeatBatch>("t", &[0xff, 0xff, 0xff]).is_err());
        Ok(())
    }
}
