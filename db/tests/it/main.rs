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
