//! A server data directory on a small tmpfs, for disk-full tests (issue 7, fault 5).
//!
//! The tmpfs is mounted in a private mount namespace (`unshare -m`) by a wrapper the server is
//! started through ([`wrapper`], for `ServerSpec::wrapper`), so nothing is mounted on the host
//! and the mount goes away with the process. The disk is filled and freed from inside that
//! namespace (`nsenter -t PID -m`, [`fill`], [`unfill`]); [`fill`] takes the space in one
//! allocation, so the disk never dips below what the test means to leave.
//!
//! Invariants:
//! - The wrapper ends by `exec`-ing the server, so the PID the harness holds (and stops) is the
//!   server's, and `nsenter -t PID` enters the server's namespace.
//! - The data on the tmpfs lives exactly as long as the process: a restart mounts a fresh, empty
//!   tmpfs. Tests must not restart such a node and expect its data back.
//! - Needs root (mount). [`mount_or_skip`] applies the suite's policy ([`crate::probe`]):
//!   without it a test fails when `CI` is set and is skipped (with a printed note) otherwise.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::probe;

/// Why a namespace command failed.
#[derive(Debug, thiserror::Error)]
pub enum TmpfsError {
    /// Spawning `nsenter` failed.
    #[error("running nsenter: {0}")]
    Spawn(#[from] std::io::Error),
    /// The script exited non-zero.
    #[error("{script}: {stderr}")]
    Failed {
        /// The shell script.
        script: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
}

/// Whether this process may mount a tmpfs in a private mount namespace (tried on `dir`, which
/// is created); `Err` says why not.
pub fn can_mount(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    probe::in_new_namespaces(&["-m"], "mount -t tmpfs -o size=1m tmpfs \"$0\"", &[dir])
}

/// `Ok(true)` when a tmpfs can be mounted (probed on `dir`); `Ok(false)` after a printed note
/// when it cannot and `CI` is unset; `Err` when it cannot under `CI` ([`probe::missing`]).
pub fn mount_or_skip(test: &str, dir: &Path) -> Result<bool, String> {
    match can_mount(dir) {
        Ok(()) => Ok(true),
        Err(why) => {
            probe::missing(
                format!(
                    "{test}: cannot mount a tmpfs in a private mount namespace (root needed): {why}"
                ),
                "skipping",
            )?;
            Ok(false)
        }
    }
}

/// The wrapper (`ServerSpec::wrapper`) that mounts a tmpfs of `size` (`mount -o size=`, e.g.
/// `"32m"`) on `data_dir` in a private mount namespace and execs the server.
pub fn wrapper(data_dir: &Path, size: &str) -> Vec<String> {
    vec![
        "unshare".into(),
        "-m".into(),
        "sh".into(),
        "-c".into(),
        format!("mount -t tmpfs -o size={size} tmpfs \"$0\" && exec \"$@\""),
        data_dir.display().to_string(),
    ]
}

/// Runs `script` in the mount namespace of process `pid`, with `$0` = `data_dir`.
pub fn in_namespace(pid: u32, data_dir: &Path, script: &str) -> Result<(), TmpfsError> {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "sh", "-c", script])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(TmpfsError::Failed {
            script: script.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Fills the tmpfs on `data_dir` (files `filler*`) so that `leave_mib` MiB stay available.
///
/// The space is taken in one `fallocate(1)` of (available − `leave_mib` MiB), so the disk never
/// drops below `leave_mib` on the way (filling it completely and then freeing some would leave
/// a window in which the server's own writes hit ENOSPC). The server may write between the
/// reading of the free space and the allocation: a failed allocation is retried (≤ 5 times) on
/// a fresh reading. With `leave_mib` = 0 whatever is left after that is filled with `dd`.
pub fn fill(pid: u32, data_dir: &Path, leave_mib: u32) -> Result<(), TmpfsError> {
    in_namespace(
        pid,
        data_dir,
        &format!(
            "leave=$(( {leave_mib} * 1048576 )); i=0; ok=0; \
             while [ $i -lt 5 ]; do \
               avail=$(df -B1 --output=avail \"$0\" | tail -n 1 | tr -d ' '); \
               n=$(( avail - leave )); \
               if [ $n -le 0 ]; then ok=1; break; fi; \
               if fallocate -l $n \"$0/filler.$i\" 2>/dev/null; then ok=1; break; fi; \
               rm -f \"$0/filler.$i\"; i=$((i + 1)); \
             done; \
             [ $ok = 1 ] || {{ echo 'could not allocate the filler' >&2; exit 1; }}; \
             if [ {leave_mib} = 0 ]; then dd if=/dev/zero of=\"$0/filler.dd\" bs=64k 2>/dev/null; fi; \
             exit 0"
        ),
    )
}

/// Deletes the filler ([`fill`]).
pub fn unfill(pid: u32, data_dir: &Path) -> Result<(), TmpfsError> {
    in_namespace(pid, data_dir, "rm -f \"$0\"/filler*")
}

/// Bytes available on the tmpfs on `data_dir` (`df -B1`), as the server sees them.
pub fn available(pid: u32, data_dir: &Path) -> Result<u64, TmpfsError> {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "df", "-B1", "--output=avail"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| TmpfsError::Failed {
            script: "df".into(),
            stderr: format!(
                "{}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
}
