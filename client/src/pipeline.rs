//! [`Publisher`]: pipelined publishing over one PublishAsync stream, one future per message.
//!
//! How it works. One driver task owns the gRPC stream: it opens it, reads its responses and
//! completes the matching [`AckFuture`] when a `PublishResponse` comes back (it takes the
//! responses that have already arrived in runs, one wake-up for many). [`Publisher::send`]
//! resolves the partition and, while a stream is open and nothing waits in the driver's queue,
//! puts the request straight into the stream and records its future in the table of waiting
//! messages that it shares with the driver; otherwise (no stream yet, the stream's buffer is
//! full, or earlier messages are still queued) it queues the message for the driver, which
//! opens a stream if needed and forwards queued messages in order. A short-lived task per
//! stream session opens the call: it waits for the response headers, which a server may send
//! only with its first response, while the requests already flow.
//!
//! Invariants:
//! 1. At most one PublishAsync stream is open per publisher (a "session"); it is opened
//!    lazily by the first message after the publisher starts or after the previous session
//!    failed, so reconnection is "the next message opens a new stream".
//! 2. Responses are matched by correlation id: `ack.correlationId` on success,
//!    `PublishResponse.correlationId` when `asyncError` is set (wire spec §8). Order of
//!    responses does not matter.
//! 3. When a session fails, every future still waiting for an ack fails with the retryable
//!    [`Error::PublishStreamReset`]: the server may or may not have stored those messages.
//! 4. Each message's ack timeout counts from `send`. The driver enforces it: while a stream
//!    is open it sweeps the waiting messages every [`SWEEP_EVERY`] (also while waiting for
//!    stream room, and whether or not messages wait, since `send` adds messages without
//!    waking it), fails those whose deadline passed with [`Error::AckTimeout`] and forgets
//!    those whose future was dropped, so a timeout fires at most [`SWEEP_EVERY`] late. A
//!    message that waited in the queue past its deadline (while the driver backed off before
//!    reopening a stream) fails with [`Error::AckTimeout`] when the driver takes it, unsent.
//!    (One timer per publisher, not one per message.)
//! 5. The driver never blocks on the outgoing stream without also reading incoming
//!    responses, so a server that stops reading until its responses are read cannot
//!    deadlock us.
//! 6. Order: requests enter the stream in the order of the `send` calls that returned: `send`
//!    takes the direct way only while no message of this publisher waits in the driver's
//!    queue (counted in the shared state, under the same lock as the stream's handle).
//! 7. Back-pressure: `send` waits for a queue slot and for an in-flight permit; a permit is
//!    held by the [`AckFuture`] until it completes or is dropped.
//! 8. With ack policy NONE the server never answers; the future resolves to `Ok(None)` once
//!    the request is handed to the stream.
//! 9. Stall detection: when [`STALL_TIMEOUTS`] messages in a row time out on one session (no
//!    response in between), or the session's stream fails (e.g. the HTTP/2 keep-alive closed
//!    a connection whose broker stopped answering), the session is dropped, every future
//!    still waiting on it fails with the retryable [`Error::PublishStreamReset`], metadata is
//!    refreshed in the background, and the next session avoids that broker for
//!    [`AVOID_FOR`] when another is known. A publisher thus never stays stuck on a frozen
//!    broker: new messages go to another one within about an ack timeout.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use drawbridge_proto::api;
use futures::Stream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, Inner};
use crate::error::{Error, Result};
use crate::message::{ack_from_proto, Ack};
use crate::options::AckPolicy;
use crate::publish::PublishMessage;

/// Sizing of a [`Publisher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherOptions {
    /// Requests queued between `send` and the stream.
    pub queue_capacity: usize,
    /// Messages whose [`AckFuture`] is alive at once; `send` waits beyond that.
    pub max_in_flight: usize,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            queue_capacity: 1024,
            max_in_flight: 8192,
        }
    }
}

