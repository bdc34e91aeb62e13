//! The alert rules (`deploy/prometheus/alerts.yml`): valid and behaving as
//! their unit tests say (promtool, from `make tools`), carried unchanged by
//! the Prometheus Operator's PrometheusRule, each with its runbook, and
//! reading only metrics the binaries export.

use crate::docs::{exported_metrics, queried_metrics, workspace_sources};
use crate::repo;
use likes_testkit::tools;
use serde_yaml_ng::Value;
use std::{collections::BTreeSet, process::Command};

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const PROMETHEUS_RULE: &str = "deploy/k8s/monitoring/prometheusrule.yaml";
const RUNBOOKS: &str = "docs/runbooks";

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&repo::read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every alerting rule of `groups`.
fn alerts(groups: &Value) -> Vec<Value> {
    groups
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().cloned().unwrap_or_default())
        .filter(|rule| rule.get("alert").is_some())
        .collect()
}

/// Runs promtool (from `make tools`) in the workspace; fails on its error.
pub(crate) fn promtool(args: &[&str]) {
    let output = Command::new(tools::require("promtool"))
        .args(args)
        .current_dir(repo::root())
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
#[ignore = "needs promtool from `make tools`; `make test` runs it"]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
}

#[test]
fn the_prometheus_rule_carries_the_same_groups() {
    let rules = yaml(RULES);
    let resource = yaml(PROMETHEUS_RULE);
    assert_eq!(resource["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        resource["spec"]["groups"], rules["groups"],
        "{PROMETHEUS_RULE} must hold the groups of {RULES} unchanged"
    );
}

#[test]
fn every_alert_has_its_runbook_and_every_runbook_its_alert() {
    let alerts = alerts(&yaml(RULES)["groups"]);
    assert!(alerts.len() >= 8, "{alerts:?}");
    let index = repo::read(&format!("{RUNBOOKS}/README.md"));
    let mut named = BTreeSet::new();
    for alert in &alerts {
        let name = alert["alert"].as_str().expect("an alert's name");
        let page = format!("{RUNBOOKS}/{name}.md");
        assert_eq!(
            alert["annotations"]["runbook_url"].as_str(),
            Some(page.as_str()),
            "{name}'s runbook_url"
        );
        for section in ["**Meaning.**", "**Confirm.**", "**Act.**"] {
            assert!(repo::read(&page).contains(section), "{page}: {section}");
        }
        assert!(
            index.contains(&format!("[{name}]({name}.md)")),
            "{RUNBOOKS}/README.md lists {name}"
        );
        assert!(
            matches!(
                alert["labels"]["severity"].as_str(),
                Some("page" | "ticket")
            ),
            "{name}: severity page or ticket"
        );
        named.insert(format!("{name}.md"));
    }
    let pages: BTreeSet<String> = std::fs::read_dir(repo::root().join(RUNBOOKS))
        .expect("the runbooks")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "README.md")
        .collect();
    assert_eq!(pages, named, "a runbook for each alert, and no other");
}

#[test]
fn the_alerts_read_only_metrics_the_binaries_export() {
    let rules: serde_json::Value =
        serde_json::to_value(yaml(RULES)).expect("the rules as JSON values");
    let mut read = BTreeSet::new();
    queried_metrics(&rules, &mut read);
    assert!(read.len() >= 8, "{read:?}");
    let exported = exported_metrics(&workspace_sources());
    let missing: Vec<&String> = read.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the alerts read metrics no binary exports: {missing:?}"
    );
}
