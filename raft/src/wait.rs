//! Bounded waits on a raft instance's metrics (leader known, snapshot taken, ...).

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftStateMachine;
use openraft::Raft;
use openraft::RaftMetrics;
use openraft::RaftTypeConfig;

use crate::error::RaftError;
use crate::types::GroupId;

/// A copy of the current metrics.
pub(crate) fn metrics<C: RaftTypeConfig, SM: RaftStateMachine<C>>(
    raft: &Raft<C, SM>,
) -> RaftMetrics<C> {
    raft.metrics().borrow_watched().clone()
}

/// Waits until `pred` holds on the metrics, at most `timeout`.
pub(crate) async fn until<C, SM>(
    raft: &Raft<C, SM>,
    group: &GroupId,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&RaftMetrics<C>) -> bool,
) -> Result<RaftMetrics<C>, RaftError>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
{
    let mut rx = raft.metrics();
    let fut = async {
        loop {
            {
                let m = rx.borrow_and_update();
                if pred(&m) {
                    return Ok(m.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(RaftError::Stopped {
                    group: group.clone(),
                    reason: "raft metrics closed".into(),
                });
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(RaftError::Timeout {
            what: what.to_string(),
            ms: timeout.as_millis() as u64,
        }),
    }
}
