//! NATS ingest of one partition on its leader (spec §6–§8): subscribe to the partition subject,
//! turn NATS messages into records, batch them into raft proposals, send acks.
//!
//! The loop, per batch:
//! 1. take one message (waiting), then whatever else has already arrived, up to
//!    `batch.max.messages` (and, only if `batch.max.time` > 0, wait up to that long to fill it);
//! 2. per message: reject above `clustering.replication.max.bytes` (TOO_LARGE ack), decode a
//!    Publish envelope or keep the whole payload raw, check the expected offset on streams with
//!    optimistic concurrency control (INCORRECT_OFFSET ack), add the `subject` and `reply`
//!    headers, stamp the leader's time (ns);
//! 3. propose the batch; wait until it is durable in the local log; send LEADER acks;
//! 4. hand it to the committer task, which waits for the raft commit (raft has then applied the
//!    batch and raised the partition log's high watermark, so it is readable) and sends ALL acks.
//!
//! Invariants:
//! - Order: a batch is proposed only after the previous one is in the local raft log, and the
//!   committer handles batches in proposal order, so offsets follow NATS arrival order and acks
//!   of one policy go out in offset order.
//! - Offsets: after taking over, the leader waits until it has applied its whole log; from then
//!   on only its own proposals take offsets, so `next` (the offset the next record gets) is exact.
//!   A committed batch whose offsets differ from the expected ones ends the ingest (it restarts
//!   from raft's state if this node still leads).
//! - The loop ends when told to stop (leadership lost, stream deleted, shutdown) or when a
//!   proposal fails; the NATS subscription is dropped (unsubscribed) when it ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::{ack, AckPolicy};
use drawbridge_raft::{PartitionReplica, Proposal};
use drawbridge_storage::RecordBatchBuilder;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::acks::{self, PendingAck};
use crate::context::Ctx;
use crate::envelope;
use crate::error::{Result, ServerError};
use crate::stats::PartitionStats;

/// How long a proposal may take to reach the local log / to commit before ingest gives up.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Batches that may wait for commit at once (back-pressure on the NATS subscription).
const COMMIT_QUEUE: usize = 64;

/// What the ingest of one partition needs to know about its stream.
#[derive(Debug, Clone)]
pub struct IngestParams {
    /// Stream name.
    pub stream: String,
    /// Stream subject (partition 0's subject).
    pub base_subject: String,
    /// The subject this partition records.
    pub subject: String,
    /// Queue group ("" = plain subscription).
    pub group: String,
    /// Optimistic concurrency control on this stream.
    pub occ: bool,
    /// The replica's counters (messages and bytes in, reception times).
    pub stats: Arc<PartitionStats>,
}

struct Committing {
    proposal: Proposal,
    base: u64,
    all_acks: Vec<(PendingAck, u64)>,
}

