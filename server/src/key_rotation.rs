//! Re-wrapping data keys with the current master key after a rotation, on the metadata leader.
//!
//! After the servers restart with a new `LIFTBRIDGE_ENCRYPTION_KEY` and the previous key in
//! `DRAWBRIDGE_ENCRYPTION_OLD_KEYS` ([`crate::encryption`]), the partitions' data keys are
//! still wrapped by the old key. This task unwraps them with the old key and proposes
//! [`MetadataCommand::RewrapDataKeys`] with the same keys wrapped by the new one, so the old
//! key can later be dropped. Stored values are untouched: the data keys do not change.
//!
//! Invariants:
//! - It runs only on a server that has a current and at least one old master key, and acts only
//!   while it leads the metadata group.
//! - It re-wraps only when every member of the cluster answered the broker survey recently with
//!   the same current master key id as this server: a server still running with the old key
//!   alone would otherwise lose access to the re-wrapped keys (a rolling rotation finishes
//!   first).
//! - At most [`MAX_PER_ROUND`] partitions per round, one round every [`PERIOD`], until shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use drawbridge_raft::{MetadataCommand, MetadataResponse};
use tracing::{debug, info, warn};

use crate::cluster;
use crate::context::Ctx;

/// Time between two rounds.
pub const PERIOD: Duration = Duration::from_secs(3);
/// Partitions re-wrapped per round, at most.
pub const MAX_PER_ROUND: usize = 64;

/// Starts the task when this server has old master keys (see the module docs).
pub fn spawn(ctx: Ctx) {
    let Some(current) = ctx.keyring.current_id().map(str::to_owned) else {
        return;
    };
    if ctx.keyring.old_ids().is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut stop = ctx.shutdown.clone();
        // Partitions already reported as not re-wrappable (warned once each).
        let mut warned: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut all_done_logged = false;
        loop {
            if ctx.raft.metadata().is_leader() && cluster_on_key(&ctx, &current) {
                let left = run_once(&ctx, &current, &mut warned).await;
                if left == 0 && !all_done_logged {
                    info!(master_key_id = %current,
                        "every data key is wrapped with the current master key");
                    all_done_logged = true;
                } else if left > 0 {
                    all_done_logged = false;
                }
            }
            tokio::select! {
                _ = crate::context::until_true(&mut stop) => break,
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    });
}

/// Whether every cluster member reported `current` as its master key recently.
fn cluster_on_key(ctx: &Ctx, current: &str) -> bool {
    cluster::cluster_members(ctx).iter().all(|m| {
        *m == ctx.node_id
            || (ctx.directory.is_live(*m)
                && ctx
                    .directory
                    .get(*m)
                    .and_then(|i| i.master_key_id)
                    .as_deref()
                    == Some(current))
    })
}

/// One round; returns how many partitions still have keys under another master key
/// (including those that cannot be re-wrapped here).
async fn run_once(ctx: &Ctx, current: &str, warned: &mut BTreeSet<(String, i32)>) -> usize {
    let state = ctx.raft.metadata().state().state;
    let todo: Vec<_> = state
        .streams
        .iter()
        .flat_map(|(name, s)| {
            s.partitions
                .iter()
                .filter(|(_, m)| m.data_keys.iter().any(|k| k.master_key_id != current))
                .map(move |(p, m)| (name.clone(), *p, m.data_keys.clone()))
        })
        .collect();
    let mut left = todo.len();
    for (stream, partition, keys) in todo.into_iter().take(MAX_PER_ROUND) {
        let mut out = Vec::with_capacity(keys.len());
        let mut failed = None;
        for k in &keys {
            match ctx.keyring.rewrap(&stream, partition, k) {
                Ok(Some(n)) => out.push(n),
                Ok(None) => out.push(k.clone()),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            if warned.insert((stream.clone(), partition)) {
                warn!(stream = %stream, partition, error = %e, "cannot re-wrap a data key");
            }
            continue;
        }
        let cmd = MetadataCommand::RewrapDataKeys {
            stream: stream.clone(),
            partition,
            keys: out,
        };
        match cluster::propose(ctx, cmd).await {
            Ok(MetadataResponse::Applied { .. }) => {
                left -= 1;
                info!(stream = %stream, partition, master_key_id = %current,
                    "data keys re-wrapped with the current master key");
            }
            // The stream was deleted or changed meanwhile: the next round sees the new state.
            Ok(MetadataResponse::Rejected(r)) => {
                debug!(stream = %stream, partition, %r, "re-wrap rejected")
            }
            Err(e) => debug!(stream = %stream, partition, error = %e, "re-wrap not replicated"),
        }
    }
    left
}
