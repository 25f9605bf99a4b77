//! Typed options of the client calls, and their conversion into protobuf requests.
//!
//! Invariants (units and conventions of the wire, spec §1 and §4):
//! 1. Stream overrides given as [`Duration`] go on the wire in **milliseconds**; an option
//!    left `None` is not sent at all, so the server's default applies.
//! 2. Timestamps go on the wire as Unix **nanoseconds**, saturating at the ends of `i64`;
//!    a time before 1970 becomes a negative number, which the server treats as 0.
//! 3. Proto enums are never guessed from raw numbers here: every position and policy is a
//!    Rust enum with one variant per wire value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drawbridge_proto::api;

/// When a publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum AckPolicy {
    /// Once the partition leader has stored the message (the server's default).
    #[default]
    Leader,
    /// Once the message is committed on the partition's in-sync replicas.
    All,
    /// Never: fire and forget. Publishing calls then return `Ok(None)`.
    None,
}

impl AckPolicy {
    pub(crate) fn to_proto(self) -> api::AckPolicy {
        match self {
            AckPolicy::Leader => api::AckPolicy::Leader,
            AckPolicy::All => api::AckPolicy::All,
            AckPolicy::None => api::AckPolicy::None,
        }
    }

    pub(crate) fn from_proto(value: i32) -> Option<AckPolicy> {
        match api::AckPolicy::try_from(value).ok()? {
            api::AckPolicy::Leader => Some(AckPolicy::Leader),
            api::AckPolicy::All => Some(AckPolicy::All),
            api::AckPolicy::None => Some(AckPolicy::None),
        }
    }
}

/// Options of [`Client::create_stream`](crate::Client::create_stream).
///
/// Every `Option` left `None` keeps the server's configured default.
///
/// ```
/// use std::time::Duration;
/// use drawbridge_client::StreamOptions;
///
/// let opts = StreamOptions {
///     partitions: 3,
///     replication_factor: 3,
///     retention_max_age: Some(Duration::from_secs(24 * 3600)),
///     ..StreamOptions::default()
/// };
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Number of partitions; 0 means 1. Partition `n > 0` records subject `<subject>.<n>`.
    pub partitions: i32,
    /// Replicas per partition; 0 means 1; -1 means every server of the cluster.
    pub replication_factor: i32,
    /// Load-balance group: streams of one group share the subject's messages (a NATS queue
    /// group).
    pub group: Option<String>,
    /// Retention by size in bytes (0 = unlimited).
    pub retention_max_bytes: Option<i64>,
    /// Retention by message count (0 = unlimited).
    pub retention_max_messages: Option<i64>,
    /// Retention by age.
    pub retention_max_age: Option<Duration>,
    /// How often retention, compaction and segment rolling run.
    pub cleaner_interval: Option<Duration>,
    /// Segment size in bytes.
    pub segment_max_bytes: Option<i64>,
    /// Segment age before it is rolled.
    pub segment_max_age: Option<Duration>,
    /// Compaction by key.
    pub compact_enabled: Option<bool>,
    /// Compaction parallelism.
    pub compact_max_goroutines: Option<i32>,
    /// Idle time before a partition pauses itself (zero disables).
    pub auto_pause_time: Option<Duration>,
    /// Do not auto-pause a partition that has subscribers.
    pub auto_pause_disable_if_subscribers: Option<bool>,
    /// Minimum in-sync replicas to commit.
    pub min_isr: Option<i32>,
    /// Check expected offsets on publish.
    pub optimistic_concurrency_control: Option<bool>,
    /// Encrypt values at rest: `Some(true)` asks for it, `Some(false)` refuses it, `None`
    /// keeps the server's `streams.encryption`. The servers need `LIFTBRIDGE_ENCRYPTION_KEY`;
    /// without it creation fails with [`Error::FailedPrecondition`](crate::Error::FailedPrecondition). Only values
    /// are encrypted (keys and headers are not), and subscribers receive them decrypted.
    pub encryption: Option<bool>,
}

