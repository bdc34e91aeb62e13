//! What the docs and the dashboard say agrees with the code: the README's
//! configuration table lists every key of `config/default.toml` with its
//! default (and nothing else), every metric the Grafana dashboard queries
//! is one a binary exports, and the metrics the sources record, the ones
//! `likes_common::telemetry::catalog` describes and the README's metrics
//! table are the same. Each check also refuses a broken copy.

use crate::repo;
use std::collections::{BTreeMap, BTreeSet};

/// `LIKES__SECTION__KEY` → default, as the README's configuration table has
/// them: a cell's first code span, or `""` for "empty".
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
            None => problems.push(format!("{variable} is not in the README's table")),
            Some(shown) if shown != default => problems.push(format!(
                "{variable}: the README says {shown:?}, config/default.toml {default:?}"
            )),
            Some(_) => {}
        }
    }
    for variable in listed.keys().filter(|v| !defaults.contains_key(*v)) {
        problems.push(format!("{variable} is in the README but is no setting"));
    }
    problems
}

#[test]
fn the_readme_lists_every_setting_with_its_default() {
    let readme = repo::read("README.md");
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
        ["LIKES__WORKER__BATCH_SIZE: the README says \"250\", config/default.toml \"500\""]
    );
    let extra = defaults.replace("[log]\n", "[log]\ncolour = \"auto\"\n");
    assert_eq!(
        table_problems(&readme, &extra),
        ["LIKES__LOG__COLOUR is not in the README's table"]
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
fn queried_metrics(dashboard: &serde_json::Value, into: &mut BTreeSet<String>) {
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
fn exported_metrics(source: &str) -> BTreeSet<String> {
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
fn workspace_sources() -> String {
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

/// The metric names in the README's table of section "Metrics and logs".
fn readme_metrics(readme: &str) -> BTreeSet<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Metrics and logs"))
        .expect("a Metrics and logs section");
    let rows: String = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('|').nth(1).unwrap_or_default())
        .collect();
    metric_names(&rows)
}

#[test]
fn every_recorded_metric_is_described_and_in_the_readme() {
    let recorded = exported_metrics(&workspace_sources());
    let described: BTreeSet<String> = likes_common::telemetry::catalog::METRICS
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    assert!(recorded.len() >= 20, "{recorded:?}");
    assert_eq!(
        recorded, described,
        "the sources record (left) and telemetry::catalog describes (right) other metrics"
    );
    let listed = readme_metrics(&repo::read("README.md"));
    assert_eq!(
        listed, described,
        "the README's metrics table (left) and telemetry::catalog (right) name other metrics"
    );

    let broken = "# likes\n## Metrics and logs\n\n| `likes_made_up_total` | api | counter | no |\n";
    assert!(!readme_metrics(broken).is_subset(&described));
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
