//! Zero-downtime restart, as `scripts/restart` does it, under load: a second `sluice run` is
//! started on the same addresses while the first serves a continuous load of new
//! connections (every request on a fresh TCP connection, several clients at once), then the
//! first is sent SIGTERM; the load goes on until the second serves alone. No request may fail
//! (a connection error counts), every order answered 2xx is stored exactly once, the old
//! process exits 0 and the new one serves after it. On Kafka both processes serve side by
//! side for a moment; on the embedded log the new one holds the listeners and waits for the
//! log until the old one has drained.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// How long the old process serves on after SIGTERM with `/readyz` at 503.
const DRAIN_DELAY_MS: u64 = 1_000;

/// Concurrent clients of the load.
const CLIENTS: usize = 8;

/// One request of the load: when it was sent, how long it took, and its outcome.
struct Sample {
    sent: Instant,
    took: Duration,
    outcome: Result<String, String>,
}

/// Orders from `CLIENTS` clients, each request on a new connection, until `stop`.
fn spawn_load(
    order_base: String,
    tokens: Arc<HashMap<String, String>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let users: Vec<String> = tokens.keys().cloned().collect();
    (0..CLIENTS)
        .map(|client_index| {
            let (base, tokens, samples, stop) = (
                order_base.clone(),
                tokens.clone(),
                samples.clone(),
                stop.clone(),
            );
            let user = users[client_index % users.len()].clone();
            tokio::spawn(async move {
                // No idle connections kept, and `Connection: close` on every request: even a
                // request already waiting when the previous one's connection comes back would
                // otherwise be sent on it. Every request opens its own connection.
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let answer = client
                        .post(format!("{base}/order"))
                        .header(reqwest::header::CONNECTION, "close")
                        .bearer_auth(&tokens[&user])
                        .json(&serde_json::json!({ "userId": user, "product": "gadget", "quantity": 1 }))
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await;
                    let outcome = match answer {
                        Ok(response) if response.status().is_success() => {
                            match response.json::<serde_json::Value>().await {
                                Ok(body) => body["orderId"]
                                    .as_str()
                                    .map(str::to_string)
                                    .ok_or_else(|| format!("no orderId in {body}")),
                                Err(error) => Err(format!("body: {error}")),
                            }
                        }
                        Ok(response) => Err(format!("status {}", response.status())),
                        Err(error) => Err(format!("{error:?}")),
                    };
                    samples.lock().unwrap().push(Sample {
                        sent,
                        took: sent.elapsed(),
                        outcome,
                    });
                }
            })
        })
        .collect()
}

