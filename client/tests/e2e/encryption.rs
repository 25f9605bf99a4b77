//! Encrypted streams through the library (`StreamOptions::encryption`) and the CLI
//! (`drawbridge stream create --encrypt`): values round-trip on a server with a master key, and
//! a server without one refuses to create them with a typed error / one error line.

use drawbridge_client::{
    AckPolicy, Error, PublishMessage, StartAt, StopAt, StreamOptions, SubscribeOptions,
};
use drawbridge_tests::server::{DrawbridgeServer, NatsMode, ServerSpec};

use crate::cli::cli;
use crate::common::*;

const KEY_VAR: &str = "LIFTBRIDGE_ENCRYPTION_KEY";

fn encrypted() -> StreamOptions {
    StreamOptions {
        encryption: Some(true),
        ..StreamOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_streams_from_the_library_and_the_cli() -> TestResult {
    let bin = drawbridge_tests::bins::drawbridge_server()?;
    let mut spec = ServerSpec::new(
        bin,
        "keyed",
        NatsMode::Embedded(drawbridge_tests::ports::free_port()?),
    )?;
    spec.env.push((
        KEY_VAR.into(),
        "base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
    ));
    let server = DrawbridgeServer::start(&spec)?;
    let addr = format!("127.0.0.1:{}", server.spec.port);
    let c = client(std::slice::from_ref(&addr)).await?;

    // Library: create, publish, read back the plaintext.
    let name = unique("enc-lib");
    c.create_stream(&name, &name, encrypted()).await?;
    let sent = ["alpha", "beta", "gamma"];
    for v in sent {
        c.publish(&name, PublishMessage::new(v).ack_policy(AckPolicy::All))
            .await?;
    }
    let mut sub = c
        .subscribe(
            &name,
            SubscribeOptions {
                start: StartAt::Earliest,
                stop: StopAt::Latest,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let got = read_to_end(&mut sub, 3, EACH).await?;
    assert_eq!(values(&got), sent.map(String::from).to_vec());

    // CLI: --encrypt creates an encrypted stream; publish and subscribe see plaintext.
    let name = unique("enc-cli");
    let out = cli(&addr, &["stream", "create", &name, "--encrypt"], None)
        .await?
        .ok()?;
    assert!(out.contains(&format!("created stream {name}")), "{out}");
    cli(&addr, &["publish", &name, "secret words"], None)
        .await?
        .ok()?;
    let out = cli(
        &addr,
        &[
            "subscribe",
            &name,
            "--from",
            "earliest",
            "--to",
            "latest",
            "--format",
            "json",
        ],
        None,
    )
    .await?
    .ok()?;
    let first: serde_json::Value = serde_json::from_str(out.lines().next().ok_or("no line")?)?;
    assert_eq!(first["value"], "secret words", "{out}");

    // A server without a key: a typed error from the library, one error line from the CLI.
    let plain = shared_server();
    let pc = client(&[plain.addr()]).await?;
    let r = pc
        .create_stream("nokey", &unique("nokey"), encrypted())
        .await;
    match r {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains(KEY_VAR), "{m}"),
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    cli(
        &plain.addr(),
        &["stream", "create", &unique("nokey-cli"), "--encrypt"],
        None,
    )
    .await?
    .one_line_error(KEY_VAR);
    Ok(())
}
