//! The Kubernetes example (`deploy/k8s`). Its schemas are the validators'
//! business: kubernetes-validate (strict, two pinned Kubernetes versions)
//! for the Kubernetes resources, check-jsonschema against the CRD schemas
//! of KEDA 2.16 and the Prometheus Operator 0.80 for their resources, all
//! installed by `make tools`. What no schema
//! knows is checked here: every `LIKES__*` variable a pod gets names a
//! setting, and the secret ones come from a Secret only; each container
//! (of a Deployment or a Job) runs a binary the Dockerfile builds, from the
//! image of the workspace's version, as the Dockerfile's user; a
//! Deployment's liveness and startup probes ask
//! `/healthz` and readiness `/readyz`, on the port of the metrics address
//! the container's settings give it.

use crate::compose::{Defaults, text};
use crate::repo;
use likes_testkit::tools;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::{collections::BTreeMap, process::Command};

/// The oldest Kubernetes the example needs (its preStop `sleep` action is
/// GA from 1.34) and the newest that kubernetes-validate 1.37.0 ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.34.0", "1.37.0"];

/// Settings that carry credentials: a pod gets them from a Secret only.
const SECRET_SETTINGS: [&str; 3] = [
    "LIKES__AMQP__URL",
    "LIKES__DATABASE__URL",
    "LIKES__API__AUTH_TOKEN",
];

/// The example's YAML files: the Kubernetes ones, and the custom resources
/// (KEDA's, the Prometheus Operator's).
fn files() -> (Vec<String>, Vec<String>) {
    let list = |dir: &str| -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(repo::root().join(dir))
            .expect("the example's folder")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        files.sort();
        files
    };
    let mut custom = list("deploy/k8s/keda");
    custom.extend(list("deploy/k8s/monitoring"));
    (list("deploy/k8s"), custom)
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().expect("the validator runs");
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[test]
#[ignore = "needs kubernetes-validate and check-jsonschema from `make tools`; `make test` runs it"]
fn k8s_manifests_follow_the_kubernetes_and_crd_schemas() {
    let (native, custom) = files();
    let mut validate = Command::new(tools::require("kubernetes-validate"));
    validate.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        validate.args(["--kubernetes-version", version]);
    }
    validate.args(native.iter().map(|f| repo::root().join(f)));
    if let Err(report) = run(&mut validate) {
        panic!("{report}");
    }
    // check-jsonschema reads one document a file: each custom resource is
    // written apart, as JSON, and checked against its kind's schema.
    let scratch = tempfile::tempdir().expect("a temporary directory");
    for (i, doc) in custom
        .iter()
        .flat_map(|file| documents(&repo::read(file)))
        .enumerate()
    {
        let kind = doc.get("kind").map(text).unwrap_or_default().to_lowercase();
        let path = scratch.path().join(format!("{i}-{kind}.json"));
        std::fs::write(&path, serde_json::to_string(&doc).expect("JSON values"))
            .expect("a writable temporary directory");
        let schema = tools::dir().join(format!("crds/{kind}.json"));
        let mut check = Command::new(tools::require("check-jsonschema"));
        check.arg("--schemafile").arg(&schema).arg(&path);
        if let Err(report) = run(&mut check) {
            panic!("{kind}: {report}");
        }
    }
}

/// What the image is, from the repository's own files: its reference, the
/// binaries the Dockerfile builds and the user it runs them as.
fn image() -> (String, Vec<String>, i64) {
    let manifest: toml::Table = repo::read("Cargo.toml").parse().expect("TOML");
    let version = manifest["workspace"]["package"]["version"]
        .as_str()
        .expect("a workspace version");
    let dockerfile = repo::read("Dockerfile");
    let words: Vec<&str> = dockerfile.split_whitespace().collect();
    let binaries = words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect();
    let uid = words
        .windows(2)
        .find(|w| w[0] == "--uid")
        .and_then(|w| w[1].parse().ok())
        .expect("the Dockerfile creates its user with --uid");
    (format!("likes:{version}"), binaries, uid)
}

fn seq(value: Option<&Value>) -> Vec<Value> {
    value
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
}

fn strings(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}

