//! Liftbridge's NATS envelope: the framing around protobuf payloads that travel over NATS
//! (publishes that carry a key, headers or an ack inbox; acks sent to ack inboxes).
//!
//! ```text
//! offset  size  field
//! 0       4     magic      B9 0E 43 B4 (invalid UTF-8, so text payloads never match)
//! 4       1     version    0
//! 5       1     headerLen  where the payload starts: 8, or 12 with a CRC
//! 6       1     flags      bit 0: a CRC-32C of the payload follows; other bits ignored
//! 7       1     msgType    0 Publish (`Message`), 1 Ack (`Ack`), 2..14 Liftbridge-internal
//! 8       4     crc        only with flag bit 0: CRC-32C (Castagnoli) of the payload, big-endian
//! hdrLen  ..    payload    the protobuf message
//! ```
//!
//! Decoding follows Liftbridge's `checkEnvelope` in order, plus one check it lacks:
//! 1. fewer than 8 bytes → [`EnvelopeError::TooShort`];
//! 2. wrong magic → [`EnvelopeError::NotAnEnvelope`]; version ≠ 0 →
//!    [`EnvelopeError::UnsupportedVersion`];
//! 3. msgType ≠ the expected type → [`EnvelopeError::WrongType`];
//! 4. headerLen must lie within the buffer and be at least 8; with the CRC flag it must be
//!    exactly 12 and the checksum must match ([`EnvelopeError::BadHeaderLen`],
//!    [`EnvelopeError::CrcMismatch`]). Liftbridge does not bounds-check headerLen; we do;
//! 5. the bytes from headerLen to the end must decode as the protobuf message
//!    ([`EnvelopeError::Decode`]).
//!
//! On the ingest path any error means "store the NATS payload as a raw message" (spec §7).
//!
//! Invariants: decoding never panics and never reads outside the buffer; encoding writes
//! headerLen 8 and flags 0 (as Liftbridge and go-liftbridge do), or headerLen 12 with the CRC
//! flag when asked; `decode(encode(m)) == m` for both forms.

use bytes::{BufMut, Bytes, BytesMut};
use drawbridge_proto::api::{Ack, Message};

/// The four magic bytes that open every envelope.
pub const MAGIC: [u8; 4] = [0xB9, 0x0E, 0x43, 0xB4];
/// The only envelope version.
pub const VERSION: u8 = 0;
/// Header length without a CRC.
pub const HEADER_LEN: usize = 8;
/// Header length with a CRC.
pub const HEADER_LEN_WITH_CRC: usize = 12;
/// Flag bit: a CRC-32C of the payload follows the fixed header.
pub const FLAG_CRC: u8 = 0x01;

/// Envelope message types (spec §6). Only `Publish` and `Ack` are client-facing; the others are
/// listed so that foreign envelopes are recognised and named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// A `Message` published to a stream subject.
    Publish = 0,
    /// An `Ack` sent to an ack inbox.
    Ack = 1,
    /// Liftbridge-internal: follower fetch request.
    ReplicationRequest = 2,
    /// Liftbridge-internal: follower fetch response.
    ReplicationResponse = 3,
    /// Liftbridge-internal: raft join request.
    RaftJoinRequest = 4,
    /// Liftbridge-internal: raft join response.
    RaftJoinResponse = 5,
    /// Liftbridge-internal: leader epoch offset request.
    LeaderEpochOffsetRequest = 6,
    /// Liftbridge-internal: leader epoch offset response.
    LeaderEpochOffsetResponse = 7,
    /// Liftbridge-internal: forwarded admin request.
    PropagatedRequest = 8,
    /// Liftbridge-internal: forwarded admin response.
    PropagatedResponse = 9,
    /// Liftbridge-internal: server info request.
    ServerInfoRequest = 10,
    /// Liftbridge-internal: server info response.
    ServerInfoResponse = 11,
    /// Liftbridge-internal: partition status request.
    PartitionStatusRequest = 12,
    /// Liftbridge-internal: partition status response.
    PartitionStatusResponse = 13,
    /// Liftbridge-internal: wake an idle follower.
    PartitionNotification = 14,
}

impl TryFrom<u8> for MsgType {
    type Error = u8;

    fn try_from(v: u8) -> Result<Self, u8> {
        use MsgType::*;
        Ok(match v {
            0 => Publish,
            1 => Ack,
            2 => ReplicationRequest,
            3 => ReplicationResponse,
            4 => RaftJoinRequest,
            5 => RaftJoinResponse,
            6 => LeaderEpochOffsetRequest,
            7 => LeaderEpochOffsetResponse,
            8 => PropagatedRequest,
            9 => PropagatedResponse,
            10 => ServerInfoRequest,
            11 => ServerInfoResponse,
            12 => PartitionStatusRequest,
            13 => PartitionStatusResponse,
            14 => PartitionNotification,
            other => return Err(other),
        })
    }
}

