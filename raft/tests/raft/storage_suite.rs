//! openraft's storage conformance suite against our log stores.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_store_passes_openraft_suite() {
    let r = drawbridge_raft::testing::run_metadata_store_suite().await;
    assert_eq!(r, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_store_passes_openraft_suite() {
    let r = drawbridge_raft::testing::run_partition_store_suite().await;
    assert_eq!(r, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazily_synced_partition_store_passes_openraft_suite() {
    for sync in [
        drawbridge_raft::LogSyncPolicy::Interval { interval_ms: 5 },
        drawbridge_raft::LogSyncPolicy::Never,
    ] {
        let r = drawbridge_raft::testing::run_partition_store_suite_with(sync).await;
        assert_eq!(r, Ok(()), "{sync:?}");
    }
}
