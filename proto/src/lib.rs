//! Protobuf types and gRPC stubs for Drawbridge.
//!
//! - [`api`]: the public client API, wire-compatible with Liftbridge (`package proto`, service
//!   `proto.API`). Package, service, method, message and field names and numbers follow
//!   Liftbridge's `api.proto` exactly, so any Liftbridge client works against Drawbridge.
//! - [`raft`]: the internal transport that carries raft traffic for every raft group between
//!   Drawbridge nodes (package `drawbridge.raft`). Not a public contract.
//! - [`admin`]: Drawbridge's own administration service (package `drawbridge.admin.v1`,
//!   e.g. replica checksums for `drawbridge cluster verify`), served next to `proto.API`.
//!
//! This crate holds no logic: only generated code.

/// Liftbridge-compatible public API (`package proto`).
#[allow(
    clippy::all,
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms
)]
pub mod api {
    tonic::include_proto!("proto");
}

/// Internal raft transport between Drawbridge nodes (`package drawbridge.raft`).
#[allow(
    clippy::all,
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms
)]
pub mod raft {
    tonic::include_proto!("drawbridge.raft");
}

/// Drawbridge's administration API (`package drawbridge.admin.v1`); not part of Liftbridge.
#[allow(
    clippy::all,
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms
)]
pub mod admin {
    tonic::include_proto!("drawbridge.admin.v1");
}