/// Publishes many messages in flight over one PublishAsync stream. Cheap to clone; clones
/// share the stream. Dropping every clone closes the stream after outstanding acks arrived
/// (or their futures were dropped).
///
/// ```no_run
/// # async fn run(client: drawbridge_client::Client) -> drawbridge_client::Result<()> {
/// use drawbridge_client::PublishMessage;
///
/// let publisher = client.publisher()?;
/// let mut acks = Vec::new();
/// for i in 0..100 {
///     // Waits only for a queue slot, not for the ack.
///     acks.push(publisher.send("orders", PublishMessage::new(format!("order {i}"))).await?);
/// }
/// for ack in acks {
///     let ack = ack.await?; // Ok(Some(ack)) once stored
///     # let _ = ack;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
    /// Queue to the driver task.
    cmds: mpsc::Sender<Command>,
    /// In-flight permits (module invariant 7).
    permits: Arc<Semaphore>,
    /// Shared with the driver: waiting messages and the stream's handle.
    shared: Arc<Mutex<Shared>>,
    /// The broker of the open session, as the driver last set it.
    broker: Arc<std::sync::Mutex<Option<String>>>,
}

/// One queued message.
#[derive(Debug)]
struct Command {
    req: api::PublishRequest,
    wants_ack: bool,
    /// When the future gives up (its ack timeout); the driver counts missed deadlines.
    deadline: Instant,
    reply: oneshot::Sender<Result<Option<Ack>>>,
}

/// What the publishers and the driver share.
#[derive(Debug, Default)]
struct Shared {
    /// Futures waiting for an ack, by correlation id.
    pending: HashMap<String, Waiting>,
    /// The open stream's request queue; `None` without an open stream.
    direct: Option<mpsc::Sender<api::PublishRequest>>,
    /// Messages queued for the driver and not yet forwarded by it; `send` goes direct only
    /// at 0 (module invariant 6).
    queued: usize,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decrements [`Shared::queued`] for a message whose `send` was dropped before the message
/// reached the driver's queue.
struct QueuedGuard<'a>(Option<&'a Mutex<Shared>>);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            let mut sh = lock(shared);
            sh.queued = sh.queued.saturating_sub(1);
        }
    }
}

/// The outcome of one message. Resolves to `Ok(Some(ack))` once stored, `Ok(None)` for ack
/// policy NONE, or an error ([`Error::AckTimeout`] after the ack timeout).
#[derive(Debug)]
#[must_use = "an AckFuture does nothing unless awaited; dropping it forgets the ack"]
pub struct AckFuture {
    rx: oneshot::Receiver<Result<Option<Ack>>>,
    correlation_id: String,
    _permit: OwnedSemaphorePermit,
}

impl AckFuture {
    /// The correlation id the message was sent with.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
}

impl Future for AckFuture {
    type Output = Result<Option<Ack>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The driver answers every message, with `AckTimeout` once its deadline passed
        // (module invariant 4); a driver that is gone answers nothing.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::PublisherClosed)))
    }
}

impl Client {
    /// A pipelined publisher with default sizing. Must be called within a Tokio runtime.
    pub fn publisher(&self) -> Result<Publisher> {
        self.publisher_with(PublisherOptions::default())
    }

    /// A pipelined publisher with the given sizing. Must be called within a Tokio runtime.
    pub fn publisher_with(&self, options: PublisherOptions) -> Result<Publisher> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("a publisher needs a Tokio runtime".into()))?;
        let (cmds, cmd_rx) = mpsc::channel(options.queue_capacity.max(1));
        let broker = Arc::default();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let driver = Driver {
            inner: Arc::clone(&self.inner),
            cmds: cmd_rx,
            shared: Arc::clone(&shared),
            session: None,
            next_session: 0,
            failures: 0,
            next_addr: 0,
            timeouts_in_row: 0,
            avoid: None,
            sweep: Box::pin(tokio::time::sleep(SWEEP_EVERY)),
            broker: Arc::clone(&broker),
        };
        handle.spawn(driver.run());
        Ok(Publisher {
            inner: Arc::clone(&self.inner),
            cmds,
            permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            shared,
            broker,
        })
    }
}

