//! A server data directory on a small tmpfs, for disk-full tests (issue 7, fault 5).
//!
//! The tmpfs is mounted in a private mount namespace (`unshare -m`) by a wrapper the server is
//! started through ([`wrapper`], for `ServerSpec::wrapper`), so nothing is mounted on the host
//! and the mount goes away with the process. The disk is filled and freed from inside that
//! namespace (`nsenter -t PID -m`, [`fill`], [`unfill`]).
//!
//! Invariants:
//! - The wrapper ends by `exec`-ing the server, so the PID the harness holds (and stops) is the
//!   server's, and `nsenter -t PID` enters the server's namespace.
//! - The data on the tmpfs lives exactly as long as the process: a restart mounts a fresh, empty
//!   tmpfs. Tests must not restart such a node and expect its data back.
//! - Needs root (mount). [`mount_or_skip`] applies the suite's policy: without it a test fails
//!   when `CI` is set and is skipped (with a printed note) otherwise.

use std::path::Path;
use std::process::{Command, Stdio};

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
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs \"$0\""])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `Ok(true)` when a tmpfs can be mounted (probed on `probe`); `Ok(false)` after a printed note
/// when it cannot and `CI` is unset; `Err` when it cannot under `CI`.
pub fn mount_or_skip(test: &str, probe: &Path) -> Result<bool, String> {
    match can_mount(probe) {
        Ok(()) => Ok(true),
        Err(why) => {
            let msg = format!(
                "{test}: cannot mount a tmpfs in a private mount namespace (root needed): {why}"
            );
            if std::env::var_os("CI").is_some() {
                return Err(msg);
            }
            eprintln!("skipping: {msg}");
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

/// Fills the tmpfs on `data_dir` (a file `filler`), then frees `leave_mib` MiB of it again.
pub fn fill(pid: u32, data_dir: &Path, leave_mib: u32) -> Result<(), TmpfsError> {
    in_namespace(
        pid,
        data_dir,
        &format!(
            "dd if=/dev/zero of=\"$0/filler\" bs=1M 2>/dev/null; \
             test -f \"$0/filler\" && truncate -s -{leave_mib}M \"$0/filler\""
        ),
    )
}

/// Deletes the filler ([`fill`]).
pub fn unfill(pid: u32, data_dir: &Path) -> Result<(), TmpfsError> {
    in_namespace(pid, data_dir, "rm -f \"$0/filler\"")
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
