//! [`Client::subscribe`] and [`Subscription`]: reading a partition as a `Stream`, surviving
//! server loss and leader changes.
//!
//! How it ends. A subscription is a `Stream<Item = Result<Message>>`:
//! - it yields records in offset order (newest first with `reverse`);
//! - it ends with `None` ("ends OK") when the server says the read is complete
//!   (`ResourceExhausted`: stop position reached, end of a readonly partition, or an empty
//!   partition with [`StopAt::Latest`](crate::StopAt)); [`Subscription::end_reason`] then
//!   tells which;
//! - it ends with one `Some(Err(_))` and then `None` on a failure it cannot recover from
//!   ([`Error::StreamDeleted`], [`Error::PartitionPaused`], retries exhausted, ...);
//! - dropping it cancels the call.
//!
//! Invariants:
//! 1. `subscribe` returns only once the server sent its empty first frame (spec §9), so an
//!    `Ok(Subscription)` means the subscription exists; that frame is never yielded.
//! 2. After `Unavailable` (a broken connection included, error module invariant 4), or
//!    `FailedPrecondition` mid-stream on a partition metadata does not show as paused
//!    (leadership moved), the client refreshes metadata and resubscribes from
//!    the last delivered offset + 1 (− 1 when reversed), or from the original start if
//!    nothing was delivered yet. Records at or before the last delivered offset are dropped,
//!    so a resubscription never yields a duplicate.
//! 3. Resubscription is bounded: within [`ClientBuilder::resubscribe_wait`] and at most
//!    `MAX_RESUBSCRIBE_ROUNDS` rounds of (bounded) open attempts.
//! 4. A [`StopAt::Offset`](crate::StopAt) already delivered is not resubscribed for: the stream
//!    ends as if the server had said "stop offset reached". [`StopAt::Latest`](crate::StopAt)
//!    is re-evaluated by the server when resubscribing.
//!
//! [`ClientBuilder::resubscribe_wait`]: crate::ClientBuilder::resubscribe_wait

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use drawbridge_proto::api;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

use crate::client::{bounded, Client, Inner};
use crate::error::{lost_connection, Call, Error, Result};
use crate::message::Message;
use crate::options::{StartAt, StopAt, SubscribeOptions};

/// Chunks buffered between the subscription's task and its consumer.
const BUFFER: usize = 8;
/// Most records handed over in one chunk: the frames already received and decoded together,
/// so the task and the consumer meet once per chunk rather than once per record.
const CHUNK: usize = 256;
/// Resubscription rounds after one loss of the server (module invariant 3).
const MAX_RESUBSCRIBE_ROUNDS: u32 = 32;

/// Why a subscription ended cleanly (the server's `ResourceExhausted`, spec §5).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The stop position was reached ("Stop offset reached").
    StopPositionReached,
    /// Every record of a readonly partition was delivered ("End of readonly partition").
    ReadonlyEnd,
    /// [`StopAt::Latest`](crate::StopAt) on an empty partition ("Stream is empty").
    Empty,
    /// A reverse read went past the oldest record.
    OldestReached,
    /// The server ended the call without an error.
    ServerClosed,
    /// `ResourceExhausted` with another message.
    Exhausted(String),
}

impl EndReason {
    fn from_exhausted(message: &str) -> EndReason {
        let m = message.to_ascii_lowercase();
        if m.contains("stop") {
            EndReason::StopPositionReached
        } else if m.contains("readonly") {
            EndReason::ReadonlyEnd
        } else if m.contains("empty") {
            EndReason::Empty
        } else {
            EndReason::Exhausted(message.to_string())
        }
    }
}

/// What the task sends to the consumer.
#[derive(Debug)]
enum Item {
    Msgs(Vec<Message>),
    Fail(Error),
    End(EndReason),
}

