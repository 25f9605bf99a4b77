//! The client's error type, and the one place where gRPC statuses become typed errors.
//!
//! Invariants:
//! 1. Every `tonic::Status` the client receives goes through [`Error::from_status`] together
//!    with the [`Call`] it answered: the same code means different things on different RPCs
//!    (wire spec §5). `NotFound` is "no such stream" on DeleteStream, "no such partition" on
//!    Subscribe and Publish, and "the stream was deleted" in the middle of a subscription;
//!    `DeadlineExceeded` on a publish is an ack timeout.
//! 2. Per-message failures of the pipelined publisher arrive as `PublishAsyncError` codes, not
//!    statuses; [`Error::from_async_error`] maps them to the same variants a unary publish uses.
//! 3. Nothing here panics on what a server sends: unknown enum numbers become
//!    [`Error::Status`] with [`tonic::Code::Unknown`].
//! 4. A connection that breaks under a call (the server process died, the socket was reset)
//!    is `Unavailable`, whatever code the transport layer gave it: [`lost_connection`] turns
//!    tonic's `Unknown: h2 protocol error: ...` into `Unavailable`, so every retry rule that
//!    covers a server being down also covers a server dying mid-call.

use drawbridge_proto::api::{ack, publish_async_error};
use tonic::{Code, Status};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The RPC (or the phase of one) that a status answered; it picks what a code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    CreateStream,
    DeleteStream,
    PauseStream,
    SetStreamReadonly,
    FetchMetadata,
    FetchPartitionMetadata,
    Publish,
    PublishToSubject,
    /// Subscribe, up to and including the empty first frame.
    SubscribeOpen,
    /// Subscribe, after the first frame.
    SubscribeRecv,
    Cursor,
    /// A consumer-group RPC.
    Group,
    /// `drawbridge.admin.v1.Admin/ReplicaChecksum` (Drawbridge only).
    ReplicaChecksum,
}

/// Rewrites a status that reports a broken connection as `Unavailable` (module invariant 4).
///
/// tonic reports a connection that breaks in the middle of a call (a SIGKILLed server, a reset
/// socket) as `Unknown` or `Internal` with the transport error as the status's *source*
/// (e.g. `Unknown: h2 protocol error: error reading a body from connection`), and a request
/// still queued on a connection that closes as `Cancelled: operation was canceled`. A status
/// a server sent never has a source: it is parsed from trailers. So a source on these codes
/// means the call never got an answer, which is what `Unavailable` says. tonic's own request
/// timeout (`Cancelled: Timeout expired`) is left alone: it is a deadline, not a lost server.
pub(crate) fn lost_connection(status: Status) -> Status {
    let transport = std::error::Error::source(&status).is_some()
        || status.message().starts_with("h2 protocol error")
        || status.message().starts_with("transport error");
    let lost = match status.code() {
        Code::Unknown | Code::Internal => true,
        Code::Cancelled => status.message() != "Timeout expired",
        _ => false,
    };
    if transport && lost {
        Status::unavailable(format!("connection lost: {}", status.message()))
    } else {
        status
    }
}

