//! The compose files: valid against the Compose specification's JSON schema
//! (check-jsonschema, from the project's virtualenv: `make tools`), and in
//! agreement with `config/default.toml` and with themselves beyond what a
//! schema can say:
//!
//! - the broker and the database are published on the ports of the default
//!   URLs, with the credentials those URLs carry (so `make run` finds them);
//! - every `LIKES__*` variable a service sets names a real setting, and the
//!   AMQP and database URLs it sets point at services of the same file, on
//!   their container ports, with the same credentials;
//! - every service has a health check, every `condition: service_healthy`
//!   points at a service that has one, and every named volume is declared;
//! - the profile `observability`: Prometheus's config (the file it mounts)
//!   scrapes every service that runs a likes binary on the metrics port its
//!   settings give it (environment, else the Dockerfile's `ENV`, else the
//!   defaults), and its rule files exist; Grafana's datasource points at
//!   that Prometheus, and its dashboard provider finds the mounted
//!   dashboard; promtool accepts the config (`make tools`).
//!
//! Each check also refuses a broken copy, or it would prove nothing.

use crate::repo;
use likes_testkit::tools;
use serde_yaml_ng::Value;
use std::{collections::BTreeMap, process::Command};
use url::Url;

fn compose_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo::root())
        .expect("the workspace root is readable")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("docker-compose") && name.ends_with(".yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "compose files: {files:?}");
    files
}

/// What a broker or a database URL of the defaults says.
struct Endpoint {
    port: Option<u16>,
    user: String,
    password: Option<String>,
}

impl Endpoint {
    fn of(url: &str) -> Self {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        Self {
            port: url.port(),
            user: url.username().to_owned(),
            password: url.password().map(str::to_owned),
        }
    }
}

/// `config/default.toml`, and its broker and database URLs read apart (the
/// Kubernetes checks in `k8s.rs` use it too).
pub(crate) struct Defaults {
    pub(crate) settings: toml::Table,
    amqp: Endpoint,
    database: Endpoint,
}

impl Defaults {
    pub(crate) fn load() -> Self {
        let settings: toml::Table = repo::read("config/default.toml")
            .parse()
            .expect("config/default.toml is TOML");
        let url = |section: &str| {
            settings[section]["url"]
                .as_str()
                .expect("a url string")
                .to_owned()
        };
        Self {
            amqp: Endpoint::of(&url("amqp")),
            database: Endpoint::of(&url("database")),
            settings,
        }
    }

    fn is_setting(&self, section: &str, key: &str) -> bool {
        self.settings
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(key))
    }

    /// Whether `LIKES__SECTION__KEY` names a setting; `None` for a variable
    /// that is not a `LIKES__*` one.
    pub(crate) fn names_setting(&self, variable: &str) -> Option<bool> {
        let setting = variable.strip_prefix("LIKES__")?;
        let parts: Vec<String> = setting.split("__").map(str::to_lowercase).collect();
        Some(parts.len() == 2 && self.is_setting(&parts[0], &parts[1]))
    }
}

/// A YAML scalar as the text a service would see.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .map(|items| items.iter().map(text).collect())
        .unwrap_or_default()
}

/// (published, container) port pairs of a service's `ports`.
fn ports(service: &Value) -> Vec<(Option<u16>, u16)> {
    strings(service.get("ports"))
        .iter()
        .map(|entry| {
            let spec = entry.split('/').next().unwrap_or_default();
            let parts: Vec<&str> = spec.split(':').collect();
            let port = |s: &str| s.parse::<u16>().unwrap_or_else(|e| panic!("{entry}: {e}"));
            let target = port(parts[parts.len() - 1]);
            let published = (parts.len() > 1).then(|| port(parts[parts.len() - 2]));
            (published, target)
        })
        .collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Mapping(map)) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| {
                let (k, v) = item.as_str()?.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The sources of a service's `volumes` (named volume or host path).
fn volume_sources(service: &Value) -> Vec<String> {
    strings(service.get("volumes"))
        .iter()
        .map(|v| v.split(':').next().unwrap_or_default().to_owned())
        .collect()
}

/// User and password of a RabbitMQ service: its environment, or the
/// `default_user` / `default_pass` of a mounted `.conf`, else guest/guest.
fn broker_credentials(service: &Value) -> (String, String) {
    let env = environment(service);
    let mut user = env.get("RABBITMQ_DEFAULT_USER").cloned();
    let mut password = env.get("RABBITMQ_DEFAULT_PASS").cloned();
    for source in volume_sources(service) {
        if source.ends_with(".conf") {
            for line in repo::read(&source).lines() {
                match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("default_user", v)) => user = Some(v.to_owned()),
                    Some(("default_pass", v)) => password = Some(v.to_owned()),
                    _ => {}
                }
            }
        }
    }
    (
        user.unwrap_or_else(|| "guest".into()),
        password.unwrap_or_else(|| "guest".into()),
    )
}

