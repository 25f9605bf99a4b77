//! Choosing the partition a message is published to.
//!
//! Invariants (they keep Rust and Go publishers in agreement, so one key always lands on one
//! partition whichever client wrote it):
//! 1. The key partitioner is go-liftbridge's: CRC-32 (IEEE) of the key bytes, as `u32`,
//!    modulo the partition count; a missing key hashes as the empty key (CRC 0 → partition 0).
//! 2. Partition ids are `0..n` where `n` is the number of partitions in metadata.
//! 3. Round robin keeps one counter per stream, starting at 0, shared by every clone of a
//!    [`Client`](crate::Client).
//! 4. A partitioner is only asked when `n > 0`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Maps a message to a partition of its stream.
///
/// Implement this for a custom strategy and pass it with
/// [`PublishMessage::partition_by`](crate::PublishMessage::partition_by).
pub trait Partitioner: Send + Sync + fmt::Debug {
    /// The partition in `0..partitions` for this message; `partitions` is at least 1.
    fn partition(&self, stream: &str, key: &[u8], value: &[u8], partitions: u32) -> i32;
}

/// CRC-32 (IEEE) of `key` modulo `partitions` (module invariant 1); 0 when `partitions` is 0.
pub fn key_partition(key: &[u8], partitions: u32) -> i32 {
    if partitions == 0 {
        return 0;
    }
    // The remainder is below `partitions`, which the wire carries as an int32.
    i32::try_from(crc32fast::hash(key) % partitions).unwrap_or(0)
}

/// Partitions by a hash of the key, like go-liftbridge's `PartitionByKey`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyPartitioner;

impl Partitioner for KeyPartitioner {
    fn partition(&self, _stream: &str, key: &[u8], _value: &[u8], partitions: u32) -> i32 {
        key_partition(key, partitions)
    }
}

/// Spreads messages over partitions in turn, one counter per stream (module invariant 3).
#[derive(Debug, Default)]
pub struct RoundRobinPartitioner {
    /// Next counter value per stream name; read and bumped by every publish that uses it.
    counters: Mutex<HashMap<String, u64>>,
}

impl Partitioner for RoundRobinPartitioner {
    fn partition(&self, stream: &str, _key: &[u8], _value: &[u8], partitions: u32) -> i32 {
        if partitions == 0 {
            return 0;
        }
        // A poisoned lock only means another publisher panicked mid-increment; the counter is
        // still a valid number, so keep using it.
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let counter = counters.entry(stream.to_string()).or_insert(0);
        let n = *counter;
        *counter = counter.wrapping_add(1);
        i32::try_from(n % u64::from(partitions)).unwrap_or(0)
    }
}

/// How a [`PublishMessage`](crate::PublishMessage) picks its partition.
#[derive(Debug, Clone, Default)]
pub(crate) enum Target {
    /// Partition 0, like go-liftbridge when nothing is set.
    #[default]
    Base,
    /// This partition.
    Partition(i32),
    /// Hash of the key.
    Key,
    /// The client's shared round-robin counters.
    RoundRobin,
    /// A caller's partitioner.
    Custom(Arc<dyn Partitioner>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_partition_is_crc32_ieee_mod_n() {
        // Standard CRC-32 (IEEE) check value of "123456789" is 0xCBF43926 = 3421780262.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            key_partition(b"123456789", 7),
            (3_421_780_262u32 % 7) as i32
        );
        assert_eq!(key_partition(b"123456789", 1), 0);
        // CRC-32 of "foo" is 0x8C736521 = 2356372769; the u32 is not sign-extended.
        assert_eq!(crc32fast::hash(b"foo"), 0x8C73_6521);
        assert_eq!(key_partition(b"foo", 3), (2_356_372_769u32 % 3) as i32);
        assert_eq!(key_partition(b"foo", 10), 9);
        // No key hashes as the empty key: CRC 0.
        assert_eq!(key_partition(b"", 5), 0);
        assert_eq!(key_partition(b"anything", 0), 0);
        for n in 1..50u32 {
            let p = KeyPartitioner.partition("s", b"some key", b"", n);
            assert!((0..n as i32).contains(&p));
        }
    }

    #[test]
    fn round_robin_counts_per_stream() {
        let rr = RoundRobinPartitioner::default();
        let a: Vec<i32> = (0..7).map(|_| rr.partition("a", b"", b"", 3)).collect();
        assert_eq!(a, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(rr.partition("b", b"", b"", 3), 0);
        assert_eq!(rr.partition("a", b"", b"", 3), 1);
        assert_eq!(rr.partition("a", b"", b"", 0), 0);
    }
}
