//! The worker binary as a process: killed with SIGKILL mid-batch, stopped
//! with SIGTERM. Real RabbitMQ and PostgreSQL, own database and queues.

mod admin;
mod cli;
mod health;

use likes_testkit::{
    TestEnv, eventually,
    load::{check_exactly, like_all, pairs},
    process::ServiceProcess,
    verify,
};
use rand::Rng;
use std::{path::Path, time::Duration};

const WORKER: &str = env!("CARGO_BIN_EXE_likes-worker");

fn spawn_worker(env: &TestEnv) -> anyhow::Result<ServiceProcess> {
    ServiceProcess::spawn(Path::new(WORKER), &env.settings)
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_killed_repeatedly_during_twenty_thousand_likes_lose_nothing() -> anyhow::Result<()>
{
    const LIKES: usize = 20_000;
    let mut env = TestEnv::new();
    env.settings.worker.batch_size = 250.try_into()?;
    let api = env.spawn_api().await?;
    // The database exists before three workers race to create it.
    env.db().await?;
    let mut workers = (0..3)
        .map(|_| spawn_worker(&env))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let clients = vec![
        api.client.clone(),
        api.new_client().await?,
        api.new_client().await?,
    ];
    let mut load = tokio::spawn(async move {
        like_all(
            &clients,
            pairs("kill", LIKES, 11),
            64,
            Duration::from_secs(60),
        )
        .await
    });

    let mut kills = 0;
    let outcome = loop {
        tokio::select! {
            outcome = &mut load => break outcome??,
            () = tokio::time::sleep(Duration::from_millis(700)) => {
                let victim = rand::rng().random_range(0..workers.len());
                workers[victim].kill()?;
                workers[victim] = spawn_worker(&env)?;
                kills += 1;
            }
        }
    };
    assert!(kills >= 2, "only {kills} kills happened during the load");
    assert_eq!(outcome.acknowledged.len(), LIKES);

    let pool = env.pool().await?;
    eventually(Duration::from_secs(120), "the queue to drain", || async {
        let mut conn = likes_db::checkout(&pool).await?;
        let written = verify::stored_pairs(&mut conn).await?;
        let depth = env.queue_depth(&env.settings.amqp.queue).await?;
        Ok((written >= LIKES as i64 && depth == 0).then_some(()))
    })
    .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_the_batch_in_hand_and_exits_zero() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    // A batch that would wait a minute: only the shutdown flush writes it.
    env.settings.worker.batch_size = 1_000.try_into()?;
    env.settings.worker.batch_max_wait_ms = 60_000;
    let api = env.spawn_api().await?;
    env.db().await?;
    let mut worker = spawn_worker(&env)?;
    let outcome = like_all(
        std::slice::from_ref(&api.client),
        pairs("term", 300, 3),
        16,
        Duration::from_secs(10),
    )
    .await?;
    // Wait until the worker holds them all (none left ready in the queue).
    env.wait_for_queue_depth(&env.settings.amqp.queue, 0, Duration::from_secs(10))
        .await?;
    let mut db = env.db().await?;
    assert_eq!(
        verify::stored_pairs(&mut db).await?,
        0,
        "not written before the signal"
    );

    let status = worker.terminate(Duration::from_secs(10)).await?;
    assert!(status.success(), "worker exited with {status}");
    check_exactly(&mut db, &outcome.acknowledged).await?;
    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        0,
        "all acked, none requeued"
    );
    Ok(())
}

const DLQ: &str = env!("CARGO_BIN_EXE_likes-dlq");

