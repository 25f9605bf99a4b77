//! Publish, PublishAsync and PublishToSubject (spec §7, §8). All three build a Publish envelope
//! and publish it on NATS, so every stream and plain subscriber on the subject sees it exactly as
//! if a NATS client had published it; the partition leader (on any node) records it and acks.
//!
//! Invariants:
//! - Unary calls wait for an ack only when the ack policy is not NONE and the call has a
//!   deadline (`grpc-timeout`); the inbox subscription is in place (flushed) before the message
//!   is published, so the ack cannot be missed.
//! - PublishAsync uses one server-generated inbox per call, overwriting every request's inbox;
//!   it answers successes only for LEADER/ALL, answers every rejected request with an
//!   `asyncError` plus an empty Ack, and on half-close waits up to 5 s for outstanding acks.
//! - Every LEADER/ALL message of a PublishAsync session is answered once: by its ack, or —
//!   when its partition's leader changes (or the partition disappears) before the ack, e.g. the
//!   leader died — by an `asyncError` (INTERNAL, the code Liftbridge uses for "no leader to
//!   serve this", or NOT_FOUND) shortly after this node sees the change ([`super::inflight`]).
//! - When this node leads the target partition and its disk is below `storage.min.free.bytes`,
//!   nothing is published: unary Publish answers ResourceExhausted, PublishAsync an `asyncError`
//!   INTERNAL ([`crate::diskspace`]).
//! - An UNKNOWN error ack that stands for a full disk on the partition leader (this node leads
//!   and is full, or the ack carries [`acks::DISK_FULL_HEADER`]) is answered the same way by all
//!   three calls: ResourceExhausted with the leader's text (Publish, PublishToSubject), an
//!   `asyncError` INTERNAL with that text (PublishAsync).
//! - Publish and PublishAsync admit a request through one chain (`admit`): stream/partition
//!   checks, the leader's disk, the NATS connection.
//! - The message itself always goes through NATS (every subscriber of the subject sees it; the
//!   leader's ingest appends it once, in order with raw NATS publishes); on the embedded
//!   broker it is routed in-process ([`crate::embedded_nats::local`]), with the same effect. Only the ack may skip
//!   NATS: PublishAsync's inbox, and a unary Publish's server-generated inbox when this node
//!   leads the partition, are registered in [`acks::LocalInboxes`], so a local leader hands
//!   their acks over in-process (remote leaders' acks still arrive on the NATS inbox).

use std::sync::Arc;
use std::time::Duration;

use drawbridge_proto::api::{
    ack, publish_async_error, Ack, AckPolicy, Message, PublishAsyncError, PublishRequest,
    PublishResponse, PublishToSubjectRequest, PublishToSubjectResponse,
};
use drawbridge_raft::metadata::state::MetadataState;
use drawbridge_raft::PartitionId;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status, Streaming};
use tracing::{debug, warn};

use super::inflight::{AckFate, Failed, InFlight, Leadership};
use crate::acks;
use crate::context::{Ctx, Node};
use crate::diskspace::DiskFull;
use crate::envelope;
use crate::error::{Result, ServerError};
use crate::identity::random_id;
use crate::names;
use crate::partitions::KEY_OCC;
use crate::stats::Method;

/// How long PublishAsync waits for outstanding acks after the client half-closes.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How often PublishAsync compares its in-flight messages with their partitions' leadership.
const LEADER_CHECK: Duration = Duration::from_millis(100);
/// Responses a PublishAsync session queues for its client. Acks of a local leader go straight
/// in (what finds it full goes over NATS), so it is as deep as the ack queue it replaced.
const RESPONSE_QUEUE: usize = acks::LOCAL_QUEUE;
/// How long a leadership change must persist before in-flight messages published under the
/// old leadership are failed (a new leader that received them acks them well within it).
const LEADER_CHANGE_GRACE: Duration = Duration::from_millis(300);

