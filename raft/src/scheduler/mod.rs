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
//! - [`clock`]: a group's last-contact clock, the per-peer [`Stamp`]s it may read, and the
//!   [`Poke`](clock::Poke) that hands a parked group back to the scheduler.
//! - [`beats`]: the sending side of liveness beats (what each peer holds listed).
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
//!    well before any follower's timeout; except a follower (not a candidate) of a quiesced
//!    group that follows its leader: it is *parked* (next rule), or, while it may not park
//!    (its leader node's stamp is stale, or it was just handed back), looked at every minimum
//!    election timeout, still well inside its followers' lease should it win an election it
//!    did not ask for (a leadership transfer).
//! 5. Parking. A follower (or learner) that follows its leader and is quiet through that
//!    leader node's liveness [`Stamp`] (`GroupClock::park`), with the stamp younger than the
//!    minimum election timeout ([`Timing::stale_after`]), leaves the heap: nothing but an
//!    election can be due for it, and its election deadline (rule 4) lies at least one
//!    `election_timeout_max` after that stamp. It is handed back (armed at once, then not
//!    parked again for an `election_timeout_max`) when anything could change that:
//!    - its quiet mark ends or moves: an append-entries, snapshot or vote for it, the leader
//!      node unlisting it, or another node listing it (`GroupClock` fires the poke);
//!    - a transfer-leader request arrives for it (the transport calls `GroupClock::unpark`
//!      once openraft has handled it: the group may be about to campaign);
//!    - the stamp it is parked on goes stale: ONE check per peer stamp (not per group), made
//!      at every wakeup of the task, which also sleeps no later than the earliest stamp's
//!      staleness; all groups parked on it go back on the heap, where rule 4 arms them for
//!      their election deadline (still ahead: staleness comes at the minimum election
//!      timeout, the deadline no earlier than the lease after the same stamp).
//! 6. Learners and stopped groups: nothing (a learner may park, rule 5).
//! 7. A voter holding after an unclean restart (`crate::partition::unclean`): no election
//!    until it caught up (or the hold expired); checked before rules 3, 4 and 5.
//!
//! Quiescence (CockroachDB-style, issue 3). Heartbeats of idle groups were most of the idle cost
//! of replicated groups, so a leader stops heartbeating a group that is idle and relies on ONE
//! liveness beat per peer and heartbeat interval instead:
//! - A leader quiesces a group when, at [`QUIESCE_AFTER`] consecutive heartbeat deadlines, its
//!   term and last log index did not move, the last log index is committed and applied, every
//!   other member has matched it, every other member acknowledged a message sent within the
//!   minimum election timeout, and the membership is not joint. The heartbeats sent meanwhile
//!   carried the final commit index to the followers.
//! - A quiesced group gets no heartbeats. Instead, every heartbeat interval, the scheduler
//!   sends each peer one liveness beat (`crate::transport::liveness`) listing the groups this
//!   node leads quiesced that the peer is a member of, with their term and last log index. A
//!   follower whose committed vote is that term for the sender stamps the group's clock, so
//!   rule 4 does not fire while the leader's node lives; if its log also ends and is committed
//!   at that index it answers "follows" (an acknowledgement, for the ISR), otherwise "wake" and
//!   the leader resumes heartbeats. Beats are deltas: a group is carried (and answered) when it
//!   is first listed to a peer or its term, index or quiescence changed; after that every beat
//!   the peer gets moves one stamp per sender on the follower (which the clocks of the groups
//!   that answered "follows" read) and one per peer on the leader (the groups' "follows"
//!   acknowledgements). The sender builds a beat from the quiescence changes since the last
//!   one ([`beats`]), so an unchanged idle set costs a few bytes and no per-group work on
//!   either side. One beat per peer is in flight at a time; a lost or refused one makes the
//!   next one full.
//! - A quiesced group wakes (heartbeats resume at once) when its leader sees the term, the last
//!   log index, the membership or the leadership change (a proposal, a membership change, a
//!   transfer or a vote), when a follower asks for it, when a member asks it for a pre-vote,
//!   and when its raft stops. The leader learns of such a change from the group's metrics
//!   watch: a quiesced group has one small task waiting on it (openraft publishes metrics
//!   only when its core handled something, which a quiesced group's core does not), which
//!   pokes the scheduler when the metrics leave the quiesced mark; the poke is handled before
//!   the next beat is built, and [`QUIESCED_RECHECK`] re-reads the metrics besides. A proposal
//!   first wakes its group and waits for a heartbeat quorum (`PartitionGroup::ensure_awake`):
//!   openraft refuses writes on a leader whose lease ran out, as a quiesced leader's does.
//! - When a leader's node dies or is cut off, its liveness beats stop, the stamp its
//!   followers are parked on goes stale, they go back on the heap, and rule 4 elects as
//!   before: fail-over keeps its bounds.
//!
//! A quiesced follower's openraft lease runs out (no heartbeats renew it), so openraft alone
//! would grant a pre-vote to any candidate; the transport refuses pre-votes for a group whose
//! leader's liveness beat listed it within the lease instead (`GroupClock::quiet_lease_runs`).
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
//! - A group is scheduled from [`Scheduler::register`] until [`Scheduler::unregister`]; at any
//!   time it is either armed (one live heap slot, `Entry::due`) or parked on one stamp (rule
//!   5), never both; a stale heap slot (the group was re-armed, parked or removed) is skipped,
//!   never acted on, and so is a poke for a group no longer registered.
//! - A group is quiesced only on its leader; a liveness beat lists only groups the sender
//!   leads quiesced as of the last metrics it saw of them (a change pokes the scheduler, which
//!   unlists the group in the next beat built after the poke).

