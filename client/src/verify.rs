//! Replica consistency check: [`Client::verify_partitions`] compares, for every partition,
//! the records its replicas hold up to their common high watermark.
//!
//! How, per partition:
//! 1. ask every replica (Drawbridge's `drawbridge.admin.v1.Admin/ReplicaChecksum`, on the
//!    broker's client port) for its earliest offset and high watermark;
//! 2. the common range is `max(earliest) ..= min(high watermark)` over the replicas that
//!    answered: every replica has committed all of it, so healthy replicas hold identical
//!    records there;
//! 3. ask every replica for the checksum of that range and compare. For a stream with compaction
//!    enabled each server sums what compaction keeps (keyless records and each key's newest
//!    record in the range), so replicas that compacted at different times agree; run the check
//!    while no appends are in flight (see `drawbridge_storage::ChecksumMode::LatestPerKey`).
//!
//! A replica that does not answer makes the partition *incomplete* (not divergent): the check
//! says what it could not compare rather than passing silently. Only Drawbridge servers offer
//! the admin service; against Liftbridge every replica shows up as not answering.

use std::collections::BTreeMap;

use drawbridge_proto::admin::admin_client::AdminClient;
use drawbridge_proto::admin::{ReplicaChecksumRequest, ReplicaChecksumResponse};
use futures::future::join_all;

use crate::client::{with_timeout, Client};
use crate::error::{lost_connection, Call, Error, Result};

/// What one replica reported for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    /// The replica's broker id.
    pub server_id: String,
    /// Its earliest offset, high watermark (-1: nothing committed) and whether it leads, when it
    /// answered the first round.
    pub state: Option<ReplicaState>,
    /// `(records, checksum)` over the common range, when it was computed.
    pub sum: Option<(u64, u64)>,
    /// Why the replica could not be compared, if it could not.
    pub error: Option<String>,
}

/// A replica's offsets, as it reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    /// Earliest offset still stored.
    pub earliest_offset: i64,
    /// Last committed offset (-1: none).
    pub high_watermark: i64,
    /// Whether it leads the partition.
    pub leader: bool,
}

/// The verdict on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCheck {
    /// Stream name.
    pub stream: String,
    /// Partition id.
    pub partition: i32,
    /// The offsets compared (inclusive), `None` when the replicas have no committed offset in
    /// common (e.g. an empty partition).
    pub range: Option<(u64, u64)>,
    /// One report per replica in the metadata.
    pub replicas: Vec<ReplicaReport>,
}

impl PartitionCheck {
    /// Whether two replicas that were compared disagree.
    pub fn divergent(&self) -> bool {
        let mut sums = self.replicas.iter().filter_map(|r| r.sum);
        match sums.next() {
            Some(first) => sums.any(|s| s != first),
            None => false,
        }
    }

    /// Whether some replica could not be compared.
    pub fn incomplete(&self) -> bool {
        self.replicas.iter().any(|r| r.error.is_some())
    }
}

/// The verdict on every partition of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// One check per partition, by stream then partition.
    pub partitions: Vec<PartitionCheck>,
}

impl VerifyReport {
    /// The partitions whose replicas disagree.
    pub fn divergent(&self) -> Vec<&PartitionCheck> {
        self.partitions.iter().filter(|p| p.divergent()).collect()
    }

    /// The partitions where some replica could not be compared.
    pub fn incomplete(&self) -> Vec<&PartitionCheck> {
        self.partitions.iter().filter(|p| p.incomplete()).collect()
    }

    /// Records compared, summed over partitions (one replica's count each).
    pub fn records(&self) -> u64 {
        self.partitions
            .iter()
            .filter_map(|p| p.replicas.iter().find_map(|r| r.sum).map(|s| s.0))
            .sum()
    }
}

/// The offsets every replica that answered has committed: `max(earliest) ..= min(hw)`.
pub fn common_range(states: &[ReplicaState]) -> Option<(u64, u64)> {
    let from = states.iter().map(|s| s.earliest_offset).max()?;
    let to = states.iter().map(|s| s.high_watermark).min()?;
    let (from, to) = (u64::try_from(from).ok()?, u64::try_from(to).ok()?);
    (from <= to).then_some((from, to))
}

impl Client {
    /// Compares every partition's replicas up to their common high watermark (see the module
    /// docs). Errors only when the metadata cannot be fetched; unreachable replicas are
    /// reported in the result.
    pub async fn verify_partitions(&self) -> Result<VerifyReport> {
        let md = self.fetch_metadata().await?;
        let mut out = VerifyReport::default();
        for s in md.streams() {
            for p in s.partitions.values() {
                let addrs: BTreeMap<String, Option<String>> = p
                    .replicas
                    .iter()
                    .map(|r| (r.clone(), md.broker(r).map(|b| b.addr())))
                    .collect();
                out.partitions
                    .push(self.verify_partition(&s.name, p.id, addrs).await);
            }
        }
        Ok(out)
    }

