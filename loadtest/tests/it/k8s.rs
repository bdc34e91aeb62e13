//! The Kubernetes example (`deploy/k8s`): valid against the JSON schemas of
//! pinned Kubernetes versions (kubernetes-validate, strict: no unknown
//! field), its KEDA resources against schemas of KEDA's CRDs (check-jsonschema,
//! made strict here), both installed by `make tools`; and in agreement with
//! the image, the binaries and `config/default.toml` beyond what a schema can
//! say:
//!
//! - every `LIKES__*` variable a pod gets names a setting, and the secret
//!   settings come from a Secret only;
//! - each container runs a binary the Dockerfile builds, from the image of
//!   the workspace's version, as the Dockerfile's user;
//! - liveness and startup probes ask `/healthz`, readiness `/readyz`, on the
//!   port of the metrics address the container's settings give it (on every
//!   address, not loopback); the api exposes the port of its gRPC address;
//! - every reference resolves: ConfigMaps and Secrets, Service and
//!   PodDisruptionBudget selectors and target ports, the ScaledObject's
//!   target, authentication, Secret key and queue;
//! - the grace period covers the preStop sleep and the longest wait of a
//!   drain.
//!
//! Each check also refuses a broken copy, or it would prove nothing.

use crate::compose::{Defaults, text};
use crate::repo;
use likes_testkit::tools;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

/// The oldest Kubernetes the example needs (its preStop `sleep` action is
/// GA from 1.34) and the newest that kubernetes-validate 1.37.0 ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.34.0", "1.37.0"];

/// KEDA's CRD schemas that `make tools` writes (KEDA 2.16).
const KEDA_SCHEMAS: &str = "keda-2.16";

/// What the binaries serve beside `/metrics` on their metrics listener:
/// liveness (the process runs; never depends on the broker) and readiness
/// (the api is connected to the broker, the worker consumes).
const LIVENESS_PATH: &str = "/healthz";
const READINESS_PATH: &str = "/readyz";

/// Settings that carry credentials: a pod gets them from a Secret only.
const SECRET_SETTINGS: [&str; 3] = [
    "LIKES__AMQP__URL",
    "LIKES__DATABASE__URL",
    "LIKES__API__AUTH_TOKEN",
];

const DIR: &str = "deploy/k8s";

/// Every YAML file under `deploy/k8s`, relative to the workspace root.
fn manifest_files() -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("deploy/k8s is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    let root = repo::root();
    let mut found = Vec::new();
    walk(&root.join(DIR), &mut found);
    let mut files: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under the root")
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests: {files:?}");
    files
}

/// One resource of the example, and the file it is in.
#[derive(Clone)]
struct Resource {
    file: String,
    doc: Value,
}

impl Resource {
    fn kind(&self) -> String {
        self.doc.get("kind").map(text).unwrap_or_default()
    }

    fn name(&self) -> String {
        self.doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .map(text)
            .unwrap_or_default()
    }

    fn api_group(&self) -> String {
        let api_version = self.doc.get("apiVersion").map(text).unwrap_or_default();
        match api_version.split_once('/') {
            Some((group, _)) => group.to_owned(),
            None => String::new(),
        }
    }

    fn is_keda(&self) -> bool {
        self.api_group().ends_with("keda.sh")
    }

    fn at<'a>(&'a self, path: &[&str]) -> Option<&'a Value> {
        path.iter()
            .try_fold(&self.doc, |value, key| value.get(*key))
    }
}

/// The resources of `files`, each file's text through `edit` (the identity,
/// or a change that breaks it).
fn resources(files: &[String], edit: impl Fn(&str, String) -> String) -> Vec<Resource> {
    let mut found = Vec::new();
    for file in files {
        let text = edit(file, repo::read(file));
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc = Value::deserialize(document).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !doc.is_null() {
                found.push(Resource {
                    file: file.clone(),
                    doc,
                });
            }
        }
    }
    found
}

/// The example as committed.
fn committed() -> Vec<Resource> {
    resources(&manifest_files(), |_, text| text)
}

