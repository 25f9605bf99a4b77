//! Start-up and shutdown of one server.
//!
//! Start-up order (each step bounded; a failure stops start-up with an error):
//! 1. the embedded NATS broker when `nats.embedded` (bound to 127.0.0.1 unless its config file
//!    says otherwise), then the NATS connection (to it, or to `nats.servers`);
//! 2. the data directory and this server's identity ([`crate::identity`]);
//! 3. the raft node on the raft address (Drawbridge's `--raft-listen`, default: the client
//!    listen host and client port + 1);
//! 4. the metrics endpoint when `metrics.listen` is set ([`crate::metrics`]; `/readyz` says
//!    503 until the steps below are done), the cluster responders on NATS (survey answers,
//!    forwarded admin calls), then cluster formation ([`crate::cluster::form`]): recover
//!    existing state; or bootstrap alone with `--raft-bootstrap-seed`; or with every
//!    `--raft-bootstrap-peers` id once all answered the survey; or, without those flags,
//!    bootstrap alone when NATS is our own embedded broker or when no cluster answers on NATS,
//!    else join the cluster found;
//! 5. the partition reconciler, the ISR monitor, the broker survey loop; then a bounded wait
//!    until the hosted partitions this node leads are recording again (so a restarted server
//!    opens its API ready to accept publishes);
//! 6. the gRPC server (`proto.API`, `drawbridge.admin.v1.Admin` and `grpc.health.v1.Health`,
//!    one port; TLS and mutual TLS per `tls.*` ([`crate::tls`]), `proto.API` behind the ACLs
//!    of `tls.client.authz.*` ([`crate::authz_api`]); certificates, keys and ACL files are read
//!    before step 1, so a bad file fails start-up at once), health SERVING.
//!
//! Shutdown ([`Running::shutdown`]): health NOT_SERVING, the shutdown flag (every background
//! loop and subscription ends), the gRPC server (bounded drain), partition ingest, then the
//! hand-off of every partition leadership this node holds to its most caught-up other voter
//! (raft leader transfer: the new leader takes over in a round trip or two instead of an
//! election timeout; bounded, 3 s), raft, NATS, the embedded broker — in that order, each
//! bounded. The metadata group's leadership is not handed off: it elects after its timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drawbridge_proto::admin::admin_server::AdminServer;
use drawbridge_proto::api::api_server::ApiServer;
use drawbridge_raft::{LogSyncPolicy, RaftConfig, RaftNode};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin_api::AdminService;
use crate::api::ApiService;
use crate::authz::Authorizer;
use crate::authz_api::Guarded;
use crate::cluster;
use crate::config::{Config, HostPort, StorageConfig, SyncPolicy};
use crate::context::{Ctx, Node};
use crate::embedded_nats::{EmbeddedNats, EmbeddedNatsConfig};
use crate::error::{Result, ServerError};
use crate::identity;
use crate::nats_conn;
use crate::partitions::{self, Partitions};

/// HTTP/2 per-stream flow-control window of the client API (bytes).
const H2_STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 per-connection flow-control window of the client API (bytes): room for several
/// streams at their full window (one connection's publishers share it; 4 publishers × 1024
/// messages of 1 KiB in flight need 4.5 MB, and at 4 MiB they were 2–12 % slower). A
/// connection buffers at most this much, and one stream at most `H2_STREAM_WINDOW`.
const H2_CONNECTION_WINDOW: u32 = 16 << 20;

