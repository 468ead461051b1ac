//! `make bench`: Sluice's speed, printed as figures, for both sets of backends side by side
//! (Kafka + MariaDB from `scripts/infra`, and the embedded log + SQLite):
//!
//! 1. records/s appended to and read from the log;
//! 2. orders/s through the ingress with authentication on (HTTP → durable in the log);
//! 3. rows/s the four shard sinks store (rows + positions per transaction) once they store,
//!    next to the raw limit: bare 500-row multi-row INSERTs into the same MariaDB shards, as
//!    many rows per transaction as a sink batch holds; for both, what InnoDB did per row on
//!    the MariaDB shards (redo bytes, pages created), which shows when rows arrive out of
//!    primary-key order;
//! 4. end to end: orders/s from HTTP to stored rows;
//! 5. sustained: a `sluice run` process under 256 connections for SLUICE_BENCH_SECONDS
//!    (default 60): orders acknowledged/s and rows stored/s over the run, the backlog left
//!    when the load stops (bounded, or the pipeline does not keep up), and the process's
//!    resident memory (peak and at the end).
//!
//! Sizes can be changed with SLUICE_BENCH_ORDERS, SLUICE_BENCH_ROWS and SLUICE_BENCH_RECORDS;
//! SLUICE_BENCH_ONLY=log,ingress,sinks,e2e,sustained (any subset) runs only those sections.
#![allow(clippy::print_stdout)] // a benchmark prints its figures

#[path = "../tests/integration/common/mod.rs"]
mod common;
#[path = "support/load.rs"]
mod load;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use load::{Connection, OrderRequests};
use mysql_async::prelude::Queryable;
use mysql_async::{Params, TxOpts};
use sluice::pipeline::Parts;
use sluice_core::log::{self, Assignment, Log, OutRecord, StartFrom};
use sluice_core::order::EnrichedOrder;
use sluice_core::sharding::ShardMap;
use sluice_sinks::mysql::{order_params, MysqlShard, ORDER_COLUMNS, ORDER_PLACEHOLDERS};
use sluice_sinks::{open_shard, run_sink_worker, ShardWriter, SinkWorker};
use tokio_util::sync::CancellationToken;

/// The allocator the `sluice` binary ships with, so the sections that run Sluice's parts in
/// this process (log, sinks) measure what runs in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BACKENDS: [Backend; 2] = [Backend::Services, Backend::Embedded];

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether SLUICE_BENCH_ONLY (a comma-separated list of sections) asks for `section`; unset
/// means every section.
fn wanted(section: &str) -> bool {
    std::env::var("SLUICE_BENCH_ONLY")
        .map(|only| only.split(',').any(|s| s.trim() == section))
        .unwrap_or(true)
}

/// One line of the result table: a figure per backend (None: not measured there).
struct Row {
    what: String,
    figures: [Option<String>; 2],
}

