//! A sink worker killed in the middle of a stream and restarted loses and duplicates nothing,
//! on a MariaDB shard over Kafka and on a SQLite shard over the embedded log: rows and
//! positions commit together, and the restart resumes exactly where the shard says.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::common::*;
use sluice_core::log::{self, OutRecord, StartFrom};
use sluice_core::order::EnrichedOrder;
use sluice_sinks::{open_shard, run_sink_worker, SinkWorker};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_a_killed_sink_worker_resumes_without_loss_or_duplicates() {
    killed_sink_worker_resumes_without_loss_or_duplicates(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_a_killed_sink_worker_resumes_without_loss_or_duplicates() {
    killed_sink_worker_resumes_without_loss_or_duplicates(Backend::Embedded).await;
}

/// The line [`order_lines`] reads back for `order` once stored.
fn expected_line(order: &EnrichedOrder) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        order.order_id.simple(),
        order.user_id,
        order.product,
        order.quantity,
        order.unit_price_minor,
        order.line_total_minor,
        order.currency,
        order.received_at_ms,
        order.enriched_at_ms,
        order.bucket,
        order.shard
    )
}

async fn killed_sink_worker_resumes_without_loss_or_duplicates(backend: Backend) {
    let test = test_topology_on(backend, "sinkcrash", &[], |_| {});
    let topology = test.topology();
    let log = topology.log.open(&topology.base_dir).unwrap();
    log::ensure_declared_topics(log.as_ref(), &topology.topics)
        .await
        .unwrap();
    let map = topology.shard_map().unwrap();
    let shard = &topology.shards[0];
    let users: Vec<String> = (0..)
        .map(|n| format!("u{n}"))
        .filter(|u| map.shard_for_user(u) == 0)
        .take(20)
        .collect();

    // Every order differs in its content, so a row stored with another order's values (or a
    // half-written one) shows.
    let total = 6_000usize;
    let orders: Vec<EnrichedOrder> = (0..total)
        .map(|n| {
            let user = &users[n % users.len()];
            let quantity = 1 + (n % 7) as i64;
            let unit_price_minor = 100 + n as i64;
            EnrichedOrder {
                order_id: uuid::Uuid::now_v7(),
                user_id: user.clone(),
                product: ["widget", "gadget", "gizmo"][n % 3].into(),
                quantity,
                unit_price_minor,
                line_total_minor: quantity * unit_price_minor,
                currency: "EUR".into(),
                received_at_ms: 1_000_000 + n as i64,
                enriched_at_ms: 2_000_000 + n as i64,
                bucket: map.bucket(user),
                shard: shard.name.clone(),
            }
        })
        .collect();
    // Each send returns once the log has acknowledged the record: all of them are acknowledged.
    let sends = orders.iter().map(|order| {
        let record = OutRecord::new(order.user_id.as_bytes(), serde_json::to_vec(order).unwrap());
        let log = log.clone();
        let topic = shard.topic.clone();
        async move {
            log.send(&topic, record, Duration::from_secs(10))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(sends).await;
    let mut acknowledged: Vec<String> = orders.iter().map(expected_line).collect();
    acknowledged.sort();

    let writer = open_shard(&shard.name, &shard.url, &topology.base_dir).unwrap();
    let worker = SinkWorker {
        shard: shard.name.clone(),
        shard_index: 0,
        topic: shard.topic.clone(),
        rejections_topic: None,
        consumer: "sink".into(),
        group_prefix: topology.log.consumer_group_prefix.clone(),
        max_rows: 100,
        max_wait: Duration::from_millis(20),
        start: StartFrom::Beginning,
        start_offsets: Default::default(),
        stop_at: None,
    };

    // First run: abort it abruptly (no drain) once some but not all rows are in. The worker
    // aborts its own task from its progress report once 300 rows are committed, so the crash
    // comes at that batch however fast the shard writes (a test polling the row count could
    // see all 6000 rows stored before it aborted).
    let abort: Arc<OnceLock<tokio::task::AbortHandle>> = Arc::default();
    let crash = {
        let abort = abort.clone();
        Arc::new(move |done: u64| {
            if done >= 300 {
                if let Some(handle) = abort.get() {
                    handle.abort();
                }
            }
        }) as Arc<dyn Fn(u64) + Send + Sync>
    };
    let first = tokio::spawn(run_sink_worker(
        log.clone(),
        writer.clone(),
        map.clone(),
        worker.clone(),
        CancellationToken::new(),
        Some(crash),
    ));
    abort.set(first.abort_handle()).unwrap();
    eventually(
        Duration::from_secs(60),
        "the first rows to be stored",
        || async { count_rows(&test, 0, "orders").await >= 300 },
    )
    .await;
    first.abort();
    let _ = first.await;
    // A SQLite write runs on a blocking thread that the abort does not stop; asking the
    // shard through the same writer waits for that write to finish.
    let positions_at_crash: i64 = writer
        .positions("sink")
        .await
        .unwrap()
        .iter()
        .map(|position| position.next_offset)
        .sum();
    let stored_at_crash = count_rows(&test, 0, "orders").await as usize;
    assert!(
        stored_at_crash < total,
        "the crash came too late to test anything ({stored_at_crash} rows)"
    );
    // Rows and positions committed together: the positions stored at the crash account for
    // exactly the rows stored at the crash.
    assert_eq!(
        positions_at_crash as usize, stored_at_crash,
        "the rows and the positions stored before the crash disagree"
    );

    // Restart: it must resume from the positions stored with the rows.
    let cancel = CancellationToken::new();
    let second = tokio::spawn(run_sink_worker(
        log.clone(),
        writer.clone(),
        map.clone(),
        worker.clone(),
        cancel.clone(),
        None,
    ));
    eventually(
        Duration::from_secs(60),
        "the stored positions to reach the end of the topic",
        || async {
            stored_positions(&test, 0, "sink")
                .await
                .values()
                .sum::<i64>() as usize
                >= total
        },
    )
    .await;
    cancel.cancel();
    let consumed_after_restart = second.await.unwrap().unwrap() as usize;
    writer.close().await;

    // Every acknowledged order is stored exactly once, with its own content, and nothing
    // else is stored.
    let stored = order_lines(&test, 0).await;
    let ids: HashSet<&str> = stored
        .iter()
        .map(|line| line.split('|').next().unwrap())
        .collect();
    assert_eq!(ids.len(), stored.len(), "an order is stored twice");
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|line| stored.binary_search(line).is_err())
        .collect();
    let unexpected: Vec<&String> = stored
        .iter()
        .filter(|line| acknowledged.binary_search(line).is_err())
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{} acknowledged orders are missing or stored with other values (first: {:?}); \
         {} stored rows were never sent as such (first: {:?})",
        missing.len(),
        missing.first(),
        unexpected.len(),
        unexpected.first()
    );
    // On the right shard: the other shards hold nothing.
    for other in 1..4 {
        assert_eq!(
            count_rows(&test, other, "orders").await,
            0,
            "shard {other} holds rows of shard 0"
        );
    }
    // The stored positions are the end of every partition of the topic.
    let positions = stored_positions(&test, 0, "sink").await;
    for partition in 0..log.partition_count(&shard.topic).await.unwrap() as i32 {
        let end = log.watermarks(&shard.topic, partition).await.unwrap().1;
        assert_eq!(
            positions
                .get(&(shard.topic.clone(), partition))
                .copied()
                .unwrap_or(0),
            end,
            "stored position of partition {partition}"
        );
    }
    // Exactly the records not yet committed at the crash were read again.
    assert_eq!(
        consumed_after_restart,
        total - stored_at_crash,
        "the restart did not resume at the stored positions"
    );
}