/// Options that are not (yet) part of the Liftbridge configuration.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Raft transport bind address (`host:port`); default: listen host, client port + 1.
    pub raft_listen: Option<String>,
    /// Raft address advertised to peers; default: the advertised client host and raft port.
    pub raft_advertise: Option<String>,
    /// `ADVERTISED=DIAL` pairs: dial `DIAL` to reach the peer whose advertised raft address is
    /// `ADVERTISED` (a relay; the process fault tests route each ordered pair of nodes through
    /// its own proxy). Empty: peers are dialled as advertised.
    pub raft_peer_routes: Vec<String>,
    /// Master keys for encryption at rest (normally [`Keyring::from_env`]); empty = none.
    ///
    /// [`Keyring::from_env`]: crate::encryption::Keyring::from_env
    pub keyring: Arc<crate::encryption::Keyring>,
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    ctx: Ctx,
    shutdown_tx: watch::Sender<bool>,
    grpc_stop: Option<oneshot::Sender<()>>,
    grpc_task: Option<JoinHandle<()>>,
    health: tonic_health::server::HealthReporter,
    embedded: Option<EmbeddedNats>,
    /// The ACLs in force when `tls.client.authz.enabled` (reloaded on SIGHUP by `main`).
    authz: Option<Arc<Authorizer>>,
    /// The bound client API address.
    pub api_addr: SocketAddr,
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    let mut it = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ServerError::InvalidArgument(format!("bad address {addr:?}: {e}")))?;
    it.next().ok_or_else(|| {
        ServerError::InvalidArgument(format!("address {addr:?} resolves to nothing"))
    })
}

fn hostport(h: &HostPort) -> String {
    h.to_string()
}