fn rate(count: usize, elapsed: Duration) -> String {
    format!("{:.0}/s", count as f64 / elapsed.as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Appends `records` with 512 in flight, then reads them all back with one consumer.
async fn bench_log(backend: Backend, records: usize) -> (String, String) {
    let test = test_topology_on(backend, "blog", &[], |_| {});
    let topology = test.topology();
    let log = sluice::pipeline::open_log(&topology).unwrap();
    let topic = topology.ingress.orders_topic.clone();
    log.ensure_topics(&[(topic.clone(), 4, 1)]).await.unwrap();
    let payload = vec![b'x'; 256];
    let started = Instant::now();
    let sends = (0..records).map(|n| {
        let record = OutRecord::new(format!("user{}", n % 1000).into_bytes(), payload.clone());
        let (log, topic) = (log.clone(), topic.clone());
        async move {
            log.send(&topic, record, Duration::from_secs(30))
                .await
                .unwrap()
        }
    });
    futures::stream::iter(sends)
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await;
    let appended = rate(records, started.elapsed());
    let mut consumer = log.consumer(&format!("bench.{}", test.id)).await.unwrap();
    let assignments = (0..4)
        .map(|partition| Assignment {
            topic: topic.clone(),
            partition,
            start: StartFrom::Beginning,
        })
        .collect();
    consumer.assign(assignments).await.unwrap();
    let started = Instant::now();
    let mut read = 0;
    while read < records {
        read += consumer
            .poll(2_000, Duration::from_secs(5))
            .await
            .unwrap()
            .len();
    }
    (appended, rate(records, started.elapsed()))
}

/// Posts `count` orders over `concurrency` keep-alive connections; returns per-request
/// latencies, sorted. Panics unless every answer is 202.
async fn post_orders(
    base: &str,
    tokens: &[(String, String)],
    count: usize,
    concurrency: usize,
) -> Vec<Duration> {
    let address = address_of(base);
    let requests = Arc::new(OrderRequests::new(&address.to_string(), tokens));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let connections: Vec<_> = (0..concurrency)
        .map(|_| {
            let (requests, next) = (requests.clone(), next.clone());
            tokio::spawn(async move {
                let mut connection = Connection::new(address);
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return latencies;
                    }
                    let (status, took) = connection.send(requests.get(n)).await.unwrap();
                    assert_eq!(status, 202, "an order was not accepted");
                    latencies.push(took);
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for connection in connections {
        latencies.extend(connection.await.unwrap());
    }
    latencies.sort();
    latencies
}

/// The address of a base URL such as `http://127.0.0.1:3001`.
fn address_of(base: &str) -> std::net::SocketAddr {
    base.trim_start_matches("http://")
        .parse()
        .expect("a base URL of an IP address and port")
}

async fn tokens(base: &str, users: &[String]) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in users {
        tokens.push((user.clone(), login(&client, base, user).await));
    }
    tokens
}

/// Orders/s through the ingress alone (auth on, 202 after the durable ack), and latency.
async fn bench_ingress(backend: Backend, orders: usize) -> (String, String) {
    let users = users_covering_shards(4);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(backend, "bingress", &refs, |_| {});
    let pipeline = RunningPipeline::start(&test, Parts::INGRESS).await;
    let tokens = tokens(&pipeline.base_login, &users).await;
    post_orders(&pipeline.base_order, &tokens, 500, 64).await; // warm-up
    let started = Instant::now();
    let latencies = post_orders(&pipeline.base_order, &tokens, orders, 64).await;
    let throughput = rate(orders, started.elapsed());
    let latency = format!(
        "{:.1} / {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    pipeline.stop().await;
    (throughput, latency)
}

fn enriched(user: &str, bucket: u32, shard: &str) -> EnrichedOrder {
    EnrichedOrder {
        order_id: uuid::Uuid::now_v7(),
        user_id: user.to_string(),
        product: "widget".into(),
        quantity: 2,
        unit_price_minor: 999,
        line_total_minor: 1998,
        currency: "EUR".into(),
        received_at_ms: 1,
        enriched_at_ms: 2,
        bucket,
        shard: shard.to_string(),
    }
}

/// The 50 users whose orders the sink and raw INSERT benchmarks store in shard `index`, in
/// turn: both write the same rows, so their secondary-index work is the same.
fn shard_users(map: &ShardMap, index: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("b{n}"))
        .filter(|u| map.shard_for_user(u) == index)
        .take(50)
        .collect()
}

/// Records the sink workers have committed, from their stored positions: a cheap query
/// (a `COUNT(*)` over growing tables would itself load the machine being measured).
async fn sunk_records(test: &TestTopology) -> usize {
    let cast = match test.backend {
        Backend::Services => "CHAR",
        Backend::Embedded => "TEXT",
    };
    let sql = format!("SELECT CAST(COALESCE(SUM(next_offset), 0) AS {cast}) FROM sluice_offsets WHERE consumer = 'sink' AND topic LIKE '%orders.shard.%'");
    let mut total = 0;
    for shard in 0..4 {
        total += query_strings(test, shard, &sql)
            .await
            .first()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    total
}

async fn total_rows(test: &TestTopology) -> usize {
    let mut stored = 0;
    for shard in 0..4 {
        stored += count_rows(test, shard, "orders").await as usize;
    }
    stored
}

/// What InnoDB did on the four MariaDB shards, from their server-wide counters: the figures
/// assume four distinct servers that nothing else (a test run, say) writes to meanwhile.
#[derive(Clone, Copy)]
struct InnodbWork {
    /// Redo log bytes written.
    redo_bytes: u64,
    /// Pages created (`Innodb_pages_created`: mostly index pages, from splits and growth).
    pages_created: u64,
}

impl InnodbWork {
    /// The counters now, summed over the shards of `test` (whose databases must exist).
    async fn now(test: &TestTopology) -> InnodbWork {
        let mut work = InnodbWork {
            redo_bytes: 0,
            pages_created: 0,
        };
        for shard in 0..4 {
            let counters = query_strings(
                test,
                shard,
                "SELECT CONCAT(VARIABLE_NAME, ' ', VARIABLE_VALUE) FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME IN ('INNODB_OS_LOG_WRITTEN', 'INNODB_PAGES_CREATED')",
            )
            .await;
            assert_eq!(
                counters.len(),
                2,
                "cannot read shard {shard}'s InnoDB counters"
            );
            for counter in counters {
                let (name, value) = counter.split_once(' ').expect("name and value");
                let value: u64 = value.parse().expect("a counter");
                match name {
                    "INNODB_OS_LOG_WRITTEN" => work.redo_bytes += value,
                    _ => work.pages_created += value,
                }
            }
        }
        work
    }

    /// The work done since `before`, per stored row: redo bytes, and pages per 1,000 rows.
    /// A shard restarted in between (its counters back at zero) reads as no work.
    fn per_row_since(self, before: InnodbWork, rows: usize) -> String {
        let rows = rows.max(1) as f64;
        format!(
            "{:.0} B / {:.1}",
            self.redo_bytes.saturating_sub(before.redo_bytes) as f64 / rows,
            self.pages_created.saturating_sub(before.pages_created) as f64 * 1000.0 / rows
        )
    }
}

/// The figures of a section that stores rows in the shards (the sinks, or the raw INSERT).
struct SinkFigures {
    /// Rows stored per second.
    rate: String,
    /// What InnoDB did per row ([`InnodbWork::per_row_since`]); MariaDB shards only.
    innodb: Option<String>,
}

/// Rows/s the four sink workers store from records already in their topics.
async fn bench_sinks(backend: Backend, rows: usize) -> SinkFigures {
    let test = test_topology_on(backend, "bsinks", &[], |_| {});
    let topology = test.topology();
    let log: Arc<dyn Log> = sluice::pipeline::open_log(&topology).unwrap();
    log::ensure_declared_topics(log.as_ref(), &topology.topics)
        .await
        .unwrap();
    let map = topology.shard_map().unwrap();
    let per_shard = rows / 4;
    for (index, shard) in topology.shards.iter().enumerate() {
        let users = shard_users(&map, index);
        let sends = (0..per_shard).map(|n| {
            let user = &users[n % users.len()];
            let payload =
                serde_json::to_vec(&enriched(user, map.bucket(user), &shard.name)).unwrap();
            let (log, topic) = (log.clone(), shard.topic.clone());
            let record = OutRecord::new(user.as_bytes(), payload);
            async move {
                log.send(&topic, record, Duration::from_secs(30))
                    .await
                    .unwrap()
            }
        });
        futures::stream::iter(sends)
            .buffer_unordered(2_000)
            .collect::<Vec<_>>()
            .await;
    }
    let mut writers = Vec::new();
    for shard in &topology.shards {
        let writer = open_shard(&shard.name, &shard.url, &topology.base_dir).unwrap();
        // Created before the counters are read (the workers find the schema in place).
        writer.migrate().await.unwrap();
        writers.push(writer);
    }
    let innodb_before = match backend {
        Backend::Services => Some(InnodbWork::now(&test).await),
        Backend::Embedded => None,
    };
    let cancel = CancellationToken::new();
    let mut workers = Vec::new();
    // Records each worker has committed, as its progress reports them: counted in the
    // process, so watching the sinks adds no queries to the shards being measured.
    let committed: Vec<Arc<AtomicU64>> = (0..topology.shards.len())
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    for ((index, shard), writer) in topology.shards.iter().enumerate().zip(writers) {
        let worker = SinkWorker {
            rejections_topic: None,
            ..SinkWorker::live(
                shard,
                index,
                &topology.sink,
                &topology.log.consumer_group_prefix,
            )
        };
        workers.push(tokio::spawn(run_sink_worker(
            log.clone(),
            writer,
            map.clone(),
            worker,
            cancel.clone(),
            Some(Arc::new({
                let committed = committed[index].clone();
                move |done| committed.store(done, Ordering::Relaxed)
            })),
        )));
    }
    let stored = || -> usize {
        let total: u64 = committed.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        total as usize
    };
    // The clock starts once the sinks store rows: joining the consumer groups (a few seconds
    // on Kafka, once per process start) is not the speed at which they store.
    let first = loop {
        let so_far = stored();
        if so_far > 0 {
            break so_far;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let started = Instant::now();
    while stored() < per_shard * 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let figure = rate(per_shard * 4 - first, started.elapsed());
    cancel.cancel();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    let innodb = match innodb_before {
        Some(before) => Some(
            InnodbWork::now(&test)
                .await
                .per_row_since(before, per_shard * 4),
        ),
        None => None,
    };
    assert_eq!(
        total_rows(&test).await,
        per_shard * 4,
        "the sinks stored a different number of rows"
    );
    SinkFigures {
        rate: figure,
        innodb,
    }
}

/// Rows/s of bare 500-row prepared INSERTs into the four MariaDB shards, `per_transaction`
/// rows (rounded up to whole statements) to a transaction: a sink batch's size, so the two
/// differ only in what the sink adds.
async fn bench_raw_insert(rows: usize, per_transaction: usize) -> SinkFigures {
    const STATEMENT_ROWS: usize = sluice_sinks::mysql::ROWS_PER_STATEMENT;
    let test = test_topology("braw", &[], |_| {});
    let topology = test.topology();
    let statements = per_transaction.div_ceil(STATEMENT_ROWS).max(1);
    let per_shard = rows / 4 / (STATEMENT_ROWS * statements) * (STATEMENT_ROWS * statements);
    assert!(
        per_shard > 0,
        "SLUICE_BENCH_ROWS={rows} is less than one transaction per shard; raise it"
    );
    let map = topology.shard_map().unwrap();
    let mut shards = Vec::new();
    for (index, shard) in topology.shards.iter().enumerate() {
        let writer = MysqlShard::new(&shard.name, &shard.url).unwrap();
        writer.migrate().await.unwrap();
        shards.push((writer, shard_users(&map, index)));
    }
    let innodb_before = InnodbWork::now(&test).await;
    let started = Instant::now();
    let map = &map;
    let inserts = shards.iter().map(|(shard, users)| async move {
        let placeholders = vec![ORDER_PLACEHOLDERS; STATEMENT_ROWS].join(",");
        let sql = format!("INSERT INTO orders ({ORDER_COLUMNS}) VALUES {placeholders}");
        let mut conn = shard.pool().get_conn().await.unwrap();
        let mut next_user = 0;
        for _ in 0..per_shard / (STATEMENT_ROWS * statements) {
            let mut tx = conn.start_transaction(TxOpts::default()).await.unwrap();
            for _ in 0..statements {
                let mut params = Vec::with_capacity(STATEMENT_ROWS * 12);
                for _ in 0..STATEMENT_ROWS {
                    let user = &users[next_user % users.len()];
                    next_user += 1;
                    let order = enriched(user, map.bucket(user), shard.name());
                    order_params(&order, 3, &mut params);
                }
                tx.exec_drop(&sql, Params::Positional(params))
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        conn.disconnect().await.unwrap();
    });
    futures::future::join_all(inserts).await;
    let figure = rate(per_shard * 4, started.elapsed());
    let innodb = InnodbWork::now(&test)
        .await
        .per_row_since(innodb_before, per_shard * 4);
    assert_eq!(total_rows(&test).await, per_shard * 4);
    SinkFigures {
        rate: figure,
        innodb: Some(innodb),
    }
}

/// Orders/s from HTTP to stored rows, through every stage.
async fn bench_end_to_end(backend: Backend, orders: usize) -> String {
    let users = users_covering_shards(4);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(backend, "be2e", &refs, |_| {});
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let tokens = tokens(&pipeline.base_login, &users).await;
    let started = Instant::now();
    post_orders(&pipeline.base_order, &tokens, orders, 64).await;
    while sunk_records(&test).await < orders {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figure = rate(orders, started.elapsed());
    pipeline.stop().await;
    assert_eq!(
        total_rows(&test).await,
        orders,
        "end to end stored a different number of rows"
    );
    figure
}

/// Resident memory of process `pid` in MiB: (now, peak), from `/proc/<pid>/status`.
fn resident_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What the sustained run measured.
struct Sustained {
    acknowledged_per_second: String,
    stored_per_second: String,
    backlog: String,
    memory: String,
}

/// A `sluice run` process under `connections` clients for `seconds`: every client posts
/// orders back to back. Rows stored are read from the sinks' positions once a second.
async fn bench_sustained(backend: Backend, seconds: u64, connections: usize) -> Sustained {
    let users = users_covering_shards(25);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let test = test_topology_on(backend, "bsustained", &refs, |t| {
        ports.apply(t);
        let unlimited = sluice_ingress::config::Quota::per_second(
            std::num::NonZeroU32::new(1_000_000).unwrap(),
            std::num::NonZeroU32::new(1_000_000).unwrap(),
        );
        t.ingress.rate_limits.orders_per_principal = unlimited;
        t.ingress.rate_limits.orders_per_address = unlimited;
    });
    let mut process = start_sluice_with(
        &test.path,
        &test.dir.path().join("sluice.log"),
        &[("RUST_LOG", "warn")],
        &[],
    );
    wait_ready(&ports.order_base(), &mut process).await;
    let pid = process.id();
    let tokens = tokens(&ports.login_base(), &users).await;
    let address = address_of(&ports.order_base());
    let requests = Arc::new(OrderRequests::new(&address.to_string(), &tokens));
    let acknowledged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Answers other than 202, and requests that got no answer: a run full of them would
    // otherwise show only as a low rate.
    let not_accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..connections)
        .map(|c| {
            let (requests, acknowledged, not_accepted, stop) = (
                requests.clone(),
                acknowledged.clone(),
                not_accepted.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut connection = Connection::new(address);
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    let answer = connection.send(requests.get(n)).await;
                    n += connections;
                    match answer {
                        Ok((202, _)) => {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            not_accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            not_accepted.fetch_add(1, Ordering::Relaxed);
                            // Not a hot loop while the process cannot be reached.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let mut peak = 0f64;
    let load = Duration::from_secs(seconds);
    while started.elapsed() < load {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((_, high)) = resident_mib(pid) {
            peak = peak.max(high);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let elapsed = started.elapsed();
    let acked = acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    let stored = sunk_records(&test).await;
    let backlog = acked.saturating_sub(stored);
    let drain_started = Instant::now();
    while sunk_records(&test).await < acked && drain_started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (now, high) = resident_mib(pid).unwrap_or_default();
    peak = peak.max(high);
    terminate(process);
    Sustained {
        acknowledged_per_second: match not_accepted.load(Ordering::Relaxed) {
            0 => rate(acked, elapsed),
            other => format!("{} ({other} not 202)", rate(acked, elapsed)),
        },
        stored_per_second: rate(stored, elapsed),
        backlog: format!(
            "{backlog} ({:.1} s to drain)",
            drain_started.elapsed().as_secs_f64()
        ),
        memory: format!("{peak:.0} / {now:.0} MiB"),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let orders = size("SLUICE_BENCH_ORDERS", 20_000);
    let rows = size("SLUICE_BENCH_ROWS", 200_000);
    let records = size("SLUICE_BENCH_RECORDS", 100_000);
    let seconds = size("SLUICE_BENCH_SECONDS", 60) as u64;
    let batch_rows = common::shipped().sink.max_rows;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows_table = runtime.block_on(async {
        let mut table = Vec::new();
        let mut both =
            |what: String, figures: [Option<String>; 2]| table.push(Row { what, figures });
        let mut appended = [None, None];
        let mut read = [None, None];
        let mut ingress = [None, None];
        let mut latency = [None, None];
        let (mut sinks, mut sinks_innodb) = ([None, None], [None, None]);
        let mut end_to_end = [None, None];
        let (mut acked, mut stored, mut backlog, mut memory) =
            ([None, None], [None, None], [None, None], [None, None]);
        for (i, backend) in BACKENDS.into_iter().enumerate() {
            if wanted("log") {
                let (a, r) = bench_log(backend, records).await;
                appended[i] = Some(a);
                read[i] = Some(r);
            }
            if wanted("ingress") {
                let (t, l) = bench_ingress(backend, orders).await;
                ingress[i] = Some(t);
                latency[i] = Some(l);
            }
            if wanted("sinks") {
                let figures = bench_sinks(backend, rows).await;
                sinks[i] = Some(figures.rate);
                sinks_innodb[i] = figures.innodb;
            }
            if wanted("e2e") {
                end_to_end[i] = Some(bench_end_to_end(backend, orders).await);
            }
            if wanted("sustained") {
                let run = bench_sustained(backend, seconds, 256).await;
                acked[i] = Some(run.acknowledged_per_second);
                stored[i] = Some(run.stored_per_second);
                backlog[i] = Some(run.backlog);
                memory[i] = Some(run.memory);
            }
        }
        both(
            format!("log: durable appends, 256 B, 512 in flight ({records})"),
            appended,
        );
        both(
            format!("log: reads, one consumer over 4 partitions ({records})"),
            read,
        );
        both(
            format!("ingress: POST /order, JWT, 202 after durable ack, c=64 ({orders})"),
            ingress,
        );
        both("ingress: latency p50 / p99".into(), latency);
        both(
            format!("sinks: 4 shards, {batch_rows}-row batches + positions ({rows})"),
            sinks,
        );
        let raw = match wanted("sinks") {
            true => Some(bench_raw_insert(rows, batch_rows).await),
            false => None,
        };
        both(
            format!("raw: 500-row INSERTs, {batch_rows} rows per transaction ({rows})"),
            [raw.as_ref().map(|r| r.rate.clone()), None],
        );
        both(
            "sinks: InnoDB redo per row / pages created per 1,000 rows".into(),
            sinks_innodb,
        );
        both(
            "raw: InnoDB redo per row / pages created per 1,000 rows".into(),
            [raw.and_then(|r| r.innodb), None],
        );
        both(
            format!("end to end: HTTP -> validate -> enrich -> route -> rows ({orders})"),
            end_to_end,
        );
        both(
            format!("sustained, c=256 for {seconds} s: orders acknowledged/s"),
            acked,
        );
        both("sustained: rows stored/s over the same time".into(), stored);
        both("sustained: backlog when the load stopped".into(), backlog);
        both(
            "sustained: sluice resident memory, peak / end".into(),
            memory,
        );
        table
    });
    println!(
        "Sluice benchmark, {} cores, everything on this machine",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<66} {:>18} {:>18}",
        "", "kafka + mariadb", "embedded + sqlite"
    );
    for row in rows_table {
        let cell = |f: &Option<String>| f.clone().unwrap_or_else(|| "-".into());
        println!(
            "{:<66} {:>18} {:>18}",
            row.what,
            cell(&row.figures[0]),
            cell(&row.figures[1])
        );
    }
}
