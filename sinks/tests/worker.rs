//! The shard worker over a real embedded log and a real SQLite shard: a shard that stays
//! locked stores nothing and the worker stops when cancelled; a worker whose claim another
//! process takes while it still holds the partition claims it again and stores on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluice_core::log::{Log, OutRecord, StartFrom, TopicPartition};
use sluice_core::order::EnrichedOrder;
use sluice_core::sharding::{BucketRange, ShardMap};
use sluice_log_embedded::{EmbeddedLog, Retention};
use sluice_sinks::sqlite::SqliteShard;
use sluice_sinks::{run_sink_worker, ShardWriter, SinkWorker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A shard locked for writing from the start: the worker cannot even claim its partitions
/// (the claim is a write), so it reads nothing, keeps trying, takes the lock for a transient
/// failure (never a refusal) and stops cleanly when cancelled, having stored nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_shard_stays_locked_stores_nothing_and_stops_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (log, topic, map) = one_partition_log(dir.path()).await;
    append_orders(log.as_ref(), &topic, &map, 2_000).await;

    // A shard that another connection keeps locked for writing: every claim fails with
    // "database is locked", a transient error that is retried, never taken for a refusal.
    let file = dir.path().join("shard0.db");
    let shard = Arc::new(SqliteShard::new("s0", &file));
    shard.migrate().await.unwrap();
    let holder = rusqlite::Connection::open(&file).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_sink_worker(
        log.clone(),
        shard.clone(),
        map,
        live_worker(&topic, 100, Duration::from_millis(10)),
        cancel.clone(),
        None,
    ));
    // Long enough for the claim to have been tried and refused a few times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !worker.is_finished(),
        "the worker gave up before it was cancelled"
    );
    cancel.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the cancelled worker hung instead of stopping");
    let consumed = stopped
        .unwrap()
        .expect("a worker that could not claim its partitions stops cleanly");
    assert_eq!(
        consumed, 0,
        "no record is read before its partition is claimed"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    // Nothing was stored, so no position was either: a restart reads everything again.
    assert!(shard.positions("sink").await.unwrap().is_empty());
    let rejected: i64 = holder
        .query_row("SELECT COUNT(*) FROM rejected_orders", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rejected, 0, "a transient failure became a rejection");
}

/// An embedded log in `dir` with one topic of one partition, and a map of one shard.
async fn one_partition_log(dir: &std::path::Path) -> (Arc<dyn Log>, String, ShardMap) {
    let log: Arc<dyn Log> =
        Arc::new(EmbeddedLog::open(&dir.join("log.redb"), Retention::KEEP_ALL).unwrap());
    let topic = "orders.shard.0".to_string();
    log.ensure_topics(&[(topic.clone(), 1, 1)]).await.unwrap();
    let map = ShardMap::new(16, &[("s0".into(), BucketRange { first: 0, last: 15 })]).unwrap();
    (log, topic, map)
}

/// The live worker of shard `s0` over `topic`, in batches of `max_rows` closed after
/// `max_wait`.
fn live_worker(topic: &str, max_rows: usize, max_wait: Duration) -> SinkWorker {
    SinkWorker {
        shard: "s0".into(),
        shard_index: 0,
        topic: topic.to_string(),
        rejections_topic: None,
        consumer: "sink".into(),
        group_prefix: "sluice".into(),
        max_rows,
        max_wait,
        start: StartFrom::Beginning,
        start_offsets: Default::default(),
        stop_at: None,
    }
}

/// `count` enriched orders of user `u1` appended to `topic`, 64 at a time.
async fn append_orders(log: &dyn Log, topic: &str, map: &ShardMap, count: usize) {
    let sends = (0..count).map(|_| {
        let order = EnrichedOrder {
            order_id: Uuid::now_v7(),
            user_id: "u1".into(),
            product: "widget".into(),
            quantity: 1,
            unit_price_minor: 999,
            line_total_minor: 999,
            currency: "EUR".into(),
            received_at_ms: 1,
            enriched_at_ms: 2,
            bucket: map.bucket("u1"),
            shard: "s0".into(),
        };
        let record = OutRecord::new("u1", serde_json::to_vec(&order).unwrap());
        async move {
            log.send(topic, record, Duration::from_secs(10))
                .await
                .unwrap()
        }
    });
    futures::stream::iter(sends)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// Waits until the shard's stored position of partition 0 of `topic` reaches `offset`.
async fn stored_up_to(shard: &SqliteShard, topic: &str, offset: i64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let positions = shard.positions("sink").await.unwrap();
        if positions
            .iter()
            .any(|p| p.topic == topic && p.partition == 0 && p.next_offset >= offset)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A claim taken by another process (a sink that woke up after its session ran out and
/// claimed late) while this worker still holds the partition in its group: the worker's next
/// batch is fenced, and instead of dropping the partition's rows for ever it claims the
/// partition again and stores on from the stored position, every order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_claim_is_taken_claims_its_partition_again() {
    let dir = tempfile::tempdir().unwrap();
    let (log, topic, map) = one_partition_log(dir.path()).await;
    let file = dir.path().join("shard0.db");
    let shard = Arc::new(SqliteShard::new("s0", &file));
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_sink_worker(
        log.clone(),
        shard.clone(),
        map.clone(),
        live_worker(&topic, 50, Duration::from_millis(20)),
        cancel.clone(),
        None,
    ));
    append_orders(log.as_ref(), &topic, &map, 100).await;
    assert!(
        stored_up_to(&shard, &topic, 100).await,
        "the first orders were not stored"
    );

    // Another process claims the partition behind the worker's back.
    let partition = TopicPartition {
        topic: topic.clone(),
        partition: 0,
    };
    let taken = shard
        .claim("sink", "late-claimer:1", std::slice::from_ref(&partition))
        .await
        .unwrap();
    assert_eq!(taken[0].next_offset, Some(100));

    append_orders(log.as_ref(), &topic, &map, 100).await;
    assert!(
        stored_up_to(&shard, &topic, 200).await,
        "the worker stays fenced: {:?}",
        shard.positions("sink").await.unwrap()
    );
    let rows: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM orders", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 200, "every order once");
    cancel.cancel();
    worker.await.unwrap().unwrap();
}
