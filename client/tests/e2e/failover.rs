//! Leader failover seen from the client: three `drawbridge-server` processes on a real
//! `nats-server`, a replication-factor-3 stream, and SIGKILL of its partition leader
//! - while a subscriber reads and a publisher keeps publishing with ack ALL: the subscription
//!   resumes on the new leader from the last offset + 1, so the subscriber sees every
//!   acknowledged message exactly once, at strictly increasing offsets with no gap;
//! - in the middle of pipelined publishing: every future resolves (none hangs), every message
//!   whose future resolved `Ok` is read back exactly once, at the offset its ack named;
//! - SIGSTOP of the broker a pipelined publisher's stream is open to (a frozen process whose
//!   TCP connections stay open): the publisher notices (keep-alive, missed acks), moves to
//!   another broker and acks resume before a generous deadline, while the broker is still
//!   stopped; no future hangs. The partition is idle for 3 s before the stop, so with
//!   quiescence on its group is quiesced when the leader stops;
//! - under a [`drawbridge_client::GroupConsumer`]: killing the group's coordinator (which is
//!   also the partition leader when they coincide) moves the group to a new coordinator, the
//!   member keeps reading every acknowledged message, and commits keep working.
//!
//! The two tests start their own clusters and take turns (a lock), so a 2-core machine runs
//! at most three servers at a time. Every wait is bounded in count and time.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use drawbridge_client::{
    group_cursor_id, AckPolicy, Client, Error, GroupOptions, Message, PublishMessage,
    PublisherOptions, RetryPolicy, StartAt, StopAt, StreamOptions, SubscribeOptions,
};
use drawbridge_tests::clients;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer};
use futures::StreamExt;

use crate::common::*;

/// One cluster at a time (held across awaits, hence tokio's mutex).
static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A started cluster: NATS, three servers (a killed one is `None`), and a client of all.
struct Cluster {
    _nats: NatsServer,
    servers: Vec<Option<DrawbridgeServer>>,
    addrs: Vec<String>,
    client: Client,
}

impl Cluster {
    /// Starts NATS and three servers; `None` when nats-server is missing outside CI.
    async fn start(test: &str) -> TestResult<Option<Cluster>> {
        Cluster::start_with_config(test, None).await
    }

    /// [`Cluster::start`] with a YAML configuration given to every server.
    async fn start_with_config(test: &str, yaml: Option<&str>) -> TestResult<Option<Cluster>> {
        let Some(nats) = NatsServer::start_or_skip(test) else {
            return Ok(None);
        };
        let bin = drawbridge_tests::bins::drawbridge_server()?;
        let mut specs = cluster_specs(&bin, &nats.url(), 3)?;
        if let Some(yaml) = yaml {
            for spec in &mut specs {
                let path = spec.data_dir.with_file_name(format!("{}.yaml", spec.id));
                std::fs::write(&path, yaml)?;
                spec.args.push("--config".into());
                spec.args.push(path.display().to_string());
            }
        }
        let servers: Vec<Option<DrawbridgeServer>> =
            cluster(&specs)?.into_iter().map(Some).collect();
        let addrs = clients::addrs(&specs);
        let client = clients::cluster_client(&addrs)
            .resubscribe_wait(Duration::from_secs(30))
            .connect()
            .await?;
        Ok(Some(Cluster {
            _nats: nats,
            servers,
            addrs,
            client,
        }))
    }