/// A compose file's text as YAML, merge keys resolved.
fn parse(compose: &str) -> Value {
    let mut compose: Value = serde_yaml_ng::from_str(compose).expect("compose files are YAML");
    compose.apply_merge().expect("merge keys resolve");
    compose
}

/// A parsed compose file's services by name.
fn services(compose: &Value) -> BTreeMap<String, &Value> {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("a services mapping")
        .iter()
        .map(|(name, service)| (text(name), service))
        .collect()
}

/// Every disagreement of one compose file (its text) with the defaults.
fn problems(compose: &str, defaults: &Defaults) -> Vec<String> {
    let compose = parse(compose);
    let services = services(&compose);
    let declared_volumes: Vec<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().map(text).collect())
        .unwrap_or_default();
    let of_image = |prefix: &str| -> BTreeMap<&String, &Value> {
        services
            .iter()
            .filter(|(_, s)| s.get("image").is_some_and(|i| text(i).starts_with(prefix)))
            .map(|(n, s)| (n, *s))
            .collect()
    };
    let brokers = of_image("rabbitmq");
    let databases = of_image("postgres");
    let postgres_user = |service: &Value| {
        environment(service)
            .get("POSTGRES_USER")
            .cloned()
            .unwrap_or_else(|| "postgres".into())
    };
    let mut found = Vec::new();

    let publishes = |services: &BTreeMap<&String, &Value>, port: Option<u16>, target: u16| {
        services
            .values()
            .any(|s| ports(s).contains(&(port, target)))
    };
    if !publishes(&brokers, defaults.amqp.port, 5672) {
        found.push(format!(
            "no RabbitMQ service publishes AMQP on port {:?}",
            defaults.amqp.port
        ));
    }
    if !publishes(&databases, defaults.database.port, 5432) {
        found.push(format!(
            "no PostgreSQL service publishes port {:?}",
            defaults.database.port
        ));
    }
    let default_broker_user = (
        defaults.amqp.user.clone(),
        defaults.amqp.password.clone().unwrap_or_default(),
    );
    for (name, service) in &brokers {
        if broker_credentials(service) != default_broker_user {
            found.push(format!("{name}: credentials differ from amqp.url"));
        }
    }
    for (name, service) in &databases {
        if postgres_user(service) != defaults.database.user {
            found.push(format!("{name}: user differs from database.url"));
        }
        let trusts = environment(service)
            .get("POSTGRES_HOST_AUTH_METHOD")
            .is_some_and(|m| m == "trust");
        if defaults.database.password.is_none() && !trusts {
            found.push(format!(
                "{name}: database.url has no password but {name} does not trust"
            ));
        }
    }

    for (name, service) in &services {
        for (key, value) in environment(service) {
            match defaults.names_setting(&key) {
                None => continue,
                Some(false) => found.push(format!("{name}: sets {key}, which is no setting")),
                Some(true) => {}
            }
            if key == "LIKES__AMQP__URL" {
                for node in value.split(',') {
                    let url = Url::parse(node.trim()).expect("an AMQP url");
                    let host = url.host_str().unwrap_or_default().to_owned();
                    match brokers.get(&host) {
                        Some(broker) if url.port() == Some(5672) => {
                            let credentials = (
                                url.username().to_owned(),
                                url.password().unwrap_or_default().to_owned(),
                            );
                            if credentials != broker_credentials(broker) {
                                found
                                    .push(format!("{name}: AMQP credentials differ from {host}'s"));
                            }
                        }
                        _ => found.push(format!(
                            "{name}: AMQP node {host}:{:?} is no broker service of this file",
                            url.port()
                        )),
                    }
                }
            }
            if key == "LIKES__DATABASE__URL" {
                let url = Url::parse(&value).expect("a database url");
                let host = url.host_str().unwrap_or_default().to_owned();
                match databases.get(&host) {
                    Some(database) if url.port() == Some(5432) => {
                        if url.username() != postgres_user(database) {
                            found.push(format!("{name}: database user differs from {host}'s"));
                        }
                    }
                    _ => found.push(format!(
                        "{name}: database {host}:{:?} is no PostgreSQL service of this file",
                        url.port()
                    )),
                }
            }
        }
        if service.get("healthcheck").is_none() {
            found.push(format!("{name}: has no healthcheck"));
        }
        // The binaries exit when the broker or database is unreachable at
        // start; the runtime must start them again.
        let command = strings(service.get("command"));
        if let Some(binary) = command.first().filter(|c| c.starts_with("likes-")) {
            let restart = service.get("restart").map(text);
            if restart.as_deref() != Some("unless-stopped") {
                found.push(format!(
                    "{name}: runs {binary} without restart: unless-stopped"
                ));
            }
        }
        if let Some(Value::Mapping(depends)) = service.get("depends_on") {
            for (other, rule) in depends {
                let other = text(other);
                let healthy = rule
                    .get("condition")
                    .is_some_and(|c| text(c) == "service_healthy");
                match services.get(&other) {
                    None => found.push(format!("{name}: depends on unknown service {other}")),
                    Some(o) if healthy && o.get("healthcheck").is_none() => found.push(format!(
                        "{name}: waits for {other} to be healthy, but it has no healthcheck"
                    )),
                    Some(_) => {}
                }
            }
        }
        for source in volume_sources(service) {
            if !source.starts_with(['.', '/']) && !declared_volumes.contains(&source) {
                found.push(format!("{name}: volume {source} is not declared"));
            }
        }
    }
    found
}

