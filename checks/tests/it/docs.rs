//! What the docs and the dashboard say agrees with the code:
//! `docs/configuration.md`'s table lists every key of `config/default.toml`
//! with its default (and nothing else); `docs/operations.md`'s metrics table
//! is `likes_service::telemetry::catalog` rendered, the one description of
//! each metric, and the catalog names exactly the metrics the sources
//! record; every metric the Grafana dashboard queries is one a binary
//! exports; every error reason the api sends is in `docs/api.md`. Each
//! check also refuses a broken copy.

use crate::repo;
use std::collections::{BTreeMap, BTreeSet};

/// `LIKES__SECTION__KEY` → default, as the configuration table has them: a
/// cell's first code span, or `""` for "empty".
fn readme_settings(readme: &str) -> BTreeMap<String, String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration"))
        .expect("a Configuration section");
    let mut table = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `LIKES__")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let default = if cells[2].starts_with("empty") {
            String::new()
        } else {
            code_spans(cells[2]).first().cloned().unwrap_or_default()
        };
        for variable in code_spans(cells[1]) {
            table.insert(variable, default.clone());
        }
    }
    table
}

fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `LIKES__SECTION__KEY` → default, from the committed defaults.
fn default_settings(toml: &str) -> BTreeMap<String, String> {
    let table: toml::Table = toml.parse().expect("config/default.toml is TOML");
    let mut settings = BTreeMap::new();
    for (section, keys) in &table {
        for (key, value) in keys.as_table().expect("sections of keys") {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let variable = format!("LIKES__{}__{}", section, key).to_uppercase();
            settings.insert(variable, value);
        }
    }
    settings
}

fn table_problems(readme: &str, defaults: &str) -> Vec<String> {
    let listed = readme_settings(readme);
    let defaults = default_settings(defaults);
    let mut problems = Vec::new();
    for (variable, default) in &defaults {
        match listed.get(variable) {
            None => problems.push(format!("{variable} is not in the docs' table")),
            Some(shown) if shown != default => problems.push(format!(
                "{variable}: the docs say {shown:?}, config/default.toml {default:?}"
            )),
            Some(_) => {}
        }
    }
    for variable in listed.keys().filter(|v| !defaults.contains_key(*v)) {
        problems.push(format!("{variable} is in the docs but is no setting"));
    }
    problems
}

#[test]
fn the_docs_list_every_setting_with_its_default() {
    let readme = repo::read("docs/configuration.md");
    let defaults = repo::read("config/default.toml");
    let problems = table_problems(&readme, &defaults);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(readme_settings(&readme).len() >= 20);

    let changed = readme.replace(
        "| `LIKES__WORKER__BATCH_SIZE` | `500` |",
        "| `LIKES__WORKER__BATCH_SIZE` | `250` |",
    );
    assert_eq!(
        table_problems(&changed, &defaults),
        ["LIKES__WORKER__BATCH_SIZE: the docs say \"250\", config/default.toml \"500\""]
    );
    let extra = defaults.replace("[log]\n", "[log]\ncolour = \"auto\"\n");
    assert_eq!(
        table_problems(&readme, &extra),
        ["LIKES__LOG__COLOUR is not in the docs' table"]
    );
}

/// Names `likes_…` in `text` (metric names: lowercase and `_`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("likes_") {
        let before = rest[..at].chars().next_back();
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    names
}

/// Metrics the dashboard's queries read, without the histogram suffixes.
pub(crate) fn queried_metrics(dashboard: &serde_json::Value, into: &mut BTreeSet<String>) {
    match dashboard {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => {
                        for name in metric_names(expr) {
                            let base = ["_bucket", "_sum", "_count"]
                                .iter()
                                .find_map(|s| name.strip_suffix(s))
                                .unwrap_or(&name);
                            into.insert(base.to_owned());
                        }
                    }
                    _ => queried_metrics(value, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queried_metrics(v, into)),
        _ => {}
    }
}

/// Metrics the sources register with `counter!`, `gauge!` or `histogram!`.
pub(crate) fn exported_metrics(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for kind in ["counter!(", "gauge!(", "histogram!("] {
        for (at, _) in source.match_indices(kind) {
            let args = source[at + kind.len()..].trim_start();
            if let Some(literal) = args.strip_prefix('"') {
                let name = literal.split('"').next().unwrap_or_default();
                if name.starts_with("likes_") {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

fn rust_sources(dir: &std::path::Path, into: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}

/// The Rust sources of every crate's `src/` in the workspace.
pub(crate) fn workspace_sources() -> String {
    let mut source = String::new();
    for entry in std::fs::read_dir(repo::root())
        .expect("the workspace root")
        .flatten()
    {
        let src = entry.path().join("src");
        if src.is_dir() {
            rust_sources(&src, &mut source);
        }
    }
    source
}

/// The metrics table as `docs/operations.md` must hold it: the catalog
/// rendered, one row per metric.
fn metrics_table() -> String {
    use likes_service::telemetry::catalog::{Kind, METRICS};
    let mut table = String::from("| Metric | Binary | Kind | Meaning |\n|---|---|---|---|\n");
    for metric in METRICS {
        let labels = if metric.labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", metric.labels.join(","))
        };
        let kind = match metric.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        table.push_str(&format!(
            "| `{}{labels}` | {} | {kind} | {} |\n",
            metric.name,
            metric.role.as_str(),
            metric.help
        ));
    }
    table
}

#[test]
fn every_recorded_metric_is_described_and_the_docs_table_is_the_catalog() {
    let recorded = exported_metrics(&workspace_sources());
    let described: BTreeSet<String> = likes_service::telemetry::catalog::METRICS
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    assert!(recorded.len() >= 20, "{recorded:?}");
    assert_eq!(
        recorded, described,
        "the sources record (left) and telemetry::catalog describes (right) other metrics"
    );
    let table = metrics_table();
    assert!(
        repo::read("docs/operations.md").contains(&table),
        "docs/operations.md must hold the catalog's table as it is now:\n\n{table}"
    );
}

#[test]
fn the_dashboard_queries_only_metrics_the_binaries_export() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo::read("deploy/grafana/likes-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    queried_metrics(&dashboard, &mut queried);
    let source = workspace_sources();
    let exported = exported_metrics(&source);
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(queried.len() >= 5, "{queried:?}");
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no binary exports: {missing:?}"
    );

    let mut broken = BTreeSet::new();
    queried_metrics(
        &serde_json::json!({"panels": [{"targets": [{"expr": "rate(likes_made_up_total[1m])"}]}]}),
        &mut broken,
    );
    assert!(!broken.is_subset(&exported), "{broken:?}");
}

/// The reasons the api's errors carry (`ErrorInfo.reason`,
/// `FieldViolation.reason`): the upper-case string literals of
/// `api/src/error.rs` outside its tests.
fn error_reasons(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    code.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.len() > 2 && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_error_reason_the_api_sends_is_in_the_docs() {
    let reasons = error_reasons(&repo::read("api/src/error.rs"));
    assert!(reasons.len() >= 10, "{reasons:?}");
    let docs = repo::read("docs/api.md");
    let missing: Vec<&String> = reasons
        .iter()
        .filter(|r| !docs.contains(&format!("`{r}`")))
        .collect();
    assert!(missing.is_empty(), "docs/api.md does not name {missing:?}");
    let broken = error_reasons("x(\"MADE_UP_REASON\")\n#[cfg(test)]\n\"IN_A_TEST\"");
    assert_eq!(broken, BTreeSet::from(["MADE_UP_REASON".to_owned()]));
}
