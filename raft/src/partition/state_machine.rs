//! The partition state machine: applied log id, membership, offsets, high watermark.
//!
//! Offsets are assigned by the partition's storage log (the raft log *is* that log): each
//! entry handed to `apply` is read back from it and carries its batch's base offset. Applying a
//! data entry publishes its last offset as the high watermark, both on a watch channel and on the
//! storage log ([`Log::set_high_watermark`]), which is what the server's readers are bounded by.
//!
//! Persistence model: like the metadata group, state is in memory and rebuilt on restart from the
//! persisted snapshot plus the log up to the saved committed id. The state is a handful of
//! integers, so snapshots are cheap and taken often.
//!
//! Invariants:
//! - The high watermark is published (watch channel) after the entry that moved it is applied,
//!   and only committed entries are applied: readers bounded by it never see an entry raft may
//!   still truncate.
//! - The high watermark never decreases within a run.
//! - Snapshot install keeps the storage log when it already holds the snapshot's last entry
//!   (same term), or starts right after it (purged through it); otherwise the log is reset to
//!   the snapshot's next offset, so the entries that follow get the offsets the leader gave them.
//! - `current` is the snapshot on disk: it changes only after the file was replaced. A
//!   snapshot built for retention or on openraft's schedule that finds the disk full is
//!   abandoned and the builder returns `current` (or an empty snapshot when there is none),
//!   which openraft ignores as not newer: nothing is purged, and retention's wait for a
//!   covering snapshot times out and is retried at its next pass. An installed snapshot and a
//!   forced rebuild (startup) wait for space instead (`crate::log::nospace`).

use std::io;
use std::path::Path;
use std::sync::Arc;

use drawbridge_storage::Log;
use futures::Stream;
use futures::StreamExt;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::SnapshotMeta;
use openraft::StoredMembership;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::types::Offsets;
use super::types::PartitionResponse;
use super::types::PartitionSnapshot;
use crate::log::meta_file;
use crate::log::snapshot_file::SnapshotFile;
use crate::types::PartitionTypes;

type Persisted = (SnapshotMetaOf<PartitionTypes>, PartitionSnapshot);

struct SmState {
    applied: Option<LogIdOf<PartitionTypes>>,
    membership: StoredMembershipOf<PartitionTypes>,
    data: PartitionSnapshot,
    current: Option<Persisted>,
}

/// The partition state machine. Cheap to clone; clones share state.
#[derive(Clone)]
pub(crate) struct PartitionStateMachine {
    inner: Arc<Mutex<SmState>>,
    /// The snapshot file; on a snapshot builder, it says what the snapshot does when the disk
    /// is full (a builder openraft forces must persist).
    snapshot: SnapshotFile,
    hw_tx: Arc<watch::Sender<Option<u64>>>,
    /// The partition's storage log (also the group's raft log).
    log: Log,
}

impl std::fmt::Debug for PartitionStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStateMachine")
            .field("snapshot", &self.snapshot.path())
            .finish()
    }
}

impl PartitionStateMachine {
    /// Opens the state machine and loads its persisted snapshot (installed later by openraft).
    pub(crate) fn open(snapshot_path: &Path, log: Log) -> io::Result<Self> {
        let current: Option<Persisted> =
            meta_file::load_framed(snapshot_path, "partition snapshot")?;
        if let Some((meta, snapshot)) = &current {
            // A crash between persisting an installed snapshot and resetting the log (or in
            // the middle of the reset) leaves a log that does not continue the snapshot: finish
            // the job before openraft reads the log state.
            align_log_to_snapshot(&log, meta.last_log_id, snapshot.next_offset)?;
        }
        let (hw_tx, _) = watch::channel(None);
        Ok(Self {
            inner: Arc::new(Mutex::new(SmState {
                applied: None,
                membership: StoredMembership::default(),
                data: PartitionSnapshot::default(),
                current,
            })),
            snapshot: SnapshotFile::new(snapshot_path, "partition snapshot"),
            hw_tx: Arc::new(hw_tx),
            log,
        })
    }

    /// The first raft index the group re-applies after a restart: the one after the persisted
    /// snapshot's last entry (0 without a snapshot). Entries from it on are read at open.
    pub(crate) fn restart_index(&self) -> u64 {
        self.inner
            .lock()
            .current
            .as_ref()
            .and_then(|(meta, _)| meta.last_log_id.as_ref())
            .map_or(0, |l| l.index.saturating_add(1))
    }

