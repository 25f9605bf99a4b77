//! A checksum of a log's committed records over an offset range, so that the replicas of a
//! partition can be compared like for like (`drawbridge cluster verify`, the fault tests).
//!
//! What is covered, per record in offset order: its offset, timestamp, key (with whether it is
//! present), headers (names and values, in order) and value, each length-prefixed so that
//! moving a byte from one field to the next changes the result. Batch framing, raft indexes
//! and control batches are not covered: two replicas that hold the same records agree even if
//! their segments were rolled at different places.
//!
//! How: each record's bytes go through CRC-32C (hardware accelerated), and the record's offset,
//! length and CRC are folded into a 64-bit state with a strong mixer (SplitMix64's finalizer).
//! A record that differs changes the result except with probability about 2^-32; a missing,
//! extra or reordered record changes it except with probability about 2^-64.
//!
//! Example: two replicas with high watermarks 99 and 120 are compared over `0..=99`; a third
//! whose earliest offset is 10 (retention) makes the common range `10..=99`.
//!
//! Compacted streams ([`ChecksumMode::LatestPerKey`]): replicas compact on their own schedule,
//! so one may still hold records another has removed. This mode checksums the *logical* view
//! of the range `from..=to`: every keyless record, and a keyed record only if no record of the
//! same key follows it within the range. Compaction removes only records superseded by a newer
//! record of their key, so a compacted and an uncompacted replica agree — provided the newer
//! record lies within the range, i.e. the replica compacted with a high watermark ≤ `to`. A
//! replica that compacted while its high watermark was above `to` may have removed a record
//! whose successor lies beyond `to`; comparing at the common high watermark of replicas that
//! are in step (no appends in flight) avoids that false difference.

use std::collections::HashMap;

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::log::Log;
use crate::reader::ReadLimits;
use crate::record::RecordView;

/// The checksum of a range of records (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeChecksum {
    /// Records covered (offsets removed by compaction are absent).
    pub records: u64,
    /// The 64-bit checksum.
    pub checksum: u64,
}

impl RangeChecksum {
    /// Adds one record (records must be added in offset order).
    pub fn add(&mut self, r: &RecordView) {
        let mut crc = crc32c::crc32c(&r.timestamp.to_le_bytes());
        let mut len: u64 = 8;
        let mut field = |crc: &mut u32, bytes: &[u8]| {
            *crc = crc32c::crc32c_append(*crc, &(bytes.len() as u64).to_le_bytes());
            *crc = crc32c::crc32c_append(*crc, bytes);
            len = len.wrapping_add(8 + bytes.len() as u64);
        };
        match &r.key {
            Some(k) => {
                crc = crc32c::crc32c_append(crc, &[1]);
                field(&mut crc, k);
            }
            None => crc = crc32c::crc32c_append(crc, &[0]),
        }
        crc = crc32c::crc32c_append(crc, &(r.headers.len() as u64).to_le_bytes());
        for (name, value) in &r.headers {
            field(&mut crc, name.as_bytes());
            field(&mut crc, value);
        }
        field(&mut crc, &r.value);
        let rec = mix(r.offset ^ mix((u64::from(crc) << 32) ^ len));
        self.checksum = mix(self.checksum ^ rec);
        self.records += 1;
    }
}

/// SplitMix64's finalizer: a bijective mixer with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which records of a range a checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumMode {
    /// Every stored record.
    #[default]
    Plain,
    /// Keyless records, and each key's newest record within the range (compacted streams; see
    /// the module docs).
    LatestPerKey,
}

impl Log {
    /// The checksum of the committed records with offsets in `from..=to`
    /// ([`ChecksumMode::Plain`]).
    ///
    /// Errors: `to` above the high watermark ([`StorageError::InvalidArgument`]: uncommitted
    /// records may still change, so they are never compared); `from` below the earliest offset
    /// ([`StorageError::OffsetOutOfRange`]); corrupt bytes on the way.
    pub fn checksum(&self, from: u64, to: u64) -> Result<RangeChecksum> {
        self.checksum_with(from, to, ChecksumMode::Plain)
    }

    /// Like [`Log::checksum`], covering the records `mode` selects. `LatestPerKey` reads the
    /// range twice and keeps one offset per distinct key of the range in memory.
    pub fn checksum_with(&self, from: u64, to: u64, mode: ChecksumMode) -> Result<RangeChecksum> {
        let latest = match mode {
            ChecksumMode::Plain => None,
            ChecksumMode::LatestPerKey => {
                let mut latest: HashMap<Bytes, u64> = HashMap::new();
                self.for_each_in(from, to, |r| {
                    if let Some(k) = &r.key {
                        latest.insert(k.clone(), r.offset);
                    }
                })?;
                Some(latest)
            }
        };
        let mut sum = RangeChecksum::default();
        self.for_each_in(from, to, |r| {
            let keep = match (&latest, &r.key) {
                (Some(latest), Some(k)) => latest.get(k) == Some(&r.offset),
                _ => true,
            };
            if keep {
                sum.add(r);
            }
        })?;
        Ok(sum)
    }

    /// Calls `f` on every committed record with offset in `from..=to`, in offset order (the
    /// range checks of [`Log::checksum`]).
    fn for_each_in(&self, from: u64, to: u64, mut f: impl FnMut(&RecordView)) -> Result<()> {
        match self.high_watermark() {
            Some(hw) if to <= hw => {}
            hw => {
                return Err(StorageError::InvalidArgument(format!(
                    "checksum up to offset {to} beyond the high watermark {hw:?}"
                )))
            }
        }
        let mut cursor = from;
        while cursor <= to {
            let (records, next) = self.read_from(cursor, ReadLimits::default())?;
            for r in records.iter().take_while(|r| r.offset <= to) {
                f(r);
            }
            if next <= cursor {
                break;
            }
            cursor = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(offset: u64, value: &'static str) -> RecordView {
        RecordView {
            offset,
            timestamp: 7,
            key: None,
            headers: vec![],
            value: Bytes::from_static(value.as_bytes()),
        }
    }

    fn sum(rs: &[RecordView]) -> RangeChecksum {
        let mut s = RangeChecksum::default();
        rs.iter().for_each(|r| s.add(r));
        s
    }

    #[test]
    fn any_difference_changes_the_checksum() {
        let base = sum(&[rec(0, "a"), rec(1, "b")]);
        assert_eq!(base, sum(&[rec(0, "a"), rec(1, "b")]));
        assert_ne!(base, sum(&[rec(0, "a"), rec(1, "c")]));
        assert_ne!(base, sum(&[rec(1, "b"), rec(0, "a")]));
        assert_ne!(base, sum(&[rec(0, "a"), rec(2, "b")]));
        assert_ne!(base, sum(&[rec(0, "a")]));
        let mut keyed = rec(1, "b");
        keyed.key = Some(Bytes::new());
        assert_ne!(base, sum(&[rec(0, "a"), keyed]));
        let mut header = rec(1, "b");
        header.headers = vec![("h".into(), Bytes::new())];
        assert_ne!(base, sum(&[rec(0, "a"), header]));
        let mut later = rec(1, "b");
        later.timestamp = 8;
        assert_ne!(base, sum(&[rec(0, "a"), later]));
    }
}