impl Publisher {
    /// Queues a message for `stream`; the returned future resolves with its ack. Waits only
    /// for a queue slot and an in-flight permit (module invariant 7).
    pub async fn send(&self, stream: &str, msg: PublishMessage) -> Result<AckFuture> {
        let partition = self.inner.resolve_partition(stream, &msg).await?;
        let correlation_id = msg.correlation_id_or_new();
        let req = msg.to_request(stream, partition, correlation_id.clone());
        let timeout = msg.ack_timeout.unwrap_or(self.inner.config.ack_timeout);
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::PublisherClosed)?;
        // The ack timeout counts from here, whether or not the future is polled (invariant 4).
        let deadline = Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            req,
            wants_ack: msg.ack_policy != AckPolicy::None,
            deadline,
            reply,
        };
        if let Some(cmd) = self.try_direct(cmd) {
            // Counted in `queued` by `try_direct`; uncounted again if this future is dropped
            // before the message is in the queue.
            let mut guard = QueuedGuard(Some(&self.shared));
            self.cmds
                .send(cmd)
                .await
                .map_err(|_| Error::PublisherClosed)?;
            guard.0 = None;
        }
        Ok(AckFuture {
            rx,
            correlation_id,
            _permit: permit,
        })
    }

    /// Puts the message straight into the open stream when it may (module invariant 6) and
    /// returns `None`; otherwise counts it as queued and hands it back for the driver's queue.
    fn try_direct(&self, cmd: Command) -> Option<Command> {
        let mut sh = lock(&self.shared);
        let Some(out) = sh.direct.as_ref().filter(|_| sh.queued == 0) else {
            sh.queued += 1;
            return Some(cmd);
        };
        let Command {
            req,
            wants_ack,
            deadline,
            reply,
        } = cmd;
        if wants_ack {
            let cid = &req.correlation_id;
            if sh.pending.get(cid).is_some_and(|w| !w.tx.is_closed()) {
                let _ = reply.send(Err(duplicate(cid)));
                return None;
            }
        }
        let cid = wants_ack.then(|| req.correlation_id.clone());
        match out.try_send(req) {
            Ok(()) => {
                match cid {
                    Some(cid) => {
                        sh.pending.insert(
                            cid,
                            Waiting {
                                tx: reply,
                                deadline,
                            },
                        );
                    }
                    None => {
                        let _ = reply.send(Ok(None));
                    }
                }
                None
            }
            Err(mpsc::error::TrySendError::Full(req) | mpsc::error::TrySendError::Closed(req)) => {
                sh.queued += 1;
                Some(Command {
                    req,
                    wants_ack,
                    deadline,
                    reply,
                })
            }
        }
    }

    /// The broker (`host:port`) the PublishAsync stream is open to, `None` between streams
    /// (before the first message, or after a stream failed). For diagnostics and tests.
    pub fn broker(&self) -> Option<String> {
        self.broker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Sends a message and waits for its ack: `send(..).await?.await`.
    pub async fn publish(&self, stream: &str, msg: PublishMessage) -> Result<Option<Ack>> {
        self.send(stream, msg).await?.await
    }
}

/// A session's response stream.
type Responses = tonic::Streaming<api::PublishResponse>;

/// What a session's response side produced.
#[derive(Debug)]
enum Incoming {
    Response(api::PublishResponse),
    /// The response stream ended: `None` = cleanly, else with this status.
    Ended(Option<tonic::Status>),
}

/// The response side of a session.
#[derive(Debug)]
enum Inbound {
    /// The opener task is waiting for the call's response headers (a server may send them
    /// only with its first response, so the requests already flow meanwhile).
    Opening(oneshot::Receiver<std::result::Result<Responses, tonic::Status>>),
    /// The driver reads the responses itself.
    Open(Box<Responses>),
}

/// One open PublishAsync stream.
#[derive(Debug)]
struct Session {
    id: u64,
    /// The broker the stream is open to.
    addr: String,
    /// Requests into the gRPC stream; `None` once our side is half-closed.
    out: Option<mpsc::Sender<api::PublishRequest>>,
    inbound: Inbound,
    /// The task that opens the call; aborted with the session.
    opener: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.opener.abort();
    }
}

