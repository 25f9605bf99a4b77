//! Limits that keep one client from exhausting a server (`limits.*`, and Liftbridge's
//! `clustering.replication.max.bytes` for message size).
//!
//! | limit | where | when exceeded |
//! |---|---|---|
//! | `clustering.replication.max.bytes` | ingest ([`crate::ingest`]) | a publish through the API gets InvalidArgument (TOO_LARGE ack); a raw NATS message is dropped, logged, counted |
//! | `limits.max.streams`, `limits.max.partitions` | CreateStream ([`crate::authz_api`]) | ResourceExhausted |
//! | `limits.max.subscriptions` | Subscribe ([`crate::authz_api`]) | ResourceExhausted |
//! | `limits.max.connections` | the API listener ([`incoming`]) | the connection is closed at once |
//!
//! Every refusal is counted in [`LimitStats`] (`drawbridge_limit_rejections_total{limit}`)
//! and logged at warn, sparsely (the 1st, 2nd, 4th, 8th, ... of each kind), so a flood of
//! refusals cannot flood the log. Stream and partition counts are read from this server's
//! copy of the metadata, so concurrent CreateStreams on several servers may overshoot by a
//! few; the limit is a guard against abuse, not an exact quota.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::Status;
use tracing::warn;

use crate::context::Ctx;

/// Refusals by limit.
#[derive(Debug, Default)]
pub struct LimitStats {
    /// Messages over `clustering.replication.max.bytes` (API publishes and raw NATS messages).
    pub message_too_large: AtomicU64,
    /// CreateStream refused by `limits.max.streams`.
    pub streams: AtomicU64,
    /// CreateStream refused by `limits.max.partitions`.
    pub partitions: AtomicU64,
    /// Subscribe refused by `limits.max.subscriptions`.
    pub subscriptions: AtomicU64,
    /// Connections closed by `limits.max.connections`.
    pub connections: AtomicU64,
}

impl LimitStats {
    /// `(label, count)` for every limit, in a fixed order.
    pub fn all(&self) -> [(&'static str, u64); 5] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("message_size", l(&self.message_too_large)),
            ("streams", l(&self.streams)),
            ("partitions", l(&self.partitions)),
            ("subscriptions", l(&self.subscriptions)),
            ("connections", l(&self.connections)),
        ]
    }
}

/// Counts one refusal; true when this one should be logged (1st, 2nd, 4th, 8th, ...).
pub fn count(counter: &AtomicU64) -> bool {
    (counter.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
}

fn exhausted(counter: &AtomicU64, message: String) -> Status {
    if count(counter) {
        warn!(%message, refused = counter.load(Ordering::Relaxed), "limit reached");
    }
    Status::resource_exhausted(message)
}

/// The API-level limits of one server.
#[derive(Debug)]
pub struct Limits {
    ctx: Ctx,
    subscriptions: Option<Arc<Semaphore>>,
}

/// Held by a running subscription; frees its slot when dropped.
#[derive(Debug)]
pub struct SubscriptionSlot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Limits {
    /// The limits of `ctx.config.limits`.
    pub fn new(ctx: Ctx) -> Self {
        let max = ctx.config.limits.max_subscriptions;
        let subscriptions = (max > 0).then(|| {
            Arc::new(Semaphore::new(
                usize::try_from(max).unwrap_or(Semaphore::MAX_PERMITS),
            ))
        });
        Self { ctx, subscriptions }
    }

    /// May a stream with `partitions` partitions (0 means 1) be created?
    pub fn check_create_stream(&self, partitions: i32) -> Result<(), Status> {
        let cfg = &self.ctx.config.limits;
        if cfg.max_streams == 0 && cfg.max_partitions == 0 {
            return Ok(());
        }
        let stats = &self.ctx.stats.limits;
        let state = self.ctx.raft.metadata().state().state;
        let streams = state.streams.len() as u64;
        if cfg.max_streams > 0 && streams >= cfg.max_streams {
            return Err(exhausted(
                &stats.streams,
                format!(
                    "stream limit reached: the cluster has {streams} streams \
                     (limits.max.streams = {})",
                    cfg.max_streams
                ),
            ));
        }
        let existing: u64 = state
            .streams
            .values()
            .map(|s| s.partitions.len() as u64)
            .sum();
        let wanted = u64::try_from(partitions.max(1)).unwrap_or(1);
        if cfg.max_partitions > 0 && existing + wanted > cfg.max_partitions {
            return Err(exhausted(
                &stats.partitions,
                format!(
                    "partition limit reached: the cluster has {existing} partitions and the \
                     stream asks for {wanted} (limits.max.partitions = {})",
                    cfg.max_partitions
                ),
            ));
        }
        Ok(())
    }

    /// A slot for one more subscription, if there is room.
    pub fn subscription(&self) -> Result<SubscriptionSlot, Status> {
        let Some(sem) = &self.subscriptions else {
            return Ok(SubscriptionSlot(None));
        };
        match sem.clone().try_acquire_owned() {
            Ok(p) => Ok(SubscriptionSlot(Some(p))),
            Err(_) => Err(exhausted(
                &self.ctx.stats.limits.subscriptions,
                format!(
                    "subscription limit reached on this server (limits.max.subscriptions = {})",
                    self.ctx.config.limits.max_subscriptions
                ),
            )),
        }
    }
}

/// An accepted API connection holding one slot of `limits.max.connections`.
#[derive(Debug)]
pub struct LimitedConn {
    io: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The API listener's connections, at most `max` open at once (0: no limit); connections over
/// the limit are closed as soon as they are accepted. The accept task ends when the stream is
/// dropped (the gRPC server stopped).
pub fn incoming(
    listener: TcpListener,
    max: u64,
    ctx: Ctx,
) -> ReceiverStream<Result<LimitedConn, io::Error>> {
    let sem = (max > 0).then(|| {
        Arc::new(Semaphore::new(
            usize::try_from(max).unwrap_or(Semaphore::MAX_PERMITS),
        ))
    });
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let item = match accepted {
                Ok((io, peer)) => {
                    let _ = io.set_nodelay(true);
                    let slot = match &sem {
                        None => None,
                        Some(s) => match s.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                let counter = &ctx.stats.limits.connections;
                                if count(counter) {
                                    warn!(%peer, max, refused = counter.load(Ordering::Relaxed),
                                        "connection limit reached (limits.max.connections); closing");
                                }
                                drop(io);
                                continue;
                            }
                        },
                    };
                    Ok(LimitedConn { io, _slot: slot })
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_sparsely() {
        let c = AtomicU64::new(0);
        let logged: Vec<u64> = (1..=20).filter(|_| count(&c)).map(|_| 0).collect();
        // 1, 2, 4, 8, 16
        assert_eq!(logged.len(), 5);
        assert_eq!(c.load(Ordering::Relaxed), 20);
    }
}
