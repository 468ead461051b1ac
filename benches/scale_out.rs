//! `cargo bench --bench scale_out` (part of `make bench`): end-to-end rows/s on Kafka + MariaDB
//! with one and with two `sluice run --only processors` processes, side by side.
//!
//! Each run has a topology of its own (its own topics, consumer groups and shard databases)
//! and runs the release `sluice` binary as separate processes, each with its own copy of the
//! topology and its own `[ops] listen` port:
//!
//! 1. a `--only ingress` process takes the orders over HTTP (JWTs from `/login`, users on every
//!    shard, 64 requests in flight) while no processor runs, so they wait in the raw topic;
//!    the ingress is then stopped;
//! 2. two `--only sinks` processes start (the same two in both runs), and the bench waits until
//!    every sink consumer group (a shard's orders, a shard's rejections) has split its
//!    partitions between them;
//! 3. the clock starts as the processor processes (one, then two) are spawned, and stops when
//!    the sinks' stored positions cover every order.
//!
//! It prints rows/s end to end, how the work was split (`sluice_stage_records_in_total` and
//! `sluice_sink_rows_total` from each process's `/metrics`), and checks that the shards hold
//! one row per order and that every intermediate topic holds one record per order. Figures
//! only: nothing is timed against a limit.
//!
//! SLUICE_BENCH_ORDERS sets the number of orders (default 100 000). A group's second member
//! gets partitions only at the first member's next heartbeat (up to 3 s after it joins), so with
//! a small backlog the second processor process may finish with nothing to do: the table says
//! so. The processes' logs are kept under `target/tmp/scale_out`.
#![allow(clippy::print_stdout)] // a benchmark prints its figures

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use sluice_core::log::{self, Log};

/// Requests in flight while the ingress takes the orders.
const CONCURRENCY: usize = 64;
/// `--only sinks` processes, the same in both runs.
const SINK_PROCESSES: usize = 2;
/// Longest wait for every order to reach the shards.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// The number in environment variable `name`, or `default`.
fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `sluice run --only <part>` process with its own topology copy and operations listener.
/// Killed when dropped, so a failed run leaves no process behind.
struct Part {
    /// What the table calls it, e.g. `processors#1`.
    name: String,
    /// Base URL of its `[ops] listen` listener.
    ops: String,
    /// Its stderr.
    log: PathBuf,
    /// The process; taken when it is stopped.
    child: Option<Child>,
}

impl Part {
    /// Writes a copy of `test`'s topology with a free `[ops] listen` port next to the original
    /// (so relative paths resolve the same) and starts `sluice run --only <part>` on it.
    fn start(test: &TestTopology, part: &str, number: usize, logs: &Path) -> Self {
        let name = format!("{part}#{number}");
        let port = free_port();
        let mut topology = test.topology();
        topology.ops.listen = Some(([127, 0, 0, 1], port).into());
        let topology = sluice::topology::check(topology).expect("the bench topology is valid");
        let path = test
            .dir
            .path()
            .join(format!("topology-{part}-{number}.toml"));
        std::fs::write(&path, toml::to_string(&topology).unwrap()).unwrap();
        let log = logs.join(format!("{}-{part}-{number}.log", test.id));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--only", part, "--topology"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sluice");
        Part {
            name,
            ops: format!("http://127.0.0.1:{port}"),
            log,
            child: Some(child),
        }
    }

    /// Panics (naming its log) if the process has exited.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{} exited with {status}; its log: {}",
                self.name,
                self.log.display()
            );
        }
    }

    /// Waits until its operations listener answers `/readyz` with 200.
    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("{}/readyz", self.ops))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            self.assert_running();
            assert!(Instant::now() < deadline, "{} was not ready", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its `/metrics`.
    async fn metrics(&self) -> Metrics {
        Metrics(scrape_metrics(&reqwest::Client::new(), &self.ops).await)
    }

    /// Its `/metrics`, or none while its listener is not up yet.
    async fn metrics_if_up(&self) -> Metrics {
        let response = reqwest::Client::new()
            .get(format!("{}/metrics", self.ops))
            .send()
            .await;
        match response {
            Ok(response) => Metrics(response.text().await.unwrap_or_default()),
            Err(_) => Metrics(String::new()),
        }
    }

    /// SIGTERM, then waits up to 30 s for a clean exit (then kills it).
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Prometheus text of one process.
struct Metrics(String);

impl Metrics {
    /// Partitions held per consumer group: assigned minus revoked and lost.
    fn held_by_group(&self) -> BTreeMap<String, f64> {
        let mut held = BTreeMap::new();
        let name = "sluice_consumer_rebalanced_partitions_total{";
        for line in self.0.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let (Some(group), Some(change), Ok(value)) = (
                label(labels, "group"),
                label(labels, "change"),
                value.parse::<f64>(),
            ) else {
                continue;
            };
            let sign = if change == "assigned" { 1.0 } else { -1.0 };
            *held.entry(group.to_string()).or_insert(0.0) += sign * value;
        }
        held
    }

    /// Sum of every series of `name` whose labels include `label` (e.g. `stage="route"`; empty:
    /// every series).
    fn sum(&self, name: &str, label: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let labels = match series.strip_prefix(name)? {
                    "" => "",
                    rest => rest.strip_prefix('{')?,
                };
                labels.contains(label).then(|| value.parse::<f64>().ok())?
            })
            // From +0.0: an empty `sum()` of floats is -0.0, printed "-0".
            .fold(0.0, |total, value| total + value)
    }
}

