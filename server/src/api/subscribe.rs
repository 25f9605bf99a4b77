//! Subscribe (spec §9): validate and position before the first frame, send one empty Message,
//! then every committed record from the start position, tailing forever or up to a stop
//! position.
//!
//! Invariants:
//! - Every validation error fails the call before any frame (the codes of spec §5).
//! - Only committed records are sent (the readable log never holds anything else), in offset
//!   order, each once.
//! - Positions (spec §9): OFFSET is clamped into [oldest, next]; EARLIEST = oldest; LATEST =
//!   newest committed (sent first); NEW_ONLY = newest + 1; TIMESTAMP = first record at or after
//!   it. STOP_OFFSET / STOP_LATEST / STOP_TIMESTAMP end the call with ResourceExhausted after the
//!   stop record; a stop before the start is InvalidArgument; STOP_LATEST on an empty partition
//!   is ResourceExhausted.
//! - `readISRReplica` is served by the leader or by a replica the partition's recorded ISR
//!   names (stricter than Liftbridge, which does not check); any other server answers
//!   FailedPrecondition, as for a non-leader, so clients refresh metadata and pick again.
//! - A consumer-group member (`consumer.groupId`) needs a consumer id (InvalidArgument), cannot
//!   use `readISRReplica` (InvalidArgument), and is admitted only in the group's current epoch
//!   for a partition assigned to it (FailedPrecondition); its call ends with FailedPrecondition
//!   once a later epoch assigns the partition elsewhere ([`crate::groups`]).
//! - The producer ends when the client leaves (send fails), the server stops, the stream is
//!   deleted (NotFound), its replica here is reopened after a fatal storage error
//!   (Unavailable), or — unless `readISRReplica` — this node stops leading the partition
//!   (Unavailable, so the client re-resolves the leader and resumes).
//! - Paused partitions (spec §9.8): `resume` resumes the partition before positioning (a
//!   failure is Internal); without it the call ends with FailedPrecondition right after the
//!   first frame, and an open subscription ends with FailedPrecondition when the partition is
//!   paused.
//! - Readonly partitions: once the subscriber has every committed record, the call ends with
//!   ResourceExhausted "End of readonly partition" (also when readonly is set while it tails).
//! - `reverse` (field 12): from the start position (NEW_ONLY and LATEST = newest; OFFSET
//!   clamped into [oldest, newest]) towards older records; a stop offset / timestamp is the
//!   lower bound (ResourceExhausted after it); past the oldest record the call ends with
//!   Unknown "EOF", as Liftbridge does. STOP_LATEST does not apply and is ignored.
//! - Encrypted partitions ([`crate::encryption`]): values are opened for their offset before
//!   they are sent. A server that cannot unwrap the partition's data key (no or another master
//!   key) fails the call before the first frame with FailedPrecondition; a value that does not
//!   authenticate ends the call with Internal. Ciphertext is never sent as a value.
//! - While a subscription is open it is counted in the partition's `subscribers` gauge (read by
//!   auto-pause when `auto.pause.disable.if.subscribers`).
//! - Frames are `Message` encodings written straight from the records
//!   ([`super::frames::encode_record`]); [`super::frames::SubscribeRoute`] sends them as they
//!   are, and `Api::subscribe` decodes them back into `Message`s.

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api::{Message, StartPosition, StopPosition, SubscribeRequest};
use drawbridge_raft::PartitionId;
use drawbridge_storage::{Log, ReadLimits, RecordView, StorageError};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;
use tracing::debug;

use crate::context::Ctx;
use crate::encryption::PartitionCipher;
use crate::error::{Result, ServerError};
use crate::partitions::Local;

use super::frames::FrameBuf;

/// Batches of frames buffered per subscription.
const CHANNEL: usize = 16;
/// Most frames the producer hands to gRPC in one batch: it meets the response encoder once per
/// batch rather than once per record (fewer channel operations and cross-thread wake-ups).
const BATCH: usize = 64;
/// How often a tailing subscription re-checks leadership and stream existence.
const RECHECK: Duration = Duration::from_millis(500);

