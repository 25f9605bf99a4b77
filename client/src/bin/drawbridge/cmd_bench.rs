//! `drawbridge bench`: publishers × window messages in flight for a duration; prints a status
//! line every second and a markdown summary (throughput, HDR latency percentiles) at the end.
//!
//! Each publisher is its own [`Publisher`](drawbridge_client::Publisher) (its own
//! PublishAsync stream) and keeps up to `window` ack futures in flight. The run is bounded by
//! `--duration` (and `--messages`); the last acks are awaited for at most the ack timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_client::{
    AckPolicy, Client, Error, PublishMessage, PublisherOptions, StreamOptions,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::args::BenchArgs;
use crate::bench_report::{new_histogram, render_markdown, BenchReport};
use crate::{CliError, CliResult};

/// Counters shared by the publishers and the status line.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(client: &Client, args: BenchArgs) -> CliResult {
    if args.publishers == 0 || args.window == 0 {
        return Err(CliError::Usage(
            "--publishers and --window must be at least 1".into(),
        ));
    }
    if let Some(partitions) = args.create {
        let opts = StreamOptions {
            partitions,
            ..StreamOptions::default()
        };
        match client.create_stream(&args.stream, &args.stream, opts).await {
            Ok(()) | Err(Error::StreamExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let policy: AckPolicy = args.ack_policy.into();
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let end = start + args.duration;
    let budget = args.messages.map(|m| Arc::new(AtomicU64::new(m)));
    let payload = Bytes::from(vec![b'x'; args.size]);

    let mut tasks = Vec::with_capacity(args.publishers);
    for _ in 0..args.publishers {
        let job = Job {
            client: client.clone(),
            stream: args.stream.clone(),
            window: args.window,
            policy,
            payload: payload.clone(),
            end,
            budget: budget.clone(),
            counters: Arc::clone(&counters),
        };
        tasks.push(tokio::spawn(job.run()));
    }

    let status = tokio::spawn(status_line(Arc::clone(&counters), start, end));
    let mut latency = new_histogram()?;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => latency
                .add(&h)
                .map_err(|e| CliError::Usage(format!("merging histograms: {e}")))?,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error
                    .get_or_insert(CliError::Usage(format!("publisher task failed: {join}")));
            }
        }
    }
    status.abort();
    let elapsed = start.elapsed();
    eprintln!();
    let report = BenchReport {
        publishers: args.publishers,
        window: args.window,
        size: args.size,
        ack_policy: format!("{:?}", args.ack_policy).to_lowercase(),
        elapsed,
        acked: counters.acked.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        latency_us: latency,
    };
    print!("{}", render_markdown(&report));
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Prints progress to stderr once a second until aborted (or the run's end).
async fn status_line(c: Arc<Counters>, start: Instant, end: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0u64;
    while Instant::now() < end + Duration::from_secs(60) {
        tick.tick().await;
        let acked = c.acked.load(Ordering::Relaxed);
        eprint!(
            "\r{:>5.1}s  sent {}  acked {}  errors {}  {} msgs/s   ",
            start.elapsed().as_secs_f64(),
            c.sent.load(Ordering::Relaxed),
            acked,
            c.errors.load(Ordering::Relaxed),
            acked.saturating_sub(last)
        );
        last = acked;
    }
}

/// One publisher's work.
struct Job {
    client: Client,
    stream: String,
    window: usize,
    policy: AckPolicy,
    payload: Bytes,
    end: Instant,
    /// Messages left to send in total, when `--messages` bounds the run.
    budget: Option<Arc<AtomicU64>>,
    counters: Arc<Counters>,
}

impl Job {
    fn take_one(&self) -> bool {
        if Instant::now() >= self.end {
            return false;
        }
        match &self.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    async fn run(self) -> Result<Histogram<u64>, CliError> {
        let publisher = self.client.publisher_with(PublisherOptions {
            queue_capacity: self.window,
            max_in_flight: self.window,
        })?;
        let mut hist = new_histogram()?;
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            while open && in_flight.len() < self.window {
                if !self.take_one() {
                    open = false;
                    break;
                }
                let msg = PublishMessage::new(self.payload.clone())
                    .ack_policy(self.policy)
                    .partition_round_robin();
                let sent_at = Instant::now();
                let ack = publisher.send(&self.stream, msg).await?;
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                in_flight.push(async move { (ack.await, sent_at.elapsed()) });
            }
            if let Some((result, took)) = in_flight.next().await {
                match result {
                    Ok(_) => {
                        self.counters.acked.fetch_add(1, Ordering::Relaxed);
                        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                        hist.saturating_record(us.max(1));
                    }
                    Err(e) => {
                        if self.counters.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("\nfirst publish error: {e}");
                        }
                    }
                }
            }
        }
        Ok(hist)
    }
}
