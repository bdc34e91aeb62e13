//! `database.url` in libpq's keyword/value form (`host=… dbname=…`), which
//! tokio-postgres reads as well as a URL: the database is created, migrated
//! and written through it, and reads are served from it.

use likes_common::config::SecretUrl;
use likes_proto::pb::GetLikeCountRequest;
use likes_testkit::{
    TestEnv, eventually,
    load::{check_exactly, like_all, pairs},
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn the_service_runs_on_a_keyword_value_database_url() -> anyhow::Result<()> {
    const LIKES: usize = 200;
    let mut env = TestEnv::new();
    let url = env.settings.database.url.expose();
    let target = likes_db::Target::parse(url)?;
    let name = target.dbname().expect("the test database").to_owned();
    let (host, port) = target
        .server_label()
        .rsplit_once(':')
        .map(|(host, port)| (host.to_owned(), port.to_owned()))
        .expect("host:port");
    env.settings.database.url = SecretUrl::new(format!(
        "host={host} port = {port} user=postgres dbname='{name}' \
         application_name='likes keyword test' sslmode=disable"
    ));
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let outcome = like_all(
        std::slice::from_ref(&api.client),
        pairs("keywords", LIKES, 1),
        32,
        Duration::from_secs(30),
    )
    .await?;
    env.wait_for_stored_pairs(LIKES, Duration::from_secs(30))
        .await?;
    check_exactly(&mut env.db().await?, &outcome.acknowledged).await?;
    let client = &api.client;
    eventually(Duration::from_secs(10), "the count read back", || {
        let mut client = client.clone();
        async move {
            let count = client
                .get_like_count(GetLikeCountRequest {
                    post_id: "post-0".into(),
                })
                .await?
                .into_inner()
                .count;
            Ok((count == LIKES as i64).then_some(()))
        }
    })
    .await?;
    Ok(())
}
