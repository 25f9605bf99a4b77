//! Child processes owned by a test.
//!
//! A [`ChildGuard`] owns one spawned process. Dropping the guard stops the process by its PID:
//! SIGTERM, a bounded wait, then SIGKILL. Tests can also kill (SIGKILL), stop (SIGSTOP) and
//! continue (SIGCONT) it to inject faults.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A spawned process that is stopped when this guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd`, naming it `name` in messages.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> std::io::Result<Self> {
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
        })
    }

    /// The process id, while the process is owned.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the process. Returns false when there is no process.
    pub fn signal(&self, signal: i32) -> bool {
        match self.pid() {
            // SAFETY: kill(2) with a PID we spawned and still own (not yet reaped); no memory
            // is shared with the call.
            Some(pid) => unsafe { libc::kill(pid as libc::pid_t, signal) == 0 },
            None => false,
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process: SIGTERM, up to `grace` to exit, then SIGKILL. Returns the exit status
    /// when the process exited by itself within the grace period.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: as in `signal`.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{}: did not exit within {grace:?}, killing", self.name);
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
