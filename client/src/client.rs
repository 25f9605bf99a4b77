//! [`Client`]: the cloneable handle, its routing and retry loops, and stream administration.
//!
//! Invariants:
//! 1. A `Client` is an `Arc`: clones share channels, the metadata cache and round-robin
//!    counters. Nothing is closed explicitly; dropping the last clone (and every publisher and
//!    subscription made from it) drops the connections.
//! 2. Calls that any broker may answer go to a known broker, rotating to the next address on
//!    `Unavailable` (go-liftbridge's `doResilientRPC`); the next address is tried at once,
//!    and the back-off is waited only after a full round of addresses failed.
//! 3. Calls that only a partition leader may answer (Subscribe, FetchPartitionMetadata,
//!    cursors) are routed by metadata; on `Unavailable` or `FailedPrecondition` the client
//!    waits, refreshes metadata and tries again (`doResilientLeaderRPC`).
//! 4. Both loops are bounded by [`RetryPolicy::max_attempts`](crate::RetryPolicy) and every
//!    unary attempt carries a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drawbridge_proto::api;
use drawbridge_proto::api::api_client::ApiClient;
use rand::seq::SliceRandom;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::builder::{ClientBuilder, Config};
use crate::connection::Pool;
use crate::error::{lost_connection, Call, Error, Result};
use crate::metadata::{Metadata, MetadataCache, PartitionInfo, Refresh};
use crate::options::{PauseOptions, ReadonlyOptions, StreamOptions};
use crate::partitioner::RoundRobinPartitioner;

/// A handle to a Drawbridge (or Liftbridge) cluster. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> drawbridge_client::Result<()> {
/// use drawbridge_client::{Client, StreamOptions};
///
/// let client = Client::connect(["127.0.0.1:9292"]).await?;
/// client
///     .create_stream("orders", "orders", StreamOptions { partitions: 3, ..Default::default() })
///     .await?;
/// for stream in client.fetch_metadata().await?.streams() {
///     println!("{} ({} partitions)", stream.name, stream.partitions.len());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// State shared by every clone of a client.
#[derive(Debug)]
pub(crate) struct Inner {
    /// Fixed configuration.
    pub(crate) config: Config,
    /// Channels by broker address.
    pub(crate) pool: Pool,
    /// The latest metadata snapshot.
    pub(crate) metadata: MetadataCache,
    /// Round-robin counters of `PublishMessage::partition_round_robin`.
    pub(crate) round_robin: RoundRobinPartitioner,
}

impl Client {
    /// Connects with default settings to a cluster reachable at any of `addrs` (`host:port`).
    /// See [`ClientBuilder`] for timeouts, retries and TLS.
    pub async fn connect<I, S>(addrs: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder::new(addrs).connect().await
    }

    /// A builder, to configure the client before connecting.
    pub fn builder<I, S>(addrs: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder::new(addrs)
    }

    pub(crate) fn from_config(config: Config) -> Client {
        let keepalive = config.keepalive.map(|i| (i, config.keepalive_timeout));
        let pool = Pool::new(config.connect_timeout, keepalive, config.tls.clone());
        Client {
            inner: Arc::new(Inner {
                config,
                pool,
                metadata: MetadataCache::default(),
                round_robin: RoundRobinPartitioner::default(),
            }),
        }
    }

    /// The cached metadata, as last fetched (no network call).
    pub fn metadata(&self) -> Arc<Metadata> {
        self.inner.metadata.get()
    }

    /// Fetches fresh metadata (brokers and every stream) and caches it.
    pub async fn fetch_metadata(&self) -> Result<Arc<Metadata>> {
        self.inner.refresh_metadata().await
    }

    /// The partition leader's live view of one partition (authoritative high watermark and
    /// newest offset).
    pub async fn fetch_partition_metadata(
        &self,
        stream: &str,
        partition: i32,
    ) -> Result<PartitionInfo> {
        let req = api::FetchPartitionMetadataRequest {
            stream: stream.to_string(),
            partition,
        };
        let resp = self
            .inner
            .leader_rpc(
                Call::FetchPartitionMetadata,
                stream,
                partition,
                |mut api, timeout| {
                    let req = req.clone();
                    async move {
                        api.fetch_partition_metadata(with_timeout(req, timeout))
                            .await
                    }
                },
            )
            .await?;
        resp.metadata
            .map(PartitionInfo::from_proto)
            .ok_or_else(|| Error::Protocol("FetchPartitionMetadata without metadata".into()))
    }

