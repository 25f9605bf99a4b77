//! [`ServerError`]: every failure the server's own code reports, with the class that decides its
//! gRPC status code.
//!
//! Invariant: the variant is the status class (Liftbridge's codes, spec §5); the mapping to
//! `tonic::Status` lives in [`crate::status`] and nowhere else. Library errors (raft, storage,
//! NATS) are wrapped with their source so the mapping can look inside them.

use drawbridge_raft::RaftError;
use drawbridge_storage::StorageError;

/// A failure of a server operation.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed (empty name, bad subject, bad position, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The stream, partition or other object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The stream already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request cannot run here or now (not the partition leader, readonly, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bounded read reached its end (stop position, empty stream), or the partition
    /// leader's disk is below `storage.min.free.bytes`.
    #[error("{0}")]
    ResourceExhausted(String),
    /// An ack did not arrive before the call's deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Not offered by this server (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// Try again, possibly elsewhere (the partition leader changed under a subscription).
    #[error("{0}")]
    Unavailable(String),
    /// An error without a more specific class (Liftbridge answers these as Unknown).
    #[error("{0}")]
    Unknown(String),
    /// A server-side failure (no metadata leader, replication failed, ...).
    #[error("{0}")]
    Internal(String),
    /// The raft layer failed.
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    /// The partition log failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Talking to NATS failed.
    #[error("NATS: {0}")]
    Nats(String),
}

/// Result alias of the server.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
