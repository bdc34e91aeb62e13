//! OpenTelemetry's standard variables, as the OpenTelemetry Operator sets
//! them, on the real binary: `OTEL_EXPORTER_OTLP_ENDPOINT` turns tracing on,
//! `OTEL_SERVICE_NAME` names the service, `service.version` is on the
//! resource, and a JSON log line written inside a traced call carries the
//! call's `trace_id` and `span_id`.

use likes_proto::pb::GetLikeCountRequest;
use likes_testkit::{
    TestEnv, eventually,
    otlp::OtlpReceiver,
    process::{ServiceProcess, command},
    proxy::FaultProxy,
};
use std::{path::Path, time::Duration};

#[tokio::test(flavor = "multi_thread")]
async fn otel_variables_name_the_service_and_json_logs_carry_the_trace() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let env = TestEnv::new();
    env.db().await?;
    // PostgreSQL behind a proxy, cut below, so that a read logs its failure
    // inside its call's span.
    let proxy = FaultProxy::start("127.0.0.1:5432".parse()?).await?;
    let mut settings = env.settings_with_database_at(proxy.addr())?;
    let port = likes_testkit::free_port()?;
    settings.api.listen = format!("127.0.0.1:{port}").parse()?;
    settings.log.format = likes_common::config::LogFormat::Json;
    let mut api = command(Path::new(crate::API), &settings);
    api.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", "likes-api-canary")
        .env("RUST_LOG", "warn,likes_api=debug");
    let api = ServiceProcess::spawn_logged_command(api)?;
    let mut client = crate::connect(port).await?;
    // Serving (a read answered) before the database goes away.
    eventually(Duration::from_secs(20), "the api to serve", || {
        let mut client = client.clone();
        async move {
            let request = GetLikeCountRequest {
                post_id: "warm".into(),
            };
            Ok(client.get_like_count(request).await.ok().map(drop))
        }
    })
    .await?;

    proxy.cut();
    let post = "never-cached";
    let status = client
        .get_like_count(GetLikeCountRequest {
            post_id: post.into(),
        })
        .await
        .expect_err("the database is away");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    let span = eventually(Duration::from_secs(20), "the call's span exported", || {
        let spans = receiver.spans();
        async move {
            Ok(spans
                .into_iter()
                .find(|s| s.name == "GetLikeCount" && s.attribute("post.id") == Some(post)))
        }
    })
    .await?;
    assert_eq!(span.service, "likes-api-canary");
    assert!(
        span.resource.contains(&(
            "service.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned()
        )),
        "{:?}",
        span.resource
    );
    // The log line of the failed read, inside the call: its trace.
    let logs = api.logs();
    let line = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("database read"))
        })
        .unwrap_or_else(|| panic!("no log line of the failed read:\n{logs}"));
    assert_eq!(
        line["trace_id"].as_str(),
        Some(span.trace_id.as_str()),
        "{line}"
    );
    assert_eq!(
        line["span_id"].as_str(),
        Some(span.span_id.as_str()),
        "{line}"
    );
    // A line outside any call carries none.
    assert!(
        logs.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .any(|line| line.get("trace_id").is_none()),
        "{logs}"
    );
    Ok(())
}