/// The frames of one subscription (encoded `Message`s), in batches.
type Batch = Vec<Result<Bytes, Status>>;

/// The producer's end of a subscription's frames: sends batches, or one frame at a time.
#[derive(Clone, Debug)]
pub struct FrameTx(mpsc::Sender<Batch>);

impl FrameTx {
    /// Sends one frame; `Err` once the subscriber has left.
    pub async fn send(&self, frame: Result<Message, Status>) -> std::result::Result<(), ()> {
        let frame = frame.map(|m| Bytes::from(m.encode_to_vec()));
        self.0.send(vec![frame]).await.map_err(|_| ())
    }

    /// Sends frames in order as one batch; `Err` once the subscriber has left.
    async fn send_batch(&self, frames: Batch) -> std::result::Result<(), ()> {
        self.0.send(frames).await.map_err(|_| ())
    }

    /// Completes once the subscriber has left.
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// The gRPC response stream of a subscription: the frames of its batches, in order.
#[derive(Debug)]
pub struct FrameStream {
    rx: mpsc::Receiver<Batch>,
    batch: std::vec::IntoIter<Result<Bytes, Status>>,
}

impl FrameStream {
    fn channel() -> (FrameTx, FrameStream) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        (
            FrameTx(tx),
            FrameStream {
                rx,
                batch: Vec::new().into_iter(),
            },
        )
    }
}

impl Stream for FrameStream {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(frame) = self.batch.next() {
                return Poll::Ready(Some(frame));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.batch = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The value to send for a stored record: opened for its offset on an encrypted partition (an
/// error then ends the call: a value that does not authenticate is never sent).
fn plain_value(cipher: Option<&PartitionCipher>, r: &RecordView) -> Result<Bytes> {
    match cipher {
        None => Ok(r.value.clone()),
        Some(c) => Ok(Bytes::from(c.open(r.offset, &r.value)?)),
    }
}

/// Start offset and optional inclusive stop offset of a request against `log`.
fn positions(r: &SubscribeRequest, log: &Log) -> Result<(u64, Option<u64>)> {
    let earliest = log.earliest_offset();
    let hw = log.high_watermark();
    let end = hw.map_or(earliest, |h| h + 1);
    let start = match StartPosition::try_from(r.start_position) {
        Ok(StartPosition::NewOnly) => end,
        Ok(StartPosition::Offset) => {
            u64::try_from(r.start_offset).map_or(earliest, |o| o.clamp(earliest, end))
        }
        Ok(StartPosition::Earliest) => earliest,
        Ok(StartPosition::Latest) => hw.unwrap_or(end),
        Ok(StartPosition::Timestamp) => log
            .offset_for_timestamp(r.start_timestamp.max(0))?
            .unwrap_or(end),
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "Unknown StartPosition {}",
                r.start_position
            )))
        }
    };
    let stop = match StopPosition::try_from(r.stop_position) {
        Ok(StopPosition::StopOnCancel) => None,
        Ok(StopPosition::StopOffset) => Some(u64::try_from(r.stop_offset).map_err(|_| {
            ServerError::InvalidArgument(format!("Invalid stop offset {}", r.stop_offset))
        })?),
        Ok(StopPosition::StopLatest) => match hw {
            Some(h) => Some(h),
            None => return Err(ServerError::ResourceExhausted("Stream is empty".into())),
        },
        Ok(StopPosition::StopTimestamp) => {
            let after = r.stop_timestamp.saturating_add(1);
            let first_after = log.offset_for_timestamp(after)?;
            let last = match first_after {
                Some(0) => None,
                Some(o) => Some(o - 1),
                None => hw,
            };
            match last {
                Some(l) => Some(l),
                None => {
                    return Err(ServerError::InvalidArgument(
                        "Stop timestamp is before the first record".into(),
                    ))
                }
            }
        }
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "Unknown StopPosition {}",
                r.stop_position
            )))
        }
    };
    if let Some(s) = stop {
        if s < start {
            return Err(ServerError::InvalidArgument(format!(
                "Stop offset {s} is before start offset {start}"
            )));
        }
    }
    Ok((start, stop))
}

