//! Consumer groups on real processes (spec §4.6, §5, §11):
//! - one server: join/leave/assignments/report error codes, two members over a 4-partition
//!   stream get disjoint, complete assignments, stale epochs and unassigned partitions are
//!   refused on Subscribe, a silent member expires after `groups.consumer.timeout` and its
//!   partitions move to the survivor;
//! - three servers: cursors routed to the `__cursors` partition leader (FailedPrecondition
//!   elsewhere) survive SIGKILL of that leader; a group's coordinator is SIGKILLed, its member
//!   reports it, a new coordinator and a higher epoch appear in FetchMetadata, and the member
//!   reads its assignment from the new coordinator.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use drawbridge_proto::api::*;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer, NatsMode, ServerSpec};
use tonic::Code;

use crate::common::*;
use crate::cursors::{wait_leaders, with_config};

fn join(group: &str, consumer: &str, streams: &[&str]) -> JoinConsumerGroupRequest {
    JoinConsumerGroupRequest {
        group_id: group.into(),
        consumer_id: consumer.into(),
        streams: streams.iter().map(|s| s.to_string()).collect(),
    }
}

fn fetch(group: &str, consumer: &str, epoch: u64) -> FetchConsumerGroupAssignmentsRequest {
    FetchConsumerGroupAssignmentsRequest {
        group_id: group.into(),
        consumer_id: consumer.into(),
        epoch,
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Option<Code> {
    r.err().map(|e| e.code())
}

/// The partitions of `stream` in an assignment answer.
fn parts(r: &FetchConsumerGroupAssignmentsResponse, stream: &str) -> Vec<i32> {
    r.assignments
        .iter()
        .filter(|a| a.stream == stream)
        .flat_map(|a| a.partitions.clone())
        .collect()
}

async fn group_md(c: &mut Client, group: &str) -> TestResult<ConsumerGroupMetadata> {
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec![],
            groups: vec![group.into()],
        })
        .await?
        .into_inner();
    Ok(md
        .group_metadata
        .into_iter()
        .next()
        .ok_or("no group metadata")?)
}

