//! The on-disk batch frame: one batch = one raft entry.
//!
//! Layout (little-endian), 40-byte header then the body:
//!
//! | bytes | field | meaning |
//! | --- | --- | --- |
//! | 0..4 | `batch_len` | bytes of the whole batch, header included (≥ 40) |
//! | 4..8 | `crc` | CRC-32C over bytes 0..4 and 8..`crc_end` (see below) |
//! | 8 | `magic` | format version, 1 |
//! | 9 | `kind` | 0 data, 1 raft blank, 2 raft membership, 3..=255 other control |
//! | 10..12 | `flags` | 0 (reserved) |
//! | 12..16 | `offset_span` | offsets the batch takes: `last_offset_delta + 1` for data, 0 for control |
//! | 16..24 | `base_offset` | first offset of a data batch; for control, the next offset at append |
//! | 24..32 | `raft_term` | raft term of the entry |
//! | 32..40 | `raft_index` | raft index of the entry |
//! | 40.. | body | data: a record set ([`crate::record_set`]); control: opaque bytes |
//!
//! `crc_end` is `40 + 32` for data batches (the header *and* the record-set header, which holds
//! the records CRC computed once by the encoder — a chain of two CRC-32Cs covers every byte), and
//! `batch_len` for control batches. Why a chain: CRC-combining or re-hashing a 1 MiB body on
//! every append costs 60–70 µs, as much as writing it.
//!
//! Invariants (all checked by [`decode_batch`], which never panics on any input):
//! - `batch_len` ≥ 40 (≥ 72 for data) and within the buffer; `magic` = 1; the CRC matches.
//! - data: the record-set header parses and `offset_span = last_offset_delta + 1`;
//!   control: `offset_span = 0`.

use std::ops::Range;

use crate::error::DecodeError;
use crate::record_set::{RecordSetHeader, RECORD_SET_HEADER_LEN};

/// Length of the batch header.
pub const BATCH_HEADER_LEN: usize = 40;
/// Current format version.
pub const BATCH_MAGIC: u8 = 1;
/// Largest batch accepted (1 GiB): bounds allocations and length arithmetic.
pub const MAX_BATCH_LEN: u64 = 1 << 30;

/// What a batch is. Only [`BatchKind::Data`] takes offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    /// Records of the stream (body = record set). Takes `offset_span` offsets.
    Data,
    /// openraft's blank entry (a new leader's first entry). No offset; body usually empty.
    RaftBlank,
    /// openraft's membership entry. No offset; body = the serialized membership (opaque).
    RaftMembership,
    /// Any other control entry, code 3..=255. No offset; body opaque.
    Control(u8),
}

impl BatchKind {
    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            BatchKind::Data => 0,
            BatchKind::RaftBlank => 1,
            BatchKind::RaftMembership => 2,
            BatchKind::Control(c) => c,
        }
    }

    /// The kind of an on-disk code (every byte is some kind).
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => BatchKind::Data,
            1 => BatchKind::RaftBlank,
            2 => BatchKind::RaftMembership,
            c => BatchKind::Control(c),
        }
    }

    /// True for [`BatchKind::Data`].
    pub fn is_data(self) -> bool {
        self == BatchKind::Data
    }
}

/// What the raft layer says about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchMeta {
    /// Data or a control entry.
    pub kind: BatchKind,
    /// Raft term.
    pub raft_term: u64,
    /// Raft index.
    pub raft_index: u64,
}

/// A parsed batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Whole batch length.
    pub batch_len: u32,
    /// Stored CRC.
    pub crc: u32,
    /// Kind.
    pub kind: BatchKind,
    /// Reserved flags.
    pub flags: u16,
    /// Offsets taken (0 for control).
    pub offset_span: u32,
    /// First offset (next offset for control).
    pub base_offset: u64,
    /// Raft term.
    pub raft_term: u64,
    /// Raft index.
    pub raft_index: u64,
}

