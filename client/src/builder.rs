//! [`ClientBuilder`]: addresses, timeouts, retries and TLS, then `connect`.
//!
//! Invariants:
//! 1. A built client has at least one bootstrap address and has fetched metadata once from
//!    one of them (like go-liftbridge, which fails `Connect` when no address answers).
//! 2. Defaults: connect timeout 5 s, request timeout 10 s, ack timeout 5 s (go-liftbridge's
//!    `AckWaitTime`), resubscribe budget 30 s (its `ResubscribeWaitTime`), [`RetryPolicy`]
//!    default, HTTP/2 keep-alive pings every 1 s (also on idle connections) with a 3 s pong
//!    timeout. The pings are what notices a broker that stopped answering but whose TCP
//!    connection is still open (a frozen or partitioned process): the connection is closed,
//!    its calls fail `Unavailable`, and publishers and subscriptions move to another broker.
//!    A Liftbridge server built on grpc-go enforces a minimum ping interval (5 minutes by
//!    default) and closes connections that ping more often: use
//!    [`ClientBuilder::no_keepalive`] (or a longer interval) against one.

use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// Default interval of HTTP/2 keep-alive pings.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(1);
/// Default time allowed for a keep-alive ping's answer.
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// TLS towards the servers. PEM bytes, as read from files.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// CA certificate(s) to trust; `None` trusts the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and private key, for servers that require client certificates.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify the server certificate against, when it differs from the host dialled.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .field("client_identity", &self.client_identity_pem.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// Everything a client needs to know, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) addrs: Vec<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ack_timeout: Duration,
    pub(crate) resubscribe_wait: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) tls: Option<TlsOptions>,
}

/// Configures and connects a [`Client`].
///
/// ```no_run
/// # async fn run() -> drawbridge_client::Result<()> {
/// use std::time::Duration;
/// use drawbridge_client::{ClientBuilder, RetryPolicy};
///
/// let client = ClientBuilder::new(["127.0.0.1:9292", "127.0.0.1:9293"])
///     .request_timeout(Duration::from_secs(3))
///     .ack_timeout(Duration::from_secs(2))
///     .retry(RetryPolicy { max_attempts: 8, ..RetryPolicy::default() })
///     .connect()
///     .await?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    config: Config,
}

impl ClientBuilder {
    /// A builder for a cluster reachable at any of `addrs` (`host:port` each). One address is
    /// enough: the others are discovered from metadata.
    pub fn new<I, S>(addrs: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder {
            config: Config {
                addrs: addrs
                    .into_iter()
                    .map(|a| a.as_ref().trim().to_string())
                    .filter(|a| !a.is_empty())
                    .collect(),
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(10),
                ack_timeout: Duration::from_secs(5),
                resubscribe_wait: Duration::from_secs(30),
                retry: RetryPolicy::default(),
                keepalive: Some(DEFAULT_KEEPALIVE),
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                tls: None,
            },
        }
    }

    /// Time allowed to open a TCP (and TLS) connection to a broker.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.config.connect_timeout = t;
        self
    }

    /// Deadline of each unary call other than publishes (admin, metadata, cursors), and of
    /// the wait for a subscription's first frame.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.config.request_timeout = t;
        self
    }

    /// Default time to wait for a publish ack (per message overridable).
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.config.ack_timeout = t;
        self
    }

    /// How long a subscription keeps trying to resubscribe after losing its server.
    pub fn resubscribe_wait(mut self, t: Duration) -> Self {
        self.config.resubscribe_wait = t;
        self
    }

    /// Retries of calls that failed with a transient error.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Send HTTP/2 keep-alive pings at this interval, also on idle connections (default 1 s:
    /// see module docs). A zero interval is taken as 1 ms.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.config.keepalive = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// Close a connection whose keep-alive ping is not answered within this time (default
    /// 3 s); its calls then fail `Unavailable` and are retried or moved elsewhere.
    pub fn keepalive_timeout(mut self, t: Duration) -> Self {
        self.config.keepalive_timeout = t;
        self
    }

    /// No HTTP/2 keep-alive pings (for servers that refuse frequent pings, such as grpc-go
    /// Liftbridge with its default enforcement policy). A frozen broker is then noticed only
    /// through ack and request timeouts.
    pub fn no_keepalive(mut self) -> Self {
        self.config.keepalive = None;
        self
    }

    /// Use TLS towards every broker.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Connects: fetches metadata from the first address that answers (module invariant 1).
    pub async fn connect(self) -> Result<Client> {
        if self.config.addrs.is_empty() {
            return Err(Error::Config("no server address given".into()));
        }
        let client = Client::from_config(self.config);
        client.fetch_metadata().await?;
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_defaults_set() {
        let b = ClientBuilder::new([" 127.0.0.1:9292 ", "", "h:1"]);
        assert_eq!(b.config.addrs, vec!["127.0.0.1:9292", "h:1"]);
        assert_eq!(b.config.ack_timeout, Duration::from_secs(5));
        assert_eq!(b.config.retry, RetryPolicy::default());
        assert_eq!(b.config.keepalive, Some(Duration::from_secs(1)));
        assert_eq!(b.config.keepalive_timeout, Duration::from_secs(3));
        assert!(b.clone().no_keepalive().config.keepalive.is_none());
        let t = TlsOptions {
            client_identity_pem: Some((b"cert".to_vec(), b"secret key".to_vec())),
            ..TlsOptions::default()
        };
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[tokio::test]
    async fn connect_without_addresses_fails() {
        let empty: [&str; 0] = [];
        assert!(matches!(
            ClientBuilder::new(empty).connect().await,
            Err(Error::Config(_))
        ));
    }
}
