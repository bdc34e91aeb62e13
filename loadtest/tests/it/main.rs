//! The load generator end to end: the real api and worker in-process (each
//! test on its own database and queues), small workloads, the report checked
//! for sense and the verification required to pass.

use clap::Parser;
use likes_loadtest::{Options, ProgressView};

fn options(args: &[&str]) -> Options {
    Options::parse_from(std::iter::once("likes-loadtest").chain(args.iter().copied()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_celebrity_workload_is_persisted_exactly_and_reported() -> anyhow::Result<()> {
    let options = options(&[
        "--likes",
        "2000",
        "--concurrency",
        "16",
        "--posts",
        "50",
        "--hot-fraction",
        "0.9",
        "--duplicate-fraction",
        "0.1",
        "--unlike-fraction",
        "0.05",
        "--seed",
        "42",
        "--drain-timeout",
        "60",
    ]);
    let report = likes_loadtest::run(&options, ProgressView::Hidden).await?;
    assert!(report.passed(), "{report}");

    let p = &report.pipeline;
    assert_eq!(p.sent, 2000);
    assert_eq!(p.acknowledged, p.sent - p.failed, "{report}");
    assert_eq!(p.kinds.fresh + p.kinds.duplicate + p.kinds.unlike, p.sent);
    assert!(
        p.kinds.duplicate > 100 && p.kinds.unlike > 40,
        "{:?}",
        p.kinds
    );

    let v = &p.verification;
    assert_eq!(v.pairs_expected + v.pairs_uncertain, p.kinds.fresh);
    if p.failed == 0 {
        assert_eq!(v.pairs_stored, p.kinds.fresh, "one row per pair");
        // Each Unlike takes a different liked pair, which never gets another request.
        assert_eq!(v.pairs_liked, p.kinds.fresh - p.kinds.unlike);
    }

    let like = p.like_latency_us;
    assert_eq!(like.count, p.kinds.fresh + p.kinds.duplicate);
    assert!(like.p50 <= like.p90 && like.p90 <= like.p99 && like.p99 <= like.max);
    assert!(p.accepted_per_s > 0.0 && p.load_s > 0.0);
    let persisted = p.persisted_per_s.expect("everything was persisted");
    assert!(
        persisted > 0.0 && persisted <= p.accepted_per_s * 1.01,
        "{report}"
    );
    assert!(p.drain_ms.is_some() && p.peak_queue_depth.is_some());

    let worker = p.worker.expect("the worker ran in-process");
    assert!(worker.events >= p.acknowledged, "{report}");
    assert!(
        worker.batches >= 1 && worker.batches < p.acknowledged,
        "{report}"
    );
    assert_eq!(worker.dead_lettered, 0);
    assert_eq!(report.scenario.batch_size, Some(500), "the default");
    let flush = worker.flush_latency_us.expect("batches were flushed");
    assert!(flush.count >= 1 && flush.p50 <= flush.p99, "{report}");
    assert!(report.process_peak_rss_mib.is_some_and(|mib| mib > 1.0));
    let per_like = p.transactions_per_like.expect("measured");
    assert!(
        per_like < 1.0,
        "batching costs less than a transaction per like: {report}"
    );

    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_batch_options_are_passed_through_and_reported() -> anyhow::Result<()> {
    let options = options(&[
        "--likes",
        "2000",
        "--concurrency",
        "16",
        "--hot-fraction",
        "1.0",
        "--batch-size",
        "20",
        "--batch-max-wait-ms",
        "10",
    ]);
    let report = likes_loadtest::run(&options, ProgressView::Hidden).await?;
    assert!(report.passed(), "{report}");
    let s = &report.scenario;
    assert_eq!((s.batch_size, s.batch_max_wait_ms), (Some(20), Some(10)));
    let worker = report.pipeline.worker.expect("the worker ran in-process");
    // A batch closes once it holds 20 events; a message is never split, and
    // holds at most one event per caller (16), so no batch passes 19 + 16.
    assert!(worker.mean_batch_size <= 35.0, "{report}");
    assert!(
        report
            .to_string()
            .contains("worker: batch size 20, max wait 10 ms")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_direct_baseline_is_verified_and_compared() -> anyhow::Result<()> {
    let options = options(&[
        "--likes",
        "500",
        "--concurrency",
        "16",
        "--posts",
        "20",
        "--duplicate-fraction",
        "0.1",
        "--unlike-fraction",
        "0.05",
        "--baseline",
        "direct",
    ]);
    let report = likes_loadtest::run(&options, ProgressView::Hidden).await?;
    assert!(report.passed(), "{report}");

    let direct = report.baseline.as_ref().expect("the baseline ran");
    assert_eq!(direct.system, "direct");
    assert_eq!(direct.sent, 500);
    assert_eq!(direct.acknowledged, direct.sent - direct.failed);
    assert!(direct.worker.is_none() && direct.pool_size == Some(16));
    assert_eq!(
        direct.drain_ms,
        Some(0),
        "direct writes commit before the answer"
    );
    let per_like = direct.transactions_per_like.expect("measured");
    assert!(
        per_like >= 1.0,
        "one transaction per request at least: {report}"
    );

    let comparison = report.comparison.expect("compared with the baseline");
    assert!(comparison.accepted_ratio > 0.0);
    assert!(
        comparison
            .transactions_per_like_ratio
            .is_some_and(|r| r < 1.0),
        "{report}"
    );

    let json = serde_json::to_value(&report)?;
    assert_eq!(json["baseline"]["system"], "direct");
    assert_eq!(json["pipeline"]["verification"]["missing"], 0);
    assert!(report.to_string().contains("verification (direct): PASSED"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_api_is_driven_and_verified_through_its_database() -> anyhow::Result<()> {
    let env = likes_testkit::TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let target = api.addr.to_string();
    let options = options(&[
        "--likes",
        "1000",
        "--concurrency",
        "16",
        "--unlike-fraction",
        "0.05",
        "--target",
        &target,
        "--database-url",
        env.settings.database.url.expose(),
        "--queue",
        &env.settings.amqp.queue,
    ]);
    let report = likes_loadtest::run(&options, ProgressView::Hidden).await?;
    assert!(report.passed(), "{report}");

    let p = &report.pipeline;
    assert_eq!(report.scenario.target, target);
    assert_eq!(p.acknowledged, p.sent - p.failed);
    assert!(p.worker.is_none(), "a running api's worker is out of reach");
    assert!(
        p.persisted_per_s.is_some() && p.peak_queue_depth.is_some(),
        "{report}"
    );
    let per_like = p.transactions_per_like.expect("measured");
    assert!(per_like < 1.0, "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_api_with_tls_and_a_token_is_driven_with_its_ca_and_token() -> anyhow::Result<()>
{
    let pki = likes_testkit::tls_proxy::TestPki::generate(&["127.0.0.1"])?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert, &pki.server_cert_pem)?;
    std::fs::write(&key, &pki.server_key_pem)?;
    let mut env = likes_testkit::TestEnv::new();
    env.settings.api.tls_cert_file = cert.to_string_lossy().into_owned();
    env.settings.api.tls_key_file = key.to_string_lossy().into_owned();
    env.settings.api.auth_token = likes_common::config::Secret::new("s3cret".to_owned());
    let addr = likes_testkit::RunningApi::spawn_tls(&env.settings).await?;
    let _worker = env.spawn_worker().await?;
    let target = format!("https://{addr}");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--likes",
            "200",
            "--target",
            &target,
            "--database-url",
            env.settings.database.url.expose(),
            "--queue",
            &env.settings.amqp.queue,
        ];
        args.extend_from_slice(extra);
        options(&args)
    };

    let report = likes_loadtest::run(
        &run(&["--ca-file", &pki.ca_file, "--token", "s3cret"]),
        ProgressView::Hidden,
    )
    .await?;
    assert!(report.passed(), "{report}");
    assert_eq!(report.pipeline.acknowledged, 200, "{report}");

    // Without the token every call fails; without the CA none connects.
    let report = likes_loadtest::run(
        &run(&["--ca-file", &pki.ca_file, "--token", "wrong"]),
        ProgressView::Hidden,
    )
    .await?;
    assert_eq!(report.pipeline.acknowledged, 0, "{report}");
    let untrusted = likes_loadtest::run(&run(&[]), ProgressView::Hidden).await;
    assert!(untrusted.is_err(), "connected without trusting the CA");
    Ok(())
}

#[test]
fn the_in_process_load_test_reads_its_settings_from_the_environment() -> anyhow::Result<()> {
    // Nothing listens on port 1: a load test that honours LIKES__DATABASE__URL
    // cannot start, one that ignores it runs against the local default.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_likes-loadtest"))
        .args(["--likes", "10", "--json"])
        .env(
            "LIKES__DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/likes",
        )
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("starting the api"), "{stderr}");
    Ok(())
}
