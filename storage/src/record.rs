//! One record: [`Record`] (what a producer hands in) and [`RecordView`] (what a reader gets).
//!
//! Encoding of one record inside a record set (all integers LEB128 varints):
//! `len` (bytes after this field) · `offset_delta` · zig-zag `timestamp − base_timestamp` ·
//! `key_len + 1` (0 = no key) · key · `header_count` · per header (`name_len` · UTF-8 name ·
//! `value_len` · value) · value (the rest of the record).
//!
//! Invariants:
//! - Decoding never reads outside the record's `len` bytes and never panics.
//! - Views are zero-copy: key, header values and value are `Bytes` slices of the batch
//!   (and so of the segment's memory map); only header *names* are copied into `String`s.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::varint::{get_uvarint, put_uvarint, unzigzag, uvarint_len, zigzag};

/// A message as a producer hands it to [`crate::RecordBatchBuilder`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Unix time in nanoseconds (the server stamps it at ingest).
    pub timestamp: i64,
    /// Optional key; compaction keeps the newest record per key.
    pub key: Option<Bytes>,
    /// Headers in order; names are UTF-8.
    pub headers: Vec<(String, Bytes)>,
    /// Payload.
    pub value: Bytes,
}

/// A record read back from the log, with its absolute offset. Fields are zero-copy slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// Absolute offset in the partition.
    pub offset: u64,
    /// Unix time in nanoseconds.
    pub timestamp: i64,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Bytes)>,
    /// Payload.
    pub value: Bytes,
}

impl RecordView {
    /// The record without its offset.
    pub fn to_record(&self) -> Record {
        Record {
            timestamp: self.timestamp,
            key: self.key.clone(),
            headers: self.headers.clone(),
            value: self.value.clone(),
        }
    }
}

/// Length of the record's fields after the leading `len` varint.
fn inner_len(
    offset_delta: u32,
    ts_delta: u64,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    value: &[u8],
) -> usize {
    let mut n = uvarint_len(u64::from(offset_delta)) + uvarint_len(ts_delta);
    n += match key {
        Some(k) => uvarint_len(k.len() as u64 + 1) + k.len(),
        None => 1,
    };
    n += uvarint_len(headers.len() as u64);
    for (name, val) in headers {
        n +=
            uvarint_len(name.len() as u64) + name.len() + uvarint_len(val.len() as u64) + val.len();
    }
    n + value.len()
}

/// Appends one encoded record to `buf`.
pub(crate) fn encode_record(
    buf: &mut Vec<u8>,
    offset_delta: u32,
    timestamp: i64,
    base_timestamp: i64,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    value: &[u8],
) {
    let ts_delta = zigzag(timestamp.wrapping_sub(base_timestamp));
    let len = inner_len(offset_delta, ts_delta, key, headers, value);
    buf.reserve(len + uvarint_len(len as u64));
    put_uvarint(buf, len as u64);
    put_uvarint(buf, u64::from(offset_delta));
    put_uvarint(buf, ts_delta);
    match key {
        Some(k) => {
            put_uvarint(buf, k.len() as u64 + 1);
            buf.extend_from_slice(k);
        }
        None => put_uvarint(buf, 0),
    }
    put_uvarint(buf, headers.len() as u64);
    for (name, val) in headers {
        put_uvarint(buf, name.len() as u64);
        buf.extend_from_slice(name.as_bytes());
        put_uvarint(buf, val.len() as u64);
        buf.extend_from_slice(val);
    }
    buf.extend_from_slice(value);
}

/// Where one record sits in a records region: `[start, end)` and its offset delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordFrame {
    /// First byte after the `len` varint.
    pub body_start: usize,
    /// One past the last byte of the record.
    pub end: usize,
    /// Offset delta relative to the batch base offset.
    pub offset_delta: u32,
}

/// Reads the frame (length and offset delta) of the record starting at `pos`.
pub(crate) fn read_frame(buf: &[u8], pos: usize) -> Result<RecordFrame, DecodeError> {
    let mut p = pos;
    let len = get_uvarint(buf, &mut p)?;
    let body_start = p;
    let end = (body_start as u64)
        .checked_add(len)
        .filter(|&e| e <= buf.len() as u64)
        .ok_or(DecodeError::Truncated {
            needed: (body_start as u64).saturating_add(len),
            available: buf.len() as u64,
        })? as usize;
    let inner = &buf[body_start..end];
    let mut q = 0;
    let delta = get_uvarint(inner, &mut q)?;
    let offset_delta =
        u32::try_from(delta).map_err(|_| DecodeError::Invalid("offset delta exceeds u32"))?;
    Ok(RecordFrame {
        body_start,
        end,
        offset_delta,
    })
}

fn take(region: &Bytes, p: &mut usize, end: usize, len: u64) -> Result<Bytes, DecodeError> {
    let avail = (end - *p) as u64;
    if len > avail {
        return Err(DecodeError::Truncated {
            needed: len,
            available: avail,
        });
    }
    let start = *p;
    *p += len as usize;
    Ok(region.slice(start..*p))
}

