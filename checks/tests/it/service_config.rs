//! The gRPC service config of `docs/api.md` ("Errors and retries") is meant to
//! be pasted into clients as it is: it must be valid JSON, name only methods
//! the contract has, and retry only what is safe to retry.

use crate::repo;

/// The JSON block that follows the `service-config` marker of the docs.
fn readme_service_config() -> serde_json::Value {
    let readme = repo::read("docs/api.md");
    let (_, after) = readme
        .split_once("<!-- service-config")
        .expect("docs/api.md marks its service config");
    let block = after
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(json, _)| json)
        .expect("a ```json block after the marker");
    serde_json::from_str(block).unwrap_or_else(|e| panic!("the service config is not JSON: {e}"))
}

/// `rpc` names of `likes.v1.LikeService` in the .proto file.
fn contract_methods() -> Vec<String> {
    let proto = repo::read("proto/proto/likes/v1/likes.proto");
    assert!(proto.contains("package likes.v1;"));
    proto
        .lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .filter_map(|rest| rest.split_once('(').map(|(name, _)| name.trim().to_owned()))
        .collect()
}

/// The rpcs that answer with a stream.
fn streaming_methods() -> Vec<String> {
    let proto = repo::read("proto/proto/likes/v1/likes.proto");
    proto
        .lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .filter(|rest| rest.contains("returns (stream "))
        .filter_map(|rest| rest.split_once('(').map(|(name, _)| name.trim().to_owned()))
        .collect()
}

#[test]
fn the_readme_service_config_names_real_methods_and_retries_only_unavailable() {
    let config = readme_service_config();
    let methods = contract_methods();
    let streams = streaming_methods();
    assert!(methods.contains(&"Like".to_owned()), "{methods:?}");
    let mut configured = Vec::new();
    for method_config in config["methodConfig"].as_array().expect("methodConfig") {
        for name in method_config["name"].as_array().expect("name") {
            assert_eq!(name["service"], "likes.v1.LikeService", "{name}");
            let method = name["method"].as_str().expect("a method");
            assert!(methods.iter().any(|m| m == method), "no rpc {method}");
            configured.push(method.to_owned());
        }
        // A stream lasts as long as its client wants: no deadline for it.
        let streaming = method_config["name"]
            .as_array()
            .expect("name")
            .iter()
            .all(|name| streams.iter().any(|s| name["method"] == s.as_str()));
        match method_config["timeout"].as_str() {
            Some(timeout) => assert!(
                timeout.ends_with('s') && timeout.trim_end_matches('s').parse::<f64>().is_ok(),
                "gRPC durations are seconds with an s suffix: {timeout}"
            ),
            None => assert!(streaming, "a unary rpc without a deadline: {method_config}"),
        }
        let policy = &method_config["retryPolicy"];
        let attempts = policy["maxAttempts"].as_u64().expect("maxAttempts");
        assert!((2..=5).contains(&attempts), "gRPC caps maxAttempts at 5");
        for key in ["initialBackoff", "maxBackoff"] {
            assert!(
                policy[key].as_str().is_some_and(|d| d.ends_with('s')),
                "{key}"
            );
        }
        assert!(
            policy["backoffMultiplier"]
                .as_f64()
                .is_some_and(|m| m > 0.0)
        );
        // RESOURCE_EXHAUSTED also means "too large", which never succeeds.
        assert_eq!(
            policy["retryableStatusCodes"],
            serde_json::json!(["UNAVAILABLE"])
        );
    }
    configured.sort();
    let mut all = methods.clone();
    all.sort();
    assert_eq!(
        configured, all,
        "every rpc has a deadline and a retry policy"
    );
}