/// A duration in whole milliseconds, saturating (module invariant 1).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A time as Unix nanoseconds, saturating (module invariant 2).
pub(crate) fn unix_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos())
            .map(|n| -n)
            .unwrap_or(i64::MIN),
    }
}

/// Unix nanoseconds as a time; `None` for 0 (the wire's "never").
pub(crate) fn time_from_nanos(ns: i64) -> Option<SystemTime> {
    if ns == 0 {
        return None;
    }
    let magnitude = Duration::from_nanos(ns.unsigned_abs());
    if ns > 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

impl StreamOptions {
    /// The CreateStream request for a stream `name` on NATS `subject`.
    pub(crate) fn to_request(&self, subject: &str, name: &str) -> api::CreateStreamRequest {
        let i64v = |v: Option<i64>| v.map(|value| api::NullableInt64 { value });
        let ms = |v: Option<Duration>| v.map(|d| api::NullableInt64 { value: millis(d) });
        let i32v = |v: Option<i32>| v.map(|value| api::NullableInt32 { value });
        let boolv = |v: Option<bool>| v.map(|value| api::NullableBool { value });
        api::CreateStreamRequest {
            subject: subject.to_string(),
            name: name.to_string(),
            group: self.group.clone().unwrap_or_default(),
            replication_factor: self.replication_factor,
            partitions: self.partitions,
            retention_max_bytes: i64v(self.retention_max_bytes),
            retention_max_messages: i64v(self.retention_max_messages),
            retention_max_age: ms(self.retention_max_age),
            cleaner_interval: ms(self.cleaner_interval),
            segment_max_bytes: i64v(self.segment_max_bytes),
            segment_max_age: ms(self.segment_max_age),
            compact_max_goroutines: i32v(self.compact_max_goroutines),
            compact_enabled: boolv(self.compact_enabled),
            auto_pause_time: ms(self.auto_pause_time),
            auto_pause_disable_if_subscribers: boolv(self.auto_pause_disable_if_subscribers),
            min_isr: i32v(self.min_isr),
            optimistic_concurrency_control: boolv(self.optimistic_concurrency_control),
            encryption: boolv(self.encryption),
        }
    }
}

/// Options of [`Client::pause_stream`](crate::Client::pause_stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseOptions {
    /// Partitions to pause; empty pauses all of them.
    pub partitions: Vec<i32>,
    /// When any paused partition is published to, resume all of them (not just that one).
    pub resume_all: bool,
}

/// Options of [`Client::set_stream_readonly`](crate::Client::set_stream_readonly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadonlyOptions {
    /// Partitions to change; empty changes all of them.
    pub partitions: Vec<i32>,
    /// Set (`true`, the default) or clear (`false`) the readonly flag.
    pub readonly: bool,
}

