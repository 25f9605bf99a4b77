//! The Drawbridge server: a Liftbridge-compatible, replicated message log for NATS.
//!
//! Crate map:
//! - [`config`]: Liftbridge's command-line flags and YAML keys with Liftbridge's defaults,
//!   `LIFTBRIDGE_*` environment overrides and a few Drawbridge keys, loaded into a validated
//!   [`config::Config`] (defaults < file < environment < flags).
//! - [`embedded_nats`]: an in-process core-NATS broker for `--embedded-nats`, so a single node
//!   runs with nothing else installed and any NATS client can publish to it.
//! - [`envelope`]: Liftbridge's NATS envelope (magic, version, header length, flags, type,
//!   optional CRC-32C) around the protobuf `Message` and `Ack`; every decoder failure is an
//!   error value, never a panic.
//! - [`app`]: start-up and shutdown of a server (NATS, identity, raft, cluster, gRPC).
//! - [`api`]: the `proto.API` gRPC service, one file per group of RPCs.
//! - [`admin_api`]: Drawbridge's own `drawbridge.admin.v1.Admin` service (replica checksums
//!   for `drawbridge cluster verify`), on the same port.
//! - [`cluster`]: broker survey, admin forwarding to the metadata leader, cluster formation.
//! - [`partitions`]: hosted partition replicas, leadership, starting and stopping ingest;
//!   [`auto_pause`]: pausing idle partitions on their leader.
//! - [`diskspace`]: refusing messages on a leader whose disk is below the free-space margin;
//!   [`disk_handoff`]: handing such leaderships to a replica with space.
//! - [`groups`]: consumer-group heartbeats, member expiry, coordinator choice and reports,
//!   subscription fencing (the replicated group state is in the metadata group).
//! - [`isr`]: in-sync replicas from raft progress on partition leaders, recorded in metadata.
//! - [`metrics`]: the HTTP endpoint on `metrics.listen`: `/metrics`, `/healthz`, `/readyz`;
//!   [`stats`]: the atomic counters and histograms it renders.
//! - [`activity`]: the `__activity` stream, published by the metadata leader.
//! - [`ingest`]: NATS → batched raft proposals on a partition leader; [`acks`]: acks.
//! - [`partition_log`]: a partition's readable log: the raft log itself.
//! - [`placement`]: replica placement; [`names`]: name and subject rules; [`identity`]: ids.
//! - [`context`]: the shared server state; [`nats_conn`]: the NATS connection.
//! - [`error`] / [`status`]: the server's errors and their one mapping to gRPC statuses.
//! - [`encryption`]: encryption at rest of record values (AES-256-GCM data keys per
//!   partition, wrapped by the master key in `LIFTBRIDGE_ENCRYPTION_KEY`); [`key_rotation`]:
//!   re-wrapping them with a new master key on the metadata leader.
//! - [`limits`]: caps on streams, partitions, subscriptions, connections, message size.
//! - [`tls`]: TLS and mutual TLS on the API port, the client identity (certificate CN);
//!   [`authz`]: Liftbridge's casbin ACLs; [`authz_api`]: the API behind them.

pub mod acks;
pub mod activity;
pub mod admin_api;
pub mod api;
pub mod app;
pub mod authz;
pub mod authz_api;
pub mod auto_pause;
pub mod cluster;
pub mod config;
pub mod context;
pub mod dedup;
pub mod disk_handoff;
pub mod diskspace;
pub mod embedded_nats;
pub mod encryption;
pub mod envelope;
pub mod error;
pub mod groups;
pub mod identity;
pub mod ingest;
pub mod isr;
pub mod key_rotation;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod nats_conn;
pub mod partition_log;
pub mod partitions;
pub mod placement;
pub mod retention;
pub mod stats;
pub mod status;
pub mod tls;
