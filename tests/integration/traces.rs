//! Logs and traces of the `sluice` binary as deployed: its stderr (not a terminal) is ECS JSON,
//! one object per line, and an order sent with a W3C `traceparent` is followed by its trace id
//! through the ingress, every stage, the dead-letter topic and the sink.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Log filter: every Sluice crate at DEBUG (the per-record lines), the rest at INFO.
const DEBUG_SLUICE: &str =
    "info,sluice=debug,sluice_ingress=debug,sluice_processors=debug,sluice_sinks=debug";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_an_orders_trace_id_is_on_every_log_line_about_it() {
    trace_id_is_on_every_log_line_about_the_order(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_an_orders_trace_id_is_on_every_log_line_about_it() {
    trace_id_is_on_every_log_line_about_the_order(Backend::Embedded).await;
}

/// A random `traceparent` (version 00, sampled) and its trace id.
fn client_traceparent() -> (String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let parent_id = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace_id}-{parent_id}-01"), trace_id)
}

/// Every line of the log file `path`, each parsed as one JSON object (fails on any other line).
fn ecs_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
            for key in [
                "@timestamp",
                "log.level",
                "log.logger",
                "message",
                "service.name",
                "service.version",
                "process.pid",
                "host.hostname",
            ] {
                assert!(value.get(key).is_some(), "no {key} in {line}");
            }
            assert_eq!(value["service.name"], "sluice", "{line}");
            value
        })
        .collect()
}

/// Sends one order of `product` with `traceparent` and returns its id and the `traceparent`
/// answered.
async fn send_order(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    (user, product, quantity): (&str, &str, i64),
    traceparent: &str,
) -> (String, String) {
    let response = client
        .post(format!("{base}/order"))
        .bearer_auth(token)
        .header("traceparent", traceparent)
        .json(&serde_json::json!({ "userId": user, "product": product, "quantity": quantity }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answered = response
        .headers()
        .get("traceparent")
        .expect("the ingress answers with a traceparent")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    (body["orderId"].as_str().unwrap().to_string(), answered)
}

/// Waits until `GET /order/{id}` reports `status`.
async fn wait_status(client: &reqwest::Client, base: &str, token: &str, id: &str, status: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("order {id} {status}"),
        || async {
            let response = client
                .get(format!("{base}/order/{id}"))
                .bearer_auth(token)
                .send()
                .await;
            match response {
                Ok(response) if response.status().is_success() => {
                    let body: Value = response.json().await.unwrap();
                    body["status"] == status
                }
                _ => false,
            }
        },
    )
    .await;
}

/// The lines of `lines` with trace id `trace_id`.
fn of_trace<'a>(lines: &'a [Value], trace_id: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["trace.id"] == trace_id).collect()
}

/// The first line of `lines` logged by `logger` with `message` (and `stage`, if given); a
/// record read again after a rebalance may have more.
fn line<'a>(lines: &[&'a Value], logger: &str, message: &str, stage: Option<&str>) -> &'a Value {
    let found: Vec<&&Value> = lines
        .iter()
        .filter(|l| {
            l["log.logger"] == logger
                && l["message"] == message
                && stage.is_none_or(|stage| l["sluice.stage"] == stage)
        })
        .collect();
    assert!(
        !found.is_empty(),
        "expected a {logger} {message:?} {stage:?} line among {lines:#?}"
    );
    found[0]
}