/// The example with `from` replaced by `to` in `file`, which must contain it.
fn broken(file: &str, from: &str, to: &str) -> Vec<Resource> {
    resources(&manifest_files(), |name, text| {
        if name != file {
            return text;
        }
        assert!(text.contains(from), "{file} has no {from:?}");
        text.replace(from, to)
    })
}

/// A folder of one test's files, removed when dropped.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("likes-k8s-")
        .tempdir()
        .expect("a temporary directory")
}

/// Writes each resource to a JSON file of its own in `dir` (named after its
/// file, position and kind, so a validator's message says which it is).
fn write_each(resources: &[&Resource], dir: &Path) -> Vec<PathBuf> {
    resources
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let stem = r.file.trim_start_matches("deploy/k8s/").replace('/', "-");
            let path = dir.join(format!("{stem}-{i}-{}.json", r.kind().to_lowercase()));
            let json = serde_json::to_string(&r.doc).expect("YAML of JSON values");
            std::fs::write(&path, json).expect("the scratch folder is writable");
            path
        })
        .collect()
}

/// What kubernetes-validate says of every Kubernetes (not KEDA) resource:
/// `Ok` when each passed under every pinned version, else its report.
fn kubernetes_problems(validator: &Path, resources: &[Resource]) -> Result<String, String> {
    let dir = scratch();
    let native: Vec<&Resource> = resources.iter().filter(|r| !r.is_keda()).collect();
    let files = write_each(&native, dir.path());
    let mut command = Command::new(validator);
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    let output = command
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = report.lines().filter(|l| l.starts_with("INFO ")).count();
    // A kind or apiVersion without a schema is only a warning to it
    // ("Couldn't find schema"), so count the passes as well.
    if output.status.success() && passed == native.len() * KUBERNETES_VERSIONS.len() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// KEDA's schema of `kind` with `additionalProperties: false` wherever an
/// object lists its properties, as `kubectl apply --validate=strict` refuses
/// unknown fields (the models it comes from ignore them).
fn strict_keda_schema(kind: &str) -> serde_json::Value {
    fn forbid_unknown(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), false.into());
                }
                map.values_mut().for_each(forbid_unknown);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(forbid_unknown),
            _ => {}
        }
    }
    let path = tools::dir()
        .join(KEDA_SCHEMAS)
        .join(format!("{}.json", kind.to_lowercase()));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (make tools)", path.display()));
    let mut schema: serde_json::Value = serde_json::from_str(&text).expect("a JSON schema");
    forbid_unknown(&mut schema);
    schema
}

