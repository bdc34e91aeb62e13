//! Removes a test's database and queues. Runs from `Drop`, which cannot be
//! async and may run inside a runtime, so the work happens on a thread of its
//! own with a small runtime of its own.

use diesel_async::RunQueryDsl;
use likes_common::Settings;

pub(crate) fn remove(settings: &Settings) {
    let settings = settings.clone();
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime can always be built");
        runtime.block_on(async {
            if let Err(error) = drop_database(&settings).await {
                eprintln!("test cleanup: cannot drop the database: {error}");
            }
            if let Err(error) = delete_queues(&settings).await {
                eprintln!("test cleanup: cannot delete the queues: {error}");
            }
        });
    })
    .join();
    if done.is_err() {
        eprintln!("test cleanup panicked");
    }
}

async fn drop_database(settings: &Settings) -> anyhow::Result<()> {
    let target = likes_db::Target::parse(settings.database.url.expose())?;
    let name = target.dbname().unwrap_or_default().to_owned();
    anyhow::ensure!(
        name.starts_with("likes_test_"),
        "refusing to drop a database not made by a test"
    );
    let mut conn = target
        .with_dbname("postgres")
        .connect(&settings.database.tls_ca_file)
        .await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

async fn delete_queues(settings: &Settings) -> anyhow::Result<()> {
    let connection = likes_queue::connect(&settings.amqp, "likes-test-cleanup").await?;
    let channel = connection.create_channel().await?;
    likes_queue::delete_topology(&channel, &settings.amqp).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