impl Session {
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        loop {
            match &mut self.inbound {
                Inbound::Opening(opened) => match ready!(Pin::new(opened).poll(cx)) {
                    Ok(Ok(responses)) => self.inbound = Inbound::Open(Box::new(responses)),
                    Ok(Err(status)) => return Poll::Ready(Incoming::Ended(Some(status))),
                    Err(_) => {
                        return Poll::Ready(Incoming::Ended(Some(tonic::Status::unknown(
                            "the task opening the PublishAsync stream ended",
                        ))))
                    }
                },
                Inbound::Open(responses) => {
                    return Poll::Ready(match ready!(Pin::new(responses.as_mut()).poll_next(cx)) {
                        Some(Ok(resp)) => Incoming::Response(resp),
                        Some(Err(status)) => Incoming::Ended(Some(status)),
                        None => Incoming::Ended(None),
                    })
                }
            }
        }
    }
}

/// The next thing the open session's response side produces; pending while there is no
/// session (the driver's other branches wake it, and the next poll sees the new session).
fn poll_session(session: &mut Option<Session>, cx: &mut Context<'_>) -> Poll<Incoming> {
    match session {
        Some(s) => s.poll_incoming(cx),
        None => Poll::Pending,
    }
}

/// The task that owns the stream (see module docs).
struct Driver {
    inner: Arc<Inner>,
    cmds: mpsc::Receiver<Command>,
    /// Waiting messages and the open stream's handle, shared with `send`.
    shared: Arc<Mutex<Shared>>,
    session: Option<Session>,
    next_session: u64,
    /// Sessions that failed in a row; sets the back-off before the next open.
    failures: u32,
    /// Rotates over broker addresses across sessions.
    next_addr: usize,
    /// Messages of the current session whose ack deadline passed since its last response
    /// (module invariant 9).
    timeouts_in_row: usize,
    /// A broker whose session stalled or broke, and until when new sessions avoid it.
    avoid: Option<(String, Instant)>,
    /// When the next sweep of `pending` is due (module invariant 4).
    sweep: Pin<Box<Sleep>>,
    /// Shared with the publishers: the broker of the open session.
    broker: Arc<std::sync::Mutex<Option<String>>>,
}

/// A future waiting for its ack.
#[derive(Debug)]
struct Waiting {
    tx: oneshot::Sender<Result<Option<Ack>>>,
    deadline: Instant,
}

/// How often the driver times out messages whose ack deadline passed and forgets those whose
/// future is gone: a timeout fires up to this much after its deadline.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Ack deadlines missed in a row after which a session is taken for stalled.
pub(crate) const STALL_TIMEOUTS: usize = 2;
/// How long new sessions avoid a broker whose session stalled or broke.
const AVOID_FOR: Duration = Duration::from_secs(10);
/// Queued messages the driver takes at once.
const COMMAND_BATCH: usize = 64;
/// Responses the driver takes at once when more have already arrived.
const RESPONSE_BATCH: usize = 256;

