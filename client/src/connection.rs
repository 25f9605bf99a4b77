//! One gRPC channel per broker address, created on first use and reused by every call.
//!
//! Invariants:
//! 1. At most one [`Channel`] exists per address string; clones of it share one HTTP/2
//!    connection, which multiplexes all calls (unary and streaming) to that broker.
//! 2. Channels connect lazily: creating one never blocks, and a broker that is down shows up
//!    as an `Unavailable` status on the call, which the retry loops handle.
//! 3. With keep-alive configured (the default), a connection whose pings go unanswered is
//!    closed: its calls, streams included, fail with `Unavailable`, and the channel dials
//!    again on the next call. A broker that is frozen but keeps its TCP connection open is
//!    thus noticed within interval + timeout.
//! 4. No per-channel request timeout: long-lived streams (Subscribe, PublishAsync) must not be
//!    cut; unary calls set their own deadline on each request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use drawbridge_proto::api::api_client::ApiClient;
use tonic::transport::{Channel, Endpoint};

use crate::builder::TlsOptions;
use crate::error::{Error, Result};

/// HTTP/2 per-stream flow-control window of the client API (bytes).
const H2_STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 per-connection flow-control window of the client API (bytes).
const H2_CONNECTION_WINDOW: u32 = 4 << 20;

/// The channels, by address.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Channels by `host:port`; read and filled by every call that needs a broker.
    channels: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
    /// Keep-alive ping interval and pong timeout; `None`: no pings.
    keepalive: Option<(Duration, Duration)>,
    tls: Option<TlsOptions>,
}

impl Pool {
    pub(crate) fn new(
        connect_timeout: Duration,
        keepalive: Option<(Duration, Duration)>,
        tls: Option<TlsOptions>,
    ) -> Pool {
        Pool {
            channels: Mutex::new(HashMap::new()),
            connect_timeout,
            keepalive,
            tls,
        }
    }

    /// The API stub for `addr` (`host:port`), creating its channel on first use.
    pub(crate) fn client(&self, addr: &str) -> Result<ApiClient<Channel>> {
        self.channel(addr).map(ApiClient::new)
    }

    /// The channel to `addr` (`host:port`), for stubs of services other than `proto.API`
    /// (Drawbridge's admin service), created on first use like [`Pool::client`]'s.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self.endpoint(addr)?.connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let invalid = |reason: String| Error::InvalidAddress {
            addr: addr.to_string(),
            reason,
        };
        if addr.is_empty() || addr.contains('/') {
            return Err(invalid("expected host:port".into()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // HTTP/2 flow control: the default 64 KiB windows cap a pipelined stream at one
            // window per round trip; let a few MiB be in flight.
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW);
        if let Some((interval, timeout)) = self.keepalive {
            ep = ep
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        if let Some(tls) = &self.tls {
            ep = apply_tls(ep, tls)?;
        }
        Ok(ep)
    }
}

#[cfg(feature = "tls")]
fn apply_tls(ep: Endpoint, tls: &TlsOptions) -> Result<Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut cfg = ClientTlsConfig::new();
    cfg = match &tls.ca_pem {
        Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
        None => cfg.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.client_identity_pem {
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = &tls.domain {
        cfg = cfg.domain_name(domain.clone());
    }
    ep.tls_config(cfg).map_err(|e| Error::Tls(e.to_string()))
}

#[cfg(not(feature = "tls"))]
fn apply_tls(_ep: Endpoint, _tls: &TlsOptions) -> Result<Endpoint> {
    Err(Error::Tls(
        "this build of drawbridge-client has no TLS (enable the `tls` feature)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_address_and_bad_addresses_refused() {
        let pool = Pool::new(Duration::from_secs(1), None, None);
        assert!(pool.client("127.0.0.1:1").is_ok());
        assert!(pool.client("127.0.0.1:1").is_ok());
        assert!(pool.client("127.0.0.1:2").is_ok());
        assert_eq!(pool.channels.lock().map(|c| c.len()).unwrap_or(0), 2);
        assert!(matches!(
            pool.client("http://x:1"),
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(pool.client(""), Err(Error::InvalidAddress { .. })));
        assert!(matches!(
            pool.client("bad host:1"),
            Err(Error::InvalidAddress { .. })
        ));
    }
}
