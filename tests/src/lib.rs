//! Shared harness for Drawbridge's cross-crate and multi-process tests.
//!
//! - [`checker`]: the fault suite's checker: was anything acknowledged lost, duplicated or
//!   diverged? (issue 7)
//! - [`bins`]: the `drawbridge-server` binary for tests of other packages (built on demand).
//! - [`ports`]: free loopback ports for the processes a test starts.
//! - [`probe`]: whether the machine gives a test what it needs (root, namespaces, tools), and
//!   the suite's policy when it does not (an error under `CI`, a note and a skip elsewhere).
//! - [`process`]: a child process that is stopped, by PID, when its guard drops.
//! - [`nats`]: a real `nats-server` (the Debian package) on a free loopback port.
//! - [`server`]: `drawbridge-server` processes (single servers and clusters) for process tests.
//! - [`proxy`]: a fault-injecting TCP proxy (pass, blackhole, reset) for network partitions
//!   where no network namespace can be made.
//! - [`metrics`]: a server's `/metrics` (the metadata leader, gauges).
//! - [`rewrite`]: a stopped replica's log changed consistently but wrongly (silent divergence,
//!   for `drawbridge cluster verify`).
//! - [`clients`]: the client settings of the tests against a cluster (timeouts, retries).
//! - [`cluster`]: the fault suite's three-node cluster (NATS, servers, metrics, a client) and
//!   its helpers (leaders, kill/restart, ISR waits, `cluster verify`, logs on failure).
//! - [`links`]: the links of a partitionable cluster, cut and healed (network partitions), over
//!   [`nft`] or [`proxy`].
//! - [`netns`]: a test re-executed in a private network namespace (its own loopback).
//! - [`nft`]: links cut with nftables rules in that namespace (nodes told apart by gid).
//! - [`tmpfs`]: a node's data dir on a small tmpfs in a private mount namespace (disk full).
//! - [`workload`]: the fault suite's background publishers, recording every attempt.
//! - [`reads`]: every replica of a partition read back into the checker's history.
//!
//! Invariants every test relies on: only 127.0.0.1 is used (the host's, or that of a network
//! namespace the test made); every process a test starts is
//! stopped when the test ends (even when it panics); every wait is bounded in time.

pub mod bins;
pub mod checker;
pub mod clients;
pub mod cluster;
pub mod links;
pub mod metrics;
pub mod nats;
pub mod netns;
pub mod nft;
pub mod ports;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod reads;
pub mod rewrite;
pub mod server;
pub mod tmpfs;
pub mod workload;
