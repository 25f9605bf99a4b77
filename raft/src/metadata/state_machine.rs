//! openraft's `RaftStateMachine` for the metadata group.
//!
//! Persistence model: the state lives in memory; snapshots are persisted (framed, checksummed,
//! atomically replaced `snapshot` file). On restart openraft installs the persisted snapshot and
//! re-applies the log up to the saved committed log id.
//!
//! Invariants:
//! - `applied` only moves forward within a run (openraft applies each committed entry once).
//! - Every apply batch ends by publishing the new state to watchers, so a watcher never sees a
//!   state that is not a prefix of the committed log.
//! - Every entry with a responder gets exactly one response, including blank and membership
//!   entries.
//! - `current` is the snapshot on disk: it changes only after the file was replaced. A
//!   snapshot built on openraft's schedule that finds the disk full is abandoned and the
//!   builder returns `current` (or an empty snapshot when there is none), which openraft
//!   ignores as not newer, so it purges nothing; an installed snapshot and a forced rebuild
//!   (startup) wait for space instead (`crate::log::nospace`).

use std::io;
use std::path::Path;
use std::sync::Arc;

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

use super::command::MetadataResponse;
use super::state::MetadataState;
use crate::log::meta_file;
use crate::log::snapshot_file::SnapshotFile;
use crate::types::MetaTypes;

type Persisted = (SnapshotMetaOf<MetaTypes>, MetadataState);

/// What watchers see: the state and the raft index it reflects.
#[derive(Debug, Clone, Default)]
pub struct MetadataView {
    /// Raft index of the last applied entry (0 before the first).
    pub applied_index: u64,
    /// The state after that entry.
    pub state: Arc<MetadataState>,
}

struct SmState {
    applied: Option<LogIdOf<MetaTypes>>,
    membership: StoredMembershipOf<MetaTypes>,
    data: MetadataState,
    current: Option<Persisted>,
}

/// The metadata state machine. Cheap to clone; clones share state.
#[derive(Clone)]
pub(crate) struct MetaStateMachine {
    inner: Arc<Mutex<SmState>>,
    /// The snapshot file; on a snapshot builder, it says what the snapshot does when the disk
    /// is full (a builder openraft forces must persist).
    snapshot: SnapshotFile,
    view_tx: Arc<watch::Sender<MetadataView>>,
}

impl std::fmt::Debug for MetaStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStateMachine")
            .field("snapshot", &self.snapshot.path())
            .finish()
    }
}

impl MetaStateMachine {
    /// Opens the state machine; loads the persisted snapshot (installed later by openraft).
    pub(crate) fn open(snapshot_path: &Path) -> io::Result<Self> {
        let current: Option<Persisted> =
            meta_file::load_framed(snapshot_path, "metadata snapshot")?;
        let (view_tx, _) = watch::channel(MetadataView::default());
        Ok(Self {
            inner: Arc::new(Mutex::new(SmState {
                applied: None,
                membership: StoredMembership::default(),
                data: MetadataState::default(),
                current,
            })),
            snapshot: SnapshotFile::new(snapshot_path, "metadata snapshot"),
            view_tx: Arc::new(view_tx),
        })
    }

    /// Subscribes to state changes.
    pub(crate) fn watch(&self) -> watch::Receiver<MetadataView> {
        self.view_tx.subscribe()
    }

    /// The current (applied) state.
    pub(crate) fn view(&self) -> MetadataView {
        self.view_tx.borrow().clone()
    }

    fn publish(&self, st: &SmState) {
        let view = MetadataView {
            applied_index: st.applied.as_ref().map_or(0, |l| l.index),
            state: Arc::new(st.data.clone()),
        };
        self.view_tx.send_replace(view);
    }

