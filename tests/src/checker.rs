//! The fault suite's checker (issue 7): given what clients tried to publish, what was
//! acknowledged, and what every node holds, decide whether anything acknowledged was lost.
//!
//! The workload publishes unique values, each named by a [`ValueId`] (client id + counter,
//! encoded as `c<client>-<counter>`). A client records every attempt to publish a value
//! ([`Attempt`]); after the faults, the test reads every partition from its earliest offset on
//! every node and records the `(offset, value)` pairs ([`History::record_read`]). [`analyze`]
//! turns that [`History`] into a [`Report`]; [`check`] fails with the report on any violation.
//!
//! Violations, and where they come from:
//! 1. **Lost**: a value acknowledged (ack policy ALL) but missing from a node's read. Every
//!    node is read after it caught up, so an acknowledged value must be on all of them.
//! 2. **Misplaced**: the offset an ack named holds another value on some node (the ack lied
//!    about where the value went).
//! 3. **Duplicated**: a value read at more distinct offsets of one node's partition than the
//!    client sent it. At-least-once allows exactly one case of duplicates: an attempt whose
//!    outcome was unknown (error, timeout) may have been stored, and the client then retried,
//!    so a value may appear once per attempt that reached the server; a value acknowledged on
//!    its first attempt appears exactly once.
//! 4. **Divergent**: two nodes hold different values at one offset of a partition (compared up
//!    to their common length: a replica that is merely shorter is reported as lost instead).
//! 5. **Gaps / non-monotonic offsets**: a read that does not start at offset 0 (no retention
//!    is configured by the suite) or whose offsets are not 0, 1, 2, ... (a subscriber skipped
//!    an offset, or saw one twice / out of order).
//! 6. **Unexpected**: a value read that no client attempted (or that does not parse).
//!
//! Counts that are not violations: attempted, acknowledged, read (distinct attempted values
//! read on at least one node), unacknowledged values that were stored anyway (allowed: the
//! client did not learn the outcome), and tolerated retry duplicates.
//!
//! ```
//! use drawbridge_tests::checker::{check, Attempt, History, ValueId};
//!
//! let mut h = History::new();
//! let a = ValueId::new(0, 0);
//! h.record_attempt(a, Attempt::Acked { partition: 0, offset: 0 });
//! h.record_read("node-0", 0, vec![(0, a.encode())]);
//! h.record_read("node-1", 0, vec![(0, a.encode())]);
//! let report = check(&h).expect("no violation");
//! assert_eq!(report.acknowledged, 1);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How many examples of each violation a report lists.
const SAMPLES: usize = 8;

/// The identity of one published value: which client, and its counter there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueId {
    /// The publishing client.
    pub client: u32,
    /// The client's counter for this value (unique per client).
    pub counter: u64,
}

impl ValueId {
    /// The value of `client`'s `counter`-th message.
    pub fn new(client: u32, counter: u64) -> Self {
        Self { client, counter }
    }

    /// The bytes published for this value: `c<client>-<counter>`.
    pub fn encode(&self) -> Vec<u8> {
        format!("c{}-{}", self.client, self.counter).into_bytes()
    }

    /// Parses [`ValueId::encode`]'s output; `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        let (client, counter) = s.strip_prefix('c')?.split_once('-')?;
        let client = client.parse().ok()?;
        let counter = counter.parse().ok()?;
        let id = Self { client, counter };
        // Reject non-canonical spellings ("c01-2"): they are not what a client sent.
        (id.encode() == bytes).then_some(id)
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}-{}", self.client, self.counter)
    }
}

/// The outcome of one attempt to publish a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The request never left the client (e.g. `send` failed before queueing): it cannot
    /// have been stored.
    NotSent,
    /// The request was sent and its outcome is unknown (error, timeout, stream reset): it may
    /// or may not have been stored.
    Unknown,
    /// The server acknowledged it at this partition and offset.
    Acked {
        /// Partition named by the ack.
        partition: i32,
        /// Offset named by the ack.
        offset: i64,
    },
}

