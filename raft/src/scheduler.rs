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
//!    well before any follower's timeout; a follower (not a candidate) of a quiesced group
//!    that follows its leader (its quiet lease runs, see `GroupClock::quiet_lease_runs`) at
//!    least every minimum election timeout instead,
//!    still well inside its followers' lease (`election_timeout_max`) should it win an election
//!    it did not ask for (a leadership transfer), and armed for its own election deadline.
//! 5. Learners and stopped groups: nothing.
//! 6. A voter holding after an unclean restart (`crate::partition::unclean`): no election
//!    until it caught up (or the hold expired); checked before rules 3 and 4.
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
//!   acknowledgements), so an unchanged idle set costs a few bytes and no per-group work but
//!   the leader's re-check below. One beat per peer is in flight at a time; a lost or refused
//!   one makes the next one full.
//! - A quiesced group wakes (heartbeats resume at once) when its leader sees the term, the last
//!   log index, the membership or the leadership change (a proposal, a membership change, a
//!   transfer or a vote), when a follower asks for it, when a member asks it for a pre-vote,
//!   and when its raft stops. Every quiesced group is re-checked just before every liveness
//!   beat, so a beat never lists a group this node no longer leads. A proposal first wakes its
//!   group and waits for a heartbeat quorum (`PartitionGroup::ensure_awake`): openraft refuses
//!   writes on a leader whose lease ran out, as a quiesced leader's does.
//! - When a leader's node dies or is cut off, its liveness beats stop, its followers' clocks go
//!   stale, and rule 4 elects as before: fail-over keeps its bounds.
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
//! - A group is scheduled from [`Scheduler::register`] until [`Scheduler::unregister`]; a
//!   stale heap slot (the group was re-armed or removed) is skipped, never acted on.
//! - A group is quiesced only on its leader; a liveness beat lists only groups the sender leads
//!   quiesced, checked against the group's metrics just before the beat is built.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
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
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::config::GroupTimings;
use crate::partition::unclean::CatchUp;
use crate::transport::liveness::LivenessBeat;
use crate::transport::liveness::LivenessReply;
use crate::transport::liveness::QuietAnswer;
use crate::transport::liveness::QuietGroup;
use crate::transport::Router;
use crate::types::NodeId;
use crate::types::PartitionId;
use crate::types::PartitionRaft;
use crate::types::PartitionTypes;

/// How long a single-voter leader is left alone before it is looked at again.
pub(crate) const ALONE_RECHECK: Duration = Duration::from_secs(30);

/// How often a quiesced led group is looked at besides the liveness round (which re-checks
/// every quiesced group every heartbeat interval anyway).
pub(crate) const QUIESCED_RECHECK: Duration = Duration::from_secs(30);

/// Consecutive heartbeat deadlines at which a led group must look idle (and unchanged) before
/// it is quiesced.
pub(crate) const QUIESCE_AFTER: u32 = 3;

/// A time shared by many groups: when a peer's last liveness beat arrived (on a follower), or
/// when the last beat a peer acknowledged was sent (on a leader). One stamp per peer stands in
/// for a stamp per group and beat (see `crate::transport::liveness`, delta beats).
#[derive(Debug)]
pub(crate) struct Stamp(Mutex<Instant>);

impl Stamp {
    /// A stamp at `at`.
    pub(crate) fn new(at: Instant) -> Self {
        Self(Mutex::new(at))
    }

    /// Moves the stamp to `at` (never back).
    pub(crate) fn set(&self, at: Instant) {
        let mut t = self.0.lock();
        if at > *t {
            *t = at;
        }
    }

    /// The stamped time.
    pub(crate) fn get(&self) -> Instant {
        *self.0.lock()
    }
}

/// The last time a group heard from its leader (or granted a vote). Shared between the group's
/// transport handler, which stamps it, and the scheduler, which reads it.
#[derive(Debug)]
pub(crate) struct GroupClock {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last contact.
    last_contact_ms: AtomicU64,
    /// Set while the group is listed quiesced by its leader's node: that node's liveness
    /// stamp, which counts as contact (cleared by any append-entries, snapshot or vote for the
    /// group, and when the leader's node stops listing it).
    quiet_via: Mutex<Option<Arc<Stamp>>>,
    /// openraft's leader lease (`election_timeout_max`): how long after the last liveness beat
    /// a quiesced follower refuses pre-votes.
    lease: Duration,
    /// On the leader: the scheduler holds the group quiesced (a proposal must wake it first,
    /// see [`GroupWaker`]).
    quiesced: AtomicBool,
    /// On the leader of a quiesced group: per follower that confirmed the group's state, the
    /// stamp of the last liveness beat that follower acknowledged. Stands in for openraft's
    /// heartbeat acknowledgements, which a quiesced group does not get, in the ISR rule.
    quiet_acks: Mutex<Vec<(NodeId, Arc<Stamp>)>>,
    /// Votes and elections held after an unclean restart under a lazy log sync policy
    /// (`crate::partition::unclean`): no election is triggered while it holds.
    pub(crate) catch_up: CatchUp,
}

