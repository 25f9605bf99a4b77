//! The body of a data batch — a *record set* — and its builder.
//!
//! A record set is what a raft entry carries for a data batch, byte for byte: the leader
//! encodes it once with [`RecordBatchBuilder`], followers and the log store it unchanged, and
//! readers slice records out of it without copying.
//!
//! Layout (little-endian), followed by the records (see [`crate::record`]):
//!
//! | bytes | field | meaning |
//! | --- | --- | --- |
//! | 0..4 | `records_crc` | CRC-32C (Castagnoli) of the records region (bytes 32..) |
//! | 4..8 | `record_count` | records present (≥ 1 when built; compaction may leave 0) |
//! | 8..12 | `last_offset_delta` | offset delta of the last offset the batch *spans* (≥ count − 1) |
//! | 12..16 | `attributes` | 0 (reserved) |
//! | 16..24 | `base_timestamp` | timestamp of the first record; record timestamps are deltas to it |
//! | 24..32 | `max_timestamp` | largest record timestamp (an upper bound after compaction) |
//!
//! Invariants (checked by [`RecordSet::verify`]; [`RecordSet::parse`] checks only the header):
//! - `records_crc` matches; exactly `record_count` records fill the region with no slack.
//! - offset deltas strictly increase and are ≤ `last_offset_delta`; when built (not compacted)
//!   they are 0, 1, …, count − 1.
//! - The batch spans offsets `[base, base + last_offset_delta]`, even if compaction removed
//!   records, so offsets never move.

use bytes::Bytes;

use crate::error::{DecodeError, Result, StorageError};
use crate::record::{decode_record, encode_record, read_frame, Record, RecordView};

/// Length of the record-set header.
pub const RECORD_SET_HEADER_LEN: usize = 32;

/// The fixed header of a record set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSetHeader {
    /// CRC-32C of the records region.
    pub records_crc: u32,
    /// Records present.
    pub record_count: u32,
    /// Offset delta of the last spanned offset.
    pub last_offset_delta: u32,
    /// Reserved, 0.
    pub attributes: u32,
    /// Timestamp deltas are relative to this.
    pub base_timestamp: i64,
    /// Largest timestamp (upper bound).
    pub max_timestamp: i64,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(a)
}

impl RecordSetHeader {
    /// Parses the header at the start of `body`.
    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() < RECORD_SET_HEADER_LEN {
            return Err(DecodeError::Truncated {
                needed: RECORD_SET_HEADER_LEN as u64,
                available: body.len() as u64,
            });
        }
        let h = RecordSetHeader {
            records_crc: le_u32(body, 0),
            record_count: le_u32(body, 4),
            last_offset_delta: le_u32(body, 8),
            attributes: le_u32(body, 12),
            base_timestamp: le_i64(body, 16),
            max_timestamp: le_i64(body, 24),
        };
        if h.record_count > 0 && h.last_offset_delta < h.record_count - 1 {
            return Err(DecodeError::Invalid(
                "last_offset_delta below record_count - 1",
            ));
        }
        if h.last_offset_delta == u32::MAX {
            return Err(DecodeError::Invalid("offset span exceeds u32"));
        }
        // Each record takes at least 5 bytes: a count above that is not a record set.
        if u64::from(h.record_count) * 5 > (body.len() - RECORD_SET_HEADER_LEN) as u64 {
            return Err(DecodeError::Invalid("record_count exceeds body length"));
        }
        Ok(h)
    }

    /// Writes the header into the first 32 bytes of `out`.
    pub(crate) fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.records_crc.to_le_bytes());
        out[4..8].copy_from_slice(&self.record_count.to_le_bytes());
        out[8..12].copy_from_slice(&self.last_offset_delta.to_le_bytes());
        out[12..16].copy_from_slice(&self.attributes.to_le_bytes());
        out[16..24].copy_from_slice(&self.base_timestamp.to_le_bytes());
        out[24..32].copy_from_slice(&self.max_timestamp.to_le_bytes());
    }

    /// Number of offsets the batch occupies (`last_offset_delta + 1`).
    pub fn offset_span(&self) -> u32 {
        self.last_offset_delta + 1
    }
}

