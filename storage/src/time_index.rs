//! The sparse time index (`.timeindex`) of a segment.
//!
//! An entry is 16 bytes, little-endian: `max_timestamp: i64` (the largest record timestamp in
//! the segment up to and including the batch) · `rel_offset: u32` · `position: u32`.
//! Entries are written for data batches only: the first one of the segment, then one per
//! `index_interval_bytes`, and one more when the segment is sealed if the running maximum grew
//! since the last entry — so the last entry of a sealed segment holds the segment's maximum.
//!
//! Invariants:
//! - `max_timestamp` never decreases and `position` strictly increases along the file.
//! - Every record in batches up to and including an entry's batch has a timestamp ≤ the
//!   entry's `max_timestamp`.
//!
//! Lookup of "the first record with timestamp ≥ t" (O(log n) + one interval of scanning): take
//! the last entry with `max_timestamp < t`; no record up to its batch qualifies, so scan forward
//! from the batch after it (from the segment start if there is no such entry), skipping whole
//! batches whose header `max_timestamp < t`. The next entry (≥ t) is at most one interval
//! later, so the scan is bounded.

use crate::index::{Entry, EntryFile};

/// One time-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Running maximum timestamp through the batch.
    pub max_timestamp: i64,
    /// Batch base offset minus segment base offset.
    pub rel_offset: u32,
    /// Byte position of the batch.
    pub position: u32,
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

impl Entry for TimeEntry {
    const LEN: usize = 16;
    fn decode(b: &[u8]) -> Self {
        TimeEntry {
            max_timestamp: i64::from_le_bytes(arr(&b[0..8])),
            rel_offset: u32::from_le_bytes(arr(&b[8..12])),
            position: u32::from_le_bytes(arr(&b[12..16])),
        }
    }
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.max_timestamp.to_le_bytes());
        out[8..12].copy_from_slice(&self.rel_offset.to_le_bytes());
        out[12..16].copy_from_slice(&self.position.to_le_bytes());
    }
}

/// Time-index lookups.
impl EntryFile<TimeEntry> {
    /// The last entry whose running maximum is `< t`.
    pub(crate) fn last_below(&self, t: i64) -> Option<TimeEntry> {
        let n = self.partition_point(|e| e.max_timestamp < t);
        n.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Drops entries pointing at or after `position`.
    pub(crate) fn truncate_at_position(&mut self, position: u64) -> crate::error::Result<()> {
        let n = self.partition_point(|e| u64::from(e.position) < position);
        self.truncate(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Result, StorageError};
    use std::path::Path;

    #[test]
    fn last_below_is_a_binary_search() -> Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::io("tempdir", Path::new("/tmp"), e))?;
        let mut t = EntryFile::<TimeEntry>::open_owned(&dir.path().join("0.timeindex"))?;
        for i in 0..10i64 {
            t.push(TimeEntry {
                max_timestamp: i * 100,
                rel_offset: i as u32,
                position: i as u32 * 10,
            })?;
        }
        assert_eq!(t.last_below(0), None);
        assert_eq!(t.last_below(1).map(|e| e.rel_offset), Some(0));
        assert_eq!(t.last_below(450).map(|e| e.rel_offset), Some(4));
        assert_eq!(t.last_below(i64::MAX).map(|e| e.rel_offset), Some(9));
        t.seal(false)?;
        assert_eq!(t.last_below(450).map(|e| e.rel_offset), Some(4));
        Ok(())
    }
}