impl Driver {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(COMMAND_BATCH);
        loop {
            tokio::select! {
                inc = std::future::poll_fn(|cx| poll_session(&mut self.session, cx)) => {
                    self.on_incoming(inc);
                }
                n = self.cmds.recv_many(&mut batch, COMMAND_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for cmd in batch.drain(..) {
                        self.on_command(cmd, now).await;
                    }
                }
                () = self.sweep.as_mut(), if self.session.is_some() => self.on_sweep(),
            }
        }
        self.drain().await;
    }

    /// Every `Publisher` is gone: half-close the stream and wait for outstanding acks while
    /// someone still waits for them, up to the ack timeout.
    async fn drain(mut self) {
        if let Some(s) = self.session.as_mut() {
            // Closing our side ends the request stream: the server then finishes its acks.
            s.out = None;
        }
        lock(&self.shared).direct = None;
        let deadline = Instant::now() + self.inner.config.ack_timeout;
        let mut tick = tokio::time::interval(SWEEP_EVERY / 5);
        while self.session.is_some() {
            self.expire(Instant::now());
            if lock(&self.shared).pending.is_empty() {
                break;
            }
            tokio::select! {
                inc = std::future::poll_fn(|cx| poll_session(&mut self.session, cx)) => {
                    self.on_incoming(inc);
                }
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        for (_, w) in lock(&self.shared).pending.drain() {
            let _ = w.tx.send(Err(Error::PublisherClosed));
        }
    }

    /// A response or the end of the session; with a response, also every response that has
    /// already arrived behind it (up to [`RESPONSE_BATCH`]), without waiting for more.
    fn on_incoming(&mut self, inc: Incoming) {
        let mut inc = inc;
        let mut taken = 0;
        loop {
            match inc {
                Incoming::Response(resp) => {
                    self.failures = 0;
                    self.timeouts_in_row = 0;
                    self.on_response(resp);
                }
                Incoming::Ended(status) => {
                    let id = self.session.as_ref().map(|s| s.id);
                    tracing::debug!(session = ?id, ?status, "PublishAsync stream ended");
                    if status.is_some() {
                        // Broken, not closed by the server in order: look elsewhere next time.
                        self.avoid_current_broker();
                    }
                    self.fail_session(status);
                    return;
                }
            }
            taken += 1;
            if taken == RESPONSE_BATCH {
                return;
            }
            // A no-op waker: when nothing more is there, the driver's next select polls the
            // stream again with its own.
            let mut cx = Context::from_waker(Waker::noop());
            match poll_session(&mut self.session, &mut cx) {
                Poll::Ready(next) => inc = next,
                Poll::Pending => return,
            }
        }
    }

    /// Completes the future a response answers (module invariant 2).
    fn on_response(&mut self, resp: api::PublishResponse) {
        let (cid, outcome) = match (resp.async_error, resp.ack) {
            (Some(err), _) => (
                resp.correlation_id,
                Err(Error::from_async_error(err.code, err.message)),
            ),
            (None, Some(ack)) => {
                let cid = if ack.correlation_id.is_empty() {
                    resp.correlation_id
                } else {
                    ack.correlation_id.clone()
                };
                (cid, ack_from_proto(ack).map(Some))
            }
            (None, None) => {
                tracing::debug!("PublishResponse with neither ack nor error ignored");
                return;
            }
        };
        let waiting = lock(&self.shared).pending.remove(&cid);
        match waiting {
            Some(w) => {
                let _ = w.tx.send(outcome);
            }
            None => {
                tracing::debug!(correlation_id = %cid, "response for an unknown or expired message")
            }
        }
    }

    /// The session broke: fail everything waiting on it (module invariant 3).
    fn fail_session(&mut self, status: Option<tonic::Status>) {
        self.session = None;
        self.set_broker(None);
        self.failures = self.failures.saturating_add(1);
        let failed: Vec<Waiting> = {
            let mut sh = lock(&self.shared);
            sh.direct = None;
            sh.pending.drain().map(|(_, w)| w).collect()
        };
        for w in failed {
            let _ = w.tx.send(Err(session_error(status.as_ref())));
        }
    }

    /// Fails the waiting messages whose ack deadline passed with [`Error::AckTimeout`] and
    /// forgets those whose future is gone; returns how many deadlines passed.
    fn expire(&mut self, now: Instant) -> usize {
        let mut due = Vec::new();
        let mut sh = lock(&self.shared);
        sh.pending.retain(|cid, w| {
            if w.deadline <= now {
                due.push(cid.clone());
                return true;
            }
            !w.tx.is_closed()
        });
        for cid in &due {
            if let Some(w) = sh.pending.remove(cid) {
                let _ = w.tx.send(Err(Error::AckTimeout));
            }
        }
        due.len()
    }

    /// Times out messages whose deadline passed and drops a stalled session (module
    /// invariants 4 and 9).
    fn on_sweep(&mut self) {
        let now = Instant::now();
        self.sweep.as_mut().reset(now + SWEEP_EVERY);
        let expired = self.expire(now);
        if expired == 0 {
            return;
        }
        let Some(addr) = self.session.as_ref().map(|s| s.addr.clone()) else {
            return;
        };
        self.timeouts_in_row = self.timeouts_in_row.saturating_add(expired);
        if self.timeouts_in_row < STALL_TIMEOUTS {
            return;
        }
        tracing::warn!(
            %addr,
            missed = self.timeouts_in_row,
            "no publish ack before the ack timeout; dropping the PublishAsync stream"
        );
        let status = tonic::Status::unavailable(format!(
            "{} acks in a row timed out on the stream to {addr}; stream dropped",
            self.timeouts_in_row
        ));
        self.avoid_current_broker();
        self.fail_session(Some(status));
    }

    fn set_broker(&self, addr: Option<String>) {
        *self
            .broker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = addr;
    }

    /// Marks the current session's broker to be avoided by the next sessions, and refreshes
    /// metadata in the background (leaders may have moved).
    fn avoid_current_broker(&mut self) {
        if let Some(s) = self.session.as_ref() {
            self.avoid = Some((s.addr.clone(), Instant::now() + AVOID_FOR));
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            if let Err(e) = inner.refresh_metadata().await {
                tracing::debug!(error = %e, "metadata refresh after a broken publish stream failed");
            }
        });
    }

    /// One queued message; `now` is when its batch was taken from the queue.
    async fn on_command(&mut self, cmd: Command, now: Instant) {
        self.take_command(cmd, now).await;
        // Forwarded or failed: no longer holds `send` off the direct way (invariant 6).
        let mut sh = lock(&self.shared);
        sh.queued = sh.queued.saturating_sub(1);
    }

    async fn take_command(&mut self, cmd: Command, now: Instant) {
        if cmd.deadline <= now {
            // It waited in the queue past its deadline (the driver was reopening a stream).
            let _ = cmd.reply.send(Err(Error::AckTimeout));
            return;
        }
        if self.session.is_none() {
            if let Err(e) = self.open_session().await {
                let _ = cmd.reply.send(Err(e));
                return;
            }
        }
        if cmd.wants_ack {
            {
                let mut sh = lock(&self.shared);
                let cid = &cmd.req.correlation_id;
                if sh.pending.get(cid).is_some_and(|w| !w.tx.is_closed()) {
                    let _ = cmd.reply.send(Err(duplicate(cid)));
                    return;
                }
                sh.pending.insert(
                    cid.clone(),
                    Waiting {
                        tx: cmd.reply,
                        deadline: cmd.deadline,
                    },
                );
            }
            // If `forward` fails, it fails the session and with it this message's future.
            self.forward(cmd.req).await;
        } else if self.forward(cmd.req).await {
            let _ = cmd.reply.send(Ok(None));
        } else {
            let _ = cmd
                .reply
                .send(Err(Error::PublishStreamReset("the stream broke".into())));
        }
    }

    /// Puts a request into the stream, reading responses while waiting for room (module
    /// invariant 5). False if the session broke meanwhile.
    async fn forward(&mut self, req: api::PublishRequest) -> bool {
        let Some(out) = self.session.as_ref().and_then(|s| s.out.as_ref()) else {
            return false;
        };
        let req = match out.try_send(req) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(req)) => req,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.fail_session(None);
                return false;
            }
        };
        loop {
            let Some(out) = self.session.as_ref().and_then(|s| s.out.clone()) else {
                return false;
            };
            tokio::select! {
                permit = out.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(req);
                        return true;
                    }
                    Err(_) => {
                        self.fail_session(None);
                        return false;
                    }
                },
                inc = std::future::poll_fn(|cx| poll_session(&mut self.session, cx)) => {
                    self.on_incoming(inc);
                }
                () = self.sweep.as_mut() => self.on_sweep(),
            }
        }
    }

    /// Opens a new session to the next broker, after a back-off if the last ones failed.
    async fn open_session(&mut self) -> Result<()> {
        if self.failures > 0 {
            let wait = self.inner.config.retry.backoff(self.failures - 1);
            tokio::time::sleep(wait).await;
        }
        let addrs = self.inner.candidate_addrs();
        if addrs.is_empty() {
            return Err(Error::Config("no server address".into()));
        }
        let now = Instant::now();
        let avoid = match &self.avoid {
            Some((a, until)) if *until > now => Some(a.as_str()),
            _ => None,
        };
        let addr = pick_addr(&addrs, self.next_addr, avoid).to_string();
        self.next_addr = self.next_addr.wrapping_add(1);
        let api = self.inner.pool.client(&addr)?;
        let (out, out_rx) = mpsc::channel(256);
        let (opened_tx, opened_rx) = oneshot::channel();
        self.next_session += 1;
        let id = self.next_session;
        let opener = tokio::spawn(open_call(api, out_rx, opened_tx));
        tracing::debug!(session = id, %addr, "opening PublishAsync stream");
        self.timeouts_in_row = 0;
        self.set_broker(Some(addr.clone()));
        lock(&self.shared).direct = Some(out.clone());
        self.session = Some(Session {
            id,
            addr,
            out: Some(out),
            inbound: Inbound::Opening(opened_rx),
            opener,
        });
        Ok(())
    }
}