/// Builds the body of one data batch. Records get offset deltas 0, 1, 2, … in push order.
///
/// ```
/// use drawbridge_storage::{RecordBatchBuilder, RecordSet};
/// let mut b = RecordBatchBuilder::new();
/// b.push(1_000, Some(b"key"), &[("h", b"v")], b"hello");
/// b.push(1_001, None, &[], b"world");
/// let body = b.finish().expect("non-empty");
/// let set = RecordSet::parse(body).expect("valid");
/// assert_eq!(set.header().record_count, 2);
/// ```
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    buf: Vec<u8>,
    count: u32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl Default for RecordBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordBatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::with_capacity(256)
    }

    /// An empty builder with room for about `bytes` of encoded records.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + RECORD_SET_HEADER_LEN);
        buf.resize(RECORD_SET_HEADER_LEN, 0);
        RecordBatchBuilder {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Appends one record.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: &[u8],
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        encode_record(
            &mut self.buf,
            self.count,
            timestamp,
            self.base_timestamp,
            key,
            headers,
            value,
        );
        self.count += 1;
    }

    /// Appends one [`Record`].
    pub fn push_record(&mut self, r: &Record) {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_ref()))
            .collect();
        self.push(r.timestamp, r.key.as_deref(), &headers, &r.value);
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far, header included.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Finishes the body: computes the records CRC once (appends never recompute it).
    /// Fails on an empty builder.
    pub fn finish(mut self) -> Result<Bytes> {
        if self.count == 0 {
            return Err(StorageError::InvalidArgument(
                "a data batch needs at least one record".into(),
            ));
        }
        let header = RecordSetHeader {
            records_crc: crc32c::crc32c(&self.buf[RECORD_SET_HEADER_LEN..]),
            record_count: self.count,
            last_offset_delta: self.count - 1,
            attributes: 0,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
        };
        header.write(&mut self.buf[..RECORD_SET_HEADER_LEN]);
        Ok(Bytes::from(self.buf))
    }
}

/// Encodes `records` as the body of one data batch (see [`RecordBatchBuilder`]).
pub fn encode_records(records: &[Record]) -> Result<Bytes> {
    let approx: usize = records.iter().map(|r| r.value.len() + 16).sum();
    let mut b = RecordBatchBuilder::with_capacity(approx);
    for r in records {
        b.push_record(r);
    }
    b.finish()
}

/// A parsed record set: its header and the body bytes (zero-copy).
#[derive(Debug, Clone)]
pub struct RecordSet {
    header: RecordSetHeader,
    body: Bytes,
}

impl RecordSet {
    /// Parses the header; records are decoded lazily by [`RecordSet::records`].
    pub fn parse(body: Bytes) -> Result<Self, DecodeError> {
        let header = RecordSetHeader::parse(&body)?;
        Ok(RecordSet { header, body })
    }

    /// The header.
    pub fn header(&self) -> &RecordSetHeader {
        &self.header
    }

    /// The whole body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The records region (after the header).
    pub(crate) fn region(&self) -> Bytes {
        self.body.slice(RECORD_SET_HEADER_LEN..)
    }

    /// Checks the records CRC only.
    pub fn verify_crc(&self) -> Result<(), DecodeError> {
        let computed = crc32c::crc32c(&self.body[RECORD_SET_HEADER_LEN..]);
        if computed != self.header.records_crc {
            return Err(DecodeError::CrcMismatch {
                what: "records",
                stored: self.header.records_crc,
                computed,
            });
        }
        Ok(())
    }

    /// Checks every invariant of the module doc (CRC, count, deltas, no slack) and decodes
    /// every record once.
    pub fn verify(&self) -> Result<(), DecodeError> {
        self.verify_crc()?;
        let mut seen = 0u32;
        let mut last: Option<u32> = None;
        for r in self.frames() {
            let (frame, _) = r?;
            if last.is_some_and(|l| frame.offset_delta <= l)
                || frame.offset_delta > self.header.last_offset_delta
            {
                return Err(DecodeError::Invalid(
                    "offset deltas not increasing within span",
                ));
            }
            last = Some(frame.offset_delta);
            seen += 1;
        }
        if seen != self.header.record_count {
            return Err(DecodeError::Invalid("record_count does not match records"));
        }
        for r in self.records(0) {
            r?;
        }
        Ok(())
    }

    /// Iterates record frames (position and offset delta) without decoding the records.
    pub(crate) fn frames(&self) -> FrameIter<'_> {
        FrameIter {
            region: &self.body[RECORD_SET_HEADER_LEN..],
            pos: 0,
            left: self.header.record_count,
            failed: false,
        }
    }

    /// Decodes the records, giving each the absolute offset `base_offset + delta`.
    pub fn records(&self, base_offset: u64) -> RecordIter {
        self.records_from(base_offset, 0)
    }

    /// Like [`RecordSet::records`], skipping (without decoding) records below offset `from`.
    pub fn records_from(&self, base_offset: u64, from: u64) -> RecordIter {
        RecordIter {
            region: self.region(),
            pos: 0,
            left: self.header.record_count,
            base_offset,
            base_timestamp: self.header.base_timestamp,
            skip_below: from,
            failed: false,
        }
    }
}

