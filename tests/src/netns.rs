//! A private network namespace for one test (issue 7, fault 3): the test re-executes its own
//! binary, for itself only, under `unshare -n`, so that the whole cluster — nats-server, the
//! servers and the test's own clients — lives on the namespace's own loopback, where
//! [`crate::nft`] may cut links without touching the host's network.
//!
//! How a test uses it ([`decide`] then [`run_in_child`]):
//!
//! 1. The parent (the test as `cargo test` started it) calls [`decide`]: inside the child it
//!    answers [`Backend::Netns`]; otherwise it probes (root, `unshare -n`, `ip`, `nft`, `ss`)
//!    and answers [`Backend::Netns`] when the probe passes, [`Backend::Proxy`] (the fallback of
//!    non-root local runs, with a printed note) when it fails outside CI, and an error when it
//!    fails under `CI` (the policy of [`crate::probe::missing`]).
//! 2. With [`Backend::Netns`] outside the child, the parent runs [`run_in_child`]: the current
//!    test executable with `--exact <test> --nocapture --test-threads=1` under
//!    `unshare -n sh -c 'ip link set lo up && exec ...'`, with [`CHILD_ENV`] set. The child's
//!    output is forwarded line by line to the parent's stderr (so the test harness captures it
//!    as the test's own); its exit status and the harness's `1 passed` line are the verdict.
//! 3. Inside the child the same test function finds [`inside`] true and runs the real test,
//!    with a cluster whose links are nftables rules ([`crate::cluster::Cluster::start`] picks
//!    them there).
//!
//! Invariants:
//! - Only the child's namespace is changed; it has only `lo` (127.0.0.1), and it goes away with
//!   the last process in it.
//! - The child runs in a process group of its own; after it exits, or when it outlives its
//!   bound (then it is killed), the whole group is sent SIGKILL by its id, so nothing the child
//!   started (servers, nats-server) outlives the test even if the child died without cleaning
//!   up.
//! - The wait is bounded; reading the child's output ends when its pipes close.
//! - [`BACKEND_ENV`]`=proxy` forces the proxy backend (to compare the two by hand).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::{self, tool};

/// Set (to `1`) in the environment of the namespace child.
pub const CHILD_ENV: &str = "DRAWBRIDGE_NETNS_CHILD";
/// `proxy` forces the proxy backend; anything else (or unset) lets [`decide`] choose.
pub const BACKEND_ENV: &str = "DRAWBRIDGE_LINKS";

/// How a partitionable cluster's links are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nftables rules in a private network namespace ([`crate::nft`]).
    Netns,
    /// Fault-injecting TCP proxies on the host's loopback ([`crate::proxy`]).
    Proxy,
}

/// Whether this process is the namespace child of a test ([`CHILD_ENV`]).
pub fn inside() -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1")
}

/// Whether a private network namespace with nftables can be made here; `Err` says why not.
pub fn probe() -> Result<(), String> {
    if !probe::is_root() {
        return Err("not root (unshare -n and nft need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
    }
    let mut paths = Vec::new();
    for name in ["unshare", "ip", "nft", "ss"] {
        paths.push(tool(name).ok_or_else(|| {
            format!("{name} is not installed (Debian packages util-linux, iproute2, nftables)")
        })?);
    }
    probe::in_new_namespaces(
        &["-n"],
        "\"$0\" link set lo up && \"$1\" add table inet probe",
        &paths[1..3],
    )
    .map_err(|e| format!("unshare -n + nft failed: {e}"))
}

/// The backend for the partition test `test` (see the module docs): [`Backend::Netns`] inside
/// the child or when [`probe`] passes; otherwise [`Backend::Proxy`] after a printed note, or
/// `Err` when `CI` is set.
pub fn decide(test: &str) -> Result<Backend, String> {
    if inside() {
        return Ok(Backend::Netns);
    }
    if std::env::var(BACKEND_ENV).is_ok_and(|v| v == "proxy") {
        eprintln!("{test}: {BACKEND_ENV}=proxy: links through TCP proxies");
        return Ok(Backend::Proxy);
    }
    match probe() {
        Ok(()) => Ok(Backend::Netns),
        Err(why) => {
            probe::missing(
                format!("{test}: no network namespace with nftables: {why}"),
                "falling back to TCP proxies",
            )?;
            Ok(Backend::Proxy)
        }
    }
}

/// Why the namespace child failed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// A tool is missing or the child could not be spawned.
    #[error("starting the namespace child: {0}")]
    Spawn(String),
    /// The child outlived its bound and was killed.
    #[error("{test}: the namespace child ran longer than {bound:?} and was killed")]
    Timeout {
        /// The test.
        test: String,
        /// The bound.
        bound: Duration,
    },
    /// The child failed, or did not run exactly the one test.
    #[error("{test}: the namespace child {status} (its output is above)")]
    Failed {
        /// The test.
        test: String,
        /// Its exit status, or what was wrong with its output.
        status: String,
    },
}

/// Runs the test `test` of the current test executable in a private network namespace (see
/// the module docs) and waits for it, at most `bound`. `Ok` when it ran exactly that test and
/// the test passed.
pub fn run_in_child(test: &str, bound: Duration) -> Result<(), ChildError> {
    let spawn_err = |e: String| ChildError::Spawn(e);
    let exe = std::env::current_exe().map_err(|e| spawn_err(e.to_string()))?;
    let unshare = tool("unshare").ok_or_else(|| spawn_err("unshare not found".into()))?;
    let ip = tool("ip").ok_or_else(|| spawn_err("ip not found".into()))?;
    let mut cmd = Command::new(unshare);
    // `$0` is ip; the rest is the test executable and its arguments.
    cmd.args(["-n", "sh", "-c", "\"$0\" link set lo up && exec \"$@\""])
        .arg(ip)
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
    let pgid = child.id() as libc::pid_t;
    eprintln!("{test}: running in a private network namespace (child pid {pgid})");
    // Forward the child's lines (the harness captures eprintln! of threads a test spawns);
    // the stdout reader also looks for the harness's verdict line.
    let err_reader = child.stderr.take().map(|pipe| {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        })
    });
    let out_reader = child.stdout.take().map(|pipe| {
        std::thread::spawn(move || {
            let mut passed_one = false;
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                passed_one |= line.contains("test result: ok. 1 passed;");
                eprintln!("{line}");
            }
            passed_one
        })
    });
    let deadline = Instant::now() + bound;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => break None,
        }
    };
    // Whatever the child left behind in its group (nothing, after a clean exit) goes now.
    // SAFETY: kill(2) of the process group we created (its id is the child's pid); no memory
    // is shared with the call.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChildError::Timeout {
                test: test.to_owned(),
                bound,
            });
        }
    };
    if let Some(r) = err_reader {
        let _ = r.join();
    }
    let passed_one = out_reader.is_some_and(|r| r.join().unwrap_or(false));
    if !status.success() {
        return Err(ChildError::Failed {
            test: test.to_owned(),
            status: status.to_string(),
        });
    }
    if !passed_one {
        return Err(ChildError::Failed {
            test: test.to_owned(),
            status: "exited 0 without the line `test result: ok. 1 passed;`".into(),
        });
    }
    Ok(())
}
