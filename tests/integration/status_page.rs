//! The live status page (`/status`) of the `sluice` binary under a continuous load, rendered by
//! a real headless Chromium: the drawing names every stage, shard and the dead-letter topic,
//! and its edges carry non-zero rates. A screenshot goes to `target/tmp/status-page.png`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// Orders naming a product the catalog does not know: the validate stage dead-letters them.
fn spawn_rejected_orders(
    client: reqwest::Client,
    base: String,
    user: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let _ = client
                .post(format!("{base}/order"))
                .bearer_auth(&token)
                .json(
                    &serde_json::json!({ "userId": user, "product": "unobtainium", "quantity": 1 }),
                )
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    })
}

async fn status_json(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let response = client
        .get(format!("{base}/status.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn edge<'a>(status: &'a serde_json::Value, from: &str, to: &str) -> &'a serde_json::Value {
    status["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
        .unwrap_or_else(|| panic!("no edge {from} -> {to} in {status}"))
}

/// Chromium, or `None` (with how to install it) when it is missing outside CI.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("SLUICE_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
        .find(|path| path.is_file());
    if found.is_none() {
        let how = "no Chromium: install Debian's chromium (`bash scripts/infra up` does, as root) or set SLUICE_CHROMIUM";
        assert!(std::env::var_os("CI").is_none(), "{how}");
        eprintln!("skipping the browser half of the status page test: {how}");
    }
    found
}

/// Runs headless Chromium on `url` with `args` and returns its standard output.
async fn run_chromium(chromium: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("Chromium did not finish within 120 s")
        .expect("start Chromium");
    assert!(
        output.status.success(),
        "Chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_draws_the_topology_with_live_rates_in_headless_chromium() {
    let users = users_covering_shards(1);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let ops_port = free_port();
    let test = test_topology_on(Backend::Embedded, "status_page", &user_refs, |t| {
        ports.apply(t);
        t.ops.listen = Some(([127, 0, 0, 1], ops_port).into());
    });
    let ops = format!("http://127.0.0.1:{ops_port}");
    let mut child = start_sluice(
        &test.path,
        &test.dir.path().join("sluice.log"),
        &[("RUST_LOG", "warn")],
    );
    wait_ready(&ports.order_base(), &mut child).await;

    let client = reqwest::Client::new();
    let mut tokens = HashMap::new();
    for user in &users {
        tokens.insert(
            user.clone(),
            login(&client, &ports.login_base(), user).await,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let load = spawn_order_load(
        client.clone(),
        ports.order_base(),
        Arc::new(tokens.clone()),
        accepted.clone(),
        stop.clone(),
    );
    let rejected = spawn_rejected_orders(
        client.clone(),
        ports.order_base(),
        users[0].clone(),
        tokens[&users[0]].clone(),
        stop.clone(),
    );
    eventually(Duration::from_secs(60), "orders to flow", || async {
        accepted.lock().unwrap().len() >= 300
    })
    .await;

    // The data: two samples a second apart give rates; every part runs here.
    status_json(&client, &ops).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let status = status_json(&client, &ops).await;
    assert!(status["interval_seconds"].as_f64().unwrap() >= 0.9);
    let accepted_rate = edge(&status, "ingress", &format!("topic:{}.orders.raw", test.id))["rate"]
        .as_f64()
        .unwrap();
    assert!(accepted_rate > 0.0, "no rate into the raw topic: {status}");
    let dead = &edge(
        &status,
        "stage:validate",
        &format!("topic:{}.orders.dlq", test.id),
    );
    assert!(
        dead["total"].as_f64().unwrap() > 0.0,
        "no dead letters: {status}"
    );
    assert_eq!(status["parts"]["sinks"], true);
    assert_eq!(status["topic_prefix"], format!("{}.", test.id));
    // The lag monitor measures every consumer of this process and the route stage's outputs.
    eventually(Duration::from_secs(30), "every consumer's lag", || async {
        let status = status_json(&client, &ops).await;
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["lag"].as_array().unwrap())
            .all(|lag| lag["records"].is_number() && lag["seconds"].is_number())
    })
    .await;
    let status = status_json(&client, &ops).await;
    assert_eq!(status["lag_reported"], true);
    let shard_topic = format!("topic:{}.orders.shard.1", test.id);
    assert!(
        edge(&status, "stage:route", &shard_topic)["total"].as_f64() > Some(0.0),
        "no end offset of the shard topic: {status}"
    );

    // Development mode serves the page on the public listeners too, loading nothing else.
    let page = client
        .get(format!("{}/status", ports.login_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    assert!(page.text().await.unwrap().contains("<svg"));

    if let Some(chromium) = chromium() {
        let url = format!("{ops}/status");
        // Long enough (in the page's virtual time) for several refreshes of 1.5 s.
        let dom = run_chromium(
            &chromium,
            &url,
            &["--dump-dom", "--virtual-time-budget=6000"],
        )
        .await;
        let graph = dom
            .split("<svg id=\"graph\"")
            .nth(1)
            .and_then(|rest| rest.split("</svg>").next())
            .unwrap_or_else(|| panic!("no graph in the page:\n{dom}"));
        for name in [
            "fused behind validate",
            "fused behind enrich",
            "stage validate",
            "stage enrich",
            "stage route",
            "sink shard0",
            "db shard3",
            "orders.shard.2",
            "orders.dlq",
            ">DLQ<",
        ] {
            assert!(graph.contains(name), "the drawing lacks {name:?}:\n{graph}");
        }
        let rates: Vec<f64> = graph
            .split("data-rate=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next()?.parse().ok())
            .collect();
        assert!(
            rates.iter().any(|&r| r > 0.0),
            "no edge shows a non-zero rate ({rates:?}):\n{graph}"
        );
        // Every consumer shows its lag as figures (records · seconds), not "–".
        let figures = |prefix: &str| {
            graph
                .split(prefix)
                .skip(1)
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                .count()
        };
        // validate (enrich and route run fused behind it, reading no topic) and 4 sinks.
        assert_eq!(
            figures("\">lag "),
            5,
            "stages and sinks show their lag:\n{graph}"
        );
        assert_eq!(
            figures("\">rej "),
            4,
            "sinks show their rejections' lag:\n{graph}"
        );
        assert!(
            graph.contains("class=\"rate hot\""),
            "dead letters flow, but no edge is highlighted:\n{graph}"
        );
        assert!(dom.contains("Consumers") && dom.contains("refreshed"));

        let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        let _ = std::fs::remove_file(&screenshot);
        run_chromium(
            &chromium,
            &url,
            &[
                &format!("--screenshot={}", screenshot.display()),
                "--window-size=1400,900",
                "--hide-scrollbars",
                "--virtual-time-budget=5000",
            ],
        )
        .await;
        let png = std::fs::read(&screenshot).expect("Chromium wrote no screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
        eprintln!("status page screenshot: {}", screenshot.display());
    }

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    rejected.await.unwrap();
    assert!(terminate(child).success(), "sluice did not stop cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_running_some_parts_says_so_on_its_status_page() {
    let ops_port = free_port();
    let test = test_topology("status_some_parts", &[], |t| {
        t.ops.listen = Some(([127, 0, 0, 1], ops_port).into());
    });
    let ops = format!("http://127.0.0.1:{ops_port}");
    let mut child = start_sluice_with(
        &test.path,
        &test.dir.path().join("sluice.log"),
        &[("RUST_LOG", "warn")],
        &["--only", "processors"],
    );
    wait_ready(&ops, &mut child).await;

    let client = reqwest::Client::new();
    let status = status_json(&client, &ops).await;
    assert_eq!(status["parts"]["ingress"], false);
    assert_eq!(status["parts"]["processors"], true);
    let here = |id: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}: {status}"))["here"]
            .clone()
    };
    assert_eq!(here("ingress"), false);
    assert_eq!(here("stage:enrich"), true);
    assert_eq!(here("sink:shard2"), false);

    if let Some(chromium) = chromium() {
        let dom = run_chromium(
            &chromium,
            &format!("{ops}/status"),
            &["--dump-dom", "--virtual-time-budget=3000"],
        )
        .await;
        assert!(
            dom.contains("This process does not run ingress or sinks"),
            "the page does not say which parts run elsewhere:\n{dom}"
        );
        assert!(dom.contains("class=\"node ingress away\""), "{dom}");
        assert!(dom.contains("class=\"node stage\""), "{dom}");
        assert!(dom.contains("not in this process"));
    }
    assert!(terminate(child).success(), "sluice did not stop cleanly");
}
