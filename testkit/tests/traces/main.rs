//! Traces across the queue: the real api and worker in-process, exporting
//! over OTLP/gRPC to a receiver on 127.0.0.1, against the real RabbitMQ and
//! PostgreSQL. A binary of its own, with one test: the OpenTelemetry layer
//! is installed in the process-global subscriber (as the binaries do), and
//! the exporter's channel lives on the test's runtime, so a second test
//! (with a runtime of its own) could not share it.

use anyhow::Context;
use likes_common::config::TelemetrySettings;
use likes_proto::pb::LikeRequest;
use likes_queue::codec::{HeaderExtractor, TRACEPARENT_HEADER};
use likes_service::telemetry::otel::Traces;
use likes_testkit::{
    TestEnv, eventually,
    otlp::{OtlpReceiver, ReceivedSpan},
};
use std::time::Duration;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

const WAIT: Duration = Duration::from_secs(30);

/// Exports what is finished and returns every span received so far.
async fn flushed(traces: &Traces, receiver: &OtlpReceiver) -> anyhow::Result<Vec<ReceivedSpan>> {
    let traces = traces.clone();
    tokio::task::spawn_blocking(move || traces.force_flush()).await??;
    Ok(receiver.spans())
}

/// The Like span of the call that liked `post` as `user`.
fn like_span<'a>(spans: &'a [ReceivedSpan], post: &str, user: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| {
        s.name == "Like"
            && s.attribute("post.id") == Some(post)
            && s.attribute("user.id") == Some(user)
    })
}

/// The publish span of the message that carried `call`: its child, or a
/// span linking to it.
fn publish_span<'a>(spans: &'a [ReceivedSpan], call: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.name == "publish" && (s.is_child_of(call) || s.links_to(call)))
}

