//! The gRPC over HTTP/2 protocol at the api's door: requests that are not
//! gRPC get HTTP 415 and are not handled; oversized metadata fails its own
//! stream, not the connection.

use likes_proto::pb::{GetLikeCountRequest, LikeRequest};
use likes_testkit::{TestEnv, http2};
use prost::Message;

fn like_body(user: &str) -> bytes::Bytes {
    http2::message(
        &LikeRequest {
            post_id: "p".into(),
            user_id: user.into(),
        }
        .encode_to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_are_not_grpc_get_415_and_are_not_handled() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let (mut client, _driver) = http2::connect(api.addr).await?;
    let like = "/likes.v1.LikeService/Like";

    for content_type in [
        Some("application/json"),
        Some("text/plain"),
        Some("application/grpc+json"),
        None,
    ] {
        let answer = http2::call(
            &mut client,
            http2::request(api.addr, like, content_type),
            like_body("u"),
        )
        .await?;
        assert_eq!(answer.http_status, 415, "{content_type:?}: {answer:?}");
        assert_eq!(answer.grpc_status, None, "{content_type:?}: {answer:?}");
    }
    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        0,
        "nothing enqueued"
    );

    for content_type in ["application/grpc", "application/grpc+proto; charset=x"] {
        let answer = http2::call(
            &mut client,
            http2::request(api.addr, like, Some(content_type)),
            like_body(content_type),
        )
        .await?;
        assert_eq!(answer.http_status, 200, "{content_type}: {answer:?}");
        assert_eq!(answer.grpc_status, Some(0), "{content_type}: {answer:?}");
    }
    assert_eq!(env.queue_depth(&env.settings.amqp.queue).await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_kib_of_metadata_fail_the_stream_not_the_connection() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let (mut client, _driver) = http2::connect(api.addr).await?;
    let path = "/likes.v1.LikeService/GetLikeCount";
    let body = http2::message(
        &GetLikeCountRequest {
            post_id: "p".into(),
        }
        .encode_to_vec(),
    );

    let mut request = http2::request(api.addr, path, Some("application/grpc"));
    request.headers_mut().insert(
        "x-big",
        http::HeaderValue::from_str(&"a".repeat(64 * 1024))?,
    );
    let refused = http2::call(&mut client, request, body.clone()).await;
    match &refused {
        Ok(answer) => assert_eq!(answer.http_status, 431, "{answer:?}"),
        Err(error) => {
            let reset = error
                .downcast_ref::<h2::Error>()
                .is_some_and(|e| e.is_reset() && !e.is_go_away());
            assert!(
                reset,
                "the stream, not the connection, must fail: {error:?}"
            );
        }
    }

    // The same connection still serves.
    let answer = http2::call(
        &mut client,
        http2::request(api.addr, path, Some("application/grpc")),
        body,
    )
    .await?;
    assert_eq!(answer.grpc_status, Some(0), "{answer:?}");
    Ok(())
}
