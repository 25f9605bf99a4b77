//! What the client hands back: records read by a subscription ([`Message`]) and publish
//! acknowledgements ([`Ack`]).
//!
//! Invariants:
//! 1. These are plain data copied out of the protobuf types; timestamps stay Unix nanoseconds
//!    as on the wire (0 = unknown), with `SystemTime` accessors.
//! 2. An [`Ack`] only exists for a message that was stored: acks that carry an `ackError` are
//!    turned into errors by [`ack_from_proto`] and never reach the caller as an `Ack`.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use drawbridge_proto::api;

use crate::error::{Error, Result};
use crate::options::{time_from_nanos, AckPolicy};

/// A record read from a stream partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Record key; empty when the record has none.
    pub key: Bytes,
    /// Record value.
    pub value: Bytes,
    /// When the partition leader received it, Unix nanoseconds.
    pub timestamp_ns: i64,
    /// Stream name.
    pub stream: String,
    /// Partition id.
    pub partition: i32,
    /// NATS subject the record arrived on.
    pub subject: String,
    /// NATS reply subject it arrived with ("" if none).
    pub reply_subject: String,
    /// Headers: the publisher's, plus the server's `subject` and `reply` entries.
    pub headers: HashMap<String, Bytes>,
}

impl Message {
    /// When the partition leader received the record (`None` if the server sent 0).
    pub fn timestamp(&self) -> Option<SystemTime> {
        time_from_nanos(self.timestamp_ns)
    }

    pub(crate) fn from_proto(m: api::Message) -> Message {
        Message {
            offset: m.offset,
            key: m.key,
            value: m.value,
            timestamp_ns: m.timestamp,
            stream: m.stream,
            partition: m.partition,
            subject: m.subject,
            reply_subject: m.reply_subject,
            headers: m.headers,
        }
    }
}

/// Acknowledgement that a published message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Stream that stored the message.
    pub stream: String,
    /// The stream's base NATS subject.
    pub partition_subject: String,
    /// The concrete subject the message arrived on (it implies the partition).
    pub msg_subject: String,
    /// Offset the message got.
    pub offset: i64,
    /// Inbox the ack was sent to.
    pub ack_inbox: String,
    /// The message's correlation id.
    pub correlation_id: String,
    /// Ack policy of the message (`None` if the server sent an unknown value).
    pub ack_policy: Option<AckPolicy>,
    /// When the leader received the message, Unix nanoseconds.
    pub reception_timestamp_ns: i64,
    /// When the ack was sent, Unix nanoseconds.
    pub commit_timestamp_ns: i64,
}

impl Ack {
    /// When the leader received the message.
    pub fn reception_time(&self) -> Option<SystemTime> {
        time_from_nanos(self.reception_timestamp_ns)
    }

    /// When the ack was sent.
    pub fn commit_time(&self) -> Option<SystemTime> {
        time_from_nanos(self.commit_timestamp_ns)
    }
}

/// Converts a wire ack, turning an `ackError` into an error (module invariant 2).
pub(crate) fn ack_from_proto(a: api::Ack) -> Result<Ack> {
    if let Some(err) = Error::from_ack_error(a.ack_error) {
        return Err(err);
    }
    Ok(Ack {
        ack_policy: AckPolicy::from_proto(a.ack_policy),
        stream: a.stream,
        partition_subject: a.partition_subject,
        msg_subject: a.msg_subject,
        offset: a.offset,
        ack_inbox: a.ack_inbox,
        correlation_id: a.correlation_id,
        reception_timestamp_ns: a.reception_timestamp,
        commit_timestamp_ns: a.commit_timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_with_error_is_an_error() {
        let mut a = api::Ack {
            offset: 7,
            correlation_id: "c".into(),
            ..Default::default()
        };
        let ok = ack_from_proto(a.clone()).expect("ok ack");
        assert_eq!(ok.offset, 7);
        assert_eq!(ok.correlation_id, "c");
        assert_eq!(ok.ack_policy, Some(AckPolicy::Leader));
        a.set_ack_error(api::ack::Error::IncorrectOffset);
        assert!(matches!(ack_from_proto(a), Err(Error::IncorrectOffset(_))));
    }

    #[test]
    fn message_from_proto_keeps_fields() {
        let mut headers = HashMap::new();
        headers.insert("subject".to_string(), Bytes::from_static(b"foo"));
        let m = Message::from_proto(api::Message {
            offset: 3,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            timestamp: 1_000_000_000,
            stream: "s".into(),
            partition: 1,
            subject: "foo".into(),
            headers,
            ..Default::default()
        });
        assert_eq!(m.offset, 3);
        assert_eq!(&m.key[..], b"k");
        assert_eq!(m.partition, 1);
        assert_eq!(m.headers.get("subject").map(|b| &b[..]), Some(&b"foo"[..]));
        assert_eq!(
            m.timestamp(),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
        );
    }
}
