//! `sluice replay` on both backends: an emptied shard is restored exactly, from its own topic
//! or from the enriched topic; bounds by offset and by time; a stage replay that is interrupted
//! resumes where it stopped, and never duplicates a row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use sluice::pipeline::Parts;
use sluice::replay::{replay, Bound, ReplaySpec, Target};
use tokio_util::sync::CancellationToken;

async fn post_orders(
    client: &reqwest::Client,
    base: &str,
    tokens: &[(String, String)],
    count: usize,
) {
    let requests = (0..count).map(|n| {
        let (user, token) = &tokens[n % tokens.len()];
        let quantity = if n % 25 == 3 { 0 } else { 1 + (n % 4) as i64 };
        client
            .post(format!("{base}/order"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "userId": user, "product": "gizmo", "quantity": quantity }))
            .send()
    });
    let responses: Vec<_> = futures::stream::iter(requests)
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(responses.into_iter().all(|r| r.unwrap().status() == 202));
}

async fn total_rows(test: &TestTopology) -> i64 {
    let mut total = 0;
    for shard in 0..4 {
        total += count_rows(test, shard, "orders").await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_on_kafka_and_mariadb() {
    replay_restores_shards_and_resumes(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_on_the_embedded_defaults() {
    replay_restores_shards_and_resumes(Backend::Embedded).await;
}

async fn replay_restores_shards_and_resumes(backend: Backend) {
    let users = users_covering_shards(2);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(backend, "replay", &refs, |t| {
        keep_intermediate_topics(t);
        for stage in &mut t.stages {
            if stage.name == "enrich" {
                stage.batch_size = 40;
            }
        }
    });
    let topology = test.topology();
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push((
            user.clone(),
            login(&client, &pipeline.base_login, user).await,
        ));
    }

    // Phase A, then a point in time, then phase B.
    post_orders(&client, &pipeline.base_order, &tokens, 300).await;
    let valid_a = 300 - 12;
    eventually(Duration::from_secs(60), "phase A stored", || async {
        total_rows(&test).await == valid_a
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = sluice_core::order::now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let phase_a_lines: Vec<Vec<String>> = {
        let mut all = Vec::new();
        for shard in 0..4 {
            all.push(order_lines(&test, shard).await);
        }
        all
    };
    post_orders(&client, &pipeline.base_order, &tokens, 300).await;
    let valid = valid_a * 2;
    eventually(Duration::from_secs(60), "phase B stored", || async {
        total_rows(&test).await == valid
    })
    .await;

    let shard = 2;
    let shard_name = topology.shards[shard].name.clone();
    let before = order_lines(&test, shard).await;
    assert!(!before.is_empty());
    let run = |spec: ReplaySpec| {
        let (topology, log) = (topology.clone(), pipeline.log.clone());
        async move {
            replay(&topology, log, &spec, CancellationToken::new(), None)
                .await
                .unwrap()
        }
    };
    let spec = |name: &str, topic: Option<String>, from: Bound, to: Option<Bound>| ReplaySpec {
        topic,
        from,
        to,
        target: Target::Shard(shard_name.clone()),
        name: name.into(),
        rate: None,
    };

    // 1. Empty the shard; replaying its own topic from the beginning restores exactly its rows.
    execute(&test, shard, "DELETE FROM orders").await;
    assert_eq!(count_rows(&test, shard, "orders").await, 0);
    let outcome = run(spec("restore", None, Bound::Beginning, None)).await;
    assert!(outcome.complete);
    assert_eq!(
        outcome.records,
        topic_records(pipeline.log.as_ref(), &topology.shards[shard].topic).await as u64
    );
    assert_eq!(
        order_lines(&test, shard).await,
        before,
        "the replay did not restore the shard exactly"
    );
    // Running it again finds nothing left to do: it has its own stored position.
    assert_eq!(
        run(spec("restore", None, Bound::Beginning, None))
            .await
            .records,
        0
    );

    // 2. From the enriched topic, which holds every shard's orders: only this shard's are kept.
    execute(&test, shard, "DELETE FROM orders").await;
    let enriched = format!("{}.orders.enriched", test.id);
    let outcome = run(spec(
        "from-enriched",
        Some(enriched.clone()),
        Bound::Beginning,
        None,
    ))
    .await;
    assert_eq!(
        outcome.records,
        topic_records(pipeline.log.as_ref(), &enriched).await as u64
    );
    assert_eq!(order_lines(&test, shard).await, before);

    // 3. From a point in time: only phase B comes back.
    execute(&test, shard, "DELETE FROM orders").await;
    run(spec("since-middle", None, Bound::Time(middle), None)).await;
    let restored = order_lines(&test, shard).await;
    let expected: Vec<String> = before
        .iter()
        .filter(|line| !phase_a_lines[shard].contains(line))
        .cloned()
        .collect();
    assert_eq!(
        restored, expected,
        "a replay from a time must bring back only what came after it"
    );

    // 4. Bounded by offsets: the first two records of every partition.
    execute(&test, shard, "DELETE FROM orders").await;
    let outcome = run(spec(
        "first-two",
        None,
        Bound::Offset(0),
        Some(Bound::Offset(2)),
    ))
    .await;
    let topic = &topology.shards[shard].topic;
    let mut expected = 0;
    for partition in 0..4 {
        expected += pipeline
            .log
            .watermarks(topic, partition)
            .await
            .unwrap()
            .1
            .min(2);
    }
    assert_eq!(outcome.records as i64, expected);
    assert_eq!(count_rows(&test, shard, "orders").await, expected);
    run(spec("restore-all", None, Bound::Beginning, None)).await;
    assert_eq!(order_lines(&test, shard).await, before);

    // 5. Re-run the enrich stage from the start, interrupted after its first batches, then
    //    resumed: every valid order is processed exactly once across the two runs, and the
    //    re-enriched orders flow to the shards without duplicating a row.
    let cancel = CancellationToken::new();
    let seen = Arc::new(AtomicU64::new(0));
    let progress: sluice::replay::ProgressFn = {
        let (cancel, seen) = (cancel.clone(), seen.clone());
        Arc::new(move |done, total| {
            assert_eq!(total, valid as u64);
            seen.store(done, Ordering::SeqCst);
            if done >= 80 {
                cancel.cancel();
            }
        })
    };
    let stage_spec = ReplaySpec {
        topic: None,
        from: Bound::Beginning,
        to: None,
        target: Target::Stage("enrich".into()),
        name: "reenrich".into(),
        rate: None,
    };
    let first = replay(
        &topology,
        pipeline.log.clone(),
        &stage_spec,
        cancel,
        Some(progress),
    )
    .await
    .unwrap();
    assert!(
        !first.complete,
        "the first run should have been interrupted"
    );
    assert!(
        first.records >= 80 && first.records < valid as u64,
        "{first:?}"
    );
    let second = run(stage_spec.clone()).await;
    assert!(second.complete);
    assert_eq!(
        first.records + second.records,
        valid as u64,
        "the resumed replay re-did or skipped records"
    );
    // Every re-enriched order is routed to its shard topic, and every shard's sink has stored
    // the end of its topic as its position: the rows of the replay are all written.
    let shard_topics: Vec<String> = topology.shards.iter().map(|s| s.topic.clone()).collect();
    eventually(
        Duration::from_secs(60),
        "re-enriched orders to be routed and stored by the sinks",
        || async {
            let mut routed = 0;
            for topic in &shard_topics {
                routed += topic_records(pipeline.log.as_ref(), topic).await;
            }
            routed == 2 * valid && sinks_caught_up(&test, pipeline.log.as_ref()).await
        },
    )
    .await;
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &enriched).await,
        2 * valid
    );
    assert_eq!(total_rows(&test).await, valid, "a replay duplicated rows");
    pipeline.stop().await;
}

/// Runs `sluice replay` with `args` against `test`'s topology, as a user would.
async fn replay_command(test: &TestTopology, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.arg("replay").arg("--topology").arg(&test.path);
    command.args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// The embedded log is held by the running `sluice run`; `sluice replay` hands its replay to
/// that process over the socket beside the log, and restores an emptied shard exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_command_runs_inside_the_running_embedded_pipeline() {
    use std::os::unix::fs::PermissionsExt;

    let users = users_covering_shards(1);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let test = test_topology_on(Backend::Embedded, "livereplay", &refs, |t| {
        keep_intermediate_topics(t);
        ports.apply(t)
    });
    let topology = test.topology();
    let base_order = ports.order_base();
    let mut child = start_sluice(
        &test.path,
        &test.dir.path().join("sluice.log"),
        &[("RUST_LOG", "warn")],
    );
    wait_ready(&base_order, &mut child).await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in &users {
        let token = login(&client, &ports.login_base(), user).await;
        tokens.push((user.clone(), token));
    }
    post_orders(&client, &base_order, &tokens, 200).await;
    let valid = 200 - 8;
    eventually(Duration::from_secs(60), "the orders stored", || async {
        total_rows(&test).await == valid
    })
    .await;

    let socket =
        sluice::replay_socket::socket_path(&topology.resolve_path(&topology.log.embedded.path));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the replay socket must be the owner's only"
    );

    // Empty a shard while the pipeline runs; the replay command restores exactly its rows.
    let shard = 1;
    let shard_name = topology.shards[shard].name.clone();
    let before = order_lines(&test, shard).await;
    assert!(!before.is_empty());
    execute(&test, shard, "DELETE FROM orders").await;
    let output = replay_command(
        &test,
        &[
            "--shard",
            &shard_name,
            "--from",
            "beginning",
            "--name",
            "restore",
        ],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("the replay runs inside it"), "{stderr}");
    assert!(stderr.contains("records/s"), "no progress shown: {stderr}");
    assert!(
        stdout.contains(&format!("complete: {} records", before.len())),
        "{stdout}"
    );
    assert_eq!(
        order_lines(&test, shard).await,
        before,
        "the replay did not restore the shard exactly"
    );

    // A mistake is reported by the running process, which keeps running.
    let output = replay_command(&test, &["--shard", "nope", "--from", "beginning"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no shard named \"nope\""), "{stderr}");
    assert!(child.try_wait().unwrap().is_none());

    // Interrupted at once (the connection closes), then resumed: between them the two runs
    // cover the shard's topic exactly once.
    let spec = ReplaySpec {
        topic: None,
        from: Bound::Beginning,
        to: None,
        target: Target::Shard(shard_name.clone()),
        name: "interrupted".into(),
        rate: None,
    };
    let log_file = topology.resolve_path(&topology.log.embedded.path);
    let interrupt = CancellationToken::new();
    interrupt.cancel();
    let stream = sluice::replay_socket::connect(&log_file).await.unwrap();
    let first = sluice::replay_socket::request(stream, &spec, None, interrupt)
        .await
        .unwrap();
    let stream = sluice::replay_socket::connect(&log_file).await.unwrap();
    let second = sluice::replay_socket::request(stream, &spec, None, CancellationToken::new())
        .await
        .unwrap();
    assert!(second.complete);
    assert_eq!(
        first.records + second.records,
        before.len() as u64,
        "the resumed replay re-did or skipped records ({first:?}, {second:?})"
    );
    assert_eq!(order_lines(&test, shard).await, before);

    assert!(terminate(child).success());
    assert!(
        !socket.exists(),
        "the replay socket must go with the process"
    );
}

/// `(partition, start, stop, records)` of every line of a `--dry-run` plan about `topic`, and
/// the total it prints.
fn parse_plan(stdout: &str, topic: &str) -> (Vec<(i32, i64, i64, u64)>, u64) {
    let mut rows = Vec::new();
    let mut total = None;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() == 5 && fields[0] == topic {
            rows.push((
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
                fields[3].parse().unwrap(),
                fields[4].parse().unwrap(),
            ));
        }
        if let Some(rest) = line.strip_prefix("total: ") {
            total = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    (
        rows,
        total.unwrap_or_else(|| panic!("no total in the plan: {stdout}")),
    )
}

/// The value of the series `name{target="…"}` in a Prometheus text, if present.
fn series(metrics: &str, name: &str, target: &str) -> Option<f64> {
    let prefix = format!("{name}{{target=\"{target}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

/// On Kafka + MariaDB, `--dry-run` prints the per-partition plan of a shard replay and of a
/// stage replay, matching what was produced, and changes nothing: no row written, no position
/// stored. The same replay then runs paced by `--rate` (it takes at least records / rate
/// seconds) and its own `/metrics` (`--metrics-listen`) shows the records counter growing and
/// the remaining records falling while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_changes_nothing_and_a_paced_replay_shows_its_metrics() {
    let users = users_covering_shards(2);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(
        Backend::Services,
        "replayops",
        &refs,
        keep_intermediate_topics,
    );
    let topology = test.topology();
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push((
            user.clone(),
            login(&client, &pipeline.base_login, user).await,
        ));
    }
    post_orders(&client, &pipeline.base_order, &tokens, 200).await;
    let valid = 200 - 8;
    eventually(Duration::from_secs(60), "the orders stored", || async {
        total_rows(&test).await == valid
    })
    .await;

    let shard = 1;
    let shard_name = topology.shards[shard].name.clone();
    let topic = topology.shards[shard].topic.clone();
    let before = order_lines(&test, shard).await;
    let produced = topic_records(pipeline.log.as_ref(), &topic).await as u64;
    assert!(produced > 0);
    let mut expected = Vec::new();
    for partition in 0..4 {
        let (low, high) = pipeline.log.watermarks(&topic, partition).await.unwrap();
        if high > low {
            expected.push((partition, low, high, (high - low) as u64));
        }
    }
    execute(&test, shard, "DELETE FROM orders").await;

    // The shard's plan: every partition from its beginning to its end, and the total.
    let output = replay_command(
        &test,
        &["--shard", &shard_name, "--name", "ops", "--dry-run"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (rows, total) = parse_plan(&stdout, &topic);
    assert_eq!(rows, expected, "{stdout}");
    assert_eq!(total, produced, "{stdout}");
    assert!(stdout.contains("nothing was read or written"), "{stdout}");
    // The stage's plan covers its whole input topic.
    let valid_topic = format!("{}.orders.valid", test.id);
    let output = replay_command(&test, &["--stage", "enrich", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        parse_plan(&stdout, &valid_topic).1,
        valid as u64,
        "{stdout}"
    );

    // Nothing changed: no row written, no replay position stored.
    assert_eq!(count_rows(&test, shard, "orders").await, 0);
    let positions = query_strings(
        &test,
        shard,
        "SELECT CAST(COUNT(*) AS CHAR) FROM sluice_offsets WHERE consumer LIKE 'replay.%'",
    )
    .await;
    assert_eq!(
        positions,
        vec!["0".to_string()],
        "a dry run stored a position"
    );

    // The replay itself, paced, with its own metrics endpoint.
    let rate = 20;
    let metrics_port = free_port();
    let base = format!("http://127.0.0.1:{metrics_port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("replay")
        .arg("--topology")
        .arg(&test.path)
        .args(["--shard", &shard_name, "--name", "ops"])
        .args(["--rate", &rate.to_string()])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = std::time::Instant::now();
    let child = command.spawn().unwrap();
    let finished = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    let target = format!("shard:{shard_name}");
    let mut counts = Vec::new();
    let mut remaining = Vec::new();
    while !finished.is_finished() {
        if let Ok(response) = client.get(format!("{base}/metrics")).send().await {
            let text = response.text().await.unwrap_or_default();
            if let Some(count) = series(&text, "sluice_replay_records_total", &target) {
                counts.push(count);
            }
            if let Some(left) = series(&text, "sluice_replay_remaining_records", &target) {
                remaining.push(left);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = finished.await.unwrap();
    let took = started.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("complete: {produced} records")),
        "{stdout}"
    );
    assert!(
        took >= Duration::from_secs_f64(produced as f64 / f64::from(rate)),
        "{produced} records at {rate}/s took only {took:?}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "the records counter went down: {counts:?}"
    );
    let distinct_in_flight: std::collections::BTreeSet<u64> = counts
        .iter()
        .filter(|&&c| c > 0.0 && (c as u64) < produced)
        .map(|&c| c as u64)
        .collect();
    assert!(
        distinct_in_flight.len() >= 2,
        "the metrics endpoint did not show the counter growing during the replay: {counts:?}"
    );
    assert!(
        remaining.iter().any(|&left| left > 0.0) && remaining.windows(2).all(|w| w[0] >= w[1]),
        "remaining records: {remaining:?}"
    );
    assert_eq!(
        order_lines(&test, shard).await,
        before,
        "the paced replay did not restore the shard"
    );
    pipeline.stop().await;
}

/// On the embedded log, the running pipeline holds the log: a dry run is planned by it over
/// the replay socket (nothing changes), and `--rate` travels with the request and paces the
/// replay that runs inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_embedded_log_dry_run_and_rate_go_over_the_socket() {
    let users = users_covering_shards(1);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(
        Backend::Embedded,
        "replaysock",
        &refs,
        keep_intermediate_topics,
    );
    let topology = test.topology();
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push((
            user.clone(),
            login(&client, &pipeline.base_login, user).await,
        ));
    }
    post_orders(&client, &pipeline.base_order, &tokens, 100).await;
    let valid = 100 - 4;
    eventually(Duration::from_secs(60), "the orders stored", || async {
        total_rows(&test).await == valid
    })
    .await;

    let shard = 0;
    let shard_name = topology.shards[shard].name.clone();
    let topic = topology.shards[shard].topic.clone();
    let produced = topic_records(pipeline.log.as_ref(), &topic).await as u64;
    let before = order_lines(&test, shard).await;
    execute(&test, shard, "DELETE FROM orders").await;

    // The binary finds the socket and asks the running pipeline for the plan.
    let output = replay_command(
        &test,
        &["--shard", &shard_name, "--name", "sock", "--dry-run"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (rows, total) = parse_plan(&stdout, &topic);
    assert_eq!(total, produced, "{stdout}");
    assert_eq!(rows.iter().map(|r| r.3).sum::<u64>(), produced, "{stdout}");
    assert!(
        rows.iter().all(|r| r.1 == 0 && r.3 == (r.2 - r.1) as u64),
        "{stdout}"
    );
    assert_eq!(
        count_rows(&test, shard, "orders").await,
        0,
        "a dry run wrote rows"
    );

    // A paced replay over the socket.
    let rate = 25;
    let spec = ReplaySpec {
        topic: None,
        from: Bound::Beginning,
        to: None,
        target: Target::Shard(shard_name.clone()),
        name: "sock".into(),
        rate: std::num::NonZeroU32::new(rate),
    };
    let log_file = topology.resolve_path(&topology.log.embedded.path);
    let stream = sluice::replay_socket::connect(&log_file).await.unwrap();
    let plan = sluice::replay_socket::plan_request(stream, &spec)
        .await
        .unwrap();
    assert_eq!(plan.total, produced);
    assert!(!plan.resumed, "a dry run stored a position: {plan:?}");
    let started = std::time::Instant::now();
    let stream = sluice::replay_socket::connect(&log_file).await.unwrap();
    let outcome = sluice::replay_socket::request(stream, &spec, None, CancellationToken::new())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(outcome.complete);
    assert_eq!(outcome.records, produced);
    assert!(
        took >= Duration::from_secs_f64(produced as f64 / f64::from(rate)),
        "{produced} records at {rate}/s took only {took:?}"
    );
    assert_eq!(order_lines(&test, shard).await, before);
    // Now the replay has a stored position: its plan is empty.
    let stream = sluice::replay_socket::connect(&log_file).await.unwrap();
    let plan = sluice::replay_socket::plan_request(stream, &spec)
        .await
        .unwrap();
    assert_eq!(plan.total, 0, "{plan:?}");
    assert!(plan.resumed, "{plan:?}");
    pipeline.stop().await;
}

/// Every file under `dir` (recursively), with its size and modification time.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                folders.push(entry.path());
            }
            found.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    found.sort();
    found
}

/// The value of `sluice_replay_remaining_records{target="…"}` in this process.
fn remaining_here(target: &str) -> Option<f64> {
    series(
        &sluice_ingress::prometheus::handle().render(),
        "sluice_replay_remaining_records",
        target,
    )
}

/// On the embedded log with no pipeline running, `--dry-run` opens nothing for writing: with
/// no log file it says there is nothing to replay and creates nothing (no log, no folder, no
/// shard file); with a log, the plan is right and no file in the test's folder changes (the
/// log is opened read-only, the SQLite shard not at all). Also: a replay cancelled midway
/// leaves `sluice_replay_remaining_records` of its target at 0, not at what was left; and a
/// replay run here without `--metrics-listen` leaves the topology's `[ops] listen` port free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_embedded_log_a_dry_run_writes_nothing_and_a_cancelled_replay_leaves_no_remaining_records(
) {
    let users = users_covering_shards(1);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    // A shard name of this test's own, so the replay gauge is not shared with other tests.
    let shard = 0;
    let shard_name = "dryrun-shard0".to_string();
    let test = test_topology_on(Backend::Embedded, "dryro", &refs, |t| {
        keep_intermediate_topics(t);
        t.shards[shard].name = shard_name.clone();
    });
    let topology = test.topology();
    let log_file = topology.resolve_path(&topology.log.embedded.path);
    let topic = topology.shards[shard].topic.clone();

    // No log yet: nothing to replay, and nothing created.
    let before = tree(test.dir.path());
    let output = replay_command(&test, &["--shard", &shard_name, "--dry-run"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no log at {}: nothing to replay",
            log_file.display()
        )),
        "{stderr}"
    );
    assert_eq!(tree(test.dir.path()), before, "a dry run created files");
    // The same for a log in a folder that does not exist: the folder is not created.
    let nested = test.variant("nested", |t| {
        t.log.embedded.path = test.dir.path().join("logs").join("log.redb");
    });
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.arg("replay").arg("--topology").arg(&nested);
    command.args(["--stage", "enrich", "--dry-run"]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        !test.dir.path().join("logs").exists(),
        "a dry run created the log folder"
    );

    // A log with orders in it.
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push((
            user.clone(),
            login(&client, &pipeline.base_login, user).await,
        ));
    }
    post_orders(&client, &pipeline.base_order, &tokens, 100).await;
    let valid = 100 - 4;
    eventually(Duration::from_secs(60), "the orders stored", || async {
        total_rows(&test).await == valid
    })
    .await;
    let produced = topic_records(pipeline.log.as_ref(), &topic).await as u64;
    assert!(produced > 10);

    // A paced replay, cancelled after its first records: the gauge goes back to 0.
    let target = format!("shard:{shard_name}");
    let cancel = CancellationToken::new();
    let seen = Arc::new(AtomicU64::new(0));
    let progress: sluice::replay::ProgressFn = {
        let (cancel, seen, target) = (cancel.clone(), seen.clone(), target.clone());
        Arc::new(move |done, total| {
            assert_eq!(total, produced);
            if done > 0 && done < total {
                // While it runs, the gauge says what is left.
                if let Some(left) = remaining_here(&target) {
                    seen.store(left as u64, Ordering::SeqCst);
                }
                cancel.cancel();
            }
        })
    };
    let spec = ReplaySpec {
        topic: None,
        from: Bound::Beginning,
        to: None,
        target: Target::Shard(shard_name.clone()),
        name: "cancelled".into(),
        rate: std::num::NonZeroU32::new(40),
    };
    let outcome = replay(
        &topology,
        pipeline.log.clone(),
        &spec,
        cancel,
        Some(progress),
    )
    .await
    .unwrap();
    assert!(!outcome.complete, "{outcome:?}");
    assert!(
        seen.load(Ordering::SeqCst) > 0,
        "the gauge showed nothing left while the replay ran"
    );
    assert_eq!(
        remaining_here(&target),
        Some(0.0),
        "a cancelled replay left its remaining records on the gauge"
    );
    pipeline.stop().await;

    // With the pipeline stopped, dry runs read the log without changing a file. The stopped
    // pipeline's last tasks let go of the log file a moment after it drained: a dry run
    // refused for its lock meanwhile is tried again.
    let released = std::time::Instant::now() + Duration::from_secs(20);
    let (before, output) = loop {
        let before = tree(test.dir.path());
        let output = replay_command(
            &test,
            &["--shard", &shard_name, "--name", "cancelled", "--dry-run"],
        )
        .await;
        let held = String::from_utf8_lossy(&output.stderr).contains("in use by another process");
        if !held || std::time::Instant::now() > released {
            break (before, output);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (rows, total) = parse_plan(&stdout, &topic);
    assert_eq!(total, produced, "{stdout}");
    assert!(rows.iter().all(|r| r.1 == 0), "{stdout}");
    assert!(stdout.contains("a dry run opens no shard"), "{stdout}");
    let valid_topic = format!("{}.orders.valid", test.id);
    let output = replay_command(&test, &["--stage", "enrich", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        parse_plan(&stdout, &valid_topic).1,
        valid as u64,
        "{stdout}"
    );
    assert_eq!(
        tree(test.dir.path()),
        before,
        "a dry run changed a file (the log, a shard, or their folder)"
    );

    // A replay run here serves no metrics without --metrics-listen: the topology's
    // [ops] listen stays free for a `sluice run` that starts meanwhile.
    let ops_port = free_port();
    let with_ops = test.variant("with-ops", |t| {
        t.ops.listen = Some(([127, 0, 0, 1], ops_port).into());
    });
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.arg("replay").arg("--topology").arg(&with_ops);
    command.args(["--shard", &shard_name, "--name", "local", "--rate", "20"]);
    command.env("RUST_LOG", "warn");
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let finished = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    let mut probes = 0;
    while !finished.is_finished() {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", ops_port))
                .await
                .is_err(),
            "the replay took [ops] listen 127.0.0.1:{ops_port}"
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = finished.await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        probes >= 5,
        "the paced replay ended too soon to probe the port"
    );
    assert!(!stderr.contains("metrics on"), "{stderr}");
}

/// Every stage writes its output topic even with the next stage fused behind it, so the
/// replays here can read `orders.valid` and `orders.enriched`.
fn keep_intermediate_topics(topology: &mut sluice::topology::Topology) {
    for stage in &mut topology.stages {
        stage.write_output = true;
    }
}
