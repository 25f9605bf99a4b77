//! Publishing one message and waiting for its ack: [`PublishMessage`], [`Client::publish`]
//! and [`Client::publish_to_subject`].
//!
//! Invariants:
//! 1. Every request carries `expectedOffset = -1` unless the caller set one: the proto default
//!    0 would mean "expect offset 0" on streams with optimistic concurrency control.
//! 2. Every message carries a correlation id: the caller's, or a fresh unique one.
//! 3. A unary publish with an ack policy other than NONE always has a gRPC deadline (the ack
//!    timeout): without one the server returns at once and no ack ever comes back.
//! 4. The partition is decided before the request is built: explicit partition, else the
//!    partitioner over the stream's partition count from metadata, else partition 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proto::api;
use rand::Rng;

use crate::client::{with_timeout, Client, Inner};
use crate::error::{Call, Result};
use crate::message::{ack_from_proto, Ack};
use crate::options::AckPolicy;
use crate::partitioner::{KeyPartitioner, Partitioner, Target};

/// Header naming the producer of an idempotent publish ([`PublishMessage::idempotent`]).
pub const PRODUCER_ID_HEADER: &str = "drawbridge-producer-id";
/// Header carrying an idempotent publish's sequence number (ASCII decimal).
pub const PRODUCER_SEQ_HEADER: &str = "drawbridge-producer-seq";

/// A message to publish, built with chained setters.
///
/// ```no_run
/// # async fn run(client: drawbridge_client::Client) -> drawbridge_client::Result<()> {
/// use drawbridge_client::{AckPolicy, PublishMessage};
///
/// let ack = client
///     .publish(
///         "orders",
///         PublishMessage::new("order #1")
///             .key("customer-42")
///             .header("source", "web")
///             .partition_by_key()
///             .ack_policy(AckPolicy::All),
///     )
///     .await?;
/// if let Some(ack) = ack {
///     println!("stored at offset {}", ack.offset);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PublishMessage {
    pub(crate) value: Bytes,
    pub(crate) key: Bytes,
    pub(crate) headers: HashMap<String, Bytes>,
    pub(crate) target: Target,
    pub(crate) ack_policy: AckPolicy,
    pub(crate) expected_offset: Option<i64>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) ack_inbox: Option<String>,
    pub(crate) ack_timeout: Option<Duration>,
}

impl PublishMessage {
    /// A message with this value, to partition 0, ack policy LEADER.
    pub fn new(value: impl Into<Bytes>) -> Self {
        PublishMessage {
            value: value.into(),
            ..Default::default()
        }
    }

