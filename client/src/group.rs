//! Consumer groups (beta in Liftbridge; wire spec §4.6, §11).
//!
//! Two layers:
//! - the four RPCs as plain calls ([`Client::join_consumer_group`], ...), routed as the spec
//!   says: Join, Leave and Report to any broker, FetchConsumerGroupAssignments to the group's
//!   coordinator;
//! - [`GroupConsumer`] ([`Client::consumer_group`]): a `Stream` of the messages of every
//!   partition assigned to this member. A driver task joins, polls assignments (the heartbeat)
//!   every 0.4 × `consumerTimeout`, follows the coordinator and epoch through FetchMetadata on
//!   FailedPrecondition, reports a coordinator silent for `coordinatorTimeout`, rejoins after
//!   expiry, subscribes to newly assigned partitions and stops reading unassigned ones.
//!   [`GroupConsumer::commit`] stores the group cursor `__group:<groupId>`; a newly assigned
//!   partition starts at that cursor + 1, else at [`GroupOptions::start`].
//!
//! Invariants:
//! 1. At most one reader task per assigned (stream, partition); it is aborted as soon as an
//!    assignment answer no longer lists its partition.
//! 2. Subscriptions carry the member's latest epoch; a reader re-opening after an error uses the
//!    epoch of the last assignment answer.
//! 3. The driver and its readers end when the [`GroupConsumer`] is dropped (or left); every
//!    wait in them is bounded by the poll interval or the request timeout.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use drawbridge_proto::api;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::client::{bounded, with_timeout, Client, Inner};
use crate::error::{Call, Error, Result};
use crate::message::Message;
use crate::options::StartAt;

/// Messages buffered between the readers and the consumer.
const CHANNEL: usize = 256;
/// Shortest assignment poll interval.
const MIN_POLL: Duration = Duration::from_millis(100);
/// Re-opens of one reader without progress before it gives up (the driver restarts it if the
/// partition is still assigned).
const READER_ATTEMPTS: u32 = 5;

/// The cursor id of a group's committed positions (go-liftbridge's convention).
pub fn group_cursor_id(group: &str) -> String {
    format!("__group:{group}")
}

/// The answer to JoinConsumerGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupJoin {
    /// Server id of the group's coordinator.
    pub coordinator: String,
    /// The group epoch.
    pub epoch: u64,
    /// Members must poll their assignments faster than this.
    pub consumer_timeout: Duration,
    /// Report the coordinator after it was silent this long.
    pub coordinator_timeout: Duration,
}

/// This member's partitions in an epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupAssignments {
    /// The epoch of the answer.
    pub epoch: u64,
    /// Partitions by stream.
    pub partitions: BTreeMap<String, Vec<i32>>,
}

/// Options of [`Client::consumer_group`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupOptions {
    /// Where a newly assigned partition without a group cursor starts.
    pub start: StartAt,
}

