//! The alert rules shipped with the compose stack, checked by Prometheus's own `promtool`:
//! the rules and the shipped `prometheus.yml` are valid, every alert passes its unit tests
//! (`compose/prometheus/rules/sluice.test.yml`), and every alert has what on-call needs: a
//! `for:`, a severity, a summary, a description naming its runbook step, that runbook step
//! in `compose/README.md`, a unit test where it fires and one where it stays quiet.
//!
//! `promtool` comes from Debian's `prometheus` package (`scripts/infra up` installs it). When
//! it is missing the tests fail under CI (`CI` set) and are skipped elsewhere.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Runs `promtool <args>` in `dir` and fails with its output unless it exits 0.
fn promtool(dir: &Path, args: &[&str]) {
    let Some(promtool) = prometheus_tool("promtool") else {
        return;
    };
    let output = Command::new(&promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", promtool.display()));
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_shipped_alert_rules_are_valid() {
    promtool(
        &compose_prometheus_dir().join("rules"),
        &["check", "rules", "sluice.yml"],
    );
}

#[test]
fn the_shipped_prometheus_config_is_valid_and_loads_the_rules() {
    // `check config` also checks every file of `rule_files`, resolved beside the config.
    promtool(
        &compose_prometheus_dir(),
        &["check", "config", "prometheus.yml"],
    );
    let config = std::fs::read_to_string(compose_prometheus_dir().join("prometheus.yml")).unwrap();
    assert!(
        config.contains("rules/sluice.yml"),
        "compose/prometheus/prometheus.yml does not load rules/sluice.yml"
    );
    let compose =
        std::fs::read_to_string(compose_prometheus_dir().join("../docker-compose.yml")).unwrap();
    assert!(
        compose.contains("./prometheus/rules:/etc/prometheus/rules:ro"),
        "compose/docker-compose.yml does not mount the rules next to prometheus.yml"
    );
}

#[test]
fn every_alert_passes_its_unit_tests() {
    promtool(
        &compose_prometheus_dir().join("rules"),
        &["test", "rules", "sluice.test.yml"],
    );
}

/// One `- alert:` entry of the rules file, as text.
struct Alert {
    name: String,
    text: String,
}

/// The alerts of `compose/prometheus/rules/sluice.yml`, each with its lines up to the next
/// (the file holds alerts only, no recording rules).
fn alerts() -> Vec<Alert> {
    let rules = std::fs::read_to_string(compose_prometheus_dir().join("rules/sluice.yml")).unwrap();
    let mut alerts: Vec<Alert> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            alerts.push(Alert {
                name: name.trim().to_string(),
                text: String::new(),
            });
        } else if let Some(alert) = alerts.last_mut() {
            alert.text.push_str(line);
            alert.text.push('\n');
        }
    }
    alerts
}

#[test]
fn every_alert_has_a_for_a_severity_a_runbook_step_and_tests_that_fire_and_stay_quiet() {
    let alerts = alerts();
    let names: Vec<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for required in [
        "SluiceDown",
        "SluiceLogRecordsSkipped",
        "SluiceSinkRetrying",
        "SluiceOrders503Ratio",
        "SluiceConsumerLagGrowing",
        "SluiceConsumerLagOld",
        "SluiceOrderFreshnessSlow",
        "SluiceSinkBatchesFenced",
        "SluiceLogWriteBlocked",
        "SluiceLogDiskLow",
    ] {
        assert!(
            names.contains(&required),
            "no alert {required} in {names:?}"
        );
    }

    let tests =
        std::fs::read_to_string(compose_prometheus_dir().join("rules/sluice.test.yml")).unwrap();
    // For each alert: does some test case expect it to fire, and some expect it quiet?
    let (mut fires, mut quiet) = (Vec::new(), Vec::new());
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let (Some(name), Some(expected)) = (&current, line.strip_prefix("exp_alerts:")) {
            if expected.trim() == "[]" {
                quiet.push(name.clone());
            } else {
                fires.push(name.clone());
            }
            current = None;
        }
    }
    let readme = std::fs::read_to_string(compose_prometheus_dir().join("../README.md")).unwrap();

    let mut problems = Vec::new();
    for alert in &alerts {
        let name = &alert.name;
        let text = &alert.text;
        if !text.contains("\n        for: ") {
            problems.push(format!("{name}: no `for:`"));
        }
        if !text.contains("severity: critical") && !text.contains("severity: warning") {
            problems.push(format!("{name}: no severity label (critical or warning)"));
        }
        if !text.contains("summary: ") {
            problems.push(format!("{name}: no summary"));
        }
        if !text.contains(&format!("Runbook: compose/README.md, Runbook, {name}.")) {
            problems.push(format!(
                "{name}: the description does not name its runbook step"
            ));
        }
        if !readme.contains(&format!("\n### {name}\n")) {
            problems.push(format!("{name}: no `### {name}` step in compose/README.md"));
        }
        if !fires.contains(name) {
            problems.push(format!("{name}: no unit test where it fires"));
        }
        if !quiet.contains(name) {
            problems.push(format!("{name}: no unit test where it stays quiet"));
        }
    }
    assert!(
        problems.is_empty(),
        "alert rules lack:\n{}",
        problems.join("\n")
    );
}
