//! Idempotent publish (beyond Liftbridge): a message that carries a producer id and a sequence
//! number in its headers is stored once, even when its producer retries it — after a timeout,
//! or on the new leader after a failover.
//!
//! Headers (set by the publisher, kept on the stored message):
//! - [`PRODUCER_ID`] (`drawbridge-producer-id`): any non-empty bytes naming the producer;
//! - [`PRODUCER_SEQ`] (`drawbridge-producer-seq`): the message's sequence number, ASCII decimal
//!   `u64`, increasing per producer and partition (gaps allowed).
//!
//! Rule: a message whose sequence is not above the highest one stored for its producer is a
//! duplicate; it is not appended and is acknowledged with the offset of the stored message when
//! that is still known (otherwise -1), once that offset is committed.
//!
//! Window (the dedup guarantee holds inside it): the partition leader remembers the newest
//! [`MAX_PRODUCERS`] producers and, per producer, the offsets of its last [`RECENT_PER_PRODUCER`]
//! sequences. A new leader (failover, restart) rebuilds this state from the newest
//! [`REBUILD_SCAN`] messages of its log before it accepts publishes, so a retry is recognised
//! on any replica that has the original committed.
//!
//! Invariants: the state only ever describes messages that are in the log or in a batch this
//! ingest has proposed; if a proposal fails, ingest ends and the next one rebuilds from the log,
//! so a message whose append failed is accepted again on retry.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use drawbridge_storage::{Log, ReadLimits};

/// Header naming the producer.
pub const PRODUCER_ID: &str = "drawbridge-producer-id";
/// Header carrying the sequence number (ASCII decimal u64).
pub const PRODUCER_SEQ: &str = "drawbridge-producer-seq";
/// Producers remembered per partition (least recently seen forgotten first).
pub const MAX_PRODUCERS: usize = 10_000;
/// Sequence → offset pairs remembered per producer.
pub const RECENT_PER_PRODUCER: usize = 64;
/// Newest messages scanned when a leader rebuilds the state.
pub const REBUILD_SCAN: u64 = 100_000;

/// A message's producer identity, if it carries a valid one.
pub fn identity<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a Bytes)>,
) -> Option<(Bytes, u64)> {
    let (mut id, mut seq) = (None, None);
    for (k, v) in headers {
        if k == PRODUCER_ID {
            id = Some(v.clone());
        } else if k == PRODUCER_SEQ {
            seq = std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok();
        }
    }
    let id = id.filter(|i| !i.is_empty())?;
    Some((id, seq?))
}

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen: append it.
    New,
    /// Seen: do not append; the stored message's offset, if still known.
    Duplicate(Option<u64>),
}

#[derive(Debug, Default)]
struct Producer {
    last_seq: u64,
    recent: VecDeque<(u64, u64)>,
    /// Value of [`Dedup::clock`] when last seen (eviction order).
    seen: u64,
}

/// The per-partition dedup state of a leader's ingest.
#[derive(Debug, Default)]
pub struct Dedup {
    producers: HashMap<Bytes, Producer>,
    clock: u64,
}

