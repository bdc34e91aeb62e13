//! The Grafana dashboard and the alert rules, proven against a real
//! Prometheus (Debian's `prometheus` package, from `make tools`) scraping the
//! real `likes-api` and `likes-worker` binaries under a small load.
//!
//! Prometheus runs `deploy/prometheus/prometheus.yml` as committed (its job
//! names, its rule files) with only its targets (the processes' metrics
//! addresses) and intervals (1 s) replaced. Then, through its HTTP API:
//!
//! - both targets are up and the rules of `alerts.yml` loaded and healthy;
//! - each template variable of the dashboard lists what Grafana would show
//!   (`label_values(…)` asked as Grafana asks it, `/api/v1/label/…/values`):
//!   the jobs of the config, the instances of both processes;
//! - every panel query, with the variables replaced as Grafana replaces
//!   them (`$__rate_interval`: four scrape intervals; `$job`, `$instance`:
//!   every value, "All"), returns at least one series with a number: a NaN
//!   (a histogram without observations in the window) is no data on a graph;
//! - every alert expression runs, and every series selector in it returns
//!   data. An alert's expression itself is empty while it does not fire, so
//!   what is proven is that each series it reads exists as the binaries
//!   export it, label values included (`outcome="failed"`). Prometheus 2.42
//!   has no `/api/v1/parse_query`, and promtool no `promql` command, so the
//!   selectors are found by [`series_selectors`], a small PromQL scanner
//!   (unit-tested below). A selector it got wrong finds nothing and fails
//!   the test. The checks name no metric: they run what the dashboard and
//!   the rules say (the fault below reads a counter of the processes only
//!   to know when it has had its effect).
//!
//! The binaries export every counter whose labels are known at start at 0
//! (a dead letter, a retried or handed-back batch, a reconnection, a failed
//! count push: `catalog::register_counters`). A failed confirm is a
//! histogram's observation, which exists only once one happened, so the
//! test makes one happen, as [`make_every_series_exist`] says; nothing is
//! exempted.
//!
//! The binaries are the ones cargo built beside this test (`target/debug`):
//! `make test` builds every binary first; alone, run `cargo build --bin
//! likes-api --bin likes-worker` before it.

use likes_common::{Settings, config::SecretUrl};
use likes_proto::pb::{
    GetLikeCountRequest, GetLikeSummariesRequest, HasLikedRequest, LikeRequest, ListLikersRequest,
    UnlikeRequest, like_service_client::LikeServiceClient,
};
use likes_testkit::{
    TestEnv, eventually, free_port,
    load::{self, Steady},
    process::{self, ServiceProcess},
    proxy::FaultProxy,
    sample, scrape, tools, wait_for_readiness,
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const DASHBOARD: &str = "deploy/grafana/likes-dashboard.json";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
/// How often the test's Prometheus scrapes and evaluates the rules.
const INTERVAL: &str = "1s";
/// Grafana's `$__rate_interval` at that scrape interval (at least four of it).
const RATE_INTERVAL: &str = "4s";
/// How long every query gets to return data once the load runs.
const QUERIES_TIMEOUT: Duration = Duration::from_secs(60);

/// A file of the workspace.
fn workspace_file(path: &str) -> anyhow::Result<String> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).map_err(|e| anyhow::anyhow!("{}: {e}", full.display()))
}

/// A binary of the workspace, from the folder cargo built this test into.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target folder above {}", exe.display()))?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: `cargo build --bin {name}` (make test builds every binary)",
        path.display()
    );
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs prometheus from `make tools`; `make test` runs it"]
async fn every_dashboard_query_and_every_series_the_alerts_read_has_data() -> anyhow::Result<()> {
    let prometheus_binary = tools::require("prometheus");
    let env = TestEnv::new();
    env.db().await?;
    let services = Services::start(&env).await?;
    let prometheus = Prometheus::start(
        &prometheus_binary,
        &services.api_metrics,
        &services.worker_metrics,
    )?;
    prometheus.wait_until_scraping().await?;

    let stop = CancellationToken::new();
    let reads = tokio::spawn(read_steadily(services.client.clone(), stop.clone()));
    let checked = async {
        make_every_series_exist(&services).await?;
        // Likes from now on, so the rates and histograms have data.
        let steady = tokio::spawn(load::like_steadily(
            vec![services.client.clone()],
            "steady".into(),
            Steady {
                per_second: 50,
                in_flight: 32,
                posts: 10,
                attempt_timeout: Duration::from_secs(5),
                retry_for: Duration::from_secs(30),
            },
            stop.clone(),
        ));
        let checked = async {
            prometheus.check_rules_loaded().await?;
            let variables = prometheus.check_variables().await?;
            prometheus.check_queries(&variables).await
        }
        .await;
        stop.cancel();
        let sent = steady.await??;
        checked?;
        anyhow::ensure!(
            !sent.acknowledged.is_empty(),
            "the steady load sent nothing"
        );
        anyhow::Ok(())
    }
    .await;
    stop.cancel();
    let reads = reads.await?;
    checked?;
    reads
}

