//! `likes-admin recount` (`likes_db::recount`): counters corrupted while
//! likes pour in are found and repaired, and the repair loses no like that
//! workers write meanwhile.

use diesel_async::RunQueryDsl;
use likes_db::recount::{Recount, recount};
use likes_testkit::{
    TestEnv,
    load::{Steady, check_exactly, like_steadily},
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn corrupt(conn: &mut diesel_async::AsyncPgConnection) -> anyhow::Result<()> {
    // One counter too high, one lost, one negative: a bad restore or a
    // hand edit, while workers keep adding to them.
    for statement in [
        "UPDATE like_counts SET count = count + 1000 WHERE post_id = 'post-0'",
        "DELETE FROM like_counts WHERE post_id = 'post-1'",
        "UPDATE like_counts SET count = -5 WHERE post_id = 'post-2'",
    ] {
        let changed = diesel::sql_query(statement).execute(conn).await?;
        anyhow::ensure!(changed == 1, "{statement}: {changed} rows");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_corrupted_under_load_are_repaired_and_no_like_is_lost() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let stop = CancellationToken::new();
    let load = tokio::spawn(like_steadily(
        vec![api.client.clone()],
        "recount".to_owned(),
        Steady {
            per_second: 1_500,
            posts: 5,
            ..Steady::default()
        },
        stop.clone(),
    ));
    env.wait_for_stored_pairs(1_000, Duration::from_secs(30))
        .await?;
    let mut conn = env.db().await?;
    corrupt(&mut conn).await?;

    let dry = recount(
        &mut conn,
        &Recount {
            post: None,
            batch: 2,
            dry_run: true,
        },
    )
    .await?;
    let drifted: Vec<&str> = dry.drift.iter().map(|d| d.post_id.as_str()).collect();
    assert_eq!(drifted, ["post-0", "post-1", "post-2"], "{dry:?}");
    assert!(dry.drift.iter().all(|d| d.repaired.is_none()));
    // post-1's counter was deleted; a batch since may have created it
    // again from its own changes only.
    let lost = &dry.drift[1];
    assert!(lost.stored.unwrap_or(0) < lost.counted, "{lost:?}");

    // Repaired while the likes keep coming, batch by batch of two posts.
    let repaired = recount(
        &mut conn,
        &Recount {
            post: None,
            batch: 2,
            dry_run: false,
        },
    )
    .await?;
    assert_eq!(repaired.posts_checked, 5, "{repaired:?}");
    assert!(repaired.drift.len() >= 3, "{repaired:?}");
    assert!(repaired.drift.iter().all(|d| d.repaired.is_some()));

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let outcome = load.await??;
    env.wait_for_stored_pairs(outcome.acknowledged.len(), Duration::from_secs(30))
        .await?;
    // Counters equal to the liked pairs, every OK'd like stored once.
    check_exactly(&mut conn, &outcome.acknowledged).await?;
    let clean = recount(
        &mut conn,
        &Recount {
            post: None,
            batch: 1000,
            dry_run: true,
        },
    )
    .await?;
    assert!(clean.drift.is_empty(), "{clean:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recount_of_one_post_touches_only_that_post() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut conn = env.db().await?;
    diesel::sql_query(
        "INSERT INTO likes (post_id, user_id, liked, event_at_micros, event_id, last_delta) \
         SELECT 'p' || (i % 2), 'u' || i, i % 3 <> 0, i, gen_random_uuid(), 1 \
         FROM generate_series(1, 30) AS i",
    )
    .execute(&mut conn)
    .await?;
    // Neither post has a counter yet.
    let one = recount(
        &mut conn,
        &Recount {
            post: Some("p1".to_owned()),
            batch: 10,
            dry_run: false,
        },
    )
    .await?;
    assert_eq!(one.posts_checked, 1);
    assert_eq!(one.drift.len(), 1);
    let liked_in_p1 = (1..=30).filter(|i| i % 2 == 1 && i % 3 != 0).count() as i64;
    assert_eq!(one.drift[0].counted, liked_in_p1);
    assert_eq!(one.drift[0].repaired, Some(liked_in_p1));
    let rest = recount(
        &mut conn,
        &Recount {
            post: None,
            batch: 10,
            dry_run: true,
        },
    )
    .await?;
    let drifted: Vec<&str> = rest.drift.iter().map(|d| d.post_id.as_str()).collect();
    assert_eq!(drifted, ["p0"], "p1 was repaired, p0 not yet: {rest:?}");
    Ok(())
}