/// Waits until `log` (a process's stderr) has a line containing `text`; fails if `process`
/// exits first or after `limit`.
async fn wait_for_line(
    log: &std::path::Path,
    text: &str,
    process: &mut std::process::Child,
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let contents = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = contents.lines().find(|line| line.contains(text)) {
            return line.to_string();
        }
        assert!(
            process.try_wait().unwrap().is_none(),
            "the process exited before logging {text:?}:\n{contents}"
        );
        assert!(
            Instant::now() < deadline,
            "no {text:?} within {limit:?}:\n{contents}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `process` to exit, up to `limit`.
async fn wait_exit(process: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = process.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the old process did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm(process: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn restart_under_load(backend: Backend) {
    let users = users_covering_shards(2);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let ops_port = free_port();
    let test = test_topology_on(backend, "restart", &user_refs, |t| {
        ports.apply(t);
        t.ops.listen = Some(SocketAddr::from(([127, 0, 0, 1], ops_port)));
        t.ingress.drain_delay_ms = Some(DRAIN_DELAY_MS);
    });
    let log_old = test.dir.path().join("old.log");
    let log_new = test.dir.path().join("new.log");
    let env = [("RUST_LOG", "info")];

    let mut old = start_sluice(&test.path, &log_old, &env);
    wait_ready(&ports.login_base(), &mut old).await;
    let client = reqwest::Client::new();
    let mut tokens = HashMap::new();
    for user in &users {
        tokens.insert(
            user.clone(),
            login(&client, &ports.login_base(), user).await,
        );
    }

    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        ports.order_base(),
        Arc::new(tokens),
        samples.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // The new process takes the listeners over, then (embedded) waits for the log or
    // (Kafka) serves beside the old one.
    let handover_started = Instant::now();
    let mut new = start_sluice(&test.path, &log_new, &env);
    wait_for_line(
        &log_new,
        "took over the listeners",
        &mut new,
        Duration::from_secs(30),
    )
    .await;
    match backend {
        Backend::Embedded => {
            let line = wait_for_line(
                &log_new,
                "waiting for the embedded log held by pid",
                &mut new,
                Duration::from_secs(30),
            )
            .await;
            assert!(
                line.contains(&format!("held by pid {}", old.id())),
                "the wait names the old process ({}): {line}",
                old.id()
            );
        }
        Backend::Services => {
            wait_for_line(
                &log_new,
                "sluice is serving",
                &mut new,
                Duration::from_secs(60),
            )
            .await;
            // Both serve side by side for a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    sigterm(&old);
    let status = wait_exit(&mut old, Duration::from_secs(60)).await;
    let old_exited = Instant::now();
    let old_log = std::fs::read_to_string(&log_old).unwrap_or_default();
    assert!(
        status.success(),
        "the old process exits 0 after its drain: {status}\n{old_log}"
    );
    wait_for_line(
        &log_new,
        "sluice is serving",
        &mut new,
        Duration::from_secs(30),
    )
    .await;
    // The new process alone, for a while.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in load {
        worker.await.unwrap();
    }

    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let failures: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    let accepted: Vec<String> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok().cloned())
        .collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= handover_started && s.sent <= old_exited)
        .collect();
    let after = samples
        .iter()
        .filter(|s| s.sent > old_exited && s.outcome.is_ok())
        .count();
    let longest_during = during.iter().map(|s| s.took).max().unwrap_or_default();
    let longest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "restart on {backend:?}: {} requests ({} during the handover of {:?}, {after} after), {} failed; longest request during the handover {longest_during:?}, overall {longest:?}",
        samples.len(),
        during.len(),
        old_exited - handover_started,
        failures.len(),
    );
    if old_exited - handover_started > Duration::from_secs(5) {
        // Slow, though not failed: show what each process did.
        eprintln!(
            "slow handover; old process:\n{old_log}\nnew process:\n{}",
            std::fs::read_to_string(&log_new).unwrap_or_default()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        samples.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(!during.is_empty(), "the load went on during the handover");
    assert!(after > 0, "the new process served after the old one left");
    assert!(
        old_log.contains("drain delay over"),
        "the old process drained:\n{old_log}"
    );

    // Every acknowledged order is stored, once.
    assert_stored_exactly_once(&test, &accepted, Duration::from_secs(90)).await;

    // The new process still serves, and stops cleanly too.
    let response = client
        .get(format!("{}/readyz", ports.login_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the new process is ready");
    assert!(terminate(new).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_under_load_on_kafka_fails_no_request_and_loses_no_order() {
    restart_under_load(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_under_load_on_the_embedded_log_fails_no_request_and_loses_no_order() {
    restart_under_load(Backend::Embedded).await;
}

/// SIGTERM turns `/readyz` to 503 on every listener (the ops one too) at once, while the
/// process goes on serving for the drain delay; then it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_to_503_everywhere_and_serves_on_for_the_drain_delay() {
    let ports = Ports::free();
    let ops_port = free_port();
    let test = test_topology_on(Backend::Embedded, "drain", &["alice"], |t| {
        ports.apply(t);
        t.ops.listen = Some(SocketAddr::from(([127, 0, 0, 1], ops_port)));
        t.ingress.drain_delay_ms = Some(3_000);
    });
    let log = test.dir.path().join("sluice.log");
    let mut process = start_sluice(&test.path, &log, &[("RUST_LOG", "info")]);
    wait_ready(&ports.login_base(), &mut process).await;
    let ops_base = format!("http://127.0.0.1:{ops_port}");
    let client = reqwest::Client::new();
    let bases = [ports.login_base(), ports.order_base(), ops_base];
    for base in &bases {
        let status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{base} is ready before SIGTERM");
    }
    let token = login(&client, &ports.login_base(), "alice").await;
    let terminated = Instant::now();
    sigterm(&process);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for base in &bases {
        let response = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503, "{base}/readyz while draining");
    }
    // Orders are still taken, on new connections too.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = fresh
        .post(format!("{}/order", ports.order_base()))
        .header(reqwest::header::CONNECTION, "close")
        .bearer_auth(&token)
        .json(&serde_json::json!({ "userId": "alice", "product": "gadget", "quantity": 1 }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "an order during the drain delay: {}",
        response.status()
    );
    assert!(terminated.elapsed() < Duration::from_millis(3_000));
    let status = wait_exit(&mut process, Duration::from_secs(30)).await;
    assert!(status.success(), "exits 0 after draining: {status}");
    assert!(
        terminated.elapsed() >= Duration::from_millis(3_000),
        "served on for the drain delay"
    );
}
