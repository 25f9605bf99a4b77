//! Smoke test of the load generator (issue 6): a real `drawbridge-server` process with
//! embedded NATS, and the real `loadgen` binary running every workload with tiny counts, then
//! `loadgen report` on its output. Seconds, not a benchmark: it checks that the harness works
//! end to end, so CI notices when a change breaks it.
//!
//! The server binary is found (or built) by the shared harness, `drawbridge_tests::bins`
//! (`DRAWBRIDGE_SERVER_BIN` overrides it).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drawbridge_benches::record::{parse_lines, Record};
use drawbridge_tests::bins::drawbridge_server;
use drawbridge_tests::ports::free_port;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};

/// The test (server start, load, report, stop) must stay under this.
const BOUND: Duration = Duration::from_secs(20);

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Runs `cmd` to completion within `limit`; kills it (by its PID, through `Child`) otherwise.
fn run_bounded(name: &str, cmd: &mut Command, limit: Duration) -> TestResult {
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("{name} failed: {status}").into())
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name} did not finish within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn loadgen_runs_every_workload_against_a_real_server() -> TestResult {
    // Finding the binary may build it first; the bound is on the test itself.
    let bin = drawbridge_server()?;
    let started = Instant::now();
    let spec = ServerSpec::new(&bin, "smoke", NatsMode::Embedded(free_port()?))?;
    let mut server = DrawbridgeServer::start(&spec)?;
    let started_work = Instant::now();

    let out_dir = tempfile::tempdir()?;
    let jsonl = out_dir.path().join("run.jsonl");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    bench
        .args([
            "bench",
            "--target",
            "liftbridge",
            "--system",
            "drawbridge-smoke-sync",
        ])
        .args(["--addr", &format!("127.0.0.1:{}", spec.port)])
        .args([
            "--sizes",
            "256",
            "--sync-messages",
            "20",
            "--shapes",
            "1x16,2x64",
        ])
        .args(["--pipelined-secs", "0.3", "--consume-messages", "500"])
        .args([
            "--e2e-rate",
            "200",
            "--e2e-secs",
            "1",
            "--timeout-secs",
            "15",
        ])
        .arg("--out")
        .arg(&jsonl)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let outcome = run_bounded("loadgen bench", &mut bench, Duration::from_secs(40));
    if let Err(e) = outcome {
        return Err(format!("{e}\nserver log:\n{}", server.log_tail()).into());
    }

    let records = parse_lines(&std::fs::read_to_string(&jsonl)?)?;
    let mut workloads = Vec::new();
    for r in &records {
        match r {
            Record::Result(m) => {
                assert!(m.messages > 0, "{m:?}");
                assert_eq!(m.errors, 0, "{m:?}");
                assert!(m.msgs_per_sec > 0.0, "{m:?}");
                if m.workload != "consume" {
                    assert!(m.p50_us > 0 && m.p50_us <= m.p99_us, "{m:?}");
                }
                workloads.push(format!("{}:{}x{}", m.workload, m.publishers, m.window));
            }
            other => panic!("unexpected record {other:?}"),
        }
    }
    assert_eq!(
        workloads,
        [
            "sync:1x1",
            "pipelined:1x16",
            "pipelined:2x64",
            "consume:1x0",
            "e2e:1x0"
        ]
    );
    let consumed = records.iter().find_map(|r| match r {
        Record::Result(m) if m.workload == "consume" => Some(m.messages),
        _ => None,
    });
    // 500 preloaded plus one warm-up message per preload publisher.
    assert_eq!(consumed, Some(504));

    let md = out_dir.path().join("r.md");
    let svg = out_dir.path().join("r.svg");
    let mut report = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    report
        .arg("report")
        .arg("--input")
        .arg(&jsonl)
        .arg("--md")
        .arg(&md)
        .arg("--svg")
        .arg(&svg);
    run_bounded("loadgen report", &mut report, Duration::from_secs(10))?;
    let md = std::fs::read_to_string(md)?;
    assert!(
        md.contains("| `drawbridge-smoke-sync` | 256 | 2×64 |"),
        "{md}"
    );
    assert!(std::fs::read_to_string(svg)?.contains("<rect"));

    assert!(
        server.stop(Duration::from_secs(10)),
        "server did not stop on SIGTERM"
    );
    eprintln!(
        "smoke: {:.1} s of load, {:.1} s with server start and stop",
        started_work.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(started.elapsed() < BOUND);
    Ok(())
}
