//! The raft transport: one tonic service carrying every group's raft RPCs, one HTTP/2 channel per
//! peer.
//!
//! - [`group_kind`]: what differs between the metadata and the partition type configs on the wire
//!   (the snapshot payload type).
//! - [`wire`]: proto `GroupId` <-> [`GroupId`](crate::GroupId), request/reply framing.
//! - [`router`]: the client side; one lazily connected `Channel` per peer shared by all groups
//!   (openraft-multi's `GroupRouter`).
//! - [`network`]: the per-group `RaftNetworkFactory` handed to `Raft::new`.
//! - [`registry`]: group id -> raft handle, consulted by the server side.
//! - [`service`]: the server side (`RaftTransport` service), dispatching by group id.

pub(crate) mod group_kind;
pub(crate) mod network;
pub(crate) mod registry;
pub(crate) mod router;
pub(crate) mod service;
pub(crate) mod wire;

pub(crate) use network::NetworkFactory;
pub(crate) use registry::GroupRegistry;
pub(crate) use router::Router;