    /// The partition's storage log.
    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// Watches the high watermark (last committed offset, inclusive).
    pub(crate) fn watch_high_watermark(&self) -> watch::Receiver<Option<u64>> {
        self.hw_tx.subscribe()
    }

    /// The current high watermark.
    pub(crate) fn high_watermark(&self) -> Option<u64> {
        *self.hw_tx.borrow()
    }

    /// The applied raft index (0 before any).
    pub(crate) fn applied_index(&self) -> u64 {
        self.inner.lock().applied.as_ref().map_or(0, |l| l.index)
    }

    /// The next offset to assign.
    pub(crate) fn next_offset(&self) -> u64 {
        self.inner.lock().data.next_offset
    }

    fn publish(&self, hw: Option<u64>) -> io::Result<()> {
        self.hw_tx.send_if_modified(|cur| {
            if hw > *cur {
                *cur = hw;
                true
            } else {
                false
            }
        });
        if hw > self.log.high_watermark() {
            self.log.set_high_watermark(hw).map_err(|e| e.into_io())?;
        }
        Ok(())
    }

    /// The base offset of the data entry at `index`, read from the storage log (for entries
    /// not read through the log reader).
    fn stored_base_offset(&self, index: u64) -> io::Result<u64> {
        match self
            .log
            .batch_at_raft_index(index)
            .map_err(|e| e.into_io())?
        {
            Some(b) => Ok(b.base_offset),
            None => Err(io::Error::other(format!(
                "applied raft index {index} is not in the partition log"
            ))),
        }
    }

    /// The snapshot on disk as openraft sees it; an empty one (no last log id) when none.
    fn current_snapshot(&self) -> SnapshotOf<PartitionTypes, PartitionSnapshot> {
        match self.inner.lock().current {
            Some((ref meta, snapshot)) => Snapshot {
                meta: meta.clone(),
                snapshot,
            },
            None => Snapshot {
                meta: SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                },
                snapshot: PartitionSnapshot::default(),
            },
        }
    }
}

/// Makes the storage log continue a snapshot whose last entry is `last` and whose next offset
/// is `next`.
///
/// Rules:
/// 1. A log that holds `last` (same index, same term) or starts right after it (purged through
///    it) already continues the snapshot and is left alone: entries after a matching snapshot
///    point are kept, as openraft expects.
/// 2. Otherwise the log is reset to empty with `next` as its next offset, so the entries the
///    leader sends next get the offsets the leader gave them.
/// 3. Idempotent: running it again after it completed (or after a crash in the middle of a
///    reset) converges to the same log. It runs on snapshot install and again on open.
fn align_log_to_snapshot(
    log: &Log,
    last: Option<LogIdOf<PartitionTypes>>,
    next: u64,
) -> io::Result<()> {
    let Some(last) = last else {
        return Ok(());
    };
    let holds = match log
        .batch_at_raft_index(last.index)
        .map_err(|e| e.into_io())?
    {
        Some(b) => b.meta.raft_term == last.leader_id.term,
        None => log.first_raft_index() == Some(last.index + 1),
    };
    if !holds && (log.last_raft_entry().is_some() || log.next_offset() != next) {
        log.reset(next).map_err(|e| e.into_io())?;
    }
    Ok(())
}

