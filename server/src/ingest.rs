//! NATS ingest of one partition on its leader (spec §6–§8): subscribe to the partition subject,
//! turn NATS messages into records, batch them into raft proposals, send acks.
//!
//! Three tasks per partition, joined by bounded channels:
//! - the **loop** (in [`run`]), per batch:
//!   1. take one message (waiting), then whatever else has already arrived, up to
//!      `batch.max.messages` (and, only if `batch.max.time` > 0, wait up to that long to fill it);
//!   2. if the stream has optimistic concurrency control and a message of the batch names an
//!      expected offset, drain: wait until every proposal in flight is durable and acked; if the
//!      partition is readonly, drop the batch; if it is paused, resume it first (a committed
//!      `ResumePartition`; the batch is dropped if that fails); if `data.dir` is below
//!      `storage.min.free.bytes`, drop the batch with UNKNOWN error acks ([`crate::diskspace`])
//!      instead of proposing it;
//!   3. per message: reject above `clustering.replication.max.bytes` (TOO_LARGE ack), decode a
//!      Publish envelope or keep the whole payload raw, check the expected offset on streams
//!      with optimistic concurrency control (INCORRECT_OFFSET ack), add the `subject` and
//!      `reply` headers, stamp the leader's time (ns); on an encrypted stream seal the value for
//!      the record's offset ([`crate::encryption`]; ENCRYPTION ack and not stored on failure);
//!   0. (before step 1) take an in-flight slot (at most `MAX_IN_FLIGHT` proposals), so a
//!      batch is collected only once it can be proposed: what arrives while every slot is
//!      taken goes into one batch;
//!   4. submit the batch with
//!      [`PartitionReplica::propose_in_order`] and hand it to the acker; do not wait for it.
//!      The batch's LEADER acks ride on the proposal as its durability callback
//!      ([`drawbridge_raft::OnDurable`], `leader_acker`): they are handed to local PublishAsync
//!      and Publish sessions right where the log reports the batch durable (openraft's core
//!      under a lazy sync policy, the flusher thread after the fsync otherwise), without a
//!      task hop; acks for inboxes that are not local are left to the acker;
//! - the **acker** (`ack_loop`) takes the proposals in submission order, waits until each is
//!   durable in the local log, sends the LEADER acks the callbacks left to NATS, records the
//!   batch's metrics, frees its slot and hands it on;
//! - the **committer** (`commit_loop`) waits for each batch's raft commit in the same order
//!   (raft has then applied the batch and raised the partition log's high watermark, so it is
//!   readable) and sends ALL acks.
//!
//! Invariants:
//! - Order: the loop submits batches one after the other with `propose_in_order`, so raft log
//!   order = submission order = NATS arrival order; acker and committer handle batches in that
//!   order, so acks of one policy go out in offset order.
//! - Offsets: after taking over, the leader waits until it has applied its whole log; every
//!   proposal is conditional on the term this ingest started in, so from then on only this
//!   ingest's proposals take offsets, and `next` (the offset the next record gets, counting the
//!   batches in flight) is exact while they succeed. Expected offsets are checked only with
//!   nothing in flight (step 2), i.e. against offsets durable in the local log, as before
//!   pipelining. A committed batch whose offsets differ from the expected ones ends the ingest
//!   (it restarts from raft's state if this node still leads).
//! - Acks: LEADER only after the batch is durable in the local log (its callback runs only
//!   then, and never for a batch that was not appended or was cut before its flush), ALL only
//!   after commit, none for a failed proposal. The first failed proposal ends the ingest; the
//!   acker then waits (bounded) until every later proposal has been appended or has failed, so
//!   a restarted ingest never races a stale proposal for offsets. Callbacks run in log order
//!   and the acker drains what they left in that order, so LEADER acks to one inbox keep
//!   offset order (except when a local session's queue was full, see [`crate::acks`]).
//! - The loop ends when told to stop (leadership lost, stream deleted, shutdown) or when a
//!   proposal fails; the NATS subscription (in-process on the embedded broker, see
//!   [`crate::embedded_nats::local`]) is dropped (unsubscribed) when it ends; [`run`]
//!   returns after acker and committer have finished.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::Ack;
use drawbridge_proto::api::{ack, AckPolicy};
use drawbridge_raft::{OnDurable, PartitionReplica, Proposal};
use drawbridge_storage::RecordBatchBuilder;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::acks::{self, PendingAck};
use crate::context::Ctx;
use crate::dedup::{self, Dedup, Verdict};
use crate::encryption::PartitionCipher;
use crate::envelope;
use crate::error::{Result, ServerError};
use crate::stats::PartitionStats;

