//! TLS, mutual TLS and authorization on the client API, with certificates minted here
//! (rcgen): a CA, a server certificate for localhost/127.0.0.1, client certificates whose
//! common names are the identities the ACL policy names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drawbridge_proto::admin::admin_client::AdminClient;
use drawbridge_proto::admin::ReplicaChecksumRequest;
use drawbridge_proto::api::api_client::ApiClient;
use drawbridge_proto::api::*;
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

use crate::common::{create_req, publish_req, TestResult, BIN};

/// PEM files of one test's PKI.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Pki {
    fn new() -> TestResult<(Pki, Issuer<'static, KeyPair>)> {
        let dir = tempfile::tempdir()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Drawbridge test CA");
        let key = KeyPair::generate()?;
        let ca = params.self_signed(&key)?;
        let ca_pem = ca.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem)?;
        Ok((Pki { dir, ca_pem }, Issuer::new(params, key)))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Mints `<name>.pem` / `<name>-key.pem` with common name `cn`; returns (cert, key) PEM.
    fn mint(
        &self,
        ca: &Issuer<'static, KeyPair>,
        name: &str,
        cn: &str,
    ) -> TestResult<(String, String)> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, ca)?;
        let (cert, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.path(&format!("{name}.pem")), &cert)?;
        std::fs::write(self.path(&format!("{name}-key.pem")), &key)?;
        Ok((cert, key))
    }
}

const MODEL: &str = "\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
";

fn start_with_config(yaml: &str, dir: &Path) -> TestResult<DrawbridgeServer> {
    let nats_port = drawbridge_tests::ports::free_port()?;
    let mut spec = ServerSpec::new(BIN, "tls1", NatsMode::Embedded(nats_port))?;
    let conf = dir.join("server.yaml");
    std::fs::write(&conf, yaml)?;
    spec.args = vec!["--config".into(), conf.display().to_string()];
    Ok(DrawbridgeServer::start(&spec)?)
}

