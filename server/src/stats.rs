//! Counters and histograms the hot paths bump and [`crate::metrics`] renders.
//!
//! Choice: plain atomics with `Relaxed` ordering, no registry, no locks and no allocation on
//! the hot path. Per-partition counters live on the hosted replica ([`PartitionStats`], in
//! [`crate::partitions::Local`]), so they appear and disappear with it; node-wide ones live in
//! [`NodeStats`] on [`crate::context::Node`].
//!
//! Invariants:
//! - Counters only grow (Prometheus `_total` semantics) for the lifetime of what holds them.
//! - A [`Histogram`]'s bucket `i` counts observations `<=` [`LATENCY_BUCKETS`]`[i]` that are
//!   above the previous bound (rendering accumulates them); `count` is the sum of every bucket
//!   plus the `+Inf` overflow, `sum_ns` the sum of the observations in nanoseconds.
//! - Received timestamps: `first_received_ns` is set once (the first record this replica took
//!   in as leader since it was opened) and `latest_received_ns` only grows; 0 means never.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::Code;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket latency histogram (see the module docs).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`] (cumulative buckets, as Prometheus wants them).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(le, cumulative count)` for every finite bound.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in total (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// A cumulative copy.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            acc += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((*le, acc));
        }
        acc += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: acc,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The RPCs whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Unary Publish (until the ack, or the publish without one).
    Publish,
    /// One PublishAsync message (publish to its ack or error answer).
    PublishAsync,
    /// PublishToSubject.
    PublishToSubject,
    /// Subscribe, until its first frame (or its error).
    Subscribe,
}

impl Method {
    /// Every method, in rendering order.
    pub const ALL: [Method; 4] = [
        Method::Publish,
        Method::PublishAsync,
        Method::PublishToSubject,
        Method::Subscribe,
    ];

    /// The RPC name (the `method` label).
    pub fn name(self) -> &'static str {
        match self {
            Method::Publish => "Publish",
            Method::PublishAsync => "PublishAsync",
            Method::PublishToSubject => "PublishToSubject",
            Method::Subscribe => "Subscribe",
        }
    }
}

/// The gRPC codes, indexed by their value (the `status` label).
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Request latency by method and status code.
#[derive(Debug, Default)]
pub struct RequestStats {
    by: [[Histogram; 17]; 4],
}

impl RequestStats {
    /// Records one request of `method` that ended with `code` after `d`.
    pub fn observe(&self, method: Method, code: Code, d: Duration) {
        let m = Method::ALL.iter().position(|x| *x == method).unwrap_or(0);
        let c = usize::try_from(code as i32)
            .unwrap_or(2)
            .min(CODES.len() - 1);
        self.by[m][c].observe(d);
    }

    /// `(method, status, histogram)` for every pair observed at least once.
    pub fn observed(&self) -> Vec<(&'static str, &'static str, HistogramSnapshot)> {
        let mut out = Vec::new();
        for (m, row) in Method::ALL.iter().zip(&self.by) {
            for (code, h) in CODES.iter().zip(row) {
                if h.count() > 0 {
                    out.push((m.name(), *code, h.snapshot()));
                }
            }
        }
        out
    }
}

/// Node-wide counters.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Publish and Subscribe latency.
    pub requests: RequestStats,
    /// Partition leader elections seen by the leadership watches of hosted replicas (a new
    /// leader, or a new term, observed).
    pub leader_elections: AtomicU64,
    /// What the `limits.*` and the message size limit refused.
    pub limits: crate::limits::LimitStats,
    /// Compaction passes that completed on hosted replicas (whether or not they removed
    /// anything).
    pub compaction_runs: AtomicU64,
    /// Records removed by those passes.
    pub compaction_records_removed: AtomicU64,
    /// The cached free-space reading of `data.dir` and the messages refused for lack of it.
    pub disk: crate::diskspace::DiskGuard,
    /// Partition raft groups reopened after openraft stopped them on a fatal error.
    pub partition_group_restarts: AtomicU64,
}

/// Counters of one hosted partition replica.
#[derive(Debug, Default)]
pub struct PartitionStats {
    /// Records this replica took in from NATS as leader.
    pub messages_in: AtomicU64,
    /// Payload bytes (values) of those records.
    pub bytes_in: AtomicU64,
    /// Records sent to subscribers from this replica.
    pub messages_out: AtomicU64,
    /// Payload bytes (values) of those records.
    pub bytes_out: AtomicU64,
    /// Subscriptions open on this replica (a gauge; read by auto-pause).
    pub subscribers: AtomicU64,
    first_received_ns: AtomicU64,
    latest_received_ns: AtomicU64,
}

impl PartitionStats {
    /// Counts `messages` records of `bytes` payload received at `at_ns` (leader time).
    pub fn received(&self, messages: u64, bytes: u64, first_ns: i64, last_ns: i64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        let first = u64::try_from(first_ns).unwrap_or(0);
        let last = u64::try_from(last_ns).unwrap_or(0);
        let _ =
            self.first_received_ns
                .compare_exchange(0, first, Ordering::Relaxed, Ordering::Relaxed);
        self.latest_received_ns.fetch_max(last, Ordering::Relaxed);
    }

    /// Counts `records` records of `bytes` payload in all sent to a subscriber.
    pub fn sent_many(&self, records: u64, bytes: u64) {
        self.messages_out.fetch_add(records, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `(first, latest)` reception time in ns (0 = never).
    pub fn received_timestamps(&self) -> (i64, i64) {
        let f = self.first_received_ns.load(Ordering::Relaxed);
        let l = self.latest_received_ns.load(Ordering::Relaxed);
        (
            i64::try_from(f).unwrap_or(i64::MAX),
            i64::try_from(l).unwrap_or(i64::MAX),
        )
    }
}

/// Free bytes for unprivileged users on the file system holding `dir` (`None` when unknown).
pub fn disk_free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `st` points to writable memory of the
    // size statvfs fills.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field widths differ between platforms
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 2));
        assert_eq!(s.buckets.last().map(|b| b.1), Some(2));
        assert!((s.sum_seconds - 60.0031).abs() < 1e-6);
    }

    #[test]
    fn requests_report_only_observed_pairs() {
        let r = RequestStats::default();
        r.observe(Method::Subscribe, Code::NotFound, Duration::from_millis(1));
        r.observe(Method::Publish, Code::Ok, Duration::from_millis(1));
        let seen: Vec<_> = r.observed().into_iter().map(|(m, c, _)| (m, c)).collect();
        assert_eq!(seen, vec![("Publish", "OK"), ("Subscribe", "NOT_FOUND")]);
    }

    #[test]
    fn received_timestamps_keep_the_first_and_the_latest() {
        let p = PartitionStats::default();
        assert_eq!(p.received_timestamps(), (0, 0));
        p.received(2, 10, 100, 200);
        p.received(1, 5, 300, 300);
        p.received(1, 5, 50, 150);
        assert_eq!(p.received_timestamps(), (100, 300));
        assert_eq!(p.messages_in.load(Ordering::Relaxed), 4);
        assert_eq!(p.bytes_in.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn disk_free_of_the_temp_dir_is_known() {
        assert!(disk_free_bytes(&std::env::temp_dir()).is_some());
        assert!(disk_free_bytes(std::path::Path::new("/no/such/dir/here")).is_none());
    }
}
