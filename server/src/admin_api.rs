//! The `drawbridge.admin.v1.Admin` gRPC service: Drawbridge's own administration calls, served
//! on the client API port next to `proto.API` (which stays exactly Liftbridge's).
//!
//! - `ReplicaChecksum`: this server's replica of a partition, summarised over an offset range
//!   ([`drawbridge_storage::RangeChecksum`]), so `drawbridge cluster verify` can compare every
//!   replica of a partition up to their common high watermark.
//!
//! Streams with compaction enabled are summed in [`ChecksumMode::LatestPerKey`] (keyless records
//! and each key's newest record in the range), which does not depend on how far each replica
//! has compacted; other streams cover every record.
//!
//! With `tls.client.authz.enabled`, a call is authorized like the API's calls: subject = the
//! client certificate's common name, object = the stream, action = `ReplicaChecksum`; a denied
//! call is PermissionDenied.
//!
//! Invariants: only committed records are summed (a range above this replica's high watermark
//! is `FailedPrecondition`), so two healthy replicas always agree on a common range; the
//! summing reads the log on a blocking thread, never on the async workers.

use drawbridge_proto::admin::admin_server::Admin;
use drawbridge_proto::admin::{ReplicaChecksumRequest, ReplicaChecksumResponse};
use drawbridge_raft::PartitionId;
use drawbridge_storage::{ChecksumMode, StorageError};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::authz::Authorizer;
use crate::context::Ctx;
use crate::error::{Result, ServerError};
use crate::tls::client_identity;

/// The `drawbridge.admin.v1.Admin` implementation.
#[derive(Debug, Clone)]
pub struct AdminService {
    ctx: Ctx,
    /// The ACLs of `tls.client.authz.*` (shared with the API, reloaded in place on SIGHUP);
    /// `None` lets every call through.
    authz: Option<Arc<Authorizer>>,
}

impl AdminService {
    /// A service over the running server, behind `authz` when set.
    pub fn new(ctx: Ctx, authz: Option<Arc<Authorizer>>) -> Self {
        Self { ctx, authz }
    }
}

fn signed(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// ReplicaChecksum (see the module docs).
pub async fn replica_checksum(
    ctx: &Ctx,
    r: ReplicaChecksumRequest,
) -> Result<ReplicaChecksumResponse> {
    let id = PartitionId::new(r.stream.clone(), r.partition);
    let local = ctx.partitions.get(&id).ok_or_else(|| {
        ServerError::NotFound(format!("no replica of {}/{} here", r.stream, r.partition))
    })?;
    let log = local.log.clone();
    let mut out = ReplicaChecksumResponse {
        server_id: ctx.server_id.clone(),
        leader: local.replica.is_leader(),
        earliest_offset: signed(Some(log.earliest_offset())),
        high_watermark: signed(log.high_watermark()),
        newest_offset: signed(log.newest_offset()),
        start_offset: -1,
        end_offset: -1,
        ..Default::default()
    };
    if r.end_offset < 0 {
        return Ok(out);
    }
    let (from, to) = match (u64::try_from(r.start_offset), u64::try_from(r.end_offset)) {
        (Ok(f), Ok(t)) if f <= t => (f, t),
        _ => {
            return Err(ServerError::InvalidArgument(format!(
                "bad offset range {}..={}",
                r.start_offset, r.end_offset
            )))
        }
    };
    // Replicas of a compacted stream compact at different times: compare what compaction
    // keeps (`ChecksumMode::LatestPerKey`), not the records each happens to still hold.
    let mode = {
        let state = ctx.raft.metadata().state().state;
        match state.streams.get(&id.stream) {
            Some(s) if crate::retention::policy_of(ctx, s).compact => ChecksumMode::LatestPerKey,
            _ => ChecksumMode::Plain,
        }
    };
    let sum = tokio::task::spawn_blocking(move || log.checksum_with(from, to, mode))
        .await
        .map_err(|e| ServerError::Internal(format!("checksum task: {e}")))?
        .map_err(|e| match e {
            StorageError::InvalidArgument(m) => ServerError::FailedPrecondition(m),
            StorageError::OffsetOutOfRange { .. } => ServerError::FailedPrecondition(e.to_string()),
            e => ServerError::Storage(e),
        })?;
    out.records = sum.records;
    out.checksum = sum.checksum;
    out.start_offset = r.start_offset;
    out.end_offset = r.end_offset;
    Ok(out)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn replica_checksum(
        &self,
        r: Request<ReplicaChecksumRequest>,
    ) -> Result<Response<ReplicaChecksumResponse>, Status> {
        if let Some(authz) = &self.authz {
            let stream = &r.get_ref().stream;
            if !authz.allows(client_identity(&r).as_deref(), stream, "ReplicaChecksum") {
                return Err(Status::permission_denied(format!(
                    "The client is not authorized to call ReplicaChecksum on resource {stream}"
                )));
            }
        }
        Ok(Response::new(
            replica_checksum(&self.ctx, r.into_inner()).await?,
        ))
    }
}
