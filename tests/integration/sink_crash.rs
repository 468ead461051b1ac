//! A sink worker killed in the middle of a stream and restarted loses and duplicates nothing:
//! rows and positions commit together, and the restart resumes exactly where the shard says.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use mysql_async::prelude::Queryable;
use sluice_core::log::{self, OutRecord, StartFrom};
use sluice_core::order::EnrichedOrder;
use sluice_sinks::mysql::MysqlShard;
use sluice_sinks::{run_sink_worker, ShardWriter, SinkWorker};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sink_worker_resumes_without_loss_or_duplicates() {
    let test = test_topology("sinkcrash", &[], |t| t);
    let topology = test.topology();
    let log = log::open(&topology.log, &topology.base_dir).unwrap();
    log::ensure_topology_topics(log.as_ref(), &topology)
        .await
        .unwrap();
    let map = topology.shard_map().unwrap();
    let shard = &topology.shards[0];
    let users: Vec<String> = (0..)
        .map(|n| format!("u{n}"))
        .filter(|u| map.shard_for_user(u) == 0)
        .take(20)
        .collect();

    let total = 6_000usize;
    let sends = (0..total).map(|n| {
        let user = &users[n % users.len()];
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
            bucket: map.bucket(user),
            shard: shard.name.clone(),
        };
        let record = OutRecord::new(user.as_bytes(), serde_json::to_vec(&order).unwrap());
        let log = log.clone();
        let topic = shard.topic.clone();
        async move {
            log.send(&topic, record, Duration::from_secs(10))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(sends).await;

    let writer: Arc<dyn ShardWriter> = Arc::new(MysqlShard::new(&shard.name, &shard.url).unwrap());
    let worker = SinkWorker {
        shard: shard.name.clone(),
        shard_index: 0,
        topic: shard.topic.clone(),
        rejections_topic: None,
        consumer: "sink".into(),
        max_rows: 100,
        max_wait: Duration::from_millis(20),
        start: StartFrom::Beginning,
        start_offsets: Default::default(),
        stop_at: None,
    };

    // First run: abort it abruptly (no drain) once some but not all rows are in.
    let first = tokio::spawn(run_sink_worker(
        log.clone(),
        writer.clone(),
        map.clone(),
        worker.clone(),
        CancellationToken::new(),
        None,
    ));
    eventually(
        Duration::from_secs(60),
        "the first rows to be stored",
        || async { count_rows(&test, 0, "orders").await >= 300 },
    )
    .await;
    first.abort();
    let _ = first.await;
    let stored_at_crash = count_rows(&test, 0, "orders").await as usize;
    assert!(
        stored_at_crash < total,
        "the crash came too late to test anything ({stored_at_crash} rows)"
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
        "every row to be stored",
        || async { count_rows(&test, 0, "orders").await as usize >= total },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    let consumed_after_restart = second.await.unwrap().unwrap() as usize;

    let mut conn = shard_conn(&test, 0).await;
    let (rows, distinct): (i64, i64) = conn
        .query_first("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows as usize, total, "rows lost or duplicated");
    assert_eq!(distinct, rows);
    let next_offsets: i64 = conn
        .exec_first("SELECT CAST(SUM(next_offset) AS SIGNED) FROM sluice_offsets WHERE consumer = 'sink' AND topic = ?", (shard.topic.as_str(),))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next_offsets as usize, total,
        "stored positions do not match the rows"
    );
    // Exactly the records not yet committed at the crash were read again.
    assert_eq!(
        consumed_after_restart,
        total - stored_at_crash,
        "the restart did not resume at the stored positions"
    );
    conn.disconnect().await.unwrap();
}
