//! Sluice across many processes on a real broker and real shards: one ingress, two processor
//! processes and two sink processes, the `sluice` binary each, with a few thousand orders from
//! many users; one processor and one sink are killed with `kill -9` mid-stream. Every order
//! answered 2xx is stored exactly once, each intermediate topic holds about one record per
//! order (the processors split the partitions rather than both processing everything), and
//! every process did work before the kill, the survivors after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// The session timeout of the test's consumer groups: a killed member's partitions move
/// after at most this long.
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// One `sluice run --only <part>` process with its own operations listener.
struct Part {
    name: &'static str,
    process: SluiceProcess,
    ops: String,
}

impl Part {
    fn start(test: &TestTopology, name: &'static str, only: &str) -> Part {
        let ops_port = free_port();
        let topology = test.variant(name, |t| {
            t.ops.listen = Some(([127, 0, 0, 1], ops_port).into());
            if let (Ok(debug), Some(kafka)) = (
                std::env::var("SLUICE_SCALE_KAFKA_DEBUG"),
                t.log.kafka.as_mut(),
            ) {
                kafka.properties.insert("debug".into(), debug);
            }
        });
        // Outside the test's folder, so a failed run keeps them.
        let log = std::env::temp_dir().join(format!("{}-{name}.log", test.id));
        let process = start_sluice_with(
            &topology,
            &log,
            &[(
                "RUST_LOG",
                std::env::var("SLUICE_SCALE_RUST_LOG")
                    .as_deref()
                    .unwrap_or("info"),
            )],
            &["--only", only],
        );
        Part {
            name,
            process,
            ops: format!("http://127.0.0.1:{ops_port}"),
        }
    }

    /// The sum of the samples of `metric` on this process's `/metrics` whose labels contain
    /// `labels` (0 when there is none).
    async fn metric(&self, client: &reqwest::Client, metric: &str, labels: &str) -> f64 {
        let text = match client.get(format!("{}/metrics", self.ops)).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => return 0.0,
        };
        sum_samples(&text, metric, labels)
    }
}

/// Orders sent with 16 in flight by every user until `stop` is set.
struct Load {
    /// Ids of the orders answered 2xx.
    accepted: Arc<Mutex<Vec<String>>>,
    /// Set to stop sending.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// The sending task.
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Logs every user in and starts sending.
    async fn start(client: &reqwest::Client, ports: &Ports, users: &[String]) -> Load {
        let mut tokens = HashMap::new();
        for user in users {
            tokens.insert(user.clone(), login(client, &ports.login_base(), user).await);
        }
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = spawn_order_load(
            client.clone(),
            ports.order_base(),
            Arc::new(tokens),
            accepted.clone(),
            stop.clone(),
        );
        Load {
            accepted,
            stop,
            task,
        }
    }
}

