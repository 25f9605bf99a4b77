//! Acks: what the partition leader sends to a message's ack inbox (spec §8).
//!
//! Invariants:
//! - An ack is only sent when the message named an inbox.
//! - Success acks follow the ack policy: LEADER after the leader's durable local append, ALL
//!   after raft commit, NONE never. Error acks (TOO_LARGE, INCORRECT_OFFSET) are sent whatever
//!   the policy.
//! - An UNKNOWN error ack sent because the leader's disk is below `storage.min.free.bytes`
//!   carries the refusal's text in the NATS header [`DISK_FULL_HEADER`] (the Ack proto has no
//!   field for it and is frozen; Liftbridge clients read only the payload and ignore it), so a
//!   node that forwarded a unary Publish can answer `ResourceExhausted` with the leader's text.
//! - `commitTimestamp` is stamped when the ack is sent; `partitionSubject` is the stream's base
//!   subject, `msgSubject` the subject the message arrived on.

use drawbridge_proto::api::{ack, Ack, AckPolicy};

use crate::envelope;

/// What the ingest path remembers about one message until it is acked.
#[derive(Debug, Clone)]
pub struct PendingAck {
    /// Where to send the ack.
    pub inbox: String,
    /// Echoed back.
    pub correlation_id: String,
    /// The message's policy.
    pub policy: AckPolicy,
    /// Subject the message arrived on.
    pub msg_subject: String,
    /// Leader reception time, ns.
    pub reception_ns: i64,
}

/// Current Unix time in nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Builds the ack for `p`, moving its strings into the ack (each pending ack is sent once;
/// callers that still need `p` clone it, only error paths do).
pub fn build(
    stream: &str,
    base_subject: &str,
    p: PendingAck,
    offset: i64,
    error: ack::Error,
) -> Ack {
    Ack {
        stream: stream.to_owned(),
        partition_subject: base_subject.to_owned(),
        msg_subject: p.msg_subject,
        offset: if error == ack::Error::Ok { offset } else { 0 },
        ack_inbox: p.inbox,
        correlation_id: p.correlation_id,
        ack_policy: p.policy as i32,
        reception_timestamp: p.reception_ns,
        commit_timestamp: now_ns(),
        ack_error: error as i32,
    }
}

/// NATS header naming why an UNKNOWN error ack was sent: the partition leader's disk is full
/// (value: the leader's refusal text, see [`crate::diskspace::DiskFull`]).
pub const DISK_FULL_HEADER: &str = "Drawbridge-Disk-Full";

/// [`send`] for an ack refused because the leader's disk is full: `reason` travels in the
/// [`DISK_FULL_HEADER`] header.
pub async fn send_disk_full(nats: &async_nats::Client, ack: Ack, reason: &str) {
    if ack.ack_inbox.is_empty() {
        return;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DISK_FULL_HEADER, reason);
    let body = envelope::encode_ack(&ack);
    if let Err(e) = nats
        .publish_with_headers(ack.ack_inbox, headers, body)
        .await
    {
        tracing::debug!(error = %e, "sending an ack failed");
    }
}

/// The [`DISK_FULL_HEADER`] text of a received ack message, if any.
pub fn disk_full_reason(msg: &async_nats::Message) -> Option<String> {
    msg.headers
        .as_ref()?
        .get(DISK_FULL_HEADER)
        .map(|v| v.as_str().to_owned())
}

/// Publishes an ack envelope to its inbox (which becomes the NATS subject without a copy);
/// failures are logged (the publisher times out).
pub async fn send(nats: &async_nats::Client, ack: Ack) {
    if ack.ack_inbox.is_empty() {
        return;
    }
    let body = envelope::encode_ack(&ack);
    if let Err(e) = nats.publish(ack.ack_inbox, body).await {
        tracing::debug!(error = %e, "sending an ack failed");
    }
}