impl Default for ReadonlyOptions {
    fn default() -> Self {
        ReadonlyOptions {
            partitions: Vec::new(),
            readonly: true,
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only records published after the subscription starts (the server's default).
    #[default]
    NewOnly,
    /// At this offset (clamped by the server to the retained range).
    Offset(i64),
    /// At the oldest retained record.
    Earliest,
    /// At the newest record, which is delivered first.
    Latest,
    /// At the first record received at or after this time.
    Timestamp(SystemTime),
}

impl StartAt {
    /// At the first record received at most `delta` ago (go-liftbridge's `StartAtTimeDelta`):
    /// [`StartAt::Timestamp`] of now − `delta`, fixed when this is called (a resubscription
    /// does not move it). A `delta` reaching before 1970 starts at the oldest record.
    ///
    /// ```
    /// use std::time::Duration;
    /// use drawbridge_client::StartAt;
    ///
    /// let start = StartAt::ago(Duration::from_secs(60));
    /// assert!(matches!(start, StartAt::Timestamp(_)));
    /// ```
    pub fn ago(delta: Duration) -> StartAt {
        let now = SystemTime::now();
        StartAt::Timestamp(now.checked_sub(delta).unwrap_or(UNIX_EPOCH))
    }
}

/// Where a subscription stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopAt {
    /// Never: tail the partition until the subscription is dropped.
    #[default]
    Cancel,
    /// After the record at this offset (inclusive).
    Offset(i64),
    /// After the newest record at the time the subscription is (re)opened.
    Latest,
    /// After the last record received at or before this time.
    Timestamp(SystemTime),
}

/// Options of [`Client::subscribe`](crate::Client::subscribe).
///
/// ```
/// use drawbridge_client::{StartAt, StopAt, SubscribeOptions};
///
/// let opts = SubscribeOptions {
///     partition: 1,
///     start: StartAt::Earliest,
///     stop: StopAt::Latest,
///     ..SubscribeOptions::default()
/// };
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    /// Partition to read.
    pub partition: i32,
    /// Where to start.
    pub start: StartAt,
    /// Where to stop.
    pub stop: StopAt,
    /// Read from a random in-sync replica instead of the leader (followers may lag a little).
    pub read_isr_replica: bool,
    /// Resume the partition first if it is paused.
    pub resume: bool,
    /// Read newest to oldest (Liftbridge API v2).
    pub reverse: bool,
}

impl SubscribeOptions {
    /// The Subscribe request for `stream` with these options.
    pub(crate) fn to_request(self, stream: &str) -> api::SubscribeRequest {
        let mut req = api::SubscribeRequest {
            stream: stream.to_string(),
            partition: self.partition,
            read_isr_replica: self.read_isr_replica,
            resume: self.resume,
            reverse: self.reverse,
            ..Default::default()
        };
        match self.start {
            StartAt::NewOnly => req.set_start_position(api::StartPosition::NewOnly),
            StartAt::Offset(offset) => {
                req.set_start_position(api::StartPosition::Offset);
                req.start_offset = offset;
            }
            StartAt::Earliest => req.set_start_position(api::StartPosition::Earliest),
            StartAt::Latest => req.set_start_position(api::StartPosition::Latest),
            StartAt::Timestamp(t) => {
                req.set_start_position(api::StartPosition::Timestamp);
                req.start_timestamp = unix_nanos(t);
            }
        }
        match self.stop {
            StopAt::Cancel => req.set_stop_position(api::StopPosition::StopOnCancel),
            StopAt::Offset(offset) => {
                req.set_stop_position(api::StopPosition::StopOffset);
                req.stop_offset = offset;
            }
            StopAt::Latest => req.set_stop_position(api::StopPosition::StopLatest),
            StopAt::Timestamp(t) => {
                req.set_stop_position(api::StopPosition::StopTimestamp);
                req.stop_timestamp = unix_nanos(t);
            }
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_use_milliseconds_and_skip_unset() {
        let opts = StreamOptions {
            partitions: 3,
            replication_factor: -1,
            group: Some("g".into()),
            retention_max_bytes: Some(1 << 30),
            retention_max_messages: Some(1000),
            retention_max_age: Some(Duration::from_secs(3600)),
            cleaner_interval: Some(Duration::from_millis(1500)),
            segment_max_bytes: Some(4096),
            segment_max_age: Some(Duration::from_secs(60)),
            compact_enabled: Some(false),
            compact_max_goroutines: Some(4),
            auto_pause_time: Some(Duration::ZERO),
            auto_pause_disable_if_subscribers: Some(true),
            min_isr: Some(2),
            optimistic_concurrency_control: Some(true),
            encryption: Some(false),
        };
        let req = opts.to_request("orders.*", "orders");
        assert_eq!(req.subject, "orders.*");
        assert_eq!(req.name, "orders");
        assert_eq!(req.group, "g");
        assert_eq!(req.partitions, 3);
        assert_eq!(req.replication_factor, -1);
        assert_eq!(req.retention_max_bytes.map(|v| v.value), Some(1 << 30));
        assert_eq!(req.retention_max_messages.map(|v| v.value), Some(1000));
        assert_eq!(req.retention_max_age.map(|v| v.value), Some(3_600_000));
        assert_eq!(req.cleaner_interval.map(|v| v.value), Some(1500));
        assert_eq!(req.segment_max_bytes.map(|v| v.value), Some(4096));
        assert_eq!(req.segment_max_age.map(|v| v.value), Some(60_000));
        assert_eq!(req.compact_enabled.map(|v| v.value), Some(false));
        assert_eq!(req.compact_max_goroutines.map(|v| v.value), Some(4));
        assert_eq!(req.auto_pause_time.map(|v| v.value), Some(0));
        assert_eq!(
            req.auto_pause_disable_if_subscribers.map(|v| v.value),
            Some(true)
        );
        assert_eq!(req.min_isr.map(|v| v.value), Some(2));
        assert_eq!(
            req.optimistic_concurrency_control.map(|v| v.value),
            Some(true)
        );
        assert_eq!(req.encryption.map(|v| v.value), Some(false));

        let empty = StreamOptions::default().to_request("s", "n");
        assert_eq!(empty.group, "");
        assert!(empty.retention_max_age.is_none());
        assert!(empty.compact_enabled.is_none());
        assert!(empty.min_isr.is_none());
        assert!(empty.encryption.is_none());
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_micros(1999)), 1);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }

