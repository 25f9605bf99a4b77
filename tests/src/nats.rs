//! A real `nats-server` on a free loopback port.
//!
//! Tests that need NATS call [`NatsServer::start`]. When the binary is missing, the outcome
//! depends on where the test runs: in CI (the `CI` environment variable is set) it is an error,
//! so a missing install step fails the build instead of silently skipping tests; elsewhere
//! [`NatsServer::start_or_skip`] returns `None` and the test prints why it skipped.

use crate::ports::{free_port, wait_for_listen};
use crate::process::ChildGuard;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why a NATS server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No `nats-server` binary on PATH (nor in /usr/sbin, where Debian puts it).
    #[error(
        "nats-server is not installed (Debian package `nats-server`; scripts/test installs it)"
    )]
    NotInstalled,
    /// The process could not be spawned.
    #[error("spawning nats-server: {0}")]
    Spawn(#[from] std::io::Error),
    /// The server did not accept connections in time.
    #[error("nats-server did not listen on 127.0.0.1:{0} within 10 s")]
    NotListening(u16),
}

/// A running `nats-server`, stopped when dropped.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    process: ChildGuard,
    _dir: tempfile::TempDir,
}

/// Finds the `nats-server` binary.
pub fn nats_server_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.push(PathBuf::from("/usr/local/sbin"));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsServer {
    /// Starts `nats-server` on a free port of 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> Result<Self, NatsError> {
        let bin = nats_server_binary().ok_or(NatsError::NotInstalled)?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let dir = tempfile::tempdir()?;
            let mut cmd = Command::new(&bin);
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut process = ChildGuard::spawn(format!("nats-server:{port}"), &mut cmd)?;
            if wait_for_listen(port, Duration::from_secs(10)) && !process.has_exited() {
                return Ok(Self {
                    port,
                    process,
                    _dir: dir,
                });
            }
            process.kill();
            last = Some(NatsError::NotListening(port));
        }
        Err(last.unwrap_or(NatsError::NotInstalled))
    }

    /// Starts a server, or, outside CI when the binary is missing, returns `None` after printing
    /// that the test is skipped. In CI a missing binary panics: the test must not pass silently.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        match Self::start() {
            Ok(server) => Some(server),
            Err(NatsError::NotInstalled) if std::env::var_os("CI").is_none() => {
                eprintln!("{test}: skipped, nats-server is not installed");
                None
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process, for fault injection (SIGSTOP/SIGCONT, kill).
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }
}
