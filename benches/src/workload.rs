//! The four workloads of issue 6, each on a fresh stream that is deleted afterwards.
//!
//! - [`sync_publish`]: one publisher, one message in flight: send, wait for the ack, repeat.
//!   Latency is send-to-ack.
//! - [`pipelined`]: P publishers, each with its own session and up to W messages in flight,
//!   for a fixed time. Throughput counts acked messages over the time until the last ack;
//!   latency is send-to-ack of every message.
//! - [`consume`]: preload N messages (4 publishers × 1024 in flight, not measured), then read
//!   them from the earliest offset; the clock runs from subscribing to the N-th message. With
//!   several rounds the round of median throughput is reported.
//! - [`end_to_end`]: a subscriber for new messages, then one publisher at a steady rate for a
//!   fixed time; each payload carries its send time (nanoseconds since the run's epoch, the
//!   first 8 bytes, little-endian) and latency is send-to-receive in the same process.
//!
//! Every workload is bounded: the caller wraps it in a timeout, and tasks live in a `JoinSet`
//! so a timed-out workload stops its publishers too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cpu::CpuReading;
use crate::error::{BenchError, Result};
use crate::record::{new_histogram, record_latency, Measurement};
use crate::target::{From, Target};

/// Messages sent (and awaited) before the sync workload's clock starts.
const SYNC_WARMUP: u64 = 20;
/// End-to-end samples from the first this-long of the run are not recorded.
const E2E_WARMUP: Duration = Duration::from_millis(500);
/// How long the end-to-end subscriber may lag behind after the publisher stopped.
const E2E_DRAIN: Duration = Duration::from_secs(10);
/// Preload shape of the consume workload.
const PRELOAD_PUBLISHERS: usize = 4;
const PRELOAD_WINDOW: usize = 1024;

/// A fresh stream name per workload run: `bench-<workload>-<size>-<n>`.
fn stream_name(workload: &str, size: usize) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("bench-{workload}-{size}-{n}")
}

/// A payload of `size` bytes (at least 8, for the timestamp of the end-to-end workload).
fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// Runs `body` on a fresh stream and deletes the stream afterwards (also after a failure;
/// a failed delete is only logged).
async fn on_fresh_stream<F, Fut, T>(
    target: &Target,
    workload: &str,
    size: usize,
    body: F,
) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let name = stream_name(workload, size);
    target.create_stream(&name).await?;
    let out = body(name.clone()).await;
    if let Err(e) = target.delete_stream(&name).await {
        eprintln!("deleting stream {name}: {e}");
    }
    out
}

/// One synchronous publisher: `messages` sends, each awaited before the next.
pub async fn sync_publish(
    target: &Target,
    system: &str,
    size: usize,
    messages: u64,
) -> Result<Measurement> {
    on_fresh_stream(target, "sync", size, |name| async move {
        let sender = target.sender(&name, 1).await?;
        let body = payload(size);
        for _ in 0..SYNC_WARMUP {
            sender.send(body.clone()).await?.await?;
        }
        let mut h = new_histogram();
        let start = Instant::now();
        for _ in 0..messages {
            let t0 = Instant::now();
            sender.send(body.clone()).await?.await?;
            record_latency(&mut h, t0.elapsed());
        }
        let mut m = Measurement::new(
            system,
            "sync",
            size,
            messages,
            start.elapsed().as_secs_f64(),
            &h,
        );
        m.window = 1;
        Ok(m)
    })
    .await
}

/// When a pipelined load stops sending.
#[derive(Debug, Clone)]
enum Stop {
    /// `duration` after the first message of any publisher sharing `end` (so the warm-up
    /// before the start barrier is not counted).
    After {
        end: Arc<std::sync::OnceLock<Instant>>,
        duration: Duration,
    },
    /// When the shared budget of messages is used up.
    Budget(Arc<AtomicU64>),
}