    /// The snapshot on disk as openraft sees it; an empty one (no last log id) when none.
    fn current_snapshot(&self) -> SnapshotOf<MetaTypes, MetadataState> {
        match self.inner.lock().current.clone() {
            Some((meta, snapshot)) => Snapshot { meta, snapshot },
            None => Snapshot {
                meta: SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                },
                snapshot: MetadataState::default(),
            },
        }
    }
}

impl RaftSnapshotBuilder<MetaTypes> for MetaStateMachine {
    type SnapshotData = MetadataState;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<MetaTypes, MetadataState>, io::Error> {
        let (meta, data) = {
            let st = self.inner.lock();
            let meta = SnapshotMeta {
                last_log_id: st.applied,
                last_membership: st.membership.clone(),
            };
            (meta, st.data.clone())
        };
        if !self
            .snapshot
            .persist(Arc::new((meta.clone(), data.clone())))
            .await?
        {
            return Ok(self.current_snapshot());
        }
        self.inner.lock().current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<MetaTypes> for MetaStateMachine {
    type SnapshotData = MetadataState;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<MetaTypes>>, StoredMembershipOf<MetaTypes>), io::Error> {
        let st = self.inner.lock();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<MetaTypes>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let resp = {
                let mut st = self.inner.lock();
                st.applied = Some(entry.log_id());
                let resp = match &entry.payload {
                    EntryPayload::Blank => MetadataResponse::Applied { group_epoch: None },
                    EntryPayload::Normal(cmd) => st.data.apply_at(entry.log_id().index, cmd),
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(entry.log_id()), m.clone());
                        MetadataResponse::Applied { group_epoch: None }
                    }
                };
                self.publish(&st);
                resp
            };
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
        meta: &SnapshotMetaOf<MetaTypes>,
        snapshot: MetadataState,
    ) -> Result<(), io::Error> {
        self.snapshot
            .persist_installed(Arc::new((meta.clone(), snapshot.clone())))
            .await?;
        let mut st = self.inner.lock();
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.data = snapshot.clone();
        st.current = Some((meta.clone(), snapshot));
        self.publish(&st);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<MetaTypes, MetadataState>>, io::Error> {
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
    use crate::log::nospace;

    /// A metadata snapshot that finds the disk full is abandoned: the builder returns the
    /// snapshot on disk (none yet: empty, which openraft ignores), leaves no tmp file and
    /// counts it; a forced build (startup) waits and writes it; the next one succeeds.
    #[tokio::test]
    async fn a_snapshot_that_finds_the_disk_full_is_abandoned_unless_forced() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("snapshot");
        let tmp = meta_file::tmp_path(&path);
        let mut sm = MetaStateMachine::open(&path)?;
        let abandoned = nospace::snapshots_abandoned();
        nospace::inject_full(&tmp, 1);
        let mut b = sm
            .try_create_snapshot_builder(false)
            .await
            .ok_or_else(|| io::Error::other("no builder"))?;
        let s = b.build_snapshot().await?;
        assert_eq!(s.meta.last_log_id, None);
        // Other tests of this process may abandon snapshots too: at least this one counted.
        assert!(nospace::snapshots_abandoned() > abandoned);
        assert!(!tmp.exists() && !path.exists());
        assert!(sm.get_current_snapshot().await?.is_none());
        // Not tried again right away (openraft takes "no builder" as deferred).
        assert!(sm.try_create_snapshot_builder(false).await.is_none());

        // Forced: not deferred; two failed attempts (50 + 100 ms of backoff), then written.
        nospace::inject_full(&tmp, 2);
        let mut b = sm
            .try_create_snapshot_builder(true)
            .await
            .ok_or_else(|| io::Error::other("no builder"))?;
        tokio::time::timeout(std::time::Duration::from_secs(10), b.build_snapshot())
            .await
            .map_err(|_| io::Error::other("forced snapshot still waiting after 10 s"))??;
        assert!(path.exists() && !tmp.exists());
        assert!(sm.get_current_snapshot().await?.is_some());
        Ok(())
    }
}
