//! Property tests for the Liftbridge NATS envelope (the decoder the `decode_envelope` fuzz target
//! drives): round trips in both header forms, arbitrary bytes never panic, the CRC is verified,
//! and truncated or inconsistent headers are rejected.

use bytes::Bytes;
use drawbridge_proto::api::{Ack, Message};
use drawbridge_server::envelope::{
    self, decode_ack, decode_publish, encode, encode_ack, encode_publish, EnvelopeError, MsgType,
    FLAG_CRC, HEADER_LEN, HEADER_LEN_WITH_CRC, MAGIC,
};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn message() -> impl Strategy<Value = Message> {
    (
        (
            any::<i64>(),
            bytes(64),
            bytes(256),
            any::<i64>(),
            ".{0,16}",
            any::<i32>(),
        ),
        (
            ".{0,24}",
            ".{0,24}",
            prop::collection::hash_map(".{0,12}", bytes(32), 0..4),
            ".{0,24}",
            ".{0,24}",
            any::<i32>(),
        ),
    )
        .prop_map(
            |(
                (offset, key, value, timestamp, stream, partition),
                (subject, reply_subject, headers, ack_inbox, correlation_id, ack_policy),
            )| Message {
                offset,
                key,
                value,
                timestamp,
                stream,
                partition,
                subject,
                reply_subject,
                headers,
                ack_inbox,
                correlation_id,
                ack_policy,
            },
        )
}

fn ack() -> impl Strategy<Value = Ack> {
    (
        (".{0,16}", ".{0,16}", ".{0,16}", any::<i64>(), ".{0,16}"),
        (
            ".{0,16}",
            any::<i32>(),
            any::<i64>(),
            any::<i64>(),
            any::<i32>(),
        ),
    )
        .prop_map(
            |(
                (stream, partition_subject, msg_subject, offset, ack_inbox),
                (correlation_id, ack_policy, reception_timestamp, commit_timestamp, ack_error),
            )| Ack {
                stream,
                partition_subject,
                msg_subject,
                offset,
                ack_inbox,
                correlation_id,
                ack_policy,
                reception_timestamp,
                commit_timestamp,
                ack_error,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn publish_round_trips(msg in message(), with_crc in any::<bool>()) {
        let framed = encode(MsgType::Publish, &msg, with_crc);
        prop_assert_eq!(framed[5] as usize, if with_crc { HEADER_LEN_WITH_CRC } else { HEADER_LEN });
        prop_assert_eq!(decode_publish(&framed), Ok(msg.clone()));
        prop_assert_eq!(decode_publish(&encode_publish(&msg)), Ok(msg));
    }

    #[test]
    fn ack_round_trips(a in ack(), with_crc in any::<bool>()) {
        let framed = encode(MsgType::Ack, &a, with_crc);
        prop_assert_eq!(decode_ack(&framed), Ok(a.clone()));
        prop_assert_eq!(decode_ack(&encode_ack(&a)), Ok(a));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_publish(&data);
        let _ = decode_ack(&data);
    }

    /// Bytes behind a valid-looking prefix reach the header-length, CRC and protobuf checks.
    #[test]
    fn arbitrary_headers_and_payloads_never_panic(
        header_len in any::<u8>(),
        flags in any::<u8>(),
        msg_type in 0u8..3,
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&[0, header_len, flags, msg_type]);
        data.extend_from_slice(&tail);
        let result = decode_publish(&data);
        let start = usize::from(header_len);
        if start < HEADER_LEN || start > data.len() {
            prop_assert!(
                matches!(result, Err(EnvelopeError::BadHeaderLen { .. }) | Err(EnvelopeError::WrongType { .. })),
                "{:?}", result
            );
        }
        if flags & FLAG_CRC != 0 && msg_type == 0 && start != HEADER_LEN_WITH_CRC {
            prop_assert!(matches!(result, Err(EnvelopeError::BadHeaderLen { .. })), "{:?}", result);
        }
    }

    /// Any change to a CRC-protected payload is caught by the CRC, before protobuf decoding.
    #[test]
    fn crc_catches_payload_corruption(msg in message(), pos in any::<usize>(), bit in 0u8..8) {
        let mut framed = encode(MsgType::Publish, &msg, true).to_vec();
        prop_assume!(framed.len() > HEADER_LEN_WITH_CRC);
        let i = HEADER_LEN_WITH_CRC + pos % (framed.len() - HEADER_LEN_WITH_CRC);
        framed[i] ^= 1 << bit;
        prop_assert!(
            matches!(decode_publish(&framed), Err(EnvelopeError::CrcMismatch { .. })),
            "flip at {} not detected", i
        );
    }

    /// Every truncation that cuts into the header is rejected (never decoded as something).
    #[test]
    fn truncated_headers_are_rejected(msg in message(), with_crc in any::<bool>(), cut in 0usize..12) {
        let framed = encode(MsgType::Publish, &msg, with_crc);
        let header = if with_crc { HEADER_LEN_WITH_CRC } else { HEADER_LEN };
        prop_assume!(cut < header);
        let result = decode_publish(&framed[..cut]);
        if cut < HEADER_LEN {
            prop_assert_eq!(result, Err(EnvelopeError::TooShort { len: cut }));
        } else {
            prop_assert!(matches!(result, Err(EnvelopeError::BadHeaderLen { .. })), "{:?}", result);
        }
    }

    /// Text never looks like an envelope (the magic is invalid UTF-8).
    #[test]
    fn text_is_never_an_envelope(s in ".{8,64}") {
        prop_assert_eq!(decode_publish(s.as_bytes()), Err(EnvelopeError::NotAnEnvelope));
    }

    #[test]
    fn other_versions_and_types_are_rejected(msg in message(), version in 1u8.., other in 2u8..) {
        let mut framed = encode_publish(&msg).to_vec();
        framed[4] = version;
        prop_assert_eq!(decode_publish(&framed), Err(EnvelopeError::UnsupportedVersion(version)));
        let mut framed = encode_publish(&msg).to_vec();
        framed[7] = other;
        prop_assert_eq!(
            decode_publish(&framed),
            Err(EnvelopeError::WrongType { expected: MsgType::Publish, found: other })
        );
    }
}

#[test]
fn open_returns_the_payload_slice() {
    let msg = Message {
        value: Bytes::from_static(b"v"),
        ..Message::default()
    };
    let framed = encode(MsgType::Publish, &msg, true);
    let payload = envelope::open(&framed, MsgType::Publish).expect("valid");
    assert_eq!(payload, &framed[HEADER_LEN_WITH_CRC..]);
}
