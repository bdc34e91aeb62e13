use likes_proto::pb::{
    GetLikeCountRequest, GetLikeCountsRequest, HasLikedRequest, LikeRequest, UnlikeRequest,
};
use likes_testkit::TestEnv;
use std::{collections::BTreeSet, time::Duration};
use tonic::Code;
use tonic_types::StatusExt;

/// The (field, reason) pairs of a status's `BadRequest` detail.
fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.reason.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_ids_are_refused_and_nothing_is_enqueued() -> anyhow::Result<()> {
    let env = TestEnv::new();
    // No worker: whatever is enqueued stays in the queue and would be seen.
    let api = env.spawn_api().await?;
    let mut client = api.client.clone();
    let long = "x".repeat(129);
    let cases: [(&str, &str, &str, &str); 5] = [
        ("", "u", "post_id", "EMPTY"),
        ("p", "", "user_id", "EMPTY"),
        (&long, "u", "post_id", "TOO_LONG"),
        ("p", "a\u{0}b", "user_id", "CONTROL_CHARACTER"),
        ("p\n", "u", "post_id", "CONTROL_CHARACTER"),
    ];
    for (post, user, field, reason) in cases {
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
        // The field, machine-readable: a google.rpc.BadRequest detail.
        assert_eq!(
            field_violations(&like),
            [(field.to_owned(), reason.to_owned())],
            "{like:?}"
        );
        assert!(like.get_error_details().retry_info().is_none(), "no retry");
        let unlike = client
            .unlike(UnlikeRequest {
                post_id: post.into(),
                user_id: user.into(),
            })
            .await
            .expect_err("invalid unlike must fail");
        assert_eq!(unlike.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&unlike)[0].0, field);
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
    let bad_third = client
        .get_like_counts(GetLikeCountsRequest {
            post_ids: vec!["a".into(), "b".into(), String::new()],
        })
        .await
        .expect_err("an empty id among the three");
    assert_eq!(
        field_violations(&bad_third),
        [("post_ids[2]".to_owned(), "EMPTY".to_owned())],
        "the violation names the position: {bad_third:?}"
    );
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
    assert_eq!(field_violations(&too_many)[0].0, "post_ids");

    nothing_enqueued_and_unharmed(&env, &mut client).await
}

/// Nothing refused was enqueued, and a valid Like still is.
async fn nothing_enqueued_and_unharmed(
    env: &TestEnv,
    client: &mut likes_proto::pb::like_service_client::LikeServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<()> {
    let queue = &env.settings.amqp.queue;
    assert_eq!(env.queue_depth(queue).await?, 0, "nothing enqueued");
    client
        .like(LikeRequest {
            post_id: "p".into(),
            user_id: "u".into(),
        })
        .await?;
    assert_eq!(env.queue_depth(queue).await?, 1, "server unharmed");
    Ok(())
}

/// LikeRequest with bytes where the contract has strings, to send what a
/// well-behaved client never would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawLikeRequest {
    #[prost(bytes = "vec", tag = "1")]
    post_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    user_id: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_requests_are_refused_and_nothing_is_enqueued() -> anyhow::Result<()>
{
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let over_the_limit = likes_api::MAX_REQUEST_BYTES + 1;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", api.addr))?
        .connect()
        .await?;
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await?;
    let status = raw
        .unary::<_, likes_proto::pb::LikeResponse, _>(
            tonic::Request::new(RawLikeRequest {
                post_id: b"p\xff\xfe".to_vec(),
                user_id: b"u".to_vec(),
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static("/likes.v1.LikeService/Like"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("post_id is not UTF-8");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{}", status.message());

    let mut client = api.client.clone();
    let status = client
        .get_like_counts(GetLikeCountsRequest {
            post_ids: vec!["x".repeat(over_the_limit / 100); 100],
        })
        .await
        .expect_err("over the request size limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = client
        .like(LikeRequest {
            post_id: "p".repeat(over_the_limit),
            user_id: "u".into(),
        })
        .await
        .expect_err("over the request size limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.get_error_details().retry_info().is_none(),
        "a request too large fails again: no RetryInfo invites a retry: {status:?}"
    );

    nothing_enqueued_and_unharmed(&env, &mut client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_concurrency_limit_calls_fail_fast_with_resource_exhausted() -> anyhow::Result<()>
{
    let mut env = TestEnv::new();
    env.settings.api.max_concurrent_requests = 2.try_into()?;
    let api = env.spawn_api().await?;
    let clients = [
        api.client.clone(),
        api.new_client().await?,
        api.new_client().await?,
    ];
    let results = likes_testkit::load::likes_at_once(&clients, "p", 300).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert_eq!(ok + refused, 300, "only OK or RESOURCE_EXHAUSTED expected");
    assert!(
        refused > 0,
        "300 concurrent calls against a limit of 2 must see refusals"
    );
    assert!(ok > 0);
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(100)),
            "an overloaded server says when to retry: {status:?}"
        );
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("OVERLOADED")
        );
        assert_eq!(
            status
                .metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok()),
            Some("100"),
            "the same delay for gRPC's own retry policy"
        );
    }
    // Exactly the accepted ones were enqueued (concurrent ones may share a
    // message, so the events are compared, not the messages).
    let accepted: BTreeSet<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| format!("u{i}"))
        .collect();
    let queued = env.take_events(&env.settings.amqp.queue).await?;
    assert_eq!(queued.len(), ok, "one event per accepted Like");
    let queued: BTreeSet<String> = queued.into_iter().map(|e| e.user_id).collect();
    assert_eq!(queued, accepted);
    Ok(())
}