/// What one replica holds: `(offset, value)` pairs in the order read.
pub type Records = Vec<(i64, Vec<u8>)>;

/// What a workload did and what the nodes hold: the checker's input.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every attempt per value, in order.
    attempts: BTreeMap<ValueId, Vec<Attempt>>,
    /// Per (node, partition): the `(offset, value)` pairs read from the earliest offset.
    reads: BTreeMap<(String, i32), Records>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one attempt to publish `value` (call once per attempt, in order).
    pub fn record_attempt(&mut self, value: ValueId, attempt: Attempt) {
        self.attempts.entry(value).or_default().push(attempt);
    }

    /// Records everything read from `partition` on `node`, from its earliest offset, in the
    /// order received. Replaces an earlier read of the same node and partition.
    pub fn record_read(&mut self, node: &str, partition: i32, records: Records) {
        self.reads.insert((node.to_owned(), partition), records);
    }

    /// Merges another history's attempts (e.g. one per publisher task) into this one.
    pub fn merge_attempts(&mut self, other: History) {
        for (value, attempts) in other.attempts {
            self.attempts.entry(value).or_default().extend(attempts);
        }
    }

    /// Number of values acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.attempts
            .values()
            .filter(|a| a.iter().any(|a| matches!(a, Attempt::Acked { .. })))
            .count()
    }
}

/// The checker's verdict: counts, and examples of each violation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Distinct values attempted.
    pub attempted: usize,
    /// Distinct values acknowledged.
    pub acknowledged: usize,
    /// Distinct attempted values read on at least one node.
    pub read: usize,
    /// Records read, per `node/partition`.
    pub records_per_replica: BTreeMap<String, usize>,
    /// Values never acknowledged but read (allowed: their outcome was unknown).
    pub unacknowledged_read: usize,
    /// Values read more than once on a replica within what retries allow (allowed).
    pub retry_duplicates: usize,
    /// Acknowledged values missing on at least one replica (violation 1).
    pub lost: usize,
    /// Acknowledged values whose acked offset holds another value somewhere (violation 2).
    pub misplaced: usize,
    /// Values read at more offsets of one replica than attempts allow (violation 3).
    pub duplicated: usize,
    /// Offsets at which two replicas of a partition disagree (violation 4).
    pub divergent: usize,
    /// Gaps, repeats and out-of-order offsets within one replica's read (violation 5).
    pub offset_errors: usize,
    /// Values read that no client attempted (violation 6).
    pub unexpected: usize,
    /// Examples of the violations, at most 8 per kind (`SAMPLES`).
    pub samples: Vec<String>,
}

impl Report {
    /// Whether any violation was found.
    pub fn has_violations(&self) -> bool {
        self.lost
            + self.misplaced
            + self.duplicated
            + self.divergent
            + self.offset_errors
            + self.unexpected
            > 0
    }

    /// One line of counts.
    pub fn counts(&self) -> String {
        format!(
            "attempted {} acknowledged {} read {} lost {} duplicated {} divergent {} \
             misplaced {} offset-errors {} unexpected {} (allowed: unacked-but-read {}, \
             retry-duplicates {})",
            self.attempted,
            self.acknowledged,
            self.read,
            self.lost,
            self.duplicated,
            self.divergent,
            self.misplaced,
            self.offset_errors,
            self.unexpected,
            self.unacknowledged_read,
            self.retry_duplicates
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "checker: {}", self.counts())?;
        let replicas: Vec<String> = self
            .records_per_replica
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        writeln!(f, "  records per replica: {}", replicas.join(" "))?;
        for s in &self.samples {
            writeln!(f, "  violation: {s}")?;
        }
        Ok(())
    }
}

/// [`check`] found a violation; the report says which.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub Box<Report>);

