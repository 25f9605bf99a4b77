//! The client's real logic over real gRPC on 127.0.0.1, against a tiny in-test server.
//!
//! `FakeBroker` implements `proto.API` with in-memory behaviour for the RPCs the client flows
//! touch (metadata, create/delete, Publish, PublishAsync, Subscribe, partition metadata,
//! cursors). Two brokers ("b1", "b2") share one `State`, so tests can move partition
//! leadership and inject faults: an `Unavailable` in the middle of a subscription (which also
//! moves leadership), a stale leader that answers `FailedPrecondition`, a PublishAsync stream
//! that breaks, a server that never acks. Every test runs under a 30 s timeout, and every loop
//! in the fake server is bounded.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drawbridge_client::{
    key_partition, AckPolicy, ClientBuilder, EndReason, Error, PauseOptions, PublishMessage,
    Publisher, PublisherOptions, ReadonlyOptions, RetryPolicy, StartAt, StopAt, StreamOptions,
    SubscribeOptions,
};
use drawbridge_proto::api;
use drawbridge_proto::api::api_server::{Api, ApiServer};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One partition's records.
#[derive(Debug, Default)]
struct Log {
    records: Vec<api::Message>,
}

#[derive(Debug)]
struct FakeStream {
    subject: String,
    partitions: Vec<Log>,
}

/// What both brokers share.
#[derive(Debug, Default)]
struct State {
    brokers: Vec<api::Broker>,
    /// Leader of every partition of user streams.
    leader: String,
    streams: BTreeMap<String, FakeStream>,
    /// Partition count of `__cursors` (0 = no cursors stream); partition p is led by broker
    /// p % 2.
    cursor_partitions: i32,
    cursors: HashMap<String, i64>,
    /// Observations for assertions.
    fetch_metadata_calls: u32,
    subscribe_calls: Vec<String>,
    publish_had_deadline: Vec<bool>,
    expected_offsets: Vec<(i32, i64)>,
    publish_async_opens: u32,
    refused_not_leader: u32,
    admin_calls: Vec<String>,
    /// Faults: the next Subscribe stream fails with Unavailable after this many records and
    /// leadership moves to the other broker.
    unavailable_after: Option<usize>,
}

impl State {
    fn other_broker(&self, id: &str) -> String {
        self.brokers
            .iter()
            .map(|b| b.id.clone())
            .find(|b| b != id)
            .unwrap_or_default()
    }

    fn leader_of(&self, stream: &str, partition: i32) -> String {
        if stream == "__cursors" {
            return self.brokers[(partition % 2) as usize].id.clone();
        }
        self.leader.clone()
    }

    fn partition_metadata(&self, stream: &str, p: i32, len: usize) -> api::PartitionMetadata {
        let leader = self.leader_of(stream, p);
        let newest = len as i64 - 1;
        api::PartitionMetadata {
            id: p,
            leader: leader.clone(),
            replicas: vec![leader.clone()],
            isr: vec![leader],
            high_watermark: newest,
            newest_offset: newest,
            ..Default::default()
        }
    }

    fn append(&mut self, req: &api::PublishRequest) -> Result<api::Ack, Status> {
        let s = self
            .streams
            .get_mut(&req.stream)
            .ok_or_else(|| Status::not_found("No such stream"))?;
        let log = usize::try_from(req.partition)
            .ok()
            .and_then(|p| s.partitions.get_mut(p))
            .ok_or_else(|| Status::not_found("No such partition"))?;
        let offset = log.records.len() as i64;
        log.records.push(api::Message {
            offset,
            key: req.key.clone(),
            value: req.value.clone(),
            timestamp: 1_700_000_000_000_000_000 + offset,
            stream: req.stream.clone(),
            partition: req.partition,
            subject: s.subject.clone(),
            headers: req.headers.clone(),
            ..Default::default()
        });
        let mut ack = api::Ack {
            stream: req.stream.clone(),
            partition_subject: s.subject.clone(),
            msg_subject: s.subject.clone(),
            offset,
            correlation_id: req.correlation_id.clone(),
            ..Default::default()
        };
        ack.set_ack_policy(req.ack_policy());
        Ok(ack)
    }
}

#[derive(Clone)]
struct FakeBroker {
    id: String,
    state: Arc<Mutex<State>>,
}

