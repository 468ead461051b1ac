//! Metrics: consumer lag in records and seconds on both backends, the series a healthy
//! pipeline exposes from start-up, the request and freshness histograms after real orders,
//! and a split deployment's metrics on its `[ops]` listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use sluice::pipeline::{self, Parts};
use sluice_core::lag::{self, ConsumerLag};
use sluice_core::log::{self, OutRecord};
use sluice_core::shutdown::Shutdown;
use sluice_processors::{run_chain, Chain, Item, Outcome, Stage, StageRunner};
use tokio_util::sync::CancellationToken;

/// A stage that holds its first batch until the gate opens, then passes everything.
struct Gated {
    open: Arc<AtomicBool>,
    output: Arc<str>,
}

impl Stage for Gated {
    fn process(&self, _item: &mut Item) -> Outcome {
        // Blocks one runtime thread on purpose: the runner must not poll again meanwhile.
        while !self.open.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Outcome::Forward(self.output.clone())
    }
}

/// The lags of `group` in this process's latest snapshot.
fn lags_of(group: &str) -> Vec<ConsumerLag> {
    lag::snapshot()
        .consumers
        .into_iter()
        .filter(|c| c.group == group)
        .collect()
}

/// The values of the series of `name` whose labels contain `labels`.
fn values(text: &str, name: &str, labels: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_embedded_log_a_stage_with_a_backlog_lags_until_it_catches_up() {
    a_stage_with_a_backlog_lags_until_it_catches_up(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_stage_with_a_backlog_lags_until_it_catches_up() {
    a_stage_with_a_backlog_lags_until_it_catches_up(Backend::Services).await;
}

async fn a_stage_with_a_backlog_lags_until_it_catches_up(backend: Backend) {
    const BACKLOG: i64 = 200;
    let test = test_topology_on(backend, "lag", &[], |_| {});
    let topology = test.topology();
    let log = pipeline::open_log(&topology).unwrap();
    log::ensure_declared_topics(log.as_ref(), &topology.topics)
        .await
        .unwrap();
    let input = topology.stages[0].input.clone();
    for n in 0..BACKLOG {
        log.send(
            &input,
            OutRecord::new(format!("user{n}"), b"{}".to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let stop = CancellationToken::new();
    let monitor = tokio::spawn(lag::run_monitor(
        log.clone(),
        topology.topics.keys().cloned().collect(),
        Duration::from_millis(200),
        stop.clone(),
    ));
    let mut runner =
        StageRunner::from_config(&topology.stages[0], &topology.log.consumer_group_prefix);
    runner.name = "gated".into();
    runner.group = format!("{}.gated", topology.log.consumer_group_prefix);
    runner.batch_size = 10;
    let group = runner.group.clone();
    let open = Arc::new(AtomicBool::new(false));
    let gated = Gated {
        open: open.clone(),
        output: topology.stages[0].outputs(&topology.stage_context())[0]
            .as_str()
            .into(),
    };
    let stage = tokio::spawn(run_chain(
        log.clone(),
        Arc::new(Chain::new(vec![(
            topology.stages[0].clone(),
            Arc::new(gated) as Arc<dyn Stage>,
        )])),
        runner,
        stop.clone(),
        None,
    ));
    let partitions = topology.topics[&input].partitions as usize;

    // Held at its first batch: every partition it reads is behind, and for longer and longer.
    eventually(Duration::from_secs(60), "the stage to lag", || async {
        let lags = lags_of(&group);
        lags.len() == partitions
            && lags.iter().map(|l| l.lag_records).sum::<i64>() > 0
            && lags.iter().any(|l| l.lag_seconds > 0.5)
    })
    .await;
    let lags = lags_of(&group);
    let behind: i64 = lags.iter().map(|l| l.lag_records).sum();
    assert!(
        (BACKLOG - 10..=BACKLOG).contains(&behind),
        "one batch of 10 at most is read: {lags:?}"
    );
    assert_eq!(
        lags.iter().map(|l| l.end_offset).sum::<i64>(),
        BACKLOG,
        "{lags:?}"
    );
    for lag in &lags {
        assert_eq!(lag.lag_records, lag.end_offset - lag.position, "{lag:?}");
        assert_eq!(lag.lag_seconds > 0.0, lag.lag_records > 0, "{lag:?}");
    }
    let text = sluice_ingress::prometheus::handle().render();
    let labels = format!(r#"group="{group}",topic="{input}""#);
    let records = values(&text, "sluice_consumer_lag_records", &labels);
    assert_eq!(records.len(), partitions, "{text}");
    assert_eq!(records.iter().sum::<f64>(), behind as f64);
    let seconds = values(&text, "sluice_consumer_lag_seconds", &labels);
    assert!(seconds.iter().any(|s| *s > 0.5), "{seconds:?}");
    let ends = values(
        &text,
        "sluice_topic_end_offset",
        &format!(r#"topic="{input}""#),
    );
    assert_eq!(ends.iter().sum::<f64>(), BACKLOG as f64, "{ends:?}");

    // Let it go: it catches up, and the lag returns to 0 in records and seconds.
    open.store(true, Ordering::Relaxed);
    eventually(Duration::from_secs(60), "the stage to catch up", || async {
        let lags = lags_of(&group);
        lags.len() == partitions
            && lags
                .iter()
                .all(|l| l.lag_records == 0 && l.lag_seconds == 0.0)
    })
    .await;
    // The gauges follow on the next sample.
    eventually(Duration::from_secs(10), "the gauges to read 0", || async {
        let text = sluice_ingress::prometheus::handle().render();
        let records = values(&text, "sluice_consumer_lag_records", &labels);
        let seconds = values(&text, "sluice_consumer_lag_seconds", &labels);
        records.len() == partitions && records.iter().chain(&seconds).all(|v| *v == 0.0)
    })
    .await;
    stop.cancel();
    assert_eq!(stage.await.unwrap().unwrap(), BACKLOG as u64);
    monitor.await.unwrap();
}

/// What `promtool check metrics` says of `text`. Without promtool (it comes with Debian's
/// prometheus, which `scripts/infra up` installs), nothing outside CI, and a failure in CI
/// (`CI` set), where the lint must run.
fn promtool_lints(text: &str) -> Vec<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        let how =
            "no promtool: install Debian's prometheus (`bash scripts/infra up` does, as root)";
        assert!(std::env::var_os("CI").is_none(), "{how}");
        eprintln!("{how}; the exposition format is not linted");
        return Vec::new();
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Gives the stages and shards names of their own, so the test's series (labelled by stage
/// and shard) are not shared with the other tests of this binary.
fn own_names(topology: &mut sluice::topology::Topology) {
    let tag = unique("m");
    for stage in &mut topology.stages {
        stage.name = format!("{}_{tag}", stage.name);
    }
    for shard in &mut topology.shards {
        shard.name = format!("{}_{tag}", shard.name);
    }
}

/// Whether the counters of every stage, shard and topic of `topology` exist with value 0.
fn zero_series(topology: &sluice::topology::Topology, text: &str) -> Result<(), String> {
    let expect = |name: &str, labels: &str, count: usize| {
        let found = values(text, name, labels);
        if found.len() == count && found.iter().all(|v| *v == 0.0) {
            Ok(())
        } else {
            Err(format!("{name}{{{labels}}}: {found:?}"))
        }
    };
    for stage in &topology.stages {
        let stage = format!(r#"stage="{}""#, stage.name);
        expect("sluice_stage_records_in_total", &stage, 1)?;
        expect("sluice_stage_records_out_total", &stage, 2)?;
    }
    for shard in &topology.shards {
        let shard = format!(r#"shard="{}""#, shard.name);
        expect("sluice_sink_retries_total", &shard, 1)?;
        expect("sluice_sink_rows_refused_total", &shard, 1)?;
        expect("sluice_sink_batches_fenced_total", &shard, 1)?;
        expect("sluice_sink_rows_total", &shard, 2)?;
    }
    for topic in topology.topics.keys() {
        expect(
            "sluice_log_records_skipped_total",
            &format!(r#"topic="{topic}""#),
            1,
        )?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_show_in_the_request_produce_freshness_and_lag_metrics() {
    let users = users_covering_shards(1);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(Backend::Embedded, "metrics", &user_refs, own_names);
    let topology = test.topology();
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let prefix = &topology.log.consumer_group_prefix;

    // Before any order: the series of every stage, shard and topic exist with value 0.
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape_metrics(&client, &pipeline.base_order).await;
        if zero_series(&topology, &text).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(missing) = zero_series(&topology, &text) {
        panic!("{missing}:\n{text}");
    }
    assert!(!text.contains("quantile"), "{text}");
    assert!(text.contains("sluice_orders_accepted_total "), "{text}");
    assert!(text.contains("sluice_orders_accepted_total "), "{text}");
    assert!(text.contains("sluice_build_info{version=\""), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    assert!(text.contains("process_open_fds "), "{text}");

    let mut sent = 0;
    for user in &users {
        let token = login(&client, &pipeline.base_login, user).await;
        for quantity in [1, 2, 0] {
            let response = client
                .post(format!("{}/order", pipeline.base_order))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "userId": user, "product": "widget", "quantity": quantity }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            sent += 1;
        }
    }
    let stored = users.len() as f64 * 2.0;
    eventually(
        Duration::from_secs(60),
        "the orders to be stored",
        || async {
            let text = scrape_metrics(&client, &pipeline.base_order).await;
            let rows: f64 = topology
                .shards
                .iter()
                .map(|s| {
                    values(
                        &text,
                        "sluice_sink_rows_total",
                        &format!(r#"shard="{}",table="orders""#, s.name),
                    )
                    .iter()
                    .sum::<f64>()
                })
                .sum();
            rows >= stored
        },
    )
    .await;

    // Everything read: every consumer of the pipeline is caught up.
    eventually(Duration::from_secs(30), "every lag to be 0", || async {
        let text = scrape_metrics(&client, &pipeline.base_order).await;
        let lags = values(
            &text,
            "sluice_consumer_lag_records",
            &format!(r#"group="{prefix}."#),
        );
        // validate → enrich → route, fused, read orders.raw's 4 partitions; each shard's
        // sink: 4 + 4 (rejections).
        lags.len() == 4 + 4 * 8 && lags.iter().all(|v| *v == 0.0)
    })
    .await;

    let text = scrape_metrics(&client, &pipeline.base_order).await;
    assert!(!text.contains("quantile"), "{text}");
    let orders = values(
        &text,
        "sluice_http_request_duration_seconds_count",
        r#"route="order",status="202""#,
    );
    // Other tests of this binary answer orders too: at least ours.
    assert!(orders.len() == 1 && orders[0] >= sent as f64, "{text}");
    let logins = values(
        &text,
        "sluice_http_requests_total",
        r#"route="login",status="200""#,
    );
    assert!(logins.iter().sum::<f64>() >= users.len() as f64);
    assert!(
        text.contains(
            r#"sluice_http_request_duration_seconds_bucket{route="order",status="202",le="0.005"}"#
        ),
        "{text}"
    );
    // This scrape holds a connection open on the order listener.
    let open = values(&text, "sluice_http_connections_open", r#"listener="order""#);
    assert!(
        open.iter().all(|v| *v >= 1.0) && open.len() == 1,
        "{open:?}"
    );
    let raw = format!(r#"topic="{}""#, topology.ingress.orders_topic);
    assert_eq!(
        values(&text, "sluice_log_produce_duration_seconds_count", &raw),
        [sent as f64],
        "{text}"
    );
    let freshness: f64 = topology
        .shards
        .iter()
        .map(|s| {
            values(
                &text,
                "sluice_order_freshness_seconds_count",
                &format!(r#"shard="{}""#, s.name),
            )
            .iter()
            .sum::<f64>()
        })
        .sum();
    assert_eq!(freshness, stored, "{text}");
    let validate = format!(r#"stage="{}""#, topology.stages[0].name);
    let batches = values(&text, "sluice_stage_batch_records_count", &validate);
    let batched = values(&text, "sluice_stage_batch_records_sum", &validate);
    assert!(
        batches[0] >= 1.0 && batched == [sent as f64],
        "{batches:?} {batched:?}"
    );
    // Prometheus's own linter finds nothing amiss, and CPU seconds are a counter.
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter\n"),
        "{text}"
    );
    let lints = promtool_lints(&text);
    assert!(lints.is_empty(), "{lints:#?}");
    let ends = values(&text, "sluice_topic_end_offset", &raw);
    assert_eq!(ends.iter().sum::<f64>(), sent as f64);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_without_the_ingress_serves_its_metrics_on_the_ops_listener() {
    let port = free_port();
    let test = test_topology_on(Backend::Embedded, "opsmetrics", &[], |t| {
        own_names(t);
        t.ops.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        t.ops.lag_interval_ms = 200;
    });
    let topology = test.topology();
    let log = pipeline::open_log(&topology).unwrap();
    log::ensure_declared_topics(log.as_ref(), &topology.topics)
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let parts = Parts {
        ingress: false,
        processors: true,
        sinks: true,
    };
    let run = tokio::spawn(pipeline::run(
        topology.clone(),
        log.clone(),
        parts,
        None,
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let prefix = topology.log.consumer_group_prefix.clone();
    let raw = topology.ingress.orders_topic.clone();
    let validate_stage = format!(r#"stage="{}""#, topology.stages[0].name);
    let last_shard = format!(r#"shard="{}""#, topology.shards[3].name);
    log.send(
        &raw,
        OutRecord::new("someone", b"not an order".to_vec()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the processors' and sinks' metrics on [ops] listen",
        || async {
            let Ok(response) = client.get(format!("{base}/metrics")).send().await else {
                return false;
            };
            let text = response.text().await.unwrap();
            let validate = format!(
                r#"group="{prefix}.{}",topic="{raw}""#,
                topology.stages[0].name
            );
            values(&text, "sluice_stage_records_in_total", &validate_stage) == [1.0]
                && values(&text, "sluice_consumer_lag_records", &validate).len() == 4
                && values(
                    &text,
                    "sluice_consumer_lag_records",
                    &format!(r#"group="{prefix}.sink.{}.sink""#, topology.shards[0].name),
                )
                .len()
                    == 4
                && values(&text, "sluice_sink_retries_total", &last_shard) == [0.0]
                && text.contains("sluice_build_info{")
                && text.contains("process_cpu_seconds_total ")
                && !text.contains("quantile")
        },
    )
    .await;
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the pipeline drains")
        .unwrap()
        .unwrap();
}

/// A sink whose shard is down cannot claim the partitions its group gives it (the claim is a
/// write in the shard), so it reads nothing: its lag counts from the partitions' start and
/// grows, in records as orders come and in seconds as time passes. Once the shard is back, the
/// claim succeeds, the sink stores the backlog and its lag returns to 0. The shard is a real
/// SQLite database that another connection keeps locked for writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_whose_shard_is_down_shows_a_growing_lag() {
    use sluice_core::log::{Log, StartFrom};
    use sluice_core::order::EnrichedOrder;
    use sluice_core::sharding::{BucketRange, ShardMap};
    use sluice_log_embedded::{EmbeddedLog, Retention};
    use sluice_sinks::sqlite::SqliteShard;
    use sluice_sinks::{run_sink_worker, ShardWriter, SinkWorker};

    // The recorder first: the lag monitor's handles, taken before it is installed, would count
    // nowhere (run alone, this test would find no lag in the rendered metrics).
    sluice_ingress::prometheus::handle();
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> =
        Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), Retention::KEEP_ALL).unwrap());
    let topic = unique("lagdown");
    log.ensure_topics(&[(topic.clone(), 2, 1)]).await.unwrap();
    let map = ShardMap::new(16, &[("s0".into(), BucketRange { first: 0, last: 15 })]).unwrap();
    let append = |count: usize| {
        let (log, topic, map) = (log.clone(), topic.clone(), map.clone());
        async move {
            for n in 0..count {
                let user = format!("u{n}");
                let order = EnrichedOrder {
                    order_id: uuid::Uuid::now_v7(),
                    user_id: user.clone(),
                    product: "widget".into(),
                    quantity: 1,
                    unit_price_minor: 999,
                    line_total_minor: 999,
                    currency: "EUR".into(),
                    received_at_ms: 1,
                    enriched_at_ms: 2,
                    bucket: map.bucket(&user),
                    shard: "s0".into(),
                };
                let record = OutRecord::new(user, serde_json::to_vec(&order).unwrap());
                log.send(&topic, record, Duration::from_secs(10))
                    .await
                    .unwrap();
            }
        }
    };
    append(20).await;

    // The shard: migrated, then locked for writing by another connection.
    let file = dir.path().join("s0.db");
    let shard = Arc::new(SqliteShard::new("s0", &file));
    shard.migrate().await.unwrap();
    let holder = rusqlite::Connection::open(&file).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let prefix = unique("lagdown");
    let worker = SinkWorker {
        shard: "s0".into(),
        shard_index: 0,
        topic: topic.clone(),
        rejections_topic: None,
        consumer: "sink".into(),
        group_prefix: prefix.clone(),
        max_rows: 100,
        max_wait: Duration::from_millis(20),
        start: StartFrom::Beginning,
        start_offsets: Default::default(),
        stop_at: None,
    };
    let group = worker.group();
    let stop = CancellationToken::new();
    let monitor = tokio::spawn(lag::run_monitor(
        log.clone(),
        vec![topic.clone()],
        Duration::from_millis(200),
        stop.clone(),
    ));
    let sink = tokio::spawn(run_sink_worker(
        log.clone(),
        shard.clone(),
        map.clone(),
        worker,
        stop.clone(),
        None,
    ));
    let behind = |lags: &[ConsumerLag]| lags.iter().map(|l| l.lag_records).sum::<i64>();

    // The claim fails (the shard is locked): every record of both partitions is unread.
    eventually(
        Duration::from_secs(30),
        "the unclaimed partitions' lag",
        || async {
            let lags = lags_of(&group);
            lags.len() == 2 && behind(&lags) == 20
        },
    )
    .await;
    let before = lags_of(&group);
    assert!(before.iter().all(|l| l.position == 0), "{before:?}");
    let oldest = |lags: &[ConsumerLag]| lags.iter().map(|l| l.lag_seconds).fold(0.0, f64::max);
    // More orders and more time: the lag grows in records and in seconds.
    append(10).await;
    eventually(Duration::from_secs(30), "the lag to grow", || async {
        let lags = lags_of(&group);
        behind(&lags) == 30 && oldest(&lags) > oldest(&before) + 1.0
    })
    .await;
    let text = sluice_ingress::prometheus::handle().render();
    let labels = format!(r#"group="{group}",topic="{topic}""#);
    assert_eq!(
        values(&text, "sluice_consumer_lag_records", &labels)
            .iter()
            .sum::<f64>(),
        30.0,
        "{text}"
    );
    assert!(!sink.is_finished(), "the sink gave up");

    // The shard is back: the claim succeeds, the sink stores everything and catches up.
    holder.execute_batch("ROLLBACK").unwrap();
    eventually(Duration::from_secs(60), "the sink to catch up", || async {
        let lags = lags_of(&group);
        lags.len() == 2
            && lags
                .iter()
                .all(|l| l.lag_records == 0 && l.lag_seconds == 0.0)
    })
    .await;
    let stored: i64 = holder
        .query_row("SELECT COUNT(*) FROM orders", [], |row| row.get(0))
        .unwrap();
    assert_eq!(stored, 30);
    stop.cancel();
    sink.await.unwrap().unwrap();
    monitor.await.unwrap();
}
