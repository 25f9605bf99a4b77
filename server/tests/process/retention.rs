//! Retention wired to the stream configuration: small segments, a message limit and a short
//! cleaner interval delete the oldest segments; a stream without limits keeps everything;
//! readers never see a deleted message and start at the oldest retained one.

use std::time::Duration;

use drawbridge_proto::api::{AckPolicy, NullableInt64, StartPosition};
use futures::StreamExt;

use crate::common::*;

const EACH: Duration = Duration::from_secs(10);

/// The offset of the first message a subscription from `start` delivers.
async fn first_offset(c: &mut Client, stream: &str, start: StartPosition) -> TestResult<i64> {
    let mut req = sub_req(stream, 0, start);
    req.start_offset = 0;
    let mut sub = subscribe(c, req).await?;
    let first = read_n(&mut sub, 1, EACH).await?;
    Ok(first[0].offset)
}

#[tokio::test]
async fn retention_deletes_old_segments_by_policy_only() -> TestResult {
    let (server, _) = standalone("retention")?;
    let mut c = client(&server).await?;
    let ms = |v| Some(NullableInt64 { value: v });
    let mut limited = create_req("limited", "limited");
    limited.segment_max_bytes = ms(4096);
    limited.retention_max_messages = ms(50);
    limited.cleaner_interval = ms(200);
    c.create_stream(limited).await?;
    let mut unlimited = create_req("unlimited", "unlimited");
    unlimited.segment_max_bytes = ms(4096);
    unlimited.cleaner_interval = ms(200);
    c.create_stream(unlimited).await?;

    let value = vec![b'r'; 100];
    for stream in ["limited", "unlimited"] {
        for _ in 0..200 {
            c.publish(publish_req(stream, &value, AckPolicy::Leader))
                .await?;
        }
    }

    // The cleaner runs every 200 ms: within 15 s the oldest segments of "limited" are gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let earliest = loop {
        let o = first_offset(&mut c, "limited", StartPosition::Earliest).await?;
        if o > 0 {
            break o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention deleted nothing:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Kafka's rule: never cut into the newest 50 (the log may exceed the limit by less than a
    // segment).
    assert!(
        earliest <= 150,
        "deleted into the newest 50: earliest {earliest}"
    );
    // Asking for offset 0 starts at the oldest retained message; everything after it is there,
    // in order, up to the last one.
    let mut req = sub_req("limited", 0, StartPosition::Offset);
    req.start_offset = 0;
    let mut sub = subscribe(&mut c, req).await?;
    let n = usize::try_from(200 - earliest)?;
    let got = read_n(&mut sub, n, EACH).await?;
    let offsets: Vec<i64> = got.iter().map(|m| m.offset).collect();
    let want: Vec<i64> = (earliest..200).collect();
    assert_eq!(offsets, want);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing beyond the last message"
    );

    // No limit (the server defaults keep a week): several cleaner passes delete nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        first_offset(&mut c, "unlimited", StartPosition::Earliest).await?,
        0
    );
    Ok(())
}