    /// Creates stream `name` recording NATS `subject`. Fails with [`Error::StreamExists`] if
    /// the name is taken.
    pub async fn create_stream(
        &self,
        subject: &str,
        name: &str,
        options: StreamOptions,
    ) -> Result<()> {
        let req = options.to_request(subject, name);
        self.inner
            .any_broker_rpc(Call::CreateStream, |mut api, timeout| {
                let req = req.clone();
                async move { api.create_stream(with_timeout(req, timeout)).await }
            })
            .await
            .map(drop)
    }

    /// Deletes a stream and its data. Fails with [`Error::NoSuchStream`] if it does not exist.
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        let req = api::DeleteStreamRequest {
            name: name.to_string(),
        };
        self.inner
            .any_broker_rpc(Call::DeleteStream, |mut api, timeout| {
                let req = req.clone();
                async move { api.delete_stream(with_timeout(req, timeout)).await }
            })
            .await
            .map(drop)
    }

    /// Pauses some or all partitions of a stream. A paused partition resumes when published
    /// to (or, with `resume_all`, when any of the paused partitions is).
    pub async fn pause_stream(&self, name: &str, options: PauseOptions) -> Result<()> {
        let req = api::PauseStreamRequest {
            name: name.to_string(),
            partitions: options.partitions,
            resume_all: options.resume_all,
        };
        self.inner
            .any_broker_rpc(Call::PauseStream, |mut api, timeout| {
                let req = req.clone();
                async move { api.pause_stream(with_timeout(req, timeout)).await }
            })
            .await
            .map(drop)
    }

    /// Sets or clears the readonly flag on some or all partitions of a stream.
    pub async fn set_stream_readonly(&self, name: &str, options: ReadonlyOptions) -> Result<()> {
        let req = api::SetStreamReadonlyRequest {
            name: name.to_string(),
            partitions: options.partitions,
            readonly: options.readonly,
        };
        self.inner
            .any_broker_rpc(Call::SetStreamReadonly, |mut api, timeout| {
                let req = req.clone();
                async move { api.set_stream_readonly(with_timeout(req, timeout)).await }
            })
            .await
            .map(drop)
    }
}

/// A request with a gRPC deadline.
pub(crate) fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

