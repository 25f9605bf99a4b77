//! The node's timer for partition groups: ONE task drives the heartbeats and elections of every
//! partition group on the node, in place of openraft's per-group tick.
//!
//! Why: every openraft group runs a tick task that wakes every `heartbeat_interval * 13 / 64`
//! and then wakes the group's core; with thousands of idle groups per node those wakeups were
//! most of the idle CPU (issue 3). Partition groups therefore run with `enable_tick = false`
//! (openraft's tick task then parks on a watch channel and never wakes) and this scheduler asks
//! openraft for a heartbeat (`trigger().heartbeat()`) or an election (`trigger().elect(true)`,
//! with pre-vote) when one is due. The metadata group keeps openraft's own tick.
//!
//! Rules, evaluated for a group when its deadline comes (deadlines are rounded up to
//! [`Timing::resolution`], so one wakeup serves every group due in that slot):
//! 1. Leader with other members: a heartbeat every `heartbeat_interval`. openraft still skips
//!    it towards a follower that got replication traffic within `heartbeat_min_interval`.
//! 2. Leader alone (single voter, no learners): nothing to do; looked at again every
//!    [`ALONE_RECHECK`] only in case its membership grows.
//! 3. Voter, not leader, the only voter: elect at once (not while its campaign runs).
//! 4. Voter, not leader, other voters exist: elect once the last contact (see below) is older
//!    than the election timeout. The timeout is `t`, uniform in `[election_timeout_min,
//!    election_timeout_max)` and re-sampled after every attempt. After contact with a leader
//!    (the local vote is committed to another node), the leader lease is added:
//!    `lease + (t - election_timeout_min)` with `lease = election_timeout_max`, openraft's own
//!    leader lease. While that lease runs a voter refuses votes and openraft refuses to even
//!    start a pre-vote, so asking earlier would be a wasted call. Non-leaders are looked at at
//!    least every heartbeat interval, so a node that just won an election starts heartbeating
//!    well before any follower's timeout.
//! 5. Learners and stopped groups: nothing.
//!
//! "Last contact" is stamped by the transport ([`GroupClock::touch`]) when the group accepted
//! an append-entries (heartbeats included) or a snapshot, i.e. one from the current leader, and
//! when it granted a vote; and by the scheduler when it triggers an election or sees the group
//! lose leadership.
//!
//! Invariants:
//! - Safety never depends on this module: openraft still checks terms, votes and leases on
//!   every message. The scheduler only decides *when* to ask; a late or lost trigger delays
//!   liveness and cannot corrupt a log.
//! - The scheduler never waits on a group: triggers are sent by a separate task, each bounded by
//!   a heartbeat interval; a group whose API channel is full misses that beat and is asked
//!   again at its next deadline.
//! - A group is scheduled from [`Scheduler::register`] until [`Scheduler::unregister`]; a
//!   stale heap slot (the group was re-armed or removed) is skipped, never acted on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::metrics::RaftServerMetrics;
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::config::GroupTimings;
use crate::types::NodeId;
use crate::types::PartitionId;
use crate::types::PartitionRaft;
use crate::types::PartitionTypes;

/// How long a single-voter leader is left alone before it is looked at again.
pub(crate) const ALONE_RECHECK: Duration = Duration::from_secs(30);

/// The last time a group heard from its leader (or granted a vote). Shared between the group's
/// transport handler, which stamps it, and the scheduler, which reads it.
#[derive(Debug)]
pub(crate) struct GroupClock {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last contact.
    last_contact_ms: AtomicU64,
}

impl GroupClock {
    /// A clock whose last contact is now.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
        }
    }

    /// Records contact from the group's leader (or a granted vote) now.
    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_contact_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The last contact.
    pub(crate) fn last_contact(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_contact_ms.load(Ordering::Relaxed))
    }
}

/// The timers of partition groups, from [`GroupTimings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) heartbeat: Duration,
    pub(crate) election_min: Duration,
    pub(crate) election_max: Duration,
    /// Deadlines are rounded up to a multiple of this, so the task wakes at most
    /// `1 / resolution` times a second however many groups there are.
    pub(crate) resolution: Duration,
}

impl Timing {
    /// The scheduler timing of `t`: resolution = heartbeat / 20, within 5..=50 ms.
    pub(crate) fn of(t: &GroupTimings) -> Self {
        Self {
            heartbeat: Duration::from_millis(t.heartbeat_interval_ms),
            election_min: Duration::from_millis(t.election_timeout_min_ms),
            election_max: Duration::from_millis(t.election_timeout_max_ms),
            resolution: Duration::from_millis((t.heartbeat_interval_ms / 20).clamp(5, 50)),
        }
    }
}

/// What to ask a group for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Heartbeat,
    Elect,
}