impl GroupClock {
    /// A clock whose last contact is now; `lease` as in [`GroupClock::quiet_lease_runs`].
    pub(crate) fn new(lease: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            quiet_via: Mutex::new(None),
            lease,
            quiesced: AtomicBool::new(false),
            quiet_acks: Mutex::new(Vec::new()),
            catch_up: CatchUp::default(),
        }
    }

    /// Whether this node's scheduler holds the group quiesced (it leads it).
    pub(crate) fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::Relaxed)
    }

    /// Records that `follower` confirmed the group's state in a liveness beat; from now on
    /// every beat it acknowledges moves `acked` (until the group wakes or `follower` stops
    /// confirming it, [`GroupClock::forget_quiet_ack`]).
    pub(crate) fn record_quiet_ack(&self, follower: NodeId, acked: &Arc<Stamp>) {
        let mut acks = self.quiet_acks.lock();
        match acks.iter_mut().find(|(id, _)| *id == follower) {
            Some((_, s)) => *s = acked.clone(),
            None => acks.push((follower, acked.clone())),
        }
    }

    /// `follower` no longer confirms the group's state.
    pub(crate) fn forget_quiet_ack(&self, follower: NodeId) {
        self.quiet_acks.lock().retain(|(id, _)| *id != follower);
    }

    /// How long ago the last liveness beat `follower` confirmed for the group was sent.
    pub(crate) fn quiet_ack_age(&self, follower: NodeId) -> Option<Duration> {
        self.quiet_acks
            .lock()
            .iter()
            .find(|(id, _)| *id == follower)
            .map(|(_, s)| s.get().elapsed())
    }

    /// Records a liveness beat of the leader's node that lists the group quiesced: contact
    /// now, and every later beat of that node (stamped on `via`) counts as contact too.
    pub(crate) fn touch_quiet(&self, via: &Arc<Stamp>) {
        self.touch();
        *self.quiet_via.lock() = Some(via.clone());
    }

    /// The leader's node stopped listing the group quiesced (its beat `via` said so): its last
    /// beat was the last contact through it.
    pub(crate) fn unquiet_from(&self, via: &Arc<Stamp>) {
        let mut q = self.quiet_via.lock();
        if q.as_ref().is_some_and(|s| Arc::ptr_eq(s, via)) {
            let at = via.get();
            *q = None;
            drop(q);
            self.touch_at(at);
        }
    }

    /// Records that the group's leader sent it raft traffic (it is not quiesced, or woke).
    pub(crate) fn wake(&self) {
        let via = self.quiet_via.lock().take();
        if let Some(via) = via {
            self.touch_at(via.get());
        }
    }

    /// Whether the group is quiesced under a leader whose node's liveness beat listed it within
    /// the lease: the same window in which openraft's own lease (renewed by heartbeats, which
    /// a quiesced group does not get) makes a follower refuse votes.
    pub(crate) fn quiet_lease_runs(&self) -> bool {
        let via = self.quiet_via.lock().as_ref().map(|s| s.get());
        via.is_some_and(|at| self.last_contact().max(at).elapsed() < self.lease)
    }

    /// Records contact from the group's leader (or a granted vote) now.
    pub(crate) fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_contact_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The last contact: the latest of the stamped contacts and, while the group is listed
    /// quiesced, its leader node's last liveness beat.
    pub(crate) fn last_contact(&self) -> Instant {
        let own = self.epoch + Duration::from_millis(self.last_contact_ms.load(Ordering::Relaxed));
        match self.quiet_via.lock().as_ref() {
            Some(via) => own.max(via.get()),
            None => own,
        }
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
    id: PartitionId,
    raft: PartitionRaft,
    clock: Arc<GroupClock>,
    server: WatchReceiverOf<PartitionTypes, RaftServerMetrics<PartitionTypes>>,
    metrics: WatchReceiverOf<PartitionTypes, RaftMetrics<PartitionTypes>>,
    /// Whether (and how long) the group has been idle, while this node leads it.
    quiet: Quiet,
    /// The deadline this entry is armed for (a heap slot with another time is stale).
    due: Instant,
    /// Next heartbeat, while leader.
    next_heartbeat: Option<Instant>,
    /// Last election this scheduler triggered (or loss of leadership), whichever is later.
    last_attempt: Option<Instant>,
    /// The current sample of the election timeout, `[min, max)`.
    timeout: Duration,
    /// Which quiescence of the group this is (a fresh number each time it quiesces), so a
    /// group that woke and quiesced again at the same term and index is listed anew.
    quiet_gen: u64,
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
        was
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
    rng: Rng,
}

