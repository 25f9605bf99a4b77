//! The programs in `client/examples/` run against a real server and do what they say.
//! `cargo test` builds the examples before running tests; they sit in `<profile>/examples/`.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// Runs an example with `DRAWBRIDGE_ADDR=addr`, killed (on drop) after 30 s; returns stdout.
async fn example(name: &str, addr: &str, args: &[&str]) -> TestResult<String> {
    let bin = drawbridge_tests::bins::profile_dir()?
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        return Err(format!("example {} not built", bin.display()).into());
    }
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&bin)
            .args(args)
            .env("DRAWBRIDGE_ADDR", addr)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("example {name} did not finish within 30 s"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "example {name} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_against_a_server() -> TestResult {
    let srv = shared_server();
    let addr = srv.addr();

    let stream = unique("ex-quick");
    let out = example("quickstart", &addr, &[&stream]).await?;
    assert!(out.contains(&format!("created stream {stream}")), "{out}");
    assert!(out.contains("hello stored at offset 0"), "{out}");
    assert!(out.contains("offset 10: message 9"), "{out}");
    assert!(
        out.contains("subscription ended: Some(StopPositionReached)"),
        "{out}"
    );

    let stream = unique("ex-pipe");
    let out = example("pipelined", &addr, &[&stream, "1000"]).await?;
    assert!(
        out.contains(&format!(
            "published 1000 messages to {stream} (offsets 0 to 999)"
        )),
        "{out}"
    );
    let out = example("subscribe", &addr, &[&stream]).await?;
    assert!(out.starts_with("0: message 0\n"), "{out}");
    assert!(out.contains("999: message 999\n"), "{out}");
    assert!(
        out.ends_with("read 1000 records; ended: Some(StopPositionReached)\n"),
        "{out}"
    );
    Ok(())
}
