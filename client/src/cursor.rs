//! Cursors: named offsets stored by the cluster in the `__cursors` stream (beta in Liftbridge).
//!
//! Invariants (wire spec §11, computed identically by client and server):
//! 1. The cursor key is the bytes of `<cursorId>,<stream>,<partition>` (decimal partition).
//! 2. The cursor lives in partition CRC-32 (IEEE)(key) mod (number of `__cursors`
//!    partitions), and SetCursor / FetchCursor must reach that partition's leader.
//! 3. No `__cursors` stream in metadata (after a refresh) means cursors are disabled.

use drawbridge_proto::api;

use crate::client::{with_timeout, Client, Inner};
use crate::error::{Call, Error, Result};
use crate::partitioner::key_partition;

/// Name of the internal stream that stores cursors.
pub const CURSORS_STREAM: &str = "__cursors";

/// The key a cursor is stored under (module invariant 1).
pub fn cursor_key(cursor_id: &str, stream: &str, partition: i32) -> String {
    format!("{cursor_id},{stream},{partition}")
}

/// The `__cursors` partition that stores a cursor (module invariant 2).
pub fn cursor_partition(cursor_id: &str, stream: &str, partition: i32, partitions: u32) -> i32 {
    key_partition(
        cursor_key(cursor_id, stream, partition).as_bytes(),
        partitions,
    )
}

impl Inner {
    /// The `__cursors` partition for a cursor, from metadata (module invariant 3).
    async fn cursors_partition(
        &self,
        cursor_id: &str,
        stream: &str,
        partition: i32,
    ) -> Result<i32> {
        let n = match self.partition_count(CURSORS_STREAM).await {
            Ok(n) if n > 0 => n,
            Ok(_) | Err(Error::NoSuchStream(_)) => return Err(Error::CursorsDisabled),
            Err(e) => return Err(e),
        };
        Ok(cursor_partition(cursor_id, stream, partition, n))
    }
}

impl Client {
    /// Stores `offset` as cursor `cursor_id` of `stream`/`partition`.
    pub async fn set_cursor(
        &self,
        cursor_id: &str,
        stream: &str,
        partition: i32,
        offset: i64,
    ) -> Result<()> {
        let inner = &self.inner;
        let target = inner
            .cursors_partition(cursor_id, stream, partition)
            .await?;
        let req = api::SetCursorRequest {
            stream: stream.to_string(),
            partition,
            cursor_id: cursor_id.to_string(),
            offset,
        };
        inner
            .leader_rpc(Call::Cursor, CURSORS_STREAM, target, |mut api, timeout| {
                let req = req.clone();
                async move { api.set_cursor(with_timeout(req, timeout)).await }
            })
            .await
            .map(drop)
    }

    /// Reads cursor `cursor_id` of `stream`/`partition`; `None` when none is stored.
    pub async fn fetch_cursor(
        &self,
        cursor_id: &str,
        stream: &str,
        partition: i32,
    ) -> Result<Option<i64>> {
        let inner = &self.inner;
        let target = inner
            .cursors_partition(cursor_id, stream, partition)
            .await?;
        let req = api::FetchCursorRequest {
            stream: stream.to_string(),
            partition,
            cursor_id: cursor_id.to_string(),
        };
        let resp = inner
            .leader_rpc(Call::Cursor, CURSORS_STREAM, target, |mut api, timeout| {
                let req = req.clone();
                async move { api.fetch_cursor(with_timeout(req, timeout)).await }
            })
            .await?;
        Ok((resp.offset >= 0).then_some(resp.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_key_and_partition() {
        assert_eq!(cursor_key("c1", "orders", 2), "c1,orders,2");
        assert_eq!(
            cursor_key("__group:g", "s", 10),
            "__group:g,s,10".to_string()
        );
        let key = cursor_key("c1", "orders", 2);
        let expected = (crc32fast::hash(key.as_bytes()) % 5) as i32;
        assert_eq!(cursor_partition("c1", "orders", 2, 5), expected);
        assert_eq!(cursor_partition("c1", "orders", 2, 1), 0);
        // Changing any part of the key moves it deterministically.
        let spread: std::collections::HashSet<i32> =
            (0..100).map(|p| cursor_partition("c", "s", p, 8)).collect();
        assert!(spread.len() > 1 && spread.iter().all(|p| (0..8).contains(p)));
    }
}