impl BatchHeader {
    /// The raft metadata.
    pub fn meta(&self) -> BatchMeta {
        BatchMeta {
            kind: self.kind,
            raft_term: self.raft_term,
            raft_index: self.raft_index,
        }
    }

    /// Offset after the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.offset_span)
    }
}

/// A batch found in a buffer: its header, the body's range, and for data its record-set header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBatch {
    /// The header.
    pub header: BatchHeader,
    /// Range of the body in the buffer given to [`decode_batch`].
    pub body: Range<usize>,
    /// For data batches, the record-set header.
    pub records: Option<RecordSetHeader>,
}

impl DecodedBatch {
    /// Checks the records CRC of a data batch (`buf` is the buffer given to [`decode_batch`]).
    pub fn verify_records(&self, buf: &[u8]) -> Result<(), DecodeError> {
        let Some(rs) = self.records else {
            return Ok(());
        };
        let region = buf
            .get(self.body.start + RECORD_SET_HEADER_LEN..self.body.end)
            .ok_or(DecodeError::Invalid("body range outside buffer"))?;
        let computed = crc32c::crc32c(region);
        if computed != rs.records_crc {
            return Err(DecodeError::CrcMismatch {
                what: "records",
                stored: rs.records_crc,
                computed,
            });
        }
        Ok(())
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn frame_crc(len_bytes: &[u8], rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), rest)
}

/// Decodes the batch at the start of `buf`, checking its frame CRC and structure (the records
/// CRC of a data batch is checked by [`DecodedBatch::verify_records`]). A buffer of zeros
/// (preallocated space) is `Truncated`/`BadLength`, never a batch.
pub fn decode_batch(buf: &[u8]) -> Result<DecodedBatch, DecodeError> {
    if buf.len() < BATCH_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: BATCH_HEADER_LEN as u64,
            available: buf.len() as u64,
        });
    }
    let batch_len = u32_at(buf, 0);
    let kind = BatchKind::from_code(buf[9]);
    let min_len = if kind.is_data() {
        BATCH_HEADER_LEN + RECORD_SET_HEADER_LEN
    } else {
        BATCH_HEADER_LEN
    };
    if (batch_len as usize) < min_len || u64::from(batch_len) > MAX_BATCH_LEN {
        return Err(DecodeError::BadLength(u64::from(batch_len)));
    }
    if batch_len as usize > buf.len() {
        return Err(DecodeError::Truncated {
            needed: u64::from(batch_len),
            available: buf.len() as u64,
        });
    }
    let crc_end = if kind.is_data() {
        min_len
    } else {
        batch_len as usize
    };
    let stored = u32_at(buf, 4);
    let computed = frame_crc(&buf[0..4], &buf[8..crc_end]);
    if stored != computed {
        return Err(DecodeError::CrcMismatch {
            what: "batch",
            stored,
            computed,
        });
    }
    if buf[8] != BATCH_MAGIC {
        return Err(DecodeError::BadMagic(buf[8]));
    }
    let header = BatchHeader {
        batch_len,
        crc: stored,
        kind,
        flags: u16::from_le_bytes([buf[10], buf[11]]),
        offset_span: u32_at(buf, 12),
        base_offset: u64_at(buf, 16),
        raft_term: u64_at(buf, 24),
        raft_index: u64_at(buf, 32),
    };
    if header
        .base_offset
        .checked_add(u64::from(header.offset_span))
        .is_none()
    {
        return Err(DecodeError::Invalid("base_offset + offset_span overflows"));
    }
    let body = BATCH_HEADER_LEN..batch_len as usize;
    let records = if kind.is_data() {
        let rs = RecordSetHeader::parse(&buf[body.clone()])?;
        if rs.offset_span() != header.offset_span {
            return Err(DecodeError::Invalid(
                "offset_span differs from the record set",
            ));
        }
        Some(rs)
    } else {
        if header.offset_span != 0 {
            return Err(DecodeError::Invalid("control batch with an offset span"));
        }
        None
    };
    Ok(DecodedBatch {
        header,
        body,
        records,
    })
}

