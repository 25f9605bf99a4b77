//! Shared code for Drawbridge's benchmarks: the criterion suites under `benches/benches`, and
//! the end-to-end load generator (`loadgen`, issue 6) that `benches/compare.sh` drives against
//! Drawbridge, NATS JetStream and any Liftbridge-API server.
//!
//! # Crate map
//! - [`target`]: the systems under test behind one interface — a Liftbridge-API server through
//!   `drawbridge-client` ([`target::liftbridge`]) and NATS JetStream through `async-nats`
//!   ([`target::jetstream`]): create and delete a stream, a pipelined sender with one ack
//!   future per message, a subscription yielding payloads.
//! - [`workload`]: the four workloads (one synchronous publisher; P pipelined publishers with
//!   window W; consume N messages from the earliest offset; publish-to-subscriber latency under
//!   a steady rate), each bounded in time, each producing a [`record::Record`].
//! - [`record`]: the JSON line written per result (one schema for results, hardware probes,
//!   memory samples and notes), and latency histograms.
//! - [`hw`]: hardware baselines measured in the same run (sequential write bandwidth,
//!   fdatasync rate, loopback TCP bandwidth).
//! - [`report`]: turns the JSON lines of one run into `latest.md` (tables, ratios vs JetStream,
//!   the goals) and `latest.svg` (a hand-rolled chart, no plotting dependency).
//! - [`cpu`]: CPU time of the servers and of the load generator per message, from `/proc`.
//! - [`error`]: the error type, [`error::BenchError`].
//!
//! The binary is `src/bin/loadgen.rs` (`loadgen bench | hw | report`).

pub mod cpu;
pub mod error;
pub mod hw;
pub mod record;
pub mod report;
pub mod target;
pub mod workload;
