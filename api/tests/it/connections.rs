//! Client connections in a fleet: past `api.max_connection_age_ms` a
//! connection gets GOAWAY and a gRPC client carrying on through it fails no
//! call (it opens a new connection, which a load balancer may send to
//! another pod); a stream still open after the grace is closed; a client
//! that stops answering keepalive pings is disconnected and its places
//! freed.

use crate::api_process;
use likes_proto::pb::{
    LikeRequest, WatchLikeCountsRequest, like_service_client::LikeServiceClient,
};
use likes_testkit::{TestEnv, eventually, process::ServiceProcess, proxy::FaultProxy};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// The api with connections aged 1 s (and 1 s of grace), its worker, and a
/// proxy in front of it that counts the connections clients open.
async fn aged_api(
    env: &mut TestEnv,
) -> anyhow::Result<(ServiceProcess, likes_testkit::RunningWorker, FaultProxy)> {
    env.settings.api.max_connection_age_ms = 1_000;
    env.settings.api.max_connection_age_grace_ms = 1_000;
    let (api, _, settings) = api_process(env, env.settings.clone(), false).await?;
    let worker = env.spawn_worker().await?;
    let proxy = FaultProxy::start(settings.api.listen).await?;
    Ok((api, worker, proxy))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs grpcio in the virtualenv of `make tools`; `make test` runs it"]
async fn past_its_age_a_connection_is_replaced_without_a_failed_call() -> anyhow::Result<()> {
    let python = likes_testkit::tools::require("python");
    let mut env = TestEnv::new();
    let (_api, _worker, proxy) = aged_api(&mut env).await?;
    // grpcio, as gRPC's own clients do, moves to a new connection on
    // GOAWAY and sends again a call the old one refused unprocessed.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/goaway_client.py");
    let output = tokio::process::Command::new(python)
        .args([script, &proxy.addr().to_string(), "4.5", "aged"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await??;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let connections = proxy.connections();
    eprintln!("grpcio: {answer} over {connections} connections");
    assert_eq!(
        answer["failed"],
        serde_json::json!([]),
        "calls failed across GOAWAY"
    );
    assert!(
        connections >= 3,
        "a connection every age: {connections} over 4.5 s"
    );
    let sent = answer["sent"].as_i64().expect("a count");
    env.wait_for_count("aged", sent, Duration::from_secs(30))
        .await
}

/// Whether tonic failed `status` because its connection was going away
/// before the call was processed: CANCELLED as the connection closed, or
/// the stream refused by GOAWAY (h2 reports the GOAWAY, NO_ERROR).
fn refused_unprocessed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    let mut go_away = false;
    while let Some(error) = source {
        go_away |= error
            .downcast_ref::<h2::Error>()
            .is_some_and(|e| e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR));
        source = error.source();
    }
    go_away || (status.code() == Code::Cancelled && status.message() == "operation was canceled")
}

/// tonic has no transparent retry: a call sent as its connection closes
/// after GOAWAY fails (CANCELLED "connection closed", or INTERNAL naming
/// the GOAWAY) without reaching the api, and its client must send it again
/// (docs/api.md says so). This
/// measures that, and that sending those again loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_tonic_client_resends_only_calls_its_closing_connection_cancelled() -> anyhow::Result<()>
{
    let mut env = TestEnv::new();
    let (_api, _worker, proxy) = aged_api(&mut env).await?;
    let client = LikeServiceClient::connect(format!("http://{}", proxy.addr())).await?;
    let until = Instant::now() + Duration::from_millis(4_500);
    let callers = (0..4).map(|caller| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let (mut sent, mut resent) = (0u64, 0u64);
            while Instant::now() < until {
                let request = || LikeRequest {
                    post_id: "aged".into(),
                    user_id: format!("u{caller}-{sent}"),
                };
                let mut answer = client.like(request()).await;
                while let Err(status) = &answer {
                    anyhow::ensure!(
                        refused_unprocessed(status),
                        "only calls a closing connection refused: {status:?}"
                    );
                    resent += 1;
                    answer = client.like(request()).await;
                }
                sent += 1;
            }
            anyhow::Ok((sent, resent))
        })
    });
    let (mut sent, mut resent) = (0, 0);
    for caller in futures_util::future::join_all(callers).await {
        let (n, r) = caller??;
        (sent, resent) = (sent + n, resent + r);
    }
    let connections = proxy.connections();
    eprintln!("tonic: {sent} Likes over {connections} connections, {resent} sent again");
    assert!(connections >= 3, "{connections} connections over 4.5 s");
    assert!(
        resent <= 4 * connections,
        "at most one call per caller per GOAWAY: {resent}"
    );
    env.wait_for_count("aged", i64::try_from(sent)?, Duration::from_secs(30))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_still_open_after_the_grace_is_closed() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.max_connection_age_ms = 1_000;
    env.settings.api.max_connection_age_grace_ms = 1_000;
    let (_api, mut client, _) = api_process(&env, env.settings.clone(), false).await?;
    let opened = Instant::now();
    let mut stream = client
        .watch_like_counts(WatchLikeCountsRequest {
            post_ids: vec!["watched".into()],
        })
        .await?
        .into_inner();
    let first = stream.message().await?.expect("the current count");
    assert_eq!(first.count, 0);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message()).await?;
    let lived = opened.elapsed();
    let status = end.expect_err("the stream is cut, not ended by the server");
    assert!(
        lived >= Duration::from_millis(1_800) && lived < Duration::from_secs(5),
        "the stream lived {lived:?}, its connection's age and grace are 2 s"
    );
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_answering_pings_is_disconnected() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.keepalive_interval_ms = 300;
    env.settings.api.keepalive_timeout_ms = 300;
    env.settings.api.max_watch_streams = 1;
    let (_api, mut direct, settings) = api_process(&env, env.settings.clone(), false).await?;
    let proxy = FaultProxy::start(settings.api.listen).await?;
    let mut silent = LikeServiceClient::connect(format!("http://{}", proxy.addr())).await?;
    let watch = || WatchLikeCountsRequest {
        post_ids: vec!["p".into()],
    };
    let mut held = silent.watch_like_counts(watch()).await?.into_inner();
    held.message().await?.expect("the current count");
    let refused = direct
        .watch_like_counts(watch())
        .await
        .expect_err("the one place is taken");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // The silent client's connection stays open but nothing crosses it.
    proxy.stall();
    let stalled = Instant::now();
    eventually(Duration::from_secs(10), "the place freed", || {
        let mut direct = direct.clone();
        async move { Ok(direct.watch_like_counts(watch()).await.ok().map(|_| ())) }
    })
    .await?;
    let freed = stalled.elapsed();
    assert!(
        freed >= Duration::from_millis(300) && freed < Duration::from_secs(5),
        "freed after {freed:?}"
    );
    Ok(())
}