fn member_sub(
    stream: &str,
    partition: i32,
    group: &str,
    consumer: &str,
    epoch: u64,
) -> SubscribeRequest {
    let mut r = sub_req(stream, partition, StartPosition::Earliest);
    r.consumer = Some(Consumer {
        group_id: group.into(),
        group_epoch: epoch,
        consumer_id: consumer.into(),
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_assign_fence_and_expire() -> TestResult {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "grp-1", NatsMode::Embedded(nats_port))?;
    with_config(
        &mut spec,
        "groups.consumer.timeout: 4s\ngroups.coordinator.timeout: 3s\n",
    )?;
    let server = DrawbridgeServer::start(&spec)?;
    let mut c = client(&server).await?;
    let mut req = create_req("gs", "gs");
    req.partitions = 4;
    c.create_stream(req).await?;
    wait_leaders(&mut c, "gs").await?;

    // Validation.
    assert_eq!(
        code(c.join_consumer_group(join("", "a", &["gs"])).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.join_consumer_group(join("g", "", &["gs"])).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.join_consumer_group(join("g", "a", &[])).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.fetch_consumer_group_assignments(fetch("g", "a", 0)).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            c.leave_consumer_group(LeaveConsumerGroupRequest {
                group_id: "g".into(),
                consumer_id: "a".into()
            })
            .await
        ),
        Some(Code::NotFound)
    );
    let report = |consumer: &str, coordinator: &str, epoch| ReportConsumerGroupCoordinatorRequest {
        group_id: "g".into(),
        consumer_id: consumer.into(),
        coordinator: coordinator.into(),
        epoch,
    };
    assert_eq!(
        code(
            c.report_consumer_group_coordinator(report("a", "", 0))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            c.report_consumer_group_coordinator(report("a", "grp-1", 0))
                .await
        ),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        group_md(&mut c, "g").await?.error,
        consumer_group_metadata::Error::UnknownGroup as i32
    );

    // A new group: epoch 0, this server coordinates, timeouts in ns.
    let a = c
        .join_consumer_group(join("g", "a", &["gs"]))
        .await?
        .into_inner();
    assert_eq!((a.epoch, a.coordinator.as_str()), (0, "grp-1"));
    assert_eq!(a.consumer_timeout, 4_000_000_000);
    assert_eq!(a.coordinator_timeout, 3_000_000_000);
    let all = c
        .fetch_consumer_group_assignments(fetch("g", "a", 0))
        .await?
        .into_inner();
    assert_eq!(parts(&all, "gs"), vec![0, 1, 2, 3]);

    // A second member: a new epoch; the old one is refused; the assignments split the stream.
    let b = c
        .join_consumer_group(join("g", "b", &["gs"]))
        .await?
        .into_inner();
    assert!(b.epoch > 0);
    let md = group_md(&mut c, "g").await?;
    assert_eq!((md.epoch, md.coordinator.as_str()), (b.epoch, "grp-1"));
    assert_eq!(
        code(c.fetch_consumer_group_assignments(fetch("g", "a", 0)).await),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(
            c.fetch_consumer_group_assignments(fetch("g", "x", b.epoch))
                .await
        ),
        Some(Code::FailedPrecondition),
        "not a member"
    );
    let ra = c
        .fetch_consumer_group_assignments(fetch("g", "a", b.epoch))
        .await?
        .into_inner();
    let rb = c
        .fetch_consumer_group_assignments(fetch("g", "b", b.epoch))
        .await?
        .into_inner();
    let (pa, pb) = (parts(&ra, "gs"), parts(&rb, "gs"));
    assert_eq!((pa.len(), pb.len()), (2, 2), "balanced: {pa:?} {pb:?}");
    let union: BTreeSet<i32> = pa.iter().chain(&pb).copied().collect();
    assert_eq!(
        union,
        (0..4).collect(),
        "disjoint and complete: {pa:?} {pb:?}"
    );

    // Subscribe fencing: assigned + current epoch works; stale epoch or foreign partition not.
    let mut sub = subscribe(&mut c, member_sub("gs", pa[0], "g", "a", b.epoch)).await?;
    assert_eq!(
        code(
            c.subscribe(member_sub("gs", pb[0], "g", "a", b.epoch))
                .await
        ),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(c.subscribe(member_sub("gs", pa[0], "g", "a", 0)).await),
        Some(Code::FailedPrecondition)
    );
    let mut no_consumer = member_sub("gs", pa[0], "g", "", b.epoch);
    no_consumer.read_isr_replica = false;
    assert_eq!(
        code(c.subscribe(no_consumer).await),
        Some(Code::InvalidArgument)
    );

    // b falls silent; a keeps polling: b expires, a gets everything in a later epoch.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut epoch = b.epoch;
    loop {
        match c
            .fetch_consumer_group_assignments(fetch("g", "a", epoch))
            .await
        {
            Ok(r) if parts(r.get_ref(), "gs").len() == 4 => {
                assert!(r.get_ref().epoch > b.epoch);
                break;
            }
            Ok(_) => {}
            Err(e) if e.code() == Code::FailedPrecondition => {
                epoch = group_md(&mut c, "g").await?.epoch;
            }
            Err(e) => return Err(e.into()),
        }
        assert!(
            Instant::now() < deadline,
            "b did not expire:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        code(
            c.fetch_consumer_group_assignments(fetch("g", "b", epoch))
                .await
        ),
        Some(Code::FailedPrecondition),
        "b is no longer a member"
    );
    // a's subscription stays open (its partition is still a's).
    assert_eq!(end_status(&mut sub, Duration::from_millis(300)).await, None);

    // Leave: the last member leaves, the group is gone.
    c.leave_consumer_group(LeaveConsumerGroupRequest {
        group_id: "g".into(),
        consumer_id: "a".into(),
    })
    .await?;
    assert_eq!(
        group_md(&mut c, "g").await?.error,
        consumer_group_metadata::Error::UnknownGroup as i32
    );
    Ok(())
}

/// Cursor and group failover on three servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_cursors_survive_failover() -> TestResult {
    let Some(nats) = NatsServer::start_or_skip("groups_and_cursors_survive_failover") else {
        return Ok(());
    };
    let mut specs = cluster_specs(std::path::Path::new(BIN), &nats.url(), 3)?;
    for s in &mut specs {
        with_config(
            s,
            "cursors.stream.partitions: 1\ngroups.consumer.timeout: 30s\ngroups.coordinator.timeout: 2s\n",
        )?;
    }
    let mut servers: Vec<Option<DrawbridgeServer>> =
        cluster(&specs)?.into_iter().map(Some).collect();
    let mut clients = Vec::new();
    for s in servers.iter().flatten() {
        clients.push(client(s).await?);
    }
    let idx = |id: &str| {
        specs
            .iter()
            .position(|s| s.id == id)
            .ok_or("unknown server id")
    };

    let mut req = create_req("fs", "fs");
    req.replication_factor = 3;
    req.partitions = 2;
    clients[0].create_stream(req).await?;
    wait_leaders(&mut clients[0], "fs").await?;
    let cur = wait_leaders(&mut clients[0], "__cursors").await?;
    let p = cur.partitions.get(&0).ok_or("no cursors partition")?;
    assert_eq!(p.replicas.len(), 3, "RF -1 = every server");
    let leader = idx(&p.leader)?;
    let other = (leader + 1) % 3;

    // Only the cursor partition leader answers.
    let set = SetCursorRequest {
        stream: "fs".into(),
        partition: 1,
        cursor_id: "c".into(),
        offset: 17,
    };
    assert_eq!(
        code(clients[other].set_cursor(set.clone()).await),
        Some(Code::FailedPrecondition)
    );
    clients[leader].set_cursor(set).await?;

    // A group coordinated somewhere.
    let j = clients[other]
        .join_consumer_group(join("fg", "m", &["fs"]))
        .await?
        .into_inner();
    let coord = idx(&j.coordinator)?;

    // SIGKILL of the cursor partition leader.
    if let Some(s) = servers[leader].as_mut() {
        s.kill();
    }
    servers[leader] = None;
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // The cursor is readable from the new cursor-partition leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    'found: loop {
        for &i in &alive {
            let get = FetchCursorRequest {
                stream: "fs".into(),
                partition: 1,
                cursor_id: "c".into(),
            };
            match clients[i].fetch_cursor(get).await {
                Ok(r) => {
                    assert_eq!(r.into_inner().offset, 17);
                    break 'found;
                }
                Err(e) if e.code() == Code::FailedPrecondition || e.code() == Code::Internal => {}
                Err(e) => return Err(e.into()),
            }
        }
        assert!(Instant::now() < deadline, "no new cursor leader answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Restart it (three up again), then SIGKILL the group's coordinator.
    servers[leader] = Some(DrawbridgeServer::start(&specs[leader])?);
    clients[leader] = client(servers[leader].as_ref().ok_or("restarted")?).await?;
    if let Some(s) = servers[coord].as_mut() {
        s.kill();
    }
    servers[coord] = None;
    let alive: Vec<usize> = (0..3).filter(|i| *i != coord).collect();
    let dead_id = specs[coord].id.clone();
    // The member reports the dead coordinator (retrying while the metadata group re-elects),
    // until FetchMetadata names a new one with a higher epoch.
    let deadline = Instant::now() + Duration::from_secs(40);
    let md = loop {
        let md = group_md(&mut clients[alive[0]], "fg").await?;
        if md.coordinator != dead_id && md.epoch > j.epoch {
            break md;
        }
        let rep = ReportConsumerGroupCoordinatorRequest {
            group_id: "fg".into(),
            consumer_id: "m".into(),
            coordinator: md.coordinator.clone(),
            epoch: md.epoch,
        };
        if let Err(e) = clients[alive[0]]
            .report_consumer_group_coordinator(rep)
            .await
        {
            eprintln!("report: {e}");
        }
        assert!(Instant::now() < deadline, "no new coordinator: {md:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let new_coord = idx(&md.coordinator)?;
    assert!(alive.contains(&new_coord));
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        match clients[new_coord]
            .fetch_consumer_group_assignments(fetch("fg", "m", md.epoch))
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(parts(&r, "fs"), vec![0, 1]);
    Ok(())
}
