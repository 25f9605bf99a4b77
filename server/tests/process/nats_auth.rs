//! `nats.user` / `nats.password` against a real `nats-server --user --pass`: the right
//! credentials serve, wrong ones fail start-up with a clear error. `nats.tls.*` against a
//! `nats-server` that requires TLS and verifies client certificates (certificates minted here).

use std::process::{Command, Stdio};
use std::time::Duration;

use drawbridge_proto::api::*;
use drawbridge_tests::nats::nats_server_binary;
use drawbridge_tests::ports::{free_port, wait_for_listen};
use drawbridge_tests::process::ChildGuard;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_user_and_password() -> TestResult {
    let Some(bin) = nats_server_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed"
        );
        eprintln!("nats_user_and_password: skipped, nats-server is not installed");
        return Ok(());
    };
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", "drawbridge", "--pass", "s3cret"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _nats = ChildGuard::spawn(format!("nats-server:{port}"), &mut cmd)?;
    assert!(wait_for_listen(port, Duration::from_secs(10)));
    let url = format!("nats://127.0.0.1:{port}");

    // Right credentials (YAML keys): the server serves, publishes are acknowledged.
    let mut spec = ServerSpec::new(BIN, "natsauth1", NatsMode::External(url.clone()))?;
    spec.bootstrap = drawbridge_tests::server::Bootstrap::Seed;
    let conf = spec.data_dir.with_file_name("nats-auth.yaml");
    std::fs::write(&conf, "nats:\n  user: drawbridge\n  password: s3cret\n")?;
    spec.args = vec!["--config".into(), conf.display().to_string()];
    let mut s = DrawbridgeServer::start(&spec)?;
    let mut c = client(&s).await?;
    create(&mut c, "auth", "auth").await?;
    let ack = c
        .publish(publish_req("auth", b"hello", AckPolicy::Leader))
        .await?
        .into_inner()
        .ack;
    assert!(ack.is_some());
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());

    // Wrong password: start-up fails, and says why.
    let mut bad = ServerSpec::new(BIN, "natsauth2", NatsMode::External(url))?;
    bad.bootstrap = drawbridge_tests::server::Bootstrap::Seed;
    let conf = bad.data_dir.with_file_name("nats-bad.yaml");
    std::fs::write(&conf, "nats:\n  user: drawbridge\n  password: wrong\n")?;
    bad.args = vec!["--config".into(), conf.display().to_string()];
    let mut b = DrawbridgeServer::spawn(&bad)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !b.has_exited() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a server with a wrong NATS password kept running:\n{}",
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = b.log_tail();
    assert!(
        log.to_ascii_lowercase().contains("authorization")
            || log.to_ascii_lowercase().contains("nats"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_with_client_certificate() -> TestResult {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let Some(bin) = nats_server_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed"
        );
        eprintln!("nats_tls_with_client_certificate: skipped, nats-server is not installed");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let path = |n: &str| dir.path().join(n);
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "NATS test CA");
    let ca_key = KeyPair::generate()?;
    std::fs::write(path("ca.pem"), ca_params.self_signed(&ca_key)?.pem())?;
    let ca = Issuer::new(ca_params, ca_key);
    for name in ["server", "client"] {
        let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        std::fs::write(path(&format!("{name}.pem")), p.signed_by(&key, &ca)?.pem())?;
        std::fs::write(path(&format!("{name}-key.pem")), key.serialize_pem())?;
    }
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "--tlsverify"])
        .arg("--tlscert")
        .arg(path("server.pem"))
        .arg("--tlskey")
        .arg(path("server-key.pem"))
        .arg("--tlscacert")
        .arg(path("ca.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _nats = ChildGuard::spawn(format!("nats-server:{port}"), &mut cmd)?;
    assert!(wait_for_listen(port, Duration::from_secs(10)));

    let mut spec = ServerSpec::new(
        BIN,
        "natstls1",
        NatsMode::External(format!("nats://127.0.0.1:{port}")),
    )?;
    spec.bootstrap = drawbridge_tests::server::Bootstrap::Seed;
    let conf = spec.data_dir.with_file_name("nats-tls.yaml");
    std::fs::write(
        &conf,
        format!(
            "nats:\n  tls.ca: {}\n  tls.cert: {}\n  tls.key: {}\n",
            path("ca.pem").display(),
            path("client.pem").display(),
            path("client-key.pem").display()
        ),
    )?;
    spec.args = vec!["--config".into(), conf.display().to_string()];
    let mut s = DrawbridgeServer::start(&spec)?;
    let mut c = client(&s).await?;
    create(&mut c, "tls", "tls").await?;
    let ack = c
        .publish(publish_req("tls", b"over TLS", AckPolicy::Leader))
        .await?
        .into_inner()
        .ack;
    assert!(ack.is_some());
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}