/// The api and the worker as processes, both reaching RabbitMQ through one
/// fault proxy.
struct Services {
    _api: ServiceProcess,
    _worker: ServiceProcess,
    broker: FaultProxy,
    client: LikeServiceClient<Channel>,
    api_metrics: String,
    worker_metrics: String,
}

impl Services {
    async fn start(env: &TestEnv) -> anyhow::Result<Self> {
        let broker = FaultProxy::start("127.0.0.1:5672".parse()?).await?;

        let mut api = env.settings_with_broker_at(broker.addr());
        api.api.listen = format!("127.0.0.1:{}", free_port()?).parse()?;
        api.api.metrics_listen = format!("127.0.0.1:{}", free_port()?);
        // A confirm held back past this fails the call (and is recorded).
        api.api.confirm_timeout_ms = 1_000;
        // The database itself as a "replica" (a server not in recovery lags
        // nothing), so that the replica metrics exist.
        api.database.read_urls = SecretUrl::new(env.settings.database.url.expose());

        let mut worker = env.settings.clone();
        worker.amqp.url = api.amqp.url.clone();
        worker.worker.metrics_listen = format!("127.0.0.1:{}", free_port()?);

        let worker_process = spawn(&binary("likes-worker")?, &worker)?;
        let api_process = spawn(&binary("likes-api")?, &api)?;
        for addr in [&api.api.metrics_listen, &worker.worker.metrics_listen] {
            wait_for_readiness(addr, true, Duration::from_secs(30)).await?;
        }
        let endpoint = format!("http://{}", api.api.listen);
        let client = eventually(Duration::from_secs(20), "the api to listen", || {
            let endpoint = endpoint.clone();
            async move { Ok(LikeServiceClient::connect(endpoint).await.ok()) }
        })
        .await?;
        Ok(Self {
            _api: api_process,
            _worker: worker_process,
            broker,
            client,
            api_metrics: api.api.metrics_listen,
            worker_metrics: worker.worker.metrics_listen,
        })
    }

    /// The value of a worker's or an api's counter, 0 while it is absent.
    async fn counter(addr: &str, name: &str, labels: Option<&str>) -> anyhow::Result<f64> {
        Ok(sample(&scrape(addr).await?, name, labels).unwrap_or(0.0))
    }

    /// Waits until the counter `name{labels}` at `addr` exceeds `above`.
    async fn wait_for_counter(
        addr: &str,
        name: &str,
        labels: Option<&str>,
        above: f64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("{name}{{{}}} above {above} at {addr}", labels.unwrap_or(""));
        eventually(timeout, &what, || async {
            Ok((Self::counter(addr, name, labels).await? > above).then_some(()))
        })
        .await
    }
}

/// Starts a binary with `settings`, logging its own errors only (the
/// faults below make the processes warn, and lapin log each closed channel
/// and connection as an error), unless `RUST_LOG` says otherwise.
fn spawn(binary: &Path, settings: &Settings) -> anyhow::Result<ServiceProcess> {
    let mut command = process::command(binary, settings);
    command.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "error,lapin=off".into()),
    );
    ServiceProcess::spawn_logged_command(command)
}

