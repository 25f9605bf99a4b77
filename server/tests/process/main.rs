//! Process-level tests of `drawbridge-server`: real server processes (the binary Cargo built
//! for this test run, `CARGO_BIN_EXE_drawbridge-server`) on loopback ports, talking gRPC and
//! NATS. One test binary, grouped by area:
//! - `single`: one standalone server with embedded NATS — every implemented RPC's success and
//!   error paths, ingest details, restart durability;
//! - `nats`: servers on a real `nats-server` — raw NATS publishes, two streams on one subject,
//!   wildcards;
//! - `pause`: PauseStream, SetStreamReadonly, auto-pause, reverse subscriptions, OCC;
//! - `cluster`: three servers, replication factor 3, SIGKILL of a partition leader;
//! - `idempotent`: producer id and sequence headers, across a restart and a failover;
//! - `retention`: retention and segment settings from the stream configuration;
//! - `compaction`: compaction by key from the stream configuration, on one and three servers;
//! - `cursors`, `groups`: cursors and consumer groups on one server, and their failover on
//!   three servers;
//! - `compose`: the three-node topology of `docker-compose.yml`, run as local processes;
//! - `diskfull`: a tmpfs data dir filled up: clear refusals, reads keep working, recovery
//!   once space returns (also after ENOSPC inside the log append).
//! - `encryption`: encryption at rest — round trip, no plaintext on disk, restarts with and
//!   without the key, key rotation, a new leader decrypting after failover.
//! - `handoff`: SIGTERM of a partition leader hands its leadership to a follower.
//! - `limits`: `limits.*` and the message size limit refuse with clear statuses, and count.
//! - `nats_auth`: `nats.user`/`nats.password` against `nats-server --user --pass`.
//! - `tls`: TLS, mutual TLS, authorization and its SIGHUP reload, with certificates minted here.
//!
//! Every wait is bounded; every process is stopped when its guard drops.

mod cluster;
mod common;
mod compaction;
mod compose;
mod cursors;
mod diskfull;
mod encryption;
mod groups;
mod handoff;
mod idempotent;
mod limits;
mod nats;
mod nats_auth;
mod pause;
mod retention;
mod single;
mod tls;