impl RaftSnapshotBuilder<PartitionTypes> for PartitionStateMachine {
    type SnapshotData = PartitionSnapshot;

    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<PartitionTypes, PartitionSnapshot>, io::Error> {
        let (meta, data) = {
            let st = self.inner.lock();
            let meta = SnapshotMeta {
                last_log_id: st.applied,
                last_membership: st.membership.clone(),
            };
            (meta, st.data)
        };
        if !self
            .snapshot
            .persist(Arc::new((meta.clone(), data)))
            .await?
        {
            return Ok(self.current_snapshot());
        }
        self.inner.lock().current = Some((meta.clone(), data));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<PartitionTypes> for PartitionStateMachine {
    type SnapshotData = PartitionSnapshot;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogIdOf<PartitionTypes>>,
            StoredMembershipOf<PartitionTypes>,
        ),
        io::Error,
    > {
        let st = self.inner.lock();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm:
            Stream<Item = Result<EntryResponder<PartitionTypes>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let base = match &entry.payload {
                EntryPayload::Normal(req) => Some(match req.base_offset {
                    Some(b) => b,
                    None => self.stored_base_offset(entry.log_id.index)?,
                }),
                _ => None,
            };
            let (resp, hw) = {
                let mut st = self.inner.lock();
                st.applied = Some(entry.log_id());
                let resp = match &entry.payload {
                    EntryPayload::Blank => PartitionResponse::Control,
                    EntryPayload::Normal(req) => {
                        let offsets = Offsets {
                            base_offset: base.unwrap_or(st.data.next_offset),
                            record_count: req.record_count,
                        };
                        st.data.next_offset = offsets.base_offset;
                        st.data.next_offset += u64::from(req.record_count);
                        if let Some(last) = offsets.last_offset() {
                            st.data.high_watermark = Some(last);
                        }
                        PartitionResponse::Data(offsets)
                    }
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(entry.log_id()), m.clone());
                        PartitionResponse::Control
                    }
                };
                (resp, st.data.high_watermark)
            };
            self.publish(hw)?;
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        let snapshot = self.snapshot.for_builder(force)?;
        Some(Self {
            snapshot,
            ..self.clone()
        })
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<PartitionTypes>,
        snapshot: PartitionSnapshot,
    ) -> Result<(), io::Error> {
        self.snapshot
            .persist_installed(Arc::new((meta.clone(), snapshot)))
            .await?;
        let log = self.log.clone();
        let last = meta.last_log_id;
        let next = snapshot.next_offset;
        match tokio::task::spawn_blocking(move || align_log_to_snapshot(&log, last, next)).await {
            Ok(r) => r?,
            Err(e) => return Err(io::Error::other(format!("log reset failed: {e}"))),
        }
        let hw = {
            let mut st = self.inner.lock();
            st.applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            st.data = snapshot;
            st.current = Some((meta.clone(), snapshot));
            st.data.high_watermark
        };
        self.publish(hw)?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<PartitionTypes, PartitionSnapshot>>, io::Error> {
        Ok(self
            .inner
            .lock()
            .current
            .clone()
            .map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use drawbridge_storage::{encode_records, BatchKind, BatchMeta, LogConfig, Record};
    use openraft::vote::leader_id_std::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> LogIdOf<PartitionTypes> {
        LogIdOf::<PartitionTypes>::new(CommittedLeaderId::new(term), index)
    }

    fn data(log: &Log, term: u64, index: u64) {
        let body = encode_records(&[Record {
            timestamp: 1,
            key: None,
            headers: Vec::new(),
            value: Bytes::from_static(b"v"),
        }])
        .expect("encode");
        let meta = BatchMeta {
            kind: BatchKind::Data,
            raft_term: term,
            raft_index: index,
        };
        log.append(meta, body).expect("append");
    }

    fn persist_snapshot(path: &Path, last: LogIdOf<PartitionTypes>, next_offset: u64) {
        let meta: SnapshotMetaOf<PartitionTypes> = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: StoredMembership::default(),
        };
        let snap = PartitionSnapshot {
            next_offset,
            high_watermark: next_offset.checked_sub(1),
            earliest_offset: next_offset,
        };
        meta_file::store_framed(path, &(meta, snap)).expect("store snapshot");
    }

    /// A crash after an installed snapshot was persisted but before (or while) the log was
    /// reset leaves an old, divergent log: opening finishes the reset.
    #[test]
    fn open_finishes_an_interrupted_snapshot_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = dir.path().join("log");
        let log = Log::open(&log_dir, LogConfig::default()).expect("open log");
        for index in 1..=3 {
            data(&log, 1, index);
        }
        let snap_path = dir.path().join("snapshot");
        persist_snapshot(&snap_path, log_id(2, 9), 40);
        let _sm = PartitionStateMachine::open(&snap_path, log.clone()).expect("open sm");
        assert_eq!(
            log.last_raft_entry(),
            None,
            "divergent entries must be gone"
        );
        assert_eq!(log.next_offset(), 40);
        // Opening again is a no-op: the log already continues the snapshot.
        let _sm = PartitionStateMachine::open(&snap_path, log.clone()).expect("reopen sm");
        assert_eq!(log.next_offset(), 40);
    }

    /// A log that holds the snapshot's last entry (same term) is kept as it is.
    #[test]
    fn open_keeps_a_log_that_continues_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path().join("log"), LogConfig::default()).expect("open log");
        for index in 1..=4 {
            data(&log, 1, index);
        }
        let snap_path = dir.path().join("snapshot");
        persist_snapshot(&snap_path, log_id(1, 2), 2);
        let _sm = PartitionStateMachine::open(&snap_path, log.clone()).expect("open sm");
        assert_eq!(log.last_raft_entry(), Some((1, 4)));
        assert_eq!(log.next_offset(), 4);
    }
}
