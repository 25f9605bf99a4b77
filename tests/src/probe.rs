//! What a test needs from the machine that not every machine has (root, a private mount or
//! network namespace, tools that live off a non-root `PATH`), probed before the test relies on
//! it, and the suite's one policy when it is missing ([`missing`]).
//!
//! Used by [`crate::tmpfs`] (a tmpfs in a private mount namespace) and [`crate::netns`] (a
//! private network namespace with nftables).
//!
//! Invariants:
//! - A probe changes nothing on the host: its script runs in namespaces that `unshare` makes
//!   for it, which go away with the probe's process.
//! - Policy: when `CI` is set a missing capability is an error (a missing install step or
//!   privilege must fail the build, not skip tests silently); elsewhere the test prints why and
//!   what it does instead (skips, or falls back), and goes on.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `name` on `PATH`, or in `/usr/sbin` or `/sbin` (where Debian puts `ip`, `nft` and `ss`,
/// often off a non-root `PATH`).
pub fn tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `sh -c script` in namespaces of its own (`unshare` with `flags`, e.g. `["-m"]`), with
/// `args` as `$0`, `$1`, ...; `Err` says why it failed (its stderr, or why it could not run).
pub fn in_new_namespaces<S: AsRef<OsStr>>(
    flags: &[&str],
    script: &str,
    args: &[S],
) -> Result<(), String> {
    let unshare = tool("unshare").ok_or("unshare is not installed (Debian package util-linux)")?;
    let out = Command::new(unshare)
        .args(flags)
        .args(["sh", "-c", script])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The suite's policy for a capability a test lacks (see the module docs): `Err(why)` when
/// `CI` is set; otherwise prints `why` and `instead` (what the test does without it: "skipping",
/// "falling back to TCP proxies") and returns `Ok(())`. `why` names the test.
pub fn missing(why: String, instead: &str) -> Result<(), String> {
    if std::env::var_os("CI").is_some() {
        return Err(why);
    }
    eprintln!("{why}; {instead}");
    Ok(())
}