/// A scheduled group.
struct Entry {
    raft: PartitionRaft,
    clock: Arc<GroupClock>,
    server: WatchReceiverOf<PartitionTypes, RaftServerMetrics<PartitionTypes>>,
    /// The deadline this entry is armed for (a heap slot with another time is stale).
    due: Instant,
    /// Next heartbeat, while leader.
    next_heartbeat: Option<Instant>,
    /// Last election this scheduler triggered (or loss of leadership), whichever is later.
    last_attempt: Option<Instant>,
    /// The current sample of the election timeout, `[min, max)`.
    timeout: Duration,
}

/// What a group looks like right now, read from its server metrics.
struct View {
    state: ServerState,
    /// This node is a voter of the effective membership.
    voter: bool,
    /// This node is the only voter.
    alone: bool,
    /// The membership has a node other than this one (voter or learner).
    others: bool,
    /// The local vote is committed to another node: a leader was followed and its lease runs.
    following: bool,
}

impl Entry {
    fn view(&self, me: NodeId) -> View {
        let m = self.server.borrow_watched();
        let membership = m.membership_config.membership();
        let mut voter = false;
        let mut other_voter = false;
        for id in membership.get_joint_config().iter().flatten() {
            if *id == me {
                voter = true;
            } else {
                other_voter = true;
            }
        }
        let others = membership.nodes().any(|(id, _)| *id != me);
        View {
            state: m.state,
            voter,
            alone: voter && !other_voter,
            others,
            following: m.vote.committed && m.vote.leader_id.voted_for != me,
        }
    }
}

/// SplitMix64: enough randomness to spread election timeouts, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[min, max)` (or `min` if the range is empty).
    fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = max.saturating_sub(min).as_micros() as u64;
        if span == 0 {
            return min;
        }
        min + Duration::from_micros(self.next() % span)
    }
}

struct State {
    entries: HashMap<PartitionId, Entry>,
    heap: BinaryHeap<Reverse<(Instant, PartitionId)>>,
    rng: Rng,
}

struct Shared {
    me: NodeId,
    timing: Timing,
    state: Mutex<State>,
    /// Wakes the task when a group is registered (its first deadline may be the earliest).
    wake: Notify,
}

/// Handle on the node's scheduler task; dropping it stops the task.
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("me", &self.shared.me)
            .field("groups", &self.shared.state.lock().entries.len())
            .finish()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `t` rounded up to the next multiple of `res` since `base`.
fn round_up(t: Instant, base: Instant, res: Duration) -> Instant {
    let res_us = res.as_micros().max(1);
    let off = t.saturating_duration_since(base).as_micros();
    let rounded = off.div_ceil(res_us) * res_us;
    base + Duration::from_micros(rounded as u64)
}

impl Scheduler {
    /// Starts the scheduler task of node `me` (needs a tokio runtime).
    pub(crate) fn start(me: NodeId, timing: Timing) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ me.rotate_left(32);
        let shared = Arc::new(Shared {
            me,
            timing,
            state: Mutex::new(State {
                entries: HashMap::new(),
                heap: BinaryHeap::new(),
                rng: Rng(seed),
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(run(shared.clone()));
        Self {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Schedules a group: first looked at now (a lone voter elects itself at once).
    pub(crate) fn register(&self, id: PartitionId, raft: PartitionRaft, clock: Arc<GroupClock>) {
        let now = Instant::now();
        {
            let mut st = self.shared.state.lock();
            let timeout = st.rng.between(
                self.shared.timing.election_min,
                self.shared.timing.election_max,
            );
            let server = raft.server_metrics();
            st.entries.insert(
                id.clone(),
                Entry {
                    raft,
                    clock,
                    server,
                    due: now,
                    next_heartbeat: None,
                    last_attempt: None,
                    timeout,
                },
            );
            st.heap.push(Reverse((now, id)));
        }
        self.shared.wake.notify_one();
    }

    /// Stops scheduling a group.
    pub(crate) fn unregister(&self, id: &PartitionId) {
        self.shared.state.lock().entries.remove(id);
    }

    /// Stops the task and forgets every group.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        let mut st = self.shared.state.lock();
        st.entries.clear();
        st.heap.clear();
    }
}

async fn run(shared: Arc<Shared>) {
    let origin = Instant::now();
    loop {
        let next = shared.state.lock().heap.peek().map(|Reverse((t, _))| *t);
        let sleep =
            tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + ALONE_RECHECK));
        tokio::select! {
            _ = sleep => {}
            _ = shared.wake.notified() => {}
        }
        let now = Instant::now();
        let actions = shared.poll(now, origin);
        if actions.is_empty() {
            continue;
        }
        debug!(
            node = shared.me,
            actions = actions.len(),
            "raft timers fired"
        );
        let limit = shared.timing.heartbeat;
        tokio::spawn(async move {
            let sends = actions.into_iter().map(|(raft, action)| async move {
                let trigger = raft.trigger();
                let fut = async {
                    match action {
                        Action::Heartbeat => trigger.heartbeat().await,
                        Action::Elect => trigger.elect(true).await,
                    }
                };
                // An error means the group stopped; it is unregistered by its owner.
                let _ = tokio::time::timeout(limit, fut).await;
            });
            futures::future::join_all(sends).await;
        });
    }
}

impl Shared {
    /// Evaluates every group due by `now`, re-arms it, and returns what to trigger.
    fn poll(&self, now: Instant, origin: Instant) -> Vec<(PartitionRaft, Action)> {
        let t = self.timing;
        let mut out = Vec::new();
        let mut st = self.state.lock();
        let State { entries, heap, rng } = &mut *st;
        while let Some(Reverse((due, _))) = heap.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, id))) = heap.pop() else {
                break;
            };
            let Some(e) = entries.get_mut(&id) else {
                continue;
            };
            if e.due != due {
                continue;
            }
            let (action, next) = step(e, self.me, now, &t, rng);
            if let Some(a) = action {
                out.push((e.raft.clone(), a));
            }
            let next = round_up(next.max(now + t.resolution), origin, t.resolution);
            e.due = next;
            heap.push(Reverse((next, id)));
        }
        out
    }
}

