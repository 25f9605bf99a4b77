//! Fault injection on the raft transport, for tests: a [`NetworkFaults`] handle shared by every
//! node of an in-process cluster blocks, drops or delays raft RPCs between chosen node pairs.
//!
//! Where it acts: in the client side ([`super::Router`]) of the *sending* node, on every RPC
//! (heartbeats of the coalescing batcher included). A request from `a` to `b` is refused before
//! it is sent when `a → b` is blocked, and its reply is discarded when `b → a` became blocked
//! while it was in flight, so a one-way block behaves like a one-way link failure and a
//! partition (both directions) isolates completely. A refused or dropped RPC fails as
//! `Unreachable`, as a dead link does.
//!
//! Randomness (drop rate, delays) comes from one seeded generator (SplitMix64), so a test run
//! is reproducible from its seed as far as the scheduling of tasks allows.
//!
//! Not for production: a node gets a handle only through `RaftConfig::network_faults`, which
//! is `None` unless a test sets it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::types::NodeId;

/// A shared set of network faults (see the module docs). Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct NetworkFaults {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Blocked directed links `(from, to)`.
    blocked: HashSet<(NodeId, NodeId)>,
    /// Probability (per million) that an RPC is dropped, on any link.
    drop_ppm: u32,
    /// Delay added to every RPC: uniform in `min..=max` ms.
    delay_ms: (u64, u64),
    /// SplitMix64 state.
    rng: u64,
    /// RPCs refused or dropped so far.
    dropped: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl std::fmt::Debug for NetworkFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.lock();
        f.debug_struct("NetworkFaults")
            .field("blocked", &s.blocked)
            .field("drop_ppm", &s.drop_ppm)
            .field("delay_ms", &s.delay_ms)
            .field("dropped", &s.dropped)
            .finish()
    }
}

/// Two handles are equal when they share state (what `RaftConfig`'s `PartialEq` needs).
impl PartialEq for NetworkFaults {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for NetworkFaults {}

impl NetworkFaults {
    /// No faults yet; randomness seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        let f = Self::default();
        f.inner.lock().rng = seed;
        f
    }

    /// Blocks requests from `from` to `to` (one direction).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.inner.lock().blocked.insert((from, to));
    }

    /// Blocks both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut s = self.inner.lock();
        for x in a {
            for y in b {
                s.blocked.insert((*x, *y));
                s.blocked.insert((*y, *x));
            }
        }
    }

    /// Drops each RPC with probability `p` (0.0..=1.0) on every link.
    pub fn set_drop_rate(&self, p: f64) {
        self.inner.lock().drop_ppm = (p.clamp(0.0, 1.0) * 1_000_000.0) as u32;
    }

    /// Delays each RPC by a uniform `min..=max`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.inner.lock().delay_ms = (ms(min), ms(max).max(ms(min)));
    }

    /// Removes every block, drop rate and delay.
    pub fn heal(&self) {
        let mut s = self.inner.lock();
        s.blocked.clear();
        s.drop_ppm = 0;
        s.delay_ms = (0, 0);
    }

    /// RPCs refused or dropped so far.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().dropped
    }

    /// Whether a request `from → to` may go now, and after which delay (`None`: refused).
    fn verdict(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        let mut s = self.inner.lock();
        let dropped = s.blocked.contains(&(from, to))
            || (s.drop_ppm > 0 && s.next() % 1_000_000 < u64::from(s.drop_ppm));
        if dropped {
            s.dropped += 1;
            return None;
        }
        let (lo, hi) = s.delay_ms;
        let delay = if hi > lo {
            lo + s.next() % (hi - lo + 1)
        } else {
            lo
        };
        Some(Duration::from_millis(delay))
    }

    /// Gate of a request `from → to`: waits its delay, or fails when it is refused.
    pub(crate) async fn before_send(&self, from: NodeId, to: NodeId) -> Result<(), String> {
        match self.verdict(from, to) {
            None => Err(format!("network fault: {from} -> {to} dropped")),
            Some(d) if d.is_zero() => Ok(()),
            Some(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }

    /// Gate of the reply to a request `from → to`: fails when `to → from` is blocked now.
    pub(crate) fn after_reply(&self, from: NodeId, to: NodeId) -> Result<(), String> {
        let mut s = self.inner.lock();
        if s.blocked.contains(&(to, from)) {
            s.dropped += 1;
            return Err(format!("network fault: reply {to} -> {from} dropped"));
        }
        Ok(())
    }
}