/// The value of label `key` in `labels` (`a="x",b="y"`).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let length = labels[start..].find('"')?;
    Some(&labels[start..start + length])
}

/// Records the sink workers have committed, from their stored positions in the shards (a
/// cheap query to poll, unlike a `COUNT(*)` over growing tables).
async fn sunk_records(test: &TestTopology) -> usize {
    let sql = "SELECT CAST(COALESCE(SUM(next_offset), 0) AS CHAR) FROM sluice_offsets \
               WHERE consumer = 'sink' AND topic LIKE '%orders.shard.%'";
    let mut total = 0;
    for shard in 0..4 {
        total += query_strings(test, shard, sql)
            .await
            .first()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    total
}

/// Rows in the `orders` tables of the four shards, and how many distinct order ids they hold.
async fn stored_rows(test: &TestTopology) -> (usize, usize) {
    let (mut rows, mut distinct) = (0, 0);
    for shard in 0..4 {
        rows += count_rows(test, shard, "orders").await as usize;
        distinct += query_strings(
            test,
            shard,
            "SELECT CAST(COUNT(DISTINCT order_id) AS CHAR) FROM orders",
        )
        .await
        .first()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    }
    (rows, distinct)
}

/// Posts `count` orders with [`CONCURRENCY`] in flight; every one must get 202.
async fn post_orders(base: &str, tokens: &[(String, String)], count: usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        // Below the ingress's keep-alive limit, so no request races a closing connection.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    const PRODUCTS: [&str; 4] = ["widget", "gadget", "gizmo", "sprocket"];
    let requests = (0..count).map(|n| {
        let (user, token) = &tokens[n % tokens.len()];
        let request = client
            .post(format!("{base}/order"))
            .bearer_auth(token)
            .json(&serde_json::json!({
                "userId": user,
                "product": PRODUCTS[n % PRODUCTS.len()],
                "quantity": 1 + n % 5,
            }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202, "an order was not accepted");
        }
    });
    futures::stream::iter(requests)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
}

/// Waits (at most 60 s) until every one of `parts` holds some partitions of each of the
/// `groups` consumer groups and together they hold `partitions`: each group has split its
/// partitions. Returns the time it took, or `None` if they did not.
async fn settle(parts: &[Part], groups: usize, partitions: f64) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let mut held = Vec::new();
        for part in parts {
            held.push(part.metrics_if_up().await.held_by_group());
        }
        let total: f64 = held.iter().flat_map(|h| h.values()).sum();
        let split = held
            .iter()
            .all(|h| h.len() == groups && h.values().all(|&n| n > 0.0));
        if split && total == partitions {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// What one process did in a run.
struct ProcessWork {
    /// `processors#1`, `sinks#2`, ...
    name: String,
    /// Records in per stage (processors) or rows stored (sinks), as printed.
    work: String,
    /// Partitions its consumer groups gave it, took back and left it holding at the end (from
    /// `sluice_consumer_rebalanced_partitions_total`).
    partitions: Partitions,
    /// Processors: when, after they were spawned, the first partition was assigned to them
    /// (`None`: before every order was stored, never).
    first_assigned: Option<Duration>,
}

/// A process's partition moves, summed over its consumer groups.
struct Partitions {
    /// Partitions its groups assigned to it.
    assigned: f64,
    /// Partitions its groups revoked, or that it lost.
    revoked: f64,
}

impl Partitions {
    /// The moves in one process's metrics.
    fn of(metrics: &Metrics) -> Self {
        let moved = |change: &str| {
            metrics.sum(
                "sluice_consumer_rebalanced_partitions_total",
                &format!("change=\"{change}\""),
            )
        };
        Partitions {
            assigned: moved("assigned"),
            revoked: moved("revoked") + moved("lost"),
        }
    }
}

impl std::fmt::Display for Partitions {
    /// `[H partitions, +A -R]`: held at the end, assigned, revoked or lost.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{} partitions, +{} -{}]",
            self.assigned - self.revoked,
            self.assigned,
            self.revoked
        )
    }
}

