//! What product pages ask: a feed page in one call (GetLikeSummaries), the
//! likers of a post a page at a time (ListLikers), and live counts
//! (WatchLikeCounts), against the real api, workers, RabbitMQ and
//! PostgreSQL.

use likes_proto::pb::{
    GetLikeSummariesRequest, LikeCountChange, LikeRequest, ListLikersRequest, UnlikeRequest,
    WatchLikeCountsRequest, like_service_client::LikeServiceClient,
};
use likes_testkit::{
    TestEnv,
    commits::CommitCounter,
    eventually,
    load::{like_all, pairs},
};
use std::collections::HashMap;
use std::{collections::HashSet, time::Duration};
use tokio::time::Instant;
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt;

type Client = LikeServiceClient<Channel>;

async fn like(client: &Client, post: &str, user: &str) -> anyhow::Result<()> {
    let request = LikeRequest {
        post_id: post.into(),
        user_id: user.into(),
    };
    client.clone().like(request).await?;
    Ok(())
}

async fn unlike(client: &Client, post: &str, user: &str) -> anyhow::Result<()> {
    let request = UnlikeRequest {
        post_id: post.into(),
        user_id: user.into(),
    };
    client.clone().unlike(request).await?;
    Ok(())
}

async fn summaries(
    client: &Client,
    viewer: &str,
    posts: &[String],
) -> Result<Vec<(String, i64, bool)>, tonic::Status> {
    let reply = client
        .clone()
        .get_like_summaries(GetLikeSummariesRequest {
            viewer_id: viewer.into(),
            post_ids: posts.to_vec(),
        })
        .await?
        .into_inner();
    let mut rows: Vec<_> = reply
        .summaries
        .into_iter()
        .map(|(post, s)| (post, s.count, s.viewer_liked))
        .collect();
    rows.sort();
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feed_page_is_one_call_with_every_post_its_count_and_the_viewers_state()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    // Two workers on one queue: a pair's Like and Unlike may be written by
    // either, in either order; the last event wins.
    let _workers = [env.spawn_worker().await?, env.spawn_worker().await?];
    let client = api.client.clone();
    for user in ["viewer", "u1", "u2"] {
        like(&client, "p1", user).await?;
    }
    like(&client, "p2", "u1").await?;
    like(&client, "p3", "viewer").await?;
    unlike(&client, "p3", "viewer").await?;
    let posts: Vec<String> = ["p1", "p2", "p3", "never", "p1"]
        .map(str::to_owned)
        .to_vec();
    let expected = vec![
        ("never".to_owned(), 0, false),
        ("p1".to_owned(), 3, true),
        ("p2".to_owned(), 1, false),
        ("p3".to_owned(), 0, false),
    ];
    eventually(Duration::from_secs(20), "the page as written", || async {
        Ok((summaries(&client, "viewer", &posts).await? == expected).then_some(()))
    })
    .await?;
    // Without a viewer: counts only, nobody likes anything.
    let anonymous = summaries(&client, "", &posts).await?;
    assert!(
        anonymous.iter().all(|(_, _, liked)| !liked),
        "{anonymous:?}"
    );
    assert_eq!(anonymous.iter().map(|r| r.1).sum::<i64>(), 4);

    let hundred: Vec<String> = (0..100).map(|i| format!("post-{i}")).collect();
    assert_eq!(summaries(&client, "viewer", &hundred).await?.len(), 100);
    let mut too_many = hundred.clone();
    too_many.push("one-more".into());
    let status = summaries(&client, "viewer", &too_many)
        .await
        .expect_err("101 posts");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = summaries(&client, "a\u{7}", &hundred)
        .await
        .expect_err("a control character in the viewer id");
    let violations = status.get_error_details();
    let fields: Vec<_> = violations
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["viewer_id"], "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_feed_page_costs_one_statement_with_a_viewer_and_none_without() -> anyhow::Result<()>
{
    let mut env = TestEnv::new();
    // Nothing cached expires during the test.
    env.settings.api.count_cache_ttl_ms = 600_000.try_into()?;
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let client = api.client.clone();
    let posts: Vec<String> = (0..50).map(|i| format!("post-{i}")).collect();
    for post in &posts[..10] {
        like(&client, post, "viewer").await?;
    }
    eventually(Duration::from_secs(20), "the likes written", || async {
        let page = summaries(&client, "viewer", &posts).await?;
        Ok((page
            .iter()
            .filter(|(_, count, liked)| *count == 1 && *liked)
            .count()
            == 10)
            .then_some(()))
    })
    .await?;
    // Statements are transactions here (autocommit). Autovacuum's visits
    // to a new database add a few at any moment, never take any away: the
    // fewest of three rounds is what the pages cost.
    let mut commits = CommitCounter::connect(&env.settings.database.url).await?;
    let pages = 20;
    let (mut anonymous, mut viewed) = (u64::MAX, u64::MAX);
    let mut before = commits.idle().await?;
    for _ in 0..3 {
        for _ in 0..pages {
            assert_eq!(summaries(&client, "", &posts).await?.len(), 50);
        }
        let after = commits.idle().await?;
        anonymous = anonymous.min(after - before);
        for _ in 0..pages {
            let page = summaries(&client, "viewer", &posts).await?;
            assert_eq!(page.iter().filter(|(_, _, liked)| *liked).count(), 10);
        }
        before = commits.idle().await?;
        viewed = viewed.min(before - after);
    }
    assert_eq!(
        (anonymous, viewed),
        (0, pages),
        "statements for {pages} pages without and with a viewer"
    );
    Ok(())
}

async fn likers_page(
    client: &Client,
    post: &str,
    size: i32,
    token: &str,
) -> Result<(Vec<(String, i64)>, String), tonic::Status> {
    let reply = client
        .clone()
        .list_likers(ListLikersRequest {
            post_id: post.into(),
            page_size: size,
            page_token: token.into(),
        })
        .await?
        .into_inner();
    let likers = reply
        .likers
        .into_iter()
        .map(|l| {
            let at = l
                .liked_at
                .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
            (l.user_id, at)
        })
        .collect();
    Ok((likers, reply.next_page_token))
}

#[tokio::test(flavor = "multi_thread")]
async fn walking_the_likers_of_a_post_lists_each_once_newest_first() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let client = api.client.clone();
    let sent = pairs("likers", 1_000, 1);
    like_all(
        std::slice::from_ref(&client),
        sent,
        32,
        Duration::from_secs(30),
    )
    .await?;
    env.wait_for_count("post-0", 1_000, Duration::from_secs(30))
        .await?;

    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    let mut unliked = None;
    loop {
        let (page, next) = likers_page(&client, "post-0", 7, &token).await?;
        assert!(page.len() <= 7);
        seen.extend(page);
        pages += 1;
        if pages == 3 {
            // Someone further down the list unlikes while the reader pages.
            let (older, _) = likers_page(&client, "post-0", 100, &next).await?;
            let (user, _) = older.last().expect("more likers").clone();
            unlike(&client, "post-0", &user).await?;
            env.wait_for_count("post-0", 999, Duration::from_secs(20))
                .await?;
            unliked = Some(user);
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let unliked = unliked.expect("an unlike during the walk");
    let users: HashSet<&String> = seen.iter().map(|(u, _)| u).collect();
    assert_eq!(users.len(), seen.len(), "no liker twice");
    assert_eq!(seen.len(), 999, "every liker but the one who left");
    assert!(!users.contains(&unliked));
    assert!(
        seen.windows(2)
            .all(|w| (w[0].1, &w[0].0) > (w[1].1, &w[1].0)),
        "newest first, ties by user id"
    );

    // Default and clamped page sizes.
    assert_eq!(likers_page(&client, "post-0", 0, "").await?.0.len(), 20);
    assert_eq!(
        likers_page(&client, "post-0", 1_000, "").await?.0.len(),
        100
    );
    // Tokens that are not this post's, or were changed or cut.
    let (_, token) = likers_page(&client, "post-0", 7, "").await?;
    let mut changed = token.clone().into_bytes();
    changed[4] = if changed[4] == b'a' { b'b' } else { b'a' };
    let changed = String::from_utf8(changed)?;
    for (post, bad) in [
        ("post-0", changed.as_str()),
        ("post-0", &token[..token.len() - 4]),
        ("post-0", "garbage"),
        ("other-post", token.as_str()),
    ] {
        let status = likers_page(&client, post, 7, bad)
            .await
            .expect_err("a bad token");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = status.get_error_details();
        let field = violations
            .bad_request()
            .and_then(|b| b.field_violations.first())
            .map(|v| v.field.clone());
        assert_eq!(field.as_deref(), Some("page_token"), "{status:?}");
    }
    Ok(())
}

async fn watch(
    client: &Client,
    posts: &[&str],
) -> Result<Streaming<LikeCountChange>, tonic::Status> {
    let request = WatchLikeCountsRequest {
        post_ids: posts.iter().map(|p| (*p).to_owned()).collect(),
    };
    Ok(client
        .clone()
        .watch_like_counts(request)
        .await?
        .into_inner())
}

/// The next change of `stream`, failing after `within`.
async fn next(
    stream: &mut Streaming<LikeCountChange>,
    within: Duration,
) -> anyhow::Result<Result<LikeCountChange, tonic::Status>> {
    match tokio::time::timeout(within, stream.message()).await? {
        Ok(Some(change)) => Ok(Ok(change)),
        Ok(None) => anyhow::bail!("the stream ended"),
        Err(status) => Ok(Err(status)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_sends_current_counts_then_coalesced_changes_ending_exact() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let client = api.client.clone();
    like(&client, "hot", "early").await?;
    env.wait_for_count("hot", 1, Duration::from_secs(20))
        .await?;

    let mut stream = watch(&client, &["hot", "cold", "hot"]).await?;
    let mut first = [
        next(&mut stream, Duration::from_secs(5)).await??,
        next(&mut stream, Duration::from_secs(5)).await??,
    ];
    first.sort_by(|a, b| a.post_id.cmp(&b.post_id));
    assert_eq!(
        first
            .iter()
            .map(|c| (c.post_id.as_str(), c.count))
            .collect::<Vec<_>>(),
        [("cold", 0), ("hot", 1)]
    );

    // 2,000 more likes in about a second: far fewer messages than likes,
    // at most one per 250 ms, ending on the exact count.
    let load = tokio::spawn(like_all_owned(
        client.clone(),
        pairs("hot", 2_000, 1),
        "hot",
    ));
    let started = Instant::now();
    let mut changes = Vec::new();
    loop {
        let change = next(&mut stream, Duration::from_secs(20)).await??;
        assert_eq!(change.post_id, "hot");
        changes.push((started.elapsed(), change.count));
        if change.count == 2_001 {
            break;
        }
    }
    load.await??;
    assert!(changes.len() < 100, "coalesced: {} messages", changes.len());
    assert!(
        changes
            .windows(2)
            .all(|w| w[1].0 - w[0].0 >= Duration::from_millis(200)),
        "at most one message per interval: {changes:?}"
    );
    assert!(changes.windows(2).all(|w| w[0].1 < w[1].1), "{changes:?}");
    Ok(())
}

/// One like on a quiet post reaches its watchers by the push alone (the
/// counts do not expire during the test, so no re-read can deliver it).
#[tokio::test(flavor = "multi_thread")]
async fn a_single_like_on_a_quiet_post_reaches_its_watch() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.count_cache_ttl_ms = 600_000.try_into()?;
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let mut stream = watch(&api.client, &["busy", "quiet"]).await?;
    for _ in 0..2 {
        assert_eq!(next(&mut stream, Duration::from_secs(5)).await??.count, 0);
    }
    like(&api.client, "quiet", "u1").await?;
    let change = next(&mut stream, Duration::from_secs(5)).await??;
    assert_eq!((change.post_id.as_str(), change.count), ("quiet", 1));
    like(&api.client, "busy", "u1").await?;
    like(&api.client, "quiet", "u2").await?;
    let mut latest = HashMap::new();
    while latest.get("quiet") != Some(&2) || latest.get("busy") != Some(&1) {
        let change = next(&mut stream, Duration::from_secs(5)).await??;
        latest.insert(change.post_id, change.count);
    }
    Ok(())
}

/// Likes all `pairs`, sending every one to `post` instead of the pair's.
async fn like_all_owned(
    client: Client,
    pairs: Vec<(String, String)>,
    post: &str,
) -> anyhow::Result<()> {
    let pairs = pairs
        .into_iter()
        .map(|(_, user)| (post.to_owned(), user))
        .collect();
    like_all(&[client], pairs, 32, Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_are_bounded_by_their_posts_their_budget_and_end_unavailable_on_shutdown()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.max_watch_streams = 3;
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let client = api.client.clone();

    let hundred_one: Vec<String> = (0..101).map(|i| format!("p{i}")).collect();
    let status = client
        .clone()
        .watch_like_counts(WatchLikeCountsRequest {
            post_ids: hundred_one,
        })
        .await
        .expect_err("101 posts");
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = watch(&client, &["p"]).await?;
        next(&mut stream, Duration::from_secs(5)).await??;
        streams.push(stream);
    }
    let status = watch(&client, &["p"]).await.expect_err("a fourth stream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone()),
        Some("TOO_MANY_STREAMS".to_owned())
    );
    // A stream that ends gives its place back.
    drop(streams.pop());
    let mut stream = eventually(Duration::from_secs(5), "a place again", || async {
        Ok(watch(&client, &["p"]).await.ok())
    })
    .await?;
    next(&mut stream, Duration::from_secs(5)).await??;
    streams.push(stream);

    // The api stops: every stream ends UNAVAILABLE, for its client to
    // resubscribe elsewhere.
    api.stop().await?;
    for mut stream in streams {
        let status = next(&mut stream, Duration::from_secs(5))
            .await?
            .expect_err("the api stopped");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_survives_the_apis_resubscription_and_a_reader_that_stops_reading()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let writer = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    // The watched api's broker link runs through a proxy, and its counts do
    // not expire while the test runs: only its subscription can tell it.
    let proxy = likes_testkit::proxy::FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let mut settings = env.settings_with_broker_at(proxy.addr());
    settings.api.count_cache_ttl_ms = 600_000.try_into()?;
    let watched = likes_testkit::RunningApi::spawn_with(&settings).await?;
    let mut stream = watch(&watched.client, &["p"]).await?;
    assert_eq!(next(&mut stream, Duration::from_secs(5)).await??.count, 0);

    // Its subscription to the pushes cut: the like's push never reaches it.
    proxy.cut();
    like(&writer.client, "p", "u1").await?;
    env.wait_for_count("p", 1, Duration::from_secs(20)).await?;
    proxy.restore();
    // Resubscribed, it reads the counts again and the stream gets them.
    let change = next(&mut stream, Duration::from_secs(15)).await??;
    assert_eq!((change.post_id.as_str(), change.count), ("p", 1));

    // A reader that stops reading during a burst of likes: nothing piles
    // up (at most one message per post waits), and when it reads again it
    // gets the latest count.
    let load = like_all_owned(writer.client.clone(), pairs("burst", 1_000, 1), "p");
    load.await?;
    env.wait_for_count("p", 1_001, Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut last = 0;
    while let Ok(Ok(Some(change))) =
        tokio::time::timeout(Duration::from_millis(600), stream.message()).await
    {
        last = change.count;
    }
    assert_eq!(last, 1_001, "the latest count after the pause");
    Ok(())
}