async fn trace_id_is_on_every_log_line_about_the_order(backend: Backend) {
    let user = users_covering_shards(1).remove(0);
    let ports = Ports::free();
    let long_product = too_long_product();
    let test = test_topology_on(backend, "traces", &[user.as_str()], |t| {
        ports.apply(t);
        t.catalog.insert(
            long_product.clone(),
            sluice_processors::CatalogEntry {
                price: "1.00".into(),
                currency: "EUR".into(),
            },
        );
    });
    shard_refuses_long_products(&test, &user).await;
    let log = test.dir.path().join("sluice.log");
    let mut child = start_sluice(&test.path, &log, &[("RUST_LOG", DEBUG_SLUICE)]);
    let (login_base, order_base) = (ports.login_base(), ports.order_base());
    wait_ready(&order_base, &mut child).await;
    let client = reqwest::Client::new();
    let token = login(&client, &login_base, &user).await;

    let send = |product: &str, quantity: i64, traceparent: &str| {
        let (product, traceparent) = (product.to_string(), traceparent.to_string());
        let (client, order_base, token, user) = (&client, &order_base, &token, &user);
        async move {
            let order = (user.as_str(), product.as_str(), quantity);
            send_order(client, order_base, token, order, &traceparent).await
        }
    };
    // An order with the client's trace: stored.
    let (traceparent, trace_id) = client_traceparent();
    let (stored_id, answered) = send("widget", 2, &traceparent).await;
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")) && answered != traceparent,
        "the answer continues the client's trace with the ingress's span: {answered}"
    );
    // An order that validate rejects (quantity 0): dead-lettered, then recorded by the sink.
    let (rejected_traceparent, rejected_trace_id) = client_traceparent();
    let (rejected_id, _) = send("widget", 0, &rejected_traceparent).await;
    // An order the shard refuses for good (its product is too long to store): the sink
    // records it as rejected.
    let (refused_traceparent, refused_trace_id) = client_traceparent();
    let (refused_id, _) = send(&long_product, 1, &refused_traceparent).await;
    // An invalid traceparent (uppercase hex) is ignored: a new trace, never an error.
    let invalid = format!("00-{}-00f067aa0ba902b7-01", "A".repeat(32));
    let (_, fresh) = send("widget", 1, &invalid).await;
    assert!(
        sluice_core::trace::TraceParent::parse(&fresh).is_some()
            && !fresh.contains(&trace_id)
            && !fresh.contains(&"a".repeat(32)),
        "an invalid traceparent starts a new trace: {fresh}"
    );

    wait_status(&client, &order_base, &token, &stored_id, "stored").await;
    wait_status(&client, &order_base, &token, &rejected_id, "rejected").await;
    wait_status(&client, &order_base, &token, &refused_id, "rejected").await;
    // The sink logs its line after the commit that made the order visible: give it a moment.
    let expected_lines = |lines: &[Value]| {
        of_trace(lines, &trace_id)
            .iter()
            .any(|l| l["message"] == "order stored")
            && [&rejected_trace_id, &refused_trace_id].iter().all(|id| {
                of_trace(lines, id)
                    .iter()
                    .any(|l| l["message"] == "rejection recorded")
            })
    };
    eventually(Duration::from_secs(10), "the sink's lines", || async {
        expected_lines(&ecs_lines(&log))
    })
    .await;
    assert!(terminate(child).success(), "sluice did not stop cleanly");

    let lines = ecs_lines(&log);
    assert!(
        lines.iter().any(|l| l["message"] == "stage started"),
        "INFO lines are ECS too"
    );
    let traced = of_trace(&lines, &trace_id);
    let accepted = line(
        &traced,
        "sluice_ingress::routes::order",
        "order accepted",
        None,
    );
    let mut spans = vec![&accepted["span.id"]];
    for stage in ["validate", "enrich", "route"] {
        let processed = line(
            &traced,
            "sluice_processors::runner",
            "record processed",
            Some(stage),
        );
        spans.push(&processed["span.id"]);
    }
    let stored = line(&traced, "sluice_sinks::worker", "order stored", None);
    spans.push(&stored["span.id"]);
    for l in &traced {
        assert_eq!(l["sluice.order_id"], stored_id.as_str(), "{l}");
    }
    let distinct: std::collections::HashSet<String> = spans
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(distinct.len(), 5, "one span per hop: {spans:?}");
    assert!(
        distinct.iter().all(|s| s.len() == 16),
        "span ids are 16 hex digits: {spans:?}"
    );
    // The client's span is the ingress's parent, not one of Sluice's.
    assert!(!distinct.iter().any(|s| traceparent.contains(s.as_str())));

    let rejected = of_trace(&lines, &rejected_trace_id);
    line(
        &rejected,
        "sluice_ingress::routes::order",
        "order accepted",
        None,
    );
    let dead = line(
        &rejected,
        "sluice_processors::runner",
        "dead-lettering record",
        Some("validate"),
    );
    assert!(dead["sluice.reason"]
        .as_str()
        .unwrap()
        .contains("quantity 0"));
    line(
        &rejected,
        "sluice_sinks::worker",
        "rejection recorded",
        None,
    );
    for l in &rejected {
        assert_eq!(l["sluice.order_id"], rejected_id.as_str(), "{l}");
    }

    // The sink's warning about the refused order names its trace and the sink's span, the
    // span under which the sink then records the rejection.
    let refused = of_trace(&lines, &refused_trace_id);
    let warning = line(
        &refused,
        "sluice_sinks::worker",
        "the shard refused an order for good; recording it as rejected",
        None,
    );
    assert_eq!(warning["log.level"], "warn", "{warning}");
    let recorded = line(&refused, "sluice_sinks::worker", "rejection recorded", None);
    let span = warning["span.id"].as_str().unwrap_or_default();
    assert_eq!(
        span.len(),
        16,
        "the warning names the sink's span: {warning}"
    );
    assert_eq!(recorded["span.id"], span, "{recorded}");
    for l in &refused {
        assert_eq!(l["sluice.order_id"], refused_id.as_str(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_spans_reach_an_otlp_collector_and_chain_by_parent() {
    spans_reach_an_otlp_collector_and_chain_by_parent(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_spans_reach_an_otlp_collector_and_chain_by_parent() {
    spans_reach_an_otlp_collector_and_chain_by_parent(Backend::Embedded).await;
}

/// A stand-in OTLP/HTTP collector: keeps every JSON body POSTed to `/v1/traces` (with its
/// content type) and answers 200. Returns its base URL.
async fn collector(received: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>) -> String {
    use warp::Filter;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let route = warp::path!("v1" / "traces")
        .and(warp::post())
        .and(warp::header::<String>("content-type"))
        .and(warp::body::json())
        .map(move |content_type: String, body: Value| {
            received.lock().unwrap().push((content_type, body));
            warp::reply::json(&serde_json::json!({}))
        });
    tokio::spawn(warp::serve(route).incoming(listener).run());
    base
}

/// Every span the collector received, from every body.
fn received_spans(received: &std::sync::Mutex<Vec<(String, Value)>>) -> Vec<Value> {
    let bodies = received.lock().unwrap();
    let mut spans = Vec::new();
    for (content_type, body) in bodies.iter() {
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        for resource in body["resourceSpans"].as_array().expect("resourceSpans") {
            let service = resource["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "service.name")
                .expect("service.name");
            assert_eq!(service["value"]["stringValue"], "sluice");
            for scope in resource["scopeSpans"].as_array().expect("scopeSpans") {
                spans.extend(scope["spans"].as_array().expect("spans").iter().cloned());
            }
        }
    }
    spans
}

async fn spans_reach_an_otlp_collector_and_chain_by_parent(backend: Backend) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let endpoint = collector(received.clone()).await;
    let user = users_covering_shards(1).remove(0);
    let ports = Ports::free();
    // The endpoint comes from the topology on one backend and from the environment on the other.
    let from_env = backend == Backend::Services;
    let test = test_topology_on(backend, "otlp", &[user.as_str()], |t| {
        ports.apply(t);
        if !from_env {
            t.ops.otlp_endpoint = Some(endpoint.clone());
        }
    });
    let log = test.dir.path().join("sluice.log");
    let env: Vec<(&str, &str)> = if from_env {
        vec![
            ("RUST_LOG", "warn"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ]
    } else {
        vec![("RUST_LOG", "warn")]
    };
    let mut child = start_sluice(&test.path, &log, &env);
    let (login_base, order_base) = (ports.login_base(), ports.order_base());
    wait_ready(&order_base, &mut child).await;
    let client = reqwest::Client::new();
    let token = login(&client, &login_base, &user).await;

    let (traceparent, trace_id) = client_traceparent();
    let client_span = traceparent.split('-').nth(2).unwrap().to_string();
    let (order_id, answered) = send_order(
        &client,
        &order_base,
        &token,
        (&user, "widget", 2),
        &traceparent,
    )
    .await;
    wait_status(&client, &order_base, &token, &order_id, "stored").await;
    // The sink's span is exported after its commit; SIGTERM flushes the queue.
    assert!(terminate(child).success(), "sluice did not stop cleanly");

    let spans: Vec<Value> = received_spans(&received)
        .into_iter()
        .filter(|s| s["traceId"] == trace_id)
        .collect();
    let named = |name: &str| -> Value {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name:?} span among {spans:#?}"))
            .clone()
    };
    let ingress = named("POST /order");
    assert_eq!(ingress["parentSpanId"], client_span.as_str());
    assert_eq!(ingress["kind"], 2);
    assert!(
        answered.contains(ingress["spanId"].as_str().unwrap()),
        "the answered traceparent names the ingress's span: {answered}"
    );
    let mut parent = ingress;
    for name in [
        "stage validate",
        "stage enrich",
        "stage route",
        "sink store",
    ] {
        let span = named(name);
        assert_eq!(
            span["parentSpanId"], parent["spanId"],
            "{name} is a child of {}",
            parent["name"]
        );
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start > 0 && start <= end, "{span}");
        let attributes = span["attributes"].as_array().unwrap();
        assert!(
            attributes
                .iter()
                .any(|a| a["key"] == "sluice.order_id"
                    && a["value"]["stringValue"] == order_id.as_str()),
            "{span}"
        );
        parent = span;
    }
}