    async fn verify_partition(
        &self,
        stream: &str,
        partition: i32,
        addrs: BTreeMap<String, Option<String>>,
    ) -> PartitionCheck {
        let ask = |addr: Option<String>, start: i64, end: i64| async move {
            let addr = addr.ok_or_else(|| "broker not in the metadata".to_owned())?;
            self.replica_checksum(&addr, stream, partition, start, end)
                .await
                .map_err(|e| e.to_string())
        };
        let first = join_all(addrs.values().map(|a| ask(a.clone(), 0, -1))).await;
        let mut replicas: Vec<ReplicaReport> = addrs
            .keys()
            .zip(first)
            .map(|(id, r)| ReplicaReport {
                server_id: id.clone(),
                state: r.as_ref().ok().map(|r| ReplicaState {
                    earliest_offset: r.earliest_offset,
                    high_watermark: r.high_watermark,
                    leader: r.leader,
                }),
                sum: None,
                error: r.err(),
            })
            .collect();
        let states: Vec<ReplicaState> = replicas.iter().filter_map(|r| r.state).collect();
        let range = common_range(&states);
        if let Some((from, to)) = range {
            let (from, to) = (
                i64::try_from(from).unwrap_or(i64::MAX),
                i64::try_from(to).unwrap_or(i64::MAX),
            );
            let second = join_all(
                replicas
                    .iter()
                    .map(|r| {
                        (
                            r.state.is_some(),
                            addrs.get(&r.server_id).cloned().flatten(),
                        )
                    })
                    .map(|(asked, a)| async move {
                        if asked {
                            Some(ask(a, from, to).await)
                        } else {
                            None
                        }
                    }),
            )
            .await;
            for (r, s) in replicas.iter_mut().zip(second) {
                match s {
                    Some(Ok(s)) => r.sum = Some((s.records, s.checksum)),
                    Some(Err(e)) => r.error = Some(e),
                    None => {}
                }
            }
        }
        PartitionCheck {
            stream: stream.to_owned(),
            partition,
            range,
            replicas,
        }
    }

    async fn replica_checksum(
        &self,
        addr: &str,
        stream: &str,
        partition: i32,
        start_offset: i64,
        end_offset: i64,
    ) -> Result<ReplicaChecksumResponse> {
        let mut admin = AdminClient::new(self.inner.pool.channel(addr)?);
        let req = ReplicaChecksumRequest {
            stream: stream.to_owned(),
            partition,
            start_offset,
            end_offset,
        };
        admin
            .replica_checksum(with_timeout(req, self.inner.config.request_timeout))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::from_status(Call::ReplicaChecksum, lost_connection(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(earliest: i64, hw: i64) -> ReplicaState {
        ReplicaState {
            earliest_offset: earliest,
            high_watermark: hw,
            leader: false,
        }
    }

    fn report(sum: Option<(u64, u64)>, error: bool) -> ReplicaReport {
        ReplicaReport {
            server_id: "a".into(),
            state: Some(st(0, 9)),
            sum,
            error: error.then(|| "down".to_owned()),
        }
    }

    #[test]
    fn the_common_range_is_what_every_replica_committed() {
        assert_eq!(
            common_range(&[st(0, 99), st(0, 120), st(10, 130)]),
            Some((10, 99))
        );
        assert_eq!(common_range(&[st(0, -1), st(0, 5)]), None);
        assert_eq!(common_range(&[st(6, 9), st(0, 5)]), None);
        assert_eq!(common_range(&[]), None);
    }

    #[test]
    fn replicas_diverge_when_two_sums_differ() {
        let check = |replicas| PartitionCheck {
            stream: "s".into(),
            partition: 0,
            range: Some((0, 9)),
            replicas,
        };
        let same = check(vec![
            report(Some((10, 1)), false),
            report(Some((10, 1)), false),
        ]);
        assert!(!same.divergent() && !same.incomplete());
        let differ = check(vec![
            report(Some((10, 1)), false),
            report(Some((10, 2)), false),
        ]);
        assert!(differ.divergent());
        let count = check(vec![
            report(Some((10, 1)), false),
            report(Some((9, 1)), false),
        ]);
        assert!(count.divergent());
        let missing = check(vec![report(Some((10, 1)), false), report(None, true)]);
        assert!(!missing.divergent() && missing.incomplete());
    }
}
