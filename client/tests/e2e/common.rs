//! What the end-to-end tests share: one standalone server per test binary, clients, unique
//! stream names and bounded reads.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use drawbridge_client::{Client, Message, Subscription};
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use futures::StreamExt;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long one record may take to arrive before a read fails.
pub const EACH: Duration = Duration::from_secs(10);

/// A standalone `drawbridge-server --embedded-nats` shared by the tests of this binary that
/// run at the same time. The last test to drop its handle stops the process (by PID), so
/// nothing outlives the test binary; a test that starts after that gets a fresh server.
#[derive(Debug)]
pub struct Shared {
    pub server: DrawbridgeServer,
}

impl Shared {
    /// `127.0.0.1:<port>`, what `Client::connect` and the CLI's `--addr` take.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.server.spec.port)
    }
}

/// The shared standalone server (see [`Shared`]).
pub fn shared_server() -> Arc<Shared> {
    static SHARED: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let server = start_standalone("solo").unwrap_or_else(|e| panic!("{e}"));
    let s = Arc::new(Shared { server });
    *slot = Arc::downgrade(&s);
    s
}

/// Starts a standalone server with embedded NATS on free ports.
pub fn start_standalone(id: &str) -> TestResult<DrawbridgeServer> {
    let bin = drawbridge_tests::bins::drawbridge_server()?;
    let nats_port = drawbridge_tests::ports::free_port()?;
    let spec = ServerSpec::new(bin, id, NatsMode::Embedded(nats_port))?;
    Ok(DrawbridgeServer::start(&spec)?)
}

/// A client with short timeouts, so a failing test fails fast.
pub async fn client(addrs: &[String]) -> TestResult<Client> {
    Ok(Client::builder(addrs)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .ack_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// A stream name no other test of this binary uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Reads exactly `n` records, each within `each`.
pub async fn read_n(sub: &mut Subscription, n: usize, each: Duration) -> TestResult<Vec<Message>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(each, sub.next()).await {
            Ok(Some(Ok(m))) => out.push(m),
            Ok(Some(Err(e))) => return Err(format!("after {} records: {e}", out.len()).into()),
            Ok(None) => {
                return Err(format!(
                    "subscription ended ({:?}) after {} of {n} records",
                    sub.end_reason(),
                    out.len()
                )
                .into())
            }
            Err(_) => return Err(format!("timed out after {} of {n} records", out.len()).into()),
        }
    }
    Ok(out)
}

/// Reads until the subscription ends cleanly (at most `max` records, each within `each`).
pub async fn read_to_end(
    sub: &mut Subscription,
    max: usize,
    each: Duration,
) -> TestResult<Vec<Message>> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(each, sub.next()).await {
            Ok(Some(Ok(m))) => {
                out.push(m);
                if out.len() > max {
                    return Err(format!("more than {max} records before the end").into());
                }
            }
            Ok(Some(Err(e))) => return Err(format!("after {} records: {e}", out.len()).into()),
            Ok(None) => return Ok(out),
            Err(_) => return Err(format!("no end after {} records", out.len()).into()),
        }
    }
}

/// Asserts that nothing arrives within `wait`.
pub async fn assert_quiet(sub: &mut Subscription, wait: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected nothing, got {item:?}");
    }
}

pub fn offsets(msgs: &[Message]) -> Vec<i64> {
    msgs.iter().map(|m| m.offset).collect()
}

pub fn values(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}