#[test]
fn compose_files_agree_with_the_default_settings() {
    let defaults = Defaults::load();
    for file in compose_files() {
        let found = problems(&repo::read(&file), &defaults);
        assert!(found.is_empty(), "{file}: {found:#?}");
    }
    let broken = repo::read("docker-compose.yml").replace("rabbitmq:5672/%2f", "rabbitmq:5673/%2f");
    let found = problems(&broken, &defaults);
    assert!(
        found.iter().any(|p| p.contains("rabbitmq:Some(5673)")),
        "a wrong AMQP port went unnoticed: {found:?}"
    );
    let broken =
        repo::read("docker-compose.yml").replace("LIKES__DATABASE__URL", "LIKES__DATABASE__URI");
    assert!(
        problems(&broken, &defaults)
            .iter()
            .any(|p| p.contains("LIKES__DATABASE__URI, which is no setting"))
    );
    let broken = repo::read("docker-compose.yml").replace("    restart: unless-stopped\n", "");
    assert!(
        problems(&broken, &defaults)
            .iter()
            .any(|p| p.contains("without restart: unless-stopped")),
        "an app service without a restart policy went unnoticed"
    );
}

#[test]
#[ignore = "needs check-jsonschema from `make tools`; `make test` runs it"]
fn compose_files_follow_the_compose_specification() -> anyhow::Result<()> {
    let checker = tools::require("check-jsonschema");
    let schema = tools::dir().join("compose-spec.json");
    anyhow::ensure!(
        schema.is_file(),
        "{} is missing: make tools",
        schema.display()
    );
    let check = |files: &[String]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(&checker)
            .arg("--schemafile")
            .arg(&schema)
            .args(files)
            .current_dir(repo::root())
            .output()?)
    };
    let output = check(&compose_files())?;
    anyhow::ensure!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let broken =
        std::env::temp_dir().join(format!("likes-compose-broken-{}.yml", std::process::id()));
    let text = repo::read("docker-compose.yml").replace(
        "\n    image: postgres:15\n",
        "\n    image: postgres:15\n    restart_policy: always\n",
    );
    std::fs::write(&broken, text)?;
    let output = check(&[broken.display().to_string()]);
    let _ = std::fs::remove_file(&broken);
    anyhow::ensure!(
        !output?.status.success(),
        "the schema accepted an unknown service key"
    );
    Ok(())
}