/// Collects samples per violation kind.
#[derive(Default)]
struct Samples {
    per_kind: BTreeMap<&'static str, usize>,
    out: Vec<String>,
}

impl Samples {
    fn add(&mut self, kind: &'static str, text: impl FnOnce() -> String) {
        let n = self.per_kind.entry(kind).or_default();
        *n += 1;
        if *n <= SAMPLES {
            self.out.push(format!("{kind}: {}", text()));
        }
    }
}

/// Checks offsets 0, 1, 2, ... of one replica's read; returns the number of errors.
fn offset_errors(replica: &str, records: &[(i64, Vec<u8>)], samples: &mut Samples) -> usize {
    let mut errors = 0;
    let mut expected = 0i64;
    for (i, (offset, _)) in records.iter().enumerate() {
        if *offset != expected {
            errors += 1;
            let kind = if *offset > expected {
                "gap"
            } else {
                "non-monotonic"
            };
            samples.add(kind, || {
                format!("{replica}: record {i} has offset {offset}, expected {expected}")
            });
        }
        expected = offset.saturating_add(1);
    }
    errors
}

/// Analyzes a history (see the module docs for what each count means). Never fails.
pub fn analyze(h: &History) -> Report {
    let mut r = Report::default();
    let mut samples = Samples::default();
    r.attempted = h.attempts.len();

    // Acks: value → [(partition, offset)]; allowed copies: attempts that reached the server.
    let mut acks: BTreeMap<ValueId, Vec<(i32, i64)>> = BTreeMap::new();
    let mut allowed: BTreeMap<ValueId, usize> = BTreeMap::new();
    for (value, attempts) in &h.attempts {
        for a in attempts {
            match a {
                Attempt::NotSent => {}
                Attempt::Unknown => *allowed.entry(*value).or_default() += 1,
                Attempt::Acked { partition, offset } => {
                    *allowed.entry(*value).or_default() += 1;
                    acks.entry(*value).or_default().push((*partition, *offset));
                }
            }
        }
    }
    r.acknowledged = acks.len();

    // Per replica: value → offsets; offset → value; offset errors; unexpected values.
    let mut read_anywhere: BTreeSet<ValueId> = BTreeSet::new();
    let mut lost: BTreeSet<ValueId> = BTreeSet::new();
    let mut misplaced: BTreeSet<ValueId> = BTreeSet::new();
    let mut duplicated: BTreeSet<ValueId> = BTreeSet::new();
    let mut retry_dups: BTreeSet<ValueId> = BTreeSet::new();
    // partition → offset → (node, value) of the first replica seen, for divergence.
    let mut by_offset: BTreeMap<i32, BTreeMap<i64, (String, &[u8])>> = BTreeMap::new();
    let mut divergent: BTreeSet<(i32, i64)> = BTreeSet::new();
    let partitions: BTreeSet<i32> = h.reads.keys().map(|(_, p)| *p).collect();
    let nodes: BTreeSet<&str> = h.reads.keys().map(|(n, _)| n.as_str()).collect();

    for ((node, partition), records) in &h.reads {
        let replica = format!("{node}/{partition}");
        r.records_per_replica.insert(replica.clone(), records.len());
        r.offset_errors += offset_errors(&replica, records, &mut samples);
        let mut offsets_of: BTreeMap<ValueId, BTreeSet<i64>> = BTreeMap::new();
        let mut value_at: BTreeMap<i64, &[u8]> = BTreeMap::new();
        for (offset, value) in records {
            value_at.entry(*offset).or_insert(value.as_slice());
            let seen = by_offset.entry(*partition).or_default();
            match seen.get(offset) {
                None => {
                    seen.insert(*offset, (node.clone(), value.as_slice()));
                }
                Some((other, v)) if *v != value.as_slice() && other != node => {
                    if divergent.insert((*partition, *offset)) {
                        let (other, v) = (other.clone(), v.to_vec());
                        samples.add("divergent", || {
                            format!(
                                "partition {partition} offset {offset}: {other} has {:?}, \
                                 {node} has {:?}",
                                String::from_utf8_lossy(&v),
                                String::from_utf8_lossy(value)
                            )
                        });
                    }
                }
                Some(_) => {}
            }
            match ValueId::parse(value).filter(|v| h.attempts.contains_key(v)) {
                Some(v) => {
                    read_anywhere.insert(v);
                    offsets_of.entry(v).or_default().insert(*offset);
                }
                None => {
                    r.unexpected += 1;
                    samples.add("unexpected", || {
                        format!(
                            "{replica} offset {offset}: {:?} was never attempted",
                            String::from_utf8_lossy(value)
                        )
                    });
                }
            }
        }
        for (value, offsets) in &offsets_of {
            if offsets.len() < 2 {
                continue;
            }
            let may = allowed.get(value).copied().unwrap_or(0).max(1);
            if offsets.len() > may {
                if duplicated.insert(*value) {
                    samples.add("duplicated", || {
                        format!(
                            "{value} at offsets {offsets:?} of {replica}, but only {may} \
                             attempt(s) reached the server ({:?})",
                            h.attempts.get(value)
                        )
                    });
                }
            } else {
                retry_dups.insert(*value);
            }
        }
        for (value, at) in &acks {
            for (p, o) in at {
                if p != partition {
                    continue;
                }
                if !offsets_of.contains_key(value) {
                    if lost.insert(*value) {
                        samples.add("lost", || {
                            format!(
                                "{value} acked at {p}/{o}, missing on {replica} (it holds \
                                 {} records)",
                                records.len()
                            )
                        });
                    }
                } else if let Some(held) = value_at.get(o).filter(|v| **v != value.encode()) {
                    if misplaced.insert(*value) {
                        let held = String::from_utf8_lossy(held).into_owned();
                        samples.add("misplaced", || {
                            format!("{value} acked at {p}/{o}, but {replica} holds {held:?} there")
                        });
                    }
                }
            }
        }
    }
    // A partition that some node was not read for counts every ack there as lost.
    for (value, at) in &acks {
        for (p, _) in at {
            let unread = !partitions.contains(p)
                || nodes
                    .iter()
                    .any(|n| !h.reads.contains_key(&(n.to_string(), *p)));
            if unread && lost.insert(*value) {
                samples.add("lost", || {
                    format!("{value} acked on partition {p}, which was not read on every node")
                });
            }
        }
    }

    r.read = read_anywhere.len();
    r.unacknowledged_read = read_anywhere
        .iter()
        .filter(|v| !acks.contains_key(v))
        .count();
    r.lost = lost.len();
    r.misplaced = misplaced.len();
    r.duplicated = duplicated.len();
    r.retry_duplicates = retry_dups.difference(&duplicated).count();
    r.divergent = divergent.len();
    r.samples = samples.out;
    r
}