fn dlq(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let output = likes_testkit::process::command(Path::new(DLQ), &env.settings)
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "likes-dlq {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn likes_dlq_lists_inspects_and_replays_dead_letters() -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    use likes_proto::events::{LikeEvent, like_event::Action};

    let env = TestEnv::new();
    let mut db = env.db().await?;
    diesel::sql_query("ALTER TABLE likes ADD CONSTRAINT refuse_bob CHECK (user_id <> 'bob')")
        .execute(&mut db)
        .await?;
    let (_conn, channel) = env.amqp().await?;
    let bob = LikeEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        post_id: "p".into(),
        user_id: "bob".into(),
        action: Action::Like.into(),
        occurred_at_micros: 1,
    };
    env.publish_raw(&channel, b"not a like").await?;
    env.publish_event(&channel, &bob).await?;
    let worker = env.spawn_worker().await?;
    let dead = env.settings.amqp.dead_letter_queue.clone();
    env.wait_for_queue_depth(&dead, 2, Duration::from_secs(10))
        .await?;

    let listing = dlq(&env, &["list"])?;
    assert!(listing.contains("2 dead letter(s)"), "{listing}");
    assert!(listing.contains("p/bob Like"), "{listing}");
    assert!(listing.contains("refuse_bob"), "reason shown: {listing}");
    assert!(listing.contains("undecodable"), "{listing}");
    assert!(listing.contains(&bob.event_id), "{listing}");
    let inspected = dlq(&env, &["inspect", &bob.event_id])?;
    assert!(inspected.contains("header x-likes-error:"), "{inspected}");
    let queue_header = format!("header x-likes-queue: {}", env.settings.amqp.queue);
    assert!(inspected.contains(&queue_header), "{inspected}");
    assert_eq!(
        env.queue_depth(&dead).await?,
        2,
        "listing leaves them in place"
    );

    // Fix the cause, then replay everything: bob is written, the garbage
    // comes back to the dead-letter queue with a replay count.
    diesel::sql_query("ALTER TABLE likes DROP CONSTRAINT refuse_bob")
        .execute(&mut db)
        .await?;
    let replayed = dlq(&env, &["replay"])?;
    assert!(replayed.contains("replayed 2 message(s)"), "{replayed}");
    let pool = env.pool().await?;
    eventually(Duration::from_secs(10), "bob to be written", || async {
        let mut conn = likes_db::checkout(&pool).await?;
        Ok(verify::stored_state(&mut conn, "p", "bob")
            .await?
            .map(|_| ()))
    })
    .await?;
    env.wait_for_queue_depth(&dead, 1, Duration::from_secs(10))
        .await?;
    let listing = dlq(&env, &["list"])?;
    assert!(listing.contains("replays=1"), "{listing}");
    assert_eq!(worker.stats.dead_lettered(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_and_two_apis_share_thirty_thousand_likes_exactly() -> anyhow::Result<()> {
    use likes_testkit::{free_port, sample, scrape};
    const LIKES: usize = 30_000;
    let mut env = TestEnv::new();
    env.settings.worker.batch_size = 250.try_into()?;
    let first_api = env.spawn_api().await?;
    let second_api = env.spawn_api().await?;
    env.db().await?;
    let mut metrics = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut settings = env.settings.clone();
        settings.worker.metrics_listen = format!("127.0.0.1:{}", free_port()?);
        metrics.push(settings.worker.metrics_listen.clone());
        workers.push(ServiceProcess::spawn(Path::new(WORKER), &settings)?);
    }
    // Overlapping posts with one hot post: half of all likes go to post-hot,
    // the rest over 50 posts, through both apis.
    let pairs: Vec<(String, String)> = (0..LIKES)
        .map(|i| {
            let post = if i % 2 == 0 {
                "post-hot".to_owned()
            } else {
                format!("post-{}", i % 50)
            };
            (post, format!("user-{i}"))
        })
        .collect();
    let clients = vec![
        first_api.client.clone(),
        second_api.client.clone(),
        first_api.new_client().await?,
        second_api.new_client().await?,
    ];
    let outcome = like_all(&clients, pairs, 64, Duration::from_secs(60)).await?;
    assert_eq!(outcome.acknowledged.len(), LIKES);

    env.wait_for_stored_pairs(LIKES, Duration::from_secs(120))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    for addr in &metrics {
        let body = scrape(addr).await?;
        let batches = sample(&body, "likes_batches_total", None).unwrap_or(0.0);
        assert!(batches >= 1.0, "worker at {addr} wrote no batch");
        let retries = sample(&body, "likes_write_retries_total", None).unwrap_or(0.0);
        assert_eq!(
            sample(&body, "likes_dead_lettered_total", None),
            Some(0.0),
            "nothing dead-lettered"
        );
        tracing::info!(%addr, batches, retries, "worker share");
    }
    drop(workers);
    Ok(())
}
