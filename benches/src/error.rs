//! [`BenchError`]: what can stop a workload.

/// Why a workload or probe failed. A failed workload is reported as an `error` record and the
/// run goes on with the next one.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The Liftbridge-API client failed.
    #[error("liftbridge client: {0}")]
    Client(#[from] drawbridge_client::Error),
    /// NATS or JetStream failed (async-nats errors are many types; kept as text).
    #[error("nats: {0}")]
    Nats(String),
    /// Local I/O (hardware probes, output files).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A workload did not finish within its bound.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Anything else (bad arguments, an unexpected end of a subscription).
    #[error("{0}")]
    Other(String),
}

/// Result of this crate.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

impl BenchError {
    /// Wraps any async-nats error.
    pub fn nats(e: impl std::fmt::Display) -> Self {
        BenchError::Nats(e.to_string())
    }
}