mod beats;
mod clock;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::metrics::RaftMetrics;
use openraft::metrics::RaftServerMetrics;
use openraft::Instant as _;
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use self::beats::Beats;
pub(crate) use self::clock::GroupClock;
use self::clock::Poke;
pub(crate) use self::clock::Stamp;
use crate::config::GroupTimings;
use crate::transport::Router;
use crate::types::NodeId;
use crate::types::PartitionId;
use crate::types::PartitionRaft;
use crate::types::PartitionTypes;

/// How long a single-voter leader is left alone before it is looked at again.
pub(crate) const ALONE_RECHECK: Duration = Duration::from_secs(30);

/// How often a quiesced led group's metrics are re-read besides the watch that pokes the
/// scheduler when they change.
pub(crate) const QUIESCED_RECHECK: Duration = Duration::from_secs(30);

/// Consecutive heartbeat deadlines at which a led group must look idle (and unchanged) before
/// it is quiesced.
pub(crate) const QUIESCE_AFTER: u32 = 3;

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

    /// How old a leader node's liveness stamp may be for followers to stay parked on it (rule
    /// 5): the minimum election timeout (never more than the maximum), so that a follower is
    /// back on the heap before its election deadline, which lies no earlier than
    /// `election_max` after the stamp.
    pub(crate) fn stale_after(&self) -> Duration {
        self.election_min.min(self.election_max)
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
    id: PartitionId,
    raft: PartitionRaft,
    clock: Arc<GroupClock>,
    server: WatchReceiverOf<PartitionTypes, RaftServerMetrics<PartitionTypes>>,
    metrics: WatchReceiverOf<PartitionTypes, RaftMetrics<PartitionTypes>>,
    /// Whether (and how long) the group has been idle, while this node leads it.
    quiet: Quiet,
    /// The deadline this entry is armed for (a heap slot with another time is stale); `None`
    /// while it is parked (rule 5).
    due: Option<Instant>,
    /// While parked: the stamp it is parked on (`State::parked` key).
    parked: Option<usize>,
    /// Not parked before this time (it was just handed back, see rule 5).
    park_after: Option<Instant>,
    /// Next heartbeat, while leader.
    next_heartbeat: Option<Instant>,
    /// Last election this scheduler triggered (or loss of leadership), whichever is later.
    last_attempt: Option<Instant>,
    /// The current sample of the election timeout, `[min, max)`.
    timeout: Duration,
    /// Which quiescence of the group this is (a fresh number each time it quiesces), so a
    /// group that woke and quiesced again at the same term and index is listed anew.
    quiet_gen: u64,
    /// While quiesced: the task watching its metrics (see [`watch_quiesced`]); dropping it
    /// stops the task.
    watch: Option<WatchTask>,
}

