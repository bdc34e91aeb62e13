//! The api binary's health endpoints on its metrics listener: `/healthz`
//! answers 200 whatever the broker does, `/readyz` follows the broker link
//! (cut and restored by a fault proxy), and the metrics describe
//! themselves from the start.

use crate::{API, ONE_AT_A_TIME, api_process, connect};
use likes_service::telemetry::health::Probe;
use likes_testkit::{
    TestEnv, assert_started_metrics, eventually, free_port, probe, process::ServiceProcess,
    proxy::FaultProxy, sample, scrape, wait_for_readiness,
};
use std::{path::Path, time::Duration};

/// `likes-api --health-check ARGS`: whether it passed, and what it said.
fn health_check_binary(
    settings: &likes_common::Settings,
    args: &[&str],
) -> anyhow::Result<(bool, String)> {
    likes_testkit::process::health_check(Path::new(API), settings, args)
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_broker_link_while_healthz_and_the_health_check_stay_ok()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new();
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let (api, _client, settings) =
        api_process(&env, env.settings_with_broker_at(proxy.addr()), true).await?;
    let metrics = settings.api.metrics_listen.clone();

    let answer = wait_for_readiness(&metrics, true, Duration::from_secs(20)).await?;
    assert_eq!(answer.text, "ready");
    assert_eq!(answer.process_id, Some(api.pid()));
    assert_eq!(answer.grpc_listen, Some(settings.api.listen.to_string()));
    let live = probe(&metrics, Probe::Live).await?;
    assert!(live.ok, "{live:?}");
    assert_eq!(live.text, "live");
    assert_eq!(live.process_id, Some(api.pid()));
    likes_api::readiness_check(&settings).await?;

    // What a scrape right after the start shows.
    let body = scrape(&metrics).await?;
    assert_started_metrics(&body, likes_service::telemetry::catalog::Role::Api);
    for process_metric in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
    ] {
        let value = sample(&body, process_metric, None);
        assert!(value.is_some_and(|v| v >= 0.0), "{process_metric}: {body}");
        assert!(
            body.contains(&format!("# HELP {process_metric} ")),
            "{body}"
        );
    }
    assert!(
        body.contains("# HELP likes_amqp_connected "),
        "described: {body}"
    );

    // Broker gone: not ready, with the reason, and still live.
    proxy.cut();
    let answer = wait_for_readiness(&metrics, false, Duration::from_secs(20)).await?;
    assert!(
        answer.text.contains("not connected to RabbitMQ"),
        "{answer:?}"
    );
    let live = probe(&metrics, Probe::Live).await?;
    assert!(live.ok, "live while the broker is away: {live:?}");
    let (passed, said) = health_check_binary(&settings, &[])?;
    assert!(
        passed,
        "--health-check failed while the broker was away: {said}"
    );
    let error = likes_api::readiness_check(&settings)
        .await
        .expect_err("not ready without the broker");
    assert!(error.to_string().contains("RabbitMQ"), "{error:#}");
    let (ready_passed, said) = health_check_binary(&settings, &["--ready"])?;
    assert!(
        !ready_passed,
        "--health-check --ready passed without the broker"
    );
    assert!(said.contains("RabbitMQ"), "{said}");
    let body = scrape(&metrics).await?;
    assert_eq!(
        sample(&body, "likes_amqp_connected", Some("role=\"api\"")),
        Some(0.0),
        "{body}"
    );

    // Broker back: ready again, and Like works.
    proxy.restore();
    wait_for_readiness(&metrics, true, Duration::from_secs(30)).await?;
    let mut client = connect(settings.api.listen.port()).await?;
    crate::like(&mut client, "after-the-cut").await?;
    let (passed, said) = health_check_binary(&settings, &[])?;
    assert!(passed, "{said}");
    let (passed, said) = health_check_binary(&settings, &["--ready"])?;
    assert!(passed, "ready again: {said}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_check_fails_on_an_endpoint_of_another_api() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    env.settings.api.listen = format!("127.0.0.1:{}", free_port()?).parse()?;
    env.settings.api.metrics_listen = format!("127.0.0.1:{}", free_port()?);
    env.db().await?;
    let _api = ServiceProcess::spawn(Path::new(API), &env.settings)?;
    let metrics = env.settings.api.metrics_listen.clone();
    eventually(Duration::from_secs(20), "/healthz to answer", || {
        let metrics = metrics.clone();
        async move { Ok(probe(&metrics, Probe::Live).await.ok()) }
    })
    .await?;
    assert!(health_check_binary(&env.settings, &[])?.0, "its own check");

    // An api on another gRPC port whose check would read this endpoint.
    let mut other = env.settings.clone();
    other.api.listen = format!("127.0.0.1:{}", free_port()?).parse()?;
    let (passed, said) = health_check_binary(&other, &[])?;
    assert!(!passed, "passed on another api's endpoint");
    assert!(said.contains("belongs to the api serving"), "{said}");
    Ok(())
}