/// `storage.sync.policy` / `storage.sync.interval` as the raft layer's partition log policy
/// (see `drawbridge_raft::LogSyncPolicy` for the trade each makes).
fn partition_log_sync(storage: &StorageConfig) -> LogSyncPolicy {
    match storage.sync_policy {
        SyncPolicy::Always => LogSyncPolicy::Always,
        SyncPolicy::Interval => LogSyncPolicy::Interval {
            interval_ms: u64::try_from(storage.sync_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        },
        SyncPolicy::Never => LogSyncPolicy::Never,
    }
}

/// `storage.unclean.restart.hold` as the raft layer's hold limit, ms (0: `None`, no limit).
pub(crate) fn unclean_restart_hold_ms(storage: &StorageConfig) -> Option<u64> {
    match storage.unclean_restart_hold {
        d if d.is_zero() => None,
        d => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
    }
}

/// Starts a server (see the module docs for the order).
pub async fn start(config: Config, extra: Extra) -> Result<Running> {
    let tls = crate::tls::server_config(&config.tls)?;
    let authz = load_authz(&config)?;
    let (embedded, urls) = if config.nats.embedded || config.nats.embedded_config.is_some() {
        let ncfg = match &config.nats.embedded_config {
            Some(path) => EmbeddedNatsConfig::from_file(path)
                .map_err(|e| ServerError::InvalidArgument(e.to_string()))?,
            None => EmbeddedNatsConfig::default(),
        };
        let broker = EmbeddedNats::start(ncfg)
            .await
            .map_err(|e| ServerError::Nats(format!("embedded NATS: {e}")))?;
        let url = broker.client_url();
        (Some(broker), vec![url])
    } else {
        (None, config.nats.servers.clone())
    };
    let embedded_only = embedded.is_some();
    // The server's NATS connection goes to its embedded broker: message paths may use the
    // broker in-process instead (`Node::local_nats`).
    let local_nats = embedded
        .as_ref()
        .filter(|_| local_nats_enabled())
        .map(EmbeddedNats::local);

    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServerError::Internal(format!("creating {}: {e}", config.data_dir.display()))
    })?;
    let server_id =
        identity::load_or_create(&config.data_dir, config.clustering.server_id.as_deref())?;
    let node_id = identity::node_id_of(&server_id);
    let nats = nats_conn::connect(&config, &urls, &server_id).await?;
    info!(server_id = %server_id, nats = ?urls, "connected to NATS");

    let listen = config.listen_address();
    let advertise = config.connection_address();
    let raft_listen = match &extra.raft_listen {
        Some(a) => a.clone(),
        None => hostport(&HostPort {
            host: listen.host.clone(),
            port: listen.port.checked_add(1).ok_or_else(|| {
                ServerError::InvalidArgument(
                    "port 65535 leaves no room for the raft port; set --raft-listen".into(),
                )
            })?,
        }),
    };
    let raft_bind = resolve(&raft_listen).await?;
    let raft_advertise = match &extra.raft_advertise {
        Some(a) => a.clone(),
        None if raft_bind.ip().is_unspecified() => hostport(&HostPort {
            host: advertise.host.clone(),
            port: raft_bind.port(),
        }),
        None => raft_bind.to_string(),
    };
    let mut raft_config = RaftConfig::new(node_id, raft_advertise.clone());
    for route in &extra.raft_peer_routes {
        let (from, to) = route
            .split_once('=')
            .filter(|(f, t)| !f.is_empty() && !t.is_empty())
            .ok_or_else(|| {
                ServerError::InvalidArgument(format!(
                    "--raft-peer-route {route:?}: expected ADVERTISED=DIAL"
                ))
            })?;
        raft_config
            .peer_routes
            .insert(from.to_owned(), to.to_owned());
    }
    // Partition groups run on the raft crate's defaults (heartbeat 500 ms, elections 1.5–3 s,
    // driven by the node's scheduler): a follower elects 3–4.5 s after the last heartbeat of a
    // crashed leader (the leader lease, then a randomized part), inside the 10 s budget.
    raft_config.partition_log_sync = partition_log_sync(&config.storage);
    raft_config.unclean_restart_hold_ms = unclean_restart_hold_ms(&config.storage);
    if let Some(on) = quiesce_override() {
        info!(
            on,
            "DRAWBRIDGE_QUIESCE sets the quiescence of idle partition groups"
        );
        raft_config.quiesce_partition_groups = on;
    }
    if let Some(window) = raft_stream_override() {
        info!(
            window,
            "DRAWBRIDGE_RAFT_STREAM sets the replication stream window"
        );
        raft_config.append_stream_window = window;
    }
    // Liftbridge's `clustering.raft.max.quorum.size`: 0 means every server votes.
    raft_config.max_metadata_voters = match config.clustering.raft_max_quorum_size {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let raft = RaftNode::start(raft_config, &config.data_dir.join("raft"), raft_bind).await?;
    let raft_addr = if raft_bind.port() == 0 {
        raft.local_addr().to_string()
    } else {
        raft_advertise
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let compaction_slots = Arc::new(tokio::sync::Semaphore::new(
        config.streams.compact_max_goroutines.max(1),
    ));
    let ctx: Ctx = Arc::new(Node {
        config,
        server_id: server_id.clone(),
        node_id,
        advertise,
        raft_addr,
        raft,
        nats,
        directory: Default::default(),
        partitions: Partitions::default(),
        groups: Default::default(),
        shutdown: shutdown_rx,
        stats: Default::default(),
        compaction_slots,
        keyring: extra.keyring.clone(),
        local_inboxes: Default::default(),
        local_nats,
    });
    if let Some(listen) = &ctx.config.metrics.listen {
        let host = if listen.host.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            listen.host.clone()
        };
        let addr = resolve(&hostport(&HostPort {
            host,
            port: listen.port,
        }))
        .await?;
        crate::metrics::serve(ctx.clone(), addr).await?;
    }
    cluster::serve_info(ctx.clone()).await?;
    cluster::serve_propagate(ctx.clone()).await?;
    ctx.nats
        .flush()
        .await
        .map_err(|e| ServerError::Nats(e.to_string()))?;
    cluster::form(&ctx, embedded_only).await?;
    partitions::spawn_reconciler(ctx.clone());
    crate::auto_pause::spawn(ctx.clone());
    crate::disk_handoff::spawn(ctx.clone());
    crate::activity::spawn(ctx.clone());
    crate::key_rotation::spawn(ctx.clone());
    crate::isr::spawn_monitor(ctx.clone());
    cluster::spawn_survey_loop(ctx.clone());
    crate::api::cursors::spawn_stream_creator(ctx.clone());
    crate::groups::spawn_expiry(ctx.clone());
    // A restarted node replays its metadata log: until it has caught up, the partitions it
    // hosts are unknown and "every hosted partition is ready" would hold vacuously, opening the
    // API before ingest subscribes (a publish would then go unrecorded).
    let ready_deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    if let Err(e) = ctx
        .raft
        .metadata()
        .wait_caught_up(Duration::from_secs(15))
        .await
    {
        warn!(error = %e, "metadata not caught up yet; serving anyway");
    }
    let left = ready_deadline.saturating_duration_since(tokio::time::Instant::now());
    if !partitions::wait_ready(&ctx, left).await {
        warn!("not every hosted partition is ready yet; serving anyway");
    }

    let api_bind = resolve(&hostport(&listen)).await?;
    let listener = TcpListener::bind(api_bind)
        .await
        .map_err(|e| ServerError::Internal(format!("cannot listen on {api_bind}: {e}")))?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<Api>().await;
    let limits = Arc::new(crate::limits::Limits::new(ctx.clone()));
    let guarded = Guarded::new(ApiService::new(ctx.clone()), authz.clone(), Some(limits));
    // Subscribe is served from pre-encoded frames; every other method by the generated server.
    let api = crate::api::frames::SubscribeRoute::new(
        ApiServer::new(guarded.clone()).max_decoding_message_size(64 << 20),
        guarded,
    );
    let admin = AdminServer::new(AdminService::new(ctx.clone(), authz.clone()));
    let incoming =
        crate::limits::incoming(listener, ctx.config.limits.max_connections, ctx.clone());
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| ServerError::InvalidArgument(format!("TLS: {e}")))?;
    }
    let (grpc_stop, grpc_stop_rx) = oneshot::channel::<()>();
    let grpc_task = tokio::spawn(async move {
        // HTTP/2 flow control: the default 64 KiB windows cap one pipelined publisher at a
        // window per round trip (~7 MB/s measured); these let several MiB be in flight.
        let r = builder
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .add_service(health_svc)
            .add_service(api)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = grpc_stop_rx.await;
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "gRPC server ended with an error");
        }
    });
    info!(
        server_id = %server_id,
        node_id,
        api = %api_addr,
        raft = %ctx.raft_addr,
        "drawbridge server started"
    );
    Ok(Running {
        ctx,
        shutdown_tx,
        grpc_stop: Some(grpc_stop),
        grpc_task: Some(grpc_task),
        health,
        embedded,
        authz,
        api_addr,
    })
}

