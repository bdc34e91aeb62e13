//! What a caller whose deadline passes while the broker holds its Like
//! sees: DEADLINE_EXCEEDED, never CANCELLED (tonic's own timer's answer).

use crate::ONE_AT_A_TIME;
use likes_proto::pb::LikeRequest;
use likes_testkit::{TestEnv, eventually, http2, proxy::FaultProxy};
use prost::Message;
use std::{net::SocketAddr, time::Duration};
use tonic::Code;

/// 40 Likes at once on one connection, each with a 300 ms deadline
/// (`grpc-timeout: 300m`): the gRPC codes the server answered. Raw HTTP/2,
/// because a tonic client enforces the deadline itself too and, when its
/// own timer fires first, reports CANCELLED without waiting for the
/// server's answer: this test is about what the server says.
async fn forty_likes_with_a_short_deadline(addr: SocketAddr) -> anyhow::Result<Vec<i32>> {
    let (client, _driver) = http2::connect(addr).await?;
    let calls = (0..40).map(|i| {
        let mut client = client.clone();
        async move {
            let mut request =
                http2::request(addr, "/likes.v1.LikeService/Like", Some("application/grpc"));
            request
                .headers_mut()
                .insert("grpc-timeout", http::HeaderValue::from_static("300m"));
            let body = LikeRequest {
                post_id: "p".into(),
                user_id: format!("deadline-{i}"),
            }
            .encode_to_vec();
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                http2::call(&mut client, request, http2::message(&body)),
            )
            .await??;
            anyhow::Ok(answer.grpc_status.unwrap_or(-1))
        }
    });
    futures_util::future::try_join_all(calls).await
}

#[tokio::test(flavor = "multi_thread")]
async fn while_the_broker_holds_confirms_every_passed_deadline_is_deadline_exceeded_and_a_shorter_confirm_timeout_unavailable()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    // The broker link runs through a proxy that can hold every byte: no
    // confirm comes back, and the broker does not say why (a blocked
    // connection would be answered at once instead).
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    env.settings = env.settings_with_broker_at(proxy.addr());
    env.settings.api.confirm_timeout_ms = 5_000;
    let waits_for_the_deadline = env.spawn_api().await?;
    let mut settings = env.settings.clone();
    settings.api.confirm_timeout_ms = 100;
    let confirm_times_out_first = likes_testkit::RunningApi::spawn_with(&settings).await?;
    for api in [&waits_for_the_deadline, &confirm_times_out_first] {
        let mut client = api.client.clone();
        crate::like(&mut client, "warm").await?;
    }

    proxy.stall();
    let started = tokio::time::Instant::now();
    let deadline_codes = forty_likes_with_a_short_deadline(waits_for_the_deadline.addr).await;
    let waited = started.elapsed();
    let confirm_codes = forty_likes_with_a_short_deadline(confirm_times_out_first.addr).await;
    proxy.restore();
    let (deadline_codes, confirm_codes) = (deadline_codes?, confirm_codes?);

    assert!(
        deadline_codes
            .iter()
            .all(|c| *c == Code::DeadlineExceeded as i32),
        "every Like past its deadline must be DEADLINE_EXCEEDED: {deadline_codes:?}"
    );
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
    assert!(
        confirm_codes.iter().all(|c| *c == Code::Unavailable as i32),
        "a confirm timeout shorter than the deadline is UNAVAILABLE: {confirm_codes:?}"
    );

    let client = waits_for_the_deadline.client.clone();
    eventually(
        Duration::from_secs(20),
        "Like to succeed after the stall",
        || {
            let mut client = client.clone();
            async move { Ok(crate::like(&mut client, "after").await.ok()) }
        },
    )
    .await?;
    Ok(())
}