/// How long a proposal may take to reach the local log / to commit before ingest gives up.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Batches that may wait for commit at once (back-pressure on the NATS subscription).
const COMMIT_QUEUE: usize = 64;
/// Proposals submitted but not yet durable and LEADER-acked, at most. While one batch is being
/// fsynced the next ones are already in the log, so one group-commit fdatasync covers several
/// batches; the bound caps memory and what a leader change fails at once. 1 = the closed loop
/// (propose, wait until durable, ack, next batch). Batches are often small (a pipelined
/// publisher's messages trickle in one by one), and every slot taken during an fsync caps how
/// many messages the next fsync can cover: at 16 slots, one-message batches and a 1 ms
/// fdatasync allowed about 16k msgs/s under sync-before-ack.
const MAX_IN_FLIGHT: u32 = 128;

/// What the ingest of one partition needs to know about its stream.
#[derive(Debug, Clone)]
pub struct IngestParams {
    /// Stream name.
    pub stream: String,
    /// Partition number.
    pub partition: i32,
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
    /// How values are stored ([`crate::encryption`]).
    pub cipher: Cipher,
}

/// How an ingest stores values.
#[derive(Debug, Clone)]
pub enum Cipher {
    /// In plaintext (the stream is not encrypted).
    Plain,
    /// Sealed with the partition's data key, for the offset each record gets.
    Sealed(Arc<PartitionCipher>),
    /// The stream is encrypted but its data key cannot be unwrapped here: every message gets
    /// an ENCRYPTION ack and nothing is stored (the reason is logged once at start).
    Unavailable(String),
}

/// A submitted batch on its way to the acker.
struct InFlight {
    proposal: Proposal,
    base: u64,
    count: u32,
    /// Value bytes, first and last reception time (metrics, recorded once durable).
    bytes_in: u64,
    first_ns: i64,
    last_ns: i64,
    all_acks: Vec<(PendingAck, u64)>,
    /// The batch's in-flight slot, freed once its LEADER acks are out.
    slot: OwnedSemaphorePermit,
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
    // The term this ingest leads in: every proposal is conditional on it (module docs).
    let lead = replica.watch_leadership().current();
    if !lead.is_local {
        return Err(ServerError::FailedPrecondition(
            "lost partition leadership".into(),
        ));
    }
    let term = lead.term;
    let mut next = catch_up(&replica).await?;
    // Idempotent publish: what this partition already stores, from its newest messages.
    let log = replica.log();
    let mut dedup = match tokio::task::spawn_blocking(move || Dedup::rebuild(&log)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(ServerError::Internal(format!("dedup rebuild failed: {e}"))),
    };
    if replica.term() != term {
        return Err(ServerError::FailedPrecondition(
            "partition leadership changed during catch-up".into(),
        ));
    }
    let mut sub = subscribe(&ctx, &p).await?;
    on_ready();
    info!(stream = %p.stream, subject = %p.subject, next, term, "partition leader: ingest started");

    let meta = ctx.raft.metadata().watch();
    let (commit_tx, commit_rx) = mpsc::channel::<Committing>(COMMIT_QUEUE);
    let committer = tokio::spawn(commit_loop(ctx.clone(), p.clone(), commit_rx));
    // Slots bound the channel's occupancy, so sends to the acker never wait.
    let (job_tx, job_rx) = mpsc::channel::<InFlight>(MAX_IN_FLIGHT as usize);
    let unsent = Unsent::default();
    let mut acker = tokio::spawn(ack_loop(
        ctx.clone(),
        p.clone(),
        job_rx,
        commit_tx,
        unsent.clone(),
    ));
    // Set once the loop has awaited the acker (a JoinHandle must not be polled again).
    let mut acker_done = false;
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    let max_bytes =
        usize::try_from(ctx.config.clustering.replication_max_bytes).unwrap_or(usize::MAX);
    let max_batch = ctx.config.batch_max_messages.max(1);
    let max_time = ctx.config.batch_max_time;