/// The batch span that wrote `call`, followed both ways: forward from the
/// call (it is the parent of its message's publish span or links to it;
/// the worker's receive span, a child of that, links to the batch) and
/// back (the batch links to the publish span, which links to the call or
/// is its child).
fn batch_of<'a>(spans: &'a [ReceivedSpan], call: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    let publish = publish_span(spans, call)?;
    if !(publish.is_child_of(call) || call.links_to(publish)) {
        return None;
    }
    let receive = spans
        .iter()
        .find(|s| s.name == "receive" && s.is_child_of(publish))?;
    spans
        .iter()
        .find(|s| s.name == "batch" && s.links_to(publish) && receive.links_to(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_like_s_trace_reaches_the_batch_span_that_wrote_it() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let settings = TelemetrySettings {
        otlp_endpoint: receiver.endpoint(),
        sample_ratio: 1.0,
    };
    let traces = Traces::start(&settings, "likes-test", 1.0)?.context("an endpoint is set")?;
    // The binaries' subscriber minus its log lines: spans at info, as theirs.
    tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(traces.layer())
        .init();

    // The header: a lone Like's message carries its publish span's
    // context, which is in the Like's trace.
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let mut client = api.client.clone();
    client
        .like(LikeRequest {
            post_id: "p-header".into(),
            user_id: "u-header".into(),
        })
        .await?;
    let message = env
        .take_messages(&env.settings.amqp.queue)
        .await?
        .into_iter()
        .next()
        .context("the api published the like")?;
    let headers = message
        .properties
        .headers()
        .as_ref()
        .context("a traced message has headers")?;
    assert!(headers.contains_key(TRACEPARENT_HEADER), "{headers:?}");
    let carried = likes_service::telemetry::otel::extract(&HeaderExtractor(headers));
    assert!(carried.is_valid() && carried.is_sampled(), "{carried:?}");
    let spans = eventually(WAIT, "the lone Like's spans", || async {
        let spans = flushed(&traces, &receiver).await?;
        let found = like_span(&spans, "p-header", "u-header")
            .and_then(|call| Some((call.clone(), publish_span(&spans, call)?.clone())));
        Ok(found)
    })
    .await?;
    let (call, publish) = spans;
    assert_eq!(publish.trace_id, carried.trace_id().to_string());
    assert_eq!(publish.span_id, carried.span_id().to_string());
    assert!(publish.is_child_of(&call), "{publish:?} under {call:?}");
    assert_eq!(call.service, "likes-test");

    // A caller's own trace is continued: a Like whose metadata carries a
    // `traceparent` gets its RPC span as a child of the caller's span.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(LikeRequest {
        post_id: "p-caller".into(),
        user_id: "u-caller".into(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01").parse()?,
    );
    client.like(request).await?;
    let continued = eventually(WAIT, "the caller's Like span", || async {
        let spans = flushed(&traces, &receiver).await?;
        Ok(like_span(&spans, "p-caller", "u-caller").cloned())
    })
    .await?;
    assert_eq!(continued.trace_id, caller_trace, "{continued:?}");
    assert_eq!(continued.parent_span_id, caller_span, "{continued:?}");
    assert_ne!(
        call.trace_id, caller_trace,
        "a call without one starts its own"
    );
    api.stop().await?;
    drop(env);

    // Through the worker: one lone Like, then 100 concurrent ones packed
    // into a few messages, each followed to the batch that wrote it. (Not
    // more than otel::MAX_LINKS: a message carrying more traced calls
    // connects only that many; the publisher's unit tests cover the bound.)
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let worker = env.spawn_worker().await?;
    let mut client = api.client.clone();
    client
        .like(LikeRequest {
            post_id: "p-lone".into(),
            user_id: "u-lone".into(),
        })
        .await?;
    env.wait_for_count("p-lone", 1, WAIT).await?;
    let mut calls = Vec::new();
    for n in 0..100 {
        let mut client = api.client.clone();
        calls.push(tokio::spawn(async move {
            client
                .like(LikeRequest {
                    post_id: "p-many".into(),
                    user_id: format!("u{n}"),
                })
                .await
        }));
    }
    for call in calls {
        call.await??;
    }
    env.wait_for_count("p-many", 100, WAIT).await?;
    let messages = api.publish_stats.messages();
    assert!(
        messages < 101,
        "the likes shared messages: {messages} messages for 101 likes"
    );

    let users: Vec<(String, String)> = std::iter::once(("p-lone".to_owned(), "u-lone".to_owned()))
        .chain((0..100).map(|n| ("p-many".to_owned(), format!("u{n}"))))
        .collect();
    let spans = eventually(WAIT, "every Like followed to its batch", || async {
        let spans = flushed(&traces, &receiver).await?;
        let connected = users.iter().all(|(post, user)| {
            like_span(&spans, post, user)
                .and_then(|call| batch_of(&spans, call))
                .is_some()
        });
        Ok(connected.then_some(spans))
    })
    .await
    .map_err(|error| {
        let spans = receiver.spans();
        let lost: Vec<String> = users
            .iter()
            .filter_map(|(post, user)| {
                let Some(call) = like_span(&spans, post, user) else {
                    return Some(format!("{user}: no Like span"));
                };
                let Some(publish) = publish_span(&spans, call) else {
                    return Some(format!("{user}: no publish span for {call:?}"));
                };
                let receive = spans
                    .iter()
                    .find(|s| s.name == "receive" && s.is_child_of(publish));
                batch_of(&spans, call).is_none().then(|| {
                    format!(
                        "{user}: forward {}, receive {receive:?}, publish {publish:?}",
                        publish.is_child_of(call) || call.links_to(publish)
                    )
                })
            })
            .take(3)
            .collect();
        let publishes: Vec<String> = spans
            .iter()
            .filter(|s| s.name != "Like")
            .map(|s| {
                format!(
                    "{} {:?}/{:?} links {} parent {}",
                    s.name,
                    s.attribute("messaging.batch.message_count"),
                    s.attribute("messaging.traced_calls"),
                    s.links.len(),
                    s.parent_span_id
                )
            })
            .collect();
        error.context(format!(
            "{} spans, {} messages; {publishes:#?}; {lost:#?}",
            spans.len(),
            api.publish_stats.messages()
        ))
    })?;

    // The lone Like: its message's span is its child, so the link the
    // batch holds is into the Like's own trace.
    let call = like_span(&spans, "p-lone", "u-lone").context("the lone Like's span")?;
    let publish = publish_span(&spans, call).context("its publish span")?;
    let batch = batch_of(&spans, call).context("its batch span")?;
    assert!(publish.is_child_of(call));
    assert!(
        batch.links.iter().any(|(trace, _)| *trace == call.trace_id),
        "the batch links into the Like's trace: {batch:?}"
    );
    assert_eq!(batch.attribute("batch.linked_messages"), Some("1"));

    // The packed Likes: each message's span is a child of one of its
    // calls and links to the others.
    let publishes: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.name == "publish" && s.attribute("messaging.batch.message_count") != Some("1")
        })
        .collect();
    assert!(!publishes.is_empty(), "some message carried several Likes");
    for publish in publishes {
        let carried: usize = publish
            .attribute("messaging.traced_calls")
            .context("traced calls recorded")?
            .parse()?;
        assert_eq!(publish.links.len() + 1, carried, "{publish:?}");
        assert_eq!(publish.attribute("outcome"), Some("confirmed"));
    }

    worker.stop().await?;
    api.stop().await?;
    traces.shutdown().await;
    Ok(())
}
