//! Validation of the names and subjects clients hand us, and the subjects we derive.
//!
//! Invariants: a stream name accepted here is non-empty and not reserved; a stream subject is a
//! valid NATS subject pattern (wildcards allowed, no whitespace, no empty tokens); a publish
//! subject is a valid literal subject. Partition `i > 0` of a stream on `subject` records
//! `subject.i`; partition 0 records `subject` itself.

use crate::embedded_nats::subject;
use crate::error::{Result, ServerError};

/// Stream names Liftbridge reserves for its internal streams.
pub const RESERVED_STREAMS: [&str; 2] = ["__activity", "__cursors"];

/// Checks a stream name given to CreateStream/DeleteStream.
pub fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(ServerError::InvalidArgument(
            "No stream name provided".into(),
        ));
    }
    if RESERVED_STREAMS.contains(&name) {
        return Err(ServerError::InvalidArgument(format!(
            "stream name {name:?} is reserved"
        )));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ServerError::InvalidArgument(format!(
            "stream name {name:?} contains whitespace"
        )));
    }
    Ok(())
}

/// Checks a stream subject (wildcards allowed).
pub fn check_stream_subject(s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(ServerError::InvalidArgument("No subject provided".into()));
    }
    if !subject::is_valid_pattern(s) {
        return Err(ServerError::InvalidArgument(format!(
            "Invalid subject {s:?}"
        )));
    }
    Ok(())
}

/// Checks a subject that a message is published to (no wildcards).
pub fn check_publish_subject(s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(ServerError::InvalidArgument("No subject provided".into()));
    }
    if !subject::is_valid_literal(s) {
        return Err(ServerError::InvalidArgument(format!(
            "Invalid subject {s:?}"
        )));
    }
    Ok(())
}

/// The NATS subject partition `partition` of a stream on `subject` records.
pub fn partition_subject(subject: &str, partition: i32) -> String {
    if partition == 0 {
        subject.to_owned()
    } else {
        format!("{subject}.{partition}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subjects() {
        assert!(check_stream_name("").is_err());
        assert!(check_stream_name("__cursors").is_err());
        assert!(check_stream_name("a b").is_err());
        assert!(check_stream_name("orders").is_ok());
        assert!(check_stream_subject("").is_err());
        assert!(check_stream_subject("a..b").is_err());
        assert!(check_stream_subject("a b").is_err());
        assert!(check_stream_subject("a.*.>").is_ok());
        assert!(check_publish_subject("a.*").is_err());
        assert!(check_publish_subject("a.b").is_ok());
        assert_eq!(partition_subject("foo", 0), "foo");
        assert_eq!(partition_subject("foo", 3), "foo.3");
    }
}