    /// Creates an RF-3 stream and waits (≤ 20 s) until its partition has a leader and three
    /// in-sync replicas; returns the leader's index.
    async fn create_replicated(&self, name: &str) -> TestResult<usize> {
        let opts = StreamOptions {
            replication_factor: 3,
            ..StreamOptions::default()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The first CreateStream of a fresh cluster can outlast the 3 s request timeout (the
        // metadata group and the new partition group elect first); a timed-out create may
        // still land, so a later try may find the stream there.
        loop {
            match self.client.create_stream(name, name, opts.clone()).await {
                Ok(_) | Err(Error::StreamExists) => break,
                Err(Error::DeadlineExceeded(e)) if Instant::now() < deadline => {
                    eprintln!("{name}: create timed out ({e}), again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            let md = self.client.fetch_metadata().await?;
            let p = md.stream(name).and_then(|s| s.partitions.get(&0)).cloned();
            if let Some(p) = p.filter(|p| p.isr.len() == 3) {
                if let Some(leader) = p.leader {
                    return self.index_of(&leader);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{name}: no leader with 3 in-sync replicas: {md:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn index_of(&self, id: &str) -> TestResult<usize> {
        self.servers
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.spec.id == id))
            .ok_or_else(|| format!("leader {id} is not a running node").into())
    }

    /// SIGKILL of server `i`.
    fn kill(&mut self, i: usize) {
        if let Some(s) = self.servers[i].as_mut() {
            eprintln!("killing {} (pid-owned by the test)", s.spec.id);
            s.kill();
        }
        self.servers[i] = None;
    }

    /// The ends of the surviving servers' logs, for failure messages.
    fn logs(&self) -> String {
        self.servers
            .iter()
            .flatten()
            .map(|s| format!("--- {} ---\n{}", s.spec.id, s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Checks what a subscriber read from offset 0: offsets 0, 1, 2, ... with no gap and no
/// repeat, and every acknowledged value exactly once, at the offset its ack named.
fn check_log(read: &[Message], acked: &HashMap<String, i64>) -> Result<(), String> {
    for (i, m) in read.iter().enumerate() {
        if m.offset != i as i64 {
            return Err(format!(
                "record {i} has offset {} (gap or repeat); offsets: {:?}",
                m.offset,
                offsets(read)
            ));
        }
    }
    let mut seen: HashMap<&[u8], Vec<i64>> = HashMap::new();
    for m in read {
        seen.entry(&m.value[..]).or_default().push(m.offset);
    }
    for (value, offset) in acked {
        match seen.get(value.as_bytes()).map(Vec::as_slice) {
            Some([o]) if o == offset => {}
            Some([o]) => return Err(format!("{value}: acked at {offset}, read at {o}")),
            Some(more) => return Err(format!("{value}: read {} times at {more:?}", more.len())),
            None => return Err(format!("{value}: acked at {offset}, never read")),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_leader_kill() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let Some(mut cl) = Cluster::start("subscription_survives_leader_kill").await? else {
        return Ok(());
    };
    const BEFORE_KILL: usize = 100;
    const TOTAL: usize = 300;
    let name = "ha-sub";
    let leader = cl.create_replicated(name).await?;

    // The subscriber hands every item to the test as it reads it.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sub = cl
        .client
        .subscribe(
            name,
            SubscribeOptions {
                start: StartAt::Earliest,
                stop: StopAt::Cancel,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let reader = tokio::spawn(async move {
        while let Some(item) = sub.next().await {
            if seen_tx.send(item).is_err() {
                return;
            }
        }
    });

    // The publisher: ack ALL, one value per attempt (a failed attempt may still be stored),
    // and a client that does not retry by itself: a unary publish retried after a broken
    // connection may be stored twice, which would blur "each acked value exactly once".
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel(0usize);
    let publisher = {
        let c = clients::cluster_client(&cl.addrs)
            .retry(RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            })
            .connect()
            .await?;
        tokio::spawn(async move {
            let mut acked = HashMap::new();
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut attempt = 0;
            while acked.len() < TOTAL && Instant::now() < deadline {
                let value = format!("m{attempt}");
                attempt += 1;
                let msg = PublishMessage::new(value.clone()).ack_policy(AckPolicy::All);
                match c.publish(name, msg).await {
                    Ok(Some(ack)) => {
                        acked.insert(value, ack.offset);
                        let _ = progress_tx.send(acked.len());
                    }
                    Ok(None) => failures.push(format!("{value}: no ack")),
                    Err(e) => {
                        failures.push(format!("{value}: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // Pace the publisher so the kill lands mid-stream.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, failures)
        })
    };

    // Kill the leader once the subscriber is reading and enough is acked.
    let mut read: Vec<Message> = Vec::new();
    let wait_until = Instant::now() + Duration::from_secs(30);
    while read.len() < BEFORE_KILL / 2 || *progress_rx.borrow_and_update() < BEFORE_KILL {
        if Instant::now() >= wait_until {
            return Err(
                format!("before the kill: read {}, logs:\n{}", read.len(), cl.logs()).into(),
            );
        }
        match tokio::time::timeout(Duration::from_millis(100), seen_rx.recv()).await {
            Ok(Some(item)) => read.push(item?),
            Ok(None) => return Err("subscription ended before the kill".into()),
            Err(_) => {}
        }
    }
    let killed_at = Instant::now();
    cl.kill(leader);

    let (acked, failures) = tokio::time::timeout(Duration::from_secs(90), publisher).await??;
    eprintln!(
        "acked {} messages, {} failed attempts ({:?} after the kill); first failures: {:?}",
        acked.len(),
        failures.len(),
        killed_at.elapsed(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        acked.len(),
        TOTAL,
        "the publisher stalled: {failures:?}\n{}",
        cl.logs()
    );

    // Read until every acked value arrived (bounded), then a little longer for duplicates.
    let acked_values: HashSet<&String> = acked.keys().collect();
    let read_by = Instant::now() + Duration::from_secs(30);
    let mut missing = usize::MAX;
    while Instant::now() < read_by {
        let have: HashSet<&[u8]> = read.iter().map(|m| &m.value[..]).collect();
        missing = acked_values
            .iter()
            .filter(|v| !have.contains(v.as_bytes()))
            .count();
        if missing == 0 {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), seen_rx.recv()).await {
            Ok(Some(item)) => read.push(item.map_err(|e| format!("subscriber error: {e}"))?),
            Ok(None) => return Err("the subscription ended".into()),
            Err(_) => {}
        }
    }
    while let Ok(Some(item)) =
        tokio::time::timeout(Duration::from_millis(300), seen_rx.recv()).await
    {
        read.push(item.map_err(|e| format!("subscriber error: {e}"))?);
    }
    reader.abort();
    assert_eq!(missing, 0, "acked values never read; logs:\n{}", cl.logs());
    check_log(&read, &acked).map_err(|e| format!("{e}\nlogs:\n{}", cl.logs()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishing_survives_leader_kill() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let Some(mut cl) = Cluster::start("pipelined_publishing_survives_leader_kill").await? else {
        return Ok(());
    };
    const TOTAL: usize = 2000;
    const KILL_AT: usize = 600;
    let name = "ha-pipe";
    let leader = cl.create_replicated(name).await?;
    let publisher = cl.client.publisher_with(PublisherOptions {
        queue_capacity: 128,
        max_in_flight: 256,
    })?;

    // A task settles futures in send order, timing each: none may hang.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, drawbridge_client::AckFuture)>(TOTAL);
    let settle = tokio::spawn(async move {
        let mut acked = HashMap::new();
        let mut failed: Vec<(String, Error)> = Vec::new();
        while let Some((value, fut)) = rx.recv().await {
            // The future enforces the ack timeout (5 s) itself; 15 s means it hung.
            match tokio::time::timeout(Duration::from_secs(15), fut).await {
                Ok(Ok(Some(ack))) => {
                    acked.insert(value, ack.offset);
                }
                Ok(Ok(None)) => return Err(format!("{value}: no ack with policy ALL")),
                Ok(Err(e)) => failed.push((value, e)),
                Err(_) => return Err(format!("{value}: its future hung")),
            }
        }
        Ok((acked, failed))
    });

    let started = Instant::now();
    let mut send_errors = Vec::new();
    for i in 0..TOTAL {
        if i == KILL_AT {
            cl.kill(leader);
        }
        let value = format!("p{i}");
        let msg = PublishMessage::new(value.clone()).ack_policy(AckPolicy::All);
        // `send` itself may fail (e.g. no metadata for the partition for a moment).
        match tokio::time::timeout(Duration::from_secs(15), publisher.send(name, msg)).await {
            Ok(Ok(fut)) => tx.send((value, fut)).await?,
            Ok(Err(e)) => send_errors.push(format!("{value}: {e}")),
            Err(_) => return Err(format!("{value}: send hung").into()),
        }
        if i % 50 == 0 {
            // Spread the run over time so the kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if started.elapsed() > Duration::from_secs(90) {
            return Err(format!("publishing took over 90 s, at {i}").into());
        }
    }
    drop(tx);
    let (acked, failed) = tokio::time::timeout(Duration::from_secs(60), settle)
        .await??
        .map_err(|e| format!("{e}\nlogs:\n{}", cl.logs()))?;
    eprintln!(
        "pipelined: {} acked, {} failed futures, {} failed sends in {:?}; failures: {:?}",
        acked.len(),
        failed.len(),
        send_errors.len(),
        started.elapsed(),
        failed
            .iter()
            .take(3)
            .map(|(v, e)| format!("{v}: {e}"))
            .collect::<Vec<_>>()
    );
    // Failures are reported as retryable errors, or as the server's answer for a message in
    // flight when the leader changed (PublishAsyncError has no UNAVAILABLE code, so the server
    // sends INTERNAL saying so: the message may or may not have been stored).
    for (value, e) in &failed {
        let leader_changed =
            matches!(e, drawbridge_client::Error::Internal(m) if m.contains("changed leader"));
        assert!(
            e.is_retryable() || leader_changed,
            "{value}: not a retryable error: {e:?}"
        );
    }
    assert!(
        acked.len() > TOTAL / 2,
        "too few acks after the failover: {}; logs:\n{}",
        acked.len(),
        cl.logs()
    );
    // Publishing works again after the failover.
    let ack = publisher
        .publish(
            name,
            PublishMessage::new("after").ack_policy(AckPolicy::All),
        )
        .await?
        .ok_or("no ack")?;

    // Read everything back from the new leader up to that last message.
    let mut sub = cl
        .client
        .subscribe(
            name,
            SubscribeOptions {
                start: StartAt::Earliest,
                stop: StopAt::Offset(ack.offset),
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let read = read_to_end(&mut sub, TOTAL * 2, EACH).await?;
    assert_eq!(read.len() as i64, ack.offset + 1);
    check_log(&read, &acked).map_err(|e| format!("{e}\nlogs:\n{}", cl.logs()))?;
    Ok(())
}

/// SIGSTOP of the broker a pipelined publisher's stream is open to (module docs). That broker
/// is made (almost surely) the partition leader, so acks resume only once the publisher has
/// moved to another broker and a new leader was elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publisher_leaves_a_stopped_broker() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let Some(cl) = Cluster::start("pipelined_publisher_leaves_a_stopped_broker").await? else {
        return Ok(());
    };
    let name = "ha-stop";
    let leader = cl.create_replicated(name).await?;
    let client = clients::cluster_client(&cl.addrs).connect().await?;
    // Publishes one message at a time until one is acked or `deadline`; every future must
    // resolve within its ack timeout (+ slack).
    async fn publish_until_acked(
        publisher: &drawbridge_client::Publisher,
        name: &str,
        deadline: Instant,
    ) -> TestResult<Option<Instant>> {
        let mut n = 0u32;
        while Instant::now() < deadline && n < 200 {
            n += 1;
            let msg = PublishMessage::new(format!("s{n}")).ack_policy(AckPolicy::All);
            let fut = match tokio::time::timeout(Duration::from_secs(10), publisher.send(name, msg))
                .await
            {
                Ok(Ok(fut)) => fut,
                Ok(Err(e)) => {
                    eprintln!("stopped broker: send failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => return Err("send hung".into()),
            };
            match tokio::time::timeout(Duration::from_secs(10), fut).await {
                Ok(Ok(Some(_))) => return Ok(Some(Instant::now())),
                Ok(Ok(None)) => return Err("no ack with policy ALL".into()),
                Ok(Err(e)) => {
                    assert!(
                        e.is_retryable()
                            || matches!(&e, Error::Internal(m) if m.contains("changed leader")),
                        "not a retryable error: {e:?}"
                    );
                    eprintln!("stopped broker: publish failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return Err("an ack future hung past its ack timeout".into()),
            }
        }
        Ok(None)
    }
    // A publisher picks its broker at random: take one whose stream is to the partition leader
    // (≤ 12 tries; else the last one, whose broker is stopped all the same).
    let mut tries = 0;
    let (publisher, broker, leader) = loop {
        tries += 1;
        let publisher = client.publisher()?;
        let warm =
            publish_until_acked(&publisher, name, Instant::now() + Duration::from_secs(10)).await?;
        assert!(warm.is_some(), "no ack before the stop");
        let broker = publisher.broker().ok_or("no stream after an ack")?;
        // The leader as of now (leadership may have moved since the stream was created).
        let md = client.fetch_metadata().await?;
        let leader = match md
            .stream(name)
            .and_then(|s| s.partitions.get(&0))
            .and_then(|p| p.leader.clone())
        {
            Some(id) => cl.index_of(&id)?,
            None => leader,
        };
        if broker == cl.addrs[leader] || tries >= 12 {
            break (publisher, broker, leader);
        }
    };
    let stop = cl
        .addrs
        .iter()
        .position(|a| *a == broker)
        .ok_or("the publisher's broker is not a cluster member")?;
    eprintln!(
        "stopped broker: the publisher's stream is to {} (after {tries} publishers)",
        if stop == leader {
            "the partition leader"
        } else {
            "a follower"
        }
    );
    // Idle for a while first: with quiescence of idle partition groups on, the group is then
    // quiesced when its leader stops (followers must notice a dead leader without heartbeats).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let stopped = cl.servers[stop].as_ref().ok_or("broker not running")?;
    eprintln!("stopped broker: SIGSTOP {}", stopped.spec.id);
    if !stopped.signal(libc::SIGSTOP) {
        return Err("SIGSTOP failed".into());
    }
    let stopped_at = Instant::now();
    let acked = publish_until_acked(&publisher, name, stopped_at + Duration::from_secs(15)).await;
    // Resume before judging, so the cluster's processes can be stopped normally.
    let resumed = stopped.signal(libc::SIGCONT);
    let acked = acked?;
    match acked {
        Some(at) => eprintln!(
            "stopped broker: first ack {:?} after the SIGSTOP",
            at.duration_since(stopped_at)
        ),
        None => {
            return Err(format!(
                "no ack within 15 s of stopping the broker the publisher used; logs:\n{}",
                cl.logs()
            )
            .into())
        }
    }
    assert!(resumed, "SIGCONT failed");
    Ok(())
}

/// Asks for `group`'s coordinator and epoch until an answer satisfies `ok` (≤ 10 s), returning
/// it, or the last answer in the error. Brokers answer from their own, possibly lagging, copy
/// of the metadata, so one answer alone may predate the change a test waits for.
async fn group_metadata_when(
    client: &Client,
    group: &str,
    ok: impl Fn(&(String, u64)) -> bool,
) -> TestResult<(String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = client.fetch_group_metadata(group).await;
        if let Ok(Some(found)) = &last {
            if ok(found) {
                return Ok(found.clone());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("group {group}: last answer {last:?} after 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_consumer_survives_coordinator_kill() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let yaml = "cursors.stream.partitions: 1\n\
                groups.consumer.timeout: 2s\n\
                groups.coordinator.timeout: 2s\n";
    let Some(mut cl) =
        Cluster::start_with_config("group_consumer_survives_coordinator_kill", Some(yaml)).await?
    else {
        return Ok(());
    };
    const PER_PHASE: usize = 60;
    let name = "ha-group";
    let group = "ha-readers";
    cl.create_replicated(name).await?;
    let mut member = cl
        .client
        .consumer_group(
            group,
            "member-1",
            &[name.to_string()],
            GroupOptions {
                start: StartAt::Earliest,
            },
        )
        .await?;
    // Any broker answers FetchMetadata from its own copy of the metadata, which may not yet
    // hold the join the metadata leader applied: ask until one does.
    let (coordinator, epoch) = group_metadata_when(&cl.client, group, |_| true)
        .await
        .map_err(|e| format!("after the join: {e}"))?;

    // Publishes `PER_PHASE` values with ack ALL (bounded retries) and returns the acked ones.
    async fn publish_phase(c: &Client, stream: &str, tag: &str) -> TestResult<HashSet<String>> {
        let mut acked = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempt = 0;
        while acked.len() < PER_PHASE {
            if Instant::now() >= deadline {
                return Err(format!("{tag}: only {} acked in 60 s", acked.len()).into());
            }
            let value = format!("{tag}-{attempt}");
            attempt += 1;
            let msg = PublishMessage::new(value.clone()).ack_policy(AckPolicy::All);
            match c.publish(stream, msg).await {
                Ok(Some(_)) => {
                    acked.insert(value);
                }
                Ok(None) => return Err(format!("{value}: no ack with policy ALL").into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(acked)
    }

    // Reads from the member until every value in `want` arrived (≤ 60 s), committing each.
    async fn read_all(
        member: &mut drawbridge_client::GroupConsumer,
        want: &HashSet<String>,
        read: &mut Vec<Message>,
    ) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let have: HashSet<&[u8]> = read.iter().map(|m| &m.value[..]).collect();
            let missing = want.iter().filter(|v| !have.contains(v.as_bytes())).count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(
                    format!("{missing} acknowledged values never reached the member").into(),
                );
            }
            match tokio::time::timeout(Duration::from_millis(500), member.next()).await {
                Ok(Some(Ok(m))) => {
                    // A commit may fail while the cluster fails over; the next one covers it.
                    let _ = member.commit(&m).await;
                    read.push(m);
                }
                Ok(Some(Err(e))) => return Err(format!("group consumer error: {e}").into()),
                Ok(None) => return Err("the group consumer ended".into()),
                Err(_) => {}
            }
        }
    }

    let mut read = Vec::new();
    let before = publish_phase(&cl.client, name, "before").await?;
    read_all(&mut member, &before, &mut read)
        .await
        .map_err(|e| format!("{e}\nlogs:\n{}", cl.logs()))?;

    let victim = cl.index_of(&coordinator)?;
    cl.kill(victim);
    let after = publish_phase(&cl.client, name, "after").await?;
    read_all(&mut member, &after, &mut read)
        .await
        .map_err(|e| format!("{e}\nlogs:\n{}", cl.logs()))?;

    // The group moved to a live coordinator in a later epoch.
    let (new_coordinator, new_epoch) =
        group_metadata_when(&cl.client, group, |(c, e)| *c != coordinator && *e > epoch)
            .await
            .map_err(|e| format!("after the kill: {e}"))?;
    assert_ne!(new_coordinator, coordinator, "the coordinator did not move");
    assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");

    // Offsets the member saw only grow per partition (a resubscribe may repeat, never skip).
    let mut last: HashMap<i32, i64> = HashMap::new();
    for m in &read {
        if let Some(prev) = last.get(&m.partition) {
            assert!(
                m.offset <= prev + 1,
                "offset {} after {prev}: a gap",
                m.offset
            );
        }
        let e = last.entry(m.partition).or_insert(m.offset);
        *e = (*e).max(m.offset);
    }
    // The committed group cursor lands on the new leader and reads back.
    let newest = read.iter().map(|m| m.offset).max().ok_or("nothing read")?;
    let top = read
        .iter()
        .find(|m| m.offset == newest)
        .ok_or("no newest")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let committed = member.commit(top).await;
        let fetched = cl
            .client
            .fetch_cursor(&group_cursor_id(group), name, 0)
            .await;
        if committed.is_ok() && matches!(fetched, Ok(Some(o)) if o == newest) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cursor after failover: commit {committed:?}, fetch {fetched:?}\nlogs:\n{}",
                cl.logs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    member.leave().await?;
    Ok(())
}