impl FakeBroker {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock(state: &Arc<Mutex<State>>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[tonic::async_trait]
impl Api for FakeBroker {
    async fn create_stream(
        &self,
        request: Request<api::CreateStreamRequest>,
    ) -> Result<Response<api::CreateStreamResponse>, Status> {
        let req = request.into_inner();
        let mut st = self.state();
        if st.streams.contains_key(&req.name) {
            return Err(Status::already_exists("stream already exists"));
        }
        let n = req.partitions.max(1) as usize;
        st.streams.insert(
            req.name,
            FakeStream {
                subject: req.subject,
                partitions: (0..n).map(|_| Log::default()).collect(),
            },
        );
        Ok(Response::new(api::CreateStreamResponse {}))
    }

    async fn delete_stream(
        &self,
        request: Request<api::DeleteStreamRequest>,
    ) -> Result<Response<api::DeleteStreamResponse>, Status> {
        match self.state().streams.remove(&request.into_inner().name) {
            Some(_) => Ok(Response::new(api::DeleteStreamResponse {})),
            None => Err(Status::not_found("no such stream")),
        }
    }

    async fn pause_stream(
        &self,
        request: Request<api::PauseStreamRequest>,
    ) -> Result<Response<api::PauseStreamResponse>, Status> {
        let req = request.into_inner();
        let mut st = self.state();
        if !st.streams.contains_key(&req.name) {
            return Err(Status::not_found("no such stream"));
        }
        st.admin_calls.push(format!(
            "pause {} {:?} {}",
            req.name, req.partitions, req.resume_all
        ));
        Ok(Response::new(api::PauseStreamResponse {}))
    }

    async fn set_stream_readonly(
        &self,
        request: Request<api::SetStreamReadonlyRequest>,
    ) -> Result<Response<api::SetStreamReadonlyResponse>, Status> {
        let req = request.into_inner();
        let mut st = self.state();
        if !st.streams.contains_key(&req.name) {
            return Err(Status::not_found("no such stream"));
        }
        st.admin_calls.push(format!(
            "readonly {} {:?} {}",
            req.name, req.partitions, req.readonly
        ));
        Ok(Response::new(api::SetStreamReadonlyResponse {}))
    }

    type SubscribeStream = ReceiverStream<Result<api::Message, Status>>;

    async fn subscribe(
        &self,
        request: Request<api::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let (start, stop, fail_after) = {
            let mut st = self.state();
            if st.leader_of(&req.stream, req.partition) != self.id {
                st.refused_not_leader += 1;
                st.subscribe_calls.push(format!("{} refused", self.id));
                return Err(Status::failed_precondition("Server not partition leader"));
            }
            let len = st
                .streams
                .get(&req.stream)
                .and_then(|s| s.partitions.get(req.partition as usize))
                .map(|l| l.records.len() as i64)
                .ok_or_else(|| Status::not_found("No such partition"))?;
            let start = match req.start_position() {
                api::StartPosition::Earliest => 0,
                api::StartPosition::Latest => (len - 1).max(0),
                api::StartPosition::NewOnly => len,
                api::StartPosition::Offset => req.start_offset.clamp(0, len),
                api::StartPosition::Timestamp => 0,
            };
            let stop = match req.stop_position() {
                api::StopPosition::StopOnCancel => None,
                api::StopPosition::StopOffset => Some(req.stop_offset),
                api::StopPosition::StopLatest if len == 0 => {
                    return Err(Status::resource_exhausted("Stream is empty"))
                }
                api::StopPosition::StopLatest => Some(len - 1),
                api::StopPosition::StopTimestamp => None,
            };
            st.subscribe_calls
                .push(format!("{} {:?} {}", self.id, req.start_position(), start));
            (start, stop, st.unavailable_after.take())
        };
        let (tx, rx) = mpsc::channel(16);
        let state = Arc::clone(&self.state);
        let me = self.id.clone();
        tokio::spawn(async move {
            // The empty first frame: the subscription exists.
            if tx.send(Ok(api::Message::default())).await.is_err() {
                return;
            }
            let mut next = start;
            let mut sent = 0usize;
            // Bounded: at most ~30 s of tailing, and only while the client listens.
            for _ in 0..3000 {
                if fail_after == Some(sent) {
                    {
                        let mut st = lock(&state);
                        st.leader = st.other_broker(&me);
                    }
                    let _ = tx.send(Err(Status::unavailable("leader lost"))).await;
                    return;
                }
                let record = lock(&state)
                    .streams
                    .get(&req.stream)
                    .and_then(|s| s.partitions.get(req.partition as usize))
                    .and_then(|l| l.records.get(next as usize).cloned());
                match record {
                    Some(m) => {
                        if tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                        sent += 1;
                        if stop == Some(next) {
                            let _ = tx
                                .send(Err(Status::resource_exhausted("Stop offset reached")))
                                .await;
                            return;
                        }
                        next += 1;
                    }
                    None => {
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_metadata(
        &self,
        _: Request<api::FetchMetadataRequest>,
    ) -> Result<Response<api::FetchMetadataResponse>, Status> {
        let mut st = self.state();
        st.fetch_metadata_calls += 1;
        let mut streams: Vec<api::StreamMetadata> = st
            .streams
            .iter()
            .map(|(name, s)| api::StreamMetadata {
                name: name.clone(),
                subject: s.subject.clone(),
                partitions: s
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(p, l)| {
                        let p = p as i32;
                        (p, st.partition_metadata(name, p, l.records.len()))
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        if st.cursor_partitions > 0 {
            streams.push(api::StreamMetadata {
                name: "__cursors".into(),
                subject: "cursors".into(),
                partitions: (0..st.cursor_partitions)
                    .map(|p| (p, st.partition_metadata("__cursors", p, 0)))
                    .collect(),
                ..Default::default()
            });
        }
        Ok(Response::new(api::FetchMetadataResponse {
            brokers: st.brokers.clone(),
            stream_metadata: streams,
            group_metadata: vec![],
        }))
    }

    async fn fetch_partition_metadata(
        &self,
        request: Request<api::FetchPartitionMetadataRequest>,
    ) -> Result<Response<api::FetchPartitionMetadataResponse>, Status> {
        let req = request.into_inner();
        let mut st = self.state();
        if st.leader_of(&req.stream, req.partition) != self.id {
            st.refused_not_leader += 1;
            return Err(Status::failed_precondition("not leader"));
        }
        let len = st
            .streams
            .get(&req.stream)
            .and_then(|s| s.partitions.get(req.partition as usize))
            .map(|l| l.records.len())
            .ok_or_else(|| Status::not_found("No such partition"))?;
        let metadata = st.partition_metadata(&req.stream, req.partition, len);
        Ok(Response::new(api::FetchPartitionMetadataResponse {
            metadata: Some(metadata),
        }))
    }

    async fn publish(
        &self,
        request: Request<api::PublishRequest>,
    ) -> Result<Response<api::PublishResponse>, Status> {
        // Like the real server: the ack is awaited only when the call has a deadline.
        let has_deadline = request.metadata().get("grpc-timeout").is_some();
        let req = request.into_inner();
        if req.stream == "blackhole" {
            tokio::time::sleep(Duration::from_secs(10)).await;
            return Err(Status::deadline_exceeded("no ack"));
        }
        let mut st = self.state();
        st.publish_had_deadline.push(has_deadline);
        st.expected_offsets
            .push((req.partition, req.expected_offset));
        let ack = st.append(&req)?;
        let wait = has_deadline && req.ack_policy() != api::AckPolicy::None;
        Ok(Response::new(api::PublishResponse {
            ack: wait.then_some(ack),
            ..Default::default()
        }))
    }

    type PublishAsyncStream = ReceiverStream<Result<api::PublishResponse, Status>>;

    async fn publish_async(
        &self,
        request: Request<Streaming<api::PublishRequest>>,
    ) -> Result<Response<Self::PublishAsyncStream>, Status> {
        let mut inbound = request.into_inner();
        self.state().publish_async_opens += 1;
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if req.stream == "explode" {
                    let _ = tx.send(Err(Status::unavailable("stream broke"))).await;
                    return;
                }
                if req.stream == "blackhole" {
                    continue;
                }
                let result = lock(&state).append(&req);
                let wants_ack = req.ack_policy() != api::AckPolicy::None;
                let resp = match result {
                    Ok(ack) if wants_ack => api::PublishResponse {
                        correlation_id: ack.correlation_id.clone(),
                        ack: Some(ack),
                        ..Default::default()
                    },
                    Ok(_) => continue,
                    Err(status) => {
                        let mut err = api::PublishAsyncError {
                            message: status.message().to_string(),
                            ..Default::default()
                        };
                        err.set_code(api::publish_async_error::Code::NotFound);
                        api::PublishResponse {
                            ack: Some(api::Ack::default()),
                            async_error: Some(err),
                            correlation_id: req.correlation_id.clone(),
                        }
                    }
                };
                // Answer after a random delay, so acks come back out of order.
                let tx = tx.clone();
                let delay = Duration::from_micros(rand::random::<u64>() % 3000);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Ok(resp)).await;
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish_to_subject(
        &self,
        request: Request<api::PublishToSubjectRequest>,
    ) -> Result<Response<api::PublishToSubjectResponse>, Status> {
        let has_deadline = request.metadata().get("grpc-timeout").is_some();
        let req = request.into_inner();
        let mut st = self.state();
        let name = st
            .streams
            .iter()
            .find(|(_, s)| s.subject == req.subject)
            .map(|(n, _)| n.clone());
        let ack = match name {
            Some(stream) => Some(st.append(&api::PublishRequest {
                stream,
                value: req.value.clone(),
                correlation_id: req.correlation_id.clone(),
                ..Default::default()
            })?),
            None => None,
        };
        let wait = has_deadline && req.ack_policy() != api::AckPolicy::None;
        Ok(Response::new(api::PublishToSubjectResponse {
            ack: ack.filter(|_| wait),
        }))
    }

    async fn set_cursor(
        &self,
        request: Request<api::SetCursorRequest>,
    ) -> Result<Response<api::SetCursorResponse>, Status> {
        let req = request.into_inner();
        let key = format!("{},{},{}", req.cursor_id, req.stream, req.partition);
        let mut st = self.state();
        let owner = key_partition(key.as_bytes(), st.cursor_partitions as u32);
        if st.leader_of("__cursors", owner) != self.id {
            st.refused_not_leader += 1;
            return Err(Status::failed_precondition(
                "not leader of the cursor partition",
            ));
        }
        st.cursors.insert(key, req.offset);
        Ok(Response::new(api::SetCursorResponse {}))
    }

    async fn fetch_cursor(
        &self,
        request: Request<api::FetchCursorRequest>,
    ) -> Result<Response<api::FetchCursorResponse>, Status> {
        let req = request.into_inner();
        let key = format!("{},{},{}", req.cursor_id, req.stream, req.partition);
        let mut st = self.state();
        let owner = key_partition(key.as_bytes(), st.cursor_partitions as u32);
        if st.leader_of("__cursors", owner) != self.id {
            st.refused_not_leader += 1;
            return Err(Status::failed_precondition(
                "not leader of the cursor partition",
            ));
        }
        let offset = st.cursors.get(&key).copied().unwrap_or(-1);
        Ok(Response::new(api::FetchCursorResponse { offset }))
    }

    async fn join_consumer_group(
        &self,
        _: Request<api::JoinConsumerGroupRequest>,
    ) -> Result<Response<api::JoinConsumerGroupResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn leave_consumer_group(
        &self,
        _: Request<api::LeaveConsumerGroupRequest>,
    ) -> Result<Response<api::LeaveConsumerGroupResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn fetch_consumer_group_assignments(
        &self,
        _: Request<api::FetchConsumerGroupAssignmentsRequest>,
    ) -> Result<Response<api::FetchConsumerGroupAssignmentsResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn report_consumer_group_coordinator(
        &self,
        _: Request<api::ReportConsumerGroupCoordinatorRequest>,
    ) -> Result<Response<api::ReportConsumerGroupCoordinatorResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// Two fake brokers on ephemeral loopback ports; stopped on drop.
struct Cluster {
    state: Arc<Mutex<State>>,
    addrs: Vec<String>,
    shutdowns: Vec<oneshot::Sender<()>>,
    servers: Vec<JoinHandle<()>>,
}

impl Cluster {
    async fn start() -> Cluster {
        let state = Arc::new(Mutex::new(State::default()));
        let mut listeners = Vec::new();
        for id in ["b1", "b2"] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let port = listener.local_addr().expect("local addr").port();
            lock(&state).brokers.push(api::Broker {
                id: id.into(),
                host: "127.0.0.1".into(),
                port: i32::from(port),
                ..Default::default()
            });
            listeners.push((id, listener));
        }
        lock(&state).leader = "b1".into();
        let mut cluster = Cluster {
            state: Arc::clone(&state),
            addrs: Vec::new(),
            shutdowns: Vec::new(),
            servers: Vec::new(),
        };
        for (id, listener) in listeners {
            let addr = listener.local_addr().expect("local addr").to_string();
            let (tx, rx) = oneshot::channel::<()>();
            let svc = ApiServer::new(FakeBroker {
                id: id.into(),
                state: Arc::clone(&state),
            });
            let server = tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = rx.await;
                    })
                    .await;
            });
            cluster.addrs.push(addr);
            cluster.shutdowns.push(tx);
            cluster.servers.push(server);
        }
        cluster
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A client of broker b1 only (b2 is discovered from metadata), with fast retries.
    fn builder(&self) -> ClientBuilder {
        ClientBuilder::new([self.addrs[0].as_str()])
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(5))
            .resubscribe_wait(Duration::from_secs(5))
            .retry(RetryPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
            })
    }

    fn create(&self, name: &str, partitions: usize) {
        self.state().streams.insert(
            name.into(),
            FakeStream {
                subject: name.into(),
                partitions: (0..partitions).map(|_| Log::default()).collect(),
            },
        );
    }

    fn fill(&self, name: &str, n: usize) {
        let mut st = self.state();
        for i in 0..n {
            let req = api::PublishRequest {
                stream: name.into(),
                value: format!("m{i}").into_bytes().into(),
                ..Default::default()
            };
            st.append(&req).expect("append");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for tx in self.shutdowns.drain(..) {
            let _ = tx.send(());
        }
        for s in &self.servers {
            s.abort();
        }
    }
}

/// Creates stream `orders` (one partition) and a publisher whose PublishAsync stream is
/// open: its first message, `first`, is stored at offset 0.
async fn orders_publisher(cluster: &Cluster, first: &str) -> Publisher {
    cluster.create("orders", 1);
    let client = cluster.builder().connect().await.expect("connect");
    let publisher = client.publisher().expect("publisher");
    publisher
        .publish("orders", PublishMessage::new(first.to_string()))
        .await
        .expect("first publish");
    publisher
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

#[tokio::test]
async fn admin_and_unary_publish() {
    bounded(async {
        let cluster = Cluster::start().await;
        // A dead bootstrap address is skipped.
        let client = ClientBuilder::new(["127.0.0.1:1", cluster.addrs[0].as_str()])
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .expect("connect");
        assert_eq!(client.metadata().brokers().count(), 2);

        let opts = StreamOptions {
            partitions: 2,
            ..Default::default()
        };
        client
            .create_stream("orders", "orders", opts.clone())
            .await
            .expect("create");
        assert!(matches!(
            client.create_stream("orders", "orders", opts).await,
            Err(Error::StreamExists)
        ));

        let ack = client
            .publish("orders", PublishMessage::new("a"))
            .await
            .expect("publish")
            .expect("an ack");
        assert_eq!(ack.offset, 0);
        assert!(!ack.correlation_id.is_empty());
        client
            .publish("orders", PublishMessage::new("b").expected_offset(1))
            .await
            .expect("publish");
        assert_eq!(
            client
                .publish(
                    "orders",
                    PublishMessage::new("c").ack_policy(AckPolicy::None)
                )
                .await
                .expect("publish"),
            None
        );
        // Key partitioner: CRC-32("foo") = 2356372769, odd → partition 1 of 2.
        client
            .publish(
                "orders",
                PublishMessage::new("d").key("foo").partition_by_key(),
            )
            .await
            .expect("publish");
        {
            let st = cluster.state();
            assert_eq!(st.expected_offsets, vec![(0, -1), (0, 1), (0, -1), (1, -1)]);
            assert!(st.publish_had_deadline.iter().all(|d| *d));
        }

        assert!(matches!(
            client.publish("nope", PublishMessage::new("x")).await,
            Err(Error::NoSuchPartition(_))
        ));
        let r = client
            .publish(
                "blackhole",
                PublishMessage::new("x").ack_timeout(Duration::from_millis(200)),
            )
            .await;
        assert!(matches!(r, Err(Error::AckTimeout)), "{r:?}");

        let ack = client
            .publish_to_subject("orders", PublishMessage::new("via subject"))
            .await
            .expect("publish to subject")
            .expect("an ack");
        assert_eq!(ack.stream, "orders");
        assert_eq!(ack.offset, 3, "after a, b and c on partition 0");

        client
            .pause_stream(
                "orders",
                PauseOptions {
                    partitions: vec![1],
                    resume_all: true,
                },
            )
            .await
            .expect("pause");
        client
            .set_stream_readonly("orders", ReadonlyOptions::default())
            .await
            .expect("readonly");
        assert!(matches!(
            client.pause_stream("nope", PauseOptions::default()).await,
            Err(Error::NoSuchPartition(_))
        ));
        assert_eq!(
            cluster.state().admin_calls,
            vec!["pause orders [1] true", "readonly orders [] true"]
        );

        let p = client
            .fetch_partition_metadata("orders", 0)
            .await
            .expect("partition metadata");
        assert_eq!(p.newest_offset, 3);
        assert_eq!(p.leader.as_deref(), Some("b1"));

        client.delete_stream("orders").await.expect("delete");
        assert!(matches!(
            client.delete_stream("orders").await,
            Err(Error::NoSuchStream(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn pipelined_publisher_matches_acks_by_correlation_id() {
    bounded(async {
        let cluster = Cluster::start().await;
        cluster.create("orders", 1);
        let client = cluster.builder().connect().await.expect("connect");
        let publisher = client
            .publisher_with(PublisherOptions {
                queue_capacity: 16,
                max_in_flight: 64,
            })
            .expect("publisher");

        let mut futures = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..200 {
            let f = publisher
                .send("orders", PublishMessage::new(format!("m{i}")))
                .await
                .expect("send");
            futures.push(f);
            // Keep some acks unawaited while sending more (window of 64 permits).
            if futures.len() >= 48 {
                let f: drawbridge_client::AckFuture = futures.remove(0);
                let cid = f.correlation_id().to_string();
                let ack = f.await.expect("ack").expect("some ack");
                assert_eq!(ack.correlation_id, cid);
                offsets.push(ack.offset);
            }
        }
        for f in futures {
            let cid = f.correlation_id().to_string();
            let ack = f.await.expect("ack").expect("some ack");
            assert_eq!(ack.correlation_id, cid);
            offsets.push(ack.offset);
        }
        assert_eq!(
            cluster.state().streams["orders"].partitions[0]
                .records
                .len(),
            200
        );
        offsets.sort_unstable();
        assert_eq!(offsets, (0..200).collect::<Vec<i64>>());

        // Per-message errors come back as asyncError, matched by PublishResponse.correlationId.
        assert!(matches!(
            publisher
                .publish("nope", PublishMessage::new("x").partition(0))
                .await,
            Err(Error::NoSuchPartition(_))
        ));
        // Ack policy NONE resolves once the request is on the stream.
        assert_eq!(
            publisher
                .publish(
                    "orders",
                    PublishMessage::new("n").ack_policy(AckPolicy::None)
                )
                .await
                .expect("none"),
            None
        );
        // A silent server: the per-message ack timeout fires.
        let started = std::time::Instant::now();
        assert!(matches!(
            publisher
                .publish(
                    "blackhole",
                    PublishMessage::new("x").ack_timeout(Duration::from_millis(200))
                )
                .await,
            Err(Error::AckTimeout)
        ));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert_eq!(cluster.state().publish_async_opens, 1);
    })
    .await;
}

#[tokio::test]
async fn pipelined_publisher_refuses_a_correlation_id_already_in_flight() {
    bounded(async {
        let cluster = Cluster::start().await;
        // The first message opens the stream; later ones go straight into it.
        let publisher = orders_publisher(&cluster, "open").await;
        let quiet = || {
            PublishMessage::new("x")
                .correlation_id("dup")
                .ack_timeout(Duration::from_millis(300))
        };
        let first = publisher.send("blackhole", quiet()).await.expect("send");
        let second = publisher.send("blackhole", quiet()).await.expect("send");
        assert!(
            matches!(second.await, Err(Error::Config(m)) if m.contains("already in flight")),
            "a second message with a waiting correlation id is refused"
        );
        assert!(matches!(first.await, Err(Error::AckTimeout)));
        // Once the first one is settled, the id may be used again.
        let ack = publisher
            .publish("orders", PublishMessage::new("y").correlation_id("dup"))
            .await
            .expect("publish")
            .expect("an ack");
        assert_eq!(ack.correlation_id, "dup");
    })
    .await;
}

#[tokio::test]
async fn pipelined_publisher_reconnects_after_stream_failure() {
    bounded(async {
        let cluster = Cluster::start().await;
        let publisher = orders_publisher(&cluster, "before").await;
        let err = publisher
            .publish("explode", PublishMessage::new("x"))
            .await
            .expect_err("the stream breaks");
        assert!(matches!(err, Error::PublishStreamReset(_)), "{err:?}");
        assert!(err.is_retryable());
        let ack = publisher
            .publish("orders", PublishMessage::new("after"))
            .await
            .expect("ack on a new stream")
            .expect("some ack");
        assert_eq!(ack.offset, 1);
        assert_eq!(cluster.state().publish_async_opens, 2);
    })
    .await;
}

#[tokio::test]
async fn subscribe_resubscribes_after_unavailable_without_gap_or_duplicate() {
    bounded(async {
        let cluster = Cluster::start().await;
        cluster.create("events", 1);
        cluster.fill("events", 10);
        let client = cluster.builder().connect().await.expect("connect");
        let metadata_calls_before = cluster.state().fetch_metadata_calls;
        // b1 serves 4 records, then fails with Unavailable and leadership moves to b2.
        cluster.state().unavailable_after = Some(4);

        let mut sub = client
            .subscribe(
                "events",
                SubscribeOptions {
                    start: StartAt::Earliest,
                    stop: StopAt::Offset(9),
                    ..Default::default()
                },
            )
            .await
            .expect("subscribe");
        let mut offsets = Vec::new();
        while let Some(m) = sub.next().await {
            let m = m.expect("record");
            assert_eq!(m.value, format!("m{}", m.offset).into_bytes());
            offsets.push(m.offset);
            assert!(offsets.len() <= 10, "no duplicates: {offsets:?}");
        }
        assert_eq!(offsets, (0..10).collect::<Vec<i64>>());
        assert_eq!(sub.end_reason(), Some(&EndReason::StopPositionReached));
        let st = cluster.state();
        assert_eq!(st.subscribe_calls, vec!["b1 Earliest 0", "b2 Offset 4"]);
        assert!(st.fetch_metadata_calls > metadata_calls_before);
    })
    .await;
}

#[tokio::test]
async fn subscribe_retries_a_stale_leader_after_refreshing_metadata() {
    bounded(async {
        let cluster = Cluster::start().await;
        cluster.create("events", 1);
        cluster.fill("events", 3);
        let client = cluster.builder().connect().await.expect("connect");
        // Leadership moves; the client's cached metadata still names b1.
        cluster.state().leader = "b2".into();

        let mut sub = client
            .subscribe(
                "events",
                SubscribeOptions {
                    start: StartAt::Earliest,
                    stop: StopAt::Latest,
                    ..Default::default()
                },
            )
            .await
            .expect("subscribe");
        let mut offsets = Vec::new();
        while let Some(m) = sub.next().await {
            offsets.push(m.expect("record").offset);
            assert!(offsets.len() <= 3);
        }
        assert_eq!(offsets, vec![0, 1, 2]);
        assert_eq!(sub.end_reason(), Some(&EndReason::StopPositionReached));
        let st = cluster.state();
        assert_eq!(st.subscribe_calls, vec!["b1 refused", "b2 Earliest 0"]);
        assert_eq!(st.refused_not_leader, 1);
    })
    .await;
}

#[tokio::test]
async fn subscribe_tails_ends_cleanly_and_reports_missing_partitions() {
    bounded(async {
        let cluster = Cluster::start().await;
        cluster.create("events", 1);
        let client = cluster.builder().connect().await.expect("connect");

        // StopAt::Latest on an empty partition: a clean, immediate end.
        let mut empty = client
            .subscribe(
                "events",
                SubscribeOptions {
                    start: StartAt::Earliest,
                    stop: StopAt::Latest,
                    ..Default::default()
                },
            )
            .await
            .expect("subscribe");
        assert!(empty.next().await.is_none());
        assert_eq!(empty.end_reason(), Some(&EndReason::Empty));

        // Tail: returns once subscribed (first frame), then sees new records.
        let mut tail = client
            .subscribe("events", SubscribeOptions::default())
            .await
            .expect("subscribe");
        let publisher = client.publisher().expect("publisher");
        for i in 0..3 {
            publisher
                .publish("events", PublishMessage::new(format!("t{i}")))
                .await
                .expect("ack");
        }
        for i in 0..3 {
            let m = tail.next().await.expect("a record").expect("ok");
            assert_eq!(m.offset, i);
            assert_eq!(m.value, format!("t{i}").into_bytes());
        }
        drop(tail);

        assert!(matches!(
            client.subscribe("nope", SubscribeOptions::default()).await,
            Err(Error::NoSuchStream(_))
        ));
        assert!(matches!(
            client
                .subscribe(
                    "events",
                    SubscribeOptions {
                        partition: 7,
                        ..Default::default()
                    }
                )
                .await,
            Err(Error::NoSuchPartition(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn cursors_go_to_the_leader_of_their_cursor_partition() {
    bounded(async {
        let cluster = Cluster::start().await;
        cluster.create("orders", 1);
        let client = cluster.builder().connect().await.expect("connect");
        assert!(matches!(
            client.fetch_cursor("c", "orders", 0).await,
            Err(Error::CursorsDisabled)
        ));

        cluster.state().cursor_partitions = 3;
        client.fetch_metadata().await.expect("metadata");
        let ids = ["c1", "c2", "c3", "c4", "c5", "c6"];
        let owners: Vec<i32> = ids
            .iter()
            .map(|id| drawbridge_client::cursor_partition(id, "orders", 0, 3))
            .collect();
        // Partition 1 is led by b2, the others by b1: the keys must reach both brokers.
        assert!(
            owners.contains(&1) && owners.iter().any(|p| *p != 1),
            "{owners:?}"
        );
        for (i, id) in ids.iter().enumerate() {
            client
                .set_cursor(id, "orders", 0, 40 + i as i64)
                .await
                .expect("set cursor");
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                client.fetch_cursor(id, "orders", 0).await.expect("fetch"),
                Some(40 + i as i64)
            );
        }
        assert_eq!(
            client
                .fetch_cursor("unknown", "orders", 0)
                .await
                .expect("fetch"),
            None
        );
        // Every call reached the right leader on the first try.
        assert_eq!(cluster.state().refused_not_leader, 0);
    })
    .await;
}

/// Runs the `drawbridge` binary against the cluster, with optional stdin; bounded in time.
async fn cli(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"));
    cmd.arg("-a")
        .arg(&cluster.addrs[0])
        .arg("--timeout")
        .arg("5s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn drawbridge");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("drawbridge finished in time")
        .expect("drawbridge output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_end_to_end() {
    bounded(async {
        let cluster = Cluster::start().await;
        let (code, out, err) = cli(&cluster, &["stream", "create", "orders"], None).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("created stream orders"), "{out}");

        let (code, _, err) = cli(&cluster, &["stream", "create", "orders"], None).await;
        assert_eq!(code, 1);
        assert_eq!(err.trim(), "error: stream already exists");

        let (code, out, err) = cli(
            &cluster,
            &["publish", "orders", "hello", "-H", "a=1", "-k", "k"],
            None,
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("at offset 0"), "{out}");
        let (code, out, err) =
            cli(&cluster, &["publish", "orders", "--lines"], Some("x\ny\n")).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "1\n2\n");

        let (code, out, err) = cli(
            &cluster,
            &[
                "subscribe",
                "orders",
                "--from",
                "earliest",
                "--to",
                "latest",
                "--format",
                "json",
            ],
            None,
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0]["offset"], 0);
        assert_eq!(lines[0]["value"], "hello");
        assert_eq!(lines[0]["key"], "k");
        assert_eq!(lines[0]["headers"]["a"], "1");
        assert_eq!(lines[2]["value"], "y");

        let (code, out, _) = cli(
            &cluster,
            &["subscribe", "orders", "--from", "offset:1", "-n", "1"],
            None,
        )
        .await;
        assert_eq!(code, 0);
        assert_eq!(out, "x\n");

        let (code, out, err) = cli(&cluster, &["stream", "list"], None).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("| orders | orders | 1 |"), "{out}");
        let (code, out, err) = cli(&cluster, &["stream", "info", "orders"], None).await;
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("| 0 | b1 | b1 | b1 | 2 | 2 | false | false |"),
            "{out}"
        );
        let (code, out, err) = cli(&cluster, &["metadata", "--json"], None).await;
        assert_eq!(code, 0, "{err}");
        let md: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(md["streams"][0]["name"], "orders");

        let (code, out, err) = cli(&cluster, &["cluster", "status"], None).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("brokers: 2\n"), "{out}");
        assert!(out.contains("partitions without a leader: none"), "{out}");

        let (code, out, err) = cli(
            &cluster,
            &[
                "bench",
                "orders",
                "--duration",
                "500ms",
                "--publishers",
                "2",
                "--window",
                "4",
                "--size",
                "16",
            ],
            None,
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("| errors | 0 |"), "{out}");
        assert!(out.contains("| latency p99.9 |"), "{out}");
        assert!(!out.contains("| messages | 0 |"), "{out}");

        let (code, _, err) = cli(&cluster, &["stream", "delete", "nope"], None).await;
        assert_eq!(code, 1);
        assert!(err.starts_with("error: no such stream"), "{err}");
    })
    .await;
}