/// The sum of the samples of `metric` in Prometheus text whose labels contain `labels`.
fn sum_samples(text: &str, metric: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_and_two_sinks_split_the_work_and_survive_kill_9() {
    let users = users_covering_shards(8);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let test = test_topology_on(Backend::Services, "scale", &user_refs, |t| {
        ports.apply(t);
        // validate → enrich run fused and keep writing orders.valid; route runs apart, in a
        // consumer group of its own: both kinds of task split the work and take over.
        t.stages[0].write_output = true;
        t.stages[2].chain = false;
        if let Some(kafka) = t.log.kafka.as_mut() {
            kafka.session_timeout_ms = SESSION_TIMEOUT_MS;
        }
    });
    let topology = test.topology();
    let prefix = topology.log.consumer_group_prefix.clone();
    let client = reqwest::Client::new();

    let mut ingress = Part::start(&test, "ingress", "ingress");
    let processors = [
        Part::start(&test, "processors-a", "processors"),
        Part::start(&test, "processors-b", "processors"),
    ];
    let sinks = [
        Part::start(&test, "sinks-a", "sinks"),
        Part::start(&test, "sinks-b", "sinks"),
    ];
    wait_ready(&ports.order_base(), &mut ingress.process).await;
    for part in processors.iter().chain(&sinks) {
        eventually(
            Duration::from_secs(60),
            "every part to be ready",
            || async {
                client
                    .get(format!("{}/readyz", part.ops))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
    }

    let Load {
        accepted,
        stop,
        task: load,
    } = Load::start(&client, &ports, &users).await;

    // Both processors and both sinks share the work before anything is killed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut work = Vec::new();
        for part in &processors {
            let done = part
                .metric(
                    &client,
                    "sluice_stage_records_in_total",
                    "stage=\"validate\"",
                )
                .await;
            work.push((part.name, done));
        }
        for part in &sinks {
            work.push((
                part.name,
                part.metric(&client, "sluice_sink_rows_total", "").await,
            ));
        }
        let orders = accepted.lock().unwrap().len();
        if orders >= 1500 && work.iter().all(|(_, done)| *done > 0.0) {
            eprintln!("before the kill: {orders} orders acknowledged; work per process {work:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every process did work within 120 s: {orders} orders acknowledged, work per process {work:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let [processors_a, mut processors_b] = processors;
    let [sinks_a, mut sinks_b] = sinks;
    let done_by_b = processors_b
        .metric(&client, "sluice_stage_records_in_total", "")
        .await;

    // kill -9 one processor and one sink mid-stream.
    let killed = Instant::now();
    processors_b.process.kill().unwrap();
    sinks_b.process.kill().unwrap();
    processors_b.process.wait().unwrap();
    sinks_b.process.wait().unwrap();

    // The survivors take every partition within the session timeout (plus a rebalance).
    let groups = [
        (&processors_a, format!("group=\"{prefix}.validate\"")),
        (&processors_a, format!("group=\"{prefix}.route\"")),
        (&sinks_a, format!("group=\"{prefix}.sink.shard0.sink\"")),
        (&sinks_a, format!("group=\"{prefix}.sink.shard3.sink\"")),
    ];
    let mut took_over = Vec::new();
    for (part, group) in &groups {
        let expected = 4.0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while part
            .metric(&client, "sluice_consumer_partitions", group)
            .await
            < expected
        {
            if Instant::now() > deadline {
                let text = scrape_metrics(&client, &part.ops).await;
                let gauges: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("sluice_consumer_"))
                    .collect();
                panic!(
                    "{} did not take every partition of {group} within 60 s of the kill: {gauges:#?}",
                    part.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        took_over.push(killed.elapsed());
    }
    let takeover = *took_over.iter().max().unwrap();
    eprintln!("the survivors owned every partition {takeover:?} after the kill");
    assert!(
        takeover < Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(20),
        "failover took {takeover:?}"
    );

    let before_more = accepted.lock().unwrap().len();
    eventually(
        Duration::from_secs(120),
        "orders to flow after the kill",
        || async { accepted.lock().unwrap().len() >= before_more.max(3000) + 1000 },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    let accepted: Vec<String> = accepted.lock().unwrap().clone();

    // Every 2xx order is stored exactly once.
    assert_stored_exactly_once(&test, &accepted, Duration::from_secs(120)).await;
    // About one record per order in each intermediate topic: the two processors did not both
    // process everything. The kill makes the survivor redo at most the batches in flight.
    let log = sluice::pipeline::open_log(&topology).unwrap();
    let raw = topic_records(log.as_ref(), &topology.ingress.orders_topic).await;
    assert!(raw as usize >= accepted.len());
    for stage in topology.stages.iter().skip(1) {
        let written = topic_records(log.as_ref(), &stage.input).await;
        let ratio = written as f64 / raw as f64;
        eprintln!(
            "{}: {written} records for {raw} orders ({ratio:.3} per order)",
            stage.input
        );
        assert!(
            (0.99..1.25).contains(&ratio),
            "{} holds {written} records for {raw} orders",
            stage.input
        );
    }

    // The survivors kept working after the kill.
    assert!(
        processors_a
            .metric(&client, "sluice_stage_records_in_total", "")
            .await
            > 0.0
    );
    assert!(done_by_b > 0.0, "the killed processor had done work");
    for (part, metric) in [
        (&processors_a, "sluice_stage_records_in_total"),
        (&sinks_a, "sluice_sink_rows_total"),
    ] {
        assert!(
            part.metric(&client, metric, "").await > 0.0,
            "{} did no work",
            part.name
        );
    }
    for part in [ingress, processors_a, sinks_a] {
        let status = terminate(part.process);
        assert!(status.success(), "{} exited with {status:?}", part.name);
    }
    drop(log);
}

/// A sink process frozen (SIGSTOP) for longer than the session timeout is a zombie: the group
/// gives its partitions to the other sink process, which claims them in the shards. When the
/// zombie wakes up with a batch in hand, its write is refused (fenced) instead of moving a
/// position backwards or storing a row twice; it rejoins and the load goes on. Every 2xx
/// order is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_process_frozen_past_its_session_is_fenced_when_it_wakes() {
    let users = users_covering_shards(8);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let test = test_topology_on(Backend::Services, "zombie", &user_refs, |t| {
        ports.apply(t);
        if let Some(kafka) = t.log.kafka.as_mut() {
            kafka.session_timeout_ms = SESSION_TIMEOUT_MS;
        }
        // Larger, slower batches: the frozen process more likely holds one when it stops.
        t.sink.max_wait_ms = 200;
    });
    let prefix = test.topology().log.consumer_group_prefix.clone();
    let client = reqwest::Client::new();
    let mut ingress = Part::start(&test, "ingress", "ingress");
    let processors = Part::start(&test, "processors", "processors");
    let sinks = [
        Part::start(&test, "sinks-a", "sinks"),
        Part::start(&test, "sinks-b", "sinks"),
    ];
    wait_ready(&ports.order_base(), &mut ingress.process).await;
    let Load {
        accepted,
        stop,
        task: load,
    } = Load::start(&client, &ports, &users).await;
    let group = format!("group=\"{prefix}.sink.shard0.sink\"");
    eventually(
        Duration::from_secs(120),
        "both sink processes to store rows of shard0",
        || async {
            let mut both = true;
            for part in &sinks {
                both &= part
                    .metric(&client, "sluice_consumer_partitions", &group)
                    .await
                    > 0.0;
                both &= part
                    .metric(&client, "sluice_sink_rows_total", "shard=\"shard0\"")
                    .await
                    > 0.0;
            }
            both
        },
    )
    .await;

    // Freeze sinks-b past its session: sinks-a takes every partition.
    let [sinks_a, sinks_b] = sinks;
    let signal = |name: &str, part: &Part| {
        let status = std::process::Command::new("kill")
            .args([name, &part.process.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP", &sinks_b);
    eventually(
        Duration::from_secs(60),
        "sinks-a to take the frozen process's partitions",
        || async {
            sinks_a
                .metric(&client, "sluice_consumer_partitions", &group)
                .await
                >= 4.0
        },
    )
    .await;
    // Let sinks-a store some of them under its new claims before the zombie wakes.
    let stored_by_a = sinks_a.metric(&client, "sluice_sink_rows_total", "").await;
    eventually(Duration::from_secs(60), "sinks-a to store more", || async {
        sinks_a.metric(&client, "sluice_sink_rows_total", "").await > stored_by_a + 200.0
    })
    .await;
    signal("-CONT", &sinks_b);

    // The zombie rejoins; the load goes on for a while across the rebalance.
    let before = accepted.lock().unwrap().len();
    eventually(
        Duration::from_secs(120),
        "orders to keep flowing",
        || async { accepted.lock().unwrap().len() >= before + 1500 },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert_stored_exactly_once(&test, &accepted, Duration::from_secs(120)).await;
    let fenced = sinks_b
        .metric(&client, "sluice_sink_batches_fenced_total", "")
        .await;
    let rejoined = sinks_b
        .metric(
            &client,
            "sluice_consumer_rebalanced_partitions_total",
            "change=\"lost\"",
        )
        .await;
    eprintln!(
        "the woken sink process had {fenced} batches fenced and lost {rejoined} partitions with its session"
    );
    assert!(
        rejoined > 0.0,
        "the frozen process must have lost its partitions with its session"
    );
    // Every shard's stored positions reach its topic's end, and stay there: no late write of
    // the woken process moved one back.
    let log = sluice::pipeline::open_log(&test.topology()).unwrap();
    eventually(Duration::from_secs(60), "the sinks to catch up", || async {
        sinks_caught_up(&test, log.as_ref()).await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sinks_caught_up(&test, log.as_ref()).await,
        "a stored position moved back"
    );
    for part in [ingress, processors, sinks_a, sinks_b] {
        let status = terminate(part.process);
        assert!(status.success(), "{} exited with {status:?}", part.name);
    }
}