/// Why bytes are not a valid envelope of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Fewer than 8 bytes.
    #[error("not an envelope: {len} bytes, fewer than the 8-byte header")]
    TooShort {
        /// Buffer length.
        len: usize,
    },
    /// The magic bytes do not match.
    #[error("not an envelope: magic bytes do not match")]
    NotAnEnvelope,
    /// A version other than 0.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Another message type than the one expected.
    #[error("envelope has message type {found}, expected {expected:?}")]
    WrongType {
        /// What the caller wanted.
        expected: MsgType,
        /// The type byte found.
        found: u8,
    },
    /// headerLen is impossible for this buffer and these flags.
    #[error(
        "invalid envelope header length {header_len} (buffer is {len} bytes, flags {flags:#04x})"
    )]
    BadHeaderLen {
        /// The headerLen byte.
        header_len: u8,
        /// Buffer length.
        len: usize,
        /// The flags byte.
        flags: u8,
    },
    /// The CRC-32C of the payload does not match the header.
    #[error("envelope CRC mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    CrcMismatch {
        /// From the header.
        expected: u32,
        /// Computed over the payload.
        actual: u32,
    },
    /// The payload is not a valid protobuf message of the expected type.
    #[error("envelope payload does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Checks the envelope header of `buf` (rules 1–4) and returns the payload slice.
pub fn open(buf: &[u8], expected: MsgType) -> Result<&[u8], EnvelopeError> {
    let Some((header, _)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Err(EnvelopeError::TooShort { len: buf.len() });
    };
    let [m0, m1, m2, m3, version, header_len, flags, msg_type] = *header;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(EnvelopeError::NotAnEnvelope);
    }
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    if msg_type != expected as u8 {
        return Err(EnvelopeError::WrongType {
            expected,
            found: msg_type,
        });
    }
    let bad_len = || EnvelopeError::BadHeaderLen {
        header_len,
        len: buf.len(),
        flags,
    };
    let start = usize::from(header_len);
    if start < HEADER_LEN {
        return Err(bad_len());
    }
    let payload = buf.get(start..).ok_or_else(bad_len)?;
    if flags & FLAG_CRC != 0 {
        if start != HEADER_LEN_WITH_CRC {
            return Err(bad_len());
        }
        let crc_bytes: [u8; 4] = buf
            .get(HEADER_LEN..HEADER_LEN_WITH_CRC)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad_len)?;
        let expected = u32::from_be_bytes(crc_bytes);
        let actual = crc32c::crc32c(payload);
        if expected != actual {
            return Err(EnvelopeError::CrcMismatch { expected, actual });
        }
    }
    Ok(payload)
}

/// Decodes a Publish envelope (type 0) into the `Message` it carries.
pub fn decode_publish(buf: &[u8]) -> Result<Message, EnvelopeError> {
    let payload = open(buf, MsgType::Publish)?;
    Ok(prost::Message::decode(payload)?)
}

/// [`decode_publish`] of a shared buffer: the message's key, value and header values are
/// slices of `buf` (no copy), the ingest path's hot spot.
pub fn decode_publish_shared(buf: &Bytes) -> Result<Message, EnvelopeError> {
    let payload = open(buf, MsgType::Publish)?;
    // `open` returns a suffix of `buf`: the payload starts where that suffix starts.
    let start = buf.len() - payload.len();
    Ok(prost::Message::decode(buf.slice(start..))?)
}

/// Decodes an Ack envelope (type 1) into the `Ack` it carries.
pub fn decode_ack(buf: &[u8]) -> Result<Ack, EnvelopeError> {
    let payload = open(buf, MsgType::Ack)?;
    Ok(prost::Message::decode(payload)?)
}

/// Encodes `msg` as a Publish envelope: headerLen 8, flags 0, no CRC.
pub fn encode_publish(msg: &Message) -> Bytes {
    encode(MsgType::Publish, msg, false)
}

/// Encodes `ack` as an Ack envelope: headerLen 8, flags 0, no CRC.
pub fn encode_ack(ack: &Ack) -> Bytes {
    encode(MsgType::Ack, ack, false)
}

