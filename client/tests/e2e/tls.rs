//! The client library and the CLI over mutual TLS, with certificates minted here (rcgen): a
//! server that requires client certificates and authorizes by their common name.

use std::path::Path;
use std::time::Duration;

use drawbridge_client::{Client, PublishMessage, StreamOptions, TlsOptions};
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::common::*;

const CLI: &str = env!("CARGO_BIN_EXE_drawbridge");

const MODEL: &str = "[request_definition]\nr = sub, obj, act\n[policy_definition]\n\
p = sub, obj, act\n[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\n\
m = r.sub == p.sub && (r.obj == p.obj || p.obj == \"*\") && r.act == p.act\n";

/// Writes ca.pem, server(-key).pem and client1(-key).pem into `dir`.
fn mint(dir: &Path) -> TestResult {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "client e2e CA");
    let ca_key = KeyPair::generate()?;
    std::fs::write(dir.join("ca.pem"), ca_params.self_signed(&ca_key)?.pem())?;
    let ca = Issuer::new(ca_params, ca_key);
    for (name, cn) in [("server", "localhost"), ("client1", "client1")] {
        let mut p = CertificateParams::new(vec!["localhost".to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate()?;
        std::fs::write(
            dir.join(format!("{name}.pem")),
            p.signed_by(&key, &ca)?.pem(),
        )?;
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem())?;
    }
    std::fs::write(dir.join("model.conf"), MODEL)?;
    std::fs::write(
        dir.join("policy.csv"),
        "p, client1, *, FetchMetadata\np, client1, *, CreateStream\np, client1, *, Publish\n\
         p, client1, *, Subscribe\np, client1, *, FetchPartitionMetadata\n",
    )?;
    Ok(())
}

fn start(dir: &Path) -> TestResult<DrawbridgeServer> {
    let bin = drawbridge_tests::bins::drawbridge_server()?;
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(bin, "tls-e2e", NatsMode::Embedded(nats_port))?;
    let p = |n: &str| dir.join(n).display().to_string();
    let conf = dir.join("server.yaml");
    std::fs::write(
        &conf,
        format!(
            "tls:\n  cert: {}\n  key: {}\n  client.auth.enabled: true\n  client.auth.ca: {}\n  \
             client.authz.enabled: true\n  client.authz.model: {}\n  client.authz.policy: {}\n",
            p("server.pem"),
            p("server-key.pem"),
            p("ca.pem"),
            p("model.conf"),
            p("policy.csv")
        ),
    )?;
    spec.args = vec!["--config".into(), conf.display().to_string()];
    Ok(DrawbridgeServer::start(&spec)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_and_cli_over_mutual_tls() -> TestResult {
    let dir = tempfile::tempdir()?;
    mint(dir.path())?;
    let mut server = start(dir.path())?;
    let addr = format!("127.0.0.1:{}", server.spec.port);
    let read = |n: &str| std::fs::read(dir.path().join(n));

    // Library: CA, client certificate, and the name in the server certificate.
    let tls = TlsOptions {
        ca_pem: Some(read("ca.pem")?),
        client_identity_pem: Some((read("client1.pem")?, read("client1-key.pem")?)),
        domain: Some("localhost".into()),
    };
    let c = Client::builder([addr.clone()])
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(5))
        .tls(tls.clone())
        .connect()
        .await?;
    c.create_stream("tls-lib", "tls-lib", StreamOptions::default())
        .await?;
    let ack = c
        .publish("tls-lib", PublishMessage::new("secret"))
        .await?
        .ok_or("no ack")?;
    assert_eq!(ack.offset, 0);

    // Without a client certificate the server refuses the connection.
    let no_cert = TlsOptions {
        client_identity_pem: None,
        ..tls
    };
    let r = Client::builder([addr.clone()])
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(3))
        .tls(no_cert)
        .connect()
        .await;
    assert!(r.is_err(), "connected without a client certificate");

    // CLI: --tls-ca, --tls-cert, --tls-key (and --tls-domain for the certificate's name).
    let p = |n: &str| dir.path().join(n).display().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(CLI)
            .args(["--addr", &addr, "--timeout", "5s"])
            .args(["--tls-ca", &p("ca.pem")])
            .args(["--tls-cert", &p("client1.pem")])
            .args(["--tls-key", &p("client1-key.pem")])
            .args(["--tls-domain", "localhost"])
            .args(["stream", "create", "tls-cli", "--subject", "tls-cli"])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(CLI)
            .args(["--addr", &addr, "--timeout", "5s"])
            .args(["--tls-ca", &p("ca.pem")])
            .args(["--tls-domain", "localhost"])
            .args(["stream", "list"])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(
        !out.status.success(),
        "the CLI was served without a client certificate"
    );
    assert!(
        server.stop(Duration::from_secs(20)),
        "{}",
        server.log_tail()
    );
    Ok(())
}
