//! The built `drawbridge` binary against a real standalone server: stream administration,
//! publishing from an argument and from stdin, subscribing with every kind of `--from` and
//! `--to` in raw and JSON-lines output, metadata, cluster status, a tiny bench, and errors
//! that print one line and exit non-zero.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::common::*;

const CLI: &str = env!("CARGO_BIN_EXE_drawbridge");

/// What one run of the CLI produced.
#[derive(Debug)]
pub struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    pub fn ok(self) -> Result<String, String> {
        if self.code == Some(0) {
            Ok(self.stdout)
        } else {
            Err(format!("drawbridge failed: {self:?}"))
        }
    }

    /// Asserts the run failed with exit status 1 and one `error: ...` line containing
    /// `needle` (no panic, no backtrace); returns that line.
    pub fn one_line_error(&self, needle: &str) -> String {
        assert_eq!(self.code, Some(1), "expected exit status 1: {self:?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:?}");
        let line = lines[0];
        assert!(line.starts_with("error: "), "{line}");
        assert!(
            line.to_lowercase().contains(&needle.to_lowercase()),
            "{line:?} should mention {needle:?}"
        );
        assert!(!self.stderr.contains("panicked") && !self.stderr.contains("backtrace"));
        line.to_string()
    }
}

/// Runs `drawbridge --addr <addr> <args>` with `stdin`, killed (by PID, on drop) after 30 s.
pub async fn cli(addr: &str, args: &[&str], stdin: Option<&str>) -> TestResult<Run> {
    let mut cmd = tokio::process::Command::new(CLI);
    cmd.arg("--addr")
        .arg(addr)
        .arg("--timeout")
        .arg("5s")
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("DRAWBRIDGE_ADDR")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await?;
        pipe.shutdown().await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| format!("drawbridge {args:?} did not finish within 30 s"))??;
    Ok(Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn json_lines(out: &str) -> TestResult<Vec<Value>> {
    out.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l:?}").into()))
        .collect()
}