/// How long shutdown waits for partition leaderships to move to other replicas.
const HAND_OFF_BOUND: Duration = Duration::from_secs(3);

/// Shutdown hands a partition leadership only to a voter that acknowledged in the last half
/// minute (a quiesced group's followers acknowledge rarely; the `MayLead` probe answers for
/// liveness).
const HAND_OFF_MAX_ACK_AGE: Duration = Duration::from_secs(30);
/// Rounds of a shutdown hand-off: a follower may still be taking the last batch when shutdown
/// starts, so a round that found no candidate is tried twice more.
const HAND_OFF_ROUNDS: u32 = 3;

/// Hands every partition leadership this node holds to a fully caught-up voter that says it
/// would take it (`RaftNode::hand_off_leadership`: a peer that is down or shutting down itself
/// costs one failed probe, not the whole bound), all groups at once, bounded by `bound`
/// (groups not handed off by then elect after their election timeout, as after a crash).
async fn hand_off_leaderships(ctx: &Ctx, bound: Duration) {
    let leading: Vec<_> = ctx
        .partitions
        .all()
        .into_iter()
        .filter(|(_, l)| l.replica.is_leader())
        .collect();
    if leading.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let results = futures::future::join_all(leading.iter().map(|(_, l)| {
        ctx.raft
            .hand_off_leadership(&l.replica, HAND_OFF_MAX_ACK_AGE, bound, HAND_OFF_ROUNDS)
    }))
    .await;
    let moved = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    for ((id, _), r) in leading.iter().zip(&results) {
        if let Err(e) = r {
            warn!(stream = %id.stream, partition = id.partition, error = %e, "leadership not handed off");
        }
    }
    info!(
        moved,
        led = leading.len(),
        took = ?started.elapsed(),
        "partition leaderships handed off"
    );
}

/// Hands the metadata leadership to another voter when this node holds it, bounded by
/// `bound` (otherwise the cluster elects after the metadata election timeout).
async fn hand_off_metadata_leadership(ctx: &Ctx, bound: Duration) {
    let started = std::time::Instant::now();
    match ctx.raft.hand_off_metadata_leadership(bound).await {
        Ok(Some(to)) => info!(to, took = ?started.elapsed(), "metadata leadership handed off"),
        Ok(None) => {}
        Err(e) => warn!(error = %e, "metadata leadership not handed off"),
    }
}

/// The API service as registered (its name is `proto.API` whatever the wrapper).
type Api = ApiServer<Guarded<ApiService>>;

