//! Several processes on one host with default metrics settings: two
//! workers, two apis on their own gRPC ports. The later ones cannot have
//! the default metrics ports; they warn and keep working, and a health
//! check never reports another process's health as theirs (it fails for
//! a process without an endpoint).

use crate::{API, ONE_AT_A_TIME, connect, like};
use likes_testkit::{TestEnv, eventually, free_port, process::ServiceProcess};
use std::{path::Path, time::Duration};

/// Waits until `process` logged a line containing every one of `words`.
async fn logged(process: &ServiceProcess, words: &[&str]) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(20),
        &format!("a log line with {words:?}"),
        || {
            let found = process
                .logs()
                .lines()
                .any(|line| words.iter().all(|w| line.contains(w)));
            async move { Ok(found.then_some(())) }
        },
    )
    .await
}

/// `likes-worker --health-check` with these extra arguments: its exit
/// status and what it said.
fn worker_health(worker: &Path, env: &TestEnv, args: &[&str]) -> anyhow::Result<(bool, String)> {
    likes_testkit::process::health_check(worker, &env.settings, args)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_and_two_apis_with_default_metrics_settings_all_run_and_do_their_job()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    let defaults = likes_common::Settings::defaults();
    env.settings.api.metrics_listen = defaults.api.metrics_listen.clone();
    env.settings.worker.metrics_listen = defaults.worker.metrics_listen.clone();
    env.db().await?;
    let worker_binary = Path::new(API).with_file_name("likes-worker");
    // Whether the default ports are free: on a shared machine another
    // process may hold them, and then the first of ours warns too.
    let worker_port_free = std::net::TcpListener::bind(&defaults.worker.metrics_listen).is_ok();
    let api_port_free = std::net::TcpListener::bind(&defaults.api.metrics_listen).is_ok();

    let first = ServiceProcess::spawn_logged(&worker_binary, &env.settings)?;
    if worker_port_free {
        let addr = defaults.worker.metrics_listen.clone();
        let pid = f64::from(first.pid());
        eventually(
            Duration::from_secs(20),
            "the first worker's endpoint",
            || {
                let addr = addr.clone();
                async move {
                    let body = likes_testkit::scrape(&addr).await.ok();
                    Ok(body.filter(|b| {
                        likes_testkit::sample(b, "likes_process_id", None) == Some(pid)
                            && likes_testkit::sample(
                                b,
                                "likes_amqp_connected",
                                Some("role=\"worker\""),
                            ) == Some(1.0)
                    }))
                }
            },
        )
        .await?;
    }
    let mut second = ServiceProcess::spawn_logged(&worker_binary, &env.settings)?;
    logged(
        &second,
        &[
            "metrics endpoint not started",
            "127.0.0.1:9465",
            "LIKES__WORKER__METRICS_LISTEN",
        ],
    )
    .await?;

    let ports = [free_port()?, free_port()?];
    let mut apis = Vec::new();
    let mut clients = Vec::new();
    for port in ports {
        let mut settings = env.settings.clone();
        settings.api.listen = format!("127.0.0.1:{port}").parse()?;
        apis.push((
            ServiceProcess::spawn_logged(Path::new(API), &settings)?,
            settings,
        ));
        clients.push(connect(port).await?);
    }
    logged(
        &apis[1].0,
        &[
            "metrics endpoint not started",
            "127.0.0.1:9464",
            "LIKES__API__METRICS_LISTEN",
        ],
    )
    .await?;

    // Both apis take Likes, both workers consume them.
    for (i, client) in clients.iter_mut().enumerate() {
        for u in 0..100 {
            like(client, &format!("api{i}-u{u}")).await?;
        }
    }
    env.wait_for_stored_pairs(200, Duration::from_secs(30))
        .await?;
    let consumers = {
        let (connection, channel) = env.amqp().await?;
        let consumers = likes_queue::queue_consumers(&channel, &env.settings.amqp.queue).await?;
        let _ = connection.close(200, "done".into()).await;
        consumers
    };
    assert_eq!(consumers, 2, "both workers consume");
    assert!(second.is_running(), "the second worker must keep running");
    for (api, _) in &mut apis {
        assert!(api.is_running(), "both apis must keep running");
    }

    // The second api has no endpoint of its own: its check must fail,
    // never pass on the first api's; the first api's check passes.
    for (i, (_, settings)) in apis.iter().enumerate() {
        let output = likes_testkit::process::command(Path::new(API), settings)
            .arg("--health-check")
            .output()?;
        let said = String::from_utf8_lossy(&output.stderr);
        if i == 1 {
            assert!(
                !output.status.success(),
                "the second api's check passed on another's endpoint"
            );
            assert!(said.contains("belongs to the api serving"), "{said}");
        } else if api_port_free {
            assert!(
                output.status.success(),
                "api on {} reports unhealthy: {said}",
                settings.api.listen
            );
        }
    }
    // The second worker has no endpoint of its own: its check must fail,
    // never read the first worker's.
    let (ok, said) = worker_health(&worker_binary, &env, &["--pid", &second.pid().to_string()])?;
    assert!(
        !ok,
        "the second worker's check passed on another's endpoint"
    );
    assert!(said.contains("belongs to process"), "{said}");
    // Without --pid, two workers are ambiguous.
    let (ok, said) = worker_health(&worker_binary, &env, &[])?;
    assert!(!ok, "an ambiguous check passed");
    assert!(said.contains("--pid"), "{said}");
    if worker_port_free {
        let (ok, said) = worker_health(&worker_binary, &env, &["--pid", &first.pid().to_string()])?;
        assert!(ok, "the first worker's own check failed: {said}");
    }
    if api_port_free {
        assert!(
            !apis[0].0.logs().contains("metrics endpoint not started"),
            "the first api had a free port"
        );
    }
    drop(first);
    Ok(())
}