/// Whether a hosted replica may serve a subscription: the leader always; a follower only for
/// `readISRReplica` and only while the partition's recorded ISR names it.
fn may_serve(is_leader: bool, read_isr_replica: bool, in_isr: bool) -> Result<()> {
    match (is_leader, read_isr_replica, in_isr) {
        (true, _, _) | (false, true, true) => Ok(()),
        (false, true, false) => Err(ServerError::FailedPrecondition(
            "Server not in partition ISR".into(),
        )),
        (false, false, _) => Err(ServerError::FailedPrecondition(
            "Server not partition leader".into(),
        )),
    }
}

/// Validates, positions and starts a subscription.
pub async fn subscribe(ctx: &Ctx, r: SubscribeRequest) -> Result<FrameStream> {
    if let Some(c) = &r.consumer {
        if !c.group_id.is_empty() && c.consumer_id.is_empty() {
            return Err(ServerError::InvalidArgument(
                "Consumer id required with a group id".into(),
            ));
        }
        if !c.group_id.is_empty() && r.read_isr_replica {
            return Err(ServerError::InvalidArgument(
                "readISRReplica cannot be used by a consumer group member".into(),
            ));
        }
    }
    let state = ctx.raft.metadata().state().state;
    let Some(pmeta) = state
        .streams
        .get(&r.stream)
        .and_then(|s| s.partitions.get(&r.partition))
    else {
        return Err(ServerError::NotFound("No such partition".into()));
    };
    // An encrypted partition whose data key this server cannot unwrap fails here, before any
    // frame (FailedPrecondition naming the missing key), instead of sending ciphertext.
    let cipher: Option<Arc<PartitionCipher>> =
        match ctx.keyring.partition_cipher(&r.stream, r.partition, pmeta) {
            None => None,
            Some(Ok(c)) => Some(Arc::new(c)),
            Some(Err(e)) => return Err(e.into()),
        };
    let in_isr = state
        .streams
        .get(&r.stream)
        .and_then(|s| s.partitions.get(&r.partition))
        .is_some_and(|p| p.isr.contains(&ctx.node_id));
    let id = PartitionId::new(r.stream.clone(), r.partition);
    let local = ctx.partitions.get(&id);
    let local = local
        .ok_or_else(|| ServerError::FailedPrecondition("Server not partition leader".into()))?;
    may_serve(local.replica.is_leader(), r.read_isr_replica, in_isr)?;
    let member = match r.consumer.as_ref().filter(|c| !c.group_id.is_empty()) {
        Some(c) => Some(
            crate::groups::admit(
                ctx,
                &c.group_id,
                &c.consumer_id,
                c.group_epoch,
                &r.stream,
                r.partition,
            )
            .await?,
        ),
        None => None,
    };
    let paused = super::pause::is_paused(ctx, &r.stream, r.partition);
    if paused && r.resume {
        super::pause::resume(ctx, &r.stream, r.partition)
            .await
            .map_err(|e| ServerError::Internal(format!("resuming the partition failed: {e}")))?;
    }
    let (tx, rx) = FrameStream::channel();
    if r.reverse {
        let (start, stop) = reverse_positions(&r, &local.log)?;
        tx.send(Ok(Message::default()))
            .await
            .map_err(|_| ServerError::Internal("subscriber left".into()))?;
        if let Some(m) = member {
            crate::groups::fence(ctx.clone(), m, r.stream.clone(), r.partition, tx.clone());
        }
        let guard = SubscriberGuard::new(&local);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _guard = guard;
            produce_reverse(ctx, local, id, cipher, start, stop, tx).await;
        });
        return Ok(rx);
    }
    let (start, stop) = positions(&r, &local.log)?;
    tx.send(Ok(Message::default()))
        .await
        .map_err(|_| ServerError::Internal("subscriber left".into()))?;
    if paused && !r.resume {
        let _ = tx
            .send(Err(ServerError::FailedPrecondition(
                "Partition is paused".into(),
            )
            .into()))
            .await;
        return Ok(rx);
    }
    if let Some(m) = member {
        crate::groups::fence(ctx.clone(), m, r.stream.clone(), r.partition, tx.clone());
    }
    let guard = SubscriberGuard::new(&local);
    let ctx = ctx.clone();
    let any_replica = r.read_isr_replica;
    tokio::spawn(async move {
        let _guard = guard;
        produce(ctx, local, id, cipher, any_replica, start, stop, tx).await;
    });
    Ok(rx)
}