impl Stop {
    fn take_one(&self) -> bool {
        match self {
            Stop::After { end, duration } => {
                let end = *end.get_or_init(|| Instant::now() + *duration);
                Instant::now() < end
            }
            Stop::Budget(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// What one pipelined publisher measured.
#[derive(Debug)]
struct LoadOutcome {
    acked: u64,
    errors: u64,
    latency: Histogram<u64>,
}

/// One publisher keeping up to `window` messages in flight until `stop`, then draining.
/// Starts sending only after the `ready` barrier (all publishers connected and warmed up).
async fn publisher_loop(
    target: Target,
    stream: String,
    body: Bytes,
    window: usize,
    stop: Stop,
    ready: Arc<tokio::sync::Barrier>,
) -> Result<LoadOutcome> {
    let sender = target.sender(&stream, window).await?;
    // Warm-up: open the session and touch the write path before the clock starts.
    sender.send(body.clone()).await?.await?;
    ready.wait().await;
    let mut out = LoadOutcome {
        acked: 0,
        errors: 0,
        latency: new_histogram(),
    };
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        while open && in_flight.len() < window {
            if !stop.take_one() {
                open = false;
                break;
            }
            let sent_at = Instant::now();
            let ack = sender.send(body.clone()).await?;
            in_flight.push(async move { (ack.await, sent_at.elapsed()) });
        }
        if let Some((result, took)) = in_flight.next().await {
            match result {
                Ok(()) => {
                    out.acked += 1;
                    record_latency(&mut out.latency, took);
                }
                Err(e) => {
                    if out.errors == 0 {
                        eprintln!("publish error: {e}");
                    }
                    out.errors += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Runs `publishers` publisher loops together; returns the merged outcome and the time from
/// the common start to the last ack.
async fn load(
    target: &Target,
    stream: &str,
    body: Bytes,
    publishers: usize,
    window: usize,
    stop: impl Fn() -> Stop,
) -> Result<(LoadOutcome, Duration)> {
    let ready = Arc::new(tokio::sync::Barrier::new(publishers + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..publishers {
        tasks.spawn(publisher_loop(
            target.clone(),
            stream.to_owned(),
            body.clone(),
            window,
            stop(),
            Arc::clone(&ready),
        ));
    }
    ready.wait().await;
    let start = Instant::now();
    let mut total = LoadOutcome {
        acked: 0,
        errors: 0,
        latency: new_histogram(),
    };
    while let Some(joined) = tasks.join_next().await {
        let one = joined.map_err(|e| BenchError::Other(format!("publisher task: {e}")))??;
        total.acked += one.acked;
        total.errors += one.errors;
        total
            .latency
            .add(&one.latency)
            .map_err(|e| BenchError::Other(format!("merging histograms: {e}")))?;
    }
    Ok((total, start.elapsed()))
}

/// P publishers × W in flight for `duration`; also the CPU time per acked message of the
/// `server_pids` and of this process ([`crate::cpu`]), when they can be read.
#[allow(clippy::too_many_arguments)]
pub async fn pipelined(
    target: &Target,
    system: &str,
    size: usize,
    publishers: usize,
    window: usize,
    duration: Duration,
    server_pids: &[u32],
) -> Result<Measurement> {
    on_fresh_stream(target, "pipelined", size, |name| async move {
        let end = Arc::new(std::sync::OnceLock::new());
        let stop = move || Stop::After {
            end: Arc::clone(&end),
            duration,
        };
        let cpu0 = CpuReading::now(server_pids);
        let (out, took) = load(target, &name, payload(size), publishers, window, stop).await?;
        let cpu = match (cpu0, CpuReading::now(server_pids)) {
            (Some(a), Some(b)) if !server_pids.is_empty() => {
                Some(b.per_message_since(&a, out.acked))
            }
            _ => None,
        };
        let mut m = Measurement::new(
            system,
            "pipelined",
            size,
            out.acked,
            took.as_secs_f64(),
            &out.latency,
        );
        m.publishers = publishers;
        m.window = window;
        m.errors = out.errors;
        m.server_cpu_us = cpu.map(|c| c.0);
        m.loadgen_cpu_us = cpu.map(|c| c.1);
        Ok(m)
    })
    .await
}

/// Preloads `messages` and reads them back from the earliest offset, `rounds` times (each a
/// fresh subscription; at least once). The result is the round with the median throughput,
/// so one disturbed round on a shared machine does not decide the figure. Each round also
/// records the CPU time per message of the `server_pids` and of this process
/// ([`crate::cpu`]), when they can be read.
pub async fn consume(
    target: &Target,
    system: &str,
    size: usize,
    messages: u64,
    rounds: u32,
    server_pids: &[u32],
) -> Result<Measurement> {
    on_fresh_stream(target, "consume", size, |name| async move {
        let budget = Arc::new(AtomicU64::new(messages));
        let stop = move || Stop::Budget(Arc::clone(&budget));
        let t0 = Instant::now();
        let (pre, _) = load(
            target,
            &name,
            payload(size),
            PRELOAD_PUBLISHERS,
            PRELOAD_WINDOW,
            stop,
        )
        .await?;
        if pre.errors > 0 {
            return Err(BenchError::Other(format!(
                "preload: {} publishes failed",
                pre.errors
            )));
        }
        // Warm-up messages of the preload publishers are stored too.
        let stored = pre.acked + PRELOAD_PUBLISHERS as u64;
        eprintln!(
            "  preloaded {stored} messages in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let mut results = Vec::new();
        for round in 0..rounds.max(1) {
            let cpu0 = CpuReading::now(server_pids);
            let start = Instant::now();
            let mut sub = target.subscribe(&name, From::Earliest).await?;
            let mut got = 0u64;
            while got < stored {
                match sub.next().await {
                    Some(Ok(_)) => got += 1,
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(BenchError::Other(format!(
                            "subscription ended after {got} of {stored} messages"
                        )))
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let cpu = match (cpu0, CpuReading::now(server_pids)) {
                (Some(a), Some(b)) if !server_pids.is_empty() => Some(b.per_message_since(&a, got)),
                _ => None,
            };
            drop(sub);
            if rounds > 1 {
                eprintln!(
                    "  round {round}: {:.0} msgs/s, CPU µs/msg (server, loadgen) {cpu:.2?}",
                    got as f64 / secs.max(f64::EPSILON)
                );
            }
            let mut m = Measurement::new(system, "consume", size, got, secs, &new_histogram());
            m.server_cpu_us = cpu.map(|c| c.0);
            m.loadgen_cpu_us = cpu.map(|c| c.1);
            results.push(m);
        }
        results.sort_by(|a, b| a.msgs_per_sec.total_cmp(&b.msgs_per_sec));
        let median = results.len() / 2;
        Ok(results.swap_remove(median))
    })
    .await
}

/// Send time as nanoseconds since `epoch`, in the first 8 bytes.
fn stamped(epoch: Instant, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(8));
    let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    b.put_u64_le(ns);
    b.resize(size.max(8), b'x');
    b.freeze()
}

/// The send time carried by a stamped payload.
fn stamp_of(payload: &[u8]) -> Option<Duration> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_le_bytes(bytes)))
}

/// Publish-to-subscriber latency at `rate` messages per second for `duration`.
pub async fn end_to_end(
    target: &Target,
    system: &str,
    size: usize,
    rate: u64,
    duration: Duration,
) -> Result<Measurement> {
    on_fresh_stream(target, "e2e", size, |name| async move {
        let epoch = Instant::now();
        let mut sub = target.subscribe(&name, From::NewOnly).await?;
        let sent = Arc::new(AtomicU64::new(0));
        let sent_by_pub = Arc::clone(&sent);
        let pub_target = target.clone();
        let pub_name = name.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let sender = pub_target.sender(&pub_name, 4096).await?;
            let mut acks = FuturesUnordered::new();
            let mut errors = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let start = Instant::now();
            let mut n = 0u64;
            // Never more than `rate × duration` messages: a system slower than `rate` makes
            // `send` wait for window space, and the run must still end on time.
            let total = (duration.as_secs_f64() * rate as f64) as u64;
            while start.elapsed() < duration {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while n < due && start.elapsed() < duration {
                    let ack = sender.send(stamped(epoch, size)).await?;
                    acks.push(ack);
                    n += 1;
                }
                sent_by_pub.store(n, Ordering::Relaxed);
                // Collect the acks that are in, without waiting.
                while let Some(Some(r)) = acks.next().now_or_never() {
                    if r.is_err() {
                        errors += 1;
                    }
                }
            }
            while let Some(r) = acks.next().await {
                if r.is_err() {
                    errors += 1;
                }
            }
            Ok::<u64, BenchError>(errors)
        });
        let mut h = new_histogram();
        let mut received = 0u64;
        let mut publisher_done = false;
        let mut drain_until = None;
        let mut errors = 0u64;
        loop {
            if publisher_done && received >= sent.load(Ordering::Relaxed) {
                break;
            }
            let wait = async {
                match drain_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = sub.next() => match item {
                    Some(Ok(p)) => {
                        let now = epoch.elapsed();
                        if let Some(at) = stamp_of(&p) {
                            if at >= E2E_WARMUP {
                                record_latency(&mut h, now.saturating_sub(at));
                            }
                        }
                        received += 1;
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(BenchError::Other("subscription ended".into())),
                },
                Some(joined) = tasks.join_next(), if !publisher_done => {
                    publisher_done = true;
                    drain_until = Some(Instant::now() + E2E_DRAIN);
                    errors = joined.map_err(|e| BenchError::Other(format!("publisher task: {e}")))??;
                }
                _ = wait => break,
            }
        }
        let secs = duration.as_secs_f64();
        let mut m = Measurement::new(system, "e2e", size, received, secs, &h);
        m.rate = rate;
        m.errors = errors + sent.load(Ordering::Relaxed).saturating_sub(received);
        Ok(m)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_pad_to_size() {
        let epoch = Instant::now();
        let p = stamped(epoch, 256);
        assert_eq!(p.len(), 256);
        assert!(stamp_of(&p).is_some_and(|d| d <= epoch.elapsed()));
        assert_eq!(stamped(epoch, 3).len(), 8);
        assert_eq!(stamp_of(b"short"), None);
    }

    #[test]
    fn a_duration_starts_at_the_first_message() {
        let stop = Stop::After {
            end: Arc::new(std::sync::OnceLock::new()),
            duration: Duration::from_secs(60),
        };
        assert!(stop.take_one());
        let zero = Stop::After {
            end: Arc::new(std::sync::OnceLock::new()),
            duration: Duration::ZERO,
        };
        assert!(!zero.take_one());
    }

    #[test]
    fn a_budget_stops_after_its_messages() {
        let stop = Stop::Budget(Arc::new(AtomicU64::new(2)));
        assert!(stop.take_one());
        assert!(stop.take_one());
        assert!(!stop.take_one());
    }

    #[test]
    fn stream_names_are_fresh() {
        assert_ne!(stream_name("sync", 256), stream_name("sync", 256));
    }
}
