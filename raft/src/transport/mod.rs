//! The raft transport: one tonic service carrying every group's raft RPCs, one HTTP/2 channel per
//! peer.
//!
//! - [`group_kind`]: what differs between the metadata and the partition type configs on the wire
//!   (the snapshot payload type).
//! - [`wire`]: proto `GroupId` <-> [`GroupId`](crate::GroupId), request/reply framing.
//! - [`router`]: the client side; one lazily connected `Channel` per peer shared by all groups
//!   (openraft-multi's `GroupRouter`).
//! - [`network`]: the per-group `RaftNetworkFactory` handed to `Raft::new`.
//! - [`registry`]: group id -> raft handle, consulted by the server side; also the node's lead
//!   gate, which answers `MayLead` probes (`RaftNode::hand_off_leadership`).
//! - [`service`]: the server side (`RaftTransport` service), dispatching by group id.
//! - [`faults`]: tests only: blocked, dropped and delayed RPCs between chosen nodes.
//! - [`append_stream`]: a replication stream (openraft's `stream_append`) on one bidirectional
//!   call, several requests in flight.
//! - [`coalesce`]: heartbeats (append-entries without entries) of many groups to one peer in one
//!   RPC.
//! - [`liveness`]: one beat per peer listing the groups this node leads quiesced (in place of
//!   their heartbeats).

pub(crate) mod append_stream;
pub(crate) mod coalesce;
pub mod faults;
pub(crate) mod group_kind;
pub(crate) mod liveness;
pub(crate) mod network;
pub(crate) mod registry;
pub(crate) mod router;
pub(crate) mod service;
pub(crate) mod wire;

pub(crate) use network::NetworkFactory;
pub(crate) use registry::GroupRegistry;
pub(crate) use router::Router;

/// Streams one peer may have open on the shared connection. Every group has at most a few RPCs
/// in flight (one append stream or heartbeat per follower, votes during elections), so this is
/// sized for thousands of groups rather than hyper's default of 200.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 65_536;

/// Streams a peer may reset before the server accepted them. h2 defaults to 20 and answers more
/// with `GOAWAY(ENHANCE_YOUR_CALM, "too_many_resets")`, which closes the connection *every group*
/// shares. Raft cancels RPCs as a matter of course (timeouts, a new term abandons the old
/// round's votes), and with hundreds of groups a busy moment produces dozens of such resets at
/// once: measured with 500 groups, this GOAWAY tore the connection down repeatedly, every
/// group's heartbeats failed with it, and elections never settled. Peers are trusted cluster
/// members on the internal transport, so the limit is raised rather than the connection closed.
pub(crate) const MAX_PENDING_ACCEPT_RESETS: usize = 65_536;

/// HTTP/2 connection flow-control window, both sides. Also sizes h2's small-DATA-frame flood
/// budget (half the connection window): every raft message is a small DATA frame (a heartbeat
/// or vote is ~100 bytes and costs ~150 bytes of that budget until the service reads it). With
/// the spec's 64 KiB window (which `http2_adaptive_window` forces) the budget is 32 KiB, a few
/// hundred in-flight messages, and h2 answers more with
/// `GOAWAY(ENHANCE_YOUR_CALM, "too_many_data_frames")` — measured with 500 groups. So the
/// window is fixed and large, and adaptive windows stay off.
pub(crate) const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// HTTP/2 per-stream window, both sides (a stream carries one raft message).
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// The tonic server of the raft transport, with HTTP/2 limits for many groups on one
/// connection (see [`MAX_CONCURRENT_STREAMS`], [`MAX_PENDING_ACCEPT_RESETS`]).
pub(crate) fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .http2_max_local_error_reset_streams(None)
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .initial_stream_window_size(Some(STREAM_WINDOW))
}