/// A live subscription to one partition: a `Stream` of records (see module docs for how it
/// ends).
///
/// ```no_run
/// # async fn run(client: drawbridge_client::Client) -> drawbridge_client::Result<()> {
/// use drawbridge_client::{StartAt, StopAt, SubscribeOptions};
/// use futures::StreamExt;
///
/// let opts = SubscribeOptions {
///     start: StartAt::Earliest,
///     stop: StopAt::Latest,
///     ..Default::default()
/// };
/// let mut sub = client.subscribe("orders", opts).await?;
/// while let Some(msg) = sub.next().await {
///     let msg = msg?;
///     println!("{}: {:?}", msg.offset, msg.value);
/// }
/// println!("done: {:?}", sub.end_reason());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Item>,
    /// Records of the last chunk not yet yielded.
    buf: std::vec::IntoIter<Message>,
    end: Option<EndReason>,
    finished: bool,
    task: Option<JoinHandle<()>>,
    stream: String,
    partition: i32,
}

impl Subscription {
    /// Why the subscription ended, once it yielded `None` after a clean end.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end.as_ref()
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The partition read.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(m) = self.buf.next() {
                return Poll::Ready(Some(Ok(m)));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            let item = match self.rx.poll_recv(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => return Poll::Pending,
            };
            match item {
                Some(Item::Msgs(chunk)) => self.buf = chunk.into_iter(),
                Some(Item::Fail(e)) => {
                    self.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Item::End(reason)) => {
                    self.end = Some(reason);
                    self.finished = true;
                    return Poll::Ready(None);
                }
                None => {
                    self.finished = true;
                    return Poll::Ready(Some(Err(Error::Protocol(
                        "the subscription task stopped unexpectedly".into(),
                    ))));
                }
            }
        }
    }
}

impl Client {
    /// Subscribes to a partition of `stream`. Returns once the server confirmed the
    /// subscription (its empty first frame); see [`Subscription`] for reading and ending.
    ///
    /// Fails with [`Error::NoSuchPartition`] / [`Error::NoSuchStream`] if the partition does
    /// not exist, [`Error::NotLeader`] if no server would serve it after retries.
    pub async fn subscribe(&self, stream: &str, options: SubscribeOptions) -> Result<Subscription> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut sub = Subscription {
            rx,
            buf: Vec::new().into_iter(),
            end: None,
            finished: false,
            task: None,
            stream: stream.to_string(),
            partition: options.partition,
        };
        match open(&self.inner, stream, &options).await? {
            Opened::Ended(reason) => {
                sub.end = Some(reason);
                sub.finished = true;
            }
            Opened::Live(live) => {
                let pump = Pump {
                    inner: Arc::clone(&self.inner),
                    stream: stream.to_string(),
                    options,
                    last: None,
                    tx,
                };
                sub.task = Some(tokio::spawn(pump.run(*live)));
            }
        }
        Ok(sub)
    }

    /// Resumes a paused partition of `stream` (a no-op if it is not paused). Liftbridge has no
    /// resume RPC: this opens a subscription with `resume` (the server resumes the partition
    /// before it confirms) and closes it. A stream paused with `resume_all` resumes entirely.
    pub async fn resume_partition(&self, stream: &str, partition: i32) -> Result<()> {
        let options = SubscribeOptions {
            partition,
            start: StartAt::NewOnly,
            resume: true,
            ..SubscribeOptions::default()
        };
        let sub = self.subscribe(stream, options).await?;
        drop(sub);
        Ok(())
    }
}

/// Result of opening a subscription.
enum Opened {
    /// The call, and the first frame when it was not the empty one.
    Live(Box<LiveCall>),
    /// The server said there is nothing to read (`ResourceExhausted` before any record).
    Ended(EndReason),
}

