//! Locating workspace binaries from tests of *another* package.
//!
//! Cargo hands a test the path of its own package's binaries (`CARGO_BIN_EXE_<name>`), but not
//! of other packages'. The client's end-to-end tests need `drawbridge-server`, so
//! [`drawbridge_server`] finds it next to the running test executable (same target dir, same
//! profile) and builds it with Cargo when it is missing or older than the sources it is built
//! from.
//!
//! - `cargo test --workspace` (what `scripts/test` and CI run) builds the server binary before
//!   any test runs, so no nested build happens there.
//! - `cargo test -p drawbridge-client` alone builds it once, on first use, with the same
//!   target dir and profile (Cargo does not hold its build lock while tests run).
//! - `DRAWBRIDGE_SERVER_BIN=/path/to/drawbridge-server` overrides all of this.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Why the server binary is not available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BinError {
    /// The test executable is not inside a Cargo target dir.
    #[error("cannot locate the target dir from the test executable {0}")]
    NoTargetDir(String),
    /// `cargo build` failed.
    #[error("building drawbridge-server failed: {0}")]
    Build(String),
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The profile dir of the running test executable (`<target>/<profile>`, whose `deps/` holds
/// the test executable).
pub fn profile_dir() -> Result<PathBuf, BinError> {
    let exe = std::env::current_exe().map_err(|e| BinError::NoTargetDir(e.to_string()))?;
    let deps = exe
        .parent()
        .ok_or_else(|| BinError::NoTargetDir(exe.display().to_string()))?;
    // Integration tests and unit tests live in `<profile>/deps`; examples in
    // `<profile>/examples`.
    let profile = if deps.ends_with("deps") || deps.ends_with("examples") {
        deps.parent()
    } else {
        Some(deps)
    };
    profile
        .map(Path::to_path_buf)
        .ok_or_else(|| BinError::NoTargetDir(exe.display().to_string()))
}

/// The newest modification time of `path`: a file's own, or the newest file's under a dir.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

/// Whether `bin` exists and is newer than every input of the server's build: the library
/// sources, manifests and build scripts of the server and the workspace crates it depends on
/// (their tests, fuzz targets and benches do not count).
fn is_fresh(bin: &Path, root: &Path) -> bool {
    let Some(built) = std::fs::metadata(bin).ok().and_then(|m| m.modified().ok()) else {
        return false;
    };
    let inputs = ["server", "storage", "raft", "proto"]
        .iter()
        .flat_map(|c| ["src", "Cargo.toml", "build.rs", "proto"].map(|f| root.join(c).join(f)))
        .chain([root.join("Cargo.toml"), root.join("Cargo.lock")]);
    inputs
        .filter_map(|p| newest_mtime(&p))
        .max()
        .is_none_or(|newest| newest <= built)
}

fn build_server(profile: &Path) -> Result<PathBuf, BinError> {
    let bin = profile.join(format!("drawbridge-server{}", std::env::consts::EXE_SUFFIX));
    let root = workspace_root();
    if is_fresh(&bin, &root) {
        return Ok(bin);
    }
    let target = profile
        .parent()
        .ok_or_else(|| BinError::NoTargetDir(profile.display().to_string()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "-p",
            "drawbridge-server",
            "--bin",
            "drawbridge-server",
        ])
        .env("CARGO_TARGET_DIR", target);
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building drawbridge-server into {} ...", target.display());
    let out = cmd
        .output()
        .map_err(|e| BinError::Build(format!("running cargo: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(BinError::Build(tail.join("\n")));
    }
    if !bin.is_file() {
        return Err(BinError::Build(format!(
            "{} was not produced",
            bin.display()
        )));
    }
    Ok(bin)
}

/// The `drawbridge-server` binary for tests outside the server package (see module docs).
/// Built at most once per test process.
pub fn drawbridge_server() -> Result<PathBuf, BinError> {
    static BIN: OnceLock<Result<PathBuf, BinError>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DRAWBRIDGE_SERVER_BIN") {
            return Ok(PathBuf::from(p));
        }
        build_server(&profile_dir()?)
    })
    .clone()
}