struct Shared {
    me: NodeId,
    timing: Timing,
    /// Quiesce idle led groups (`RaftConfig::quiesce_partition_groups`).
    quiesce: bool,
    /// Sends liveness beats to peers.
    router: Router,
    state: Mutex<State>,
    /// Wakes the task when a group is registered (its first deadline may be the earliest).
    wake: Notify,
    /// This scheduler's liveness session (random per start, see `crate::transport::liveness`).
    session: u64,
    /// What was sent to each peer in liveness beats. Lock order: `state` before `beats`.
    beats: Mutex<Beats>,
}

/// The sending side of liveness beats (delta beats, see `crate::transport::liveness`).
#[derive(Default)]
struct Beats {
    /// Liveness rounds so far.
    round: u64,
    peers: HashMap<NodeId, PeerBeats>,
}

/// What a peer holds of this node's liveness beats.
struct PeerBeats {
    /// The number of the last beat sent.
    seq: u64,
    /// The peer acknowledged beat `seq` (so it holds `listed`); otherwise the next beat is
    /// full.
    synced: bool,
    /// A beat is on its way: the peer gets no other until it is answered.
    in_flight: bool,
    /// The groups the peer holds listed, by scheduler key.
    listed: HashMap<u64, Listed>,
    /// When the last beat the peer acknowledged was sent: the quiet acknowledgement of every
    /// group it confirmed (`GroupClock::record_quiet_ack`).
    acked: Arc<Stamp>,
}

/// A group listed to a peer.
struct Listed {
    id: PartitionId,
    term: u64,
    last_index: Option<u64>,
    gen: u64,
    /// The last round that found it still quiesced.
    round: u64,
}

/// A group added (or changed) in a beat.
struct Added {
    key: u64,
    gen: u64,
    group: QuietGroup,
    clock: Arc<GroupClock>,
}

impl PeerBeats {
    fn new(now: Instant) -> Self {
        Self {
            seq: 0,
            synced: false,
            in_flight: false,
            listed: HashMap::new(),
            acked: Arc::new(Stamp::new(now)),
        }
    }
}

/// One beat to build for a peer.
#[derive(Default)]
struct Plan {
    /// Groups listed this round (added or unchanged).
    listed: usize,
    added: Vec<Added>,
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
                rng: Rng(seed),
            }),
            wake: Notify::new(),
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
                st.entries.remove(&old);
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
                    due: now,
                    next_heartbeat: None,
                    last_attempt: None,
                    timeout,
                    quiet_gen: 0,
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
            st.entries.remove(&key);
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

    /// Stops the task and forgets every group.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        let mut st = self.shared.state.lock();
        st.entries.clear();
        st.keys.clear();
        st.heap.clear();
    }
}