/// Opens a subscription on the partition leader (or an ISR replica), waiting for the first
/// frame; retries on `Unavailable` and `FailedPrecondition` with metadata refreshes, bounded
/// by the retry policy (module invariant 1, client module invariant 3).
async fn open(inner: &Inner, stream: &str, opts: &SubscribeOptions) -> Result<Opened> {
    let req = opts.to_request(stream);
    let policy = inner.config.retry;
    let timeout = inner.config.request_timeout;
    let mut last = Error::NoKnownLeader {
        stream: stream.to_string(),
        partition: opts.partition,
    };
    for attempt in 0..policy.attempts() {
        if attempt > 0 {
            tokio::time::sleep(policy.backoff(attempt - 1)).await;
            inner.refresh_quietly().await;
        }
        let addr = match inner.metadata.get().addr_for_partition(
            stream,
            opts.partition,
            opts.read_isr_replica,
        ) {
            Ok(addr) => addr,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let mut api = inner.pool.client(&addr)?;
        let req = req.clone();
        let first = bounded(timeout, async move {
            let mut calls = api.subscribe(req).await?.into_inner();
            let first = calls.message().await?;
            Ok((calls, first))
        })
        .await;
        match first {
            Ok((calls, Some(first))) => {
                let first = (first != api::Message::default()).then_some(first);
                return Ok(Opened::Live(Box::new(LiveCall { calls, first })));
            }
            Ok((_, None)) => return Ok(Opened::Ended(EndReason::ServerClosed)),
            Err(status) => match status.code() {
                Code::Unavailable | Code::FailedPrecondition => {
                    tracing::debug!(%addr, %status, "subscribe refused, refreshing metadata");
                    last = Error::from_status(Call::SubscribeOpen, status);
                }
                Code::ResourceExhausted => {
                    return Ok(Opened::Ended(EndReason::from_exhausted(status.message())))
                }
                _ => return Err(Error::from_status(Call::SubscribeOpen, status)),
            },
        }
    }
    Err(last)
}

/// An open Subscribe call.
struct LiveCall {
    calls: Streaming<api::Message>,
    /// The first frame, when it was a record rather than the empty confirmation.
    first: Option<api::Message>,
}

/// Outcome of handing frames to the consumer.
enum Delivered {
    /// Every record was handed over (or dropped as a duplicate).
    All,
    /// The records before the call's error were handed over; the error follows.
    Failed(Status),
    /// The consumer is gone.
    Gone,
}

/// What to do after the call failed.
enum Next {
    Resume(Box<LiveCall>),
    Stop(Item),
}

/// The task behind a [`Subscription`].
struct Pump {
    inner: Arc<Inner>,
    stream: String,
    options: SubscribeOptions,
    /// Offset of the last record delivered to the consumer.
    last: Option<i64>,
    tx: mpsc::Sender<Item>,
}

impl Pump {
    async fn run(mut self, live: LiveCall) {
        let LiveCall { calls, first } = live;
        let mut calls = calls.ready_chunks(CHUNK);
        if let Some(m) = first {
            if !matches!(self.deliver(vec![Ok(m)]).await, Delivered::All) {
                return;
            }
        }
        let tx = self.tx.clone();
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = calls.next() => next,
            };
            let Some(frames) = next else {
                let _ = tx.send(Item::End(EndReason::ServerClosed)).await;
                return;
            };
            let status = match self.deliver(frames).await {
                Delivered::Gone => return,
                Delivered::All => continue,
                Delivered::Failed(status) => lost_connection(status),
            };
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = self.after_error(status) => next,
            };
            match next {
                Next::Resume(live) => {
                    let LiveCall {
                        calls: new_calls,
                        first,
                    } = *live;
                    calls = new_calls.ready_chunks(CHUNK);
                    if let Some(m) = first {
                        if !matches!(self.deliver(vec![Ok(m)]).await, Delivered::All) {
                            return;
                        }
                    }
                }
                Next::Stop(item) => {
                    let _ = tx.send(item).await;
                    return;
                }
            }
        }
    }

    /// Hands the records of `frames` (up to its first error) to the consumer as one chunk,
    /// dropping duplicates (module invariant 2).
    async fn deliver(&mut self, frames: Vec<Result<api::Message, Status>>) -> Delivered {
        let mut chunk = Vec::with_capacity(frames.len());
        let mut failed = None;
        for frame in frames {
            let m = match frame {
                Ok(m) => m,
                Err(status) => {
                    failed = Some(status);
                    break;
                }
            };
            if let Some(last) = self.last {
                let seen = if self.options.reverse {
                    m.offset >= last
                } else {
                    m.offset <= last
                };
                if seen {
                    tracing::debug!(
                        offset = m.offset,
                        last,
                        "dropping a record already delivered"
                    );
                    continue;
                }
            }
            self.last = Some(m.offset);
            chunk.push(Message::from_proto(m));
        }
        if !chunk.is_empty() && self.tx.send(Item::Msgs(chunk)).await.is_err() {
            return Delivered::Gone;
        }
        match failed {
            Some(status) => Delivered::Failed(status),
            None => Delivered::All,
        }
    }

    async fn after_error(&mut self, status: Status) -> Next {
        match status.code() {
            Code::Unavailable => {
                tracing::debug!(stream = %self.stream, %status, "subscription lost its server");
                self.resubscribe().await
            }
            Code::FailedPrecondition => {
                // Either the partition was paused or this server stopped leading it.
                self.inner.refresh_quietly().await;
                let paused = self
                    .inner
                    .metadata
                    .get()
                    .stream(&self.stream)
                    .and_then(|s| s.partitions.get(&self.options.partition))
                    .is_some_and(|p| p.paused);
                if paused {
                    Next::Stop(Item::Fail(Error::PartitionPaused))
                } else {
                    self.resubscribe().await
                }
            }
            Code::ResourceExhausted => {
                Next::Stop(Item::End(EndReason::from_exhausted(status.message())))
            }
            Code::Unknown if self.options.reverse && status.message() == "EOF" => {
                Next::Stop(Item::End(EndReason::OldestReached))
            }
            _ => Next::Stop(Item::Fail(Error::from_status(Call::SubscribeRecv, status))),
        }
    }

    /// Reopens the subscription after the last delivered record (module invariants 2–4).
    async fn resubscribe(&mut self) -> Next {
        let mut opts = self.options;
        if let Some(last) = self.last {
            if self.options.reverse {
                if last <= 0 {
                    return Next::Stop(Item::End(EndReason::OldestReached));
                }
                opts.start = StartAt::Offset(last - 1);
            } else {
                if matches!(self.options.stop, StopAt::Offset(stop) if last >= stop) {
                    return Next::Stop(Item::End(EndReason::StopPositionReached));
                }
                opts.start = StartAt::Offset(last + 1);
            }
        }
        let policy = self.inner.config.retry;
        let deadline = Instant::now() + self.inner.config.resubscribe_wait;
        let mut round = 0u32;
        loop {
            self.inner.refresh_quietly().await;
            match open(&self.inner, &self.stream, &opts).await {
                Ok(Opened::Live(live)) => return Next::Resume(live),
                Ok(Opened::Ended(reason)) => return Next::Stop(Item::End(reason)),
                Err(e)
                    if e.is_retryable()
                        && round + 1 < MAX_RESUBSCRIBE_ROUNDS
                        && Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, round, "resubscribe failed, retrying");
                    let wait = policy.backoff(round);
                    tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
                    round += 1;
                }
                Err(e) => return Next::Stop(Item::Fail(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reasons_from_server_messages() {
        assert_eq!(
            EndReason::from_exhausted("Stop offset reached"),
            EndReason::StopPositionReached
        );
        assert_eq!(
            EndReason::from_exhausted("End of readonly partition"),
            EndReason::ReadonlyEnd
        );
        assert_eq!(
            EndReason::from_exhausted("Stream is empty"),
            EndReason::Empty
        );
        assert_eq!(
            EndReason::from_exhausted("quota"),
            EndReason::Exhausted("quota".into())
        );
    }
}
