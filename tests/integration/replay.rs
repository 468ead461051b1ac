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
    let test = test_topology_on(Backend::Embedded, "livereplay", &refs, |t| ports.apply(t));
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