/// The refusal of a message whose correlation id is already waiting for its ack.
fn duplicate(cid: &str) -> Error {
    Error::Config(format!(
        "correlation id {cid:?} is already in flight on this publisher"
    ))
}

impl Drop for Driver {
    /// A driver that is gone (its publishers dropped, or its runtime shut down) takes the
    /// direct way away and drops the waiting futures' senders, so they end with
    /// [`Error::PublisherClosed`] instead of waiting for nobody.
    fn drop(&mut self) {
        let mut sh = lock(&self.shared);
        sh.direct = None;
        sh.pending.clear();
    }
}

/// The `turn`-th address in rotation, skipping `avoid` when another address exists.
/// `addrs` must not be empty.
fn pick_addr<'a>(addrs: &'a [String], turn: usize, avoid: Option<&str>) -> &'a str {
    let n = addrs.len();
    (0..n)
        .map(|k| addrs[(turn + k) % n].as_str())
        .find(|a| Some(*a) != avoid)
        .unwrap_or(addrs[turn % n].as_str())
}

/// The error of a message whose session ended with `status` (`None`: ended without one).
/// Refusals that a new stream would meet again are reported as such, not as retryable.
fn session_error(status: Option<&tonic::Status>) -> Error {
    use tonic::Code;
    match status {
        Some(s)
            if matches!(
                s.code(),
                Code::Unimplemented
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::InvalidArgument
            ) =>
        {
            Error::from_status(crate::error::Call::Publish, s.clone())
        }
        Some(s) => Error::PublishStreamReset(format!("{:?}: {}", s.code(), s.message())),
        None => Error::PublishStreamReset("the stream closed".into()),
    }
}