fn nanos(ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

impl Client {
    /// Joins (or creates) `group` as `consumer`, reading `streams`.
    pub async fn join_consumer_group(
        &self,
        group: &str,
        consumer: &str,
        streams: &[String],
    ) -> Result<GroupJoin> {
        let req = api::JoinConsumerGroupRequest {
            group_id: group.to_string(),
            consumer_id: consumer.to_string(),
            streams: streams.to_vec(),
        };
        let r = self
            .inner
            .any_broker_rpc(Call::Group, |mut api, timeout| {
                let req = req.clone();
                async move { api.join_consumer_group(with_timeout(req, timeout)).await }
            })
            .await?;
        Ok(GroupJoin {
            coordinator: r.coordinator,
            epoch: r.epoch,
            consumer_timeout: nanos(r.consumer_timeout),
            coordinator_timeout: nanos(r.coordinator_timeout),
        })
    }

    /// Leaves `group`.
    pub async fn leave_consumer_group(&self, group: &str, consumer: &str) -> Result<()> {
        let req = api::LeaveConsumerGroupRequest {
            group_id: group.to_string(),
            consumer_id: consumer.to_string(),
        };
        self.inner
            .any_broker_rpc(Call::Group, |mut api, timeout| {
                let req = req.clone();
                async move { api.leave_consumer_group(with_timeout(req, timeout)).await }
            })
            .await
            .map(drop)
    }

    /// The coordinator (server id) and epoch of `group`; `None` when the group does not exist.
    pub async fn fetch_group_metadata(&self, group: &str) -> Result<Option<(String, u64)>> {
        let req = api::FetchMetadataRequest {
            streams: vec![],
            groups: vec![group.to_string()],
        };
        let r = self
            .inner
            .any_broker_rpc(Call::FetchMetadata, |mut api, timeout| {
                let req = req.clone();
                async move { api.fetch_metadata(with_timeout(req, timeout)).await }
            })
            .await?;
        Ok(r.group_metadata
            .into_iter()
            .find(|g| g.group_id == group)
            .filter(|g| g.error == api::consumer_group_metadata::Error::Ok as i32)
            .map(|g| (g.coordinator, g.epoch)))
    }

    /// This member's assignments, asked of `coordinator` (a server id); also its heartbeat.
    pub async fn fetch_consumer_group_assignments(
        &self,
        coordinator: &str,
        group: &str,
        consumer: &str,
        epoch: u64,
    ) -> Result<GroupAssignments> {
        let inner = &self.inner;
        let addr = match inner.metadata.get().broker(coordinator) {
            Some(b) => b.addr(),
            None => {
                inner.refresh_quietly().await;
                inner
                    .metadata
                    .get()
                    .broker(coordinator)
                    .map(|b| b.addr())
                    .ok_or_else(|| Error::Unavailable(format!("unknown broker {coordinator}")))?
            }
        };
        let mut api = inner.pool.client(&addr)?;
        let timeout = inner.config.request_timeout;
        let req = api::FetchConsumerGroupAssignmentsRequest {
            group_id: group.to_string(),
            consumer_id: consumer.to_string(),
            epoch,
        };
        let r = bounded(timeout, async move {
            api.fetch_consumer_group_assignments(with_timeout(req, timeout))
                .await
        })
        .await
        .map_err(|s| Error::from_status(Call::Group, s))?
        .into_inner();
        let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for a in r.assignments {
            partitions.entry(a.stream).or_default().extend(a.partitions);
        }
        Ok(GroupAssignments {
            epoch: r.epoch,
            partitions,
        })
    }

    /// Reports `coordinator` (a server id) of `group` as unreachable in `epoch`.
    pub async fn report_consumer_group_coordinator(
        &self,
        group: &str,
        consumer: &str,
        coordinator: &str,
        epoch: u64,
    ) -> Result<()> {
        let req = api::ReportConsumerGroupCoordinatorRequest {
            group_id: group.to_string(),
            consumer_id: consumer.to_string(),
            coordinator: coordinator.to_string(),
            epoch,
        };
        self.inner
            .any_broker_rpc(Call::Group, |mut api, timeout| {
                let req = req.clone();
                async move {
                    api.report_consumer_group_coordinator(with_timeout(req, timeout))
                        .await
                }
            })
            .await
            .map(drop)
    }

    /// Joins `group` as `consumer` and reads every partition assigned to it (module docs).
    pub async fn consumer_group(
        &self,
        group: &str,
        consumer: &str,
        streams: &[String],
        options: GroupOptions,
    ) -> Result<GroupConsumer> {
        let join = self.join_consumer_group(group, consumer, streams).await?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (assign_tx, assign_rx) = tokio::sync::watch::channel(GroupAssignments::default());
        let driver = Driver {
            client: self.clone(),
            group: group.to_string(),
            consumer: consumer.to_string(),
            streams: streams.to_vec(),
            options,
            coordinator: join.coordinator.clone(),
            epoch: Arc::new(AtomicU64::new(join.epoch)),
            join,
            readers: HashMap::new(),
            tx,
            assign_tx,
        };
        let task = tokio::spawn(driver.run());
        Ok(GroupConsumer {
            client: self.clone(),
            group: group.to_string(),
            consumer: consumer.to_string(),
            rx,
            assignments: assign_rx,
            task,
        })
    }
}

/// A member of a consumer group reading its assigned partitions (module docs). Dropping it
/// stops reading; [`GroupConsumer::leave`] also leaves the group at once (otherwise the
/// coordinator expires the member after `consumerTimeout`).
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    group: String,
    consumer: String,
    rx: mpsc::Receiver<Result<Message>>,
    assignments: tokio::sync::watch::Receiver<GroupAssignments>,
    task: JoinHandle<()>,
}

