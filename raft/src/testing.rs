//! Hooks for integration tests: runs openraft's storage `Suite` against our stores, and
//! [`NetworkFaults`] (blocked, dropped, delayed raft RPCs between chosen nodes, set through
//! `RaftConfig::network_faults`). Not part of the server-facing API.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::errors::ErrorSource;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::StorageError;

use crate::log::store::StoreHooks;
use crate::log::FileLog;
use crate::log::Flusher;
use crate::log::LogStore;
use crate::log::StorageLog;
use crate::metadata::MetaStateMachine;
use crate::partition::group::AckPlumbing;
use crate::partition::PartitionStateMachine;
use crate::types::MetaTypes;
use crate::types::PartitionTypes;

pub use crate::transport::faults::NetworkFaults;

/// Removes a scratch directory when dropped.
#[derive(Debug)]
pub struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn scratch() -> std::io::Result<DirGuard> {
    let dir = std::env::temp_dir().join(format!(
        "drawbridge-raft-suite-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(DirGuard(dir))
}

struct MetaBuilder;
struct PartitionBuilder(crate::config::LogSyncPolicy);

type MetaStore = LogStore<MetaTypes, FileLog<MetaTypes>>;
type PartStore = LogStore<PartitionTypes, StorageLog>;

impl StoreBuilder<MetaTypes, MetaStore, MetaStateMachine, DirGuard> for MetaBuilder {
    async fn build(
        &self,
    ) -> Result<(DirGuard, MetaStore, MetaStateMachine), StorageError<MetaTypes>> {
        let io = |e: std::io::Error| StorageError::read(ErrorSource::from_error(&e));
        let g = scratch().map_err(io)?;
        let backend = Arc::new(FileLog::open(&g.0.join("log")).map_err(io)?);
        let flusher = Flusher::start(&g.0.join("journal")).map_err(io)?;
        let store =
            LogStore::open(backend, b"g".to_vec(), flusher, StoreHooks::default()).map_err(io)?;
        let sm = MetaStateMachine::open(&g.0.join("snapshot")).map_err(io)?;
        Ok((g, store, sm))
    }
}

impl StoreBuilder<PartitionTypes, PartStore, PartitionStateMachine, DirGuard> for PartitionBuilder {
    async fn build(
        &self,
    ) -> Result<(DirGuard, PartStore, PartitionStateMachine), StorageError<PartitionTypes>> {
        let io = |e: std::io::Error| StorageError::read(ErrorSource::from_error(&e));
        let g = scratch().map_err(io)?;
        let log = drawbridge_storage::Log::open(
            g.0.join("log"),
            crate::node::partition_log_config(Default::default()),
        )
        .map_err(|e| io(e.into_io()))?;
        let backend = Arc::new(StorageLog::new(log.clone()));
        let flusher = Flusher::start(&g.0.join("journal")).map_err(io)?;
        let store = LogStore::open_with_sync(
            backend,
            b"g".to_vec(),
            flusher,
            AckPlumbing::new(1).hooks(),
            self.0,
        )
        .map_err(io)?;
        let sm = PartitionStateMachine::open(&g.0.join("snapshot"), log).map_err(io)?;
        Ok((g, store, sm))
    }
}

/// Runs openraft's log-storage conformance suite against the metadata group's store.
pub async fn run_metadata_store_suite() -> Result<(), String> {
    Suite::test_all(MetaBuilder)
        .await
        .map_err(|e| e.to_string())
}

/// Runs openraft's log-storage conformance suite against the partition group's store.
pub async fn run_partition_store_suite() -> Result<(), String> {
    run_partition_store_suite_with(crate::config::LogSyncPolicy::Always).await
}

/// [`run_partition_store_suite`] with a given sync policy (the lazy policies change only when
/// an append's callback fires, so the store must pass the same suite).
pub async fn run_partition_store_suite_with(
    sync: crate::config::LogSyncPolicy,
) -> Result<(), String> {
    Suite::test_all(PartitionBuilder(sync))
        .await
        .map_err(|e| e.to_string())
}
