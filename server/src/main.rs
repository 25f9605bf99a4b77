//! `drawbridge-server`: runs one Drawbridge server until SIGINT or SIGTERM.
//!
//! Command line: Liftbridge's flags ([`drawbridge_server::config::Flags`]) plus Drawbridge's
//! `--raft-listen HOST:PORT` / `--raft-advertise HOST:PORT` (the raft transport address; default
//! the client listen host and client port + 1) and `--raft-peer-route ADVERTISED=DIAL` (dial
//! another address to reach a peer, e.g. through a relay). Exit status: 0 after a clean shutdown, 1 when
//! the configuration is invalid, start-up fails, the shutdown overruns its bound or a second
//! SIGINT/SIGTERM cuts it short. SIGHUP reloads the authorization model and policy.

use clap::Parser;
use drawbridge_server::app::{self, Extra};
use drawbridge_server::config::{env, Config, Flags, LogFormat};

/// mimalloc instead of glibc malloc: per-message allocations (protobuf, HTTP/2 frames, channel
/// nodes) freed on another thread made glibc's malloc/free ~15 % of the publish path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Liftbridge's flags plus Drawbridge's raft address flags.
#[derive(Debug, Parser)]
#[command(
    name = "drawbridge-server",
    version,
    about = "Drawbridge: a Liftbridge-compatible, replicated message log for NATS"
)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    /// Bind the raft transport to HOST:PORT (default: listen host, client port + 1).
    #[arg(
        long = "raft-listen",
        env = "DRAWBRIDGE_RAFT_LISTEN",
        value_name = "HOST:PORT"
    )]
    raft_listen: Option<String>,
    /// Advertise HOST:PORT to peers as this server's raft address.
    #[arg(
        long = "raft-advertise",
        env = "DRAWBRIDGE_RAFT_ADVERTISE",
        value_name = "HOST:PORT"
    )]
    raft_advertise: Option<String>,
    /// Dial DIAL to reach the peer that advertises the raft address ADVERTISED (repeatable;
    /// for relays, and for the fault tests' per-link proxies).
    #[arg(long = "raft-peer-route", value_name = "ADVERTISED=DIAL")]
    raft_peer_routes: Vec<String>,
}

fn init_logging(config: &Config) {
    let mut filter = config.logging.level.as_filter().to_owned();
    if !config.logging.raft {
        filter.push_str(",openraft=warn");
    }
    // `RUST_LOG` (or `DRAWBRIDGE_LOG`) replaces the level with a full filter.
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("DRAWBRIDGE_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Longest a clean shutdown may take before the process gives up on it (its steps are bounded
/// individually, see `app`; this bounds their sum). Exit code 0 only after a clean shutdown.
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(20);

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for SIGINT or SIGTERM; meanwhile each SIGHUP reloads the ACL files
/// (`tls.client.authz.model` and `.policy`; a file that does not load leaves the rules as they
/// were).
async fn serve_until_stopped(running: &app::Running) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        wait_for_signal().await;
        return;
    };
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = hup.recv() => match running.reload_authz() {
                Ok(()) => tracing::info!("SIGHUP: authorization rules reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: authorization rules not reloaded; the previous rules stay"),
            },
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let vars = match env::process_vars() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("drawbridge-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = match Config::load(&cli.flags, vars) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drawbridge-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    let keyring = match drawbridge_server::encryption::Keyring::from_env() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("drawbridge-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(id) = keyring.current_id() {
        tracing::info!(master_key_id = id, old_keys = ?keyring.old_ids(), "encryption at rest: master key loaded");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drawbridge-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let extra = Extra {
        raft_listen: cli.raft_listen,
        raft_advertise: cli.raft_advertise,
        raft_peer_routes: cli.raft_peer_routes,
        keyring: std::sync::Arc::new(keyring),
    };
    runtime.block_on(async move {
        let running = tokio::select! {
            r = app::start(config, extra) => r,
            _ = wait_for_signal() => {
                tracing::info!("stopped during start-up");
                return std::process::ExitCode::SUCCESS;
            }
        };
        let running = match running {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "start-up failed");
                eprintln!("drawbridge-server: start-up failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        serve_until_stopped(&running).await;
        tracing::info!("signal received; stopping (a second signal exits at once)");
        tokio::select! {
            r = tokio::time::timeout(SHUTDOWN_BOUND, running.shutdown()) => match r {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(_) => {
                    tracing::error!(bound = ?SHUTDOWN_BOUND, "shutdown did not finish in time");
                    std::process::ExitCode::FAILURE
                }
            },
            _ = wait_for_signal() => {
                tracing::warn!("second signal: exiting without finishing the shutdown");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