/// Opens the call and hands its response stream (or the refusal) to the driver.
async fn open_call(
    mut api: drawbridge_proto::api::api_client::ApiClient<tonic::transport::Channel>,
    out_rx: mpsc::Receiver<api::PublishRequest>,
    opened: oneshot::Sender<std::result::Result<Responses, tonic::Status>>,
) {
    let call = api
        .publish_async(ReceiverStream::new(out_rx))
        .await
        .map(tonic::Response::into_inner);
    let _ = opened.send(call);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn broken_sessions_are_retryable_refusals_are_not() {
        let e = session_error(Some(&Status::unavailable("gone")));
        assert!(matches!(e, Error::PublishStreamReset(_)) && e.is_retryable());
        assert!(session_error(None).is_retryable());
        let e = session_error(Some(&Status::new(Code::Unimplemented, "no")));
        assert!(!e.is_retryable(), "{e:?}");
        let e = session_error(Some(&Status::permission_denied("no")));
        assert!(matches!(e, Error::PermissionDenied(_)));
    }

    #[test]
    fn a_broker_to_avoid_is_skipped_unless_it_is_the_only_one() {
        let addrs: Vec<String> = ["a:1", "b:1", "c:1"].map(String::from).to_vec();
        assert_eq!(pick_addr(&addrs, 0, None), "a:1");
        assert_eq!(pick_addr(&addrs, 4, None), "b:1");
        assert_eq!(pick_addr(&addrs, 0, Some("a:1")), "b:1");
        assert_eq!(pick_addr(&addrs, 2, Some("c:1")), "a:1");
        let one = vec!["a:1".to_string()];
        assert_eq!(pick_addr(&one, 7, Some("a:1")), "a:1");
    }

    #[test]
    fn default_sizing() {
        let o = PublisherOptions::default();
        assert!(o.queue_capacity > 0 && o.max_in_flight >= o.queue_capacity);
    }
}