/// Builds the 40-byte header of a batch with `body`, computing its CRC.
/// For data, `body` must start with a record-set header (checked by the caller).
pub(crate) fn encode_header(
    meta: BatchMeta,
    base_offset: u64,
    offset_span: u32,
    body: &[u8],
) -> [u8; BATCH_HEADER_LEN] {
    let mut h = [0u8; BATCH_HEADER_LEN];
    let batch_len = (BATCH_HEADER_LEN + body.len()) as u32;
    h[0..4].copy_from_slice(&batch_len.to_le_bytes());
    h[8] = BATCH_MAGIC;
    h[9] = meta.kind.code();
    h[12..16].copy_from_slice(&offset_span.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    h[24..32].copy_from_slice(&meta.raft_term.to_le_bytes());
    h[32..40].copy_from_slice(&meta.raft_index.to_le_bytes());
    let covered = if meta.kind.is_data() {
        &body[..RECORD_SET_HEADER_LEN.min(body.len())]
    } else {
        body
    };
    let crc = crc32c::crc32c_append(frame_crc(&h[0..4], &h[8..BATCH_HEADER_LEN]), covered);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_set::tests_support::arb_records;
    use crate::record_set::{encode_records, RecordSet};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn frame(meta: BatchMeta, base: u64, body: &[u8]) -> Vec<u8> {
        let span = if meta.kind.is_data() {
            RecordSetHeader::parse(body)
                .map(|h| h.offset_span())
                .unwrap_or(0)
        } else {
            0
        };
        let mut v = encode_header(meta, base, span, body).to_vec();
        v.extend_from_slice(body);
        v
    }

    proptest! {
        #[test]
        fn roundtrip(records in arb_records(), term in any::<u64>(), index in any::<u64>(), base in 0u64..1 << 50) {
            let body = encode_records(&records).expect("non-empty");
            let meta = BatchMeta { kind: BatchKind::Data, raft_term: term, raft_index: index };
            let buf = frame(meta, base, &body);
            let d = decode_batch(&buf).expect("decode");
            prop_assert_eq!(d.header.meta(), meta);
            prop_assert_eq!(d.header.base_offset, base);
            prop_assert_eq!(d.header.next_offset(), base + records.len() as u64);
            prop_assert_eq!(&buf[d.body.clone()], &body[..]);
            d.verify_records(&buf).expect("records crc");
            let set = RecordSet::parse(Bytes::copy_from_slice(&buf[d.body.clone()])).expect("set");
            set.verify().expect("verify");
        }

        #[test]
        fn control_roundtrip(code in 1u8..=255, payload in proptest::collection::vec(any::<u8>(), 0..64), term in any::<u64>(), index in any::<u64>()) {
            let meta = BatchMeta { kind: BatchKind::from_code(code), raft_term: term, raft_index: index };
            let buf = frame(meta, 7, &payload);
            let d = decode_batch(&buf).expect("decode");
            prop_assert_eq!(d.header.meta(), meta);
            prop_assert_eq!(d.header.offset_span, 0);
            prop_assert_eq!(&buf[d.body], &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(d) = decode_batch(&buf) {
                let _ = d.verify_records(&buf);
                prop_assert!(d.body.end <= buf.len());
            }
        }

        #[test]
        fn any_flip_is_detected(records in arb_records(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let body = encode_records(&records).expect("non-empty");
            let meta = BatchMeta { kind: BatchKind::Data, raft_term: 1, raft_index: 1 };
            let mut buf = frame(meta, 0, &body);
            let i = at.index(buf.len());
            buf[i] ^= 1 << bit;
            let ok = decode_batch(&buf).and_then(|d| d.verify_records(&buf));
            prop_assert!(ok.is_err(), "flip at {} undetected", i);
        }
    }

    #[test]
    fn zeros_are_not_a_batch() {
        assert!(decode_batch(&[0u8; 4096]).is_err());
        assert!(decode_batch(&[]).is_err());
    }
}
