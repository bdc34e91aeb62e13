//! The api as a process, and faults that touch the whole broker. Tests here
//! run one at a time (a shared lock): the memory alarm blocks every
//! publisher on the machine's RabbitMQ for a few seconds, so it lives in this
//! binary, apart from the parallel end-to-end tests; the floods measure one
//! process's memory, and the default metrics ports are the machine's.

mod blocked;
mod circuit;
mod cli;
mod connections;
mod deadlines;
mod floods;
mod health;
mod otel_env;
mod processes;
mod slow_watchers;

use likes_proto::pb::{LikeRequest, like_service_client::LikeServiceClient};
use likes_testkit::{TestEnv, eventually, process::ServiceProcess, proxy::FaultProxy};
use std::{path::Path, time::Duration};
use tokio::sync::Mutex;

const API: &str = env!("CARGO_BIN_EXE_likes-api");
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Starts the api binary with `env`'s settings on a free port and returns
/// it with a client, once it answers.
async fn spawn_api_process(
    env: &mut TestEnv,
) -> anyhow::Result<(ServiceProcess, LikeServiceClient<tonic::transport::Channel>)> {
    let (api, client, settings) = api_process(env, env.settings.clone(), false).await?;
    env.settings = settings;
    Ok((api, client))
}

/// Starts the api binary with `settings` (of `env`'s database), on a free
/// port and, with `metrics`, with its metrics endpoint on another; once it
/// answers: the process, a client, and the settings it runs with.
async fn api_process(
    env: &TestEnv,
    mut settings: likes_common::Settings,
    metrics: bool,
) -> anyhow::Result<(
    ServiceProcess,
    LikeServiceClient<tonic::transport::Channel>,
    likes_common::Settings,
)> {
    let port = likes_testkit::free_port()?;
    settings.api.listen = format!("127.0.0.1:{port}").parse()?;
    if metrics {
        settings.api.metrics_listen = format!("127.0.0.1:{}", likes_testkit::free_port()?);
    }
    env.db().await?;
    let api = ServiceProcess::spawn(Path::new(API), &settings)?;
    let client = connect(port).await?;
    Ok((api, client, settings))
}

/// A client of the api on `port`, once it listens.
async fn connect(port: u16) -> anyhow::Result<LikeServiceClient<tonic::transport::Channel>> {
    let endpoint = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(20), "the api to listen", || {
        let endpoint = endpoint.clone();
        async move { Ok(LikeServiceClient::connect(endpoint).await.ok()) }
    })
    .await
}