/// Encodes any protobuf message as an envelope of type `msg_type`, with a CRC-32C of the
/// payload (headerLen 12, flag bit 0) when `with_crc`.
pub fn encode(msg_type: MsgType, msg: &impl prost::Message, with_crc: bool) -> Bytes {
    let header_len = if with_crc {
        HEADER_LEN_WITH_CRC
    } else {
        HEADER_LEN
    };
    let mut buf = BytesMut::with_capacity(header_len + msg.encoded_len());
    buf.put_slice(&MAGIC);
    buf.put_u8(VERSION);
    buf.put_u8(header_len as u8);
    buf.put_u8(if with_crc { FLAG_CRC } else { 0 });
    buf.put_u8(msg_type as u8);
    if with_crc {
        buf.put_u32(0);
    }
    // Cannot fail: prost only refuses a buffer with too little remaining capacity, and a
    // `BytesMut` grows on demand (we also reserved the exact size above).
    let encoded = msg.encode(&mut buf);
    debug_assert!(
        encoded.is_ok(),
        "encoding into a BytesMut cannot run out of room"
    );
    if with_crc {
        let crc = crc32c::crc32c(&buf[HEADER_LEN_WITH_CRC..]);
        buf[HEADER_LEN..HEADER_LEN_WITH_CRC].copy_from_slice(&crc.to_be_bytes());
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            offset: -1,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ack_inbox: "inbox".into(),
            correlation_id: "c1".into(),
            ack_policy: 1,
            ..Message::default()
        }
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let bytes = encode_publish(&sample());
        assert_eq!(&bytes[..8], &[0xB9, 0x0E, 0x43, 0xB4, 0, 8, 0, 0]);
        let bytes = encode(MsgType::Ack, &Ack::default(), true);
        assert_eq!(&bytes[..8], &[0xB9, 0x0E, 0x43, 0xB4, 0, 12, 1, 1]);
        assert_eq!(bytes.len(), 12, "empty Ack encodes to an empty payload");
        assert_eq!(&bytes[8..12], &crc32c::crc32c(b"").to_be_bytes());
    }

    #[test]
    fn shared_decode_slices_the_buffer() {
        let buf = encode_publish(&sample());
        let m = decode_publish_shared(&buf).map_err(|e| e.to_string());
        assert_eq!(m, Ok(sample()));
        let value = decode_publish_shared(&buf)
            .map(|m| m.value)
            .unwrap_or_default();
        let range = buf.as_ptr_range();
        assert!(
            range.contains(&value.as_ptr()),
            "the value is a slice of the buffer"
        );
        let crc = encode(MsgType::Publish, &sample(), true);
        assert_eq!(decode_publish_shared(&crc).ok(), Some(sample()));
        assert!(decode_publish_shared(&Bytes::from_static(b"raw")).is_err());
    }

    #[test]
    fn decoder_rules_in_order() {
        let good = encode_publish(&sample()).to_vec();
        assert_eq!(decode_publish(&good), Ok(sample()));
        assert_eq!(
            decode_publish(&good[..7]),
            Err(EnvelopeError::TooShort { len: 7 })
        );
        let mut bad = good.clone();
        bad[0] = b'{';
        assert_eq!(decode_publish(&bad), Err(EnvelopeError::NotAnEnvelope));
        let mut bad = good.clone();
        bad[4] = 1;
        assert_eq!(
            decode_publish(&bad),
            Err(EnvelopeError::UnsupportedVersion(1))
        );
        assert!(matches!(
            decode_ack(&good),
            Err(EnvelopeError::WrongType {
                expected: MsgType::Ack,
                found: 0
            })
        ));
        let mut bad = good.clone();
        bad[5] = 200;
        assert!(matches!(
            decode_publish(&bad),
            Err(EnvelopeError::BadHeaderLen { .. })
        ));
        let mut bad = good.clone();
        bad[5] = 4;
        assert!(matches!(
            decode_publish(&bad),
            Err(EnvelopeError::BadHeaderLen { .. })
        ));
        // CRC flag with headerLen 8 is invalid.
        let mut bad = good.clone();
        bad[6] = FLAG_CRC;
        assert!(matches!(
            decode_publish(&bad),
            Err(EnvelopeError::BadHeaderLen { .. })
        ));
        // Unknown flag bits are ignored.
        let mut other_flags = good.clone();
        other_flags[6] = 0xFE;
        assert_eq!(decode_publish(&other_flags), Ok(sample()));
        // Just a header: an empty (default) message, as Liftbridge's server accepts it.
        assert_eq!(decode_publish(&good[..8]), Ok(Message::default()));
        // Garbage payload.
        let mut bad = good[..8].to_vec();
        bad.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        assert!(matches!(
            decode_publish(&bad),
            Err(EnvelopeError::Decode(_))
        ));
    }

    #[test]
    fn crc_is_verified() {
        let good = encode(MsgType::Publish, &sample(), true).to_vec();
        assert_eq!(decode_publish(&good), Ok(sample()));
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert!(matches!(
            decode_publish(&bad),
            Err(EnvelopeError::CrcMismatch { .. })
        ));
        let mut bad = good.clone();
        bad[9] ^= 0x80;
        assert!(matches!(
            decode_publish(&bad),
            Err(EnvelopeError::CrcMismatch { .. })
        ));
        assert!(matches!(
            decode_publish(&good[..10]),
            Err(EnvelopeError::BadHeaderLen { .. })
        ));
    }

    #[test]
    fn msg_type_round_trips() {
        for v in 0u8..=14 {
            let t = MsgType::try_from(v).expect("known type");
            assert_eq!(t as u8, v);
        }
        assert_eq!(MsgType::try_from(15), Err(15));
    }
}