/// A task that stops when dropped.
struct WatchTask(AbortHandle);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Numbers the quiescences of groups (`Entry::quiet_gen`).
static QUIET_GEN: AtomicU64 = AtomicU64::new(1);

/// Where a led group stands towards quiescence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Quiet {
    /// Heartbeating; `idle` consecutive heartbeat deadlines found it idle at `mark`.
    Active { idle: u32, mark: Option<Mark> },
    /// Quiesced at `mark`: no heartbeats, listed in liveness beats to `mark.followers`.
    Quiesced(Mark),
}

impl Quiet {
    const ACTIVE: Quiet = Quiet::Active {
        idle: 0,
        mark: None,
    };
}

/// The state of an idle led group: term, last log index and the other members.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    term: u64,
    last_index: Option<u64>,
    /// Log index of the effective membership config (a change moves it).
    membership: Option<u64>,
    /// The other members (voters and learners), as of `membership`.
    followers: Vec<NodeId>,
}

impl Mark {
    /// Whether `m` (a leader's metrics) is still at this mark; allocates nothing.
    fn holds(&self, m: &RaftMetrics<PartitionTypes>) -> bool {
        m.state == ServerState::Leader
            && m.running_state.is_ok()
            && m.current_term == self.term
            && m.last_log_index == self.last_index
            && m.membership_config.log_id().as_ref().map(|l| l.index) == self.membership
    }
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

impl Entry {
    /// The group's mark if this node leads it and it is idle now (see the module docs): log
    /// committed, applied and matched by every other member, each of which acknowledged a
    /// message sent within `fresh`; one uniform membership config.
    fn idle_mark(&self, me: NodeId, fresh: Duration) -> Option<Mark> {
        let m = self.metrics.borrow_watched();
        let mark = leading_mark(&m, me)?;
        let last = mark.last_index;
        if m.local_committed.as_ref().map(|l| l.index) != last
            || m.last_applied.as_ref().map(|l| l.index) != last
            || m.membership_config.membership().get_joint_config().len() != 1
        {
            return None;
        }
        let matched = m.replication.as_ref()?;
        let acked = m.heartbeat.as_ref()?;
        for f in &mark.followers {
            if matched.get(f)?.as_ref().map(|l| l.index) != last {
                return None;
            }
            let sent = acked.get(f)?.as_ref()?;
            if sent.elapsed() > fresh {
                return None;
            }
        }
        Some(mark)
    }

    /// Whether the group is still as it was quiesced at `mark`.
    fn still_quiet(&self, mark: &Mark) -> bool {
        mark.holds(&self.metrics.borrow_watched())
    }

    /// Leaves the quiesced state (if in it); returns whether it was quiesced.
    fn unquiesce(&mut self) -> bool {
        let was = matches!(self.quiet, Quiet::Quiesced(_));
        if was {
            self.clock.quiesced.store(false, Ordering::Relaxed);
            // Heartbeat replies (or a new leadership) take over the followers' acknowledgements.
            self.clock.quiet_acks.lock().clear();
        }
        self.quiet = Quiet::ACTIVE;
        self.watch = None;
        was
    }