/// What check-jsonschema says of every KEDA resource against its kind's
/// schema; a KEDA kind without one is a problem too.
fn keda_problems(checker: &Path, resources: &[Resource]) -> Result<(), String> {
    let dir = scratch();
    let mut by_kind: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for r in resources.iter().filter(|r| r.is_keda()) {
        by_kind.entry(r.kind()).or_default().push(r);
    }
    if by_kind.is_empty() {
        return Err("no KEDA resource".into());
    }
    let mut report = String::new();
    for (kind, of_kind) in by_kind {
        if !tools::dir()
            .join(KEDA_SCHEMAS)
            .join(format!("{}.json", kind.to_lowercase()))
            .is_file()
        {
            report.push_str(&format!("no KEDA schema for kind {kind}\n"));
            continue;
        }
        let schema = dir.path().join(format!("{kind}.schema.json"));
        std::fs::write(&schema, strict_keda_schema(&kind).to_string())
            .expect("the scratch folder is writable");
        let files = write_each(&of_kind, dir.path());
        let output = Command::new(checker)
            .arg("--schemafile")
            .arg(&schema)
            .args(&files)
            .output()
            .expect("check-jsonschema runs");
        if !output.status.success() {
            report.push_str(&String::from_utf8_lossy(&output.stdout));
            report.push_str(&String::from_utf8_lossy(&output.stderr));
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

#[test]
fn k8s_manifests_follow_the_kubernetes_schemas() {
    let Some(validator) = tools::installed("kubernetes-validate") else {
        return;
    };
    if let Err(report) = kubernetes_problems(&validator, &committed()) {
        panic!("{report}");
    }
    let misspelt = broken("deploy/k8s/api.yaml", "readinessProbe:", "readinesProbe:");
    let report = kubernetes_problems(&validator, &misspelt).expect_err("a misspelt field passed");
    assert!(
        report.contains("'readinesProbe' was unexpected"),
        "{report}"
    );
    let unknown_kind = broken(
        "deploy/k8s/worker.yaml",
        "kind: PodDisruptionBudget",
        "kind: PodDisruptionBudgets",
    );
    let report =
        kubernetes_problems(&validator, &unknown_kind).expect_err("an unknown kind passed");
    assert!(report.contains("Couldn't find schema"), "{report}");
}

#[test]
fn keda_manifests_follow_the_keda_crds() {
    let Some(checker) = tools::installed("check-jsonschema") else {
        return;
    };
    if let Err(report) = keda_problems(&checker, &committed()) {
        panic!("{report}");
    }
    let misspelt = broken(
        "deploy/k8s/keda/worker-autoscaling.yaml",
        "minReplicaCount:",
        "minReplicasCount:",
    );
    let report = keda_problems(&checker, &misspelt).expect_err("a misspelt field passed");
    assert!(
        report.contains("'minReplicasCount' was unexpected"),
        "{report}"
    );
    let wrong_type = broken(
        "deploy/k8s/keda/worker-autoscaling.yaml",
        "maxReplicaCount: 8",
        "maxReplicaCount: eight",
    );
    keda_problems(&checker, &wrong_type).expect_err("a count that is no number passed");
}

/// What the image is, from the repository's own files.
struct Image {
    /// `likes:<workspace version>`, from any registry.
    reference: String,
    /// The binaries the Dockerfile builds into it.
    binaries: Vec<String>,
    /// The user the Dockerfile runs them as.
    uid: i64,
}

impl Image {
    fn load() -> Self {
        let manifest: toml::Table = repo::read("Cargo.toml")
            .parse()
            .expect("Cargo.toml is TOML");
        let version = manifest["workspace"]["package"]["version"]
            .as_str()
            .expect("a workspace version")
            .to_owned();
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
        Self {
            reference: format!("likes:{version}"),
            binaries,
            uid,
        }
    }
}

fn seq(value: Option<&Value>) -> &[Value] {
    value
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A label mapping as strings.
fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}

/// Whether every label of `selector` is among `labels` (an empty selector
/// selects nothing here: the example never means everything).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Where a variable of a container comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Literal(String),
    ConfigMap(String),
    Secret(String),
}

/// The variables a container gets, with their sources, and the references
/// that name no resource of the example.
fn environment(
    container: &Value,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
    secrets: &BTreeMap<String, Vec<String>>,
    found: &mut Vec<String>,
    who: &str,
) -> BTreeMap<String, Source> {
    let mut env = BTreeMap::new();
    for from in seq(container.get("envFrom")) {
        if let Some(name) = from
            .get("configMapRef")
            .and_then(|r| r.get("name"))
            .map(text)
        {
            match config_maps.get(&name) {
                Some(data) => env.extend(
                    data.iter()
                        .map(|(k, v)| (k.clone(), Source::ConfigMap(v.clone()))),
                ),
                None => found.push(format!("{who}: envFrom names no ConfigMap {name}")),
            }
        }
        if let Some(name) = from.get("secretRef").and_then(|r| r.get("name")).map(text) {
            match secrets.get(&name) {
                Some(keys) => env.extend(
                    keys.iter()
                        .map(|k| (k.clone(), Source::Secret(name.clone()))),
                ),
                None => found.push(format!("{who}: envFrom names no Secret {name}")),
            }
        }
    }
    for var in seq(container.get("env")) {
        let name = var.get("name").map(text).unwrap_or_default();
        let source = if let Some(value) = var.get("value") {
            Source::Literal(text(value))
        } else if let Some(reference) = var.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
            Source::Secret(reference.get("name").map(text).unwrap_or_default())
        } else if let Some(reference) = var.get("valueFrom").and_then(|v| v.get("configMapKeyRef"))
        {
            let map = reference.get("name").map(text).unwrap_or_default();
            let key = reference.get("key").map(text).unwrap_or_default();
            let value = config_maps.get(&map).and_then(|d| d.get(&key)).cloned();
            Source::ConfigMap(value.unwrap_or_default())
        } else {
            Source::Literal(String::new())
        };
        env.insert(name, source);
    }
    env
}

/// The value a container sees for setting `variable`: its own, else the
/// default of `config/default.toml`.
fn setting_value(env: &BTreeMap<String, Source>, defaults: &Defaults, variable: &str) -> String {
    match env.get(variable) {
        Some(Source::Literal(v) | Source::ConfigMap(v)) => v.clone(),
        _ => {
            let lower = variable.to_lowercase();
            let mut parts = lower.trim_start_matches("likes__").split("__");
            let (section, key) = (parts.next(), parts.next());
            section
                .and_then(|s| defaults.settings.get(s))
                .and_then(|s| s.get(key?))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default()
        }
    }
}

/// A container's ports by name.
fn container_ports(container: &Value) -> BTreeMap<String, u16> {
    seq(container.get("ports"))
        .iter()
        .filter_map(|p| {
            let port = p.get("containerPort")?.as_u64()?;
            let name = p.get("name").map(text).unwrap_or_default();
            Some((name, u16::try_from(port).ok()?))
        })
        .collect()
}

/// The port a probe or a Service's `targetPort` means: a number, or the
/// name of one of the container's ports.
fn resolve_port(port: Option<&Value>, ports: &BTreeMap<String, u16>) -> Option<u16> {
    match port? {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        other => ports.get(&text(other)).copied(),
    }
}

/// The seconds a preStop hook waits: its `sleep` action, or `sleep N` run.
fn pre_stop_seconds(container: &Value) -> Option<u64> {
    let hook = container.get("lifecycle")?.get("preStop")?;
    if let Some(sleep) = hook.get("sleep") {
        return sleep.get("seconds")?.as_u64();
    }
    let command = seq(hook.get("exec").and_then(|e| e.get("command")));
    let words: Vec<String> = command.iter().map(text).collect();
    let sleep = words
        .iter()
        .position(|w| w == "sleep" || w.ends_with("/sleep"))?;
    words.get(sleep + 1)?.parse().ok()
}

fn millis_setting(defaults: &Defaults, section: &str, key: &str) -> u64 {
    defaults.settings[section][key]
        .as_integer()
        .and_then(|v| u64::try_from(v).ok())
        .expect("a duration in milliseconds")
}

/// Every disagreement of the example with the image, the binaries and the
/// defaults.
fn problems(resources: &[Resource], defaults: &Defaults, image: &Image) -> Vec<String> {
    let mut found = Vec::new();
    let of_kind =
        |kind: &str| -> Vec<&Resource> { resources.iter().filter(|r| r.kind() == kind).collect() };
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = of_kind("ConfigMap")
        .iter()
        .map(|r| (r.name(), labels(r.at(&["data"]))))
        .collect();
    let secrets: BTreeMap<String, Vec<String>> = of_kind("Secret")
        .iter()
        .map(|r| {
            let mut keys: Vec<String> = labels(r.at(&["stringData"])).into_keys().collect();
            keys.extend(labels(r.at(&["data"])).into_keys());
            (r.name(), keys)
        })
        .collect();
    for (name, data) in &config_maps {
        for key in data.keys() {
            if SECRET_SETTINGS.contains(&key.as_str()) {
                found.push(format!("ConfigMap {name}: holds {key}, a secret"));
            }
        }
    }

    let drain_s = millis_setting(defaults, "api", "confirm_timeout_ms")
        .max(millis_setting(defaults, "database", "connect_timeout_ms"))
        .div_ceil(1000);
    // (pod labels, container ports, binary) of each Deployment, by name.
    let mut deployments = BTreeMap::new();
    for deployment in of_kind("Deployment") {
        let name = deployment.name();
        let pod_labels = labels(deployment.at(&["spec", "template", "metadata", "labels"]));
        let selector = labels(deployment.at(&["spec", "selector", "matchLabels"]));
        if !selects(&selector, &pod_labels) {
            found.push(format!("{name}: its selector does not select its pods"));
        }
        let pod = deployment
            .at(&["spec", "template", "spec"])
            .cloned()
            .unwrap_or_default();
        let grace = pod
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        let pod_user = pod.get("securityContext").and_then(|s| s.get("runAsUser"));
        for container in seq(pod.get("containers")) {
            let who = format!(
                "{name}/{}",
                container.get("name").map(text).unwrap_or_default()
            );
            let reference = container.get("image").map(text).unwrap_or_default();
            // Any registry's copy: `registry.example.com/likes:0.1.0` too.
            let from_registry = reference
                .strip_suffix(&image.reference)
                .is_some_and(|registry| registry.is_empty() || registry.ends_with('/'));
            if !from_registry {
                found.push(format!("{who}: image {reference}, not {}", image.reference));
            }
            let user = container
                .get("securityContext")
                .and_then(|s| s.get("runAsUser"))
                .or(pod_user)
                .and_then(Value::as_i64);
            if user != Some(image.uid) {
                found.push(format!(
                    "{who}: runs as user {user:?}, the image's is {}",
                    image.uid
                ));
            }
            let binary = seq(container.get("command"))
                .first()
                .map(text)
                .unwrap_or_default();
            if !image.binaries.contains(&binary) {
                found.push(format!(
                    "{who}: runs {binary:?}, which the Dockerfile does not build"
                ));
            }
            for resource in ["cpu", "memory"] {
                if container
                    .get("resources")
                    .and_then(|r| r.get("requests"))
                    .and_then(|r| r.get(resource))
                    .is_none()
                {
                    found.push(format!("{who}: requests no {resource}"));
                }
            }

            let env = environment(container, &config_maps, &secrets, &mut found, &who);
            for (variable, source) in &env {
                if defaults.names_setting(variable) == Some(false) {
                    found.push(format!("{who}: gets {variable}, which is no setting"));
                }
                let secret = matches!(source, Source::Secret(_));
                if SECRET_SETTINGS.contains(&variable.as_str()) && !secret {
                    found.push(format!("{who}: gets {variable} from outside a Secret"));
                }
            }

            let ports = container_ports(container);
            let (metrics_variable, grpc_variable) = match binary.as_str() {
                "likes-api" => ("LIKES__API__METRICS_LISTEN", Some("LIKES__API__LISTEN")),
                "likes-worker" => ("LIKES__WORKER__METRICS_LISTEN", None),
                _ => continue,
            };
            let listen_port = |variable: &str, found: &mut Vec<String>| -> Option<u16> {
                let value = setting_value(&env, defaults, variable);
                match value.parse::<SocketAddr>() {
                    Ok(addr) if addr.ip().is_unspecified() => Some(addr.port()),
                    Ok(addr) => {
                        found.push(format!(
                            "{who}: {variable} is {addr}, out of the kubelet's and Service's reach"
                        ));
                        Some(addr.port())
                    }
                    Err(_) => {
                        found.push(format!("{who}: {variable} {value:?} is no address"));
                        None
                    }
                }
            };
            let metrics_port = listen_port(metrics_variable, &mut found);
            if let Some(grpc_variable) = grpc_variable {
                let grpc = listen_port(grpc_variable, &mut found);
                if grpc.is_some_and(|p| !ports.values().any(|&q| q == p)) {
                    found.push(format!(
                        "{who}: exposes no containerPort {grpc:?} of {grpc_variable}"
                    ));
                }
            }
            for (probe, path, required) in [
                ("livenessProbe", LIVENESS_PATH, true),
                ("readinessProbe", READINESS_PATH, true),
                ("startupProbe", LIVENESS_PATH, false),
            ] {
                let Some(get) = container.get(probe).and_then(|p| p.get("httpGet")) else {
                    if required {
                        found.push(format!("{who}: has no HTTP {probe}"));
                    }
                    continue;
                };
                let asked = get.get("path").map(text).unwrap_or_default();
                if asked != path {
                    found.push(format!("{who}: {probe} asks {asked}, not {path}"));
                }
                let port = resolve_port(get.get("port"), &ports);
                if port.is_none() || port != metrics_port {
                    found.push(format!(
                        "{who}: {probe} asks port {port:?}, {metrics_variable} listens on {metrics_port:?}"
                    ));
                }
            }
            let pre_stop = pre_stop_seconds(container);
            if binary == "likes-api" && pre_stop.is_none() {
                found.push(format!(
                    "{who}: no preStop sleep, so calls still reach it after SIGTERM"
                ));
            }
            let needed = pre_stop.unwrap_or(0) + drain_s + 10;
            if grace < needed {
                found.push(format!(
                    "{who}: terminationGracePeriodSeconds {grace} < {needed} \
                     (preStop {pre_stop:?} s + a drain's longest wait {drain_s} s + 10 s)"
                ));
            }
            deployments.insert(name.clone(), (pod_labels.clone(), ports, binary));
        }
    }

    for budget in of_kind("PodDisruptionBudget") {
        let selector = labels(budget.at(&["spec", "selector", "matchLabels"]));
        if !deployments.values().any(|(l, _, _)| selects(&selector, l)) {
            found.push(format!(
                "PodDisruptionBudget {}: selects no pods",
                budget.name()
            ));
        }
    }
    for name in deployments.keys() {
        let (pod_labels, _, _) = &deployments[name];
        let covered = of_kind("PodDisruptionBudget").iter().any(|b| {
            selects(
                &labels(b.at(&["spec", "selector", "matchLabels"])),
                pod_labels,
            )
        });
        if !covered {
            found.push(format!("{name}: no PodDisruptionBudget"));
        }
    }
    for service in of_kind("Service") {
        let selector = labels(service.at(&["spec", "selector"]));
        let Some((_, ports, _)) = deployments.values().find(|(l, _, _)| selects(&selector, l))
        else {
            found.push(format!("Service {}: selects no pods", service.name()));
            continue;
        };
        for port in seq(service.at(&["spec", "ports"])) {
            let target = port.get("targetPort").or(port.get("port"));
            if resolve_port(target, ports).is_none_or(|p| !ports.values().any(|&q| q == p)) {
                found.push(format!(
                    "Service {}: targetPort {:?} is no port of its pods",
                    service.name(),
                    target.map(text)
                ));
            }
        }
    }

    let authentications: BTreeMap<String, &Resource> = of_kind("TriggerAuthentication")
        .into_iter()
        .map(|r| (r.name(), r))
        .collect();
    for authentication in authentications.values() {
        for reference in seq(authentication.at(&["spec", "secretTargetRef"])) {
            let secret = reference.get("name").map(text).unwrap_or_default();
            let key = reference.get("key").map(text).unwrap_or_default();
            if !secrets.get(&secret).is_some_and(|keys| keys.contains(&key)) {
                found.push(format!(
                    "TriggerAuthentication {}: no key {key} in a Secret {secret}",
                    authentication.name()
                ));
            }
        }
    }
    for scaled in of_kind("ScaledObject") {
        let who = format!("ScaledObject {}", scaled.name());
        let target = scaled
            .at(&["spec", "scaleTargetRef", "name"])
            .map(text)
            .unwrap_or_default();
        let Some((_, _, binary)) = deployments.get(&target) else {
            found.push(format!("{who}: scales no Deployment {target}"));
            continue;
        };
        if binary != "likes-worker" {
            found.push(format!("{who}: scales {target}, which runs {binary}"));
        }
        let worker = of_kind("Deployment")
            .into_iter()
            .find(|d| d.name() == target)
            .expect("found above");
        let container = seq(worker.at(&["spec", "template", "spec", "containers"]))
            .first()
            .cloned()
            .unwrap_or_default();
        let env = environment(&container, &config_maps, &secrets, &mut Vec::new(), "");
        let queue = setting_value(&env, defaults, "LIKES__AMQP__QUEUE");
        for trigger in seq(scaled.at(&["spec", "triggers"])) {
            if trigger.get("type").map(text).as_deref() != Some("rabbitmq") {
                continue;
            }
            let metadata = trigger.get("metadata");
            let asked = metadata.and_then(|m| m.get("queueName")).map(text);
            if asked.as_deref() != Some(queue.as_str()) {
                found.push(format!(
                    "{who}: reads queue {asked:?}, the workers consume {queue}"
                ));
            }
            let auth = trigger
                .get("authenticationRef")
                .and_then(|a| a.get("name"))
                .map(text)
                .unwrap_or_default();
            if !authentications.contains_key(&auth) {
                found.push(format!("{who}: names no TriggerAuthentication {auth}"));
            }
        }
    }
    found
}

#[test]
fn k8s_manifests_agree_with_the_image_the_binaries_and_the_default_settings() {
    let defaults = Defaults::load();
    let image = Image::load();
    assert!(
        image.binaries.contains(&"likes-worker".to_owned()) && image.uid > 0,
        "read from the Dockerfile: {:?}, {}",
        image.binaries,
        image.uid
    );
    let found = problems(&committed(), &defaults, &image);
    assert!(found.is_empty(), "{found:#?}");

    let expect = |resources: Vec<Resource>, problem: &str| {
        let found = problems(&resources, &defaults, &image);
        assert!(
            found.iter().any(|p| p.contains(problem)),
            "{problem:?} went unnoticed: {found:#?}"
        );
    };
    expect(
        broken("deploy/k8s/api.yaml", "path: /readyz", "path: /ready"),
        "likes-api/api: readinessProbe asks /ready, not /readyz",
    );
    expect(
        broken(
            "deploy/k8s/config.yaml",
            "\"0.0.0.0:9465\"",
            "\"0.0.0.0:9466\"",
        ),
        "likes-worker/worker: livenessProbe asks port Some(9465), \
         LIKES__WORKER__METRICS_LISTEN listens on Some(9466)",
    );
    expect(
        broken(
            "deploy/k8s/config.yaml",
            "\"0.0.0.0:9464\"",
            "\"127.0.0.1:9464\"",
        ),
        "LIKES__API__METRICS_LISTEN is 127.0.0.1:9464, out of the kubelet's",
    );
    expect(
        broken(
            "deploy/k8s/config.yaml",
            "LIKES__LOG__FORMAT",
            "LIKES__LOG__FORMAAT",
        ),
        "gets LIKES__LOG__FORMAAT, which is no setting",
    );
    expect(
        broken(
            "deploy/k8s/config.yaml",
            "  RUST_LOG: info\n",
            "  RUST_LOG: info\n  LIKES__API__AUTH_TOKEN: x\n",
        ),
        "ConfigMap likes-config: holds LIKES__API__AUTH_TOKEN, a secret",
    );
    expect(
        broken(
            "deploy/k8s/api.yaml",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: 10",
        ),
        "likes-api/api: terminationGracePeriodSeconds 10 < 20",
    );
    expect(
        broken(
            "deploy/k8s/worker.yaml",
            "command: [\"likes-worker\"]",
            "command: [\"likes-wroker\"]",
        ),
        "runs \"likes-wroker\", which the Dockerfile does not build",
    );
    expect(
        broken(
            "deploy/k8s/api.yaml",
            "image: likes:0.1.0",
            "image: example/likes:0.0.9",
        ),
        "likes-api/api: image example/likes:0.0.9, not likes:0.1.0",
    );
    expect(
        broken(
            "deploy/k8s/api.yaml",
            "targetPort: grpc",
            "targetPort: gprc",
        ),
        "Service likes-api: targetPort Some(\"gprc\") is no port of its pods",
    );
    expect(
        broken(
            "deploy/k8s/keda/worker-autoscaling.yaml",
            "queueName: likes.events",
            "queueName: likes.event",
        ),
        "ScaledObject likes-worker: reads queue Some(\"likes.event\"), the workers consume likes.events",
    );
    expect(
        broken(
            "deploy/k8s/keda/worker-autoscaling.yaml",
            "key: LIKES__AMQP__URL",
            "key: AMQP_URL",
        ),
        "TriggerAuthentication likes-rabbitmq: no key AMQP_URL in a Secret likes-secrets",
    );
}