/// Parses the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
pub fn deadline_of(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn new_inbox(ctx: &Node) -> String {
    ctx.subject(&format!("ack.{}", random_id()))
}

/// The NATS subject of a publish request, after the stream/partition checks of spec §5.
fn target_subject(state: &MetadataState, r: &PublishRequest) -> Result<String> {
    if r.stream.is_empty() {
        return Err(ServerError::InvalidArgument("No stream provided".into()));
    }
    let s = state
        .streams
        .get(&r.stream)
        .ok_or_else(|| ServerError::NotFound(format!("No such stream {}", r.stream)))?;
    let p = s
        .partitions
        .get(&r.partition)
        .ok_or_else(|| ServerError::NotFound(format!("No such partition {}", r.partition)))?;
    if p.readonly {
        return Err(ServerError::FailedPrecondition(
            "Partition is readonly".into(),
        ));
    }
    let occ = s.config.get(KEY_OCC).is_some_and(|v| v == "true");
    if occ && r.ack_policy == AckPolicy::None as i32 {
        return Err(ServerError::InvalidArgument(
            "Optimistic concurrency control requires an ack policy other than NONE".into(),
        ));
    }
    Ok(names::partition_subject(&s.subject, r.partition))
}

/// Whether this node leads `stream`/`partition` and its data directory is below
/// `storage.min.free.bytes` ([`crate::diskspace`]; not counted).
fn leader_disk_full(ctx: &Node, stream: &str, partition: i32) -> Option<DiskFull> {
    // The cached disk reading first: the leadership lookup is only needed when it is full.
    let full = ctx
        .stats
        .disk
        .check(&ctx.config.data_dir, ctx.config.storage.min_free_bytes)
        .err()?;
    leads(ctx, stream, partition).then_some(full)
}

/// Why an UNKNOWN error ack means a full disk on the partition leader, if it does: this node
/// leads the partition and its disk is full (the API check may have read the disk just before
/// it filled), or another node's leader said so in the [`acks::DISK_FULL_HEADER`] header.
fn ack_disk_full(ctx: &Node, a: &Ack, header: Option<String>) -> Option<String> {
    if ack::Error::try_from(a.ack_error).unwrap_or(ack::Error::Unknown) != ack::Error::Unknown {
        return None;
    }
    leader_disk_full(ctx, &a.stream, ack_partition(a))
        .map(|f| f.to_string())
        .or(header)
}

/// The partition an ack is for: the Ack names only the stream's base subject and the subject
/// the message arrived on (`names::partition_subject`); 0 when that does not parse.
fn ack_partition(a: &Ack) -> i32 {
    a.msg_subject
        .strip_prefix(a.partition_subject.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Refuses a publish up front when this node leads the target partition and its data
/// directory is below `storage.min.free.bytes` (counted and logged); other nodes' leaders
/// refuse in their ingest (an UNKNOWN error ack).
fn leader_disk_check(ctx: &Node, r: &PublishRequest) -> Result<()> {
    match leader_disk_full(ctx, &r.stream, r.partition) {
        None => Ok(()),
        Some(full) => {
            if ctx.stats.disk.count_rejected(1) {
                warn!(stream = %r.stream, partition = r.partition, error = %full,
                    refused = ctx.stats.disk.rejected(), "disk full: publish refused");
            }
            Err(ServerError::ResourceExhausted(full.to_string()))
        }
    }
}

/// Refuses a publish while this broker's NATS connection is down. async-nats would buffer the
/// message and deliver it after a reconnect, long after the client's ack deadline, so a client
/// that retried elsewhere would see it twice; refusing at once lets it go to another broker.
fn nats_check(ctx: &Node) -> Result<()> {
    if ctx.nats.connection_state() == async_nats::connection::State::Connected {
        return Ok(());
    }
    Err(ServerError::Unavailable(
        "this broker is not connected to NATS; publish through another broker".into(),
    ))
}

/// The admission chain of Publish and PublishAsync: the stream/partition checks
/// ([`target_subject`]), the leader's disk ([`leader_disk_check`]), the NATS connection
/// ([`nats_check`]), in that order; returns the NATS subject to publish on.
fn admit(ctx: &Node, state: &MetadataState, r: &PublishRequest) -> Result<String> {
    let subject = target_subject(state, r)?;
    leader_disk_check(ctx, r)?;
    nats_check(ctx)?;
    Ok(subject)
}

/// The Publish envelope of `r` for `subject`, acked to `inbox`; moves the request's fields
/// (key and value are shared, not copied).
fn message_of(r: PublishRequest, subject: String, inbox: String) -> Message {
    Message {
        offset: r.expected_offset,
        key: r.key,
        value: r.value,
        stream: r.stream,
        partition: r.partition,
        subject,
        headers: r.headers,
        ack_inbox: inbox,
        correlation_id: r.correlation_id,
        ack_policy: r.ack_policy,
        ..Default::default()
    }
}

/// Publishes `body` on `subject` ([`Node::publish_message`], except with a NATS inbox
/// subscription: that publish follows its SUB on the NATS connection, so the broker has the
/// subscription first); with a deadline and a policy other than NONE, waits for the
/// first ack on `inbox`; returns it with the leader's disk-full text if the ack carried one
/// ([`acks::DISK_FULL_HEADER`]). With `local` (a server-generated inbox and a partition this
/// node leads) the ack is awaited in-process ([`acks::LocalInboxes`]) instead of through a NATS
/// subscription: no SUB/UNSUB and no ack round trip through NATS. Should leadership move to
/// another node in between, that node's ack is not seen and the call times out, as it would
/// if the leader had failed.
async fn publish_and_wait(
    ctx: &Node,
    subject: String,
    inbox: &str,
    body: bytes::Bytes,
    wait: Option<Duration>,
    local: bool,
) -> Result<Option<(Ack, Option<String>)>> {
    let Some(wait) = wait else {
        ctx.publish_message(subject, body).await?;
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + wait;
    if local {
        let mut local = ctx.local_inboxes.register(inbox);
        ctx.publish_message(subject, body).await?;
        return match tokio::time::timeout_at(deadline, local.rx.recv()).await {
            Ok(Some(l)) => Ok(Some((l.ack, l.disk_full))),
            Err(_) | Ok(None) => Err(ServerError::DeadlineExceeded(
                "timed out waiting for ack".into(),
            )),
        };
    }
    let mut sub = ctx
        .nats
        .subscribe(inbox.to_owned())
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    ctx.nats
        .publish(subject, body)
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    let out = loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) | Ok(None) => {
                break Err(ServerError::DeadlineExceeded(
                    "timed out waiting for ack".into(),
                ))
            }
            Ok(Some(m)) => match envelope::decode_ack(&m.payload) {
                Ok(a) => break Ok(Some((a, acks::disk_full_reason(&m)))),
                Err(e) => debug!(error = %e, "non-ack message on an ack inbox ignored"),
            },
        }
    };
    let _ = sub.unsubscribe().await;
    out
}

/// Whether this node leads `stream`/`partition` (its raft replica is the leader).
fn leads(ctx: &Node, stream: &str, partition: i32) -> bool {
    ctx.partitions
        .get(&PartitionId::new(stream, partition))
        .is_some_and(|l| l.replica.is_leader())
}

/// Unary Publish.
pub async fn publish(
    ctx: &Ctx,
    r: PublishRequest,
    deadline: Option<Duration>,
) -> Result<PublishResponse> {
    let subject = admit(ctx, &ctx.raft.metadata().state().state, &r)?;
    // A server-generated inbox is ours alone: its ack can come in-process when we lead.
    let local = r.ack_inbox.is_empty() && leads(ctx, &r.stream, r.partition);
    let inbox = if r.ack_inbox.is_empty() {
        new_inbox(ctx)
    } else {
        r.ack_inbox.clone()
    };
    let wait = deadline.filter(|_| r.ack_policy != AckPolicy::None as i32);
    let body = envelope::encode_publish(&message_of(r, subject.clone(), inbox.clone()));
    let (ack, disk_full) = publish_and_wait(ctx, subject, &inbox, body, wait, local)
        .await?
        .map_or((None, None), |(a, r)| (Some(a), r));
    if let Some(a) = &ack {
        match ack::Error::try_from(a.ack_error).unwrap_or(ack::Error::Unknown) {
            ack::Error::Ok => {}
            ack::Error::TooLarge => {
                return Err(ServerError::InvalidArgument(
                    "message exceeds max replication size".into(),
                ))
            }
            ack::Error::Encryption => return Err(ServerError::Internal("encryption error".into())),
            ack::Error::IncorrectOffset => {
                return Err(ServerError::Unknown("incorrect expected offset".into()))
            }
            ack::Error::Unknown => {
                // The leader's ingest refuses with UNKNOWN when its disk is full: say so.
                if let Some(full) = ack_disk_full(ctx, a, disk_full) {
                    return Err(ServerError::ResourceExhausted(full));
                }
                return Err(ServerError::Unknown("unknown ack error".into()));
            }
        }
    }
    Ok(PublishResponse {
        ack,
        async_error: None,
        correlation_id: String::new(),
    })
}

/// PublishToSubject: no stream checks; ack errors are left inside the Ack, except a full disk
/// on the partition leader, answered ResourceExhausted with the leader's text as Publish does.
pub async fn publish_to_subject(
    ctx: &Ctx,
    r: PublishToSubjectRequest,
    deadline: Option<Duration>,
) -> Result<PublishToSubjectResponse> {
    names::check_publish_subject(&r.subject)?;
    nats_check(ctx)?;
    let inbox = if r.ack_inbox.is_empty() {
        new_inbox(ctx)
    } else {
        r.ack_inbox.clone()
    };
    let body = envelope::encode_publish(&Message {
        offset: -1,
        key: r.key,
        value: r.value,
        subject: r.subject.clone(),
        headers: r.headers,
        ack_inbox: inbox.clone(),
        correlation_id: r.correlation_id,
        ack_policy: r.ack_policy,
        ..Default::default()
    });
    let wait = deadline.filter(|_| r.ack_policy != AckPolicy::None as i32);
    let ack = match publish_and_wait(ctx, r.subject, &inbox, body, wait, false).await? {
        None => None,
        Some((a, disk_full)) => {
            if let Some(full) = ack_disk_full(ctx, &a, disk_full) {
                return Err(ServerError::ResourceExhausted(full));
            }
            Some(a)
        }
    };
    Ok(PublishToSubjectResponse { ack })
}

fn async_code(e: &ServerError) -> publish_async_error::Code {
    use publish_async_error::Code;
    match e {
        ServerError::InvalidArgument(_) => Code::BadRequest,
        ServerError::NotFound(_) => Code::NotFound,
        ServerError::FailedPrecondition(_) => Code::Readonly,
        // The enum has no UNAVAILABLE; INTERNAL is Liftbridge's class for "no leader to serve
        // this right now" (e.g. "no known metadata leader"), which clients retry.
        // A full disk on the leader is transient too (it recovers once space is freed).
        ServerError::Internal(_)
        | ServerError::Unavailable(_)
        | ServerError::ResourceExhausted(_) => Code::Internal,
        _ => Code::Unknown,
    }
}

fn error_response(
    correlation_id: String,
    code: publish_async_error::Code,
    message: String,
) -> PublishResponse {
    PublishResponse {
        ack: Some(Ack::default()),
        async_error: Some(PublishAsyncError {
            code: code as i32,
            message,
        }),
        correlation_id,
    }
}

/// The answer to an in-flight message given up on (see `inflight`).
fn failed_response(f: Failed) -> PublishResponse {
    let e = if f.partition_gone {
        ServerError::NotFound(format!("No such partition {}", f.partition))
    } else {
        ServerError::Unavailable(format!(
            "partition {} of stream {} changed leader before acknowledging the message; retry",
            f.partition, f.stream
        ))
    };
    error_response(f.correlation_id, async_code(&e), e.to_string())
}

/// The partition leadership recorded in the metadata: what a message is tracked under. A
/// leader records itself only once its ingest is subscribed, so a message published under the
/// record reaches the recorded leader (or is failed when leadership moves on).
fn recorded_leadership(state: &MetadataState, stream: &str, partition: i32) -> Option<Leadership> {
    let p = state.streams.get(stream)?.partitions.get(&partition)?;
    Some((p.leader, p.leader_epoch))
}

/// A partition's leadership as freshly as this node knows it, what tracked messages are
/// compared with: the metadata record, or the hosted replica's own view once its raft term has
/// moved past the record (an election is under way or its winner has not recorded itself yet);
/// `None` when the partition is gone.
fn leadership_of(
    ctx: &Node,
    state: &MetadataState,
    stream: &str,
    partition: i32,
) -> Option<Leadership> {
    let recorded = recorded_leadership(state, stream, partition)?;
    match ctx.partitions.get(&PartitionId::new(stream, partition)) {
        Some(local) if local.replica.term() > recorded.1 => {
            Some((local.replica.leader(), local.replica.term()))
        }
        _ => Some(recorded),
    }
}

/// The response to an ack that reached a PublishAsync session, `None` when it answers a
/// message already failed ([`AckFate::AlreadyFailed`]); records the call's latency for a
/// tracked message.
fn ack_response(
    ctx: &Node,
    a: Ack,
    disk_full: Option<String>,
    fate: AckFate,
) -> Option<PublishResponse> {
    let published_at = match fate {
        AckFate::AlreadyFailed => {
            debug!(correlation_id = %a.correlation_id, "late ack of a message already failed dropped");
            return None;
        }
        AckFate::Tracked(at) => Some(at),
        AckFate::Untracked => None,
    };
    let ack_error = ack::Error::try_from(a.ack_error).unwrap_or(ack::Error::Unknown);
    if let Some(at) = published_at {
        let code = match ack_error {
            ack::Error::Ok => Code::Ok,
            ack::Error::TooLarge => Code::InvalidArgument,
            ack::Error::IncorrectOffset => Code::FailedPrecondition,
            ack::Error::Encryption => Code::Internal,
            ack::Error::Unknown => Code::Unknown,
        };
        ctx.stats
            .requests
            .observe(Method::PublishAsync, code, at.elapsed());
    }
    Some(match ack_error {
        ack::Error::Ok => PublishResponse {
            correlation_id: a.correlation_id.clone(),
            ack: Some(a),
            async_error: None,
        },
        err => {
            // An UNKNOWN ack may be a full disk (this node's ingest, or another leader's that
            // says so in a header): say so.
            let full = ack_disk_full(ctx, &a, disk_full);
            let (code, message) = match (err, full) {
                (_, Some(full)) => (publish_async_error::Code::Internal, full),
                (ack::Error::IncorrectOffset, _) => (
                    publish_async_error::Code::IncorrectOffset,
                    format!("{err:?}"),
                ),
                (ack::Error::TooLarge, _) => {
                    (publish_async_error::Code::BadRequest, format!("{err:?}"))
                }
                (ack::Error::Encryption, _) => (
                    publish_async_error::Code::EncryptionFailed,
                    format!("{err:?}"),
                ),
                _ => (publish_async_error::Code::Unknown, format!("{err:?}")),
            };
            PublishResponse {
                correlation_id: a.correlation_id.clone(),
                async_error: Some(PublishAsyncError {
                    code: code as i32,
                    message,
                }),
                ack: Some(a),
            }
        }
    })
}

/// A PublishAsync session's [`acks::AckSink`]: turns acks handed over in-process into
/// responses on the spot (on the acker's or flusher's thread), so no task sits between a local
/// leader and the response stream.
struct SessionSink {
    ctx: Ctx,
    flights: Arc<Mutex<InFlight>>,
    tx: mpsc::Sender<Result<PublishResponse, Status>>,
    /// Notified when the sink settles the last tracked message (a draining session ends then).
    settled: Arc<Notify>,
}

impl acks::AckSink for SessionSink {
    fn take(&self, acks: Vec<Ack>, disk_full: Option<&str>) -> Option<Vec<Ack>> {
        // Room first: acks that cannot be answered now go back untouched (over NATS).
        let Ok(permits) = self.tx.try_reserve_many(acks.len()) else {
            return Some(acks);
        };
        let (fates, settled): (Vec<AckFate>, bool) = {
            let mut f = self.flights.lock();
            let fates = acks
                .iter()
                .map(|a| f.acked(&a.correlation_id, &a.stream))
                .collect();
            (fates, f.is_empty())
        };
        let responses = acks
            .into_iter()
            .zip(fates)
            .filter_map(|(a, fate)| ack_response(&self.ctx, a, disk_full.map(str::to_owned), fate));
        for (permit, resp) in permits.zip(responses) {
            permit.send(Ok(resp));
        }
        if settled {
            self.settled.notify_one();
        }
        None
    }
}

/// PublishAsync: a spawned reader of requests, a spawned reader of acks that come over NATS
/// (which also fails the in-flight messages whose partition leader changed, see `inflight`),
/// the session's [`SessionSink`] for acks handed over in-process, one bounded output.
pub async fn publish_async(
    ctx: Ctx,
    mut requests: Streaming<PublishRequest>,
) -> Result<ReceiverStream<Result<PublishResponse, Status>>> {
    let inbox = new_inbox(&ctx);
    let (tx, rx) = mpsc::channel::<Result<PublishResponse, Status>>(RESPONSE_QUEUE);
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    // Acks of partitions this node leads are taken in-process, straight into the response
    // stream; others' (and any the stream had no room for) come over NATS.
    let settled = Arc::new(Notify::new());
    let sink = Arc::new(SessionSink {
        ctx: ctx.clone(),
        flights: in_flight.clone(),
        tx: tx.clone(),
        settled: settled.clone(),
    });
    let local = ctx.local_inboxes.register_sink(&inbox, sink);
    let mut acks = ctx
        .nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    ctx.nats
        .flush()
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);

    // Acks from the leaders → responses; leader changes → error responses.
    let ack_tx = tx.clone();
    let flights = in_flight.clone();
    let actx = ctx.clone();
    tokio::spawn(async move {
        // Unregistered when this task ends.
        let _local = local;
        // Set when the client half-closed: from then on, wait at most DRAIN_WAIT for the acks
        // still outstanding.
        let mut drain_until: Option<tokio::time::Instant> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut check = tokio::time::interval(LEADER_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if drain_until.is_some() && flights.lock().is_empty() {
                return;
            }
            let batch: Vec<(Ack, Option<String>)> = tokio::select! {
                m = acks.next() => {
                    let Some(m) = m else { return };
                    match envelope::decode_ack(&m.payload) {
                        Ok(a) => vec![(a, acks::disk_full_reason(&m))],
                        Err(e) => {
                            debug!(error = %e, "non-ack message on a PublishAsync inbox ignored");
                            continue;
                        }
                    }
                }
                // The sink answered the last tracked message: look again at the top.
                _ = settled.notified(), if drain_until.is_some() => continue,
                _ = crate::context::until_true(&mut done_rx), if drain_until.is_none() => {
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_WAIT);
                    continue;
                }
                _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => return,
                _ = check.tick() => {
                    let failed = {
                        let mut f = flights.lock();
                        if f.is_empty() {
                            continue;
                        }
                        let state = actx.raft.metadata().state().state;
                        f.expire(std::time::Instant::now(), LEADER_CHANGE_GRACE, |s, p| {
                            leadership_of(&actx, &state, s, p)
                        })
                    };
                    if !failed.is_empty() {
                        debug!(count = failed.len(), "PublishAsync: failing messages whose partition leader changed");
                    }
                    for f in failed {
                        let code = if f.partition_gone { Code::NotFound } else { Code::Unavailable };
                        actx.stats
                            .requests
                            .observe(Method::PublishAsync, code, f.published_at.elapsed());
                        if ack_tx.send(Ok(failed_response(f))).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
            };
            // One lock of the table for the whole batch, one reservation of response room.
            let fates: Vec<AckFate> = {
                let mut f = flights.lock();
                batch
                    .iter()
                    .map(|(a, _)| f.acked(&a.correlation_id, &a.stream))
                    .collect()
            };
            let responses: Vec<PublishResponse> = batch
                .into_iter()
                .zip(fates)
                .filter_map(|((a, disk_full), fate)| ack_response(&actx, a, disk_full, fate))
                .collect();
            if responses.is_empty() {
                continue;
            }
            let Ok(permits) = ack_tx.reserve_many(responses.len()).await else {
                return;
            };
            for (permit, resp) in permits.zip(responses) {
                permit.send(Ok(resp));
            }
        }
    });

    // Requests → NATS.
    tokio::spawn(async move {
        loop {
            let req = match requests.next().await {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    debug!(error = %e, "PublishAsync request stream ended with an error");
                    break;
                }
                None => break,
            };
            // One metadata read per request: admission and the leadership it is tracked under.
            let state = ctx.raft.metadata().state().state;
            let subject = match admit(&ctx, &state, &req) {
                Ok(s) => s,
                Err(e) => {
                    let resp =
                        error_response(req.correlation_id.clone(), async_code(&e), e.to_string());
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let policy = AckPolicy::try_from(req.ack_policy).unwrap_or(AckPolicy::Leader);
            if policy != AckPolicy::None {
                let leadership =
                    recorded_leadership(&state, &req.stream, req.partition).unwrap_or((None, 0));
                in_flight
                    .lock()
                    .track(&req.correlation_id, &req.stream, req.partition, leadership);
            }
            drop(state);
            let msg = message_of(req, subject.clone(), inbox.clone());
            let body = envelope::encode_publish(&msg);
            if let Err(e) = ctx.publish_message(subject, body).await {
                if policy != AckPolicy::None {
                    in_flight
                        .lock()
                        .untrack(&msg.correlation_id, &msg.stream, msg.partition);
                }
                let resp = error_response(
                    msg.correlation_id,
                    publish_async_error::Code::Internal,
                    format!("publish failed: {e}"),
                );
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        }
        done_tx.send_replace(true);
    });
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_partition_from_subjects() {
        let ack = |base: &str, msg: &str| Ack {
            partition_subject: base.into(),
            msg_subject: msg.into(),
            ..Default::default()
        };
        assert_eq!(ack_partition(&ack("orders", "orders")), 0);
        assert_eq!(ack_partition(&ack("orders", "orders.3")), 3);
        assert_eq!(ack_partition(&ack("orders", "ordersx.3")), 0);
        assert_eq!(ack_partition(&ack("orders", "other")), 0);
    }
}
