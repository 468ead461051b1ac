//! `make bench`: Sluice's speed on the real infrastructure, printed as figures.
//!
//! 1. orders/s through the ingress with authentication on (HTTP → durable in Kafka);
//! 2. rows/s the four shard sinks store (Kafka → MariaDB, rows + positions per transaction);
//! 3. rows/s of a raw 500-row multi-row INSERT into the same shards, for comparison;
//! 4. end to end: orders/s from HTTP to stored rows.
//!
//! Sizes can be changed with SLUICE_BENCH_ORDERS and SLUICE_BENCH_ROWS.

#![allow(clippy::print_stdout)] // a benchmark prints its figures

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Params, TxOpts, Value};
use sluice::pipeline::Parts;
use sluice_core::log::{self, Log, OutRecord, StartFrom};
use sluice_core::order::EnrichedOrder;
use sluice_sinks::mysql::MysqlShard;
use sluice_sinks::{run_sink_worker, ShardWriter, SinkWorker};
use tokio_util::sync::CancellationToken;

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(what: &str, count: usize, elapsed: Duration) {
    println!(
        "{what:<58} {count:>8} in {:>7.2} s = {:>9.0} /s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Posts `count` orders with `concurrency` in flight; returns per-request latencies.
async fn post_orders(
    base: &str,
    tokens: &[(String, String)],
    count: usize,
    concurrency: usize,
) -> Vec<Duration> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let requests = (0..count).map(|n| {
        let (user, token) = &tokens[n % tokens.len()];
        let request = client
            .post(format!("{base}/order"))
            .bearer_auth(token)
            .json(
                &serde_json::json!({ "userId": user, "product": "widget", "quantity": 1 + n % 5 }),
            );
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            started.elapsed()
        }
    });
    let mut latencies: Vec<Duration> = futures::stream::iter(requests)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    latencies.sort();
    latencies
}

async fn tokens(base: &str, users: &[String]) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in users {
        tokens.push((user.clone(), login(&client, base, user).await));
    }
    tokens
}