/// Counts an open subscription in its partition's `subscribers` gauge while alive.
struct SubscriberGuard(Arc<Local>);

impl SubscriberGuard {
    fn new(local: &Arc<Local>) -> Self {
        local.stats.subscribers.fetch_add(1, Ordering::Relaxed);
        Self(local.clone())
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Start offset (inclusive, `None` on an empty partition) and optional inclusive lower stop
/// offset of a reverse subscription.
fn reverse_positions(r: &SubscribeRequest, log: &Log) -> Result<(Option<u64>, Option<u64>)> {
    let earliest = log.earliest_offset();
    let Some(hw) = log.high_watermark().filter(|h| *h >= earliest) else {
        return Ok((None, None));
    };
    let start = match StartPosition::try_from(r.start_position) {
        Ok(StartPosition::NewOnly | StartPosition::Latest) => hw,
        Ok(StartPosition::Offset) => {
            u64::try_from(r.start_offset).map_or(earliest, |o| o.clamp(earliest, hw))
        }
        Ok(StartPosition::Earliest) => earliest,
        Ok(StartPosition::Timestamp) => log
            .offset_for_timestamp(r.start_timestamp.max(0))?
            .unwrap_or(hw),
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "Unknown StartPosition {}",
                r.start_position
            )))
        }
    };
    let stop = match StopPosition::try_from(r.stop_position) {
        Ok(StopPosition::StopOnCancel | StopPosition::StopLatest) => None,
        Ok(StopPosition::StopOffset) => Some(u64::try_from(r.stop_offset).map_err(|_| {
            ServerError::InvalidArgument(format!("Invalid stop offset {}", r.stop_offset))
        })?),
        Ok(StopPosition::StopTimestamp) => Some(
            log.offset_for_timestamp(r.stop_timestamp.max(0))?
                .unwrap_or(hw),
        ),
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "Unknown StopPosition {}",
                r.stop_position
            )))
        }
    };
    if let Some(s) = stop {
        if s > start {
            return Err(ServerError::InvalidArgument(format!(
                "Stop offset {s} is after start offset {start} of a reverse subscription"
            )));
        }
    }
    Ok((Some(start), stop))
}

/// Which way a subscription reads, for where its stop offset bounds it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Oldest to newest: the stop offset is an upper bound.
    Forward,
    /// Newest to oldest: the stop offset is a lower bound.
    Reverse,
}

/// Sends the records of one subscription: the one place that applies the stop offset, opens
/// encrypted values, sends the frames and counts them (module invariants). Frames are held in
/// a batch of at most [`BATCH`] until [`Emitter::flush`] (or a full batch); every frame before
/// an ending error is sent ahead of it.
struct Emitter<'a> {
    local: &'a Local,
    id: &'a PartitionId,
    cipher: Option<&'a PartitionCipher>,
    stop: Option<u64>,
    direction: Direction,
    tx: &'a FrameTx,
    batch: Batch,
    /// Value bytes of the frames in `batch`.
    batch_bytes: u64,
    /// Where frames are encoded.
    frames: FrameBuf,
}

impl<'a> Emitter<'a> {
    fn new(
        local: &'a Local,
        id: &'a PartitionId,
        cipher: Option<&'a PartitionCipher>,
        stop: Option<u64>,
        direction: Direction,
        tx: &'a FrameTx,
    ) -> Self {
        Emitter {
            local,
            id,
            cipher,
            stop,
            direction,
            tx,
            batch: Vec::with_capacity(BATCH),
            batch_bytes: 0,
            frames: FrameBuf::default(),
        }
    }