    /// The quiescence generation while quiesced (a change of it is a change of the group's
    /// liveness listing, `State::changed`).
    fn quiesced_gen(&self) -> Option<u64> {
        matches!(self.quiet, Quiet::Quiesced(_)).then_some(self.quiet_gen)
    }
}

/// Term, last log index and other members of a group this node leads (with a running raft).
fn leading_mark(m: &RaftMetrics<PartitionTypes>, me: NodeId) -> Option<Mark> {
    if m.state != ServerState::Leader || m.running_state.is_err() {
        return None;
    }
    let followers: Vec<NodeId> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| *id != me)
        .collect();
    Some(Mark {
        term: m.current_term,
        last_index: m.last_log_index,
        membership: m.membership_config.log_id().as_ref().map(|l| l.index),
        followers,
    })
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

/// The scheduled groups. Entries are keyed by a number given at registration (never reused),
/// so the heap and the per-deadline lookups compare and hash integers, not partition names:
/// deadlines are rounded to the resolution, so many heap slots share a time and ties used to
/// be broken by comparing names.
struct State {
    entries: HashMap<u64, Entry>,
    /// The key of each registered group.
    keys: HashMap<PartitionId, u64>,
    next_key: u64,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Parked followers (rule 5), by the stamp they are parked on (its address).
    parked: HashMap<usize, Parked>,
    /// Groups whose quiescence changed since the last liveness round (see [`beats`]).
    changed: HashSet<u64>,
    rng: Rng,
}

/// The followers parked on one leader node's liveness stamp.
struct Parked {
    stamp: Arc<Stamp>,
    keys: HashSet<u64>,
}

/// The identity of a stamp (the `State::parked` key).
fn stamp_key(s: &Arc<Stamp>) -> usize {
    Arc::as_ptr(s) as usize
}

impl State {
    /// Arms entry `key` for `at`.
    fn arm(&mut self, key: u64, at: Instant) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.due = Some(at);
            self.heap.push(Reverse((at, key)));
        }
    }

    /// Forgets entry `key` (its liveness listing goes with it, see [`beats`]).
    fn remove(&mut self, key: u64) {
        self.unpark(key);
        if self.entries.remove(&key).is_some() {
            self.changed.insert(key);
        }
    }

    /// When the earliest stamp followers are parked on goes stale.
    fn next_stale(&self, stale_after: Duration) -> Option<Instant> {
        self.parked
            .values()
            .map(|p| p.stamp.get() + stale_after)
            .min()
    }

    /// Takes a parked entry off its stamp's list (it is then neither armed nor parked; the
    /// caller arms it).
    fn unpark(&mut self, key: u64) {
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let Some(sk) = e.parked.take() else {
            return;
        };
        if let Some(p) = self.parked.get_mut(&sk) {
            p.keys.remove(&key);
            if p.keys.is_empty() {
                self.parked.remove(&sk);
            }
        }
    }
}

struct Shared {
    me: NodeId,
    timing: Timing,
    /// Quiesce idle led groups (`RaftConfig::quiesce_partition_groups`).
    quiesce: bool,
    /// Sends liveness beats to peers.
    router: Router,
    state: Mutex<State>,
    /// Wakes the task when a group is registered (its first deadline may be the earliest) or
    /// poked.
    wake: Notify,
    /// Groups to look at now (`clock::Poke`): parked followers whose quiet mark changed,
    /// quiesced leaders whose metrics moved. A leaf lock (taken with nothing else held, or
    /// under `state`).
    pokes: Mutex<Vec<u64>>,
    /// This scheduler's liveness session (random per start, see `crate::transport::liveness`).
    session: u64,
    /// What was sent to each peer in liveness beats. Lock order: `state` before `beats`.
    beats: Mutex<Beats>,
}

/// Wakes one group from quiescence (see the module docs): the scheduler resumes its heartbeats
/// at once. Held by the group, for proposals: openraft refuses writes on a leader whose lease
/// (renewed by heartbeat acknowledgements, which a quiesced group does not get) has run out.
#[derive(Clone)]
pub(crate) struct GroupWaker {
    shared: std::sync::Weak<Shared>,
    id: PartitionId,
}

impl std::fmt::Debug for GroupWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWaker").field("id", &self.id).finish()
    }
}

