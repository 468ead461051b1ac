//! The Grafana dashboard and the alert rules against reality: two real `sluice` processes (one
//! on Kafka and the MariaDB shards, one on the embedded log and SQLite shards, so the metrics
//! of both log backends exist) take a little real HTTP load, a real Prometheus (Debian's)
//! scrapes them with the shipped `compose/prometheus/prometheus.yml` and loads the shipped
//! alert rules, and then every PromQL expression of every dashboard panel and every alert
//! rule is run through Prometheus's HTTP API. The test fails listing each expression that
//! errors or returns no series (or only NaN: a latency panel with no observation behind it,
//! or, where the result keeps `instance`, nothing for one of the two processes), and each alert
//! that is pending or firing on this healthy system.
//!
//! An alert's expression returns nothing on a healthy system by design (`up == 0`, `rate > 0`),
//! so each alert is checked without its top-level comparison: [`operands`] splits the
//! expression Prometheus reports for the rule at its top-level comparison (`>`, `==`, ...) and
//! set (`and`, `or`, `unless`) operators, drops the number literals (the thresholds), and every
//! remaining operand must return series. Panels are checked whole, and also operand by operand
//! when they have several, so an `or vector(0)` fallback cannot hide a missing metric.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Grafana's variables, as the dashboard's default view sends them to Prometheus. `$instance`
/// is the multi-value selection of both processes of this test, formatted as Grafana formats a
/// multi-value variable inside a regex matcher (regex-escaped, joined with `|`).
const RATE_INTERVAL: &str = "2m";
const RANGE: &str = "10m";
const INSTANCES: &str = r"127\\.0\\.0\\.1|127\\.0\\.0\\.2";

/// Expressions allowed to return no series on a healthy, freshly started system, with why.
/// Only metrics whose label values exist after an operator's action belong here.
const EMPTY_WHEN_HEALTHY: &[(&str, &str)] = &[(
    "sluice_replay_records_total",
    "its `target` label exists once a `sluice replay` ran",
)];

/// A Prometheus server this test started; killed (that process only) when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` on a free port with `config`, its data in `dir`, and waits until
    /// it is ready.
    async fn start(binary: &Path, config: &Path, dir: &Path, port: u16) -> Self {
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let mut prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return prometheus;
            }
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited during start-up ({status}):\n{}",
                    prometheus.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "prometheus did not become ready:\n{}",
            prometheus.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an instant query: its series, or Prometheus's error.
    async fn query(&self, client: &reqwest::Client, expr: &str) -> Result<Vec<Value>, String> {
        let response = client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|error| format!("answer is not JSON: {error}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        let data = &body["data"];
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            // A scalar or a string is one value.
            _ => vec![data["result"].clone()],
        })
    }

    /// The value of an instant query with one series per instance, by instance.
    async fn by_instance(&self, client: &reqwest::Client, expr: &str) -> HashMap<String, f64> {
        self.query(client, expr)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|series| {
                let instance = series["metric"]["instance"].as_str()?.to_string();
                Some((instance, sample_value(series)?))
            })
            .collect()
    }
}