impl Dedup {
    /// Rebuilds the state from the newest [`REBUILD_SCAN`] committed messages of `log`.
    pub fn rebuild(log: &Log) -> drawbridge_storage::Result<Self> {
        let mut d = Dedup::default();
        let end = log.high_watermark().map_or(0, |h| h + 1);
        let mut from = end.saturating_sub(REBUILD_SCAN).max(log.earliest_offset());
        while from < end {
            let records = match log.read(from, ReadLimits::records(4096)) {
                Ok(r) => r,
                // Retention removed the start meanwhile: go on from the oldest kept.
                Err(drawbridge_storage::StorageError::OffsetOutOfRange { earliest, .. }) => {
                    from = earliest;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for r in &records {
                if let Some((id, seq)) = identity(r.headers.iter().map(|(k, v)| (k.as_str(), v))) {
                    d.record(id, seq, r.offset);
                }
            }
        }
        Ok(d)
    }

    /// Classifies a message from `id` with sequence `seq`.
    pub fn check(&self, id: &Bytes, seq: u64) -> Verdict {
        match self.producers.get(id) {
            Some(p) if seq <= p.last_seq => Verdict::Duplicate(
                p.recent
                    .iter()
                    .rev()
                    .find(|(s, _)| *s == seq)
                    .map(|(_, o)| *o),
            ),
            _ => Verdict::New,
        }
    }

    /// Records that `id`'s message `seq` takes `offset` (call in offset order).
    pub fn record(&mut self, id: Bytes, seq: u64, offset: u64) {
        self.clock += 1;
        let clock = self.clock;
        if !self.producers.contains_key(&id) && self.producers.len() >= MAX_PRODUCERS {
            self.evict();
        }
        let p = self.producers.entry(id).or_default();
        p.last_seq = p.last_seq.max(seq);
        p.seen = clock;
        p.recent.push_back((seq, offset));
        if p.recent.len() > RECENT_PER_PRODUCER {
            p.recent.pop_front();
        }
    }

    /// Forgets the least recently seen tenth of the producers (amortised O(1) per record).
    fn evict(&mut self) {
        let mut seen: Vec<u64> = self.producers.values().map(|p| p.seen).collect();
        let k = (seen.len() / 10).max(1);
        let (_, cut, _) = seen.select_nth_unstable(k - 1);
        let cut = *cut;
        self.producers.retain(|_, p| p.seen > cut);
    }

    /// Producers remembered (tests, metrics).
    pub fn producers(&self) -> usize {
        self.producers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(id: &str, seq: &str) -> Vec<(String, Bytes)> {
        vec![
            (PRODUCER_ID.to_owned(), Bytes::from(id.to_owned())),
            (PRODUCER_SEQ.to_owned(), Bytes::from(seq.to_owned())),
        ]
    }

    fn ident(h: &[(String, Bytes)]) -> Option<(Bytes, u64)> {
        identity(h.iter().map(|(k, v)| (k.as_str(), v)))
    }

    #[test]
    fn identity_needs_both_headers_and_a_decimal_sequence() {
        assert_eq!(ident(&hdrs("p", "7")), Some((Bytes::from("p"), 7)));
        assert_eq!(ident(&hdrs("", "7")), None);
        assert_eq!(ident(&hdrs("p", "x")), None);
        assert_eq!(ident(&hdrs("p", "-1")), None);
        assert_eq!(ident(&hdrs("p", "7")[..1]), None);
    }

    #[test]
    fn duplicates_are_found_with_their_offsets() {
        let mut d = Dedup::default();
        let p = Bytes::from("p");
        assert_eq!(d.check(&p, 1), Verdict::New);
        d.record(p.clone(), 1, 10);
        d.record(p.clone(), 3, 11);
        assert_eq!(d.check(&p, 1), Verdict::Duplicate(Some(10)));
        assert_eq!(d.check(&p, 3), Verdict::Duplicate(Some(11)));
        // A gap below the highest sequence is a duplicate of nothing known.
        assert_eq!(d.check(&p, 2), Verdict::Duplicate(None));
        assert_eq!(d.check(&p, 4), Verdict::New);
        assert_eq!(d.check(&Bytes::from("q"), 1), Verdict::New);
        for s in 4..200 {
            d.record(p.clone(), s, 100 + s);
        }
        assert_eq!(
            d.check(&p, 1),
            Verdict::Duplicate(None),
            "beyond the recent window"
        );
        assert_eq!(d.check(&p, 199), Verdict::Duplicate(Some(299)));
    }

    #[test]
    fn producers_are_bounded() {
        let mut d = Dedup::default();
        for i in 0..(MAX_PRODUCERS + 5) {
            d.record(Bytes::from(format!("p{i}")), 1, i as u64);
        }
        assert!(d.producers() <= MAX_PRODUCERS);
        // The newest are kept.
        let newest = Bytes::from(format!("p{}", MAX_PRODUCERS + 4));
        assert_eq!(
            d.check(&newest, 1),
            Verdict::Duplicate(Some(MAX_PRODUCERS as u64 + 4))
        );
    }
}