impl GroupWaker {
    /// Wakes the group if it is quiesced (a no-op once the scheduler stopped).
    pub(crate) fn wake(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.wake_groups(std::slice::from_ref(&self.id));
        }
    }
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
    /// Starts the scheduler task of node `me` (needs a tokio runtime); liveness beats go out
    /// through `router`.
    pub(crate) fn start(me: NodeId, timing: Timing, quiesce: bool, router: Router) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ me.rotate_left(32);
        let shared = Arc::new(Shared {
            me,
            timing,
            quiesce,
            router,
            state: Mutex::new(State {
                entries: HashMap::new(),
                keys: HashMap::new(),
                next_key: 0,
                heap: BinaryHeap::new(),
                parked: HashMap::new(),
                changed: HashSet::new(),
                rng: Rng(seed),
            }),
            wake: Notify::new(),
            pokes: Mutex::new(Vec::new()),
            session: Rng(seed ^ 0x5bd1_e995).next(),
            beats: Mutex::new(Beats::default()),
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
            let metrics = raft.metrics();
            let key = st.next_key;
            st.next_key += 1;
            if let Some(old) = st.keys.insert(id.clone(), key) {
                st.remove(old);
            }
            st.entries.insert(
                key,
                Entry {
                    id,
                    raft,
                    clock,
                    server,
                    metrics,
                    quiet: Quiet::ACTIVE,
                    due: Some(now),
                    parked: None,
                    park_after: None,
                    next_heartbeat: None,
                    last_attempt: None,
                    timeout,
                    quiet_gen: 0,
                    watch: None,
                },
            );
            st.heap.push(Reverse((now, key)));
        }
        self.shared.wake.notify_one();
    }

    /// The waker of group `id` (valid once it is registered).
    pub(crate) fn waker(&self, id: PartitionId) -> GroupWaker {
        GroupWaker {
            shared: Arc::downgrade(&self.shared),
            id,
        }
    }

    /// Stops scheduling a group.
    pub(crate) fn unregister(&self, id: &PartitionId) {
        let mut st = self.shared.state.lock();
        if let Some(key) = st.keys.remove(id) {
            st.remove(key);
        }
    }

    /// How many groups this node leads quiesced right now.
    pub(crate) fn quiesced(&self) -> usize {
        self.shared
            .state
            .lock()
            .entries
            .values()
            .filter(|e| matches!(e.quiet, Quiet::Quiesced(_)))
            .count()
    }

    /// How many groups are parked on their leader node's liveness stamp right now (rule 5).
    pub(crate) fn parked(&self) -> usize {
        let st = self.shared.state.lock();
        st.parked.values().map(|p| p.keys.len()).sum()
    }

    /// Stops the task and forgets every group.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        let mut st = self.shared.state.lock();
        st.entries.clear();
        st.keys.clear();
        st.heap.clear();
        st.parked.clear();
        st.changed.clear();
    }
}

