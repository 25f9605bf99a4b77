//! [`Guarded`]: `proto.API` behind authorization (`tls.client.authz.enabled`).
//!
//! A decorator over the API service: each call is checked with the [`Authorizer`] before the
//! inner service sees it, so the handlers in [`crate::api`] know nothing of authorization.
//! The request checked is (client identity, object, RPC name), the object being:
//! - the stream the call names (`name` or `stream` in the request), for CreateStream,
//!   DeleteStream, PauseStream, SetStreamReadonly, Subscribe, FetchPartitionMetadata, Publish,
//!   SetCursor, FetchCursor, and for each message of PublishAsync;
//! - the subject, for PublishToSubject;
//! - `*` for the calls that name no single stream: FetchMetadata and the consumer-group calls.
//!
//! It also applies the API limits of [`crate::limits`]: stream and partition counts on
//! CreateStream, concurrent subscriptions on Subscribe (after authorization).
//!
//! A denied call ends with PermissionDenied ("The client is not authorized to call X on
//! resource Y"; Liftbridge answers Unknown with that text). A denied PublishAsync message
//! gets a response with a PERMISSION_DENIED `asyncError` and its correlation id, and, unlike
//! Liftbridge (which publishes it anyway), is not published; the session goes on.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use drawbridge_proto::api::api_server::Api;
use drawbridge_proto::api::*;
use futures::Stream;
use http_body::Frame;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Codec;
use tonic::{Request, Response, Status, Streaming};

use crate::authz::Authorizer;
use crate::limits::Limits;
use crate::tls::client_identity;

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Subscribe's encoded frames ([`crate::api::frames`]), holding the subscription's slot.
pub type FrameStream = BoxStream<Bytes>;

/// The API service `S`, with every call authorized first when `authz` is set, and limited
/// by `limits` when set.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    authz: Option<Arc<Authorizer>>,
    limits: Option<Arc<Limits>>,
}

impl<S> Guarded<S> {
    /// `inner` behind `authz` (None: every call passes) and `limits` (None: no limits).
    pub fn new(inner: S, authz: Option<Arc<Authorizer>>, limits: Option<Arc<Limits>>) -> Self {
        Self {
            inner,
            authz,
            limits,
        }
    }

    fn check<T>(&self, req: &Request<T>, obj: &str, act: &str) -> Result<(), Status> {
        let Some(authz) = &self.authz else {
            return Ok(());
        };
        if authz.allows(client_identity(req).as_deref(), obj, act) {
            Ok(())
        } else {
            Err(denied(act, obj))
        }
    }
}

fn denied_text(act: &str, obj: &str) -> String {
    format!("The client is not authorized to call {act} on resource {obj}")
}

fn denied(act: &str, obj: &str) -> Status {
    Status::permission_denied(denied_text(act, obj))
}

/// One gRPC message frame (uncompressed): flag, big-endian length, protobuf bytes.
fn grpc_frame(m: &PublishRequest) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    m.encode_raw(&mut buf);
    buf.freeze()
}

impl Guarded<crate::api::ApiService> {
    /// Subscribe with encoded frames ([`crate::api::frames::SubscribeRoute`]): authorized and
    /// limited exactly as [`Api::subscribe`].
    pub async fn subscribe_frames(&self, r: Request<SubscribeRequest>) -> Res<FrameStream> {
        self.check(&r, &r.get_ref().stream, "Subscribe")?;
        let slot = match &self.limits {
            Some(l) => Some(l.subscription()?),
            None => None,
        };
        let out = self.inner.subscribe_frames(r).await?.into_inner();
        // The slot lives as long as the response stream: the client's subscription.
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            out,
            move |f| {
                let _ = &slot;
                f
            },
        ))))
    }
}

macro_rules! guarded {
    ($self:ident, $r:ident, $method:ident, $act:literal, |$m:ident| $obj:expr) => {{
        let $m = $r.get_ref();
        let obj: String = $obj;
        $self.check(&$r, &obj, $act)?;
        $self.inner.$method($r).await
    }};
    ($self:ident, $r:ident, $act:literal, |$m:ident| $obj:expr) => {{
        let $m = $r.get_ref();
        let obj: String = $obj;
        $self.check(&$r, &obj, $act)?;
    }};
}

#[tonic::async_trait]
impl<S: Api> Api for Guarded<S> {
    async fn create_stream(&self, r: Request<CreateStreamRequest>) -> Res<CreateStreamResponse> {
        guarded!(self, r, "CreateStream", |m| m.name.clone());
        if let Some(limits) = &self.limits {
            limits.check_create_stream(r.get_ref().partitions)?;
        }
        self.inner.create_stream(r).await
    }

    async fn delete_stream(&self, r: Request<DeleteStreamRequest>) -> Res<DeleteStreamResponse> {
        guarded!(self, r, delete_stream, "DeleteStream", |m| m.name.clone())
    }

    async fn pause_stream(&self, r: Request<PauseStreamRequest>) -> Res<PauseStreamResponse> {
        guarded!(self, r, pause_stream, "PauseStream", |m| m.name.clone())
    }

    async fn set_stream_readonly(
        &self,
        r: Request<SetStreamReadonlyRequest>,
    ) -> Res<SetStreamReadonlyResponse> {
        guarded!(self, r, set_stream_readonly, "SetStreamReadonly", |m| m
            .name
            .clone())
    }

