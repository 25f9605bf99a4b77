//! One client connection: a reader task that parses and executes operations, and a writer task
//! that drains the connection's [`Outbound`](super::outbound::Outbound) queue into the socket.
//!
//! Invariants:
//! 1. The reader is the only task that executes this client's operations, so they take effect
//!    in the order the client sent them; replies (`PONG`, `+OK`, `-ERR`) are queued in that
//!    order too.
//! 2. A fatal protocol error queues `-ERR '<text>'`, requests [`Close::AfterFlush`] and stops
//!    reading: nothing after the bad bytes is executed.
//! 3. The writer never blocks longer than `write_deadline` on one write; past it, or when the
//!    queue overflows, the client is a slow consumer and is disconnected. Either way only this
//!    client is affected.
//! 4. When the reader returns, the client's subscriptions are gone from the broker and the
//!    writer has finished (or was aborted after a bounded wait): the socket is closed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::broker::{Broker, Client};
use super::outbound::{Close, Next};
use super::protocol::{ClientOp, Limits, Parser};
use super::subject;

/// Bytes requested per socket read.
const READ_CHUNK: usize = 64 * 1024;
/// A writer buffer that grew past this is dropped after use rather than kept.
const KEEP_WRITE_BUF: usize = 1 << 20;
/// How long the final `-ERR 'Slow Consumer'` may take to write.
const SLOW_CONSUMER_NOTICE: Duration = Duration::from_millis(100);
/// How long a closing connection may take to flush its last bytes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long input is still read (and dropped) after a protocol error was reported.
const ERROR_LINGER: Duration = Duration::from_millis(500);

/// What every connection of one broker shares.
#[derive(Debug)]
pub struct ConnShared {
    /// Routing state.
    pub broker: Arc<Broker>,
    /// Parser limits.
    pub limits: Limits,
    /// Per-client outbound queue bound.
    pub max_pending: usize,
    /// Per-write deadline.
    pub write_deadline: Duration,
    /// Server id reported in INFO.
    pub server_id: String,
    /// Server name reported in INFO.
    pub server_name: String,
    /// Bound address reported in INFO.
    pub addr: SocketAddr,
}

/// The version reported in INFO. Clients gate features on the server version (headers need
/// 2.2+, no-responders 2.2+); we implement the 2.x core client protocol, so we report a 2.x
/// version and say who we are in `server_name`'s default and in `go`.
pub const ADVERTISED_VERSION: &str = "2.10.0";

#[derive(Serialize)]
struct Info<'a> {
    server_id: &'a str,
    server_name: &'a str,
    version: &'a str,
    proto: u8,
    go: &'a str,
    host: String,
    port: u16,
    headers: bool,
    max_payload: usize,
    client_id: u64,
    client_ip: String,
}

/// Serves one accepted connection until it closes or the broker shuts down.
pub async fn serve(
    shared: Arc<ConnShared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "embedded NATS: cannot set TCP_NODELAY");
    }
    let client = shared.broker.connect(shared.max_pending);
    let mut registration = Registration {
        broker: &shared.broker,
        client: &client,
        done: false,
    };
    tracing::debug!(%peer, client_id = client.id, "embedded NATS: client connected");
    let (mut rd, wr) = stream.into_split();
    let mut writer = tokio::spawn(write_loop(Arc::clone(&client), wr, shared.write_deadline));

    let info = Info {
        server_id: &shared.server_id,
        server_name: &shared.server_name,
        version: ADVERTISED_VERSION,
        proto: 1,
        go: concat!("drawbridge-", env!("CARGO_PKG_VERSION")),
        host: shared.addr.ip().to_string(),
        port: shared.addr.port(),
        headers: true,
        max_payload: shared.limits.max_payload,
        client_id: client.id,
        client_ip: peer.ip().to_string(),
    };
    match serde_json::to_string(&info) {
        Ok(json) => {
            let _ = client
                .outbound
                .push_bytes(format!("INFO {json}\r\n").as_bytes());
        }
        Err(e) => tracing::error!(error = %e, "embedded NATS: cannot encode INFO"),
    }

    let mut conn = Conn {
        shared: &shared,
        client: &client,
        parser: Parser::new(shared.limits),
        verbose: false,
        fatal: false,
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut writer_done = false;
    loop {
        let want = conn
            .parser
            .bytes_wanted(buf.len())
            .unwrap_or(0)
            .max(READ_CHUNK);
        buf.reserve(want);
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => break,
                Ok(_) => {
                    if !conn.process(&mut buf) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(client_id = client.id, error = %e, "embedded NATS: read failed");
                    break;
                }
            },
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            _ = shutdown.changed() => break,
        }
    }

    registration.end();
    if conn.fatal {
        // Let the writer deliver the final -ERR, then read and discard for a moment: closing a
        // socket with unread input makes the kernel send a reset, which can destroy the -ERR
        // before the client has read it.
        if !writer_done {
            writer_done = tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_ok();
        }
        if writer_done {
            let _ = tokio::time::timeout(ERROR_LINGER, discard_until_eof(&mut rd)).await;
        }
    }
    if !writer_done
        && tokio::time::timeout(CLOSE_GRACE, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    tracing::debug!(client_id = client.id, "embedded NATS: client disconnected");
}

/// Reads and drops input until EOF or an error.
async fn discard_until_eof(rd: &mut OwnedReadHalf) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = rd.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Takes the client out of the broker exactly once: explicitly when the reader finishes, or on
/// drop if the reader task is aborted (broker shutdown past its grace period), so the writer
/// is always told to stop and no subscription outlives its connection.
struct Registration<'a> {
    broker: &'a Broker,
    client: &'a Arc<Client>,
    done: bool,
}