/// The next `len` bytes of `buf` from `*p` (borrowed), advancing `*p`.
fn take_slice<'a>(buf: &'a [u8], p: &mut usize, len: u64) -> Result<&'a [u8], DecodeError> {
    let avail = (buf.len() - *p) as u64;
    if len > avail {
        return Err(DecodeError::Truncated {
            needed: len,
            available: avail,
        });
    }
    let start = *p;
    *p += len as usize;
    Ok(&buf[start..*p])
}

/// Decodes the record of `frame` in `region` into a view with absolute offset
/// `base_offset + offset_delta`.
pub(crate) fn decode_record(
    region: &Bytes,
    frame: RecordFrame,
    base_offset: u64,
    base_timestamp: i64,
) -> Result<RecordView, DecodeError> {
    let buf = &region[..frame.end];
    let mut p = frame.body_start;
    let _delta = get_uvarint(buf, &mut p)?;
    let ts = unzigzag(get_uvarint(buf, &mut p)?);
    let key_len = get_uvarint(buf, &mut p)?;
    let key = if key_len == 0 {
        None
    } else {
        Some(take(region, &mut p, frame.end, key_len - 1)?)
    };
    let header_count = get_uvarint(buf, &mut p)?;
    // Each header takes at least 2 bytes, so a count larger than the remaining bytes is bogus:
    // reject it before allocating.
    if header_count > (frame.end - p) as u64 / 2 {
        return Err(DecodeError::Invalid("header count exceeds record length"));
    }
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let name_len = get_uvarint(buf, &mut p)?;
        // The name is copied into a `String` anyway: read it from the slice rather than take
        // a `Bytes` view of it (two reference-count updates on the shared map per header).
        let name = take_slice(buf, &mut p, name_len)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| DecodeError::InvalidUtf8)?
            .to_owned();
        let val_len = get_uvarint(buf, &mut p)?;
        let val = take(region, &mut p, frame.end, val_len)?;
        headers.push((name, val));
    }
    let value = region.slice(p..frame.end);
    Ok(RecordView {
        offset: base_offset.saturating_add(u64::from(frame.offset_delta)),
        timestamp: base_timestamp.wrapping_add(ts),
        key,
        headers,
        value,
    })
}

/// Reads only the timestamp of the record of `frame` (for timestamp lookups).
pub(crate) fn record_timestamp(
    buf: &[u8],
    frame: RecordFrame,
    base_timestamp: i64,
) -> Result<i64, DecodeError> {
    let buf = &buf[..frame.end];
    let mut p = frame.body_start;
    let _delta = get_uvarint(buf, &mut p)?;
    Ok(base_timestamp.wrapping_add(unzigzag(get_uvarint(buf, &mut p)?)))
}

/// Reads only the key of the record of `frame` (for compaction).
pub(crate) fn record_key(buf: &[u8], frame: RecordFrame) -> Result<Option<&[u8]>, DecodeError> {
    let buf = &buf[..frame.end];
    let mut p = frame.body_start;
    let _delta = get_uvarint(buf, &mut p)?;
    let _ts = get_uvarint(buf, &mut p)?;
    let key_len = get_uvarint(buf, &mut p)?;
    if key_len == 0 {
        return Ok(None);
    }
    let len = key_len - 1;
    if len > (buf.len() - p) as u64 {
        return Err(DecodeError::Truncated {
            needed: len,
            available: (buf.len() - p) as u64,
        });
    }
    Ok(Some(&buf[p..p + len as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_one() {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            3,
            1_000,
            900,
            Some(b"k"),
            &[("h", b"v".as_slice())],
            b"value",
        );
        let region = Bytes::from(buf);
        let frame = read_frame(&region, 0).expect("frame");
        assert_eq!(frame.end, region.len());
        assert_eq!(frame.offset_delta, 3);
        let v = decode_record(&region, frame, 10, 900).expect("decode");
        assert_eq!(v.offset, 13);
        assert_eq!(v.timestamp, 1_000);
        assert_eq!(v.key.as_deref(), Some(b"k".as_slice()));
        assert_eq!(v.headers, vec![("h".to_owned(), Bytes::from_static(b"v"))]);
        assert_eq!(v.value, Bytes::from_static(b"value"));
        assert_eq!(record_timestamp(&region, frame, 900), Ok(1_000));
        assert_eq!(record_key(&region, frame), Ok(Some(b"k".as_slice())));
    }

    #[test]
    fn extreme_timestamps_roundtrip() {
        for (ts, base) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (0, 0), (-5, 7)] {
            let mut buf = Vec::new();
            encode_record(&mut buf, 0, ts, base, None, &[], b"");
            let region = Bytes::from(buf);
            let frame = read_frame(&region, 0).expect("frame");
            let v = decode_record(&region, frame, 0, base).expect("decode");
            assert_eq!(v.timestamp, ts);
            assert_eq!(v.key, None);
        }
    }
}
