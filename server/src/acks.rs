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
//! - An ack whose inbox is registered in [`LocalInboxes`] (a PublishAsync session or a unary
//!   Publish served by this process, with a server-generated inbox nobody else subscribes to)
//!   is handed to that session in-process, with the same disk-full reason the header would
//!   carry, instead of taking the round trip through NATS: a unary Publish waits on a queue
//!   ([`LocalInboxes::register`]), a PublishAsync session takes the acks on the caller's
//!   thread into its response stream ([`AckSink`], [`LocalInboxes::register_sink`]). When the
//!   queue or the response stream is full the ack goes over NATS as before (so a slow gRPC
//!   client never stalls a partition's acker); acks of one partition may then reach the
//!   session out of order, which the session does not depend on (it matches them by
//!   correlation id).

use std::collections::HashMap;
use std::sync::Arc;

use drawbridge_proto::api::{ack, Ack, AckPolicy};
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::context::Node;
use crate::envelope;

/// How many acks a local inbox queues before further acks go over NATS.
pub const LOCAL_QUEUE: usize = 8192;

/// An ack handed over in-process, with the disk-full reason [`DISK_FULL_HEADER`] would carry.
#[derive(Debug)]
pub struct LocalAck {
    /// The ack.
    pub ack: Ack,
    /// Why it is an UNKNOWN error ack, when the leader's disk is full.
    pub disk_full: Option<String>,
}

/// Takes acks in-process for a session, on the thread that produced them (an acker, a
/// durability callback, the flusher thread): it must not block.
pub trait AckSink: Send + Sync {
    /// Takes `acks` (all to this sink's inbox; `disk_full`: why they are UNKNOWN error acks,
    /// as [`DISK_FULL_HEADER`] would say); gives them all back when it cannot take them now
    /// (they then go over NATS).
    fn take(&self, acks: Vec<Ack>, disk_full: Option<&str>) -> Option<Vec<Ack>>;
}

/// How a registered inbox takes its acks.
enum Handover {
    /// Queued for a waiting task.
    Queue(mpsc::Sender<LocalAck>),
    /// Taken on the spot.
    Sink(Arc<dyn AckSink>),
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handover::Queue(_) => "Queue",
            Handover::Sink(_) => "Sink",
        })
    }
}

impl Handover {
    fn take(&self, acks: Vec<Ack>, disk_full: Option<&str>) -> Option<Vec<Ack>> {
        match self {
            Handover::Sink(sink) => sink.take(acks, disk_full),
            Handover::Queue(tx) => {
                let Ok(permits) = tx.try_reserve_many(acks.len()) else {
                    return Some(acks);
                };
                for (permit, ack) in permits.zip(acks) {
                    permit.send(LocalAck {
                        ack,
                        disk_full: disk_full.map(str::to_owned),
                    });
                }
                None
            }
        }
    }
}

type Inboxes = RwLock<HashMap<String, Handover>>;

/// The ack inboxes of this process's publish sessions (see the module docs).
#[derive(Debug, Default)]
pub struct LocalInboxes {
    inboxes: Arc<Inboxes>,
}

/// Keeps an inbox registered in [`LocalInboxes`]; unregisters it when dropped.
#[derive(Debug)]
pub struct LocalInbox {
    inboxes: Arc<Inboxes>,
    inbox: String,
    /// The acks handed over.
    pub rx: mpsc::Receiver<LocalAck>,
}

/// Keeps a sink registered in [`LocalInboxes`]; unregisters it when dropped.
#[derive(Debug)]
pub struct SinkInbox {
    inboxes: Arc<Inboxes>,
    inbox: String,
}

impl Drop for SinkInbox {
    fn drop(&mut self) {
        self.inboxes.write().remove(&self.inbox);
    }
}

impl Drop for LocalInbox {
    fn drop(&mut self) {
        self.inboxes.write().remove(&self.inbox);
    }
}

impl LocalInboxes {
    /// Registers `inbox` (a fresh, server-generated one) until the returned guard is dropped.
    pub fn register(&self, inbox: &str) -> LocalInbox {
        let (tx, rx) = mpsc::channel(LOCAL_QUEUE);
        self.inboxes
            .write()
            .insert(inbox.to_owned(), Handover::Queue(tx));
        LocalInbox {
            inboxes: self.inboxes.clone(),
            inbox: inbox.to_owned(),
            rx,
        }
    }