/// Where Prometheus reads its config in the `prom/prometheus` image, unless
/// `--config.file` says otherwise, and the port it serves on.
const PROMETHEUS_CONFIG: &str = "/etc/prometheus/prometheus.yml";
const PROMETHEUS_PORT: u16 = 9090;
/// Where Grafana reads the datasources and the dashboard providers it
/// provisions.
const GRAFANA_DATASOURCES: &str = "/etc/grafana/provisioning/datasources";
const GRAFANA_DASHBOARDS: &str = "/etc/grafana/provisioning/dashboards";

/// A file of the workspace (a path relative to its root), if it exists.
fn read_file(path: &str) -> Option<String> {
    std::fs::read_to_string(repo::root().join(path)).ok()
}

/// YAML files of a folder of the workspace (relative paths).
fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo::root().join(dir))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".yml") || name.ends_with(".yaml"))
                .map(|name| format!("{dir}/{name}"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// (host path relative to the workspace, container path) of a service's
/// bind mounts.
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    strings(service.get("volumes"))
        .iter()
        .filter_map(|volume| {
            let mut parts = volume.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            source.starts_with('.').then(|| {
                (
                    source.trim_start_matches("./").to_owned(),
                    target.to_owned(),
                )
            })
        })
        .collect()
}

/// The workspace file or folder a service sees at `container_path`,
/// through the bind mount nearest to it.
fn host_path(service: &Value, container_path: &str) -> Option<String> {
    bind_mounts(service)
        .into_iter()
        .filter_map(|(source, target)| {
            let rest = container_path.strip_prefix(target.trim_end_matches('/'))?;
            (rest.is_empty() || rest.starts_with('/'))
                .then(|| (target.len(), format!("{source}{rest}")))
        })
        .max()
        .map(|(_, path)| path)
}

/// The value of a `--flag=value` of a service's command.
fn flag(service: &Value, name: &str) -> Option<String> {
    strings(service.get("command"))
        .iter()
        .find_map(|arg| arg.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

/// The `ENV` variables of a Dockerfile (continuation lines joined).
fn dockerfile_env(dockerfile: &str) -> BTreeMap<String, String> {
    dockerfile
        .replace("\\\n", " ")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The metrics address a service that runs `likes-<role>` listens on: its
/// environment, else the image's (the Dockerfile's `ENV`), else the default.
fn metrics_listen(
    service: &Value,
    role: &str,
    image_env: &BTreeMap<String, String>,
    defaults: &Defaults,
) -> String {
    let variable = format!("LIKES__{}__METRICS_LISTEN", role.to_uppercase());
    environment(service)
        .get(&variable)
        .or_else(|| image_env.get(&variable))
        .cloned()
        .unwrap_or_else(|| {
            defaults.settings[role]["metrics_listen"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
}

/// (host, port) of every target of a scrape config: its static targets and
/// the names its DNS discovery resolves, on its port.
fn scrape_targets(job: &Value) -> Vec<(String, Option<u16>)> {
    let mut targets = Vec::new();
    for group in job
        .get("static_configs")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        for target in strings(group.get("targets")) {
            let (host, port) = target.rsplit_once(':').unwrap_or((&target, ""));
            targets.push((host.to_owned(), port.parse().ok()));
        }
    }
    for dns in job
        .get("dns_sd_configs")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let port = dns
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        targets.extend(
            strings(dns.get("names"))
                .into_iter()
                .map(|name| (name, port)),
        );
    }
    targets
}

/// The entries under `key` (`datasources`, `providers`) of every
/// provisioning file of Grafana in `dir`, read through `read`.
fn provisioned(read: &dyn Fn(&str) -> Option<String>, dir: &str, key: &str) -> Vec<Value> {
    yaml_files(dir)
        .iter()
        .filter_map(|file| serde_yaml_ng::from_str::<Value>(&read(file)?).ok())
        .flat_map(|doc| {
            doc.get(key)
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Every disagreement of one compose file's Prometheus and Grafana with the
/// services they watch and the files they mount (read through `read`, so a
/// test can hand in a broken copy).
fn observability_problems(
    compose: &str,
    defaults: &Defaults,
    read: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let compose = parse(compose);
    let services = services(&compose);
    let image_env = dockerfile_env(&repo::read("Dockerfile"));
    let of_image = |prefix: &str| -> Vec<(&String, &Value)> {
        services
            .iter()
            .filter(|(_, s)| s.get("image").is_some_and(|i| text(i).starts_with(prefix)))
            .map(|(n, s)| (n, *s))
            .collect()
    };
    // Each service that runs a likes binary, with the metrics address its
    // settings give it.
    let likes: BTreeMap<&String, String> = services
        .iter()
        .filter_map(|(name, service)| {
            let command = strings(service.get("command"));
            let role = command.first()?.strip_prefix("likes-")?.to_owned();
            Some((name, metrics_listen(service, &role, &image_env, defaults)))
        })
        .collect();
    let mut found = Vec::new();

    let prometheus_ports: BTreeMap<&String, u16> = of_image("prom/prometheus")
        .into_iter()
        .map(|(name, service)| {
            let port = flag(service, "--web.listen-address")
                .and_then(|a| a.rsplit(':').next()?.parse().ok())
                .unwrap_or(PROMETHEUS_PORT);
            (name, port)
        })
        .collect();
    for (name, service) in of_image("prom/prometheus") {
        let config_path =
            flag(service, "--config.file").unwrap_or_else(|| PROMETHEUS_CONFIG.into());
        let Some(path) = host_path(service, &config_path).filter(|p| read(p).is_some()) else {
            found.push(format!(
                "{name}: mounts no file of the workspace at {config_path}"
            ));
            continue;
        };
        let config: Value = match serde_yaml_ng::from_str(&read(&path).unwrap_or_default()) {
            Ok(config) => config,
            Err(error) => {
                found.push(format!("{path}: {error}"));
                continue;
            }
        };
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        for rules in strings(config.get("rule_files")) {
            if read(&format!("{dir}/{rules}")).is_none() {
                found.push(format!("{path}: rule file {rules} is not beside it"));
            }
        }
        let mut scraped = Vec::new();
        for job in config
            .get("scrape_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let job_name = job.get("job_name").map(text).unwrap_or_default();
            for (host, port) in scrape_targets(job) {
                let Some(listen) = likes.get(&host) else {
                    found.push(format!(
                        "{path}: {job_name} scrapes {host}, no likes service of this file"
                    ));
                    continue;
                };
                let (address, listen_port) = listen.rsplit_once(':').unwrap_or((listen, ""));
                if port.map(|p| p.to_string()).as_deref() != Some(listen_port) {
                    found.push(format!(
                        "{path}: {job_name} scrapes {host} on port {port:?}, but {host}'s metrics listen on {listen:?}"
                    ));
                }
                if address != "0.0.0.0" {
                    found.push(format!(
                        "{path}: {host}'s metrics listen on {listen:?}, which {name} cannot reach"
                    ));
                }
                scraped.push(host);
            }
        }
        for (service, listen) in &likes {
            if !listen.is_empty() && !scraped.contains(service) {
                found.push(format!("{path}: no job scrapes {service}"));
            }
        }
    }

    for (name, service) in of_image("grafana/grafana") {
        let Some(dir) = host_path(service, GRAFANA_DATASOURCES) else {
            found.push(format!(
                "{name}: mounts no datasources at {GRAFANA_DATASOURCES}"
            ));
            continue;
        };
        let datasources: Vec<Value> = provisioned(read, &dir, "datasources")
            .into_iter()
            .filter(|source| source.get("type").map(text).as_deref() == Some("prometheus"))
            .collect();
        if datasources.is_empty() {
            found.push(format!("{name}: {dir} provisions no Prometheus datasource"));
        }
        for source in datasources {
            let url = source.get("url").map(text).unwrap_or_default();
            let parsed = Url::parse(&url).ok();
            let host = parsed
                .as_ref()
                .and_then(Url::host_str)
                .unwrap_or_default()
                .to_owned();
            let port = parsed.as_ref().and_then(Url::port_or_known_default);
            if prometheus_ports.get(&host).copied() != port || port.is_none() {
                found.push(format!(
                    "{name}: datasource {url} is no Prometheus service of this file"
                ));
            }
        }
        let Some(dir) = host_path(service, GRAFANA_DASHBOARDS) else {
            found.push(format!(
                "{name}: mounts no dashboard providers at {GRAFANA_DASHBOARDS}"
            ));
            continue;
        };
        let providers = provisioned(read, &dir, "providers");
        if providers.is_empty() {
            found.push(format!("{name}: {dir} provisions no dashboards"));
        }
        for provider in providers {
            let folder = provider["options"]["path"]
                .as_str()
                .unwrap_or_default()
                .trim_end_matches('/');
            // The dashboards mounted into the provider's folder.
            let dashboards: Vec<String> = bind_mounts(service)
                .into_iter()
                .filter(|(_, target)| {
                    target
                        .strip_prefix(folder)
                        .is_some_and(|rest| rest.starts_with('/'))
                })
                .map(|(source, _)| source)
                .collect();
            let readable = dashboards.iter().any(|file| {
                read(file)
                    .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                    .is_some_and(|dashboard| dashboard.get("panels").is_some())
            });
            if !readable {
                found.push(format!(
                    "{name}: no dashboard of the workspace is mounted in {folder:?}"
                ));
            }
        }
    }
    found
}

#[test]
fn the_observability_profile_watches_the_services_of_its_compose_file() {
    let defaults = Defaults::load();
    for file in compose_files() {
        let found = observability_problems(&repo::read(&file), &defaults, &read_file);
        assert!(found.is_empty(), "{file}: {found:#?}");
    }
    let compose = repo::read("docker-compose.yml");
    let prometheus_config = "deploy/prometheus/prometheus.yml";
    let datasource = "deploy/grafana/provisioning/datasources/prometheus.yml";
    for (path, from, to, expected) in [
        (
            prometheus_config,
            "port: 9465",
            "port: 9466",
            "scrapes worker on port Some(9466)",
        ),
        (
            prometheus_config,
            "\"api:9464\"",
            "\"postgres:9464\"",
            "scrapes postgres, no likes service",
        ),
        (
            prometheus_config,
            "alerts.yml",
            "alert.yml",
            "rule file alert.yml is not beside it",
        ),
        (
            datasource,
            "prometheus:9090",
            "prometheus:9091",
            "is no Prometheus service",
        ),
    ] {
        let original = repo::read(path);
        assert!(original.contains(from), "{path} holds {from}");
        let broken = |file: &str| {
            if file == path {
                Some(original.replace(from, to))
            } else {
                read_file(file)
            }
        };
        let found = observability_problems(&compose, &defaults, &broken);
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{path}: {from} -> {to} went unnoticed: {found:#?}"
        );
    }
    let worker = "    command: [\"likes-worker\"]\n    restart: unless-stopped\n    environment:\n";
    assert!(compose.contains(worker), "the worker's environment");
    let broken = compose.replace(
        worker,
        &format!("{worker}      LIKES__WORKER__METRICS_LISTEN: 0.0.0.0:9999\n"),
    );
    assert!(
        observability_problems(&broken, &defaults, &read_file)
            .iter()
            .any(|p| p.contains("worker's metrics listen on \"0.0.0.0:9999\"")),
        "a worker moved to another metrics port went unnoticed"
    );
    assert!(
        observability_problems(
            &compose.replace(
                "./deploy/grafana/likes-dashboard.json:",
                "./deploy/grafana/missing.json:"
            ),
            &defaults,
            &read_file
        )
        .iter()
        .any(|p| p.contains("no dashboard of the workspace is mounted")),
        "a dashboard mount that finds no file went unnoticed"
    );
}

#[test]
#[ignore = "needs promtool from `make tools`; `make test` runs it"]
fn the_observability_profile_s_prometheus_config_is_valid() {
    // promtool also reads the rule files the config names.
    crate::alerts::promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}