/// Waits until the new leader has applied its whole log, so `next_offset` is exact.
async fn catch_up(replica: &PartitionReplica) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + APPEND_TIMEOUT;
    loop {
        if !replica.is_leader() {
            return Err(ServerError::FailedPrecondition(
                "lost partition leadership".into(),
            ));
        }
        let last = replica.last_log_index().unwrap_or(0);
        if replica.applied_index() >= last {
            return Ok(replica.next_offset());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServerError::Internal(
                "leader did not apply its log in time".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the ingest of one partition until `stop` flips or a proposal fails.
pub async fn run(
    ctx: Ctx,
    replica: PartitionReplica,
    p: IngestParams,
    mut stop: watch::Receiver<bool>,
    on_ready: impl FnOnce(),
) -> Result<()> {
    let mut next = catch_up(&replica).await?;
    let term = replica.term();
    let mut sub = if p.group.is_empty() {
        ctx.nats.subscribe(p.subject.clone()).await
    } else {
        ctx.nats
            .queue_subscribe(p.subject.clone(), p.group.clone())
            .await
    }
    .map_err(|e| ServerError::Nats(e.to_string()))?;
    // Make sure NATS has the subscription before telling anyone that the partition records.
    ctx.nats
        .flush()
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    on_ready();
    info!(stream = %p.stream, subject = %p.subject, next, term, "partition leader: ingest started");

    let (tx, rx) = mpsc::channel::<Committing>(COMMIT_QUEUE);
    let committer = tokio::spawn(commit_loop(ctx.clone(), p.clone(), rx));
    let max_bytes =
        usize::try_from(ctx.config.clustering.replication_max_bytes).unwrap_or(usize::MAX);
    let max_batch = ctx.config.batch_max_messages.max(1);
    let max_time = ctx.config.batch_max_time;

    let result = loop {
        let first = tokio::select! {
            _ = crate::context::until_true(&mut stop) => break Ok(()),
            m = sub.next() => match m {
                Some(m) => m,
                None => break Err(ServerError::Nats("subscription closed".into())),
            },
        };
        let mut msgs = vec![first];
        while msgs.len() < max_batch {
            match sub.next().now_or_never() {
                Some(Some(m)) => msgs.push(m),
                _ => break,
            }
        }
        if !max_time.is_zero() && msgs.len() < max_batch {
            let until = tokio::time::Instant::now() + max_time;
            while msgs.len() < max_batch {
                match tokio::time::timeout_at(until, sub.next()).await {
                    Ok(Some(m)) => msgs.push(m),
                    _ => break,
                }
            }
        }

        let mut builder = RecordBatchBuilder::new();
        // Records and value bytes of this batch, first and last reception time (metrics).
        let (mut bytes_in, mut first_ns, mut last_ns) = (0u64, 0i64, 0i64);
        let mut leader_acks: Vec<(PendingAck, u64)> = Vec::new();
        let mut all_acks: Vec<(PendingAck, u64)> = Vec::new();
        let base = next;
        for msg in msgs {
            let reception_ns = acks::now_ns();
            let subject = msg.subject.to_string();
            let reply = msg
                .reply
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default();
            let decoded = envelope::decode_publish(&msg.payload).ok();
            let pending = decoded
                .as_ref()
                .filter(|m| !m.ack_inbox.is_empty())
                .map(|m| PendingAck {
                    inbox: m.ack_inbox.clone(),
                    correlation_id: m.correlation_id.clone(),
                    policy: AckPolicy::try_from(m.ack_policy).unwrap_or(AckPolicy::Leader),
                    msg_subject: subject.clone(),
                    reception_ns,
                });
            if msg.payload.len() > max_bytes {
                if crate::limits::count(&ctx.stats.limits.message_too_large) {
                    warn!(stream = %p.stream, len = msg.payload.len(), max_bytes,
                        "message over clustering.replication.max.bytes dropped");
                }
                if let Some(pa) = &pending {
                    acks::send(
                        &ctx.nats,
                        &acks::build(&p.stream, &p.base_subject, pa, 0, ack::Error::TooLarge),
                    )
                    .await;
                }
                continue;
            }
            let (key, value, mut headers): (Option<Bytes>, Bytes, Vec<(String, Bytes)>) =
                match decoded {
                    Some(m) => {
                        if p.occ && m.offset != -1 && u64::try_from(m.offset).ok() != Some(next) {
                            if let Some(pa) = &pending {
                                acks::send(
                                    &ctx.nats,
                                    &acks::build(
                                        &p.stream,
                                        &p.base_subject,
                                        pa,
                                        0,
                                        ack::Error::IncorrectOffset,
                                    ),
                                )
                                .await;
                            }
                            continue;
                        }
                        let key = (!m.key.is_empty()).then_some(m.key);
                        let headers = m
                            .headers
                            .into_iter()
                            .filter(|(k, _)| k != "subject" && k != "reply")
                            .collect();
                        (key, m.value, headers)
                    }
                    None => (None, msg.payload.clone(), Vec::new()),
                };
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            headers.push(("subject".to_owned(), Bytes::from(subject.clone())));
            headers.push(("reply".to_owned(), Bytes::from(reply)));
            let hdrs: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_ref()))
                .collect();
            builder.push(reception_ns, key.as_deref(), &hdrs, &value);
            bytes_in += value.len() as u64;
            if first_ns == 0 {
                first_ns = reception_ns;
            }
            last_ns = reception_ns;
            if let Some(pa) = pending {
                match pa.policy {
                    AckPolicy::Leader => leader_acks.push((pa, next)),
                    AckPolicy::All => all_acks.push((pa, next)),
                    AckPolicy::None => {}
                }
            }
            next += 1;
        }
        if builder.is_empty() {
            continue;
        }
        let count = match u32::try_from(builder.len()) {
            Ok(c) => c,
            Err(_) => break Err(ServerError::Internal("batch too large".into())),
        };
        let body = match builder.finish() {
            Ok(b) => b,
            Err(e) => break Err(e.into()),
        };
        let mut proposal = replica.propose(body, count);
        if let Err(e) = proposal.appended_locally(APPEND_TIMEOUT).await {
            break Err(e.into());
        }
        p.stats
            .received(u64::from(count), bytes_in, first_ns, last_ns);
        for (pa, offset) in &leader_acks {
            let off = i64::try_from(*offset).unwrap_or(i64::MAX);
            acks::send(
                &ctx.nats,
                &acks::build(&p.stream, &p.base_subject, pa, off, ack::Error::Ok),
            )
            .await;
        }
        let job = Committing {
            proposal,
            base,
            all_acks,
        };
        if tx.send(job).await.is_err() {
            break Err(ServerError::Internal("committer stopped".into()));
        }
    };
    drop(sub);
    drop(tx);
    match committer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(stream = %p.stream, subject = %p.subject, error = %e, "committer failed")
        }
        Err(e) => warn!(stream = %p.stream, error = %e, "committer task failed"),
    }
    info!(stream = %p.stream, subject = %p.subject, "ingest stopped");
    result
}

/// Waits for each batch's commit in proposal order and sends its ALL acks. A committed batch
/// is already readable: raft applied it and raised the partition log's high watermark before
/// `committed` returned.
async fn commit_loop(ctx: Ctx, p: IngestParams, mut rx: mpsc::Receiver<Committing>) -> Result<()> {
    while let Some(job) = rx.recv().await {
        let offsets = job.proposal.committed(APPEND_TIMEOUT).await?;
        if offsets.base_offset != job.base {
            return Err(ServerError::Internal(format!(
                "raft assigned offset {} to a batch expected at {}",
                offsets.base_offset, job.base
            )));
        }
        for (pa, offset) in &job.all_acks {
            let off = i64::try_from(*offset).unwrap_or(i64::MAX);
            acks::send(
                &ctx.nats,
                &acks::build(&p.stream, &p.base_subject, pa, off, ack::Error::Ok),
            )
            .await;
        }
    }
    Ok(())
}