impl Registration<'_> {
    fn end(&mut self) {
        if !self.done {
            self.done = true;
            self.broker.disconnect(self.client);
            // A pending AfterFlush (final -ERR) wins over this: the first close request wins.
            self.client.outbound.close(Close::Now);
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

struct Conn<'a> {
    shared: &'a ConnShared,
    client: &'a Arc<Client>,
    parser: Parser,
    verbose: bool,
    /// Set when a protocol error ended the connection.
    fatal: bool,
}

impl Conn<'_> {
    /// Executes every complete operation in `buf`. False when the connection must close.
    fn process(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            match self.parser.parse(buf) {
                Ok(Some(op)) => self.execute(op),
                Ok(None) => return true,
                Err(e) => {
                    tracing::debug!(client_id = self.client.id, error = %e, "embedded NATS: protocol error");
                    self.send_err(e.wire_text());
                    self.client.outbound.close(Close::AfterFlush);
                    self.fatal = true;
                    return false;
                }
            }
        }
    }

    fn execute(&mut self, op: ClientOp) {
        let broker = &self.shared.broker;
        match op {
            ClientOp::Connect(opts) => {
                self.verbose = opts.verbose;
                self.client.echo.store(opts.echo, Ordering::Relaxed);
                self.client.headers.store(opts.headers, Ordering::Relaxed);
                self.client
                    .no_responders
                    .store(opts.no_responders, Ordering::Relaxed);
                tracing::debug!(
                    client_id = self.client.id,
                    name = opts.name.as_deref().unwrap_or(""),
                    lang = opts.lang.as_deref().unwrap_or(""),
                    version = opts.version.as_deref().unwrap_or(""),
                    "embedded NATS: CONNECT"
                );
                self.ok();
            }
            ClientOp::Pub(msg) => {
                if !subject::is_valid_literal(&msg.subject) {
                    self.send_err("Invalid Publish Subject");
                    return;
                }
                broker.publish(self.client, &msg);
                self.ok();
            }
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => {
                if !subject::is_valid_pattern(&subject) {
                    self.send_err("Invalid Subject");
                    return;
                }
                broker.subscribe(self.client, sid, subject, queue);
                self.ok();
            }
            ClientOp::Unsub { sid, max } => {
                broker.unsubscribe(self.client, &sid, max);
                self.ok();
            }
            ClientOp::Ping => {
                let _ = self.client.outbound.push_bytes(b"PONG\r\n");
            }
            ClientOp::Pong => {}
        }
    }

    fn ok(&self) {
        if self.verbose {
            let _ = self.client.outbound.push_bytes(b"+OK\r\n");
        }
    }

    fn send_err(&self, text: &str) {
        let _ = self
            .client
            .outbound
            .push_bytes(format!("-ERR '{text}'\r\n").as_bytes());
    }
}

/// Drains `client`'s queue into the socket until a close is requested or a write fails.
async fn write_loop(client: Arc<Client>, mut wr: OwnedWriteHalf, deadline: Duration) {
    let out = &client.outbound;
    let mut spare = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match out.next(&mut spare) {
            Next::Idle => out.notified().await,
            Next::Write(mut data) => {
                match write_with_deadline(&client, &mut wr, &data, deadline).await {
                    WriteOutcome::Done => {}
                    WriteOutcome::Failed => return,
                    WriteOutcome::Abandoned => break,
                }
                data.clear();
                if data.capacity() <= KEEP_WRITE_BUF {
                    spare = data;
                }
            }
            Next::Close(Close::SlowConsumer) => {
                let notice = wr.write_all(b"-ERR 'Slow Consumer'\r\n");
                let _ = tokio::time::timeout(SLOW_CONSUMER_NOTICE, notice).await;
                break;
            }
            Next::Close(Close::AfterFlush | Close::Now) => break,
        }
    }
    let _ = tokio::time::timeout(SLOW_CONSUMER_NOTICE, wr.shutdown()).await;
}

enum WriteOutcome {
    /// All bytes written.
    Done,
    /// The socket failed or stalled; the connection is being closed.
    Failed,
    /// A close that discards queued bytes was requested while writing.
    Abandoned,
}

async fn write_with_deadline(
    client: &Client,
    wr: &mut OwnedWriteHalf,
    data: &[u8],
    deadline: Duration,
) -> WriteOutcome {
    let out = &client.outbound;
    let write = tokio::time::timeout(deadline, wr.write_all(data));
    tokio::pin!(write);
    loop {
        tokio::select! {
            result = &mut write => {
                return match result {
                    Ok(Ok(())) => WriteOutcome::Done,
                    Ok(Err(e)) => {
                        tracing::debug!(client_id = client.id, error = %e, "embedded NATS: write failed");
                        out.close(Close::Now);
                        WriteOutcome::Failed
                    }
                    Err(_) => {
                        tracing::warn!(
                            client_id = client.id,
                            ?deadline,
                            "embedded NATS: slow consumer (write deadline exceeded), closing"
                        );
                        out.close(Close::Now);
                        WriteOutcome::Failed
                    }
                };
            }
            _ = out.notified() => {
                if matches!(out.close_requested(), Some(Close::SlowConsumer | Close::Now)) {
                    return WriteOutcome::Abandoned;
                }
            }
        }
    }
}