impl GroupConsumer {
    /// Stores `msg`'s offset as the group's cursor of its partition.
    pub async fn commit(&self, msg: &Message) -> Result<()> {
        self.client
            .set_cursor(
                &group_cursor_id(&self.group),
                &msg.stream,
                msg.partition,
                msg.offset,
            )
            .await
    }

    /// The latest assignment answer.
    pub fn assignments(&self) -> GroupAssignments {
        self.assignments.borrow().clone()
    }

    /// A receiver that changes with every new assignment answer.
    pub fn watch_assignments(&self) -> tokio::sync::watch::Receiver<GroupAssignments> {
        self.assignments.clone()
    }

    /// Stops reading and leaves the group.
    pub async fn leave(self) -> Result<()> {
        self.task.abort();
        self.client
            .leave_consumer_group(&self.group, &self.consumer)
            .await
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for GroupConsumer {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The task behind a [`GroupConsumer`].
struct Driver {
    client: Client,
    group: String,
    consumer: String,
    streams: Vec<String>,
    options: GroupOptions,
    join: GroupJoin,
    coordinator: String,
    /// The epoch of the last assignment answer, shared with the readers (invariant 2).
    epoch: Arc<AtomicU64>,
    /// Reader tasks by (stream, partition) (invariant 1).
    readers: HashMap<(String, i32), JoinHandle<()>>,
    tx: mpsc::Sender<Result<Message>>,
    assign_tx: tokio::sync::watch::Sender<GroupAssignments>,
}

impl Driver {
    async fn run(mut self) {
        let mut last_ok = Instant::now();
        loop {
            let poll = self.join.consumer_timeout.mul_f64(0.4).max(MIN_POLL);
            let epoch = self.epoch.load(Ordering::SeqCst);
            let r = self
                .client
                .fetch_consumer_group_assignments(
                    &self.coordinator,
                    &self.group,
                    &self.consumer,
                    epoch,
                )
                .await;
            match r {
                Ok(a) => {
                    last_ok = Instant::now();
                    self.epoch.store(a.epoch, Ordering::SeqCst);
                    self.reconcile(&a);
                    let _ = self.assign_tx.send(a);
                }
                Err(Error::FailedPrecondition(_)) | Err(Error::NoSuchPartition(_)) => {
                    last_ok = Instant::now();
                    self.rediscover().await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "assignment poll failed");
                    if last_ok.elapsed() >= self.join.coordinator_timeout {
                        if let Err(e) = self
                            .client
                            .report_consumer_group_coordinator(
                                &self.group,
                                &self.consumer,
                                &self.coordinator,
                                epoch,
                            )
                            .await
                        {
                            tracing::debug!(error = %e, "coordinator report failed");
                        }
                        last_ok = Instant::now();
                        self.rediscover().await;
                    }
                }
            }
            tokio::select! {
                _ = self.tx.closed() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Learns the coordinator and epoch from FetchMetadata; rejoins when the group forgot us.
    async fn rediscover(&mut self) {
        match self.client.fetch_group_metadata(&self.group).await {
            Ok(Some((coordinator, epoch))) => {
                self.coordinator = coordinator;
                self.epoch.store(epoch, Ordering::SeqCst);
            }
            Ok(None) => self.rejoin().await,
            Err(e) => tracing::debug!(error = %e, "group metadata refresh failed"),
        }
        // Not a member any more (expired): the coordinator says so with FailedPrecondition
        // even in the current epoch; a rejoin is harmless when we are still a member.
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Err(Error::FailedPrecondition(m)) = self
            .client
            .fetch_consumer_group_assignments(&self.coordinator, &self.group, &self.consumer, epoch)
            .await
        {
            if m.contains("not a member") {
                self.rejoin().await;
            }
        }
    }

    async fn rejoin(&mut self) {
        match self
            .client
            .join_consumer_group(&self.group, &self.consumer, &self.streams)
            .await
        {
            Ok(j) => {
                self.coordinator = j.coordinator.clone();
                self.epoch.store(j.epoch, Ordering::SeqCst);
                self.join = j;
            }
            Err(e) => tracing::debug!(error = %e, "rejoining the group failed"),
        }
    }

    /// Starts readers for new partitions, aborts readers of partitions no longer assigned.
    fn reconcile(&mut self, a: &GroupAssignments) {
        let wanted: Vec<(String, i32)> = a
            .partitions
            .iter()
            .flat_map(|(s, ps)| ps.iter().map(move |p| (s.clone(), *p)))
            .collect();
        self.readers.retain(|k, h| {
            let keep = wanted.contains(k) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for key in wanted {
            if self.readers.contains_key(&key) {
                continue;
            }
            let reader = Reader {
                client: self.client.clone(),
                group: self.group.clone(),
                consumer: self.consumer.clone(),
                stream: key.0.clone(),
                partition: key.1,
                start: self.options.start,
                epoch: self.epoch.clone(),
                tx: self.tx.clone(),
            };
            self.readers.insert(key, tokio::spawn(reader.run()));
        }
    }
}

impl Drop for Driver {
    /// Aborting the driver (the consumer was dropped) stops its readers too (invariant 3).
    fn drop(&mut self) {
        for (_, h) in self.readers.drain() {
            h.abort();
        }
    }
}

/// Reads one assigned partition as a group member.
struct Reader {
    client: Client,
    group: String,
    consumer: String,
    stream: String,
    partition: i32,
    start: StartAt,
    epoch: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<Message>>,
}

impl Reader {
    async fn run(self) {
        let cursor = self
            .client
            .fetch_cursor(&group_cursor_id(&self.group), &self.stream, self.partition)
            .await;
        let mut start = match cursor {
            Ok(Some(c)) => StartAt::Offset(c.saturating_add(1)),
            Ok(None) | Err(Error::CursorsDisabled) => self.start,
            Err(e) => {
                tracing::debug!(error = %e, "group cursor unavailable; using the start option");
                self.start
            }
        };
        let inner: &Inner = &self.client.inner;
        let mut failures = 0;
        while failures < READER_ATTEMPTS {
            let opts = crate::options::SubscribeOptions {
                partition: self.partition,
                start,
                ..Default::default()
            };
            let mut req = opts.to_request(&self.stream);
            req.consumer = Some(api::Consumer {
                group_id: self.group.clone(),
                group_epoch: self.epoch.load(Ordering::SeqCst),
                consumer_id: self.consumer.clone(),
            });
            let addr =
                match inner
                    .metadata
                    .get()
                    .addr_for_partition(&self.stream, self.partition, false)
                {
                    Ok(a) => a,
                    Err(_) => {
                        failures += 1;
                        inner.refresh_quietly().await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
            let status = match inner.pool.client(&addr) {
                Ok(mut api) => match api.subscribe(req).await {
                    Ok(calls) => {
                        let mut calls = calls.into_inner();
                        loop {
                            match calls.message().await {
                                Ok(Some(m)) if m == api::Message::default() => {}
                                Ok(Some(m)) => {
                                    failures = 0;
                                    start = StartAt::Offset(m.offset.saturating_add(1));
                                    if self.tx.send(Ok(Message::from_proto(m))).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => return,
                                Err(s) => break s,
                            }
                        }
                    }
                    Err(s) => s,
                },
                Err(_) => tonic::Status::unavailable("no channel"),
            };
            match status.code() {
                Code::Unavailable | Code::FailedPrecondition | Code::Unknown | Code::Internal => {
                    failures += 1;
                    inner.refresh_quietly().await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    let _ = self
                        .tx
                        .send(Err(Error::from_status(Call::SubscribeRecv, status)))
                        .await;
                    return;
                }
            }
        }
    }
}
