//! How long fsyncs take: a process-wide histogram the flusher feeds and the server renders as
//! `drawbridge_fsync_duration_seconds`.
//!
//! Choice: one global set of atomics rather than a per-node object threaded through the
//! flusher, because fsync latency is a property of the disk under the process (one server
//! process runs one node; a test process running several nodes sums them). Recording is two
//! relaxed atomic adds, beside a syscall that takes tens of microseconds at best.
//!
//! What is timed: every `fdatasync` the flusher issues — raft log and partition log syncs
//! (acknowledgement path and lazy rounds, kind [`FsyncKind::Log`]) and raft state journal
//! syncs ([`FsyncKind::Journal`]). Directory fsyncs and one-off file replacements are not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the buckets: 50 µs to 10 s.
pub const FSYNC_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    10.0,
];

/// What was synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncKind {
    /// A raft or partition log.
    Log,
    /// The raft state journal (votes, commit points).
    Journal,
}

impl FsyncKind {
    /// The label value (`log`, `journal`).
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncKind::Log => "log",
            FsyncKind::Journal => "journal",
        }
    }
}

struct Hist {
    /// Bucket `i` counts observations in (bound `i-1`, bound `i`]; the last is `+Inf`.
    buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Hist {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; FSYNC_BUCKETS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }
}

static LOG: Hist = Hist::new();
static JOURNAL: Hist = Hist::new();

fn hist(kind: FsyncKind) -> &'static Hist {
    match kind {
        FsyncKind::Log => &LOG,
        FsyncKind::Journal => &JOURNAL,
    }
}

/// Records one fsync of `kind` that took `d`.
pub fn record(kind: FsyncKind, d: Duration) {
    let h = hist(kind);
    let secs = d.as_secs_f64();
    let i = FSYNC_BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(FSYNC_BUCKETS.len());
    h.buckets[i].fetch_add(1, Ordering::Relaxed);
    h.sum_ns.fetch_add(
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Times `f` as one fsync of `kind`.
pub(crate) fn timed<T>(kind: FsyncKind, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    record(kind, start.elapsed());
    out
}

/// A copy of one histogram, buckets cumulative (as Prometheus wants them).
#[derive(Debug, Clone, PartialEq)]
pub struct FsyncSnapshot {
    /// `(le, cumulative count)` for every finite bound.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in total.
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
}

/// The histogram of `kind` so far.
pub fn snapshot(kind: FsyncKind) -> FsyncSnapshot {
    let h = hist(kind);
    let mut acc = 0u64;
    let buckets = FSYNC_BUCKETS
        .iter()
        .zip(&h.buckets)
        .map(|(le, n)| {
            acc += n.load(Ordering::Relaxed);
            (*le, acc)
        })
        .collect();
    let count = acc + h.buckets[FSYNC_BUCKETS.len()].load(Ordering::Relaxed);
    FsyncSnapshot {
        buckets,
        count,
        sum_seconds: h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_accumulate() {
        // The journal histogram is only fed by journal syncs; this test records its own and
        // compares deltas, since other tests in the process may sync too.
        let before = snapshot(FsyncKind::Journal);
        record(FsyncKind::Journal, Duration::from_micros(30));
        record(FsyncKind::Journal, Duration::from_millis(3));
        record(FsyncKind::Journal, Duration::from_secs(20));
        let after = snapshot(FsyncKind::Journal);
        assert!(after.count >= before.count + 3);
        let at = |s: &FsyncSnapshot, le: f64| {
            s.buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0, |(_, n)| *n)
        };
        assert!(at(&after, 0.00005) > at(&before, 0.00005));
        assert!(at(&after, 0.005) >= at(&before, 0.005) + 2);
        assert!(after.sum_seconds >= before.sum_seconds + 20.0);
        let last = after.buckets.last().map_or(0, |(_, n)| *n);
        assert!(after.count > last, "the 20 s sync is only in +Inf");
    }
}