    type SubscribeStream = BoxStream<Message>;

    // The server's own route is `Guarded::subscribe_frames` (same checks); this serves callers
    // of the trait.

    async fn subscribe(&self, r: Request<SubscribeRequest>) -> Res<Self::SubscribeStream> {
        guarded!(self, r, "Subscribe", |m| m.stream.clone());
        let slot = match &self.limits {
            Some(l) => Some(l.subscription()?),
            None => None,
        };
        let out = self.inner.subscribe(r).await?.into_inner();
        // The slot lives as long as the response stream: the client's subscription.
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            out,
            move |m| {
                let _ = &slot;
                m
            },
        ))))
    }

    async fn fetch_metadata(&self, r: Request<FetchMetadataRequest>) -> Res<FetchMetadataResponse> {
        guarded!(self, r, fetch_metadata, "FetchMetadata", |_m| "*"
            .to_owned())
    }

    async fn fetch_partition_metadata(
        &self,
        r: Request<FetchPartitionMetadataRequest>,
    ) -> Res<FetchPartitionMetadataResponse> {
        guarded!(
            self,
            r,
            fetch_partition_metadata,
            "FetchPartitionMetadata",
            |m| m.stream.clone()
        )
    }

    async fn publish(&self, r: Request<PublishRequest>) -> Res<PublishResponse> {
        guarded!(self, r, publish, "Publish", |m| m.stream.clone())
    }

    type PublishAsyncStream = BoxStream<PublishResponse>;

    async fn publish_async(
        &self,
        r: Request<Streaming<PublishRequest>>,
    ) -> Res<Self::PublishAsyncStream> {
        let Some(authz) = self.authz.clone() else {
            let out = self.inner.publish_async(r).await?.into_inner();
            return Ok(Response::new(Box::pin(out)));
        };
        let identity = client_identity(&r);
        let (meta, ext, mut incoming) = r.into_parts();
        // Allowed messages are re-framed into a body the inner service decodes as usual;
        // denied ones are answered here.
        let (body_tx, body_rx) = mpsc::channel::<Result<Frame<Bytes>, Status>>(64);
        let (deny_tx, deny_rx) = mpsc::channel::<Result<PublishResponse, Status>>(64);
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(m)) => {
                        if authz.allows(identity.as_deref(), &m.stream, "PublishAsync") {
                            if body_tx.send(Ok(Frame::data(grpc_frame(&m)))).await.is_err() {
                                return;
                            }
                        } else {
                            let resp = PublishResponse {
                                ack: Some(Ack::default()),
                                async_error: Some(PublishAsyncError {
                                    code: publish_async_error::Code::PermissionDenied as i32,
                                    message: denied_text("PublishAsync", &m.stream),
                                }),
                                correlation_id: m.correlation_id,
                            };
                            if deny_tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = body_tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        let body = http_body_util::StreamBody::new(ReceiverStream::new(body_rx));
        let mut codec = tonic_prost::ProstCodec::<PublishResponse, PublishRequest>::default();
        let streaming = Streaming::new_request(codec.decoder(), body, None, None);
        let out = self
            .inner
            .publish_async(Request::from_parts(meta, ext, streaming))
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(futures::stream::select(
            out,
            ReceiverStream::new(deny_rx),
        ))))
    }

    async fn publish_to_subject(
        &self,
        r: Request<PublishToSubjectRequest>,
    ) -> Res<PublishToSubjectResponse> {
        guarded!(self, r, publish_to_subject, "PublishToSubject", |m| m
            .subject
            .clone())
    }

    async fn set_cursor(&self, r: Request<SetCursorRequest>) -> Res<SetCursorResponse> {
        guarded!(self, r, set_cursor, "SetCursor", |m| m.stream.clone())
    }

    async fn fetch_cursor(&self, r: Request<FetchCursorRequest>) -> Res<FetchCursorResponse> {
        guarded!(self, r, fetch_cursor, "FetchCursor", |m| m.stream.clone())
    }

    async fn join_consumer_group(
        &self,
        r: Request<JoinConsumerGroupRequest>,
    ) -> Res<JoinConsumerGroupResponse> {
        guarded!(self, r, join_consumer_group, "JoinConsumerGroup", |_m| "*"
            .to_owned())
    }

    async fn leave_consumer_group(
        &self,
        r: Request<LeaveConsumerGroupRequest>,
    ) -> Res<LeaveConsumerGroupResponse> {
        guarded!(self, r, leave_consumer_group, "LeaveConsumerGroup", |_m| {
            "*".to_owned()
        })
    }

    async fn fetch_consumer_group_assignments(
        &self,
        r: Request<FetchConsumerGroupAssignmentsRequest>,
    ) -> Res<FetchConsumerGroupAssignmentsResponse> {
        guarded!(
            self,
            r,
            fetch_consumer_group_assignments,
            "FetchConsumerGroupAssignments",
            |_m| "*".to_owned()
        )
    }

    async fn report_consumer_group_coordinator(
        &self,
        r: Request<ReportConsumerGroupCoordinatorRequest>,
    ) -> Res<ReportConsumerGroupCoordinatorResponse> {
        guarded!(
            self,
            r,
            report_consumer_group_coordinator,
            "ReportConsumerGroupCoordinator",
            |_m| "*".to_owned()
        )
    }
}
