use likes_proto::pb::{
    GetLikeCountRequest, GetLikeCountsRequest, HasLikedRequest, LikeRequest, UnlikeRequest,
};
use likes_testkit::TestEnv;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn invalid_ids_are_refused_and_nothing_is_enqueued() -> anyhow::Result<()> {
    let env = TestEnv::new();
    // No worker: whatever is enqueued stays in the queue and would be seen.
    let api = env.spawn_api().await?;
    let mut client = api.client.clone();
    let long = "x".repeat(129);
    let cases: [(&str, &str, &str); 5] = [
        ("", "u", "post_id"),
        ("p", "", "user_id"),
        (&long, "u", "post_id"),
        ("p", "a\u{0}b", "user_id"),
        ("p\n", "u", "post_id"),
    ];
    for (post, user, field) in cases {
        let like = client
            .like(LikeRequest {
                post_id: post.into(),
                user_id: user.into(),
            })
            .await
            .expect_err("invalid like must fail");
        assert_eq!(like.code(), Code::InvalidArgument, "{like:?}");
        assert!(
            like.message().starts_with(field),
            "{:?} should name {field}",
            like.message()
        );
        let unlike = client
            .unlike(UnlikeRequest {
                post_id: post.into(),
                user_id: user.into(),
            })
            .await
            .expect_err("invalid unlike must fail");
        assert_eq!(unlike.code(), Code::InvalidArgument);
        let has = client
            .has_liked(HasLikedRequest {
                post_id: post.into(),
                user_id: user.into(),
            })
            .await
            .expect_err("invalid has_liked must fail");
        assert_eq!(has.code(), Code::InvalidArgument);
    }
    let count = client
        .get_like_count(GetLikeCountRequest {
            post_id: String::new(),
        })
        .await
        .expect_err("empty post id");
    assert_eq!(count.code(), Code::InvalidArgument);
    let too_many = client
        .get_like_counts(GetLikeCountsRequest {
            post_ids: vec!["p".into(); 1001],
        })
        .await
        .expect_err("1001 ids");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().contains("1000"),
        "{}",
        too_many.message()
    );

    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        0,
        "nothing enqueued"
    );
    // The server is unharmed and a valid call is enqueued.
    client
        .like(LikeRequest {
            post_id: "p".into(),
            user_id: "u".into(),
        })
        .await?;
    assert_eq!(env.queue_depth(&env.settings.amqp.queue).await?, 1);
    Ok(())
}
