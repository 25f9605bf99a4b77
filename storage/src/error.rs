//! Errors of the storage crate.
//!
//! Invariants:
//! - Every failure is a value: bytes read from disk or handed in by a peer are parsed into a
//!   [`DecodeError`] or a [`StorageError`], never `unwrap()`ed.
//! - `ENOSPC` / `EDQUOT` from any write, `fallocate` or `ftruncate` become
//!   [`StorageError::DiskFull`], so the server can answer "disk full" instead of "I/O error".
//! - [`StorageError`] is `Clone` (I/O errors are shared behind an `Arc`), so one failed sync
//!   round can be reported to every waiter of a group commit.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Why a byte string is not a valid batch, record set or record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the structure needs (a torn write, or the end of the data).
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the structure declares or needs.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The format version byte is not one this build reads.
    #[error("unknown batch magic {0}")]
    BadMagic(u8),
    /// A length field is out of the allowed range.
    #[error("bad length {0}")]
    BadLength(u64),
    /// A checksum does not match the bytes.
    #[error("{what} CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// Which checksum ("batch" or "records").
        what: &'static str,
        /// The value on disk.
        stored: u32,
        /// The value computed over the bytes.
        computed: u32,
    },
    /// A varint is longer than 10 bytes or overflows 64 bits.
    #[error("varint overflow")]
    VarintOverflow,
    /// A header name is not UTF-8.
    #[error("header name is not UTF-8")]
    InvalidUtf8,
    /// Any other structural violation.
    #[error("invalid: {0}")]
    Invalid(&'static str),
}

/// Errors of the storage crate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An operating-system I/O error.
    #[error("I/O error while {op} {path}: {source}")]
    Io {
        /// What we were doing ("writing", "opening", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file system is full (or over quota): preallocation, a write or a rename failed with
    /// `ENOSPC` / `EDQUOT`. Nothing partial became visible.
    #[error("disk full while {op} {path}")]
    DiskFull {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Bytes on disk fail their checksum or structure at read time (recovery truncates a bad
    /// tail instead of returning this).
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the batch.
        position: u64,
        /// What is wrong.
        reason: DecodeError,
    },
    /// A batch body handed to `append` is malformed.
    #[error("invalid batch: {0}")]
    InvalidBatch(DecodeError),
    /// Raft indexes must be contiguous: the appended index is not `last + 1`.
    #[error("raft index {got} does not follow the last raft index {last}")]
    RaftIndexGap {
        /// Last raft index in the log.
        last: u64,
        /// Index of the batch being appended.
        got: u64,
    },
    /// Raft terms never decrease along the log.
    #[error("raft term {got} is lower than the last term {last}")]
    TermRegression {
        /// Last raft term in the log.
        last: u64,
        /// Term of the batch being appended.
        got: u64,
    },
    /// The offset was removed by retention (below `earliest`) or is beyond the log.
    #[error("offset {offset} is out of range [{earliest}, {next})")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: u64,
        /// Earliest offset still stored.
        earliest: u64,
        /// Next offset to be assigned.
        next: u64,
    },
    /// An argument violates the method's contract.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// [`crate::Log::close`] was called or the group-commit flusher stopped.
    #[error("the log is closed")]
    Closed,
}

impl StorageError {
    /// Wraps an I/O error, turning `ENOSPC`/`EDQUOT` into [`StorageError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => StorageError::DiskFull {
                op,
                path: path.to_path_buf(),
            },
            _ => StorageError::Io {
                op,
                path: path.to_path_buf(),
                source: Arc::new(source),
            },
        }
    }

    /// A corruption found at `position` of `path`.
    pub(crate) fn corrupt(path: &Path, position: u64, reason: DecodeError) -> Self {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            position,
            reason,
        }
    }

    /// Converts to an `io::Error` (openraft's storage traits return those).
    pub fn into_io(self) -> io::Error {
        match self {
            StorageError::Io { source, .. } => io::Error::new(source.kind(), self_msg(&source)),
            StorageError::DiskFull { .. } => {
                io::Error::new(io::ErrorKind::StorageFull, self.to_string())
            }
            other => io::Error::other(other),
        }
    }
}

fn self_msg(e: &Arc<io::Error>) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_becomes_disk_full() {
        let e = StorageError::io(
            "writing",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, StorageError::DiskFull { .. }));
        let e = StorageError::io(
            "writing",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(matches!(e, StorageError::Io { .. }));
        assert_eq!(
            e.clone().into_io().kind(),
            io::Error::from_raw_os_error(libc::EIO).kind()
        );
    }
}