    /// Queues `rec`'s frame. `Break` once the call is over: the stop offset was passed or
    /// reached (ResourceExhausted sent), the value did not open (Internal sent) or the
    /// subscriber left.
    async fn emit(&mut self, rec: RecordView) -> ControlFlow<()> {
        let offset = rec.offset;
        let past = self.stop.is_some_and(|s| match self.direction {
            Direction::Forward => offset > s,
            Direction::Reverse => offset < s,
        });
        if past {
            return self.end(stop_reached()).await;
        }
        let value_len = rec.value.len() as u64;
        match plain_value(self.cipher, &rec) {
            Ok(value) => {
                let frame = self
                    .frames
                    .frame(&self.id.stream, self.id.partition, &rec, &value);
                self.batch.push(Ok(frame));
            }
            Err(e) => {
                tracing::warn!(partition = %self.id, offset, error = %e, "decrypting a record failed");
                return self.end(e.into()).await;
            }
        }
        self.batch_bytes += value_len;
        if self.stop == Some(offset) {
            return self.end(stop_reached()).await;
        }
        if self.batch.len() >= BATCH {
            return self.flush().await;
        }
        ControlFlow::Continue(())
    }

    /// Sends the queued frames. `Break` if the subscriber left.
    async fn flush(&mut self) -> ControlFlow<()> {
        if self.batch.is_empty() {
            return ControlFlow::Continue(());
        }
        let frames = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let sent = u64::try_from(frames.len()).unwrap_or(u64::MAX);
        if self.tx.send_batch(frames).await.is_err() {
            return ControlFlow::Break(());
        }
        self.local.stats.sent_many(sent, self.batch_bytes);
        self.batch_bytes = 0;
        ControlFlow::Continue(())
    }

    /// Sends the queued frames, then `status`, which ends the call.
    async fn end(&mut self, status: Status) -> ControlFlow<()> {
        if self.flush().await.is_continue() {
            let _ = self.tx.send(Err(status)).await;
        }
        ControlFlow::Break(())
    }
}

/// The status that ends a subscription at its stop offset.
fn stop_reached() -> Status {
    ServerError::ResourceExhausted("Stop offset reached".into()).into()
}

/// Sends records from `start` down to the oldest (or `stop`), then ends the call.
async fn produce_reverse(
    ctx: Ctx,
    local: Arc<Local>,
    id: PartitionId,
    cipher: Option<Arc<PartitionCipher>>,
    start: Option<u64>,
    stop: Option<u64>,
    tx: FrameTx,
) {
    let Some(start) = start else {
        let _ = tx
            .send(Err(ServerError::Unknown("EOF".into()).into()))
            .await;
        return;
    };
    let mut emitter = Emitter::new(
        &local,
        &id,
        cipher.as_deref(),
        stop,
        Direction::Reverse,
        &tx,
    );
    let mut before = start.saturating_add(1);
    loop {
        if ctx.stopping() {
            let _ = tx
                .send(Err(Status::unavailable("server shutting down")))
                .await;
            return;
        }
        let records = match local.log.read_reverse(before, ReadLimits::default()) {
            Ok(r) => r,
            Err(StorageError::Closed) => {
                let _ = tx.send(Err(replica_ended(&ctx, &id).into())).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(ServerError::from(e).into())).await;
                return;
            }
        };
        if records.is_empty() {
            let _ = tx
                .send(Err(ServerError::Unknown("EOF".into()).into()))
                .await;
            return;
        }
        for rec in records {
            let offset = rec.offset;
            if emitter.emit(rec).await.is_break() {
                return;
            }
            before = offset;
        }
        if emitter.flush().await.is_break() {
            return;
        }
    }
}

/// `(paused, readonly)` of a partition in a metadata view (`false` when it is gone).
fn flags(view: &drawbridge_raft::MetadataView, id: &PartitionId) -> (bool, bool) {
    view.state
        .streams
        .get(&id.stream)
        .and_then(|s| s.partitions.get(&id.partition))
        .map_or((false, false), |p| (p.paused, p.readonly))
}