    /// Sets the key (used by compaction and by the key partitioner).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = key.into();
        self
    }

    /// Adds a header, replacing one of the same name.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Adds headers, replacing those of the same names.
    pub fn headers<K, V>(mut self, headers: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<Bytes>,
    {
        self.headers
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Publishes to this partition (any partitioner is ignored).
    pub fn partition(mut self, partition: i32) -> Self {
        self.target = Target::Partition(partition);
        self
    }

    /// Picks the partition by CRC-32 of the key, like go-liftbridge's `PartitionByKey`.
    pub fn partition_by_key(mut self) -> Self {
        self.target = Target::Key;
        self
    }

    /// Picks partitions in turn, per stream, with counters shared by the client's clones.
    pub fn partition_round_robin(mut self) -> Self {
        self.target = Target::RoundRobin;
        self
    }

    /// Picks the partition with a custom [`Partitioner`].
    pub fn partition_by(mut self, partitioner: Arc<dyn Partitioner>) -> Self {
        self.target = Target::Custom(partitioner);
        self
    }

    /// When the message is acknowledged.
    pub fn ack_policy(mut self, policy: AckPolicy) -> Self {
        self.ack_policy = policy;
        self
    }

    /// Makes the publish idempotent (a Drawbridge extension): the message carries `producer`
    /// and `sequence` in the [`PRODUCER_ID_HEADER`] and [`PRODUCER_SEQ_HEADER`] headers, and the
    /// partition leader stores it once even when it is published again — a retry after a
    /// timeout, or on a new leader after a failover. A repeat is acknowledged with the offset
    /// of the stored message (or -1 when that is no longer known).
    ///
    /// Rules: `producer` names one writer (non-empty); `sequence` increases per producer and
    /// partition (gaps allowed); a sequence not above the highest one stored for the producer
    /// counts as a repeat. The server remembers the newest 10,000 producers per partition and
    /// each one's last 64 sequences (see the operations guide).
    pub fn idempotent(mut self, producer: impl Into<Bytes>, sequence: u64) -> Self {
        self.headers
            .insert(PRODUCER_ID_HEADER.to_owned(), producer.into());
        self.headers.insert(
            PRODUCER_SEQ_HEADER.to_owned(),
            Bytes::from(sequence.to_string()),
        );
        self
    }

    /// Store the message only if it gets this offset (streams with optimistic concurrency
    /// control); otherwise the publish fails with
    /// [`Error::IncorrectOffset`](crate::Error::IncorrectOffset).
    pub fn expected_offset(mut self, offset: i64) -> Self {
        self.expected_offset = Some(offset);
        self
    }

    /// Correlation id echoed in the ack (a unique one is generated when not set).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// NATS subject the server sends the ack to (only meaningful for
    /// [`Client::publish_to_subject`]; stream publishes use a server inbox).
    pub fn ack_inbox(mut self, inbox: impl Into<String>) -> Self {
        self.ack_inbox = Some(inbox.into());
        self
    }

    /// Overrides the client's ack timeout for this message. On a [`Publisher`](crate::Publisher)
    /// the timeout is enforced by its driver's sweep, so it fires up to 50 ms late.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// The ack policy of this message.
    pub fn policy(&self) -> AckPolicy {
        self.ack_policy
    }

    /// The Publish request (module invariants 1 and 2).
    pub(crate) fn to_request(
        &self,
        stream: &str,
        partition: i32,
        correlation_id: String,
    ) -> api::PublishRequest {
        let mut req = api::PublishRequest {
            key: self.key.clone(),
            value: self.value.clone(),
            stream: stream.to_string(),
            partition,
            headers: self.headers.clone(),
            ack_inbox: self.ack_inbox.clone().unwrap_or_default(),
            correlation_id,
            expected_offset: self.expected_offset.unwrap_or(-1),
            ..Default::default()
        };
        req.set_ack_policy(self.ack_policy.to_proto());
        req
    }

    /// The correlation id to send: the caller's, or a new one.
    pub(crate) fn correlation_id_or_new(&self) -> String {
        self.correlation_id
            .clone()
            .unwrap_or_else(new_correlation_id)
    }
}

/// A process-unique correlation id: a random 16-character prefix (fixed per process) and a
/// counter, in the spirit of NATS's NUIDs.
pub fn new_correlation_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let prefix = PREFIX.get_or_init(|| {
        let mut rng = rand::rng();
        (0..16)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect()
    });
    with_hex_suffix(prefix, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// `format!("{prefix}{n:x}")` without the formatting machinery (it runs once per message).
fn with_hex_suffix(prefix: &str, n: u64) -> String {
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1);
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    for shift in (0..digits).rev() {
        let nibble = (n >> (shift * 4)) & 0xf;
        id.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
    id
}

impl Inner {
    /// The partition a message goes to (module invariant 4).
    pub(crate) async fn resolve_partition(
        &self,
        stream: &str,
        msg: &PublishMessage,
    ) -> Result<i32> {
        let partitioner: &dyn Partitioner = match &msg.target {
            Target::Base => return Ok(0),
            Target::Partition(p) => return Ok(*p),
            Target::Key => &KeyPartitioner,
            Target::RoundRobin => &self.round_robin,
            Target::Custom(p) => p.as_ref(),
        };
        let n = self.partition_count(stream).await?;
        if n == 0 {
            return Ok(0);
        }
        Ok(partitioner.partition(stream, &msg.key, &msg.value, n))
    }

    /// The deadline of a publish: the ack timeout, or the request timeout for NONE.
    pub(crate) fn publish_timeout(&self, msg: &PublishMessage) -> Duration {
        match msg.ack_policy {
            AckPolicy::None => self.config.request_timeout,
            _ => msg.ack_timeout.unwrap_or(self.config.ack_timeout),
        }
    }
}

impl Client {
    /// Publishes one message to `stream` and, unless the ack policy is NONE, waits for its ack.
    ///
    /// Returns `Ok(None)` for ack policy NONE. Fails with
    /// [`Error::AckTimeout`](crate::Error::AckTimeout) when no ack arrives in time,
    /// [`Error::NoSuchPartition`](crate::Error::NoSuchPartition),
    /// [`Error::ReadonlyPartition`](crate::Error::ReadonlyPartition), or
    /// [`Error::IncorrectOffset`](crate::Error::IncorrectOffset). For many messages in flight
    /// use a [`Publisher`](crate::Publisher).
    ///
    /// Like go-liftbridge, the call is retried on another broker when one is `Unavailable`; if
    /// the connection broke after the server took the message, it may be stored twice (set
    /// an expected offset where that matters).
    pub async fn publish(&self, stream: &str, msg: PublishMessage) -> Result<Option<Ack>> {
        let inner = &self.inner;
        let partition = inner.resolve_partition(stream, &msg).await?;
        let req = msg.to_request(stream, partition, msg.correlation_id_or_new());
        let timeout = inner.publish_timeout(&msg);
        let resp = inner
            .any_broker_rpc_with(Call::Publish, timeout, |mut api, timeout| {
                let req = req.clone();
                async move { api.publish(with_timeout(req, timeout)).await }
            })
            .await?;
        match resp.ack {
            Some(ack) => ack_from_proto(ack).map(Some),
            None => {
                if msg.ack_policy != AckPolicy::None {
                    tracing::warn!(
                        stream,
                        "server returned no ack for a publish that wanted one"
                    );
                }
                Ok(None)
            }
        }
    }

    /// Publishes one message to a NATS subject (every stream attached to it records it) and,
    /// unless the ack policy is NONE, returns the first ack. Partition options, the key
    /// partitioner and the expected offset do not apply.
    pub async fn publish_to_subject(
        &self,
        subject: &str,
        msg: PublishMessage,
    ) -> Result<Option<Ack>> {
        let inner = &self.inner;
        let mut req = api::PublishToSubjectRequest {
            key: msg.key.clone(),
            value: msg.value.clone(),
            subject: subject.to_string(),
            headers: msg.headers.clone(),
            ack_inbox: msg.ack_inbox.clone().unwrap_or_default(),
            correlation_id: msg.correlation_id_or_new(),
            ..Default::default()
        };
        req.set_ack_policy(msg.ack_policy.to_proto());
        let timeout = inner.publish_timeout(&msg);
        let resp = inner
            .any_broker_rpc_with(Call::PublishToSubject, timeout, |mut api, timeout| {
                let req = req.clone();
                async move { api.publish_to_subject(with_timeout(req, timeout)).await }
            })
            .await?;
        resp.ack.map(ack_from_proto).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_defaults_to_unchecked_offset() {
        let req = PublishMessage::new("v").to_request("s", 2, "cid".into());
        assert_eq!(req.expected_offset, -1);
        assert_eq!(req.stream, "s");
        assert_eq!(req.partition, 2);
        assert_eq!(req.correlation_id, "cid");
        assert_eq!(req.ack_policy(), api::AckPolicy::Leader);
        assert_eq!(&req.value[..], b"v");
        assert!(req.key.is_empty());
        assert_eq!(req.ack_inbox, "");
    }

    #[test]
    fn request_carries_every_option() {
        let msg = PublishMessage::new(vec![1u8, 2])
            .key("k")
            .header("a", "1")
            .headers([("b", "2"), ("a", "3")])
            .expected_offset(0)
            .ack_policy(AckPolicy::All)
            .correlation_id("mine")
            .ack_inbox("inbox");
        let req = msg.to_request("s", 0, msg.correlation_id_or_new());
        assert_eq!(req.expected_offset, 0);
        assert_eq!(req.ack_policy(), api::AckPolicy::All);
        assert_eq!(req.correlation_id, "mine");
        assert_eq!(req.ack_inbox, "inbox");
        assert_eq!(&req.key[..], b"k");
        assert_eq!(req.headers.len(), 2);
        assert_eq!(req.headers.get("a").map(|v| &v[..]), Some(&b"3"[..]));
        let none = PublishMessage::new("x").ack_policy(AckPolicy::None);
        assert_eq!(
            none.to_request("s", 0, String::new()).ack_policy(),
            api::AckPolicy::None
        );
    }

    #[test]
    fn correlation_ids_are_unique() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_correlation_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let a = new_correlation_id();
        assert!(a.len() > 16 && a.is_ascii());
        let generated = PublishMessage::new("v").correlation_id_or_new();
        assert!(!generated.is_empty());
    }

    #[test]
    fn hex_suffix_is_what_format_writes() {
        let mut n = 1u64;
        let mut cases = vec![0, 1, 9, 10, 15, 16, 255, 256, u64::MAX - 1, u64::MAX];
        for _ in 0..200 {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            cases.push(n >> (n % 64));
        }
        for n in cases {
            assert_eq!(with_hex_suffix("pre", n), format!("pre{n:x}"), "{n}");
        }
    }
}