/// A few hundred Likes, some Unlikes and reads of every kind; then what
/// makes the one series exist that a healthy service never writes: RabbitMQ
/// stalled for longer than the api's confirm timeout (a failed confirm),
/// then the connections cut, and both processes reconnected and ready.
async fn make_every_series_exist(services: &Services) -> anyhow::Result<()> {
    let mut client = services.client.clone();
    let liked = load::like_all(
        std::slice::from_ref(&client),
        load::pairs("load", 300, 10),
        16,
        Duration::from_secs(30),
    )
    .await?;
    for (post, user) in liked.acknowledged.iter().take(60) {
        client
            .unlike(UnlikeRequest {
                post_id: post.clone(),
                user_id: user.clone(),
            })
            .await?;
    }
    read_once(&mut client, "post-0", "load-user-0").await?;

    services.broker.stall();
    let mut request = tonic::Request::new(LikeRequest {
        post_id: "stalled".into(),
        user_id: "unconfirmed".into(),
    });
    request.set_timeout(Duration::from_secs(10));
    let unconfirmed = client.like(request).await;
    services.broker.cut();
    services.broker.restore();
    anyhow::ensure!(
        unconfirmed.is_err(),
        "a Like was confirmed through a stalled broker"
    );
    for (addr, role) in [
        (services.api_metrics.as_str(), "role=\"api\""),
        (services.worker_metrics.as_str(), "role=\"worker\""),
    ] {
        Services::wait_for_counter(
            addr,
            "likes_amqp_reconnects_total",
            Some(role),
            0.0,
            Duration::from_secs(20),
        )
        .await?;
        wait_for_readiness(addr, true, Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// One call of each read.
async fn read_once(
    client: &mut LikeServiceClient<Channel>,
    post: &str,
    user: &str,
) -> Result<(), tonic::Status> {
    client
        .get_like_count(GetLikeCountRequest {
            post_id: post.into(),
        })
        .await?;
    client
        .has_liked(HasLikedRequest {
            post_id: post.into(),
            user_id: user.into(),
        })
        .await?;
    client
        .get_like_summaries(GetLikeSummariesRequest {
            viewer_id: user.into(),
            post_ids: vec![post.into(), "post-1".into()],
        })
        .await?;
    client
        .list_likers(ListLikersRequest {
            post_id: post.into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await?;
    Ok(())
}

/// Reads every 100 ms until `stop`, so the read metrics move while the
/// queries run. UNAVAILABLE (while a fault lasts) is tolerated.
async fn read_steadily(
    mut client: LikeServiceClient<Channel>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut round = 0;
    while !stop.is_cancelled() {
        let post = format!("post-{}", round % 10);
        match read_once(&mut client, &post, &format!("steady-user-{round}")).await {
            Ok(()) => {}
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Err(status) => anyhow::bail!("a read failed: {status:?}"),
        }
        round += 1;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Ok(())
}

/// A Prometheus of its own: the committed config with the test's targets,
/// its data in a folder of its own; killed, and the folder removed, on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    dir: PathBuf,
    /// job name → the address it scrapes.
    targets: Vec<(String, String)>,
}

impl Prometheus {
    fn start(binary: &Path, api_metrics: &str, worker_metrics: &str) -> anyhow::Result<Self> {
        let mut config: Yaml = serde_yaml_ng::from_str(&workspace_file(PROMETHEUS_CONFIG)?)?;
        let scrape_configs = config["scrape_configs"]
            .as_sequence_mut()
            .ok_or_else(|| anyhow::anyhow!("{PROMETHEUS_CONFIG}: no scrape_configs"))?;
        // Each job gets the process its name says; another job fails the
        // test, as it would scrape nothing here.
        let mut targets = Vec::new();
        for job in scrape_configs.iter_mut() {
            let name = job["job_name"].as_str().unwrap_or_default().to_owned();
            let target = match name.as_str() {
                "likes-api" => api_metrics,
                "likes-worker" => worker_metrics,
                other => anyhow::bail!("{PROMETHEUS_CONFIG}: unknown job {other:?}"),
            };
            let job = job
                .as_mapping_mut()
                .ok_or_else(|| anyhow::anyhow!("{PROMETHEUS_CONFIG}: a job is no mapping"))?;
            job.retain(|key, _| {
                key.as_str()
                    .is_some_and(|k| !k.ends_with("_sd_configs") && k != "static_configs")
            });
            job.insert(
                "static_configs".into(),
                serde_yaml_ng::from_str(&format!("[{{targets: [\"{target}\"]}}]"))?,
            );
            targets.push((name, target.to_owned()));
        }
        anyhow::ensure!(
            targets.len() == 2,
            "{PROMETHEUS_CONFIG}: jobs {targets:?}, want the api's and the worker's"
        );
        config["global"]["scrape_interval"] = INTERVAL.into();
        config["global"]["evaluation_interval"] = INTERVAL.into();
        // Rule files are read relative to the config, which moves.
        let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
        if let Some(files) = config["rule_files"].as_sequence_mut() {
            for file in files {
                let path = rules_dir.join(file.as_str().unwrap_or_default());
                *file = path.display().to_string().into();
            }
        }

        let dir = std::env::temp_dir().join(format!(
            "likes-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_yaml_ng::to_string(&config)?)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A few hundred series need no more threads.
            .env("GOMAXPROCS", "2")
            .spawn()?;
        Ok(Self {
            child,
            addr,
            dir,
            targets,
        })
    }

    /// What Prometheus logged, for a failure's message.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` of the HTTP API: the `data` of a successful answer.
    async fn api(&self, path: &str) -> anyhow::Result<Json> {
        let (status, body) = http_get(self.addr, path).await?;
        let answer: Json = serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("{path}: HTTP {status}, not JSON ({e}): {body}"))?;
        anyhow::ensure!(
            status == 200 && answer["status"] == "success",
            "{path}: HTTP {status}: {answer}"
        );
        Ok(answer["data"].clone())
    }

    /// An instant query: its result.
    async fn query(&self, promql: &str) -> anyhow::Result<Vec<Json>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await?;
        Ok(match &data["result"] {
            Json::Array(series) => series.clone(),
            // A scalar or a string: one value.
            Json::Null => Vec::new(),
            other => vec![serde_json::json!({ "value": other })],
        })
    }

    /// Waits until Prometheus is ready and both targets are up.
    async fn wait_until_scraping(&self) -> anyhow::Result<()> {
        let ready = eventually(
            Duration::from_secs(30),
            "Prometheus to be ready",
            || async {
                Ok(http_get(self.addr, "/-/ready")
                    .await
                    .ok()
                    .filter(|(status, _)| *status == 200))
            },
        )
        .await;
        if let Err(error) = ready {
            anyhow::bail!("{error}\n{}", self.log());
        }
        eventually(Duration::from_secs(30), "both targets up", || async {
            let data = self.api("/api/v1/targets?state=active").await?;
            let up: BTreeSet<String> = data["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|target| target["health"] == "up")
                .filter_map(|target| Some(target["labels"]["job"].as_str()?.to_owned()))
                .collect();
            Ok(self
                .targets
                .iter()
                .all(|(job, _)| up.contains(job))
                .then_some(()))
        })
        .await
    }

    /// The rule groups loaded are those of `alerts.yml`, with its alerts,
    /// each evaluated without error.
    async fn check_rules_loaded(&self) -> anyhow::Result<()> {
        let file: Yaml = serde_yaml_ng::from_str(&workspace_file(ALERTS)?)?;
        let expected = alert_names(&serde_json::to_value(file)?, "alert");
        let loaded = eventually(
            Duration::from_secs(20),
            "the rules of alerts.yml loaded and evaluated",
            || async {
                let data = self.api("/api/v1/rules").await?;
                let healthy = data["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|group| group["rules"].as_array())
                    .flatten()
                    .all(|rule| rule["health"] == "ok");
                Ok((healthy && alert_names(&data, "name") == expected).then_some(()))
            },
        )
        .await;
        if let Err(error) = loaded {
            let data = self.api("/api/v1/rules").await?;
            anyhow::bail!("{error}; want {expected:?}, loaded: {data}");
        }
        Ok(())
    }

    /// Each template variable's values as Grafana would list them, which
    /// must be the config's jobs and the two processes; with them, what each
    /// variable stands for in a query ("All" selected).
    async fn check_variables(&self) -> anyhow::Result<Vec<(String, String)>> {
        let dashboard: Json = serde_json::from_str(&workspace_file(DASHBOARD)?)?;
        let mut values: Vec<(String, String)> = Vec::new();
        let mut listed = Vec::new();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["type"] != "query" {
                continue;
            }
            let name = variable["name"].as_str().unwrap_or_default().to_owned();
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())
                .unwrap_or_default();
            let (selector, label) = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|args| args.rsplit_once(','))
                .ok_or_else(|| anyhow::anyhow!("${name}: {query} is no label_values(…, label)"))?;
            let selector = substitute(selector, &values)?;
            let path = format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                encode(&selector)
            );
            let found: BTreeSet<String> = self
                .api(&path)
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| Some(v.as_str()?.to_owned()))
                .collect();
            anyhow::ensure!(!found.is_empty(), "${name} ({query}) lists nothing");
            let alternatives: Vec<String> = found.iter().map(|v| regex_escape(v)).collect();
            values.push((name.clone(), format!("({})", alternatives.join("|"))));
            listed.push((name, found));
        }
        let jobs: BTreeSet<String> = self.targets.iter().map(|(job, _)| job.clone()).collect();
        let instances: BTreeSet<String> = self.targets.iter().map(|(_, at)| at.clone()).collect();
        anyhow::ensure!(
            listed == [("job".to_owned(), jobs), ("instance".to_owned(), instances)],
            "the variables list {listed:?}"
        );
        values.push(("__rate_interval".into(), RATE_INTERVAL.into()));
        Ok(values)
    }

    /// Every panel query and every alert's series selectors, retried until
    /// each has returned data once, for at most [`QUERIES_TIMEOUT`]; then
    /// every one that never did is listed with what it last returned.
    async fn check_queries(&self, variables: &[(String, String)]) -> anyhow::Result<()> {
        let dashboard: Json = serde_json::from_str(&workspace_file(DASHBOARD)?)?;
        let mut pending: Vec<Check> = Vec::new();
        for (panel, expr) in panel_queries(&dashboard) {
            pending.push(Check {
                what: format!("panel {panel:?}: {expr}"),
                promql: substitute(&expr, variables)?,
                numbers: true,
            });
        }
        let panels = pending.len();
        let rules: Yaml = serde_yaml_ng::from_str(&workspace_file(ALERTS)?)?;
        let mut alerts = 0;
        for group in rules["groups"].as_sequence().into_iter().flatten() {
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                let (Some(alert), Some(expr)) = (rule["alert"].as_str(), rule["expr"].as_str())
                else {
                    continue;
                };
                alerts += 1;
                // The whole expression runs (it is empty while it does not fire).
                self.query(expr)
                    .await
                    .map_err(|e| anyhow::anyhow!("{alert}: {e}"))?;
                let selectors = series_selectors(expr);
                anyhow::ensure!(!selectors.is_empty(), "{alert}: no series in {expr}");
                for selector in selectors {
                    pending.push(Check {
                        what: format!("alert {alert}: {selector}"),
                        promql: selector,
                        numbers: false,
                    });
                }
            }
        }
        anyhow::ensure!(
            panels >= 20 && alerts >= 8,
            "{panels} queries, {alerts} alerts"
        );
        let total = pending.len();

        let deadline = Instant::now() + QUERIES_TIMEOUT;
        loop {
            let mut still = Vec::new();
            for check in pending {
                let result = self.query(&check.promql).await?;
                let data = if check.numbers {
                    result.iter().any(|series| {
                        series["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(f64::is_finite)
                    })
                } else {
                    !result.is_empty()
                };
                if !data {
                    still.push((check, result));
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let report: Vec<String> = still
                    .iter()
                    .map(|(check, result)| {
                        format!(
                            "{}\n    as run: {}\n    returned: {}",
                            check.what,
                            check.promql,
                            Json::Array(result.clone())
                        )
                    })
                    .collect();
                anyhow::bail!(
                    "{} of {total} queries returned no data in {QUERIES_TIMEOUT:?}:\n{}",
                    report.len(),
                    report.join("\n")
                );
            }
            pending = still.into_iter().map(|(check, _)| check).collect();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A query that must return data.
struct Check {
    /// Where it comes from, as the report names it.
    what: String,
    promql: String,
    /// Whether a series must hold a number (a panel's query), not just exist.
    numbers: bool,
}

/// (panel title, expression) of every query of the dashboard, rows' panels
/// included.
fn panel_queries(dashboard: &Json) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((title.to_owned(), expr.to_owned()));
            }
        }
        queries.extend(panel_queries(panel));
    }
    queries
}

/// (group, its alerts' names) of a document with rule `groups`: the rule
/// file (names under `alert`) or Prometheus's `/api/v1/rules` (`name`).
fn alert_names(doc: &Json, key: &str) -> Vec<(String, Vec<String>)> {
    doc["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|group| {
            let rules = group["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|rule| Some(rule[key].as_str()?.to_owned()))
                .collect();
            (group["name"].as_str().unwrap_or_default().to_owned(), rules)
        })
        .collect()
}

/// `text` with Grafana's variables replaced (`$name` and `${name}`); a `$`
/// left over is a variable the dashboard does not define.
fn substitute(text: &str, variables: &[(String, String)]) -> anyhow::Result<String> {
    let mut out = text.to_owned();
    // Longer names first, so `$a` never eats the start of `$ab`.
    let mut variables = variables.to_vec();
    variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, value) in &variables {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    anyhow::ensure!(!out.contains('$'), "an unknown variable in {text}");
    Ok(out)
}

/// A value as Grafana puts it into a regex matcher of a multi-value
/// variable: regex characters escaped, the backslash doubled for PromQL's
/// string.
fn regex_escape(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if "\\^$*+?.()|{}[]".contains(c) {
                format!("\\\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Percent-encoding of a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GET `http://addr<target>` over HTTP/1.0 (Prometheus closes the
/// connection after its answer): the status and the body.
async fn http_get(addr: SocketAddr, target: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(String::from_utf8(answer)?)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange).await??;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("GET {target}: no HTTP answer: {answer}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {target}: no status in {head}"))?;
    Ok((status, body.to_owned()))
}

/// Words of PromQL that are never a metric name where they stand:
/// aggregations, binary operators, modifiers, numbers.
const KEYWORDS: &str = "sum min max avg group stddev stdvar count count_values bottomk topk \
    quantile limitk limit_ratio and or unless atan2 bool offset inf nan";

/// Modifiers followed by a list of label names.
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";

/// The series selectors of a PromQL expression (`name`, `name{…}` or
/// `{…}`), in order, each once, as written. A name followed by `(` is a
/// function or an aggregation; strings, comments, range and subquery
/// brackets and the label lists of `by`, `on` and the like are skipped.
fn series_selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let skip_blank = |mut at: usize| {
        while chars.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        at
    };
    // The index after the group opened at `at`, strings inside it skipped.
    let close = |at: usize, open: char, close: char| {
        let mut depth = 0;
        let mut i = at;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = end_of_string(&chars, i) - 1,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        chars.len()
    };
    let mut selectors: Vec<String> = Vec::new();
    let mut keep = |selector: String| {
        if !selectors.contains(&selector) {
            selectors.push(selector);
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = end_of_string(&chars, i);
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '{' {
            let end = close(i, '{', '}');
            keep(chars[i..end].iter().collect());
            i = end;
        } else if c.is_ascii_digit() || c == '.' {
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.')
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect::<String>().to_lowercase();
            let next = skip_blank(i);
            let opens = chars.get(next) == Some(&'(');
            if LABEL_LISTS.split_whitespace().any(|w| w == word) {
                if opens {
                    i = close(next, '(', ')');
                }
            } else if !opens && !KEYWORDS.split_whitespace().any(|w| w == word) {
                let end = if chars.get(next) == Some(&'{') {
                    close(next, '{', '}')
                } else {
                    i
                };
                keep(chars[start..end].iter().collect());
                i = end;
            }
        } else {
            i += 1;
        }
    }
    selectors
}

/// The index after the string literal that starts at `at`.
fn end_of_string(chars: &[char], at: usize) -> usize {
    let quote = chars[at];
    let mut i = at + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

#[test]
fn series_selectors_are_found_where_promql_reads_series() {
    assert_eq!(
        series_selectors(
            "sum(rate(a_total{outcome=\"failed\"}[5m])) / sum(rate(a_total[5m])) > 0.01"
        ),
        ["a_total{outcome=\"failed\"}", "a_total"]
    );
    assert_eq!(
        series_selectors(
            "histogram_quantile(0.99, sum by (le, method) (rate(b_bucket{job=~\"$job\", x=\"}\"}[$__rate_interval])))"
        ),
        ["b_bucket{job=~\"$job\", x=\"}\"}"]
    );
    assert_eq!(
        series_selectors(
            "max(depth) > 1e4 and max(deriv(depth[10m] offset 1m)) > bool 0 or up == 0 # up\n"
        ),
        ["depth", "up"]
    );
    assert_eq!(
        series_selectors(
            "sum without (instance) (x) * on (job) group_left rate(y[1m]) unless {__name__=~\"z.*\"} or NaN"
        ),
        ["x", "y", "{__name__=~\"z.*\"}"]
    );
    assert_eq!(
        series_selectors("label_replace(v, \"dst\", \"$1\", \"src\", \"(.*)\") + w [5m:1m]"),
        ["v", "w"]
    );
}

#[test]
fn variables_are_replaced_as_grafana_replaces_them() -> anyhow::Result<()> {
    let variables = [
        ("job".to_owned(), format!("({}|b)", regex_escape("a.b"))),
        ("__rate_interval".to_owned(), "4s".to_owned()),
    ];
    assert_eq!(
        substitute(
            "rate(x{job=~\"$job\"}[$__rate_interval]) + ${job}",
            &variables
        )?,
        "rate(x{job=~\"(a\\\\.b|b)\"}[4s]) + (a\\\\.b|b)"
    );
    assert!(substitute("x{instance=~\"$instance\"}", &variables).is_err());
    Ok(())
}
