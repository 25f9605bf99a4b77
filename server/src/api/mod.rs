//! The public gRPC service `proto.API` (spec §2), one file per group of RPCs:
//! - [`admin`]: CreateStream, DeleteStream (run on the metadata leader);
//! - [`pause`]: PauseStream, SetStreamReadonly, resuming a paused partition;
//! - [`cursors`]: SetCursor, FetchCursor (on the `__cursors` partition leader);
//! - [`groups`]: the consumer-group RPCs;
//! - [`metadata`]: FetchMetadata, FetchPartitionMetadata;
//! - [`publish`]: Publish, PublishAsync, PublishToSubject (all re-publish onto NATS);
//! - [`inflight`]: a PublishAsync session's unacknowledged messages, failed on leader change;
//! - [`subscribe`]: the Subscribe RPC;
//! - [`frames`]: Subscribe's frames encoded straight from the records, and the route that
//!   serves `/proto.API/Subscribe` with them.
//!
//! Invariants: handlers validate before acting and answer with the spec's status codes (§5),
//! produced only by [`crate::status`]; server streams are a spawned producer feeding a bounded
//! channel (a failed send means the client left), so a slow or vanished client never blocks
//! anything but its own producer.

pub mod admin;
pub mod cursors;
pub mod frames;
pub mod groups;
pub mod inflight;
pub mod metadata;
pub mod pause;
pub mod publish;
pub mod subscribe;

use drawbridge_proto::api::api_server::Api;
use drawbridge_proto::api::*;
use std::time::Instant;

use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::context::Ctx;
use crate::stats::Method;

/// Records the latency of one request (method, final status) and passes its result on.
fn timed<T>(ctx: &Ctx, method: Method, started: Instant, r: crate::error::Result<T>) -> Res<T> {
    let code = match &r {
        Ok(_) => tonic::Code::Ok,
        Err(e) => crate::status::code_of(e),
    };
    ctx.stats.requests.observe(method, code, started.elapsed());
    Ok(Response::new(r?))
}

/// The `proto.API` implementation.
#[derive(Debug, Clone)]
pub struct ApiService {
    ctx: Ctx,
}

impl ApiService {
    /// A service over the running server.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

type Res<T> = Result<Response<T>, Status>;

/// Subscribe's responses as `Message`s (see [`Api::subscribe`] on [`ApiService`]).
pub type MessageStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Message, Status>> + Send + 'static>>;

impl ApiService {
    /// Subscribe, answered with encoded frames ([`subscribe`], [`frames`]); the request is
    /// counted in the request metrics like every other.
    pub async fn subscribe_frames(
        &self,
        r: Request<SubscribeRequest>,
    ) -> Res<subscribe::FrameStream> {
        let t = Instant::now();
        let out = subscribe::subscribe(&self.ctx, r.into_inner()).await;
        timed(&self.ctx, Method::Subscribe, t, out)
    }
}

#[tonic::async_trait]
impl Api for ApiService {
    async fn create_stream(&self, r: Request<CreateStreamRequest>) -> Res<CreateStreamResponse> {
        Ok(Response::new(
            admin::create_stream(&self.ctx, r.into_inner()).await?,
        ))
    }

    async fn delete_stream(&self, r: Request<DeleteStreamRequest>) -> Res<DeleteStreamResponse> {
        Ok(Response::new(
            admin::delete_stream(&self.ctx, r.into_inner()).await?,
        ))
    }

    async fn pause_stream(&self, r: Request<PauseStreamRequest>) -> Res<PauseStreamResponse> {
        Ok(Response::new(
            pause::pause_stream(&self.ctx, r.into_inner()).await?,
        ))
    }

    async fn set_stream_readonly(
        &self,
        r: Request<SetStreamReadonlyRequest>,
    ) -> Res<SetStreamReadonlyResponse> {
        Ok(Response::new(
            pause::set_stream_readonly(&self.ctx, r.into_inner()).await?,
        ))
    }