    /// Registers `inbox` (a fresh, server-generated one) with a sink that takes its acks on
    /// the spot, until the returned guard is dropped.
    pub fn register_sink(&self, inbox: &str, sink: Arc<dyn AckSink>) -> SinkInbox {
        self.inboxes
            .write()
            .insert(inbox.to_owned(), Handover::Sink(sink));
        SinkInbox {
            inboxes: self.inboxes.clone(),
            inbox: inbox.to_owned(),
        }
    }

    /// Hands `ack` to the local session of its inbox; gives it back (`Some`) when there is
    /// none or it cannot take it now (it then goes over NATS).
    fn deliver(&self, ack: Ack, disk_full: Option<&str>) -> Option<Ack> {
        self.deliver_many_with(vec![ack], disk_full)
            .and_then(|mut back| back.pop())
    }

    /// [`Self::deliver`] for acks that all go to `acks[0]`'s inbox: one lookup, and all or
    /// none of them taken; gives them all back when there is no session or too little room.
    fn deliver_many(&self, acks: Vec<Ack>) -> Option<Vec<Ack>> {
        self.deliver_many_with(acks, None)
    }

    fn deliver_many_with(&self, acks: Vec<Ack>, disk_full: Option<&str>) -> Option<Vec<Ack>> {
        let first = acks.first()?;
        // The session is looked up under the lock and called after it, so a sink may take
        // locks of its own (and a registration is never blocked by a sink).
        let handover = match self.inboxes.read().get(first.ack_inbox.as_str()) {
            None => return Some(acks),
            Some(Handover::Sink(sink)) => Handover::Sink(sink.clone()),
            Some(Handover::Queue(tx)) => Handover::Queue(tx.clone()),
        };
        handover.take(acks, disk_full)
    }
}

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
pub async fn send_disk_full(ctx: &Node, ack: Ack, reason: &str) {
    if ack.ack_inbox.is_empty() {
        return;
    }
    let Some(ack) = ctx.local_inboxes.deliver(ack, Some(reason)) else {
        return;
    };
    let nats = &ctx.nats;
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

/// Sends an ack to its inbox: in-process to a local session ([`LocalInboxes`]), else as an
/// envelope published on NATS ([`Node::publish_message`]; the inbox becomes the subject
/// without a copy); failures are logged (the publisher times out).
pub async fn send(ctx: &Node, ack: Ack) {
    if ack.ack_inbox.is_empty() {
        return;
    }
    if let Some(ack) = ctx.local_inboxes.deliver(ack, None) {
        publish(ctx, ack).await;
    }
}

/// [`send`] for the acks of a batch, in order: each run of acks to the same inbox is handed to
/// a local session at once (one lookup, one reservation of its queue) or, failing that, goes
/// over NATS ack by ack.
pub async fn send_many(ctx: &Node, acks: Vec<Ack>) {
    for ack in deliver_local(ctx, acks) {
        publish(ctx, ack).await;
    }
}

/// The in-process half of [`send_many`], which never waits: hands each run of acks to the same
/// inbox to its local session; returns, in order, the acks that must go over NATS instead
/// (acks without an inbox are dropped).
pub fn deliver_local(ctx: &Node, acks: Vec<Ack>) -> Vec<Ack> {
    let mut rest = Vec::new();
    let mut acks = acks
        .into_iter()
        .filter(|a| !a.ack_inbox.is_empty())
        .peekable();
    while let Some(first) = acks.next() {
        let mut run = vec![first];
        while let Some(a) = acks.next_if(|a| a.ack_inbox == run[0].ack_inbox) {
            run.push(a);
        }
        if let Some(back) = ctx.local_inboxes.deliver_many(run) {
            rest.extend(back);
        }
    }
    rest
}

/// Publishes `ack` on NATS, to its inbox (the inbox becomes the subject without a copy).
async fn publish(ctx: &Node, ack: Ack) {
    let body = envelope::encode_ack(&ack);
    if let Err(e) = ctx.publish_message(ack.ack_inbox, body).await {
        tracing::debug!(error = %e, "sending an ack failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack_to(inbox: &str, correlation_id: &str) -> Ack {
        Ack {
            ack_inbox: inbox.into(),
            correlation_id: correlation_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn local_inboxes_hand_over_until_dropped_or_full() {
        let inboxes = LocalInboxes::default();
        // Not registered: given back (it goes over NATS).
        assert!(inboxes.deliver(ack_to("a", "0"), None).is_some());
        let mut a = inboxes.register("a");
        assert!(inboxes.deliver(ack_to("a", "1"), None).is_none());
        assert!(inboxes.deliver(ack_to("a", "2"), Some("full")).is_none());
        assert!(inboxes.deliver(ack_to("b", "3"), None).is_some());
        let first = a.rx.try_recv().ok();
        assert_eq!(
            first.map(|l| (l.ack.correlation_id, l.disk_full)),
            Some(("1".to_owned(), None))
        );
        let second = a.rx.try_recv().ok();
        assert_eq!(
            second.map(|l| (l.ack.correlation_id, l.disk_full)),
            Some(("2".to_owned(), Some("full".to_owned())))
        );
        // A full queue gives the ack back instead of waiting.
        for i in 0..LOCAL_QUEUE {
            assert!(inboxes.deliver(ack_to("a", &i.to_string()), None).is_none());
        }
        let back = inboxes.deliver(ack_to("a", "over"), None);
        assert_eq!(back.map(|a| a.correlation_id), Some("over".to_owned()));
        // Acks to one inbox in one go: all of them, or none when the queue lacks room.
        while a.rx.try_recv().is_ok() {}
        let run = |n: usize| {
            (0..n)
                .map(|i| ack_to("a", &format!("r{i}")))
                .collect::<Vec<_>>()
        };
        assert!(inboxes.deliver_many(run(3)).is_none());
        let got: Vec<String> = std::iter::from_fn(|| a.rx.try_recv().ok())
            .map(|l| l.ack.correlation_id)
            .collect();
        assert_eq!(got, ["r0", "r1", "r2"]);
        assert!(inboxes.deliver_many(run(LOCAL_QUEUE - 1)).is_none());
        let back = inboxes.deliver_many(run(2)).map(|v| v.len());
        assert_eq!(back, Some(2));
        assert_eq!(inboxes.deliver_many(Vec::new()).map(|v| v.len()), None);
        let mut other = run(1);
        other[0].ack_inbox = "b".into();
        assert_eq!(inboxes.deliver_many(other).map(|v| v.len()), Some(1));
        // Dropping the guard unregisters the inbox.
        drop(a);
        assert!(inboxes.deliver(ack_to("a", "late"), None).is_some());
        assert!(inboxes.inboxes.read().is_empty());
    }

    /// A sink that takes acks while it has room (`room`), recording their correlation ids.
    #[derive(Default)]
    struct Recorder {
        room: parking_lot::Mutex<usize>,
        took: parking_lot::Mutex<Vec<(String, Option<String>)>>,
    }

    impl AckSink for Recorder {
        fn take(&self, acks: Vec<Ack>, disk_full: Option<&str>) -> Option<Vec<Ack>> {
            let mut room = self.room.lock();
            if acks.len() > *room {
                return Some(acks);
            }
            *room -= acks.len();
            self.took.lock().extend(
                acks.into_iter()
                    .map(|a| (a.correlation_id, disk_full.map(str::to_owned))),
            );
            None
        }
    }

    #[test]
    fn a_registered_sink_takes_its_acks_on_the_spot_until_dropped() {
        let inboxes = LocalInboxes::default();
        let sink = Arc::new(Recorder::default());
        *sink.room.lock() = 3;
        let guard = inboxes.register_sink("s", sink.clone());
        assert!(inboxes.deliver(ack_to("s", "1"), Some("full")).is_none());
        assert!(inboxes
            .deliver_many(vec![ack_to("s", "2"), ack_to("s", "3")])
            .is_none());
        // No room: all of a run comes back (it goes over NATS), none is taken.
        let back = inboxes.deliver_many(vec![ack_to("s", "4"), ack_to("s", "5")]);
        assert_eq!(back.map(|v| v.len()), Some(2));
        assert_eq!(
            *sink.took.lock(),
            [
                ("1".to_owned(), Some("full".to_owned())),
                ("2".to_owned(), None),
                ("3".to_owned(), None)
            ]
        );
        // Another inbox is not this sink's.
        assert!(inboxes.deliver(ack_to("t", "6"), None).is_some());
        drop(guard);
        *sink.room.lock() = 10;
        assert!(inboxes.deliver(ack_to("s", "late"), None).is_some());
        assert!(inboxes.inboxes.read().is_empty());
    }
}
