//! The worker binary's health endpoints on its metrics listener: `/healthz`
//! answers 200 whatever the broker does, `/readyz` says whether it consumes
//! (the broker link cut and restored by a fault proxy), and the metrics
//! describe themselves from the start.

use crate::WORKER;
use likes_service::telemetry::health::Probe;
use likes_testkit::{
    TestEnv, assert_started_metrics, free_port, probe, process::ServiceProcess, proxy::FaultProxy,
    sample, scrape, wait_for_readiness,
};
use std::{path::Path, time::Duration};

#[tokio::test(flavor = "multi_thread")]
async fn readyz_says_whether_the_worker_consumes_while_healthz_stays_ok() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.worker.metrics_listen = format!("127.0.0.1:{}", free_port()?);
    env.db().await?;
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let settings = env.settings_with_broker_at(proxy.addr());
    let worker = ServiceProcess::spawn(Path::new(WORKER), &settings)?;
    let pid = Some(worker.pid());
    let metrics = settings.worker.metrics_listen.clone();

    let answer = wait_for_readiness(&metrics, true, Duration::from_secs(20)).await?;
    assert_eq!(answer.text, "ready");
    assert_eq!(answer.process_id, pid);
    let consumers = {
        let (connection, channel) = env.amqp().await?;
        let consumers = likes_queue::queue_consumers(&channel, &env.settings.amqp.queue).await?;
        let _ = connection.close(200, "done".into()).await;
        consumers
    };
    assert_eq!(consumers, 1, "ready means consuming");
    likes_worker::health_check(&settings, pid).await?;
    likes_worker::readiness_check(&settings, pid).await?;

    let body = scrape(&metrics).await?;
    assert_started_metrics(&body, likes_service::telemetry::catalog::Role::Worker);
    assert!(sample(&body, "process_open_fds", None).is_some(), "{body}");

    // Broker gone: not ready, with the reason, and still live.
    proxy.cut();
    let answer = wait_for_readiness(&metrics, false, Duration::from_secs(20)).await?;
    assert!(answer.text.contains("RabbitMQ"), "{answer:?}");
    let live = probe(&metrics, Probe::Live).await?;
    assert!(live.ok, "live while the broker is away: {live:?}");
    let (passed, said) = likes_testkit::process::health_check(
        Path::new(WORKER),
        &settings,
        &["--pid", &worker.pid().to_string()],
    )?;
    assert!(
        passed,
        "--health-check failed while the broker was away: {said}"
    );
    let error = likes_worker::readiness_check(&settings, pid)
        .await
        .expect_err("not ready without the broker");
    assert!(error.to_string().contains("RabbitMQ"), "{error:#}");
    let body = scrape(&metrics).await?;
    assert_eq!(
        sample(&body, "likes_amqp_connected", Some("role=\"worker\"")),
        Some(0.0),
        "{body}"
    );

    // Broker back: consuming and ready again.
    proxy.restore();
    wait_for_readiness(&metrics, true, Duration::from_secs(30)).await?;
    likes_worker::readiness_check(&settings, pid).await?;
    // Another process's id is refused, whatever the endpoint answers.
    let error = likes_worker::health_check(&settings, Some(worker.pid() + 1))
        .await
        .expect_err("a check of another process");
    assert!(
        error.to_string().contains("belongs to process"),
        "{error:#}"
    );
    Ok(())
}