/// A TLS client trusting the test CA, with an optional client certificate.
async fn tls_client(
    s: &DrawbridgeServer,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<ApiClient<Channel>, tonic::transport::Error> {
    Ok(ApiClient::new(tls_channel(s, ca_pem, identity).await?))
}

/// A TLS channel trusting the test CA, with an optional client certificate.
async fn tls_channel(
    s: &DrawbridgeServer,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", s.spec.port))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tls_clients_and_refuses_plaintext() -> TestResult {
    let (pki, ca) = Pki::new()?;
    pki.mint(&ca, "server", "localhost")?;
    let yaml = format!(
        "tls:\n  cert: {}\n  key: {}\n",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display()
    );
    let mut s = start_with_config(&yaml, pki.dir.path())?;

    let mut c = tls_client(&s, &pki.ca_pem, None).await?;
    c.fetch_metadata(FetchMetadataRequest::default()).await?;
    c.create_stream(create_req("tls-foo", "tls.foo")).await?;

    // A plaintext HTTP/2 client gets no answer from a TLS port.
    let plain = Channel::from_shared(s.endpoint())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = ApiClient::new(ch)
            .fetch_metadata(FetchMetadataRequest::default())
            .await;
        assert!(r.is_err(), "plaintext call succeeded on a TLS port");
    }
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identity_authz_and_sighup_reload() -> TestResult {
    let (pki, ca) = Pki::new()?;
    pki.mint(&ca, "server", "localhost")?;
    let client1 = pki.mint(&ca, "client1", "client1")?;
    let client2 = pki.mint(&ca, "client2", "client2")?;
    std::fs::write(pki.path("model.conf"), MODEL)?;
    std::fs::write(
        pki.path("policy.csv"),
        "p, client1, *, FetchMetadata\n\
         p, client1, foo, CreateStream\n\
         p, client1, foo, Publish\n\
         p, client1, foo, PublishAsync\n\
         p, client1, foo, ReplicaChecksum\n\
         p, client2, *, FetchMetadata\n",
    )?;
    let p = |n: &str| pki.path(n).display().to_string();
    let yaml = format!(
        "tls:\n  cert: {}\n  key: {}\n  client.auth.enabled: true\n  client.auth.ca: {}\n  \
         client.authz.enabled: true\n  client.authz.model: {}\n  client.authz.policy: {}\n",
        p("server.pem"),
        p("server-key.pem"),
        p("ca.pem"),
        p("model.conf"),
        p("policy.csv"),
    );
    let mut s = start_with_config(&yaml, pki.dir.path())?;

    // No client certificate: the handshake fails, so no call succeeds.
    match tls_client(&s, &pki.ca_pem, None).await {
        Err(_) => {}
        Ok(mut c) => {
            let r = c.fetch_metadata(FetchMetadataRequest::default()).await;
            assert!(r.is_err(), "a client without a certificate was served");
        }
    }

    let mut c1 = tls_client(&s, &pki.ca_pem, Some(&client1)).await?;
    let mut c2 = tls_client(&s, &pki.ca_pem, Some(&client2)).await?;
    c1.fetch_metadata(FetchMetadataRequest::default()).await?;
    c2.fetch_metadata(FetchMetadataRequest::default()).await?;
    c1.create_stream(create_req("foo", "foo")).await?;
    let e = c1
        .create_stream(create_req("bar", "bar"))
        .await
        .expect_err("client1 may not create bar");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("CreateStream"), "{e:?}");
    let e = c2
        .create_stream(create_req("foo2", "foo2"))
        .await
        .expect_err("client2 may not create streams");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c2
        .publish(publish_req("foo", b"x", AckPolicy::Leader))
        .await
        .expect_err("client2 may not publish");
    assert_eq!(e.code(), Code::PermissionDenied);
    let r = c1
        .publish(publish_req("foo", b"x", AckPolicy::Leader))
        .await?;
    assert!(r.into_inner().ack.is_some());

    // The admin service is behind the same ACLs: client1 may checksum foo, client2 may not.
    let req = ReplicaChecksumRequest {
        stream: "foo".into(),
        partition: 0,
        start_offset: 0,
        end_offset: -1,
    };
    let mut a1 = AdminClient::new(tls_channel(&s, &pki.ca_pem, Some(&client1)).await?);
    let mut a2 = AdminClient::new(tls_channel(&s, &pki.ca_pem, Some(&client2)).await?);
    a1.replica_checksum(req.clone()).await?;
    let e = a2
        .replica_checksum(req)
        .await
        .expect_err("client2 may not call ReplicaChecksum");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // PublishAsync: each message is checked; a denied one gets PERMISSION_DENIED.
    let msgs = vec![
        PublishRequest {
            stream: "foo".into(),
            value: bytes::Bytes::from_static(b"ok"),
            correlation_id: "a".into(),
            ack_policy: AckPolicy::Leader as i32,
            expected_offset: -1,
            ..Default::default()
        },
        PublishRequest {
            stream: "other".into(),
            value: bytes::Bytes::from_static(b"no"),
            correlation_id: "b".into(),
            ack_policy: AckPolicy::Leader as i32,
            expected_offset: -1,
            ..Default::default()
        },
    ];
    let mut out = c1
        .publish_async(futures::stream::iter(msgs))
        .await?
        .into_inner();
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(10), out.message())
            .await??
            .ok_or("PublishAsync ended early")?;
        seen.insert(r.correlation_id.clone(), r);
    }
    assert!(seen["a"].async_error.is_none(), "{:?}", seen["a"]);
    let err = seen["b"].async_error.as_ref().ok_or("b was not denied")?;
    assert_eq!(err.code, publish_async_error::Code::PermissionDenied as i32);

    // Reload on SIGHUP: client1 may now create bar.
    std::fs::write(
        pki.path("policy.csv"),
        "p, client1, *, FetchMetadata\np, client1, bar, CreateStream\n",
    )?;
    assert!(s.signal(libc::SIGHUP));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match c1.create_stream(create_req("bar", "bar")).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::PermissionDenied => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "SIGHUP did not reload the policy; log:\n{}",
                    s.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // ... and no longer publish to foo.
    let e = c1
        .publish(publish_req("foo", b"x", AckPolicy::Leader))
        .await
        .expect_err("the reloaded policy denies Publish on foo");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(s.stop(Duration::from_secs(20)), "{}", s.log_tail());
    Ok(())
}