/// The value of one series of an instant query (`[time, "value"]`).
fn sample_value(series: &Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// The operands of `expr`'s top-level comparison (`==`, `!=`, `>`, `<`, `>=`, `<=`, with or
/// without `bool`) and set (`and`, `or`, `unless`) operators, without the number literals:
/// `a > 0.05` gives `[a]`, `a > 1000 and b > 0` gives `[a, b]`, `(x or y) / z > 1` gives
/// `[(x or y) / z]`. Only depth 0 counts (outside `()`, `{}`, `[]` and string literals), so
/// label matchers and anything in parentheses stay whole. An expression without such an
/// operator is its own single operand.
fn operands(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let boundary = |c: Option<&char>| c.is_none_or(|c| c.is_whitespace() || "()".contains(*c));
    while i < chars.len() {
        let c = chars[i];
        if let Some(open) = quote {
            if c == '\\' {
                i += 2;
                continue;
            }
            if c == open {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            _ if depth == 0 => {
                let rest: String = chars[i..].iter().collect();
                let comparison = ["==", "!=", ">=", "<=", ">", "<"]
                    .into_iter()
                    .find(|op| rest.starts_with(op));
                let set = ["and", "or", "unless"].into_iter().find(|word| {
                    rest.starts_with(word)
                        && boundary(i.checked_sub(1).and_then(|j| chars.get(j)))
                        && boundary(chars.get(i + word.len()))
                });
                if let Some(op) = comparison.or(set) {
                    parts.push(chars[start..i].iter().collect::<String>());
                    i += op.len();
                    start = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(chars[start..].iter().collect());
    parts
        .into_iter()
        .map(|part| strip_modifiers(part.trim()).to_string())
        .filter(|part| !part.is_empty() && part.parse::<f64>().is_err())
        .collect()
}

/// `part` without the binary-operator modifiers that follow an operator (`bool`, `on (...)`,
/// `ignoring (...)`, `group_left (...)`, `group_right (...)`).
fn strip_modifiers(mut part: &str) -> &str {
    loop {
        let before = part;
        if let Some(rest) = part.strip_prefix("bool ") {
            part = rest.trim_start();
        }
        for keyword in ["on", "ignoring", "group_left", "group_right"] {
            if let Some(rest) = part.strip_prefix(keyword) {
                let rest = rest.trim_start();
                if rest.starts_with('(') {
                    if let Some(close) = rest.find(')') {
                        part = rest[close + 1..].trim_start();
                    }
                } else if keyword.starts_with("group_") {
                    part = rest;
                }
            }
        }
        if part == before {
            return part;
        }
    }
}

#[test]
fn operands_split_at_top_level_comparisons_and_set_operators_only() {
    assert_eq!(
        operands(r#"up{job="sluice"} == 0"#),
        [r#"up{job="sluice"}"#]
    );
    assert_eq!(
        operands(r#"max without (endpoint) (rate(x{a!="b>c"}[5m])) > 0"#),
        [r#"max without (endpoint) (rate(x{a!="b>c"}[5m]))"#]
    );
    assert_eq!(
        operands("sum by (g) (a) > 1000 and sum by (g) (deriv(a[10m])) > 0"),
        ["sum by (g) (a)", "sum by (g) (deriv(a[10m]))"]
    );
    assert_eq!(operands("(x or y * 0) / z > 0.05"), ["(x or y * 0) / z"]);
    assert_eq!(
        operands("sum(sluice_orders_total) or vector(0)"),
        ["sum(sluice_orders_total)", "vector(0)"]
    );
    assert_eq!(operands("a > bool 1 unless on (x) b"), ["a", "b"]);
    assert_eq!(
        operands("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))"),
        ["histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))"]
    );
}

/// Grafana's variables replaced by the values the dashboard's default view sends.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("${__rate_interval}", RATE_INTERVAL)
        .replace("$__interval", "15s")
        .replace("${__interval}", "15s")
        .replace("$__range", RANGE)
        .replace("${__range}", RANGE)
        .replace("${instance}", INSTANCES)
        .replace("$instance", INSTANCES)
}

/// Every PromQL expression of the dashboard: `(panel title, expression)` for each target of
/// each panel (rows' nested panels too), with its variables substituted.
fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), substitute(expr)));
                }
            }
            if let Some(nested) = panel["panels"].as_array() {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard["panels"]
            .as_array()
            .expect("the dashboard has panels"),
        &mut out,
    );
    out
}

/// The Prometheus configuration of this test: the shipped compose/prometheus/prometheus.yml
/// with its targets pointed at this test's processes, 1 s intervals, and the shipped rules
/// by absolute path. Fails if the shipped file no longer holds what is replaced.
fn prometheus_config(logins: &[String], orders: &[String], prometheus_port: u16) -> String {
    let shipped = std::fs::read_to_string(compose_prometheus_dir().join("prometheus.yml")).unwrap();
    let rules = compose_prometheus_dir().join("rules/sluice.yml");
    let list = |targets: &[String]| {
        targets
            .iter()
            .map(|target| format!("\"{target}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = shipped;
    for (from, to) in [
        ("\"sluice:3000\"", list(logins)),
        ("\"sluice:3001\"", list(orders)),
        (
            "\"localhost:9090\"",
            format!("\"127.0.0.1:{prometheus_port}\""),
        ),
        ("scrape_interval: 5s", "scrape_interval: 1s".to_string()),
        (
            "evaluation_interval: 5s",
            "evaluation_interval: 1s".to_string(),
        ),
        ("scrape_timeout: 4s", "scrape_timeout: 1s".to_string()),
        ("- rules/sluice.yml", format!("- {}", rules.display())),
    ] {
        assert!(
            config.contains(from),
            "compose/prometheus/prometheus.yml no longer holds `{from}`: update this test"
        );
        config = config.replace(from, &to);
    }
    config
}

/// Logs every user in, sends `good` orders spread over them, 10 a second, and one order with
/// quantity 0 (the validate stage dead-letters it), and returns how many orders were accepted.
async fn put_load(
    client: &reqwest::Client,
    login_base: &str,
    order_base: &str,
    users: &[String],
    good: usize,
) -> usize {
    let mut tokens = Vec::new();
    for user in users {
        tokens.push((user.clone(), login(client, login_base, user).await));
    }
    let mut accepted = 0;
    for n in 0..=good {
        let (user, token) = &tokens[n % tokens.len()];
        let quantity = if n == good { 0 } else { (n % 5) as i64 + 1 };
        let response = client
            .post(format!("{order_base}/order"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "userId": user, "product": "widget", "quantity": quantity }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "order {n} refused");
        let body: Value = response.json().await.unwrap();
        if n == 0 {
            // One status read, so GET /order/{id} has metrics too.
            let id = body["orderId"].as_str().unwrap();
            let status = client
                .get(format!("{order_base}/order/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "GET /order/{id}: {status}");
        }
        accepted += 1;
        // Steady traffic over several scrapes: a series that appears with its first request
        // (a new `status`) needs later increases for rate() to see them.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accepted
}

/// Orders stored across the four shards of `test`.
async fn stored(test: &TestTopology) -> i64 {
    let mut total = 0;
    for shard in 0..4 {
        total += count_rows(test, shard, "orders").await;
    }
    total
}

/// The `instance` of the process on Kafka and MariaDB, and of the one on the embedded log.
const SERVICES_INSTANCE: &str = "127.0.0.1";
const EMBEDDED_INSTANCE: &str = "127.0.0.2";

/// Metrics only the embedded log has: an expression over them needs series from the embedded
/// process only.
const EMBEDDED_ONLY: &[&str] = &[
    "sluice_log_write_blocked",
    "sluice_log_free_bytes",
    "sluice_log_append_queue_records",
];

/// Runs one expression. A failure, described, is: an error; no series (unless
/// [`EMPTY_WHEN_HEALTHY`] allows it); only NaN (a quantile with no observation behind it); or,
/// when the result keeps the `instance` label, no series for one of the two processes (the
/// embedded one alone for [`EMBEDDED_ONLY`] metrics): a metric registered only once it first
/// changes would make `increase`/`rate` alerts miss that first change.
async fn check(
    prometheus: &Prometheus,
    client: &reqwest::Client,
    what: &str,
    expr: &str,
) -> Option<String> {
    let series = match prometheus.query(client, expr).await {
        Err(error) => return Some(format!("{what}: `{expr}` errors: {error}")),
        Ok(series) => series,
    };
    if series.is_empty() {
        return match EMPTY_WHEN_HEALTHY
            .iter()
            .find(|(metric, _)| expr.contains(metric))
        {
            Some((_, why)) => {
                eprintln!("allowed to be empty ({why}): {what}: `{expr}`");
                None
            }
            None => Some(format!("{what}: `{expr}` returns no series")),
        };
    }
    if series
        .iter()
        .all(|s| sample_value(s).is_some_and(f64::is_nan))
    {
        return Some(format!("{what}: `{expr}` returns only NaN"));
    }
    let instances: BTreeSet<&str> = series
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str())
        .collect();
    if instances.is_empty() {
        return None;
    }
    let expected: &[&str] = if EMBEDDED_ONLY.iter().any(|metric| expr.contains(metric)) {
        &[EMBEDDED_INSTANCE]
    } else {
        &[SERVICES_INSTANCE, EMBEDDED_INSTANCE]
    };
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|instance| !instances.contains(instance))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{what}: `{expr}` has no series for instance {missing:?} ({SERVICES_INSTANCE}: Kafka and MariaDB, {EMBEDDED_INSTANCE}: embedded log and SQLite)"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_expression_returns_series_from_a_real_prometheus() {
    let Some(prometheus_binary) = prometheus_tool("prometheus") else {
        return;
    };
    let users = users_covering_shards(1);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();

    // Process 1 on Kafka and MariaDB, on 127.0.0.1; process 2 on the embedded log and SQLite,
    // on 127.0.0.2. Prometheus's `instance` is the host alone, so they are two instances.
    let services_ports = Ports::free();
    let services = test_topology_on(Backend::Services, "dash", &user_refs, |t| {
        services_ports.apply(t)
    });
    let (embedded_login, embedded_order) = (free_port(), free_port());
    let embedded = test_topology_on(Backend::Embedded, "dash_emb", &user_refs, |t| {
        t.ingress.login_listen = ([127, 0, 0, 2], embedded_login).into();
        t.ingress.order_listen = ([127, 0, 0, 2], embedded_order).into();
    });
    let embedded_login_base = format!("http://127.0.0.2:{embedded_login}");
    let embedded_order_base = format!("http://127.0.0.2:{embedded_order}");
    let env = [("RUST_LOG", "warn")];
    let mut services_process = start_sluice_with(
        &services.path,
        &services.dir.path().join("sluice.log"),
        &env,
        &[],
    );
    let mut embedded_process = start_sluice_with(
        &embedded.path,
        &embedded.dir.path().join("sluice.log"),
        &env,
        &[],
    );
    wait_ready(&services_ports.order_base(), &mut services_process).await;
    wait_ready(&embedded_order_base, &mut embedded_process).await;

    // Prometheus: the shipped configuration, pointed at both processes' two listeners.
    let prometheus_dir = tempfile::tempdir().unwrap();
    let prometheus_port = free_port();
    let config = prometheus_config(
        &[
            format!("127.0.0.1:{}", services_ports.login),
            format!("127.0.0.2:{embedded_login}"),
        ],
        &[
            format!("127.0.0.1:{}", services_ports.order),
            format!("127.0.0.2:{embedded_order}"),
        ],
        prometheus_port,
    );
    let config_path = prometheus_dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let prometheus = Prometheus::start(
        &prometheus_binary,
        &config_path,
        prometheus_dir.path(),
        prometheus_port,
    )
    .await;
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "Prometheus to scrape all four Sluice endpoints",
        || async {
            let up = prometheus
                .query(&client, r#"up{job="sluice"} == 1"#)
                .await
                .unwrap_or_default();
            up.len() == 4
        },
    )
    .await;

    // Load while Prometheus scrapes: logins, orders, one dead letter, one status read.
    let services_login_base = services_ports.login_base();
    let services_order_base = services_ports.order_base();
    let (services_accepted, embedded_accepted) = tokio::join!(
        put_load(
            &client,
            &services_login_base,
            &services_order_base,
            &users,
            40
        ),
        put_load(
            &client,
            &embedded_login_base,
            &embedded_order_base,
            &users,
            20
        ),
    );
    eventually(
        Duration::from_secs(120),
        "the good orders to be stored",
        || async {
            stored(&services).await >= services_accepted as i64 - 1
                && stored(&embedded).await >= embedded_accepted as i64 - 1
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "Prometheus to see each process's dead letter",
        || async {
            let dead = prometheus
                .by_instance(
                    &client,
                    r#"sum by (instance) (max without (endpoint) (sluice_stage_records_out_total{outcome="dead_letter"}))"#,
                )
                .await;
            dead.len() == 2 && dead.values().all(|&n| n >= 1.0)
        },
    )
    .await;
    // A few more scrapes and rule evaluations with everything stored.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut failures = Vec::new();
    let mut checked = 0;
    // Every panel's expressions: whole, then operand by operand if it has several.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            compose_prometheus_dir().join("../grafana/dashboards/sluice.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panel_expressions = dashboard_expressions(&dashboard);
    assert!(panel_expressions.len() > 40, "too few panel expressions");
    for (title, expr) in &panel_expressions {
        let mut exprs = vec![expr.clone()];
        let parts = operands(expr);
        if parts.len() > 1 {
            exprs.extend(parts);
        }
        for expr in exprs {
            checked += 1;
            failures
                .extend(check(&prometheus, &client, &format!("panel \"{title}\""), &expr).await);
        }
    }

    // The dashboard's variables: label_values(<selector>, <label>) must list both processes.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let definition = variable["definition"].as_str().unwrap_or_default();
        let Some(inner) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        else {
            continue;
        };
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let series = prometheus
            .query(&client, selector)
            .await
            .unwrap_or_default();
        let values: BTreeSet<&str> = series
            .iter()
            .filter_map(|s| s["metric"][label.trim()].as_str())
            .collect();
        if values != BTreeSet::from([SERVICES_INSTANCE, EMBEDDED_INSTANCE]) {
            failures.push(format!(
                "variable `{}`: `{definition}` lists {values:?}, not both processes",
                variable["name"]
            ));
        }
    }

    // Every alert rule, as Prometheus loaded and evaluated it, without its threshold.
    let rules: Value = client
        .get(format!("{}/api/v1/rules", prometheus.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter(|rule| rule["type"] == "alerting")
        .collect();
    let shipped = std::fs::read_to_string(compose_prometheus_dir().join("rules/sluice.yml"))
        .unwrap()
        .lines()
        .filter(|line| line.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        loaded.len(),
        shipped,
        "Prometheus loaded {} of the {shipped} shipped alerts:\n{}",
        loaded.len(),
        prometheus.log_text()
    );
    for rule in loaded {
        let name = rule["name"].as_str().unwrap_or_default();
        if rule["health"] != "ok" {
            failures.push(format!(
                "alert {name}: health {} ({})",
                rule["health"], rule["lastError"]
            ));
        }
        let expr = rule["query"].as_str().unwrap_or_default();
        for part in operands(expr) {
            checked += 1;
            failures.extend(check(&prometheus, &client, &format!("alert {name}"), &part).await);
        }
    }

    // On this healthy system no alert may be pending or firing. (SluiceLogDiskLow only if the
    // test machine's disk really has less than 1 GiB free.) An alert has 10 s to go away, so a
    // scrape that timed out once on a busy machine (SluiceDown pending) is not a failure.
    let disk_low = !prometheus
        .query(&client, "sluice_log_free_bytes < 1073741824")
        .await
        .unwrap_or_default()
        .is_empty();
    let mut active = Vec::new();
    for _ in 0..10 {
        let alerts: Value = client
            .get(format!("{}/api/v1/alerts", prometheus.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        active = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|alert| !(alert["labels"]["alertname"] == "SluiceLogDiskLow" && disk_low))
            .map(|alert| {
                format!(
                    "alert {} is {} on a healthy system: {}",
                    alert["labels"]["alertname"], alert["state"], alert["labels"]
                )
            })
            .collect();
        if active.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if disk_low {
        eprintln!("SluiceLogDiskLow may be active: this machine has less than 1 GiB free");
    }
    failures.extend(active);

    drop(prometheus);
    assert!(
        failures.is_empty(),
        "{} of {checked} expressions fail against a real Prometheus scraping real Sluice processes:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} expressions checked");
    terminate(services_process);
    terminate(embedded_process);
}
