//! The `sluice` binary on the embedded defaults (embedded log, SQLite shards) when its disk
//! fills up or stalls, under real HTTP load:
//!
//! - the data directory is a small tmpfs (mounted by the test; the tests run as root here and
//!   print why they check nothing where mounting is not allowed), filled by orders until the
//!   log refuses: `/readyz` answers 503 with the reason on the ingress and the `[ops]`
//!   listener, orders get 503 at once, a metric and an error log say why; then the filesystem
//!   grows and the process takes orders again by itself, and every acknowledged order is stored
//!   exactly once in the SQLite shards on that same disk;
//! - an injected write error (`SLUICE_FAULT_LOG_FAIL_FILE`, the same fault where mounting a
//!   filesystem is not allowed): the same refusal, reason and recovery;
//! - a stalled log (an injected stall before every commit): the bounded append queue fills,
//!   orders get 503 at once, memory stays bounded, and it recovers without a restart.
//!
//! Each prints one line like the fault-injection suite's: acknowledged, stored, lost,
//! duplicated, stored despite a 503, and the time from the end of the fault until `/readyz` is
//! 200 again and until the backlog is drained.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use sluice_log_embedded::EmbeddedLogConfig;

/// SIGTERM to the test's `sluice` process and wait, off the async workers; returns whether
/// it exited 0. (Dropped without it, the process is killed: before the mount goes away.)
async fn stop(process: SluiceProcess) -> bool {
    tokio::task::spawn_blocking(move || terminate(process).success())
        .await
        .unwrap()
}

/// What the load saw.
#[derive(Default)]
struct Ledger {
    /// Order ids answered 2xx.
    acknowledged: Vec<String>,
    /// 503 answers: when they came and how long each took.
    unavailable: Vec<(Instant, Duration)>,
    /// Other answers (status) or transport errors (0).
    other: Vec<u16>,
}

/// Orders from `workers` concurrent clients until `stop` is set.
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, tokens: &Arc<HashMap<String, String>>, workers: usize) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let client = reqwest::Client::new();
        let users: Arc<Vec<String>> = Arc::new(tokens.keys().cloned().collect());
        let handles = (0..workers)
            .map(|_| {
                let (client, base, tokens, users, ledger, stop, next) = (
                    client.clone(),
                    base.to_string(),
                    tokens.clone(),
                    users.clone(),
                    ledger.clone(),
                    stop.clone(),
                    next.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let user = &users[n as usize % users.len()];
                        let product = ["widget", "gadget", "gizmo", "sprocket"][n as usize % 4];
                        let started = Instant::now();
                        let sent = client
                            .post(format!("{base}/order"))
                            .bearer_auth(&tokens[user])
                            .json(&serde_json::json!({
                                "userId": user,
                                "product": product,
                                "quantity": 1 + n % 50,
                            }))
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await;
                        match sent {
                            Ok(response) if response.status().is_success() => {
                                let body: serde_json::Value = response.json().await.unwrap();
                                let id = body["orderId"].as_str().unwrap().to_string();
                                ledger.lock().unwrap().acknowledged.push(id);
                            }
                            Ok(response) if response.status() == 503 => {
                                assert!(
                                    response.headers().contains_key("retry-after"),
                                    "a 503 without Retry-After"
                                );
                                ledger
                                    .lock()
                                    .unwrap()
                                    .unavailable
                                    .push((Instant::now(), started.elapsed()));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Ok(response) => ledger
                                .lock()
                                .unwrap()
                                .other
                                .push(response.status().as_u16()),
                            Err(_) => ledger.lock().unwrap().other.push(0),
                        }
                    }
                })
            })
            .collect();
        Load {
            ledger,
            stop,
            workers: handles,
        }
    }

    fn acknowledged(&self) -> usize {
        self.ledger.lock().unwrap().acknowledged.len()
    }

    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.unwrap();
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// `(status, body)` of `GET {base}/readyz`.
async fn readyz(client: &reqwest::Client, base: &str) -> (u16, String) {
    match client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(error) => (0, error.to_string()),
    }
}

