//! Bounded retries with exponential back-off and jitter.
//!
//! Invariants:
//! 1. Every retry loop in the client runs at most [`RetryPolicy::max_attempts`] times; there is
//!    no unbounded retry anywhere (resubscription is also bounded in time).
//! 2. The wait before attempt `n + 1` is `initial_backoff · 2ⁿ`, capped at `max_backoff`, plus
//!    up to 25% random jitter so clients that failed together do not retry together.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently the client retries a call that failed with a transient error
/// (`Unavailable`, or `FailedPrecondition` from a server that is no longer the leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 50 ms doubling up to 2 s (go-liftbridge retries 5 times from 50 ms).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Attempts to make, at least 1.
    pub(crate) fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The wait after failed attempt `attempt` (0-based), without jitter.
    pub(crate) fn base_backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// The wait after failed attempt `attempt` (0-based), with jitter (module invariant 2).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = self.base_backoff(attempt);
        let jitter_ms = u64::try_from(base.as_millis() / 4).unwrap_or(0);
        if jitter_ms == 0 {
            return base;
        }
        base + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_backoff(0), Duration::from_millis(50));
        assert_eq!(p.base_backoff(1), Duration::from_millis(100));
        assert_eq!(p.base_backoff(3), Duration::from_millis(400));
        assert_eq!(p.base_backoff(10), Duration::from_secs(2));
        assert_eq!(p.base_backoff(u32::MAX), Duration::from_secs(2));
        for a in 0..8 {
            let b = p.backoff(a);
            let base = p.base_backoff(a);
            assert!(b >= base && b <= base + base / 4 + Duration::from_millis(1));
        }
        let zero = RetryPolicy {
            max_attempts: 0,
            ..p
        };
        assert_eq!(zero.attempts(), 1);
    }
}