/// Why a subscription's replica went away: its stream was deleted (NotFound), or — the
/// partition still exists — the replica was reopened, e.g. after a fatal storage error
/// (Unavailable, so clients subscribe again).
fn replica_ended(ctx: &Ctx, id: &PartitionId) -> ServerError {
    let exists = ctx
        .raft
        .metadata()
        .state()
        .state
        .streams
        .get(&id.stream)
        .is_some_and(|s| s.partitions.contains_key(&id.partition));
    if exists {
        ServerError::Unavailable("partition replica reopened; subscribe again".into())
    } else {
        ServerError::NotFound("Stream deleted".into())
    }
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    ctx: Ctx,
    local: Arc<Local>,
    id: PartitionId,
    cipher: Option<Arc<PartitionCipher>>,
    any_replica: bool,
    start: u64,
    stop: Option<u64>,
    tx: FrameTx,
) {
    let mut emitter = Emitter::new(
        &local,
        &id,
        cipher.as_deref(),
        stop,
        Direction::Forward,
        &tx,
    );
    let mut reader = local.log.tail(start);
    let mut shutdown = ctx.shutdown.clone();
    let mut meta = ctx.raft.metadata().watch();
    loop {
        let (paused, readonly) = flags(&meta.borrow_and_update(), &id);
        if paused {
            let _ = tx
                .send(Err(ServerError::FailedPrecondition(
                    "Partition is paused".into(),
                )
                .into()))
                .await;
            return;
        }
        if readonly {
            let end = local
                .log
                .high_watermark()
                .map_or(local.log.earliest_offset(), |h| h + 1);
            if reader.position() >= end {
                let _ = tx
                    .send(Err(ServerError::ResourceExhausted(
                        "End of readonly partition".into(),
                    )
                    .into()))
                    .await;
                return;
            }
        }
        let next = tokio::select! {
            r = reader.next_records(ReadLimits::default()) => Some(r),
            r = meta.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep(RECHECK) => None,
            _ = crate::context::until_true(&mut shutdown) => {
                let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                return;
            }
            _ = tx.closed() => return,
        };
        let records = match next {
            None => {
                let gone = ctx
                    .partitions
                    .get(&id)
                    .is_none_or(|l| !Arc::ptr_eq(&l, &local));
                let err = if gone {
                    Some(replica_ended(&ctx, &id))
                } else if !any_replica && !local.replica.is_leader() {
                    Some(ServerError::Unavailable("partition leader changed".into()))
                } else {
                    None
                };
                if let Some(e) = err {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                continue;
            }
            Some(Ok(records)) => records,
            Some(Err(StorageError::Closed)) => {
                let _ = tx.send(Err(replica_ended(&ctx, &id).into())).await;
                return;
            }
            // Retention deleted the segment under this subscriber: go on from the oldest
            // retained message (deleted messages are never served).
            Some(Err(StorageError::OffsetOutOfRange { earliest, .. })) => {
                debug!(partition = %id, earliest, "subscriber position deleted by retention");
                reader = local.log.tail(earliest);
                continue;
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(ServerError::from(e).into())).await;
                return;
            }
        };
        for rec in records {
            if emitter.emit(rec).await.is_break() {
                return;
            }
        }
        // Every other send below happens with nothing queued, so frames stay in order.
        if emitter.flush().await.is_break() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leader_or_an_isr_member_with_read_isr_replica_serves() {
        assert!(may_serve(true, false, false).is_ok());
        assert!(may_serve(true, true, false).is_ok());
        assert!(may_serve(false, true, true).is_ok());
        for (read_isr, in_isr) in [(false, true), (false, false), (true, false)] {
            let e = may_serve(false, read_isr, in_isr).err();
            assert!(
                matches!(e, Some(ServerError::FailedPrecondition(_))),
                "{read_isr} {in_isr}: {e:?}"
            );
        }
        let msg = may_serve(false, true, false).err().map(|e| e.to_string());
        assert_eq!(msg.as_deref(), Some("Server not in partition ISR"));
    }
}
