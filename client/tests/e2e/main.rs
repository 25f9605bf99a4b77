//! End-to-end tests of the client library and the `drawbridge` CLI against real
//! `drawbridge-server` processes on loopback ports (the harness in `drawbridge-tests`). One
//! test binary, grouped by area:
//! - `library`: the client API against one standalone server (embedded NATS);
//! - `cli`: the built `drawbridge` binary against that server;
//! - `pause`: pause, resume, readonly and reverse reads through the library and the CLI;
//! - `examples`: the programs in `client/examples/` against that server;
//! - `groups`: cursors and consumer groups (library and CLI) on their own standalone server;
//! - `encryption`: encrypted streams (`StreamOptions::encryption`, `stream create --encrypt`)
//!   on a server with a master key, and the errors of one without.
//! - `failover`: three servers on a real `nats-server`, SIGKILL of a partition leader during a
//!   subscription and during pipelined publishing.
//! - `tls`: the library and the CLI over mutual TLS with authorization (certificates minted
//!   here).
//!
//! Tests that run at the same time share one standalone server (`common::shared_server`);
//! the two cluster tests take turns. Every wait is bounded; every process is stopped by PID
//! when its guard drops. The server binary comes from `drawbridge_tests::bins` (built on
//! demand when this package is tested alone).

mod cli;
mod common;
mod encryption;
mod examples;
mod failover;
mod groups;
mod library;
mod pause;
mod tls;