async fn run(shared: Arc<Shared>) {
    let origin = Instant::now();
    let mut next_liveness = origin + shared.timing.heartbeat;
    loop {
        let next = shared.state.lock().heap.peek().map(|Reverse((t, _))| *t);
        let next = next.map_or(next_liveness, |t| t.min(next_liveness));
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.wake.notified() => {}
        }
        let now = Instant::now();
        if now >= next_liveness {
            next_liveness = now + shared.timing.heartbeat;
            shared.send_liveness(now);
        }
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
    /// Builds and sends this round's liveness beats: to each peer, the changes to the groups
    /// this node leads quiesced that it is a member of (see `crate::transport::liveness`). A
    /// group found changed is woken instead of listed.
    fn send_liveness(self: &Arc<Self>, now: Instant) {
        let mut plans: HashMap<NodeId, Plan> = HashMap::new();
        let mut woke = false;
        let round;
        {
            let mut st = self.state.lock();
            let mut beats = self.beats.lock();
            beats.round += 1;
            round = beats.round;
            let State { entries, heap, .. } = &mut *st;
            for (key, e) in entries.iter_mut() {
                let Quiet::Quiesced(mark) = &e.quiet else {
                    continue;
                };
                if !e.still_quiet(mark) {
                    e.unquiesce();
                    e.next_heartbeat = Some(now);
                    e.due = now;
                    heap.push(Reverse((now, *key)));
                    woke = true;
                    continue;
                }
                for f in &mark.followers {
                    let p = beats.peers.entry(*f).or_insert_with(|| PeerBeats::new(now));
                    if p.in_flight {
                        continue;
                    }
                    let plan = plans.entry(*f).or_default();
                    plan.listed += 1;
                    if p.synced {
                        if let Some(l) = p.listed.get_mut(key) {
                            if l.term == mark.term
                                && l.last_index == mark.last_index
                                && l.gen == e.quiet_gen
                            {
                                l.round = round;
                                continue;
                            }
                        }
                    }
                    plan.added.push(Added {
                        key: *key,
                        gen: e.quiet_gen,
                        group: QuietGroup {
                            id: e.id.clone(),
                            term: mark.term,
                            last_index: mark.last_index,
                        },
                        clock: e.clock.clone(),
                    });
                }
            }
            // Peers that list nothing this round but may hold groups: they hear that too.
            for (peer, p) in beats.peers.iter() {
                if !p.in_flight && (!p.listed.is_empty() || (!p.synced && p.seq > 0)) {
                    plans.entry(*peer).or_default();
                }
            }
        }
        if woke {
            self.wake.notify_one();
        }
        for (peer, plan) in plans {
            let beat = {
                let mut beats = self.beats.lock();
                let Some(p) = beats.peers.get_mut(&peer) else {
                    continue;
                };
                let full = !p.synced;
                let removed: Vec<(u64, PartitionId)> = if full {
                    Vec::new()
                } else {
                    p.listed
                        .iter()
                        .filter(|(_, l)| l.round != round)
                        .map(|(k, l)| (*k, l.id.clone()))
                        .collect()
                };
                if plan.listed == 0 && removed.is_empty() && !(full && p.seq > 0) {
                    continue;
                }
                p.seq += 1;
                p.in_flight = true;
                (p.seq, full, removed)
            };
            let (seq, full, removed) = beat;
            let shared = self.clone();
            tokio::spawn(async move {
                shared
                    .beat(peer, now, round, seq, full, plan.added, removed)
                    .await;
            });
        }
    }

    /// Sends one liveness beat to `peer` and records its answers (see `send_liveness`).
    #[allow(clippy::too_many_arguments)]
    async fn beat(
        self: &Arc<Self>,
        peer: NodeId,
        sent: Instant,
        round: u64,
        seq: u64,
        full: bool,
        added: Vec<Added>,
        removed: Vec<(u64, PartitionId)>,
    ) {
        let beat = LivenessBeat {
            from: self.me,
            session: self.session,
            seq,
            full,
            groups: added.iter().map(|a| a.group.clone()).collect(),
            removed: removed.iter().map(|(_, id)| id.clone()).collect(),
        };
        let reply = self
            .router
            .liveness(peer, &beat, self.timing.election_min)
            .await;
        let answers = match reply {
            Ok(LivenessReply::Applied(a)) if a.len() == added.len() => Some(a),
            Ok(LivenessReply::Applied(a)) => {
                let (got, sent) = (a.len(), added.len());
                debug!(node = self.me, peer, got, sent, "malformed liveness reply");
                None
            }
            Ok(LivenessReply::Resync) => {
                debug!(node = self.me, peer, "peer asks for a full liveness beat");
                None
            }
            // The peer is down or cut off: its groups' elections are its business.
            Err(e) => {
                debug!(node = self.me, peer, error = %e, "liveness beat failed");
                None
            }
        };
        let mut wake = Vec::new();
        {
            let mut beats = self.beats.lock();
            let Some(p) = beats.peers.get_mut(&peer) else {
                return;
            };
            p.in_flight = false;
            let Some(answers) = answers else {
                // Whether the peer applied it is unknown: the next beat is full.
                p.synced = false;
                return;
            };
            p.synced = true;
            if full {
                p.listed.clear();
            }
            for (key, _) in &removed {
                p.listed.remove(key);
            }
            for (a, answer) in added.into_iter().zip(answers) {
                match answer {
                    QuietAnswer::Follows => a.clock.record_quiet_ack(peer, &p.acked),
                    QuietAnswer::Wake => {
                        a.clock.forget_quiet_ack(peer);
                        wake.push(a.group.id.clone());
                    }
                    QuietAnswer::NotHosted => a.clock.forget_quiet_ack(peer),
                }
                p.listed.insert(
                    a.key,
                    Listed {
                        id: a.group.id,
                        term: a.group.term,
                        last_index: a.group.last_index,
                        gen: a.gen,
                        round,
                    },
                );
            }
            p.acked.set(sent);
        }
        if !wake.is_empty() {
            self.wake_groups(&wake);
        }
    }

    /// Wakes quiesced groups a follower asked for: they heartbeat at once.
    fn wake_groups(&self, ids: &[PartitionId]) {
        let now = Instant::now();
        let mut woke = false;
        {
            let mut st = self.state.lock();
            let State {
                entries,
                keys,
                heap,
                ..
            } = &mut *st;
            for id in ids {
                let Some(key) = keys.get(id) else {
                    continue;
                };
                if let Some(e) = entries.get_mut(key) {
                    if e.unquiesce() {
                        debug!(node = self.me, group = %id, "follower asked to wake the group");
                        e.next_heartbeat = Some(now);
                        e.due = now;
                        heap.push(Reverse((now, *key)));
                        woke = true;
                    }
                }
            }
        }
        if woke {
            self.wake.notify_one();
        }
    }

    /// Evaluates every group due by `now`, re-arms it, and returns what to trigger.
    fn poll(&self, now: Instant, origin: Instant) -> Vec<(PartitionRaft, Action)> {
        let t = self.timing;
        let mut out = Vec::new();
        let mut st = self.state.lock();
        let State {
            entries, heap, rng, ..
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
            if e.due != due {
                continue;
            }
            let (action, next) = step(e, self.me, self.quiesce, now, &t, rng);
            if let Some(a) = action {
                out.push((e.raft.clone(), a));
            }
            let next = round_up(next.max(now + t.resolution), origin, t.resolution);
            e.due = next;
            heap.push(Reverse((next, key)));
        }
        out
    }
}