/// The authorizer of `tls.client.authz.*`, when enabled (both files are then required).
fn load_authz(config: &Config) -> Result<Option<Arc<Authorizer>>> {
    let tls = &config.tls;
    if !tls.client_authz_enabled {
        return Ok(None);
    }
    let (Some(model), Some(policy)) = (&tls.client_authz_model, &tls.client_authz_policy) else {
        return Err(ServerError::InvalidArgument(
            "tls.client.authz.enabled needs tls.client.authz.model and tls.client.authz.policy"
                .into(),
        ));
    };
    if !tls.client_auth_enabled {
        warn!("tls.client.authz.enabled without tls.client.auth.enabled: clients have no identity, every call is denied");
    }
    let a =
        Authorizer::load(model, policy).map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
    Ok(Some(Arc::new(a)))
}

impl Running {
    /// The shared server state.
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Re-reads the ACL model and policy files (SIGHUP). On error the rules in force stay and
    /// the error is returned; without `tls.client.authz.enabled` this does nothing.
    pub fn reload_authz(&self) -> std::result::Result<(), crate::authz::AuthzError> {
        match &self.authz {
            Some(a) => a.reload(),
            None => Ok(()),
        }
    }

    /// Stops the server (see the module docs); bounded.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        self.health.set_not_serving::<Api>().await;
        self.shutdown_tx.send_replace(true);
        if let Some(tx) = self.grpc_stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.grpc_task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        // From now on this node declines leaderships (`MayLead` probes from peers that are
        // shutting down too, e.g. a whole cluster stopped at once, move nothing here).
        self.ctx.raft.set_lead_gate(|| false);
        self.ctx.partitions.stop_all();
        // Give ingest a moment to finish the batches in flight (their acks and commits).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.ctx.partitions.any_ingesting() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        hand_off_leaderships(&self.ctx, HAND_OFF_BOUND).await;
        hand_off_metadata_leadership(&self.ctx, HAND_OFF_BOUND).await;
        self.ctx.raft.shutdown().await;
        self.ctx.partitions.close_logs();
        // Flush what is buffered for NATS, unless the connection is down (nothing would go out:
        // waiting would only delay the exit).
        if self.ctx.nats.connection_state() == async_nats::connection::State::Connected {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.ctx.nats.flush()).await;
        }
        if let Some(e) = self.embedded.take() {
            e.shutdown().await;
        }
        info!("stopped");
    }
}

/// Hidden switch for A/B runs: `DRAWBRIDGE_LOCAL_NATS=0` keeps message publishes and ingest
/// subscriptions on the NATS connection even on the embedded broker (the path before
/// [`crate::embedded_nats::local`]). Anything but `0`/`false`/`off` leaves them in-process.
fn local_nats_enabled() -> bool {
    !matches!(
        std::env::var("DRAWBRIDGE_LOCAL_NATS")
            .as_deref()
            .map(str::trim),
        Ok("0" | "false" | "off")
    )
}

/// Hidden switch for A/B runs: `DRAWBRIDGE_QUIESCE=1` (or `0`) turns quiescence of idle
/// partition groups on (or off) whatever the raft crate's default. Anything else is ignored
/// with a warning.
fn quiesce_override() -> Option<bool> {
    switch_override("DRAWBRIDGE_QUIESCE")
}

/// Hidden switch for A/B runs: `DRAWBRIDGE_RAFT_STREAM=N` carries replication on streaming
/// RPCs with up to N append-entries in flight; 0 sends one append-entries RPC at a time.
fn raft_stream_override() -> Option<usize> {
    let v = std::env::var("DRAWBRIDGE_RAFT_STREAM").ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(value = %v, "DRAWBRIDGE_RAFT_STREAM is not a number; ignored");
            None
        }
    }
}

/// An on/off environment switch; anything but 0/1 (false/true, off/on) is ignored with a
/// warning.
fn switch_override(name: &str) -> Option<bool> {
    let v = std::env::var(name).ok()?;
    match v.trim() {
        "1" | "true" | "on" => Some(true),
        "0" | "false" | "off" => Some(false),
        other => {
            tracing::warn!(value = other, "{name} is not 0 or 1; ignored");
            None
        }
    }
}