    let result = loop {
        // Take the in-flight slot before collecting the batch: while every slot is taken (the
        // proposals in flight wait for one group-commit fsync), messages queue up on the
        // subscription and all go into the next batch, instead of a batch collected early
        // waiting with the few messages it had.
        let slot = tokio::select! {
            biased;
            _ = crate::context::until_true(&mut stop) => break Ok(()),
            r = &mut acker => break acker_ended(&mut acker_done, r),
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break Err(ServerError::Internal("in-flight slots closed".into())),
            },
        };
        let first = tokio::select! {
            _ = crate::context::until_true(&mut stop) => break Ok(()),
            r = &mut acker => break acker_ended(&mut acker_done, r),
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
        let decoded: Vec<_> = msgs
            .iter()
            .map(|m| envelope::decode_publish_shared(&m.payload).ok())
            .collect();

        // Expected offsets are checked against durable offsets only: drain first (this batch
        // holds one slot, so every other slot free = nothing in flight).
        if p.occ && decoded.iter().flatten().any(|m| m.offset != -1) {
            tokio::select! {
                biased;
                r = &mut acker => break acker_ended(&mut acker_done, r),
                all = slots.acquire_many(MAX_IN_FLIGHT - 1) => drop(all),
            }
            if acker.is_finished() {
                let r = (&mut acker).await;
                break acker_ended(&mut acker_done, r);
            }
        }

        let (paused, readonly) = {
            let view = meta.borrow();
            view.state
                .streams
                .get(&p.stream)
                .and_then(|s| s.partitions.get(&p.partition))
                .map_or((false, false), |m| (m.paused, m.readonly))
        };
        if readonly {
            debug!(stream = %p.stream, partition = p.partition, n = msgs.len(),
                "partition is readonly: messages dropped");
            continue;
        }
        if paused {
            info!(stream = %p.stream, partition = p.partition, "published to while paused: resuming");
            if let Err(e) = crate::api::pause::resume(&ctx, &p.stream, p.partition).await {
                warn!(stream = %p.stream, partition = p.partition, error = %e,
                    "resuming a paused partition failed: messages dropped");
                continue;
            }
        }

        // Disk full: refuse the batch rather than let the raft append hit ENOSPC.
        if let Err(full) = ctx
            .stats
            .disk
            .check(&ctx.config.data_dir, ctx.config.storage.min_free_bytes)
        {
            refuse_disk_full(&ctx, &p, &msgs, &decoded, full).await;
            continue;
        }

        let mut builder = RecordBatchBuilder::new();
        // Records and value bytes of this batch, first and last reception time (metrics).
        let (mut bytes_in, mut first_ns, mut last_ns) = (0u64, 0i64, 0i64);
        let mut leader_acks: Vec<(PendingAck, u64)> = Vec::new();
        let mut all_acks: Vec<(PendingAck, u64)> = Vec::new();
        // Acks of duplicates: the stored message's offset (if known), and the offset that must
        // be committed before the ack goes out.
        let mut dup_acks: Vec<(PendingAck, Option<u64>, Option<u64>)> = Vec::new();
        let base = next;
        for (msg, mut decoded) in msgs.into_iter().zip(decoded) {
            let reception_ns = acks::now_ns();
            // The inbox and correlation id move into the pending ack (nothing else reads them).
            let pending = decoded
                .as_mut()
                .filter(|m| !m.ack_inbox.is_empty())
                .map(|m| PendingAck {
                    inbox: std::mem::take(&mut m.ack_inbox),
                    correlation_id: std::mem::take(&mut m.correlation_id),
                    policy: AckPolicy::try_from(m.ack_policy).unwrap_or(AckPolicy::Leader),
                    msg_subject: msg.subject.to_string(),
                    reception_ns,
                });
            if msg.payload.len() > max_bytes {
                if crate::limits::count(&ctx.stats.limits.message_too_large) {
                    warn!(stream = %p.stream, len = msg.payload.len(), max_bytes,
                        "message over clustering.replication.max.bytes dropped");
                }
                if let Some(pa) = pending {
                    acks::send(
                        &ctx,
                        acks::build(&p.stream, &p.base_subject, pa, 0, ack::Error::TooLarge),
                    )
                    .await;
                }
                continue;
            }
            let ident = decoded
                .as_ref()
                .and_then(|m| dedup::identity(m.headers.iter().map(|(k, v)| (k.as_str(), v))));
            if let Some((producer, seq)) = &ident {
                if let Verdict::Duplicate(stored) = dedup.check(producer, *seq) {
                    debug!(stream = %p.stream, seq, ?stored, "duplicate publish not appended");
                    if let Some(pa) = pending {
                        // Unknown offset: it is below `next`, so wait for all before it.
                        let wait = stored.or(next.checked_sub(1));
                        dup_acks.push((pa, stored, wait));
                    }
                    continue;
                }
            }
            // Key, value and header values are slices of the NATS payload (no copies).
            let (key, value, user_headers) = match decoded {
                Some(m) => {
                    if p.occ && m.offset != -1 && u64::try_from(m.offset).ok() != Some(next) {
                        if let Some(pa) = pending {
                            acks::send(
                                &ctx,
                                acks::build(
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
                    (key, m.value, m.headers)
                }
                None => (None, msg.payload.clone(), Default::default()),
            };
            // Encryption at rest: sealed for exactly the offset this record gets (`next`, exact
            // while proposals succeed, see the module invariants); a record that cannot be
            // sealed is not stored.
            let value = match &p.cipher {
                Cipher::Plain => value,
                Cipher::Sealed(c) => match c.seal(next, &value) {
                    Ok(v) => Bytes::from(v),
                    Err(e) => {
                        warn!(stream = %p.stream, partition = p.partition, error = %e,
                            "sealing a value failed: message dropped");
                        send_encryption_ack(&ctx, &p, pending).await;
                        continue;
                    }
                },
                Cipher::Unavailable(reason) => {
                    debug!(stream = %p.stream, partition = p.partition, %reason,
                        "no usable data key: message dropped");
                    send_encryption_ack(&ctx, &p, pending).await;
                    continue;
                }
            };
            // User headers sorted by name (minus any "subject"/"reply" of their own), then the
            // NATS subject and reply subject.
            let mut hdrs: Vec<(&str, &[u8])> = Vec::with_capacity(user_headers.len() + 2);
            hdrs.extend(
                user_headers
                    .iter()
                    .filter(|(k, _)| *k != "subject" && *k != "reply")
                    .map(|(k, v)| (k.as_str(), v.as_ref())),
            );
            hdrs.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hdrs.push(("subject", msg.subject.as_bytes()));
            hdrs.push((
                "reply",
                msg.reply.as_ref().map_or(&[][..], |r| r.as_bytes()),
            ));
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
            if let Some((producer, seq)) = ident {
                dedup.record(producer, seq, next);
            }
            next += 1;
        }
        if !dup_acks.is_empty() {
            ack_duplicates(ctx.clone(), p.clone(), &replica, dup_acks);
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
        let on_durable =
            (!leader_acks.is_empty()).then(|| leader_acker(&ctx, &p, leader_acks, &unsent));
        let proposal = match replica
            .propose_in_order(body, count, term, on_durable)
            .await
        {
            Ok(proposal) => proposal,
            Err(e) => break Err(e.into()),
        };
        let job = InFlight {
            proposal,
            base,
            count,
            bytes_in,
            first_ns,
            last_ns,
            all_acks,
            slot,
        };
        if job_tx.send(job).await.is_err() {
            let r = (&mut acker).await;
            break acker_ended(&mut acker_done, r);
        }
    };
    drop(sub);
    // The acker drains what is in flight, then drops the committer's sender.
    drop(job_tx);
    if !acker_done {
        if let Err(e) = flatten(acker.await) {
            warn!(stream = %p.stream, subject = %p.subject, error = %e, "acker failed");
        }
    }
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

/// Subscribes to the partition's subject and returns once the broker has the subscription:
/// in-process on the embedded broker ([`crate::embedded_nats::local`]), else on the NATS
/// connection, flushed.
async fn subscribe(ctx: &Ctx, p: &IngestParams) -> Result<BoxStream<'static, async_nats::Message>> {
    let queue = (!p.group.is_empty()).then(|| p.group.clone());
    if let Some(local) = &ctx.local_nats {
        return local
            .subscribe(p.subject.clone(), queue)
            .map(|s| s.boxed())
            .map_err(|e| ServerError::Nats(e.to_string()));
    }
    let sub = match queue {
        None => ctx.nats.subscribe(p.subject.clone()).await,
        Some(q) => ctx.nats.queue_subscribe(p.subject.clone(), q).await,
    }
    .map_err(|e| ServerError::Nats(e.to_string()))?;
    ctx.nats
        .flush()
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    Ok(sub.boxed())
}

/// Drops a batch refused because the disk is below `storage.min.free.bytes` ([`crate::diskspace`]):
/// counts it, logs (rate-limited) and sends an UNKNOWN error ack to every message with an inbox.
async fn refuse_disk_full(
    ctx: &Ctx,
    p: &IngestParams,
    msgs: &[async_nats::Message],
    decoded: &[Option<drawbridge_proto::api::Message>],
    full: crate::diskspace::DiskFull,
) {
    if ctx.stats.disk.count_rejected(msgs.len() as u64) {
        warn!(stream = %p.stream, partition = p.partition, error = %full,
            refused = ctx.stats.disk.rejected(), "disk full: messages dropped");
    }
    for (msg, m) in msgs.iter().zip(decoded) {
        let Some(m) = m.as_ref().filter(|m| !m.ack_inbox.is_empty()) else {
            continue;
        };
        let pa = PendingAck {
            inbox: m.ack_inbox.clone(),
            correlation_id: m.correlation_id.clone(),
            policy: AckPolicy::try_from(m.ack_policy).unwrap_or(AckPolicy::Leader),
            msg_subject: msg.subject.to_string(),
            reception_ns: acks::now_ns(),
        };
        acks::send_disk_full(
            ctx,
            acks::build(&p.stream, &p.base_subject, pa, 0, ack::Error::Unknown),
            &full.to_string(),
        )
        .await;
    }
}

/// Sends the ENCRYPTION error ack of a message that could not be sealed (if it has an inbox).
async fn send_encryption_ack(ctx: &Ctx, p: &IngestParams, pending: Option<PendingAck>) {
    if let Some(pa) = pending {
        acks::send(
            ctx,
            acks::build(&p.stream, &p.base_subject, pa, 0, ack::Error::Encryption),
        )
        .await;
    }
}

/// Acknowledges duplicates of stored messages (see [`crate::dedup`]), each once the offset it
/// waits for is committed; if that does not happen in time (the original's proposal failed),
/// no ack is sent and the producer's retry is judged again.
fn ack_duplicates(
    ctx: Ctx,
    p: IngestParams,
    replica: &PartitionReplica,
    dups: Vec<(PendingAck, Option<u64>, Option<u64>)>,
) {
    let mut hw = replica.watch_high_watermark();
    tokio::spawn(async move {
        for (pa, stored, wait) in dups {
            if let Some(w) = wait {
                let committed = hw.wait_for(|h| h.is_some_and(|h| h >= w));
                match tokio::time::timeout(APPEND_TIMEOUT, committed).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
            }
            let off = stored.map_or(-1, |o| i64::try_from(o).unwrap_or(i64::MAX));
            acks::send(
                &ctx,
                acks::build(&p.stream, &p.base_subject, pa, off, ack::Error::Ok),
            )
            .await;
        }
    });
}

fn flatten(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    r.map_err(|e| ServerError::Internal(format!("acker task failed: {e}")))?
}

/// The acker ended while the loop still runs (it only does so on a failure): records that it
/// was awaited and returns why the loop must end.
fn acker_ended(
    done: &mut bool,
    r: std::result::Result<Result<()>, tokio::task::JoinError>,
) -> Result<()> {
    *done = true;
    match flatten(r) {
        Ok(()) => Err(ServerError::Internal("acker stopped".into())),
        Err(e) => Err(e),
    }
}

/// Takes submitted batches in order; once each is durable in the local log, sends over NATS the
/// LEADER acks its callback could not deliver in-process, then hands it to the committer. On the
/// first failure it waits (bounded) for the rest to be appended or to fail, sends what the
/// callbacks of durable batches left, and returns the failure.
async fn ack_loop(
    ctx: Ctx,
    p: IngestParams,
    mut rx: mpsc::Receiver<InFlight>,
    commit_tx: mpsc::Sender<Committing>,
    unsent: Unsent,
) -> Result<()> {
    while let Some(mut job) = rx.recv().await {
        if let Err(e) = job.proposal.appended_locally(APPEND_TIMEOUT).await {
            rx.close();
            let settle = async {
                while let Some(mut rest) = rx.recv().await {
                    let _ = rest.proposal.appended_locally(APPEND_TIMEOUT).await;
                }
            };
            if tokio::time::timeout(APPEND_TIMEOUT, settle).await.is_err() {
                warn!(stream = %p.stream, subject = %p.subject, "proposals still pending after a failure");
            }
            // A callback ran only for a batch that became durable: what it left for NATS is
            // still owed.
            let rest = std::mem::take(&mut *unsent.lock());
            acks::send_many(&ctx, rest).await;
            return Err(e.into());
        }
        p.stats.received(
            u64::from(job.count),
            job.bytes_in,
            job.first_ns,
            job.last_ns,
        );
        // The batch's LEADER acks went out from its durability callback; what that could not
        // hand to a local session goes over NATS here, in order.
        let rest = std::mem::take(&mut *unsent.lock());
        acks::send_many(&ctx, rest).await;
        let InFlight {
            proposal,
            base,
            all_acks,
            slot,
            ..
        } = job;
        let next = Committing {
            proposal,
            base,
            all_acks,
        };
        if commit_tx.send(next).await.is_err() {
            return Err(ServerError::Internal("committer stopped".into()));
        }
        drop(slot);
    }
    Ok(())
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
        acks::send_many(&ctx, ok_acks(&p.stream, &p.base_subject, job.all_acks)).await;
    }
    Ok(())
}

/// The success acks of a batch's messages (pending ack, offset), in order.
fn ok_acks(stream: &str, base_subject: &str, pending: Vec<(PendingAck, u64)>) -> Vec<Ack> {
    pending
        .into_iter()
        .map(|(pa, offset)| {
            let off = i64::try_from(offset).unwrap_or(i64::MAX);
            acks::build(stream, base_subject, pa, off, ack::Error::Ok)
        })
        .collect()
}

/// LEADER acks that a durability callback could not hand to a local session (no session on
/// this node, or its queue was full), in offset order; the acker sends them over NATS.
type Unsent = Arc<Mutex<Vec<Ack>>>;

/// The durability callback of a batch ([`OnDurable`]): builds the batch's LEADER acks and
/// hands them to local sessions right where the log reports the batch durable; the rest is
/// left in `unsent` for the acker.
fn leader_acker(
    ctx: &Ctx,
    p: &IngestParams,
    pending: Vec<(PendingAck, u64)>,
    unsent: &Unsent,
) -> OnDurable {
    let ctx = ctx.clone();
    let (stream, base_subject) = (p.stream.clone(), p.base_subject.clone());
    let unsent = unsent.clone();
    Box::new(move || {
        let rest = acks::deliver_local(&ctx, ok_acks(&stream, &base_subject, pending));
        if !rest.is_empty() {
            unsent.lock().extend(rest);
        }
    })
}
