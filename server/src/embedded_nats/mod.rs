//! An in-process NATS broker, so `drawbridge-server --embedded-nats` runs with nothing else
//! installed and any NATS client can publish to it.
//!
//! It speaks the core NATS client protocol over TCP: `INFO` on connect; `CONNECT` (verbose,
//! pedantic, headers, echo, no_responders); `PUB`, `HPUB`; `SUB` with optional queue group;
//! `UNSUB` with optional max; `MSG`, `HMSG`; `PING`/`PONG`; `+OK`/`-ERR`; `*` and `>` wildcards;
//! queue groups (each message goes to one random member of each group); `max_payload`. It is a
//! single node without auth, TLS, clustering or JetStream: clusters use a real NATS cluster.
//!
//! How it is built (one file, one concept):
//! - [`protocol`]: incremental, chunking-independent parser of client operations.
//! - [`subject`]: subject validation and matching; [`sublist`]: the trie index with a cache.
//! - [`broker`]: shared routing state; publishes fan out synchronously into subscribers' queues.
//! - [`outbound`]: each connection's bounded outbound queue (coalesced writes, slow consumers).
//! - `conn`: per-connection reader and writer tasks.
//! - [`local`]: in-process clients, so the hosting server skips its own loopback connection.
//! - [`config`] and [`conf`]: settings and the nats-server config-file format.
//!
//! Invariants:
//! 1. One misbehaving client (bad bytes, oversized payload, not reading) only ever loses its
//!    own connection; others keep being served.
//! 2. Memory per client is bounded by `max_control_line`/`max_payload` (input) and
//!    `max_pending` (output).
//! 3. After [`EmbeddedNats::shutdown`] returns, the listener is closed and every connection task
//!    has ended (or been aborted after a bounded grace period). Dropping an [`EmbeddedNats`]
//!    without `shutdown` signals the same stop but does not wait for it.

pub mod broker;
pub mod conf;
pub mod config;
mod conn;
pub mod local;
pub mod outbound;
pub mod protocol;
pub mod subject;
pub mod sublist;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use config::{EmbeddedNatsConfig, EmbeddedNatsError};

use broker::Broker;
use conn::ConnShared;
use protocol::Limits;

/// How long shutdown waits for connection tasks before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedNats {
    /// The address actually bound (the real port when the config asked for port 0).
    addr: SocketAddr,
    /// Routing state, kept for introspection and in-process clients.
    broker: Arc<Broker>,
    /// The configured `max_payload` (what in-process publishes are held to).
    max_payload: usize,
    /// Set to `true` to stop the accept loop and every connection.
    shutdown_tx: watch::Sender<bool>,
    /// The accept loop; it owns the connection tasks and waits for them on shutdown.
    accept_task: Option<JoinHandle<()>>,
}

impl EmbeddedNats {
    /// Validates `config`, binds the listener and starts accepting clients.
    pub async fn start(config: EmbeddedNatsConfig) -> Result<Self, EmbeddedNatsError> {
        config.validate()?;
        let bind = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .map_err(|source| EmbeddedNatsError::Bind {
                addr: bind.clone(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmbeddedNatsError::Bind { addr: bind, source })?;
        let server_id = new_server_id();
        let shared = Arc::new(ConnShared {
            broker: Arc::new(Broker::new()),
            limits: Limits {
                max_control_line: config.max_control_line,
                max_payload: config.max_payload,
            },
            max_pending: config.max_pending,
            write_deadline: config.write_deadline,
            server_name: config
                .server_name
                .clone()
                .unwrap_or_else(|| server_id.clone()),
            server_id,
            addr,
        });
        let broker = Arc::clone(&shared.broker);
        let max_payload = shared.limits.max_payload;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, shared, shutdown_rx));
        tracing::info!(%addr, "embedded NATS listening");
        Ok(Self {
            addr,
            broker,
            max_payload,
            shutdown_tx,
            accept_task: Some(accept_task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL clients on this machine can connect to (`nats://127.0.0.1:<port>` when bound to
    /// all interfaces).
    pub fn client_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("nats://{addr}")
    }

    /// An in-process handle for the hosting server ([`local`]).
    pub fn local(&self) -> local::LocalNats {
        local::LocalNats::new(Arc::clone(&self.broker), self.max_payload)
    }

    /// Number of currently connected clients.
    pub fn connection_count(&self) -> usize {
        self.broker.connection_count()
    }

    /// Stops accepting, disconnects every client and waits for all tasks to end.
    pub async fn shutdown(mut self) {
        self.shutdown_tx.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "embedded NATS accept loop ended abnormally");
            }
        }
        tracing::info!(addr = %self.addr, "embedded NATS stopped");
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ConnShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(conn::serve(Arc::clone(&shared), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "embedded NATS: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("embedded NATS: aborting connections that did not close in time");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// A random 22-character id in nats-server's NUID alphabet, prefixed `N` like its server ids.
fn new_server_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(22);
    id.push('N');
    for _ in 0..21 {
        id.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    id
}