/// After a fault that ended at `healed` (`what`), under `load`: waits until `/readyz` on
/// `order_base` is 200, until every order acknowledged so far is stored, and until 300 more
/// orders are acknowledged. Returns how long after `healed` the first two took, and the
/// load's ledger.
async fn recover(
    test: &TestTopology,
    load: Load,
    client: &reqwest::Client,
    order_base: &str,
    healed: Instant,
    what: &str,
) -> (Duration, Duration, Ledger) {
    let ready_after = ready_again(client, &[order_base], healed, what).await;
    let at_heal = load.acknowledged();
    let so_far = load.ledger.lock().unwrap().acknowledged.clone();
    let (_, _) = drained(test, &so_far, Duration::from_secs(120)).await;
    let drained_after = healed.elapsed();
    eventually(
        Duration::from_secs(30),
        &format!("orders to be acknowledged after {what}"),
        || async { load.acknowledged() >= at_heal + 300 },
    )
    .await;
    (ready_after, drained_after, load.finish().await)
}

/// Waits until `/readyz` answers 200 on every one of `bases`, failing 30 s after `since`;
/// returns how long after `since` that was.
async fn ready_again(
    client: &reqwest::Client,
    bases: &[&str],
    since: Instant,
    what: &str,
) -> Duration {
    loop {
        let mut answers = Vec::with_capacity(bases.len());
        for base in bases {
            answers.push(readyz(client, base).await);
        }
        if answers.iter().all(|(status, _)| *status == 200) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "not ready 30 s after {what}: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every stored order id (hex, no dashes) across the four shards, with how often it occurs.
async fn stored_ids(test: &TestTopology) -> HashMap<String, usize> {
    let mut stored = HashMap::new();
    for shard in 0..4 {
        for id in query_strings(test, shard, "SELECT LOWER(HEX(order_id)) FROM orders").await {
            *stored.entry(id).or_default() += 1;
        }
    }
    stored
}

/// Waits until every acknowledged order is stored (or `limit` passes); returns the stored ids
/// and how long that took.
async fn drained(
    test: &TestTopology,
    acknowledged: &[String],
    limit: Duration,
) -> (HashMap<String, usize>, Duration) {
    let started = Instant::now();
    loop {
        let stored = stored_ids(test).await;
        if acknowledged
            .iter()
            .all(|id| stored.contains_key(&id.replace('-', "")))
            || started.elapsed() > limit
        {
            return (stored, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The fault-suite line for one run; asserts nothing was lost or doubled.
fn report(
    fault: &str,
    acknowledged: &[String],
    stored: &HashMap<String, usize>,
    ready_after: Duration,
    drained_after: Duration,
) {
    let expected: HashSet<String> = acknowledged.iter().map(|id| id.replace('-', "")).collect();
    assert_eq!(
        expected.len(),
        acknowledged.len(),
        "an order id was acknowledged twice"
    );
    let lost = expected
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .count();
    let duplicated = stored.values().filter(|&&n| n > 1).count();
    let despite = stored.keys().filter(|id| !expected.contains(*id)).count();
    eprintln!(
        "fault {fault}: acknowledged {} stored {} lost {lost} duplicated {duplicated} stored-despite-503 {despite} \
         ready {} ms drained {} ms",
        expected.len(),
        expected.len() - lost,
        ready_after.as_millis(),
        drained_after.as_millis()
    );
    assert_eq!(lost, 0, "{lost} acknowledged orders were not stored");
    assert_eq!(duplicated, 0, "{duplicated} orders were stored twice");
}

/// A test topology on the embedded defaults whose log and shards live in `data`, with an
/// `[ops]` listener and `[log.embedded]` settings changed by `log_settings`.
fn topology_in(
    name: &str,
    users: &[&str],
    ports: Ports,
    ops: u16,
    data: &Path,
    log_settings: impl FnOnce(&mut EmbeddedLogConfig),
) -> TestTopology {
    test_topology_on(Backend::Embedded, name, users, |t| {
        ports.apply(t);
        t.log.embedded.path = data.join("log.redb");
        for (index, shard) in t.shards.iter_mut().enumerate() {
            shard.url = format!("sqlite://{}/shard{index}.db", data.display());
        }
        log_settings(&mut t.log.embedded);
        t.ops.listen = Some(([127, 0, 0, 1], ops).into());
    })
}

async fn tokens(login_base: &str, users: &[String]) -> Arc<HashMap<String, String>> {
    let client = reqwest::Client::new();
    let mut tokens = HashMap::new();
    for user in users {
        tokens.insert(user.clone(), login(&client, login_base, user).await);
    }
    Arc::new(tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_orders_with_the_reason_and_recovers_when_space_is_freed() {
    disk_fills_and_recovers("disk-full", 0, "cannot write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_watermark_orders_are_refused_and_the_pipeline_drains() {
    disk_fills_and_recovers("disk-watermark", 12, "min_free_mib").await;
}

/// Fills a 40 MiB data directory with orders until the log refuses them, checks the refusal,
/// grows the filesystem to 400 MiB and checks recovery and that nothing was lost or doubled.
async fn disk_fills_and_recovers(fault: &str, min_free_mib: u64, reason: &str) {
    let Some(mount) = Mount::tmpfs(40, fault) else {
        return;
    };
    let users = users_covering_shards(2);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let ops = free_port();
    let test = topology_in("diskfull", &user_refs, ports, ops, mount.path(), |log| {
        log.min_free_mib = min_free_mib
    });
    let (login_base, order_base) = (ports.login_base(), ports.order_base());
    let ops_base = format!("http://127.0.0.1:{ops}");
    let log_file: PathBuf = test.dir.path().join("sluice.log");
    let mut child = start_sluice(&test.path, &log_file, &[("RUST_LOG", "warn")]);
    wait_ready(&order_base, &mut child).await;
    let process = child;
    let client = reqwest::Client::new();
    let tokens = tokens(&login_base, &users).await;

    // Fill the disk with orders from 8 clients until /readyz says why the log refuses.
    let load = Load::start(&order_base, &tokens, 8);
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = readyz(&client, &order_base).await;
        if status == 503 {
            break (status, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the disk did not fill in 240 s ({} orders acknowledged, /readyz {status} {body})",
            load.acknowledged()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503);
    assert!(body.contains(reason), "/readyz gave no reason: {body}");
    let (ops_status, ops_body) = readyz(&client, &ops_base).await;
    assert_eq!(ops_status, 503, "the [ops] listener says ready: {ops_body}");
    assert!(
        ops_body.contains(reason),
        "[ops] /readyz gave no reason: {ops_body}"
    );
    // Orders keep coming for 2 s: they get 503 at once.
    let refused_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // While refusing, the log retries its file: a retry whose small commit fits turns the gauge
    // to 0 until the next append fails again, so watch it for a while rather than once.
    let blocked = if min_free_mib == 0 {
        "sluice_log_write_blocked{reason=\"write_failure\"} 1"
    } else {
        "sluice_log_write_blocked{reason=\"low_disk_space\"} 1"
    };
    let mut metrics = scrape_metrics(&client, &ops_base).await;
    let watched = Instant::now();
    while !metrics.contains(blocked) && watched.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = scrape_metrics(&client, &ops_base).await;
    }
    let ledger = load.finish().await;
    let refusals: Vec<Duration> = ledger
        .unavailable
        .iter()
        .filter(|(at, _)| *at > refused_from)
        .map(|(_, took)| *took)
        .collect();
    assert!(
        !refusals.is_empty(),
        "no order was refused while /readyz was 503"
    );
    let slowest = refusals.iter().max().unwrap();
    // ack_timeout_ms is 5000: a refusal that came from waiting for it is not "at once".
    assert!(
        *slowest < Duration::from_millis(2500),
        "orders waited {slowest:?} for their 503"
    );
    assert!(
        metrics.contains(blocked),
        "no {blocked} in /metrics:\n{metrics}"
    );
    let logged = std::fs::read_to_string(&log_file).unwrap();
    let why = if min_free_mib == 0 {
        "embedded log write failed"
    } else {
        "below [log.embedded] min_free_mib"
    };
    assert!(logged.contains(why), "no error log says {why:?}");
    let mut acknowledged = ledger.acknowledged;
    eprintln!(
        "{fault}: {} orders acknowledged until the disk filled; {} answers of 503 in the 2 s after (slowest {slowest:?}); \
         other answers {:?}",
        acknowledged.len(),
        refusals.len(),
        ledger.other.iter().collect::<HashSet<_>>()
    );

    // Free space: the process takes orders again by itself.
    mount.resize(400);
    let freed = Instant::now();
    let ready_after =
        ready_again(&client, &[&order_base, &ops_base], freed, "space was freed").await;
    // Everything acknowledged before the fault reaches the shards.
    let (_, _) = drained(&test, &acknowledged, Duration::from_secs(120)).await;
    let drained_after = freed.elapsed();
    let load = Load::start(&order_base, &tokens, 8);
    let before = acknowledged.len();
    eventually(
        Duration::from_secs(30),
        "orders to be acknowledged again",
        || async { load.acknowledged() >= 200 },
    )
    .await;
    let ledger = load.finish().await;
    acknowledged.extend(ledger.acknowledged);
    assert!(acknowledged.len() >= before + 200);

    let (stored, _) = drained(&test, &acknowledged, Duration::from_secs(120)).await;
    report(fault, &acknowledged, &stored, ready_after, drained_after);
    assert!(
        stop(process).await,
        "sluice did not stop cleanly after the fault"
    );
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_refuses_orders_at_once_with_bounded_memory_and_recovers() {
    let users = users_covering_shards(2);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let ops = free_port();
    let data = tempfile::tempdir().unwrap();
    let test = topology_in("stall", &user_refs, ports, ops, data.path(), |log| {
        log.max_pending_appends = 32
    });
    let (login_base, order_base) = (ports.login_base(), ports.order_base());
    let stall = test.dir.path().join("stall");
    let log_file = test.dir.path().join("sluice.log");
    let stall_env = stall.display().to_string();
    let mut child = start_sluice(
        &test.path,
        &log_file,
        &[
            ("RUST_LOG", "warn"),
            ("SLUICE_FAULT_LOG_STALL_FILE", stall_env.as_str()),
        ],
    );
    wait_ready(&order_base, &mut child).await;
    let process = child;
    let tokens = tokens(&login_base, &users).await;
    let pid = process.id();

    // 64 clients: far more orders in flight than the queue holds.
    let load = Load::start(&order_base, &tokens, 64);
    eventually(Duration::from_secs(60), "orders to flow", || async {
        load.acknowledged() >= 300
    })
    .await;
    let rss_before = vm_rss_mib(pid);
    std::fs::write(&stall, b"").unwrap();
    let stalled = Instant::now();
    let mut rss_peak = rss_before;
    while stalled.elapsed() < Duration::from_secs(12) {
        rss_peak = rss_peak.max(vm_rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::remove_file(&stall).unwrap();
    let unstalled = Instant::now();
    let client = reqwest::Client::new();
    let (ready_after, drained_after, ledger) =
        recover(&test, load, &client, &order_base, unstalled, "the stall").await;
    // Once the queue is full (32 waiting), new orders are refused without waiting for
    // ack_timeout_ms (5000).
    let quick: Vec<&Duration> = ledger
        .unavailable
        .iter()
        .filter(|(at, _)| *at > stalled + Duration::from_secs(6) && *at < unstalled)
        .map(|(_, took)| took)
        .collect();
    assert!(
        !quick.is_empty(),
        "no order was refused while the log stalled"
    );
    let slowest = **quick.iter().max().unwrap();
    assert!(
        slowest < Duration::from_millis(2500),
        "refusals waited up to {slowest:?}"
    );
    // The stated bound: a stalled log costs at most 64 MiB over the process's size before it.
    assert!(
        rss_peak <= rss_before + 64,
        "memory grew from {rss_before} MiB to {rss_peak} MiB while the log stalled"
    );
    let (stored, _) = drained(&test, &ledger.acknowledged, Duration::from_secs(120)).await;
    eprintln!(
        "embedded-log-stall: {} refusals in the last 6 s of the stall (slowest {slowest:?}); RSS {rss_before} MiB before, \
         {rss_peak} MiB peak",
        quick.len()
    );
    report(
        "embedded-log-stall",
        &ledger.acknowledged,
        &stored,
        ready_after,
        drained_after,
    );
    assert!(
        stop(process).await,
        "sluice did not stop cleanly after the stall"
    );
}

/// Resident memory of process `pid`, in MiB.
fn vm_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_write_error_refuses_orders_with_the_reason_and_recovers() {
    // The same fault as a full disk where mounting one is not allowed: every commit of the
    // embedded log fails as an I/O error would while the fail file exists.
    let users = users_covering_shards(2);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let ops = free_port();
    let data = tempfile::tempdir().unwrap();
    let test = topology_in("ioerr", &user_refs, ports, ops, data.path(), |_| {});
    let (login_base, order_base) = (ports.login_base(), ports.order_base());
    let ops_base = format!("http://127.0.0.1:{ops}");
    let fail = test.dir.path().join("fail");
    let fail_env = fail.display().to_string();
    let log_file = test.dir.path().join("sluice.log");
    let mut child = start_sluice(
        &test.path,
        &log_file,
        &[
            ("RUST_LOG", "warn"),
            ("SLUICE_FAULT_LOG_FAIL_FILE", fail_env.as_str()),
        ],
    );
    wait_ready(&order_base, &mut child).await;
    let process = child;
    let client = reqwest::Client::new();
    let tokens = tokens(&login_base, &users).await;

    let load = Load::start(&order_base, &tokens, 8);
    eventually(Duration::from_secs(60), "orders to flow", || async {
        load.acknowledged() >= 500
    })
    .await;
    std::fs::write(&fail, b"").unwrap();
    let failed = Instant::now();
    eventually(Duration::from_secs(10), "/readyz to turn 503", || async {
        readyz(&client, &order_base).await.0 == 503
    })
    .await;
    for base in [&order_base, &ops_base] {
        let (status, body) = readyz(&client, base).await;
        assert_eq!(status, 503);
        assert!(body.contains("injected write failure"), "no reason: {body}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(&fail).unwrap();
    let healed = Instant::now();
    let (ready_after, drained_after, ledger) =
        recover(&test, load, &client, &order_base, healed, "the fault").await;
    let refusals: Vec<Duration> = ledger
        .unavailable
        .iter()
        .filter(|(at, _)| *at > failed + Duration::from_millis(500) && *at < healed)
        .map(|(_, took)| *took)
        .collect();
    assert!(
        !refusals.is_empty(),
        "no order was refused while writes failed"
    );
    let slowest = *refusals.iter().max().unwrap();
    assert!(
        slowest < Duration::from_millis(2500),
        "orders waited {slowest:?} for their 503"
    );
    let (stored, _) = drained(&test, &ledger.acknowledged, Duration::from_secs(120)).await;
    let logged = std::fs::read_to_string(&log_file).unwrap();
    assert!(logged.contains("embedded log write failed"), "no error log");
    report(
        "embedded-write-error",
        &ledger.acknowledged,
        &stored,
        ready_after,
        drained_after,
    );
    assert!(
        stop(process).await,
        "sluice did not stop cleanly after the fault"
    );
}
