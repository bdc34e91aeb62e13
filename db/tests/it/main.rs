//! The database layer against the real PostgreSQL.

use likes_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread")]
async fn many_processes_creating_and_migrating_one_database_at_once_all_succeed()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let settings = env.settings.database.clone();
    let starts = (0..6).map(|_| {
        let settings = settings.clone();
        tokio::spawn(async move { likes_db::connect(&settings).await })
    });
    for start in starts {
        start.await??;
    }
    let mut db = env.db().await?;
    assert_eq!(likes_testkit::verify::counter_mismatches(&mut db).await?, 0);
    Ok(())
}

/// A process waiting for another's migrations must not deadlock it when
/// those build an index `CONCURRENTLY` (which waits for every older
/// snapshot): here the test holds the migration lock and builds one while
/// `run_migrations` waits.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_the_migration_lock_does_not_block_an_index_built_concurrently()
-> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let env = TestEnv::new();
    let url = env.settings.database.url.expose().to_owned();
    let mut holder = env.db().await?;
    diesel::sql_query(format!(
        "SELECT pg_advisory_lock({})",
        likes_db::MIGRATION_LOCK_KEY
    ))
    .execute(&mut holder)
    .await?;
    let waiter = tokio::spawn(async move { likes_db::run_migrations(&url, "").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the migrations waited for the lock");

    diesel::sql_query("CREATE TABLE scratch (a int)")
        .execute(&mut holder)
        .await?;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        diesel::sql_query("CREATE INDEX CONCURRENTLY scratch_a ON scratch (a)")
            .execute(&mut holder),
    )
    .await??;
    drop(holder);
    tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await???;
    Ok(())
}