/// Everything that can go wrong in the client.
///
/// Variants mirror the gRPC codes of the Liftbridge API (wire spec §5) the way go-liftbridge
/// names them (`ErrStreamExists`, `ErrNoSuchPartition`, `ErrAckTimeout`, ...), plus the
/// client's own failures (addresses, TLS, a closed publisher).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// CreateStream: a stream with this name exists (`AlreadyExists`).
    #[error("stream already exists")]
    StreamExists,
    /// The stream does not exist (`NotFound` on DeleteStream, or absent from metadata).
    #[error("no such stream: {0}")]
    NoSuchStream(String),
    /// The stream or partition does not exist (`NotFound` on Subscribe, Publish, Pause...).
    #[error("no such stream partition: {0}")]
    NoSuchPartition(String),
    /// A subscription ended because its stream was deleted (`NotFound` mid-stream).
    #[error("the stream was deleted")]
    StreamDeleted,
    /// A subscription ended because its partition was paused (`FailedPrecondition`
    /// mid-stream, confirmed by metadata).
    #[error("the stream partition is paused")]
    PartitionPaused,
    /// Publishing to a readonly partition (`FailedPrecondition` on Publish, `READONLY` on
    /// PublishAsync).
    #[error("the partition is readonly: {0}")]
    ReadonlyPartition(String),
    /// A leader-routed call kept reaching a server that is not the partition leader
    /// (`FailedPrecondition`), even after metadata refreshes.
    #[error("not the partition leader: {0}")]
    NotLeader(String),
    /// Metadata names no reachable leader (or ISR replica) for the partition.
    #[error("no known leader for partition {partition} of stream {stream}")]
    NoKnownLeader {
        /// Stream name.
        stream: String,
        /// Partition id.
        partition: i32,
    },
    /// The ack did not arrive within the ack timeout (`DeadlineExceeded` on a publish, or the
    /// client's own timer). The message may or may not have been stored.
    #[error("publish ack timeout")]
    AckTimeout,
    /// Optimistic concurrency control refused the message: it was not written.
    #[error("incorrect expected offset: {0}")]
    IncorrectOffset(String),
    /// The server refused the request's arguments (`InvalidArgument`, `BAD_REQUEST`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Encryption at rest failed on the server.
    #[error("encryption failed: {0}")]
    Encryption(String),
    /// The caller is not authorized.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Another `FailedPrecondition` (e.g. encryption requested without a server key).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The cluster has no `__cursors` stream, so cursors are disabled.
    #[error("cursors are not enabled on the cluster (no `__cursors` stream)")]
    CursorsDisabled,
    /// No server answered (`Unavailable`), after the bounded retries.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// A unary call (not a publish) ran out of time.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The pipelined publisher's stream broke before this message's ack arrived. The message
    /// may or may not have been stored; the next send opens a new stream.
    #[error("the publish stream broke before the ack arrived: {0}")]
    PublishStreamReset(String),
    /// The publisher has shut down.
    #[error("the publisher is closed")]
    PublisherClosed,
    /// The server failed (`Internal`).
    #[error("server internal error: {0}")]
    Internal(String),
    /// Any other status.
    #[error("gRPC status {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The server answered with something the protocol does not allow.
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    /// A broker address could not be turned into an endpoint.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The client was configured or used wrongly.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Maps a gRPC status to a typed error, given the call it answered (module invariant 1).
    pub(crate) fn from_status(call: Call, status: Status) -> Error {
        let message = status.message().to_string();
        let code = match status.code() {
            // A tonic server that enforces the request's deadline answers "Cancelled: Timeout
            // expired" rather than DeadlineExceeded; both mean the deadline passed.
            Code::Cancelled if message == "Timeout expired" => Code::DeadlineExceeded,
            code => code,
        };
        match code {
            Code::AlreadyExists if call == Call::CreateStream => Error::StreamExists,
            Code::NotFound => match call {
                Call::DeleteStream | Call::CreateStream | Call::FetchMetadata => {
                    Error::NoSuchStream(message)
                }
                Call::SubscribeRecv => Error::StreamDeleted,
                _ => Error::NoSuchPartition(message),
            },
            Code::FailedPrecondition => match call {
                Call::Publish | Call::PublishToSubject => Error::ReadonlyPartition(message),
                Call::SubscribeOpen | Call::FetchPartitionMetadata | Call::Cursor => {
                    Error::NotLeader(message)
                }
                Call::SubscribeRecv => Error::PartitionPaused,
                _ => Error::FailedPrecondition(message),
            },
            Code::DeadlineExceeded => match call {
                Call::Publish | Call::PublishToSubject => Error::AckTimeout,
                _ => Error::DeadlineExceeded(message),
            },
            Code::ResourceExhausted if matches!(call, Call::Publish | Call::PublishToSubject) => {
                Error::ReadonlyPartition(message)
            }
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::Internal => Error::Internal(message),
            Code::PermissionDenied | Code::Unauthenticated => Error::PermissionDenied(message),
            // The reference server answers some conditions with plain errors, which reach the
            // client as Unknown; recognise the two a caller can act on (wire spec §5).
            Code::Unknown if message.contains("incorrect expected offset") => {
                Error::IncorrectOffset(message)
            }
            Code::Unknown if message.contains("not authorized") => Error::PermissionDenied(message),
            code => Error::Status { code, message },
        }
    }

    /// Maps a `PublishAsyncError` (a per-message failure of PublishAsync) to a typed error.
    pub(crate) fn from_async_error(code: i32, message: String) -> Error {
        use publish_async_error::Code as C;
        match C::try_from(code) {
            Ok(C::NotFound) => Error::NoSuchPartition(message),
            Ok(C::Readonly) => Error::ReadonlyPartition(message),
            Ok(C::IncorrectOffset) => Error::IncorrectOffset(message),
            Ok(C::BadRequest) => Error::InvalidArgument(message),
            Ok(C::EncryptionFailed) => Error::Encryption(message),
            Ok(C::PermissionDenied) => Error::PermissionDenied(message),
            Ok(C::Internal) => Error::Internal(message),
            Ok(C::Unknown) | Err(_) => Error::Status {
                code: Code::Unknown,
                message,
            },
        }
    }

    /// Maps the `ackError` of an Ack, or `None` when the ack reports success.
    pub(crate) fn from_ack_error(code: i32) -> Option<Error> {
        use ack::Error as A;
        match A::try_from(code) {
            Ok(A::Ok) => None,
            Ok(A::IncorrectOffset) => Some(Error::IncorrectOffset(
                "the message did not get the expected offset".into(),
            )),
            Ok(A::TooLarge) => Some(Error::InvalidArgument("message too large".into())),
            Ok(A::Encryption) => Some(Error::Encryption("the server could not encrypt".into())),
            Ok(A::Unknown) | Err(_) => Some(Error::Status {
                code: Code::Unknown,
                message: format!("ack error {code}"),
            }),
        }
    }

    /// True when trying again later may succeed: the server was unreachable, leadership was
    /// moving, or an ack was lost in transit.
    ///
    /// A retried publish after [`Error::AckTimeout`] or [`Error::PublishStreamReset`] may store
    /// the message twice; use an expected offset to make retries exactly-once.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::PublishStreamReset(_)
                | Error::NotLeader(_)
                | Error::NoKnownLeader { .. }
                | Error::AckTimeout
                | Error::DeadlineExceeded(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: Code, msg: &str) -> Status {
        Status::new(code, msg)
    }

    #[test]
    fn not_found_depends_on_the_call() {
        assert!(matches!(
            Error::from_status(Call::DeleteStream, st(Code::NotFound, "x")),
            Error::NoSuchStream(m) if m == "x"
        ));
        assert!(matches!(
            Error::from_status(Call::SubscribeOpen, st(Code::NotFound, "No such partition")),
            Error::NoSuchPartition(_)
        ));
        assert!(matches!(
            Error::from_status(Call::Publish, st(Code::NotFound, "")),
            Error::NoSuchPartition(_)
        ));
        assert!(matches!(
            Error::from_status(Call::SubscribeRecv, st(Code::NotFound, "")),
            Error::StreamDeleted
        ));
    }

    #[test]
    fn failed_precondition_depends_on_the_call() {
        assert!(matches!(
            Error::from_status(Call::Publish, st(Code::FailedPrecondition, "readonly")),
            Error::ReadonlyPartition(_)
        ));
        assert!(matches!(
            Error::from_status(Call::SubscribeOpen, st(Code::FailedPrecondition, "")),
            Error::NotLeader(_)
        ));
        assert!(matches!(
            Error::from_status(Call::Cursor, st(Code::FailedPrecondition, "")),
            Error::NotLeader(_)
        ));
        assert!(matches!(
            Error::from_status(Call::SubscribeRecv, st(Code::FailedPrecondition, "")),
            Error::PartitionPaused
        ));
        assert!(matches!(
            Error::from_status(Call::CreateStream, st(Code::FailedPrecondition, "no key")),
            Error::FailedPrecondition(m) if m == "no key"
        ));
    }

    #[test]
    fn other_codes() {
        assert!(matches!(
            Error::from_status(Call::CreateStream, st(Code::AlreadyExists, "")),
            Error::StreamExists
        ));
        assert!(matches!(
            Error::from_status(Call::Publish, st(Code::DeadlineExceeded, "")),
            Error::AckTimeout
        ));
        assert!(matches!(
            Error::from_status(Call::PublishToSubject, st(Code::DeadlineExceeded, "")),
            Error::AckTimeout
        ));
        assert!(matches!(
            Error::from_status(Call::Publish, st(Code::Cancelled, "Timeout expired")),
            Error::AckTimeout
        ));
        assert!(matches!(
            Error::from_status(Call::Publish, st(Code::Cancelled, "client went away")),
            Error::Status {
                code: Code::Cancelled,
                ..
            }
        ));
        assert!(matches!(
            Error::from_status(Call::DeleteStream, st(Code::DeadlineExceeded, "slow")),
            Error::DeadlineExceeded(_)
        ));
        assert!(matches!(
            Error::from_status(Call::CreateStream, st(Code::InvalidArgument, "bad subject")),
            Error::InvalidArgument(m) if m == "bad subject"
        ));
        assert!(matches!(
            Error::from_status(Call::Publish, st(Code::ResourceExhausted, "")),
            Error::ReadonlyPartition(_)
        ));
        assert!(matches!(
            Error::from_status(Call::FetchMetadata, st(Code::Unavailable, "down")),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            Error::from_status(Call::FetchMetadata, st(Code::Internal, "boom")),
            Error::Internal(_)
        ));
        assert!(matches!(
            Error::from_status(
                Call::Publish,
                st(Code::Unknown, "incorrect expected offset")
            ),
            Error::IncorrectOffset(_)
        ));
        assert!(matches!(
            Error::from_status(Call::Publish, st(Code::Unknown, "whatever")),
            Error::Status {
                code: Code::Unknown,
                ..
            }
        ));
        assert!(matches!(
            Error::from_status(Call::Cursor, st(Code::Unimplemented, "")),
            Error::Status {
                code: Code::Unimplemented,
                ..
            }
        ));
    }

    #[test]
    fn async_errors() {
        use publish_async_error::Code as C;
        let e = |c: C| Error::from_async_error(c as i32, "m".into());
        assert!(matches!(e(C::NotFound), Error::NoSuchPartition(_)));
        assert!(matches!(e(C::Readonly), Error::ReadonlyPartition(_)));
        assert!(matches!(e(C::IncorrectOffset), Error::IncorrectOffset(_)));
        assert!(matches!(e(C::BadRequest), Error::InvalidArgument(_)));
        assert!(matches!(e(C::EncryptionFailed), Error::Encryption(_)));
        assert!(matches!(e(C::PermissionDenied), Error::PermissionDenied(_)));
        assert!(matches!(e(C::Internal), Error::Internal(_)));
        assert!(matches!(e(C::Unknown), Error::Status { .. }));
        assert!(matches!(
            Error::from_async_error(99, "m".into()),
            Error::Status { .. }
        ));
    }

    #[test]
    fn ack_errors() {
        assert!(Error::from_ack_error(ack::Error::Ok as i32).is_none());
        assert!(matches!(
            Error::from_ack_error(ack::Error::IncorrectOffset as i32),
            Some(Error::IncorrectOffset(_))
        ));
        assert!(matches!(
            Error::from_ack_error(ack::Error::TooLarge as i32),
            Some(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Error::from_ack_error(42),
            Some(Error::Status { .. })
        ));
    }

    #[test]
    fn broken_connections_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let mut broken = Status::unknown("h2 protocol error: error reading a body from connection");
        broken.set_source(std::sync::Arc::new(io));
        assert_eq!(lost_connection(broken).code(), Code::Unavailable);
        let unsourced = Status::unknown("h2 protocol error: connection reset");
        assert_eq!(lost_connection(unsourced).code(), Code::Unavailable);
        // What a server sends keeps its code.
        let sent = Status::unknown("incorrect expected offset");
        assert_eq!(lost_connection(sent).code(), Code::Unknown);
        let sent = Status::internal("boom");
        assert_eq!(lost_connection(sent).code(), Code::Internal);
        let mut queued = Status::cancelled("operation was canceled");
        queued.set_source(std::sync::Arc::new(std::io::Error::other("canceled")));
        assert_eq!(lost_connection(queued).code(), Code::Unavailable);
        let mut timeout = Status::cancelled("Timeout expired");
        timeout.set_source(std::sync::Arc::new(std::io::Error::other("timeout")));
        assert_eq!(lost_connection(timeout).code(), Code::Cancelled);
        assert_eq!(
            lost_connection(Status::cancelled("by the server")).code(),
            Code::Cancelled
        );
        let sent = Status::not_found("No such partition");
        assert_eq!(lost_connection(sent).code(), Code::NotFound);
    }

    #[test]
    fn retryable() {
        assert!(Error::Unavailable(String::new()).is_retryable());
        assert!(Error::PublishStreamReset(String::new()).is_retryable());
        assert!(!Error::StreamExists.is_retryable());
        assert!(!Error::InvalidArgument(String::new()).is_retryable());
    }
}
