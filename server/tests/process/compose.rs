//! The repository's `docker-compose.yml`, checked without a Docker engine: the file parses,
//! has one NATS service and three Drawbridge nodes built from the Dockerfile, and the nodes'
//! exact command lines start a working three-node cluster when run as local processes (host
//! names, ports and volumes rewritten to loopback, free ports and temp dirs; every other
//! argument as written in the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drawbridge_proto::api::api_client::ApiClient;
use drawbridge_proto::api::*;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::ports::{free_port, wait_for_listen};
use drawbridge_tests::process::ChildGuard;
use serde_norway::Value;
use tonic::transport::Channel;

use crate::common::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// One Drawbridge service of the compose file.
#[derive(Debug)]
struct Node {
    name: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses the compose file and checks its shape; returns the Drawbridge nodes.
fn compose_nodes() -> TestResult<Vec<Node>> {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml"))?;
    let doc: Value = serde_norway::from_str(&text)?;
    let services = doc
        .get("services")
        .and_then(Value::as_mapping)
        .ok_or("compose file has no services mapping")?;
    let nats = services.get("nats").ok_or("no nats service")?;
    let image = nats.get("image").and_then(Value::as_str).unwrap_or("");
    assert!(image.starts_with("nats:"), "nats service image: {image}");
    let mut nodes = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().ok_or("service name not a string")?.to_owned();
        if name == "nats" {
            continue;
        }
        assert_eq!(
            svc.get("build").and_then(Value::as_str),
            Some("."),
            "{name} builds the repository's Dockerfile"
        );
        let depends = str_list(svc.get("depends_on").unwrap_or(&Value::Null));
        assert!(
            depends.iter().any(|d| d == "nats"),
            "{name} depends on nats"
        );
        let args = str_list(svc.get("command").ok_or("no command")?);
        assert!(!args.is_empty(), "{name} has a command");
        let ports = str_list(svc.get("ports").unwrap_or(&Value::Null));
        assert_eq!(ports.len(), 1, "{name} publishes its client port");
        let volumes = str_list(svc.get("volumes").unwrap_or(&Value::Null));
        assert!(
            volumes.iter().any(|v| v.ends_with(":/data")),
            "{name} keeps /data on a volume"
        );
        let env = svc
            .get("environment")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        nodes.push(Node { name, args, env });
    }
    assert_eq!(nodes.len(), 3, "three Drawbridge nodes");
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("drawbridge-server")),
        "the Dockerfile's entrypoint is drawbridge-server"
    );
    Ok(nodes)
}

/// Rewrites one node's arguments for loopback: `--port`, `--raft-listen`, `--raft-advertise`,
/// `--nats-servers` and `--data-dir` get local values; everything else is kept.
fn local_args(
    node: &Node,
    nats_url: &str,
    data: &Path,
    port: u16,
    raft_port: u16,
) -> TestResult<Vec<String>> {
    let mut out = Vec::new();
    let mut it = node.args.iter();
    let mut seen = Vec::new();
    while let Some(flag) = it.next() {
        let local = match flag.as_str() {
            "--port" => port.to_string(),
            "--raft-listen" | "--raft-advertise" => format!("127.0.0.1:{raft_port}"),
            "--nats-servers" => nats_url.to_owned(),
            "--data-dir" => data.display().to_string(),
            _ => {
                out.push(flag.clone());
                continue;
            }
        };
        it.next()
            .ok_or_else(|| format!("{}: {flag} without a value", node.name))?;
        seen.push(flag.clone());
        out.push(flag.clone());
        out.push(local);
    }
    for want in [
        "--port",
        "--raft-listen",
        "--raft-advertise",
        "--nats-servers",
        "--data-dir",
    ] {
        assert!(seen.iter().any(|s| s == want), "{} sets {want}", node.name);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_runs_as_processes() -> TestResult {
    let nodes = compose_nodes()?;
    let Some(nats) = NatsServer::start_or_skip("compose_topology_runs_as_processes") else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let mut guards = Vec::new();
    let mut ports = Vec::new();
    for node in &nodes {
        let (port, raft_port) = (free_port()?, free_port()?);
        let data = tmp.path().join(&node.name);
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(tmp.path().join(format!("{}.log", node.name)))?;
        let mut cmd = Command::new(BIN);
        cmd.args(local_args(node, &nats.url(), &data, port, raft_port)?)
            .env("LIFTBRIDGE_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &node.env {
            // Host names are compose service names; locally every node is 127.0.0.1.
            let v = if k == "LIFTBRIDGE_HOST" {
                "127.0.0.1"
            } else {
                v
            };
            cmd.env(k, v);
        }
        guards.push(ChildGuard::spawn(node.name.clone(), &mut cmd)?);
        ports.push(port);
    }
    for (node, port) in nodes.iter().zip(&ports) {
        assert!(
            wait_for_listen(*port, Duration::from_secs(60)),
            "{} did not listen: {}",
            node.name,
            std::fs::read_to_string(tmp.path().join(format!("{}.log", node.name)))
                .unwrap_or_default()
        );
    }

    // Every node sees all three brokers; a replicated stream takes messages and serves them.
    let mut clients = Vec::new();
    for port in &ports {
        let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await?;
        clients.push(ApiClient::new(ch));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &mut clients {
        loop {
            let md = c
                .fetch_metadata(FetchMetadataRequest::default())
                .await?
                .into_inner();
            if md.brokers.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "brokers never reached 3: {md:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut req = create_req("compose", "compose");
    req.replication_factor = 3;
    clients[0].create_stream(req).await?;
    let leader_deadline = Instant::now() + Duration::from_secs(20);
    let mut acked = 0;
    while acked < 5 {
        assert!(Instant::now() < leader_deadline, "publishes never acked");
        let mut published = false;
        for c in &mut clients {
            if c.publish(publish_req("compose", b"hi", AckPolicy::All))
                .await
                .is_ok()
            {
                published = true;
                acked += 1;
                break;
            }
        }
        if !published {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for mut g in guards {
        g.stop(Duration::from_secs(10));
    }
    Ok(())
}