/// Every disagreement of the example's containers with the settings, the
/// image and the probe paths.
fn problems(docs: &[Value]) -> Vec<String> {
    let defaults = Defaults::load();
    let (reference, binaries, uid) = image();
    let named = |kind: &str| -> BTreeMap<String, &Value> {
        docs.iter()
            .filter(|d| d.get("kind").map(text).as_deref() == Some(kind))
            .map(|d| {
                (
                    d["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    d,
                )
            })
            .collect()
    };
    let (config_maps, secrets) = (named("ConfigMap"), named("Secret"));
    let mut found = Vec::new();
    let (deployments, jobs) = (named("Deployment"), named("Job"));
    let workloads = deployments
        .values()
        .map(|d| (d, true))
        .chain(jobs.values().map(|j| (j, false)));
    for (workload, serves) in workloads {
        let pod = &workload["spec"]["template"]["spec"];
        for container in seq(pod.get("containers")) {
            let who = container.get("name").map(text).unwrap_or_default();
            // Every variable and whether it came from a Secret.
            let mut env: BTreeMap<String, (String, bool)> = BTreeMap::new();
            for from in seq(container.get("envFrom")) {
                if let Some(name) = from.get("configMapRef").and_then(|r| r.get("name")) {
                    let data = config_maps.get(&text(name)).map(|m| strings(m.get("data")));
                    env.extend(
                        data.unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, (v, false))),
                    );
                }
                if let Some(name) = from.get("secretRef").and_then(|r| r.get("name")) {
                    let secret = secrets
                        .get(&text(name))
                        .map(|s| strings(s.get("stringData")));
                    env.extend(
                        secret
                            .unwrap_or_default()
                            .into_keys()
                            .map(|k| (k, (String::new(), true))),
                    );
                }
            }
            for var in seq(container.get("env")) {
                let secret = var
                    .get("valueFrom")
                    .and_then(|v| v.get("secretKeyRef"))
                    .is_some();
                let value = var.get("value").map(text).unwrap_or_default();
                env.insert(
                    var.get("name").map(text).unwrap_or_default(),
                    (value, secret),
                );
            }
            for (variable, (_, secret)) in &env {
                if defaults.names_setting(variable) == Some(false) {
                    found.push(format!("{who}: {variable} is not a setting"));
                }
                if SECRET_SETTINGS.contains(&variable.as_str()) != *secret {
                    found.push(format!(
                        "{who}: {variable} must come from a Secret, and only it"
                    ));
                }
            }
            let image = container.get("image").map(text).unwrap_or_default();
            if !image.ends_with(&reference) {
                found.push(format!("{who}: image {image} is not {reference}"));
            }
            let binary = seq(container.get("command"))
                .first()
                .map(text)
                .unwrap_or_default();
            if !binaries.contains(&binary) {
                found.push(format!(
                    "{who}: runs {binary:?}, which the Dockerfile does not build"
                ));
            }
            if pod["securityContext"]["runAsUser"].as_i64() != Some(uid) {
                found.push(format!("{who}: does not run as the image's user {uid}"));
            }
            if !serves {
                continue;
            }
            // The probes ask the metrics port of the container's settings.
            let role = binary.trim_start_matches("likes-");
            let variable = format!("LIKES__{}__METRICS_LISTEN", role.to_uppercase());
            let listen = env.get(&variable).map_or_else(
                || {
                    defaults.settings[role]["metrics_listen"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                },
                |(value, _)| value.clone(),
            );
            let port = listen
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u64>().ok());
            if !listen.starts_with("0.0.0.0:") {
                found.push(format!(
                    "{who}: {variable} {listen:?} is not reachable by the kubelet"
                ));
            }
            let ports: BTreeMap<String, u64> = seq(container.get("ports"))
                .iter()
                .filter_map(|p| Some((p.get("name").map(text)?, p.get("containerPort")?.as_u64()?)))
                .collect();
            for (probe, path) in [
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ] {
                let get = &container[probe]["httpGet"];
                let probe_port = match &get["port"] {
                    Value::Number(n) => n.as_u64(),
                    other => ports.get(&text(other)).copied(),
                };
                if get["path"].as_str() != Some(path) || probe_port != port {
                    found.push(format!("{who}: {probe} must ask {path} on port {port:?}"));
                }
            }
        }
    }
    found
}

fn example(edit: impl Fn(String) -> String) -> Vec<Value> {
    let (native, _) = files();
    native
        .iter()
        .flat_map(|f| documents(&edit(repo::read(f))))
        .collect()
}

#[test]
fn k8s_manifests_agree_with_the_settings_the_image_and_the_probes() {
    let found = problems(&example(|text| text));
    assert!(found.is_empty(), "{found:#?}");
    // Each check can fail.
    for (from, to, expected) in [
        (
            "LIKES__LOG__FORMAT",
            "LIKES__LOG__FORMATT",
            "is not a setting",
        ),
        ("path: /readyz", "path: /ready", "readinessProbe must ask"),
        ("runAsUser: 10001", "runAsUser: 1000", "image's user"),
        (
            "[\"likes-admin\", \"migrate\"]",
            "[\"likes-migrate\"]",
            "migrate: runs \"likes-migrate\"",
        ),
    ] {
        let found = problems(&example(|text| text.replace(from, to)));
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{from} -> {to}: {found:#?}"
        );
    }
}