/// One group's rule (see the module docs): what to trigger now and when to look again.
fn step(
    e: &mut Entry,
    me: NodeId,
    now: Instant,
    t: &Timing,
    rng: &mut Rng,
) -> (Option<Action>, Instant) {
    let v = e.view(me);
    match v.state {
        ServerState::Leader => {
            if !v.others {
                e.next_heartbeat = None;
                return (None, now + ALONE_RECHECK);
            }
            // A new leader replicates its first entry at once; the first beat can wait.
            let at = *e.next_heartbeat.get_or_insert(now + t.heartbeat);
            if now >= at {
                let next = now + t.heartbeat;
                e.next_heartbeat = Some(next);
                return (Some(Action::Heartbeat), next);
            }
            (None, at)
        }
        ServerState::Follower | ServerState::Candidate if v.voter => {
            if e.next_heartbeat.take().is_some() {
                // Just lost leadership: count it as contact, the new leader is about to call.
                e.last_attempt = Some(now);
            }
            if v.alone {
                // A lone voter's pre-vote grants itself: elect at once, and leave a running
                // campaign (waiting for its vote to be saved) alone for an election timeout.
                let busy = v.state == ServerState::Candidate
                    && e.last_attempt.is_some_and(|a| now < a + t.election_max);
                if busy {
                    return (None, now + t.heartbeat);
                }
                e.last_attempt = Some(now);
                return (Some(Action::Elect), now + t.heartbeat);
            }
            let contact = e.clock.last_contact();
            let due = match e.last_attempt {
                Some(a) if a >= contact => a + e.timeout,
                _ if v.following => contact + t.election_max + (e.timeout - t.election_min),
                _ => contact + e.timeout,
            };
            if now >= due {
                e.last_attempt = Some(now);
                e.timeout = rng.between(t.election_min, t.election_max);
                return (Some(Action::Elect), now + t.heartbeat.min(e.timeout));
            }
            (None, due.min(now + t.heartbeat))
        }
        _ => {
            e.next_heartbeat = None;
            (None, now + t.heartbeat)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_stay_in_range_and_spread() {
        let mut rng = Rng(7);
        let (min, max) = (Duration::from_millis(1500), Duration::from_millis(3000));
        let xs: Vec<Duration> = (0..1000).map(|_| rng.between(min, max)).collect();
        assert!(xs.iter().all(|x| *x >= min && *x < max));
        assert!(xs.iter().any(|x| *x < Duration::from_millis(1700)));
        assert!(xs.iter().any(|x| *x > Duration::from_millis(2800)));
        assert_eq!(rng.between(min, min), min);
    }

    #[test]
    fn deadlines_round_up_to_the_resolution() {
        let base = Instant::now();
        let res = Duration::from_millis(25);
        assert_eq!(round_up(base, base, res), base);
        assert_eq!(
            round_up(base + Duration::from_millis(1), base, res),
            base + res
        );
        assert_eq!(round_up(base + res, base, res), base + res);
    }

    #[test]
    fn clock_keeps_the_latest_contact() {
        let c = GroupClock::new();
        let first = c.last_contact();
        c.touch();
        assert!(c.last_contact() >= first);
    }

    #[test]
    fn timing_resolution_is_bounded() {
        let mut t = GroupTimings::partition_defaults();
        assert_eq!(Timing::of(&t).resolution, Duration::from_millis(25));
        t.heartbeat_interval_ms = 10;
        assert_eq!(Timing::of(&t).resolution, Duration::from_millis(5));
        t.heartbeat_interval_ms = 10_000;
        assert_eq!(Timing::of(&t).resolution, Duration::from_millis(50));
    }
}