/// Analyzes `h` and fails with the report when any violation was found.
pub fn check(h: &History) -> Result<Report, CheckFailed> {
    let report = analyze(h);
    if report.has_violations() {
        Err(CheckFailed(Box::new(report)))
    } else {
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(client: u32, counter: u64) -> ValueId {
        ValueId::new(client, counter)
    }

    fn acked(offset: i64) -> Attempt {
        Attempt::Acked {
            partition: 0,
            offset,
        }
    }

    fn log(values: &[ValueId]) -> Vec<(i64, Vec<u8>)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64, v.encode()))
            .collect()
    }

    /// Three values acked at 0..3 and read identically on three nodes.
    fn healthy() -> History {
        let mut h = History::new();
        for i in 0..3 {
            h.record_attempt(v(i % 2, u64::from(i)), acked(i64::from(i)));
        }
        let values = [v(0, 0), v(1, 1), v(0, 2)];
        for node in ["a", "b", "c"] {
            h.record_read(node, 0, log(&values));
        }
        h
    }

    #[test]
    fn value_ids_round_trip_and_reject_other_bytes() {
        let id = v(3, 42);
        assert_eq!(id.encode(), b"c3-42");
        assert_eq!(ValueId::parse(&id.encode()), Some(id));
        for bad in [
            &b"c3"[..],
            b"x3-1",
            b"c3-",
            b"c-1",
            b"c03-1",
            b"c3-1x",
            b"\xff",
        ] {
            assert_eq!(ValueId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_healthy_history_passes() {
        let report = check(&healthy()).expect("no violation");
        assert_eq!(report.attempted, 3);
        assert_eq!(report.acknowledged, 3);
        assert_eq!(report.read, 3);
        assert_eq!(report.records_per_replica.len(), 3);
        assert!(!report.has_violations());
        assert!(report.to_string().contains("lost 0"), "{report}");
    }

    #[test]
    fn an_acked_value_missing_on_one_node_is_lost() {
        let mut h = healthy();
        h.record_read("c", 0, log(&[v(0, 0), v(1, 1)]));
        let err = check(&h).expect_err("lost");
        assert_eq!(err.0.lost, 1);
        assert_eq!(err.0.divergent, 0, "a shorter replica does not diverge");
        assert!(err.to_string().contains("lost: c0-2"), "{err}");
    }

    #[test]
    fn an_unacked_value_may_be_missing_or_present() {
        let mut h = healthy();
        h.record_attempt(v(1, 3), Attempt::Unknown);
        h.record_attempt(v(1, 4), Attempt::Unknown);
        let values = [v(0, 0), v(1, 1), v(0, 2), v(1, 4)];
        for node in ["a", "b", "c"] {
            h.record_read(node, 0, log(&values));
        }
        let report = check(&h).expect("no violation");
        assert_eq!(report.attempted, 5);
        assert_eq!(report.read, 4);
        assert_eq!(report.unacknowledged_read, 1);
    }

    #[test]
    fn a_retried_value_may_appear_once_per_attempt_that_reached_the_server() {
        let mut h = healthy();
        h.record_attempt(v(1, 3), Attempt::Unknown);
        h.record_attempt(v(1, 3), acked(4));
        let values = [v(0, 0), v(1, 1), v(0, 2), v(1, 3), v(1, 3)];
        for node in ["a", "b", "c"] {
            h.record_read(node, 0, log(&values));
        }
        let report = check(&h).expect("a retry duplicate is allowed");
        assert_eq!(report.retry_duplicates, 1);
        assert_eq!(report.duplicated, 0);
    }

    #[test]
    fn a_value_acked_on_its_first_attempt_must_appear_once() {
        let mut h = healthy();
        let values = [v(0, 0), v(1, 1), v(0, 2), v(0, 0)];
        for node in ["a", "b", "c"] {
            h.record_read(node, 0, log(&values));
        }
        let err = check(&h).expect_err("duplicate");
        assert_eq!(err.0.duplicated, 1);
        assert!(err.to_string().contains("duplicated: c0-0"), "{err}");
    }

    #[test]
    fn an_attempt_that_was_never_sent_allows_no_copy() {
        let mut h = healthy();
        h.record_attempt(v(1, 3), Attempt::NotSent);
        h.record_attempt(v(1, 3), acked(3));
        let values = [v(0, 0), v(1, 1), v(0, 2), v(1, 3), v(1, 3)];
        for node in ["a", "b", "c"] {
            h.record_read(node, 0, log(&values));
        }
        let err = check(&h).expect_err("duplicate");
        assert_eq!(err.0.duplicated, 1);
    }

    #[test]
    fn two_values_at_one_offset_diverge() {
        let mut h = healthy();
        h.record_attempt(v(1, 3), Attempt::Unknown);
        h.record_attempt(v(0, 4), Attempt::Unknown);
        h.record_read("a", 0, log(&[v(0, 0), v(1, 1), v(0, 2), v(1, 3)]));
        h.record_read("b", 0, log(&[v(0, 0), v(1, 1), v(0, 2), v(0, 4)]));
        let err = check(&h).expect_err("divergence");
        assert_eq!(err.0.divergent, 1);
        assert_eq!(err.0.lost, 0);
        assert!(err.to_string().contains("offset 3"), "{err}");
    }

    #[test]
    fn an_ack_naming_an_offset_that_holds_another_value_is_misplaced() {
        let mut h = History::new();
        h.record_attempt(v(0, 0), acked(1));
        h.record_attempt(v(0, 1), Attempt::Unknown);
        for node in ["a", "b"] {
            h.record_read(node, 0, log(&[v(0, 0), v(0, 1)]));
        }
        let err = check(&h).expect_err("misplaced");
        assert_eq!(err.0.misplaced, 1);
        assert_eq!(err.0.lost, 0);
    }

    #[test]
    fn gaps_repeats_and_late_starts_are_offset_errors() {
        let mut h = healthy();
        let mut gap = log(&[v(0, 0), v(1, 1), v(0, 2)]);
        gap[2].0 = 3;
        h.record_read("a", 0, gap);
        let mut repeat = log(&[v(0, 0), v(1, 1), v(0, 2)]);
        repeat[2].0 = 1;
        h.record_read("b", 0, repeat);
        let late: Vec<(i64, Vec<u8>)> = log(&[v(0, 0), v(1, 1), v(0, 2)])
            .into_iter()
            .map(|(o, val)| (o + 5, val))
            .collect();
        h.record_read("c", 0, late);
        let err = check(&h).expect_err("offset errors");
        assert_eq!(err.0.offset_errors, 3);
        let text = err.to_string();
        assert!(text.contains("gap: a/0"), "{text}");
        assert!(text.contains("non-monotonic: b/0"), "{text}");
        assert!(text.contains("gap: c/0: record 0 has offset 5"), "{text}");
    }

    #[test]
    fn a_value_nobody_attempted_is_unexpected() {
        let mut h = healthy();
        let mut records = log(&[v(0, 0), v(1, 1), v(0, 2)]);
        records.push((3, b"garbage".to_vec()));
        records.push((4, v(9, 9).encode()));
        h.record_read("a", 0, records);
        let err = check(&h).expect_err("unexpected");
        assert_eq!(err.0.unexpected, 2);
    }

    #[test]
    fn a_partition_not_read_on_every_node_loses_its_acks() {
        let mut h = healthy();
        h.record_attempt(
            v(0, 10),
            Attempt::Acked {
                partition: 1,
                offset: 0,
            },
        );
        h.record_read("a", 1, log(&[v(0, 10)]));
        let err = check(&h).expect_err("partition 1 not read on b and c");
        assert_eq!(err.0.lost, 1);
    }

    #[test]
    fn an_empty_history_passes_and_samples_are_capped() {
        assert!(check(&History::new()).is_ok());
        let mut h = History::new();
        let values: Vec<ValueId> = (0..20).map(|i| v(0, i)).collect();
        for (i, val) in values.iter().enumerate() {
            h.record_attempt(*val, acked(i as i64));
        }
        h.record_read("a", 0, log(&values));
        h.record_read("b", 0, Vec::new());
        let err = check(&h).expect_err("everything lost on b");
        assert_eq!(err.0.lost, 20);
        assert_eq!(err.0.samples.len(), SAMPLES);
    }

    #[test]
    fn merged_attempts_keep_their_order() {
        let mut a = History::new();
        a.record_attempt(v(0, 0), Attempt::Unknown);
        let mut b = History::new();
        b.record_attempt(v(0, 0), acked(0));
        a.merge_attempts(b);
        assert_eq!(a.acknowledged(), 1);
        a.record_read("a", 0, log(&[v(0, 0)]));
        assert!(check(&a).is_ok());
    }
}