async fn like(
    client: &mut LikeServiceClient<tonic::transport::Channel>,
    user: &str,
) -> Result<(), tonic::Status> {
    client
        .like(LikeRequest {
            post_id: "p".into(),
            user_id: user.into(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_calls_in_flight_finish_with_their_confirms_and_exits_zero()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new();
    // The broker link runs through a proxy so a confirm can be held back.
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let (mut api, mut client, settings) =
        api_process(&env, env.settings_with_broker_at(proxy.addr()), false).await?;
    let endpoint = format!("http://{}", settings.api.listen);
    like(&mut client, "warm").await?;

    proxy.stall();
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { like(&mut client, "in-flight").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = tokio::spawn(async move {
        let status = api.terminate(Duration::from_secs(10)).await;
        (status, api)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New calls are no longer taken while the old one waits for its confirm.
    let mut late = LikeServiceClient::connect(endpoint.clone()).await;
    if let Ok(client) = late.as_mut() {
        assert!(
            like(client, "late").await.is_err(),
            "a call after SIGTERM was accepted"
        );
    }
    proxy.restore();

    in_flight
        .await?
        .map_err(|s| anyhow::anyhow!("in-flight call failed: {s:?}"))?;
    let (status, _api) = terminated.await?;
    let status = status?;
    assert!(status.success(), "api exited with {status}");
    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        2,
        "warm and in-flight"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn both_binaries_serve_prometheus_metrics_that_match_what_was_sent() -> anyhow::Result<()> {
    use likes_testkit::{free_port, sample, scrape};
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    let api_port = free_port()?;
    env.settings.api.listen = format!("127.0.0.1:{api_port}").parse()?;
    env.settings.api.metrics_listen = format!("127.0.0.1:{}", free_port()?);
    env.settings.worker.metrics_listen = format!("127.0.0.1:{}", free_port()?);
    env.db().await?;
    let worker_binary = Path::new(API).with_file_name("likes-worker");
    let _api = ServiceProcess::spawn(Path::new(API), &env.settings)?;
    let _worker = ServiceProcess::spawn(&worker_binary, &env.settings)?;

    let endpoint = format!("http://127.0.0.1:{api_port}");
    let mut client = eventually(Duration::from_secs(20), "the api to listen", || {
        let endpoint = endpoint.clone();
        async move { Ok(LikeServiceClient::connect(endpoint).await.ok()) }
    })
    .await?;
    for i in 0..200 {
        like(&mut client, &format!("u{i}")).await?;
    }
    for _ in 0..5 {
        assert!(like(&mut client, "").await.is_err());
    }

    let api_metrics = &env.settings.api.metrics_listen;
    let worker_metrics = &env.settings.worker.metrics_listen;
    let body = eventually(
        Duration::from_secs(20),
        "the worker to report 200 events",
        || async {
            let body = scrape(worker_metrics).await?;
            Ok((sample(&body, "likes_events_written_total", None) == Some(200.0)).then_some(body))
        },
    )
    .await?;
    assert!(
        sample(&body, "likes_batches_total", None).unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    assert!(
        sample(&body, "likes_batches_acked_total", None).unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, "likes_rows_written_total", None),
        Some(200.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "likes_amqp_connected", Some("role=\"worker\"")),
        Some(1.0),
        "{body}"
    );
    assert!(body.contains("likes_batch_events_bucket"), "{body}");
    assert!(body.contains("likes_batch_flush_seconds_bucket"), "{body}");

    // The binaries' own health checks, as a container runtime runs them.
    for binary in [Path::new(API), worker_binary.as_path()] {
        let status = likes_testkit::process::command(binary, &env.settings)
            .arg("--health-check")
            .status()?;
        assert!(
            status.success(),
            "{} --health-check failed",
            binary.display()
        );
    }

    let body = scrape(api_metrics).await?;
    let ok = sample(
        &body,
        "likes_rpc_requests_total",
        Some("method=\"Like\",code=\"OK\""),
    );
    assert_eq!(ok, Some(200.0), "{body}");
    let invalid = sample(
        &body,
        "likes_rpc_requests_total",
        Some("method=\"Like\",code=\"INVALID_ARGUMENT\""),
    );
    assert_eq!(invalid, Some(5.0), "{body}");
    assert!(
        body.contains("likes_publish_confirm_seconds_bucket"),
        "{body}"
    );
    assert!(body.contains("likes_db_pool_connections"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_broker_holds_every_confirm_exits_within_the_confirm_timeout_and_a_second()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    env.settings.api.confirm_timeout_ms = 1_000;
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let (mut api, client, _) =
        api_process(&env, env.settings_with_broker_at(proxy.addr()), false).await?;
    like(&mut client.clone(), "warm").await?;

    // 64 callers keep calling while nothing is confirmed; SIGTERM once
    // messages and waiting events have piled up behind the stall.
    proxy.stall();
    let load = tokio::spawn({
        let client = client.clone();
        async move {
            likes_testkit::load::timed_likes(
                &client,
                "stalled",
                "p",
                64,
                Duration::from_millis(1_500),
                Duration::from_secs(10),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = tokio::time::Instant::now();
    let status = api.terminate(Duration::from_secs(10)).await?;
    let took = started.elapsed();
    assert!(status.success(), "api exited with {status}");
    // The calls in flight, each at most the confirm timeout, then closing
    // the stalled link, at most a second.
    assert!(
        took < Duration::from_millis(2_500),
        "exited {took:?} after SIGTERM"
    );
    for answer in load.await? {
        assert!(answer.answer.is_err(), "nothing confirmed, nothing OK");
        assert!(answer.took <= Duration::from_millis(1_500), "{answer:?}");
    }
    proxy.restore();
    Ok(())
}