async fn run(shared: Arc<Shared>) {
    let origin = Instant::now();
    let mut next_liveness = origin + shared.timing.heartbeat;
    loop {
        let next = {
            let st = shared.state.lock();
            let heap = st.heap.peek().map(|Reverse((t, _))| *t);
            let stale = st.next_stale(shared.timing.stale_after());
            [heap, stale]
                .into_iter()
                .flatten()
                .fold(next_liveness, Instant::min)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.wake.notified() => {}
        }
        let now = Instant::now();
        shared.take_pokes(now);
        let actions = shared.poll(now, origin);
        // After the poll: groups whose metrics moved were woken by it, and are not listed.
        if now >= next_liveness {
            next_liveness = now + shared.timing.heartbeat;
            shared.send_liveness(now);
        }
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

/// Watches the metrics of a group this node leads quiesced at `mark` and pokes the scheduler
/// once they leave it (or the raft stops): openraft publishes metrics whenever its core
/// handled anything, so a vote, a proposal, a membership change or a transfer all show here.
fn watch_quiesced(
    shared: &Arc<Shared>,
    key: u64,
    mut rx: WatchReceiverOf<PartitionTypes, RaftMetrics<PartitionTypes>>,
    mark: Mark,
) -> WatchTask {
    let poke = Poke {
        shared: Arc::downgrade(shared),
        key,
    };
    let task = tokio::spawn(async move {
        loop {
            if !mark.holds(&rx.borrow_and_update()) {
                break;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        poke.fire();
    });
    WatchTask(task.abort_handle())
}

impl Shared {
    /// Wakes quiesced groups a follower asked for: they heartbeat at once.
    fn wake_groups(&self, ids: &[PartitionId]) {
        let now = Instant::now();
        let mut woke = false;
        {
            let mut st = self.state.lock();
            for id in ids {
                let Some(key) = st.keys.get(id).copied() else {
                    continue;
                };
                let Some(e) = st.entries.get_mut(&key) else {
                    continue;
                };
                if e.unquiesce() {
                    debug!(node = self.me, group = %id, "follower asked to wake the group");
                    e.next_heartbeat = Some(now);
                    st.changed.insert(key);
                    st.arm(key, now);
                    woke = true;
                }
            }
        }
        if woke {
            self.wake.notify_one();
        }
    }

    /// Arms the poked groups for `now` (a parked one is handed back, and not parked again
    /// for an `election_max`), and the groups parked on a stamp gone stale.
    fn take_pokes(&self, now: Instant) {
        let pokes = std::mem::take(&mut *self.pokes.lock());
        let stale_after = self.timing.stale_after();
        let mut st = self.state.lock();
        for key in pokes {
            let Some(e) = st.entries.get_mut(&key) else {
                continue;
            };
            if e.parked.is_some() {
                e.park_after = Some(now + self.timing.election_max);
                st.unpark(key);
            }
            st.arm(key, now);
        }
        if st.next_stale(stale_after).is_none_or(|t| t > now) {
            return;
        }
        let stale: Vec<usize> = st
            .parked
            .iter()
            .filter(|(_, p)| p.stamp.get() + stale_after <= now)
            .map(|(k, _)| *k)
            .collect();
        for sk in stale {
            let Some(p) = st.parked.remove(&sk) else {
                continue;
            };
            debug!(
                node = self.me,
                groups = p.keys.len(),
                "a leader node's liveness stamp went stale: its followers are looked at again"
            );
            for key in p.keys {
                if let Some(e) = st.entries.get_mut(&key) {
                    e.parked = None;
                    e.clock.forget_park();
                }
                st.arm(key, now);
            }
        }
    }

    /// Evaluates every group due by `now`, re-arms or parks it, and returns what to trigger.
    fn poll(self: &Arc<Self>, now: Instant, origin: Instant) -> Vec<(PartitionRaft, Action)> {
        let t = self.timing;
        let mut out = Vec::new();
        let mut st = self.state.lock();
        let State {
            entries,
            heap,
            rng,
            parked,
            changed,
            ..
        } = &mut *st;
        while let Some(Reverse((due, _))) = heap.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, key))) = heap.pop() else {
                break;
            };
            let Some(e) = entries.get_mut(&key) else {
                continue;
            };
            if e.due != Some(due) {
                continue;
            }
            let before = e.quiesced_gen();
            let (action, next, may_park) = step(e, self.me, self.quiesce, now, &t, rng);
            if let Some(a) = action {
                out.push((e.raft.clone(), a));
            }
            if e.quiesced_gen() != before {
                changed.insert(key);
                if let Quiet::Quiesced(mark) = &e.quiet {
                    e.watch = Some(watch_quiesced(self, key, e.metrics.clone(), mark.clone()));
                }
            }
            if may_park && e.park_after.is_none_or(|a| now >= a) {
                e.park_after = None;
                let poke = Poke {
                    shared: Arc::downgrade(self),
                    key,
                };
                if let Some(stamp) = e.clock.park(poke, t.stale_after()) {
                    let sk = stamp_key(&stamp);
                    parked
                        .entry(sk)
                        .or_insert_with(|| Parked {
                            stamp,
                            keys: HashSet::new(),
                        })
                        .keys
                        .insert(key);
                    e.parked = Some(sk);
                    e.due = None;
                    continue;
                }
            }
            let next = round_up(next.max(now + t.resolution), origin, t.resolution);
            e.due = Some(next);
            heap.push(Reverse((next, key)));
        }
        out
    }
}