async fn bench_ingress(orders: usize) {
    let probe = test_topology("bprobe", &[], |t| t);
    let users = users_covering_shards(&probe.text, 4);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology("bingress", &refs, |t| t);
    let pipeline = RunningPipeline::start(
        &test,
        Parts {
            ingress: true,
            processors: false,
            sinks: false,
        },
    )
    .await;
    let tokens = tokens(&pipeline.base_login, &users).await;
    post_orders(&pipeline.base_order, &tokens, 500, 64).await; // warm-up
    let started = Instant::now();
    let latencies = post_orders(&pipeline.base_order, &tokens, orders, 64).await;
    let elapsed = started.elapsed();
    report(
        "ingress: POST /order, JWT auth, 202 after Kafka ack (c=64)",
        orders,
        elapsed,
    );
    println!(
        "{:<58} p50 {:.1} ms, p99 {:.1} ms",
        "  latency",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    pipeline.stop().await;
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

async fn bench_sinks(rows: usize) {
    let test = test_topology("bsinks", &[], |t| t);
    let topology = test.topology();
    let log: Arc<dyn Log> = log::open(&topology.log, &topology.base_dir).unwrap();
    log::ensure_topology_topics(log.as_ref(), &topology)
        .await
        .unwrap();
    let map = topology.shard_map().unwrap();
    let per_shard = rows / 4;
    for (index, shard) in topology.shards.iter().enumerate() {
        let users: Vec<String> = (0..)
            .map(|n| format!("b{n}"))
            .filter(|u| map.shard_for_user(u) == index)
            .take(50)
            .collect();
        let sends = (0..per_shard).map(|n| {
            let user = &users[n % users.len()];
            let payload =
                serde_json::to_vec(&enriched(user, map.bucket(user), &shard.name)).unwrap();
            let log = log.clone();
            let record = OutRecord::new(user.as_bytes(), payload);
            let topic = shard.topic.clone();
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
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut workers = Vec::new();
    for (index, shard) in topology.shards.iter().enumerate() {
        let writer: Arc<dyn ShardWriter> =
            Arc::new(MysqlShard::new(&shard.name, &shard.url).unwrap());
        let worker = SinkWorker {
            shard: shard.name.clone(),
            shard_index: index,
            topic: shard.topic.clone(),
            rejections_topic: None,
            consumer: "sink".into(),
            max_rows: topology.sink.max_rows,
            max_wait: Duration::from_millis(topology.sink.max_wait_ms),
            start: StartFrom::Beginning,
            start_offsets: Default::default(),
            stop_at: None,
        };
        workers.push(tokio::spawn(run_sink_worker(
            log.clone(),
            writer,
            map.clone(),
            worker,
            cancel.clone(),
            None,
        )));
    }
    loop {
        let mut stored = 0;
        for shard in 0..4 {
            stored += count_rows(&test, shard, "orders").await as usize;
        }
        if stored >= per_shard * 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    report(
        "sinks: Kafka -> 4 shards, 500-row batches + positions",
        per_shard * 4,
        elapsed,
    );
}

async fn bench_raw_insert(rows: usize) {
    let test = test_topology("braw", &[], |t| t);
    let topology = test.topology();
    let per_shard = rows / 4;
    let mut shards = Vec::new();
    for shard in &topology.shards {
        let writer = MysqlShard::new(&shard.name, &shard.url).unwrap();
        writer.migrate().await.unwrap();
        shards.push(writer);
    }
    let started = Instant::now();
    let inserts = shards.iter().map(|shard| async move {
        let placeholders = vec!["(?,?,?,?,?,?,?,?,?,?,?,?)"; 500].join(",");
        let sql = format!(
            "INSERT INTO orders (order_id, user_id, product, quantity, unit_price_minor, line_total_minor, currency, \
             received_at_ms, enriched_at_ms, stored_at_ms, bucket, shard) VALUES {placeholders}"
        );
        let mut conn = shard.pool().get_conn().await.unwrap();
        for _ in 0..per_shard / 500 {
            let mut params = Vec::with_capacity(500 * 12);
            for _ in 0..500 {
                let o = enriched("raw", 1, shard.name());
                params.extend([
                    Value::from(o.order_id.as_bytes().to_vec()),
                    Value::from(o.user_id),
                    Value::from(o.product),
                    Value::from(o.quantity),
                    Value::from(o.unit_price_minor),
                    Value::from(o.line_total_minor),
                    Value::from(o.currency),
                    Value::from(o.received_at_ms),
                    Value::from(o.enriched_at_ms),
                    Value::from(3),
                    Value::from(o.bucket),
                    Value::from(o.shard),
                ]);
            }
            let mut tx = conn.start_transaction(TxOpts::default()).await.unwrap();
            tx.exec_drop(&sql, Params::Positional(params)).await.unwrap();
            tx.commit().await.unwrap();
        }
        conn.disconnect().await.unwrap();
    });
    futures::future::join_all(inserts).await;
    report(
        "raw: 500-row prepared INSERT per transaction, 4 shards",
        per_shard / 500 * 500 * 4,
        started.elapsed(),
    );
    let mut conn = shard_conn(&test, 0).await;
    let _: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM orders")
        .await
        .unwrap();
}

async fn bench_end_to_end(orders: usize) {
    let probe = test_topology("bprobe2", &[], |t| t);
    let users = users_covering_shards(&probe.text, 4);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology("be2e", &refs, |t| t);
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let tokens = tokens(&pipeline.base_login, &users).await;
    let started = Instant::now();
    post_orders(&pipeline.base_order, &tokens, orders, 64).await;
    loop {
        let mut stored = 0;
        for shard in 0..4 {
            stored += count_rows(&test, shard, "orders").await as usize;
        }
        if stored >= orders {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(
        "end to end: HTTP -> validate -> enrich -> route -> shards",
        orders,
        started.elapsed(),
    );
    pipeline.stop().await;
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --all-targets` runs benches in test mode: nothing to do.
    }
    let orders = size("SLUICE_BENCH_ORDERS", 20_000);
    let rows = size("SLUICE_BENCH_ROWS", 200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "Sluice benchmark on {} cores (Kafka + 4 MariaDB shards on this machine)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        bench_ingress(orders).await;
        bench_sinks(rows).await;
        bench_raw_insert(rows).await;
        bench_end_to_end(orders).await;
    });
}
