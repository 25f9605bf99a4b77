//! Configuration: [`LogConfig`], [`SyncPolicy`], [`RetentionPolicy`].
//!
//! Invariants checked by [`LogConfig::validate`] (called by [`crate::Log::open`]):
//! - `segment_max_bytes` is in `[4 KiB, 4 GiB − 1 MiB]`: positions in index entries are `u32`.
//! - `index_interval_bytes` ≥ 1 and ≤ `segment_max_bytes`.

use std::time::Duration;

use crate::error::{Result, StorageError};

/// Settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when appending would make the active `.log` larger than this.
    /// Default 256 MiB (Liftbridge's).
    pub segment_max_bytes: u64,
    /// Roll when the first data record of the active segment is older than this (by record
    /// timestamp, Unix ns) — `None` disables. Default `None`.
    pub segment_max_age: Option<Duration>,
    /// Write one offset-index and one time-index entry per this many bytes of log. Lookups
    /// scan at most about this many bytes after the binary search. Default 4096.
    pub index_interval_bytes: u32,
    /// `fallocate` the active segment ahead of the writes (4 MiB first, then doubling up to
    /// `segment_max_bytes`), so a full disk is a typed error at a segment boundary rather than
    /// mid-write; falls back to `ftruncate` where the file system lacks `fallocate`. Default
    /// true.
    pub preallocate: bool,
    /// Recompute the records CRC of every data body handed to `append` (costs ~60 µs per MiB).
    /// Off by default: bodies come from [`crate::RecordBatchBuilder`], which computed the CRC
    /// once. Turn on for bodies from untrusted sources (or call [`crate::RecordSet::verify`]).
    pub verify_appends: bool,
    /// Verify the records CRC of every data batch read. Default true.
    pub verify_reads: bool,
    /// Offset of the first record of a brand-new (empty directory) log. Default 0.
    pub initial_offset: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_max_bytes: 256 * 1024 * 1024,
            segment_max_age: None,
            index_interval_bytes: 4096,
            preallocate: true,
            verify_appends: false,
            verify_reads: true,
            initial_offset: 0,
        }
    }
}

/// Largest allowed segment size: positions are stored as `u32`.
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64 - (1 << 20);

impl LogConfig {
    /// Checks the invariants listed in the module doc.
    pub fn validate(&self) -> Result<()> {
        if self.segment_max_bytes < 4096 || self.segment_max_bytes > MAX_SEGMENT_BYTES {
            return Err(StorageError::Config(format!(
                "segment_max_bytes {} outside [4096, {MAX_SEGMENT_BYTES}]",
                self.segment_max_bytes
            )));
        }
        if self.index_interval_bytes == 0
            || u64::from(self.index_interval_bytes) > self.segment_max_bytes
        {
            return Err(StorageError::Config(format!(
                "index_interval_bytes {} outside [1, segment_max_bytes]",
                self.index_interval_bytes
            )));
        }
        Ok(())
    }
}

/// When an append is acknowledged relative to `fdatasync`. The server exposes it; the log
/// itself never syncs on its own except at roll, truncation and compaction
/// (see [`crate::GroupCommit::after_append`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Acknowledge only after the batch is durable (a group-commit round covered it). Default.
    #[default]
    Always,
    /// Acknowledge at once; the flusher syncs a dirty log at least this often.
    Interval(Duration),
    /// Acknowledge at once; rely on the OS (and on sync at roll). Data may be lost on power loss.
    Never,
}

/// Whole-segment retention limits. Each `None` disables that limit. Only sealed segments
/// fully below the high watermark are ever deleted; the active segment is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete the oldest sealed segment while the rest still holds at least this many bytes.
    pub max_bytes: Option<u64>,
    /// Delete the oldest sealed segment while the rest still holds at least this many offsets.
    pub max_messages: Option<u64>,
    /// Delete segments whose newest record timestamp is older than this.
    pub max_age: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bounds_reject() {
        assert!(LogConfig::default().validate().is_ok());
        let c = LogConfig {
            segment_max_bytes: 100,
            ..LogConfig::default()
        };
        assert!(matches!(c.validate(), Err(StorageError::Config(_))));
        let c = LogConfig {
            segment_max_bytes: u64::from(u32::MAX),
            ..LogConfig::default()
        };
        assert!(c.validate().is_err());
        let c = LogConfig {
            index_interval_bytes: 0,
            ..LogConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
