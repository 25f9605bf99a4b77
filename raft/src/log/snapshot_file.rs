//! [`SnapshotFile`]: a state machine's `snapshot` file, and what writing it does when the disk
//! is full. The metadata and the partition state machines both keep one, so the choice of a
//! snapshot builder's disk-full policy (openraft's `try_create_snapshot_builder`) lives here
//! once.
//!
//! Invariants:
//! - A snapshot is written with [`store_framed`](super::meta_file::store_framed): replaced
//!   atomically, the old file intact until the rename.
//! - [`WhenFull::Abandon`] gives up on the first "no space" error (counted and logged by the
//!   group's [`SnapshotSkips`]); [`WhenFull::Wait`] backs off and retries without a bound
//!   ([`super::nospace`], module docs). Every other error is returned at once.
//! - Clones share the group's abandoned-snapshot streak; only `when_full` is per handle.
//! - A builder openraft forces (startup over a purged log) waits; an optional one abandons,
//!   and none is handed out within `MAX_WAIT` of an abandoned snapshot
//!   ([`SnapshotSkips::deferring`]).

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::meta_file::store_framed;
use super::nospace;
use super::nospace::SnapshotSkips;

/// What a snapshot write does when the disk is full ([`super::nospace`], module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Give up: the snapshot is optional (built on openraft's schedule or for retention).
    Abandon,
    /// Back off and retry until it is written: the snapshot must exist (installed from the
    /// leader, or rebuilt at startup over a purged log).
    Wait,
}

/// One group's snapshot file (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFile {
    path: PathBuf,
    /// The group's abandoned snapshots (shared by clones).
    skips: Arc<SnapshotSkips>,
    /// What [`Self::persist`] does when the disk is full.
    when_full: WhenFull,
}

impl SnapshotFile {
    /// The snapshot file at `path` of a group whose snapshots are `what` (for the logs);
    /// optional writes ([`WhenFull::Abandon`]).
    pub(crate) fn new(path: &Path, what: &'static str) -> Self {
        Self {
            path: path.to_path_buf(),
            skips: Arc::new(SnapshotSkips::new(what)),
            when_full: WhenFull::Abandon,
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The handle a snapshot builder openraft asked for (`force`: it must persist) writes
    /// through, or `None` to refuse the builder (openraft takes that as "deferred"): an
    /// optional builder within `MAX_WAIT` of an abandoned snapshot.
    pub(crate) fn for_builder(&self, force: bool) -> Option<Self> {
        if !force && self.skips.deferring() {
            return None;
        }
        let when_full = if force {
            WhenFull::Wait
        } else {
            WhenFull::Abandon
        };
        Some(Self {
            when_full,
            ..self.clone()
        })
    }

    /// Persists `value` as this handle's `when_full` says. `Ok(true)` once written,
    /// `Ok(false)` when abandoned for lack of space.
    pub(crate) async fn persist<T>(&self, value: Arc<T>) -> io::Result<bool>
    where
        T: Serialize + Send + Sync + 'static,
    {
        persist(&self.path, value, self.when_full, &self.skips).await
    }

    /// Persists a snapshot that must exist (installed from the leader): waits for space.
    pub(crate) async fn persist_installed<T>(&self, value: Arc<T>) -> io::Result<()>
    where
        T: Serialize + Send + Sync + 'static,
    {
        persist(&self.path, value, WhenFull::Wait, &self.skips)
            .await
            .map(drop)
    }
}

/// Persists `value` at `path` with [`store_framed`], on a blocking thread. Returns `Ok(true)`
/// once it is written, `Ok(false)` when it was abandoned for lack of space (`when_full` =
/// [`WhenFull::Abandon`]; counted and logged by `skips`); any other error, and a failure after
/// the rename, is returned.
async fn persist<T>(
    path: &Path,
    value: Arc<T>,
    when_full: WhenFull,
    skips: &SnapshotSkips,
) -> io::Result<bool>
where
    T: Serialize + Send + Sync + 'static,
{
    let mut backoff: Option<nospace::Backoff> = None;
    loop {
        let (p, v) = (path.to_path_buf(), value.clone());
        let r = match tokio::task::spawn_blocking(move || store_framed(&p, &*v)).await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(format!("snapshot writer failed: {e}"))),
        };
        match r {
            Ok(()) => {
                if let Some(b) = backoff {
                    b.succeeded();
                }
                skips.persisted(path);
                return Ok(true);
            }
            Err(e) if nospace::is_no_space(&e) => match when_full {
                WhenFull::Abandon => {
                    skips.abandoned(path, &e);
                    return Ok(false);
                }
                WhenFull::Wait => {
                    let b = backoff.get_or_insert_with(|| {
                        nospace::Backoff::new("snapshot", path.display().to_string())
                    });
                    tokio::time::sleep(b.failed(&e)).await;
                }
            },
            Err(e) => return Err(e),
        }
    }
}
