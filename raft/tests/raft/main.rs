//! Integration tests of drawbridge-raft over the real gRPC transport on 127.0.0.1 (ephemeral
//! ports, temp dirs). Every wait is bounded.

mod append_stream;
mod compaction;
mod disk_handoff;
mod harness;
mod lazy_sync;
mod metadata_cluster;
mod network_partitions;
mod partition_cluster;
mod power_loss;
mod quiescence;
mod storage_faults;
mod storage_suite;