/// The figures of one run.
struct Run {
    /// `--only processors` processes.
    processors: usize,
    /// Orders/s the ingress acknowledged while filling the raw topic.
    fill_rate: f64,
    /// From the sinks being ready to their groups having split the partitions (`None`: not
    /// within 60 s).
    sinks_settled: Option<Duration>,
    /// From spawning the processors to the first stored row.
    first_row: Duration,
    /// From spawning the processors to every order stored.
    all_rows: Duration,
    /// Orders posted (every one acknowledged with 202).
    orders: usize,
    /// Rows in the shards' `orders` tables.
    rows: usize,
    /// Distinct order ids among them.
    distinct_rows: usize,
    /// Records in raw, valid, enriched, the four shard topics together, and dead letters.
    topics: [i64; 5],
    /// Each processor and sink process's share.
    processes: Vec<ProcessWork>,
    /// Every process exited with success on SIGTERM.
    clean_exits: bool,
}

/// One run: fill the raw topic through the ingress, then time `processors` processor
/// processes (with [`SINK_PROCESSES`] sinks) until every order is stored.
async fn run(processors: usize, orders: usize, users: &[String], logs: &Path) -> Run {
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let test = test_topology_on(
        Backend::Services,
        &format!("bscale{processors}"),
        &refs,
        |t| ports.apply(t),
    );
    let topology = test.topology();
    let log: Arc<dyn Log> = sluice::pipeline::open_log(&topology).unwrap();
    log::ensure_declared_topics(log.as_ref(), &topology.topics)
        .await
        .unwrap();

    // 1. The orders wait in the raw topic; no processor runs yet.
    let mut ingress = Part::start(&test, "ingress", 1, logs);
    ingress.wait_ready().await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in users {
        tokens.push((
            user.clone(),
            login(&client, &ports.login_base(), user).await,
        ));
    }
    let filling = Instant::now();
    post_orders(&ports.order_base(), &tokens, orders).await;
    let fill_rate = orders as f64 / filling.elapsed().as_secs_f64();
    let mut clean_exits = ingress.stop().is_some_and(|s| s.success());
    let raw = topic_records(log.as_ref(), &topology.ingress.orders_topic).await;
    assert_eq!(raw, orders as i64, "the raw topic holds every order once");

    // 2. The sinks, ready and idle.
    let mut sinks: Vec<Part> = (1..=SINK_PROCESSES)
        .map(|n| Part::start(&test, "sinks", n, logs))
        .collect();
    for sink in &mut sinks {
        sink.wait_ready().await;
    }
    // Each shard has two groups: its shard topic's, and the dead-letter topic's.
    let mut sink_partitions = 0;
    let mut sink_groups = 0;
    for shard in &topology.shards {
        sink_partitions += log.partition_count(&shard.topic).await.unwrap();
        sink_groups += 1;
        if let Some(rejections) = &topology.sink.rejections_topic {
            sink_partitions += log.partition_count(rejections).await.unwrap();
            sink_groups += 1;
        }
    }
    let sinks_settled = settle(&sinks, sink_groups, sink_partitions as f64).await;

    // 3. The processors, timed until every order is stored.
    let started = Instant::now();
    let mut procs: Vec<Part> = (1..=processors)
        .map(|n| Part::start(&test, "processors", n, logs))
        .collect();
    let mut first_row = None;
    let mut first_assigned: Vec<Option<Duration>> = vec![None; processors];
    loop {
        for (part, first) in procs.iter().zip(&mut first_assigned) {
            if first.is_none() && Partitions::of(&part.metrics_if_up().await).assigned > 0.0 {
                *first = Some(started.elapsed());
            }
        }
        let sunk = sunk_records(&test).await;
        if sunk > 0 && first_row.is_none() {
            first_row = Some(started.elapsed());
        }
        if sunk >= orders {
            break;
        }
        for part in procs.iter_mut().chain(sinks.iter_mut()) {
            part.assert_running();
        }
        assert!(
            started.elapsed() < DRAIN_LIMIT,
            "only {sunk} of {orders} orders stored after {DRAIN_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_rows = started.elapsed();

    let mut processes = Vec::new();
    for (part, first_assigned) in procs.iter().zip(first_assigned) {
        let metrics = part.metrics().await;
        let work = ["validate", "enrich", "route"]
            .map(|stage| {
                metrics
                    .sum(
                        "sluice_stage_records_in_total",
                        &format!("stage=\"{stage}\""),
                    )
                    .to_string()
            })
            .join(" / ");
        processes.push(ProcessWork {
            name: part.name.clone(),
            work,
            partitions: Partitions::of(&metrics),
            first_assigned,
        });
    }
    for part in &sinks {
        let metrics = part.metrics().await;
        processes.push(ProcessWork {
            name: part.name.clone(),
            work: metrics
                .sum("sluice_sink_rows_total", "table=\"orders\"")
                .to_string(),
            partitions: Partitions::of(&metrics),
            first_assigned: None,
        });
    }
    for part in procs.iter_mut().chain(sinks.iter_mut()) {
        clean_exits &= part.stop().is_some_and(|s| s.success());
    }

    let (rows, distinct_rows) = stored_rows(&test).await;
    let mut shard_records = 0;
    for shard in &topology.shards {
        shard_records += topic_records(log.as_ref(), &shard.topic).await;
    }
    let output = |name: &str| {
        topology
            .stage(name)
            .and_then(|stage| match &stage.kind {
                sluice_processors::KindConfig::Validate(c) => Some(c.output.clone()),
                sluice_processors::KindConfig::Enrich(c) => Some(c.output.clone()),
                sluice_processors::KindConfig::Route(_) => None,
            })
            .expect("the stage writes a topic")
    };
    let dead_letter = topology.stage("validate").unwrap().dead_letter.clone();
    let topics = [
        raw,
        topic_records(log.as_ref(), &output("validate")).await,
        topic_records(log.as_ref(), &output("enrich")).await,
        shard_records,
        topic_records(log.as_ref(), &dead_letter).await,
    ];
    Run {
        processors,
        fill_rate,
        sinks_settled,
        first_row: first_row.unwrap_or(all_rows),
        all_rows,
        orders,
        rows,
        distinct_rows,
        topics,
        processes,
        clean_exits,
    }
}

/// Runs the two configurations one after the other and prints the table.
fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let orders = size("SLUICE_BENCH_ORDERS", 100_000);
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale_out");
    std::fs::create_dir_all(&logs).unwrap();
    // 16 users per shard: every shard, and so every shard topic partition, gets orders.
    let users = users_covering_shards(16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runs: Vec<Run> = runtime.block_on(async {
        let mut runs = Vec::new();
        for processors in [1, 2] {
            runs.push(run(processors, orders, &users, &logs).await);
        }
        runs
    });
    print_table(&runs, &logs);
    for run in &runs {
        assert_eq!(
            (run.rows, run.distinct_rows),
            (run.orders, run.orders),
            "with {} processor process(es) the shards hold another number of rows than orders",
            run.processors
        );
        assert!(
            run.topics[..4].iter().all(|&n| n == run.orders as i64) && run.topics[4] == 0,
            "with {} processor process(es) a topic holds a record twice, misses one or has dead letters: {:?}",
            run.processors,
            run.topics
        );
    }
}

/// Prints the runs side by side, then notes on anything that did not split.
fn print_table(runs: &[Run], logs: &Path) {
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let rate = |n: usize, d: Duration| format!("{:.0}/s", n as f64 / d.as_secs_f64());
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            "ingress fill, HTTP 202 after ack, c=64 (orders/s)".into(),
            runs.iter()
                .map(|r| format!("{:.0}/s", r.fill_rate))
                .collect(),
        ),
        (
            "sinks ready -> every shard group split over both".into(),
            runs.iter()
                .map(|r| r.sinks_settled.map_or("not in 60 s".into(), secs))
                .collect(),
        ),
        (
            "processors spawned -> first row stored".into(),
            runs.iter().map(|r| secs(r.first_row)).collect(),
        ),
        (
            "processors spawned -> every row stored".into(),
            runs.iter().map(|r| secs(r.all_rows)).collect(),
        ),
        (
            "end to end rows/s (from spawn)".into(),
            runs.iter().map(|r| rate(r.orders, r.all_rows)).collect(),
        ),
        (
            "rows/s after the first row".into(),
            runs.iter()
                .map(|r| rate(r.orders, r.all_rows.saturating_sub(r.first_row)))
                .collect(),
        ),
    ];
    let mut by_process: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        for process in &run.processes {
            let cells = by_process
                .entry(process.name.clone())
                .or_insert_with(|| vec!["-".into(); runs.len()]);
            cells[i] = format!("{} {}", process.work, process.partitions);
            if process.name.starts_with("processors") {
                let first = by_process
                    .entry(format!("{} first", process.name))
                    .or_insert_with(|| vec!["-".into(); runs.len()]);
                first[i] = process
                    .first_assigned
                    .map_or("not before the end".into(), secs);
            }
        }
    }
    for (name, cells) in by_process {
        let what = if let Some(process) = name.strip_suffix(" first") {
            format!("{process}: spawned -> first partition assigned")
        } else if name.starts_with("processors") {
            format!("{name}: records in validate / enrich / route")
        } else {
            format!("{name}: rows stored")
        };
        rows.push((what, cells));
    }
    rows.extend([
        (
            "rows stored / distinct order ids".into(),
            runs.iter()
                .map(|r| format!("{} / {}", r.rows, r.distinct_rows))
                .collect(),
        ),
        (
            "records: raw / valid / enriched / shards / dlq".into(),
            runs.iter()
                .map(|r| {
                    r.topics
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .collect(),
        ),
        (
            "no loss, no duplicate".into(),
            runs.iter()
                .map(|r| {
                    let ok = r.rows == r.orders
                        && r.distinct_rows == r.orders
                        && r.topics[..4].iter().all(|&n| n == r.orders as i64)
                        && r.topics[4] == 0;
                    if ok { "yes" } else { "NO" }.to_string()
                })
                .collect(),
        ),
        (
            "every process exited cleanly on SIGTERM".into(),
            runs.iter()
                .map(|r| if r.clean_exits { "yes" } else { "no" }.to_string())
                .collect(),
        ),
    ]);
    println!(
        "Sluice scale-out, Kafka + MariaDB, {} orders, {} cores, {SINK_PROCESSES} `--only sinks` processes in both runs",
        runs.first().map_or(0, |r| r.orders),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let header: Vec<String> = runs
        .iter()
        .map(|r| match r.processors {
            1 => "1 processor process".to_string(),
            n => format!("{n} processor processes"),
        })
        .collect();
    print!("{:<52}", "");
    for column in header {
        print!(" {column:>52}");
    }
    println!();
    for (what, cells) in rows {
        print!("{what:<52}");
        for cell in cells {
            print!(" {cell:>52}");
        }
        println!();
    }
    for (run, process) in runs
        .iter()
        .flat_map(|run| run.processes.iter().map(move |p| (run, p)))
    {
        if process.name.starts_with("processors") && process.partitions.assigned == 0.0 {
            println!(
                "note: with {} processor processes, {} was given no partition before every order \
                 was stored (a group's second member waits for the first one's next heartbeat, \
                 up to 3 s); raise SLUICE_BENCH_ORDERS to see the work split",
                run.processors, process.name
            );
        }
        if process.name.starts_with("sinks") && process.work == "0" {
            println!(
                "note: with {} processor process(es), {} stored no row although it held {} \
                 partitions: each shard's group reads the shard topic and the dead-letter topic, \
                 and the assignment balances partition counts, not topics",
                run.processors,
                process.name,
                process.partitions.assigned - process.partitions.revoked
            );
        }
    }
    println!("process logs: {}", logs.display());
}