    #[test]
    fn nanos_round_trip_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_767_225_600_123_456_789);
        assert_eq!(unix_nanos(t), 1_767_225_600_123_456_789);
        assert_eq!(time_from_nanos(1_767_225_600_123_456_789), Some(t));
        assert_eq!(time_from_nanos(0), None);
        assert_eq!(
            unix_nanos(UNIX_EPOCH - Duration::from_secs(1)),
            -1_000_000_000
        );
        assert_eq!(
            time_from_nanos(-1_000_000_000),
            Some(UNIX_EPOCH - Duration::from_secs(1))
        );
    }

    #[test]
    fn subscribe_request_positions() {
        let t = UNIX_EPOCH + Duration::from_secs(10);
        let req = SubscribeOptions {
            partition: 2,
            start: StartAt::Offset(5),
            stop: StopAt::Timestamp(t),
            read_isr_replica: true,
            resume: true,
            reverse: false,
        }
        .to_request("s");
        assert_eq!(req.stream, "s");
        assert_eq!(req.partition, 2);
        assert_eq!(req.start_position(), api::StartPosition::Offset);
        assert_eq!(req.start_offset, 5);
        assert_eq!(req.stop_position(), api::StopPosition::StopTimestamp);
        assert_eq!(req.stop_timestamp, 10_000_000_000);
        assert!(req.read_isr_replica && req.resume && !req.reverse);

        let req = SubscribeOptions {
            start: StartAt::Timestamp(t),
            stop: StopAt::Offset(9),
            reverse: true,
            ..Default::default()
        }
        .to_request("s");
        assert_eq!(req.start_position(), api::StartPosition::Timestamp);
        assert_eq!(req.start_timestamp, 10_000_000_000);
        assert_eq!(req.stop_position(), api::StopPosition::StopOffset);
        assert_eq!(req.stop_offset, 9);
        assert!(req.reverse);

        let d = SubscribeOptions::default().to_request("s");
        assert_eq!(d.start_position(), api::StartPosition::NewOnly);
        assert_eq!(d.stop_position(), api::StopPosition::StopOnCancel);
        for (start, pos) in [
            (StartAt::Earliest, api::StartPosition::Earliest),
            (StartAt::Latest, api::StartPosition::Latest),
        ] {
            let r = SubscribeOptions {
                start,
                stop: StopAt::Latest,
                ..Default::default()
            }
            .to_request("s");
            assert_eq!(r.start_position(), pos);
            assert_eq!(r.stop_position(), api::StopPosition::StopLatest);
        }
    }

    #[test]
    fn ack_policy_round_trip() {
        for p in [AckPolicy::Leader, AckPolicy::All, AckPolicy::None] {
            assert_eq!(AckPolicy::from_proto(p.to_proto() as i32), Some(p));
        }
        assert_eq!(AckPolicy::from_proto(7), None);
        assert_eq!(AckPolicy::default(), AckPolicy::Leader);
    }
}