/// Iterator over record frames; stops after the first error.
#[derive(Debug)]
pub(crate) struct FrameIter<'a> {
    region: &'a [u8],
    pos: usize,
    left: u32,
    failed: bool,
}

impl Iterator for FrameIter<'_> {
    /// The frame and the region it indexes.
    type Item = Result<(crate::record::RecordFrame, usize), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if self.pos != self.region.len() {
                self.failed = true;
                return Some(Err(DecodeError::Invalid("bytes after the last record")));
            }
            return None;
        }
        match read_frame(self.region, self.pos) {
            Ok(frame) => {
                self.pos = frame.end;
                self.left -= 1;
                Some(Ok((frame, frame.end)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterator over decoded records of one record set; stops after the first error.
#[derive(Debug)]
pub struct RecordIter {
    region: Bytes,
    pos: usize,
    left: u32,
    base_offset: u64,
    base_timestamp: i64,
    skip_below: u64,
    failed: bool,
}

impl Iterator for RecordIter {
    type Item = Result<RecordView, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.left == 0 {
            return None;
        }
        // Skip records below `skip_below` reading only their frames.
        while self.skip_below > self.base_offset && self.left > 0 {
            match read_frame(&self.region, self.pos) {
                Ok(f)
                    if self.base_offset.saturating_add(u64::from(f.offset_delta))
                        < self.skip_below =>
                {
                    self.pos = f.end;
                    self.left -= 1;
                }
                Ok(_) => break,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        if self.left == 0 {
            return None;
        }
        let r = read_frame(&self.region, self.pos).and_then(|f| {
            decode_record(&self.region, f, self.base_offset, self.base_timestamp).map(|v| (f, v))
        });
        match r {
            Ok((f, v)) => {
                self.pos = f.end;
                self.left -= 1;
                Some(Ok(v))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use super::tests_support::arb_record;

    proptest! {
        #[test]
        fn encode_decode_roundtrip(records in proptest::collection::vec(arb_record(), 1..16), base in 0u64..1 << 40) {
            let body = encode_records(&records).expect("non-empty");
            let set = RecordSet::parse(body).expect("parse");
            set.verify().expect("verify");
            prop_assert_eq!(set.header().record_count as usize, records.len());
            let got: Vec<RecordView> = set.records(base).collect::<Result<_, _>>().expect("decode");
            for (i, (g, r)) in got.iter().zip(&records).enumerate() {
                prop_assert_eq!(g.offset, base + i as u64);
                prop_assert_eq!(&g.to_record(), r);
            }
            prop_assert_eq!(set.header().max_timestamp, records.iter().map(|r| r.timestamp).max().unwrap_or(i64::MIN));
        }

        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(set) = RecordSet::parse(Bytes::from(bytes)) {
                let _ = set.verify();
                for r in set.records(0).take(300) { let _ = r; }
            }
        }

        #[test]
        fn bit_flips_are_caught(records in proptest::collection::vec(arb_record(), 1..8), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let body = encode_records(&records).expect("non-empty");
            let mut raw = body.to_vec();
            let at = RECORD_SET_HEADER_LEN + flip.index(raw.len() - RECORD_SET_HEADER_LEN);
            if at < raw.len() {
                raw[at] ^= 1 << bit;
                let set = RecordSet::parse(Bytes::from(raw)).expect("header untouched");
                prop_assert!(set.verify().is_err());
            }
        }
    }

    #[test]
    fn empty_builder_is_rejected() {
        assert!(RecordBatchBuilder::new().finish().is_err());
    }
}

/// Strategies shared by the tests of several modules.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use proptest::prelude::*;

    /// A record with a small random key space, headers and value.
    pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::collection::vec(
                ("[a-z]{0,4}", proptest::collection::vec(any::<u8>(), 0..4)),
                0..3,
            ),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(timestamp, key, headers, value)| Record {
                timestamp,
                key: key.map(Bytes::from),
                headers: headers
                    .into_iter()
                    .map(|(n, v)| (n, Bytes::from(v)))
                    .collect(),
                value: Bytes::from(value),
            })
    }

    /// 1..16 records.
    pub(crate) fn arb_records() -> impl Strategy<Value = Vec<Record>> {
        proptest::collection::vec(arb_record(), 1..16)
    }
}