/// One group's rule (see the module docs): what to trigger now, when to look again, and
/// whether it may park instead (rule 5; the caller checks its quiet mark).
fn step(
    e: &mut Entry,
    me: NodeId,
    quiesce: bool,
    now: Instant,
    t: &Timing,
    rng: &mut Rng,
) -> (Option<Action>, Instant, bool) {
    let v = e.view(me);
    // Led at its last look: heartbeating (`next_heartbeat` set) or quiesced (no heartbeats
    // due, so `next_heartbeat` is unset; only a leader quiesces a group).
    let mut was_leading = e.next_heartbeat.is_some();
    if v.state != ServerState::Leader {
        was_leading |= e.unquiesce();
    }
    match v.state {
        ServerState::Leader => {
            if !v.others {
                e.next_heartbeat = None;
                e.unquiesce();
                return (None, now + ALONE_RECHECK, false);
            }
            if let Quiet::Quiesced(mark) = &e.quiet {
                if e.still_quiet(mark) {
                    // Its metrics watch pokes it when they change.
                    return (None, now + QUIESCED_RECHECK, false);
                }
                // Woken (a proposal, a new term or membership): beat at once.
                e.unquiesce();
                e.next_heartbeat = Some(now);
            }
            // A new leader replicates its first entry at once; the first beat can wait.
            let at = *e.next_heartbeat.get_or_insert(now + t.heartbeat);
            if now >= at {
                if let Some(mark) = quiesce.then(|| e.idle_mark(me, t.election_min)).flatten() {
                    let idle = match &e.quiet {
                        Quiet::Active {
                            idle,
                            mark: Some(m),
                        } if *m == mark => idle + 1,
                        _ => 1,
                    };
                    if idle >= QUIESCE_AFTER {
                        debug!(node = me, term = mark.term, "group quiesced");
                        e.quiet = Quiet::Quiesced(mark);
                        e.quiet_gen = QUIET_GEN.fetch_add(1, Ordering::Relaxed);
                        e.clock.quiesced.store(true, Ordering::Relaxed);
                        e.next_heartbeat = None;
                        return (None, now + t.heartbeat, false);
                    }
                    e.quiet = Quiet::Active {
                        idle,
                        mark: Some(mark),
                    };
                } else {
                    e.quiet = Quiet::ACTIVE;
                }
                let next = now + t.heartbeat;
                e.next_heartbeat = Some(next);
                return (Some(Action::Heartbeat), next, false);
            }
            (None, at, false)
        }
        ServerState::Follower | ServerState::Candidate if v.voter => {
            e.next_heartbeat = None;
            if was_leading {
                // Just lost leadership (also a quiesced one, e.g. by a transfer): count it as
                // contact, the new leader is about to call. Electing at once instead would
                // disrupt the very transfer that deposed it.
                e.last_attempt = Some(now);
            }
            if e.clock.catch_up.holds() {
                // Restarted unclean under a lazy policy: not an up-to-date candidate until a
                // leader caught it up (`crate::partition::unclean`).
                return (None, now + t.heartbeat, false);
            }
            if v.alone {
                // A lone voter's pre-vote grants itself: elect at once, and leave a running
                // campaign (waiting for its vote to be saved) alone for an election timeout.
                let busy = v.state == ServerState::Candidate
                    && e.last_attempt.is_some_and(|a| now < a + t.election_max);
                if busy {
                    return (None, now + t.heartbeat, false);
                }
                e.last_attempt = Some(now);
                return (Some(Action::Elect), now + t.heartbeat, false);
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
                return (Some(Action::Elect), now + t.heartbeat.min(e.timeout), false);
            }
            // A follower (not a candidate: a campaign it won must start heartbeating soon)
            // that follows its leader may park on that leader node's liveness stamp (rule 5):
            // its deadline `due` lies at least `stale_after` after that stamp, and it is back
            // on the heap when the stamp goes stale. If it may not park, while its leader's
            // beats keep it quiet it is looked at every minimum election timeout instead of
            // every heartbeat (rule 4), and armed for its deadline anyway.
            let follows = v.state == ServerState::Follower && v.following;
            let look = if follows && e.clock.quiet_lease_runs() {
                t.election_min
            } else {
                t.heartbeat
            };
            (None, due.min(now + look), follows)
        }
        _ => {
            e.next_heartbeat = None;
            let learns = v.state == ServerState::Learner && v.following;
            (None, now + t.heartbeat, learns)
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
    fn timing_resolution_is_bounded() {
        let mut t = GroupTimings::partition_defaults();
        assert_eq!(Timing::of(&t).resolution, Duration::from_millis(25));
        t.heartbeat_interval_ms = 10;
        assert_eq!(Timing::of(&t).resolution, Duration::from_millis(5));
        t.heartbeat_interval_ms = 10_000;
        assert_eq!(Timing::of(&t).resolution, Duration::from_millis(50));
    }
}