fn field_offsets(lines: &[Value]) -> Vec<i64> {
    lines.iter().filter_map(|v| v["offset"].as_i64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end() -> TestResult {
    let srv = shared_server();
    let addr = srv.addr();
    let a = addr.as_str();
    let name = unique("cli");
    let subject = format!("{name}.subject");

    // stream create / list / info
    let out = cli(
        a,
        &[
            "stream",
            "create",
            &name,
            "--subject",
            &subject,
            "--partitions",
            "2",
            "--retention-max-age",
            "1h",
        ],
        None,
    )
    .await?
    .ok()?;
    assert!(out.contains(&format!("created stream {name}")), "{out}");
    cli(a, &["stream", "create", &name], None)
        .await?
        .one_line_error("already exists");
    let out = cli(a, &["stream", "list"], None).await?.ok()?;
    assert!(
        out.contains(&format!("| {name} | {subject} | 2 |")),
        "{out}"
    );

    // publish: from an argument with key and headers, from stdin, and one message per line
    let out = cli(
        a,
        &[
            "publish",
            &name,
            "hello",
            "-k",
            "k1",
            "-H",
            "a=1",
            "-H",
            "b=x=y",
            "-p",
            "0",
            "--ack-policy",
            "all",
        ],
        None,
    )
    .await?
    .ok()?;
    assert!(out.contains("at offset 0"), "{out}");
    let out = cli(a, &["publish", &name, "-p", "0"], Some("from stdin"))
        .await?
        .ok()?;
    assert!(out.contains("at offset 1"), "{out}");
    let out = cli(
        a,
        &["publish", &name, "-", "-p", "0", "-k", "k2"],
        Some("dash"),
    )
    .await?
    .ok()?;
    assert!(out.contains("at offset 2"), "{out}");
    let out = cli(
        a,
        &["publish", &name, "--lines", "-p", "0"],
        Some("l1\nl2\nl3\n"),
    )
    .await?
    .ok()?;
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["3", "4", "5"]);
    let out = cli(
        a,
        &["publish", &name, "none", "-p", "1", "--ack-policy", "none"],
        None,
    )
    .await?
    .ok()?;
    assert!(out.contains("no ack requested"), "{out}");
    // A key without a partition goes where the key hash says.
    let key_partition = drawbridge_client::key_partition(b"which", 2);
    cli(a, &["publish", &name, "keyed", "-k", "which"], None)
        .await?
        .ok()?;

    // subscribe: JSON lines from earliest to latest.
    let out = cli(
        a,
        &[
            "subscribe",
            &name,
            "--from",
            "earliest",
            "--to",
            "latest",
            "--format",
            "json",
        ],
        None,
    )
    .await?
    .ok()?;
    let lines = json_lines(&out)?;
    let expected_p0 = if key_partition == 0 { 7 } else { 6 };
    assert_eq!(
        field_offsets(&lines),
        (0..expected_p0).collect::<Vec<i64>>(),
        "{out}"
    );
    let first = &lines[0];
    assert_eq!(first["value"], "hello");
    assert_eq!(first["key"], "k1");
    assert_eq!(first["headers"]["a"], "1");
    assert_eq!(first["headers"]["b"], "x=y");
    assert_eq!(first["partition"], 0);
    assert_eq!(first["subject"], subject.as_str());
    assert_eq!(lines[1]["key"], Value::Null);
    assert_eq!(lines[1]["value"], "from stdin");
    assert_eq!(lines[2]["value"], "dash");

    // Raw output, --from offset:N --to offset:M.
    let out = cli(
        a,
        &["subscribe", &name, "--from", "offset:3", "--to", "offset:4"],
        None,
    )
    .await?
    .ok()?;
    assert_eq!(out, "l1\nl2\n");
    // --from time:RFC3339 (the timestamp of offset 4, as the JSON output printed it).
    let t4 = lines[4]["timestamp"].as_str().ok_or("no timestamp")?;
    let out = cli(
        a,
        &[
            "subscribe",
            &name,
            "--from",
            &format!("time:{t4}"),
            "--to",
            "latest",
            "--format",
            "json",
        ],
        None,
    )
    .await?
    .ok()?;
    let from_t4 = field_offsets(&json_lines(&out)?);
    assert_eq!(from_t4.first(), Some(&4), "{out}");
    assert_eq!(from_t4.last(), Some(&(expected_p0 - 1)), "{out}");
    // --to time:RFC3339, and -n.
    let t1 = lines[1]["timestamp"].as_str().ok_or("no timestamp")?;
    let out = cli(
        a,
        &[
            "subscribe",
            &name,
            "--from",
            "earliest",
            "--to",
            &format!("time:{t1}"),
        ],
        None,
    )
    .await?
    .ok()?;
    assert_eq!(out, "hello\nfrom stdin\n");
    let out = cli(
        a,
        &["subscribe", &name, "--from", "earliest", "-n", "2"],
        None,
    )
    .await?
    .ok()?;
    assert_eq!(out, "hello\nfrom stdin\n");
    // Partition 1 holds the NONE message (and maybe the keyed one).
    let out = cli(
        a,
        &[
            "subscribe",
            &name,
            "-p",
            "1",
            "--from",
            "earliest",
            "--to",
            "latest",
        ],
        None,
    )
    .await?
    .ok()?;
    assert!(out.starts_with("none\n"), "{out}");
    assert_eq!(out.contains("keyed"), key_partition == 1, "{out}");

    // stream info, metadata, cluster status
    let out = cli(a, &["stream", "info", &name], None).await?.ok()?;
    assert!(
        out.contains(&format!("stream {name} on subject {subject}")),
        "{out}"
    );
    assert!(out.contains("high watermark"), "{out}");
    assert!(out.contains("| 0 | solo |"), "{out}");
    let out = cli(a, &["metadata"], None).await?.ok()?;
    assert!(out.contains("solo") && out.contains(&name), "{out}");
    let out = cli(a, &["metadata", "--json"], None).await?.ok()?;
    let md: Value = serde_json::from_str(out.trim())?;
    assert!(out.contains(&name), "{md}");
    let out = cli(a, &["cluster", "status"], None).await?.ok()?;
    assert!(out.contains("solo"), "{out}");

    // bench: a tiny run prints a markdown summary.
    let bench = unique("cli-bench");
    let run = cli(
        a,
        &[
            "bench",
            &bench,
            "--create",
            "1",
            "--duration",
            "300ms",
            "--publishers",
            "2",
            "--window",
            "8",
            "--size",
            "16",
        ],
        None,
    )
    .await?;
    let out = run.ok()?;
    assert!(out.contains("| throughput |"), "{out}");
    assert!(out.contains("| errors | 0 |"), "{out}");
    let acked: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("| messages | "))
        .and_then(|v| v.trim_end_matches(" |").parse().ok())
        .ok_or_else(|| format!("no message count: {out}"))?;
    assert!(acked > 0, "{out}");

    // delete, then errors: one line, exit status 1.
    let out = cli(a, &["stream", "delete", &name], None).await?.ok()?;
    assert!(out.contains(&format!("deleted stream {name}")), "{out}");
    cli(a, &["stream", "delete", &name], None)
        .await?
        .one_line_error("no such stream");
    cli(a, &["stream", "info", &name], None)
        .await?
        .one_line_error("no such stream");
    cli(a, &["subscribe", &name, "--from", "earliest"], None)
        .await?
        .one_line_error(&name);
    cli(a, &["publish", &name, "x"], None)
        .await?
        .one_line_error("no such");
    // Nobody listens on port 1.
    cli("127.0.0.1:1", &["stream", "list"], None)
        .await?
        .one_line_error("unavailable");
    // Bad arguments: clap's usage error, exit status 2, no panic.
    let run = cli(a, &["subscribe", &name, "--from", "bogus"], None).await?;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("invalid start"), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    Ok(())
}