impl Inner {
    /// Addresses to try for calls any broker answers: known brokers, then the bootstrap
    /// addresses, each group shuffled, without duplicates.
    pub(crate) fn candidate_addrs(&self) -> Vec<String> {
        let mut rng = rand::rng();
        let mut known = self.metadata.get().broker_addrs();
        known.shuffle(&mut rng);
        let mut bootstrap = self.config.addrs.clone();
        bootstrap.shuffle(&mut rng);
        let mut out: Vec<String> = Vec::with_capacity(known.len() + bootstrap.len());
        for a in known.into_iter().chain(bootstrap) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// Fetches metadata from the first candidate address that answers, and caches it
    /// (metadata module invariant 3).
    pub(crate) async fn refresh_metadata(&self) -> Result<Arc<Metadata>> {
        let guard = match self.metadata.begin_refresh().await {
            Refresh::Done(m) => return Ok(m),
            Refresh::Fetch(guard) => guard,
        };
        let timeout = self.config.request_timeout;
        let mut last = Error::Unavailable("no broker address to ask".into());
        for addr in self.candidate_addrs() {
            let mut api = match self.pool.client(&addr) {
                Ok(api) => api,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let req = with_timeout(api::FetchMetadataRequest::default(), timeout);
            match bounded(timeout, api.fetch_metadata(req)).await {
                Ok(resp) => {
                    let metadata = Metadata::from_proto(resp.into_inner());
                    return Ok(self.metadata.finish(guard, metadata));
                }
                Err(status) => {
                    tracing::debug!(%addr, %status, "FetchMetadata failed");
                    last = match Error::from_status(Call::FetchMetadata, status) {
                        Error::Unavailable(m) => Error::Unavailable(format!("{addr}: {m}")),
                        e => e,
                    };
                }
            }
        }
        Err(last)
    }

    /// Refreshes metadata, logging (not returning) a failure: used between retries, where
    /// the retried call reports what went wrong.
    pub(crate) async fn refresh_quietly(&self) {
        if let Err(e) = self.refresh_metadata().await {
            tracing::debug!(error = %e, "metadata refresh failed");
        }
    }

    /// Runs a call any broker may answer, rotating brokers on `Unavailable` (module
    /// invariant 2). `f` gets a stub and the deadline to put on the request.
    pub(crate) async fn any_broker_rpc<T, F, Fut>(&self, call: Call, f: F) -> Result<T>
    where
        F: FnMut(ApiClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let timeout = self.config.request_timeout;
        self.any_broker_rpc_with(call, timeout, f).await
    }

    /// [`Inner::any_broker_rpc`] with an explicit deadline (publishes use the ack timeout).
    pub(crate) async fn any_broker_rpc_with<T, F, Fut>(
        &self,
        call: Call,
        timeout: Duration,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(ApiClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let addrs = self.candidate_addrs();
        if addrs.is_empty() {
            return Err(Error::Config("no server address".into()));
        }
        let policy = self.config.retry;
        let mut last = Status::unavailable("no attempt made");
        for attempt in 0..policy.attempts() {
            let idx = usize::try_from(attempt).unwrap_or(0) % addrs.len();
            let api = self.pool.client(&addrs[idx])?;
            match bounded(timeout, f(api, timeout)).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) if status.code() == Code::Unavailable => {
                    tracing::debug!(addr = %addrs[idx], %status, "broker unavailable, retrying");
                    last = status;
                }
                Err(status) => return Err(Error::from_status(call, status)),
            }
            // The next broker is tried at once; the back-off applies after every broker
            // was tried (a dead broker must not slow every call down while others serve).
            let round_done = (idx + 1) % addrs.len() == 0;
            if round_done && attempt + 1 < policy.attempts() {
                let round = u32::try_from(usize::try_from(attempt).unwrap_or(0) / addrs.len())
                    .unwrap_or(u32::MAX);
                tokio::time::sleep(policy.backoff(round)).await;
            }
        }
        Err(Error::from_status(call, last))
    }

    /// Runs a call only the leader of `stream`/`partition` may answer (module invariant 3).
    pub(crate) async fn leader_rpc<T, F, Fut>(
        &self,
        call: Call,
        stream: &str,
        partition: i32,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(ApiClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let timeout = self.config.request_timeout;
        let policy = self.config.retry;
        let mut last = Error::NoKnownLeader {
            stream: stream.to_string(),
            partition,
        };
        for attempt in 0..policy.attempts() {
            if attempt > 0 {
                tokio::time::sleep(policy.backoff(attempt - 1)).await;
                self.refresh_quietly().await;
            }
            let addr = match self
                .metadata
                .get()
                .addr_for_partition(stream, partition, false)
            {
                Ok(addr) => addr,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let api = self.pool.client(&addr)?;
            match bounded(timeout, f(api, timeout)).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status)
                    if matches!(status.code(), Code::Unavailable | Code::FailedPrecondition) =>
                {
                    tracing::debug!(%addr, %status, "leader call refused, refreshing metadata");
                    last = Error::from_status(call, status);
                }
                Err(status) => return Err(Error::from_status(call, status)),
            }
        }
        Err(last)
    }

    /// The number of partitions of `stream`, refreshing metadata (bounded) if the stream is
    /// not cached yet.
    pub(crate) async fn partition_count(&self, stream: &str) -> Result<u32> {
        let policy = self.config.retry;
        for attempt in 0..policy.attempts() {
            if let Some(n) = self.metadata.get().partition_count(stream) {
                return Ok(u32::try_from(n).unwrap_or(u32::MAX));
            }
            if attempt > 0 {
                tokio::time::sleep(policy.backoff(attempt - 1)).await;
            }
            self.refresh_quietly().await;
        }
        match self.metadata.get().partition_count(stream) {
            Some(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None => Err(Error::NoSuchStream(stream.to_string())),
        }
    }
}

/// Runs `fut` under a client-side timer as well as the gRPC deadline, so a server that ignores
/// deadlines cannot hang a call. A little grace lets the server's own DeadlineExceeded win. A
/// connection that broke under the call is reported as `Unavailable` (error module invariant
/// 4), so the callers' retry rules apply to it.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let grace = Duration::from_millis(250);
    match tokio::time::timeout(timeout.saturating_add(grace), fut).await {
        Ok(r) => r.map_err(lost_connection),
        Err(_) => Err(Status::deadline_exceeded("client-side deadline elapsed")),
    }
}