/// One group's rule (see the module docs): what to trigger now and when to look again.
fn step(
    e: &mut Entry,
    me: NodeId,
    quiesce: bool,
    now: Instant,
    t: &Timing,
    rng: &mut Rng,
) -> (Option<Action>, Instant) {
    let v = e.view(me);
    if v.state != ServerState::Leader {
        e.unquiesce();
    }
    match v.state {
        ServerState::Leader => {
            if !v.others {
                e.next_heartbeat = None;
                e.unquiesce();
                return (None, now + ALONE_RECHECK);
            }
            if let Quiet::Quiesced(mark) = &e.quiet {
                if e.still_quiet(mark) {
                    // Every liveness round re-checks it (and wakes it if it changed).
                    return (None, now + QUIESCED_RECHECK);
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
                        return (None, now + t.heartbeat);
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
                return (Some(Action::Heartbeat), next);
            }
            (None, at)
        }
        ServerState::Follower | ServerState::Candidate if v.voter => {
            if e.next_heartbeat.take().is_some() {
                // Just lost leadership: count it as contact, the new leader is about to call.
                e.last_attempt = Some(now);
            }
            if e.clock.catch_up.holds() {
                // Restarted unclean under a lazy policy: not an up-to-date candidate until a
                // leader caught it up (`crate::partition::unclean`).
                return (None, now + t.heartbeat);
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
            // A follower (not a candidate: a campaign it won must start heartbeating soon)
            // that follows a leader whose liveness beats keep it quiet is looked at every
            // minimum election timeout instead of every heartbeat (rule 4): nothing but an
            // election is due for it, and it is armed for that deadline anyway.
            let look =
                if v.state == ServerState::Follower && v.following && e.clock.quiet_lease_runs() {
                    t.election_min
                } else {
                    t.heartbeat
                };
            (None, due.min(now + look))
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
        let c = GroupClock::new(Duration::from_secs(3));
        assert!(!c.quiet_lease_runs());
        let first = c.last_contact();
        c.touch();
        assert!(c.last_contact() >= first);
        let via = Arc::new(Stamp::new(Instant::now()));
        c.touch_quiet(&via);
        assert!(c.quiet_lease_runs());
        let later = Instant::now() + Duration::from_millis(50);
        via.set(later);
        assert_eq!(
            c.last_contact(),
            later,
            "the leader node's beats count as contact"
        );
        c.wake();
        assert!(!c.quiet_lease_runs());
        // Own contacts are kept in whole milliseconds.
        assert!(
            c.last_contact() + Duration::from_millis(1) > later,
            "the last beat stays counted after a wake"
        );
        c.touch_quiet(&via);
        c.unquiet_from(&Arc::new(Stamp::new(Instant::now())));
        assert!(c.quiet_lease_runs(), "another node's stamp leaves it alone");
        c.unquiet_from(&via);
        assert!(!c.quiet_lease_runs());
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
