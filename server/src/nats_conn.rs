//! The server's NATS connection: to the embedded broker (`--embedded-nats`) or to the servers in
//! `nats.servers`, with the configured user/password and TLS files.
//!
//! Invariants: one client per server process carries everything (ingest subscriptions, acks,
//! re-published gRPC publishes, cluster discovery and forwarding), so messages the server
//! publishes reach its own subscriptions in publish order (on the embedded broker, message
//! publishes, acks and ingest subscriptions skip this client and use the broker in-process,
//! [`crate::embedded_nats::local`], which routes in call order too); the client reconnects
//! forever after the first successful connect; the first connect is bounded (it fails start-up
//! instead of hanging).

use std::time::Duration;

use crate::config::Config;
use crate::error::{Result, ServerError};

/// How long the first connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to NATS at `urls` with the settings of `config.nats`.
pub async fn connect(config: &Config, urls: &[String], name: &str) -> Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("drawbridge-server {name}"))
        .connection_timeout(CONNECT_TIMEOUT)
        .subscription_capacity(1 << 16)
        .client_capacity(1 << 16)
        .max_reconnects(None::<usize>);
    if let (Some(user), Some(pass)) = (&config.nats.user, &config.nats.password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(ca) = &config.nats.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.nats.tls_cert, &config.nats.tls_key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| ServerError::Nats(format!("bad NATS URL {u:?}: {e}")))
        })
        .collect::<Result<_>>()?;
    if addrs.is_empty() {
        return Err(ServerError::Nats("no NATS servers configured".into()));
    }
    let connect = opts.connect(addrs);
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connect).await {
        Err(_) => Err(ServerError::Nats(format!(
            "connecting to {urls:?} timed out after {CONNECT_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(ServerError::Nats(format!("connecting to {urls:?}: {e}"))),
        Ok(Ok(c)) => Ok(c),
    }
}
