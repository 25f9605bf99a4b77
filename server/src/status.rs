//! The one place where server errors become gRPC statuses (spec §5).
//!
//! Invariants:
//! - Every RPC handler returns `Result<_, ServerError>` internally and converts at its edge with
//!   [`to_status`]; no other module builds a `tonic::Status` from an error.
//! - Raft errors map by meaning: "not the leader" is `FailedPrecondition` (what makes
//!   Liftbridge clients refresh metadata and retry), "no such group" is `NotFound`, a rejected
//!   proposal is `FailedPrecondition`, and replication failures and timeouts are `Internal`
//!   (Liftbridge's "Raft replication failure").
//! - NATS failures are `Unknown`, as the reference server returns a plain error for them.

use drawbridge_raft::RaftError;
use tonic::{Code, Status};

use crate::error::ServerError;

/// The gRPC code of an error.
pub fn code_of(e: &ServerError) -> Code {
    match e {
        ServerError::InvalidArgument(_) => Code::InvalidArgument,
        ServerError::NotFound(_) => Code::NotFound,
        ServerError::AlreadyExists(_) => Code::AlreadyExists,
        ServerError::FailedPrecondition(_) => Code::FailedPrecondition,
        ServerError::ResourceExhausted(_) => Code::ResourceExhausted,
        ServerError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        ServerError::Unimplemented(_) => Code::Unimplemented,
        ServerError::Unavailable(_) => Code::Unavailable,
        ServerError::Unknown(_) | ServerError::Nats(_) => Code::Unknown,
        ServerError::Internal(_) | ServerError::Storage(_) => Code::Internal,
        ServerError::Raft(r) => match r {
            RaftError::NotLeader { .. } => Code::FailedPrecondition,
            RaftError::GroupNotFound(_) => Code::NotFound,
            RaftError::Rejected(_) => Code::FailedPrecondition,
            _ => Code::Internal,
        },
    }
}

/// Converts a server error into the status sent to the client.
pub fn to_status(e: ServerError) -> Status {
    let code = code_of(&e);
    if code == Code::Internal {
        tracing::warn!(error = %e, "request failed with an internal error");
    }
    Status::new(code, e.to_string())
}

/// Shorthand for handlers: `result.map_err(status::to_status)`.
impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        to_status(e)
    }
}

/// A wire-safe form of an error, carried between nodes when an admin call is forwarded to the
/// metadata leader; [`WireError::into_error`] restores the same class on the forwarding node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WireError {
    /// The gRPC code as its integer value.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl WireError {
    /// Captures `e`.
    pub fn from_error(e: &ServerError) -> Self {
        Self {
            code: code_of(e) as i32,
            message: e.to_string(),
        }
    }

    /// Rebuilds an error of the same class.
    pub fn into_error(self) -> ServerError {
        let m = self.message;
        match Code::from_i32(self.code) {
            Code::InvalidArgument => ServerError::InvalidArgument(m),
            Code::NotFound => ServerError::NotFound(m),
            Code::AlreadyExists => ServerError::AlreadyExists(m),
            Code::FailedPrecondition => ServerError::FailedPrecondition(m),
            Code::ResourceExhausted => ServerError::ResourceExhausted(m),
            Code::DeadlineExceeded => ServerError::DeadlineExceeded(m),
            Code::Unimplemented => ServerError::Unimplemented(m),
            Code::Unavailable => ServerError::Unavailable(m),
            Code::Internal => ServerError::Internal(m),
            _ => ServerError::Unknown(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_keep_their_class() {
        for e in [
            ServerError::InvalidArgument("a".into()),
            ServerError::NotFound("b".into()),
            ServerError::AlreadyExists("c".into()),
            ServerError::FailedPrecondition("d".into()),
            ServerError::Internal("e".into()),
        ] {
            let code = code_of(&e);
            let back = WireError::from_error(&e).into_error();
            assert_eq!(code_of(&back), code);
        }
    }

    #[test]
    fn not_leader_is_failed_precondition() {
        let e = ServerError::Raft(RaftError::NotLeader {
            group: drawbridge_raft::GroupId::Metadata,
            leader_id: None,
            leader_addr: None,
        });
        assert_eq!(code_of(&e), Code::FailedPrecondition);
    }
}
