//! `Idempotency-Key` across processes, with the `sluice` binary as a user runs it and a real
//! HTTP client: a keyed order retried after `kill -9` and a restart, and an order answered 503
//! (an acknowledgement timeout of 1 ms, so the append lands after the answer) retried in the
//! same process and again after `kill -9` and a restart. Each time the retry gets the same
//! `orderId` and the shards store exactly one row, with the first body.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

const USER: &str = "alice";

fn start(test: &TestTopology, run: usize) -> SluiceProcess {
    let log = test.dir.path().join(format!("sluice-{run}.log"));
    start_sluice(&test.path, &log, &[("RUST_LOG", "warn")])
}

fn kill_9(mut child: SluiceProcess) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Rewrites the topology file with another `ack_timeout_ms` (read when the binary starts).
fn set_ack_timeout_ms(test: &mut TestTopology, ms: u64) {
    test.edit(|t| t.ingress.ack_timeout_ms = ms);
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    key: Option<&str>,
    quantity: i64,
) -> reqwest::Response {
    let mut request = client
        .post(format!("{base}/order"))
        .bearer_auth(token)
        .json(&json!({ "userId": USER, "product": "widget", "quantity": quantity }));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

/// Posts and expects a 202; returns the `orderId`.
async fn accepted(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    key: Option<&str>,
    quantity: i64,
) -> String {
    let response = post(client, base, token, key, quantity).await;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["orderId"].as_str().unwrap().to_string()
}

/// `GET /order/{id}`: the status and the body.
async fn order_status(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
) -> (u16, serde_json::Value) {
    let response = client
        .get(format!("{base}/order/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

async fn wait_stored(client: &reqwest::Client, base: &str, token: &str, id: &str) {
    eventually(
        Duration::from_secs(90),
        "the order to be stored",
        || async {
            let (status, body) = order_status(client, base, token, id).await;
            status == 200 && body["status"] == "stored"
        },
    )
    .await;
}

/// Posts an order without a key and waits until it is stored. The user's records keep their
/// order in every topic (they are keyed by user), so every earlier order of the user has been
/// through its shard's sink by then.
async fn drain_through_sentinel(client: &reqwest::Client, base: &str, token: &str) -> String {
    let sentinel = accepted(client, base, token, None, 1).await;
    wait_stored(client, base, token, &sentinel).await;
    sentinel
}

/// The user's stored rows over all shards: (order id without dashes, quantity).
async fn stored_rows(test: &TestTopology) -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    for shard in 0..4 {
        for line in order_lines(test, shard).await {
            let fields: Vec<&str> = line.split('|').collect();
            if fields[1] == USER {
                rows.push((fields[0].to_string(), fields[3].parse().unwrap()));
            }
        }
    }
    rows.sort();
    rows
}

fn hex(id: &str) -> String {
    id.replace('-', "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_a_keyed_retry_after_kill_9_stores_one_order() {
    keyed_retry_after_kill_9_stores_one_order(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_a_keyed_retry_after_kill_9_stores_one_order() {
    keyed_retry_after_kill_9_stores_one_order(Backend::Embedded).await;
}

async fn keyed_retry_after_kill_9_stores_one_order(backend: Backend) {
    let ports = Ports::free();
    let test = test_topology_on(backend, "idem_kill", &[USER], |t| ports.apply(t));
    let (login_base, base) = (ports.login_base(), ports.order_base());
    let client = reqwest::Client::new();

    let mut child = start(&test, 1);
    wait_ready(&base, &mut child).await;
    let token = login(&client, &login_base, USER).await;
    let same = accepted(&client, &base, &token, Some("order-same"), 2).await;
    let changed = accepted(&client, &base, &token, Some("order-changed"), 2).await;
    assert_eq!(
        same,
        sluice_ingress::idempotency::order_id(USER, "order-same").to_string(),
        "a keyed order's id is derived from the user and the key"
    );
    assert_ne!(same, changed);
    // A derived id carries no time, yet the accepting process reports it pending, not unknown.
    let (status, body) = order_status(&client, &base, &token, &same).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["status"] == "pending" || body["status"] == "stored",
        "{body}"
    );
    kill_9(child);

    // A new process knows neither key: the retries append the same ids once more.
    let mut child = start(&test, 2);
    wait_ready(&base, &mut child).await;
    assert_eq!(
        accepted(&client, &base, &token, Some("order-same"), 2).await,
        same
    );
    // The same key with another body: the process cannot tell, so it answers with the same id,
    // and the shard keeps the first body.
    assert_eq!(
        accepted(&client, &base, &token, Some("order-changed"), 7).await,
        changed
    );
    // While this process remembers the key, any body but the first one it saw is refused.
    let (status, code, _) =
        error_of(post(&client, &base, &token, Some("order-changed"), 2).await).await;
    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
    let sentinel = drain_through_sentinel(&client, &base, &token).await;

    let rows = stored_rows(&test).await;
    let mut expected = vec![(hex(&same), 2), (hex(&changed), 2), (hex(&sentinel), 1)];
    expected.sort();
    assert_eq!(
        rows, expected,
        "each key must be stored exactly once, with its first body"
    );
    // Its prices are those of the first body too (the repeat was enriched later, yet did not
    // reprice the order with its own quantity).
    let (_, body) = order_status(&client, &base, &token, &changed).await;
    let order = &body["order"];
    assert_eq!(order["quantity"], 2, "{body}");
    assert_eq!(
        order["lineTotalMinor"].as_i64().unwrap(),
        2 * order["unitPriceMinor"].as_i64().unwrap(),
        "{body}"
    );
    assert!(terminate(child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_a_503_then_a_restart_then_a_retry_stores_one_order() {
    unacknowledged_then_restart_then_retry_stores_one_order(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_a_503_then_a_restart_then_a_retry_stores_one_order() {
    unacknowledged_then_restart_then_retry_stores_one_order(Backend::Embedded).await;
}

async fn unacknowledged_then_restart_then_retry_stores_one_order(backend: Backend) {
    let ports = Ports::free();
    let mut test = test_topology_on(backend, "idem_503", &[USER], |t| ports.apply(t));
    let (login_base, base) = (ports.login_base(), ports.order_base());
    let client = reqwest::Client::new();

    // Log in while the log acknowledges in time (a login is recorded in the log too).
    let mut child = start(&test, 1);
    wait_ready(&base, &mut child).await;
    let token = login(&client, &login_base, USER).await;
    assert!(terminate(child).success());

    // With a 1 ms acknowledgement timeout the ingress answers 503 while the append still
    // lands: the order is stored although the client was told it may not be.
    set_ack_timeout_ms(&mut test, 1);
    let mut child = start(&test, 2);
    wait_ready(&base, &mut child).await;
    let mut unacknowledged = None;
    for n in 0..100 {
        let key = format!("slow-{n}");
        let response = post(&client, &base, &token, Some(&key), 2).await;
        if response.status() == 503 {
            assert!(response.headers().contains_key("retry-after"));
            unacknowledged = Some(key);
            break;
        }
        assert_eq!(response.status(), 202);
    }
    let key =
        unacknowledged.expect("no order was answered 503 with a 1 ms acknowledgement timeout");
    let id = sluice_ingress::idempotency::order_id(USER, &key).to_string();
    // A retry in the same process appends the same id again, whatever it is answered.
    let retry = post(&client, &base, &token, Some(&key), 2).await;
    if retry.status() == 202 {
        let body: serde_json::Value = retry.json().await.unwrap();
        assert_eq!(body["orderId"], id.as_str());
    } else {
        assert_eq!(retry.status(), 503);
    }
    wait_stored(&client, &base, &token, &id).await;
    kill_9(child);

    // A restarted process with a normal timeout: the retry is acknowledged with the same id.
    set_ack_timeout_ms(&mut test, 5000);
    let mut child = start(&test, 3);
    wait_ready(&base, &mut child).await;
    assert_eq!(accepted(&client, &base, &token, Some(&key), 2).await, id);
    drain_through_sentinel(&client, &base, &token).await;

    let rows = stored_rows(&test).await;
    let copies = rows
        .iter()
        .filter(|(stored, _)| *stored == hex(&id))
        .count();
    assert_eq!(
        copies, 1,
        "the order answered 503 and retried is stored {copies} times"
    );
    let ids: std::collections::HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), rows.len(), "an order is stored twice: {rows:?}");
    assert!(terminate(child).success());
}