    type SubscribeStream = MessageStream;

    /// The frames of [`ApiService::subscribe_frames`], decoded. The server's own route
    /// ([`frames::SubscribeRoute`]) sends the frames as they are instead.
    async fn subscribe(&self, r: Request<SubscribeRequest>) -> Res<Self::SubscribeStream> {
        let frames = self.subscribe_frames(r).await?.into_inner();
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            frames,
            |f| {
                f.and_then(|b| {
                    Message::decode(b).map_err(|e| Status::internal(format!("frame: {e}")))
                })
            },
        ))))
    }

    async fn fetch_metadata(&self, r: Request<FetchMetadataRequest>) -> Res<FetchMetadataResponse> {
        Ok(Response::new(
            metadata::fetch_metadata(&self.ctx, r.into_inner()).await?,
        ))
    }

    async fn fetch_partition_metadata(
        &self,
        r: Request<FetchPartitionMetadataRequest>,
    ) -> Res<FetchPartitionMetadataResponse> {
        Ok(Response::new(metadata::fetch_partition_metadata(
            &self.ctx,
            r.into_inner(),
        )?))
    }

    async fn publish(&self, r: Request<PublishRequest>) -> Res<PublishResponse> {
        let deadline = publish::deadline_of(r.metadata());
        let t = Instant::now();
        let out = publish::publish(&self.ctx, r.into_inner(), deadline).await;
        timed(&self.ctx, Method::Publish, t, out)
    }

    type PublishAsyncStream = ReceiverStream<Result<PublishResponse, Status>>;

    async fn publish_async(
        &self,
        r: Request<Streaming<PublishRequest>>,
    ) -> Res<Self::PublishAsyncStream> {
        Ok(Response::new(
            publish::publish_async(self.ctx.clone(), r.into_inner()).await?,
        ))
    }

    async fn publish_to_subject(
        &self,
        r: Request<PublishToSubjectRequest>,
    ) -> Res<PublishToSubjectResponse> {
        let deadline = publish::deadline_of(r.metadata());
        let t = Instant::now();
        let out = publish::publish_to_subject(&self.ctx, r.into_inner(), deadline).await;
        timed(&self.ctx, Method::PublishToSubject, t, out)
    }

    async fn set_cursor(&self, r: Request<SetCursorRequest>) -> Res<SetCursorResponse> {
        Ok(Response::new(
            cursors::set_cursor(&self.ctx, r.into_inner()).await?,
        ))
    }

    async fn fetch_cursor(&self, r: Request<FetchCursorRequest>) -> Res<FetchCursorResponse> {
        Ok(Response::new(cursors::fetch_cursor(
            &self.ctx,
            r.into_inner(),
        )?))
    }

    async fn join_consumer_group(
        &self,
        r: Request<JoinConsumerGroupRequest>,
    ) -> Res<JoinConsumerGroupResponse> {
        Ok(Response::new(
            groups::join(&self.ctx, r.into_inner()).await?,
        ))
    }

    async fn leave_consumer_group(
        &self,
        r: Request<LeaveConsumerGroupRequest>,
    ) -> Res<LeaveConsumerGroupResponse> {
        Ok(Response::new(
            groups::leave(&self.ctx, r.into_inner()).await?,
        ))
    }

    async fn fetch_consumer_group_assignments(
        &self,
        r: Request<FetchConsumerGroupAssignmentsRequest>,
    ) -> Res<FetchConsumerGroupAssignmentsResponse> {
        Ok(Response::new(groups::fetch_assignments(
            &self.ctx,
            r.into_inner(),
        )?))
    }

    async fn report_consumer_group_coordinator(
        &self,
        r: Request<ReportConsumerGroupCoordinatorRequest>,
    ) -> Res<ReportConsumerGroupCoordinatorResponse> {
        Ok(Response::new(
            groups::report(&self.ctx, r.into_inner()).await?,
        ))
    }
}
