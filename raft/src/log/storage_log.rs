//! The partition groups' raft log backend: a [`drawbridge_storage::Log`], which is at the same
//! time the partition's message log (what the server reads records from).
//!
//! Mapping (one raft entry = one stored batch):
//! - `Normal(req)` → a [`BatchKind::Data`] batch whose body is `req.records` (a record set; an
//!   invalid body is refused by the storage log, so the append fails). The proposer's `tag` is
//!   not stored (it is only meaningful to the proposer's append hook).
//! - `Blank` → a [`BatchKind::RaftBlank`] batch with an empty body.
//! - `Membership(m)` → a [`BatchKind::RaftMembership`] batch whose body is the postcard-encoded
//!   membership.
//!
//! Control batches take no offsets, so offsets are dense over data entries only.
//!
//! Reads put each data batch's base offset (as assigned by the storage log) into
//! [`PartitionRequest::base_offset`], so the state machine takes offsets from the log instead of
//! computing them.

use std::io;

use bytes::Bytes;
use drawbridge_storage::BatchKind;
use drawbridge_storage::BatchMeta;
use drawbridge_storage::Log;
use drawbridge_storage::StoredBatch;
use openraft::alias::LogIdOf;
use openraft::entry::RaftEntry;
use openraft::vote::leader_id_std::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::RaftTypeConfig;

use super::backend::LogBackend;
use super::flusher::SyncTarget;
use crate::codec;
use crate::partition::PartitionRequest;
use crate::types::PartitionTypes;

type PEntry = <PartitionTypes as RaftTypeConfig>::Entry;

/// A partition group's raft log, stored in its `drawbridge_storage::Log`.
#[derive(Debug, Clone)]
pub(crate) struct StorageLog {
    log: Log,
}

fn sio(e: drawbridge_storage::StorageError) -> io::Error {
    e.into_io()
}

fn log_id(term: u64, index: u64) -> LogIdOf<PartitionTypes> {
    LogIdOf::<PartitionTypes>::new(CommittedLeaderId::new(term), index)
}

impl StorageLog {
    /// Wraps an open storage log.
    pub(crate) fn new(log: Log) -> Self {
        Self { log }
    }

    fn encode(e: &PEntry) -> io::Result<(BatchMeta, Bytes)> {
        let (kind, body) = match &e.payload {
            EntryPayload::Blank => (BatchKind::RaftBlank, Bytes::new()),
            EntryPayload::Normal(req) => (BatchKind::Data, req.records.clone()),
            EntryPayload::Membership(m) => (
                BatchKind::RaftMembership,
                Bytes::from(codec::encode_io(&m)?),
            ),
        };
        Ok((
            BatchMeta {
                kind,
                raft_term: e.log_id.leader_id.term,
                raft_index: e.log_id.index,
            },
            body,
        ))
    }

    fn decode(b: StoredBatch) -> io::Result<PEntry> {
        let log_id = log_id(b.meta.raft_term, b.meta.raft_index);
        Ok(match b.meta.kind {
            BatchKind::RaftBlank => PEntry::new_blank(log_id),
            BatchKind::RaftMembership => {
                PEntry::new_membership(log_id, codec::decode_io("raft membership entry", &b.body)?)
            }
            BatchKind::Data => PEntry::new_normal(
                log_id,
                PartitionRequest {
                    records: b.body,
                    record_count: b.offset_span,
                    tag: 0,
                    base_offset: Some(b.base_offset),
                },
            ),
            BatchKind::Control(code) => {
                return Err(io::Error::other(format!(
                    "unexpected control batch (code {code}) at raft index {}",
                    b.meta.raft_index
                )))
            }
        })
    }
}

impl SyncTarget for StorageLog {
    fn sync_now(&self) -> io::Result<()> {
        self.log.sync().map_err(sio)
    }
}

impl LogBackend<PartitionTypes> for StorageLog {
    fn append(&self, entries: Vec<PEntry>) -> io::Result<()> {
        let batches = entries
            .iter()
            .map(Self::encode)
            .collect::<io::Result<Vec<_>>>()?;
        self.log.append_all(&batches).map_err(sio)?;
        Ok(())
    }

    fn read(&self, start: u64, end: u64) -> io::Result<Vec<PEntry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.log
            .batches_by_raft_index(start..end)
            .map_err(sio)?
            .into_iter()
            .map(Self::decode)
            .collect()
    }

    fn last_log_id(&self) -> io::Result<Option<LogIdOf<PartitionTypes>>> {
        Ok(self.log.last_raft_entry().map(|(t, i)| log_id(t, i)))
    }

    fn truncate_after(&self, index: Option<u64>) -> io::Result<()> {
        self.log.truncate_after(index).map_err(sio)
    }

    fn purge_through(&self, log_id: &LogIdOf<PartitionTypes>) -> io::Result<()> {
        self.log.purge_through(log_id.index).map_err(sio)?;
        Ok(())
    }

    /// No: a failed segment append may leave a partial batch behind; a partition group that
    /// fails stops, and the server's supervisor reopens it from disk (recovery cuts the tail).
    fn retries_when_full(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_storage::LogConfig;
    use drawbridge_storage::Record;
    use openraft::Membership;

    fn records(n: usize) -> Bytes {
        let recs: Vec<Record> = (0..n)
            .map(|i| Record {
                timestamp: i as i64,
                key: None,
                headers: Vec::new(),
                value: Bytes::from(format!("v{i}")),
            })
            .collect();
        drawbridge_storage::encode_records(&recs).expect("encode")
    }

    fn normal(term: u64, index: u64, n: usize) -> PEntry {
        PEntry::new_normal(
            log_id(term, index),
            PartitionRequest {
                records: records(n),
                record_count: n as u32,
                tag: 7,
                base_offset: None,
            },
        )
    }

    #[test]
    fn entries_round_trip_with_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), LogConfig::default()).expect("open");
        let b = StorageLog::new(log.clone());
        let members = Membership::new_with_defaults(vec![[1u64, 2, 3].into()], []);
        b.append(vec![
            PEntry::new_blank(log_id(1, 1)),
            PEntry::new_membership(log_id(1, 2), members.clone()),
            normal(1, 3, 2),
            normal(2, 4, 3),
        ])
        .expect("append");
        let got = b.read(1, 10).expect("read");
        assert_eq!(got.len(), 4);
        assert!(matches!(got[0].payload, EntryPayload::Blank));
        assert!(matches!(&got[1].payload, EntryPayload::Membership(m) if *m == members));
        match (&got[2].payload, &got[3].payload) {
            (EntryPayload::Normal(a), EntryPayload::Normal(c)) => {
                assert_eq!((a.base_offset, a.record_count), (Some(0), 2));
                assert_eq!((c.base_offset, c.record_count), (Some(2), 3));
                assert_eq!(a.records, records(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(b.last_log_id().expect("last"), Some(log_id(2, 4)));
        assert_eq!(got[3].log_id(), log_id(2, 4));
        b.truncate_after(Some(3)).expect("truncate");
        assert_eq!(b.last_log_id().expect("last"), Some(log_id(1, 3)));
        assert_eq!(log.next_offset(), 2);
        // A normal entry whose body is not a record set is refused.
        let bad = PEntry::new_normal(
            log_id(2, 4),
            PartitionRequest {
                records: Bytes::from_static(b"not a record set"),
                record_count: 1,
                tag: 0,
                base_offset: None,
            },
        );
        assert!(b.append(vec![bad]).is_err());
        assert_eq!(b.last_log_id().expect("last"), Some(log_id(1, 3)));
    }
}
