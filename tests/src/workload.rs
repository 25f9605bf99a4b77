//! The fault suite's workload (issue 7): two pipelined ack-ALL (or LEADER) publishers of
//! unique values (`c<client>-<counter>`, [`ValueId`]) that run in the background while faults
//! are injected, retry a failed value a bounded number of times and record every attempt in a
//! [`History`] for [`crate::checker`].
//!
//! Invariants: every attempt is recorded (acked with its offset, refused before it was sent, or
//! unknown); a value is retried at most [`MAX_ATTEMPTS`] times in all; a publisher stops when
//! told to or after 3 minutes; every wait is bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_client::{AckPolicy, Client, PublishMessage, Publisher, PublisherOptions};

use crate::checker::{Attempt, History, ValueId};
use crate::cluster::TestResult;

/// Messages in flight per publisher.
pub const WINDOW: usize = 16;
/// Attempts per value before a publisher gives up on it.
pub const MAX_ATTEMPTS: u32 = 5;
/// Longest wait for one phase's acknowledgements ([`Workload::progress`]).
pub const PHASE_WAIT: Duration = Duration::from_secs(40);

/// What the publishers send.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The ack policy of every message.
    pub ack: AckPolicy,
    /// Bytes of a `pad` header on every message (0: none), to make the log grow faster
    /// (disk-full tests); the value stays the checker's [`ValueId`].
    pub pad: usize,
}

/// When each acknowledgement reached the client.
pub type AckTimes = Arc<std::sync::Mutex<Vec<(ValueId, Instant)>>>;

/// Two publishers running in the background (see the module docs).
pub struct Workload {
    stop: Arc<AtomicBool>,
    /// Values acknowledged so far (shared with the publishers).
    pub acked: Arc<AtomicUsize>,
    /// When each acknowledgement reached the client (for failover timing).
    pub ack_times: AckTimes,
    tasks: Vec<tokio::task::JoinHandle<History>>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("acked", &self.acked())
            .field("publishers", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// Starts publishers (ack ALL) with client ids `first_client` and `first_client + 1`.
    pub fn start(client: &Client, stream: &str, first_client: u32) -> TestResult<Workload> {
        Self::start_with(client, stream, first_client, AckPolicy::All)
    }

    /// [`Workload::start`] with the ack policy `ack`.
    pub fn start_with(
        client: &Client,
        stream: &str,
        first_client: u32,
        ack: AckPolicy,
    ) -> TestResult<Workload> {
        Self::start_shaped(client, stream, first_client, Shape { ack, pad: 0 })
    }

    /// [`Workload::start`] with messages shaped by `shape` (ack policy, padding).
    pub fn start_shaped(
        client: &Client,
        stream: &str,
        first_client: u32,
        shape: Shape,
    ) -> TestResult<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let ack_times: AckTimes = Arc::default();
        let mut tasks = Vec::new();
        for id in [first_client, first_client + 1] {
            let publisher = client.publisher_with(PublisherOptions {
                queue_capacity: WINDOW * 2,
                max_in_flight: WINDOW * 2,
            })?;
            tasks.push(tokio::spawn(publish_loop(
                publisher,
                stream.to_owned(),
                id,
                shape.clone(),
                Arc::clone(&stop),
                Arc::clone(&acked),
                Arc::clone(&ack_times),
            )));
        }
        Ok(Workload {
            stop,
            acked,
            ack_times,
            tasks,
        })
    }

    /// Acknowledged values so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits (≤ [`PHASE_WAIT`]) until `more` values beyond those acked now were acked;
    /// returns how many were.
    pub async fn progress(&self, more: usize) -> usize {
        let from = self.acked();
        let deadline = Instant::now() + PHASE_WAIT;
        while self.acked() < from + more && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.acked() - from
    }

    /// Stops the publishers and returns what they did.
    pub async fn finish(self) -> TestResult<History> {
        self.stop.store(true, Ordering::Relaxed);
        let mut h = History::new();
        for t in self.tasks {
            let part = tokio::time::timeout(Duration::from_secs(60), t).await??;
            h.merge_attempts(part);
        }
        Ok(h)
    }
}

/// One publisher: windows of [`WINDOW`] values, each retried up to [`MAX_ATTEMPTS`] times,
/// until told to stop (or 3 minutes, a bound that is never reached in a passing run).
async fn publish_loop(
    publisher: Publisher,
    stream: String,
    client: u32,
    shape: Shape,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    ack_times: AckTimes,
) -> History {
    let mut h = History::new();
    let mut retry: VecDeque<(ValueId, u32)> = VecDeque::new();
    let mut counter = 0u64;
    let pad = bytes::Bytes::from(vec![b'p'; shape.pad]);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut batch = Vec::with_capacity(WINDOW);
        while batch.len() < WINDOW {
            match retry.pop_front() {
                Some(r) => batch.push(r),
                None => {
                    batch.push((ValueId::new(client, counter), 0));
                    counter += 1;
                }
            }
        }
        let mut futures = Vec::with_capacity(WINDOW);
        let mut failed = false;
        for (value, tries) in batch {
            let mut msg = PublishMessage::new(value.encode()).ack_policy(shape.ack);
            if !pad.is_empty() {
                msg = msg.header("pad", pad.clone());
            }
            match tokio::time::timeout(Duration::from_secs(10), publisher.send(&stream, msg)).await
            {
                Ok(Ok(fut)) => futures.push((value, tries, fut)),
                Ok(Err(_)) => {
                    // Refused before it was queued: it cannot have been stored.
                    h.record_attempt(value, Attempt::NotSent);
                    failed = true;
                    if tries + 1 < MAX_ATTEMPTS {
                        retry.push_back((value, tries + 1));
                    }
                }
                Err(_) => {
                    h.record_attempt(value, Attempt::Unknown);
                    failed = true;
                    if tries + 1 < MAX_ATTEMPTS {
                        retry.push_back((value, tries + 1));
                    }
                }
            }
        }
        // Awaited together, so each acknowledgement's arrival time is its own.
        let outcomes =
            futures::future::join_all(futures.into_iter().map(|(value, tries, fut)| async move {
                // The future enforces the ack timeout (5 s) itself; 15 s is a backstop.
                let r = tokio::time::timeout(Duration::from_secs(15), fut).await;
                (value, tries, r, Instant::now())
            }))
            .await;
        for (value, tries, outcome, at) in outcomes {
            match outcome {
                Ok(Ok(Some(ack))) => {
                    if let Ok(mut t) = ack_times.lock() {
                        t.push((value, at));
                    }
                    h.record_attempt(
                        value,
                        Attempt::Acked {
                            partition: 0,
                            offset: ack.offset,
                        },
                    );
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    h.record_attempt(value, Attempt::Unknown);
                    failed = true;
                    if tries + 1 < MAX_ATTEMPTS {
                        retry.push_back((value, tries + 1));
                    }
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    h
}

/// Waits for `more` acks and prints how it went.
pub async fn phase(w: &Workload, label: &str, more: usize) -> usize {
    let started = Instant::now();
    let got = w.progress(more).await;
    eprintln!(
        "faults: {label}: {got} acks in {:?} (total {})",
        started.elapsed(),
        w.acked()
    );
    got
}
