//! A row the shard refuses for good never stalls it, and a transient failure is never taken
//! for such a refusal: on real MariaDB (`SLUICE_MYSQL_SHARDS`, from `scripts/infra up`) and on
//! SQLite, with the sink worker reading a real embedded log.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use sluice_core::log::{Log, OutRecord, Position, StartFrom};
use sluice_core::lookup::OrderStatus;
use sluice_core::order::EnrichedOrder;
use sluice_core::sharding::{BucketRange, ShardMap};
use sluice_log_embedded::{EmbeddedLog, Retention};
use sluice_sinks::mysql::MysqlShard;
use sluice_sinks::sqlite::SqliteShard;
use sluice_sinks::{run_sink_worker, Batch, Fault, ShardWriter, SinkError, SinkWorker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "orders.shard.0";

/// A product name longer than the 255 characters the MariaDB schema stores.
fn too_long_product() -> String {
    "p".repeat(300)
}

fn order(user: &str, product: &str) -> EnrichedOrder {
    EnrichedOrder {
        order_id: Uuid::now_v7(),
        user_id: user.into(),
        product: product.into(),
        quantity: 2,
        unit_price_minor: 999,
        line_total_minor: 1998,
        currency: "EUR".into(),
        received_at_ms: 10,
        enriched_at_ms: 20,
        bucket: 3,
        shard: "s0".into(),
    }
}

fn one_shard_map() -> ShardMap {
    ShardMap::new(16, &[("s0".into(), BucketRange { first: 0, last: 15 })]).unwrap()
}

fn live_worker(shard: &str) -> SinkWorker {
    SinkWorker {
        shard: shard.into(),
        shard_index: 0,
        topic: TOPIC.into(),
        rejections_topic: None,
        consumer: "sink".into(),
        group_prefix: "sluice".into(),
        max_rows: 100,
        max_wait: Duration::from_millis(50),
        start: StartFrom::Beginning,
        start_offsets: Default::default(),
        stop_at: None,
    }
}

async fn embedded_log(dir: &std::path::Path) -> Arc<dyn Log> {
    let log: Arc<dyn Log> =
        Arc::new(EmbeddedLog::open(&dir.join("log.redb"), Retention::KEEP_ALL).unwrap());
    log.ensure_topics(&[(TOPIC.to_string(), 1, 1)])
        .await
        .unwrap();
    log
}

async fn send_all(log: &Arc<dyn Log>, orders: &[EnrichedOrder]) {
    for order in orders {
        let record = OutRecord::new(order.user_id.as_str(), serde_json::to_vec(order).unwrap());
        log.send(TOPIC, record, Duration::from_secs(10))
            .await
            .unwrap();
    }
}

/// Polls the shard's stored positions until `TOPIC` partition 0 reaches `next_offset`; the
/// limit only turns a stalled shard into a failure instead of a hang.
async fn wait_for_position(shard: &dyn ShardWriter, next_offset: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let positions = shard.positions("sink").await.unwrap();
        if positions.contains(&Position {
            topic: TOPIC.into(),
            partition: 0,
            next_offset,
        }) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shard's positions never reached {next_offset} (the shard stalled?): {positions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test process's Prometheus recorder, installed on first use.
fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
        handle
    })
}

/// The value of the refused-rows counter of `shard` in the process's Prometheus text.
fn refused_metric(shard: &str) -> Option<f64> {
    let text = metrics_handle().render();
    let prefix = format!("sluice_sink_rows_refused_total{{shard=\"{shard}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

/// One batch of good orders holding two the shard refuses: the good ones are stored, the
/// refused ones are recorded as rejected by `sink` with the database's reason, the batch's
/// positions are stored, and the next batch is stored as usual.
async fn refused_rows_are_rejected_and_the_rest_stored(
    shard: Arc<dyn ShardWriter>,
    shard_name: &str,
    expected_reason: &str,
) {
    // The counter's handle is registered when the worker starts: install the recorder first.
    metrics_handle();
    let dir = tempfile::tempdir().unwrap();
    let log = embedded_log(dir.path()).await;
    shard.migrate().await.unwrap();

    let mut first: Vec<EnrichedOrder> = (0..40)
        .map(|n| order(&format!("user{}", n % 3), "widget"))
        .collect();
    first[0].product = too_long_product();
    first[23].product = too_long_product();
    let refused = [first[0].clone(), first[23].clone()];
    send_all(&log, &first).await;

    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_sink_worker(
        log.clone(),
        shard.clone(),
        one_shard_map(),
        live_worker(shard_name),
        cancel.clone(),
        None,
    ));
    wait_for_position(shard.as_ref(), 40).await;
    for order in &first {
        let status = shard.find(&order.user_id, order.order_id).await.unwrap();
        if refused.iter().any(|r| r.order_id == order.order_id) {
            match status {
                OrderStatus::Rejected { stage, reason } => {
                    assert_eq!(stage, "sink");
                    assert!(
                        reason.contains(expected_reason),
                        "the database's reason is missing from {reason:?}"
                    );
                }
                other => panic!("the refused order reads as {other:?}"),
            }
        } else {
            assert_eq!(
                status,
                OrderStatus::Stored {
                    order: order.clone()
                },
                "a good order of the refused batch was not stored"
            );
        }
    }

    // The shard goes on: the next batch is stored normally.
    let second: Vec<EnrichedOrder> = (0..15).map(|_| order("user9", "gadget")).collect();
    send_all(&log, &second).await;
    wait_for_position(shard.as_ref(), 55).await;
    for order in &second {
        assert!(matches!(
            shard.find(&order.user_id, order.order_id).await.unwrap(),
            OrderStatus::Stored { .. }
        ));
    }
    cancel.cancel();
    let consumed = worker.await.unwrap().unwrap();
    assert_eq!(consumed, 55);
    assert_eq!(
        shard.positions("sink").await.unwrap(),
        vec![Position {
            topic: TOPIC.into(),
            partition: 0,
            next_offset: 55
        }]
    );
    assert_eq!(refused_metric(shard_name), Some(2.0));
    shard.close().await;
}

/// A fresh database on the first MariaDB server of the infrastructure.
fn mysql_url(name: &str) -> String {
    let servers = std::env::var("SLUICE_MYSQL_SHARDS").expect(
        "these tests need MariaDB: run `make test` (or `bash scripts/infra up` and eval its env)",
    );
    let server = servers.split(',').next().unwrap().trim_end_matches('/');
    let id = Uuid::now_v7().simple().to_string();
    format!("{server}/t_{name}_{}", &id[id.len() - 10..])
}

/// Drops the test's database (only once the test passed, so a failure can be inspected).
async fn drop_database(url: &str) {
    let (server, database) = url.rsplit_once('/').unwrap();
    let mut conn = mysql_async::Conn::from_url(server).await.unwrap();
    conn.query_drop(format!("DROP DATABASE `{database}`"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_refused_rows_are_rejected_and_the_shard_goes_on() {
    let url = mysql_url("refuse");
    let shard = Arc::new(MysqlShard::new("refuse-mariadb", &url).unwrap());
    // MariaDB in strict mode refuses a product longer than its VARCHAR(255) column.
    refused_rows_are_rejected_and_the_rest_stored(
        shard,
        "refuse-mariadb",
        "Data too long for column 'product'",
    )
    .await;
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refused_rows_are_rejected_and_the_shard_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shard0.db");
    let shard = Arc::new(SqliteShard::new("refuse-sqlite", &file));
    shard.migrate().await.unwrap();
    // The SQLite schema has no limit a real order can break (TEXT has no length), so this
    // test's own database file gets one: a trigger refusing long products, as MariaDB's
    // VARCHAR(255) does. SQLite reports it as a constraint violation.
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_long_products BEFORE INSERT ON orders \
             WHEN length(NEW.product) > 255 \
             BEGIN SELECT RAISE(ABORT, 'product longer than 255 characters'); END",
        )
        .unwrap();
    refused_rows_are_rejected_and_the_rest_stored(
        shard,
        "refuse-sqlite",
        "product longer than 255 characters",
    )
    .await;
}

#[tokio::test]
async fn refusals_and_transient_failures_are_told_apart_on_mariadb() {
    let url = mysql_url("classify");
    let shard = MysqlShard::new("s0", &url).unwrap();
    shard.migrate().await.unwrap();
    let refused = shard
        .write_batch(
            "sink",
            &Batch {
                orders: vec![order("u1", &too_long_product())],
                ..Batch::default()
            },
        )
        .await
        .expect_err("strict MariaDB must refuse a 300-character product");
    assert_eq!(refused.fault(), Fault::Permanent, "{refused}");
    assert!(
        refused
            .refusal_reason()
            .contains("Data too long for column 'product'"),
        "{}",
        refused.refusal_reason()
    );
    // The error keeps the driver's error as its source.
    let source = std::error::Error::source(&refused).expect("the driver's error is kept");
    assert!(source.to_string().contains("1406"), "{source}");
    shard.close().await;
    drop_database(&url).await;

    // Nothing listens on this port: connection refused is transient.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable =
        MysqlShard::new("s0", &format!("mysql://root:x@127.0.0.1:{port}/db")).unwrap();
    let error = unreachable
        .write_batch(
            "sink",
            &Batch {
                orders: vec![order("u1", "widget")],
                ..Batch::default()
            },
        )
        .await
        .expect_err("nothing listens there");
    assert_eq!(error.fault(), Fault::Transient, "{error}");
}

/// The id of a connection to the test's database, other than `except`, that runs an
/// `INSERT INTO orders` (blocked on the row lock the test holds), once there is one.
async fn blocked_insert(conn: &mut mysql_async::Conn, database: &str, except: &[u64]) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ids: Vec<u64> = conn
            .exec(
                "SELECT id FROM information_schema.processlist \
                 WHERE db = ? AND info LIKE 'INSERT INTO orders%'",
                (database,),
            )
            .await
            .unwrap();
        if let Some(id) = ids.into_iter().find(|id| !except.contains(id)) {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no blocked sink INSERT appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server-side `KILL` of the sink's connection in the middle of a write is transient: the
/// write is retried, and the order is stored once the shard can take it, not rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_is_retried_not_rejected_on_mariadb() {
    let url = mysql_url("kill");
    let database = url.rsplit('/').next().unwrap().to_string();
    let shard = Arc::new(MysqlShard::new("kill-mariadb", &url).unwrap());
    shard.migrate().await.unwrap();
    let wanted = order("u1", "widget");

    // Hold the row lock of the order's primary key: the sink's INSERT waits on it.
    let mut holder = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
    holder.query_drop("BEGIN").await.unwrap();
    holder
        .exec_drop(
            "INSERT INTO orders (order_id, user_id, product, quantity, unit_price_minor, \
             line_total_minor, currency, received_at_ms, enriched_at_ms, stored_at_ms, bucket, shard) \
             VALUES (?, 'u1', 'placeholder', 1, 1, 1, 'EUR', 1, 1, 1, 3, 's0')",
            (wanted.order_id.as_bytes().to_vec(),),
        )
        .await
        .unwrap();
    let mut admin = mysql_async::Conn::from_url(url.as_str()).await.unwrap();

    // First the writer alone: its error when its connection is killed is transient.
    let write = tokio::spawn({
        let (shard, wanted) = (shard.clone(), wanted.clone());
        async move {
            shard
                .write_batch(
                    "sink",
                    &Batch {
                        orders: vec![wanted],
                        ..Batch::default()
                    },
                )
                .await
        }
    });
    let first = blocked_insert(&mut admin, &database, &[holder.id() as u64]).await;
    admin.query_drop(format!("KILL {first}")).await.unwrap();
    let error: SinkError = write
        .await
        .unwrap()
        .expect_err("the write's connection was killed");
    assert_eq!(error.fault(), Fault::Transient, "{error}");

    // Then the worker: it retries after the kill and stores the order once the lock is gone.
    let dir = tempfile::tempdir().unwrap();
    let log = embedded_log(dir.path()).await;
    send_all(&log, std::slice::from_ref(&wanted)).await;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_sink_worker(
        log.clone(),
        shard.clone(),
        one_shard_map(),
        live_worker("kill-mariadb"),
        cancel.clone(),
        None,
    ));
    let second = blocked_insert(&mut admin, &database, &[holder.id() as u64, first]).await;
    admin.query_drop(format!("KILL {second}")).await.unwrap();
    // A new attempt blocks again: the kill was retried, not turned into a rejection.
    blocked_insert(&mut admin, &database, &[holder.id() as u64, first, second]).await;
    holder.query_drop("ROLLBACK").await.unwrap();
    wait_for_position(shard.as_ref(), 1).await;
    assert_eq!(
        shard.find("u1", wanted.order_id).await.unwrap(),
        OrderStatus::Stored {
            order: wanted.clone()
        }
    );
    let rejected: Option<i64> = admin
        .query_first("SELECT COUNT(*) FROM rejected_orders")
        .await
        .unwrap();
    assert_eq!(rejected, Some(0), "a transient failure became a rejection");
    cancel.cancel();
    worker.await.unwrap().unwrap();
    holder.disconnect().await.unwrap();
    admin.disconnect().await.unwrap();
    shard.close().await;
    drop_database(&url).await;
}

/// SQLite busy (another connection holds the write lock) is transient, and the same write
/// succeeds once the lock is released.
#[tokio::test]
async fn a_locked_sqlite_shard_is_transient_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shard0.db");
    let shard = SqliteShard::new("s0", &file);
    shard.migrate().await.unwrap();
    let batch = Batch {
        orders: vec![order("u1", "widget")],
        ..Batch::default()
    };
    let holder = rusqlite::Connection::open(&file).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let error = shard
        .write_batch("sink", &batch)
        .await
        .expect_err("the write lock is held elsewhere");
    assert_eq!(error.fault(), Fault::Transient, "{error}");
    holder.execute_batch("ROLLBACK").unwrap();
    shard.write_batch("sink", &batch).await.unwrap();
    assert!(matches!(
        shard.find("u1", batch.orders[0].order_id).await.unwrap(),
        OrderStatus::Stored { .. }
    ));
}

/// The MariaDB codes behind the faults named in the contract, and a few that must never be
/// taken for a refused row.
#[test]
fn mariadb_error_codes_are_classified() {
    use sluice_sinks::mysql::server_fault;
    for (code, state) in [
        (1406, "22001"), // data too long
        (1264, "22003"), // out of range
        (1366, "22007"), // incorrect value
        (1048, "23000"), // column cannot be null
        (4025, "23000"), // CHECK constraint failed
        (1452, "23000"), // foreign key
    ] {
        assert_eq!(server_fault(code, state), Fault::Permanent, "{code}");
    }
    for (code, state) in [
        (1205, "HY000"), // lock wait timeout
        (1213, "40001"), // deadlock
        (1290, "HY000"), // --read-only
        (1836, "HY000"), // read-only mode
        (1040, "08004"), // too many connections
        (1927, "70100"), // connection killed
        (1969, "70100"), // statement timeout
        (1021, "HY000"), // disk full
        (1053, "08S01"), // server shutdown
        (9999, "08S01"), // any connection exception
    ] {
        assert_eq!(server_fault(code, state), Fault::Transient, "{code}");
    }
    for (code, state) in [
        (1146, "42S02"), // table does not exist
        (1054, "42S22"), // unknown column
        (1045, "28000"), // access denied
        (1142, "42000"), // command denied
        (1064, "42000"), // syntax error
    ] {
        assert_eq!(server_fault(code, state), Fault::Other, "{code}");
    }
}

/// An error that is neither transient nor a refused row (here a missing table) rejects
/// nothing: the worker retries until the cause is fixed, then stores the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_rejects_nothing_and_is_retried_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shard0.db");
    let shard = Arc::new(SqliteShard::new("missing-table", &file));
    shard.migrate().await.unwrap();
    let outside = rusqlite::Connection::open(&file).unwrap();
    // The table goes missing (moved away), and later comes back, as an operator would restore
    // it: `migrate` does not recreate a table of a shard already at the latest version.
    let (remove, restore) = (
        "ALTER TABLE orders RENAME TO orders_away",
        "ALTER TABLE orders_away RENAME TO orders",
    );
    outside.execute_batch(remove).unwrap();
    let wanted = order("u1", "widget");
    let error = shard
        .write_batch(
            "sink",
            &Batch {
                orders: vec![wanted.clone()],
                ..Batch::default()
            },
        )
        .await
        .expect_err("the table is gone");
    assert_eq!(error.fault(), Fault::Other, "{error}");
    outside.execute_batch(restore).unwrap();

    let log = embedded_log(dir.path()).await;
    send_all(&log, std::slice::from_ref(&wanted)).await;
    let cancel = CancellationToken::new();
    // Remove the table again once the worker is running and has stored the first record,
    // then check nothing moves.
    let worker = tokio::spawn(run_sink_worker(
        log.clone(),
        shard.clone(),
        one_shard_map(),
        live_worker("missing-table"),
        cancel.clone(),
        None,
    ));
    wait_for_position(shard.as_ref(), 1).await;
    outside.execute_batch(remove).unwrap();
    let next = order("u1", "gadget");
    send_all(&log, std::slice::from_ref(&next)).await;
    // Give the worker time to fail a few attempts; then nothing may have been rejected or
    // moved (a broken shard must not turn orders into rejections).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!worker.is_finished());
    let rejected: i64 = outside
        .query_row("SELECT COUNT(*) FROM rejected_orders", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        rejected, 0,
        "a missing table turned an order into a rejection"
    );
    assert_eq!(
        shard.positions("sink").await.unwrap()[0].next_offset,
        1,
        "the positions moved past an unstored order"
    );
    // Fixed: the same worker stores the order.
    outside.execute_batch(restore).unwrap();
    wait_for_position(shard.as_ref(), 2).await;
    assert!(matches!(
        shard.find("u1", next.order_id).await.unwrap(),
        OrderStatus::Stored { .. }
    ));
    cancel.cancel();
    worker.await.unwrap().unwrap();
}

/// A real SQLite shard whose writes start failing (as if the process died) after a number
/// of successful ones: injects a stop in the middle of a split batch.
struct StopsAfter {
    inner: Arc<SqliteShard>,
    writes_left: std::sync::atomic::AtomicUsize,
    cancel: CancellationToken,
}

#[async_trait::async_trait]
impl ShardWriter for StopsAfter {
    async fn migrate(&self) -> Result<(), SinkError> {
        self.inner.migrate().await
    }
    async fn positions(&self, consumer: &str) -> Result<Vec<Position>, SinkError> {
        self.inner.positions(consumer).await
    }
    async fn claim(
        &self,
        consumer: &str,
        owner: &str,
        partitions: &[sluice_core::log::TopicPartition],
    ) -> Result<Vec<sluice_sinks::Claimed>, SinkError> {
        self.inner.claim(consumer, owner, partitions).await
    }
    async fn write_batch(&self, consumer: &str, batch: &Batch) -> Result<(), SinkError> {
        use std::sync::atomic::Ordering;
        if self
            .writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            self.cancel.cancel();
            return Err(SinkError::Timeout {
                shard: "s0".into(),
                after: Duration::ZERO,
            });
        }
        self.inner.write_batch(consumer, batch).await
    }
    async fn find(&self, user_id: &str, order_id: Uuid) -> Result<OrderStatus, SinkError> {
        self.inner.find(user_id, order_id).await
    }
}

/// Stopped in the middle of splitting a refused batch, the worker has stored some good rows
/// but no position and no rejection; started again, it stores every good row once, records
/// the refused ones and moves the positions once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_in_the_middle_of_a_split_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shard0.db");
    let shard = Arc::new(SqliteShard::new("split-stop", &file));
    shard.migrate().await.unwrap();
    // As in the SQLite refusal test: this database file refuses long products.
    let outside = rusqlite::Connection::open(&file).unwrap();
    outside
        .execute_batch(
            "CREATE TRIGGER refuse_long_products BEFORE INSERT ON orders \
             WHEN length(NEW.product) > 255 \
             BEGIN SELECT RAISE(ABORT, 'product longer than 255 characters'); END",
        )
        .unwrap();
    let log = embedded_log(dir.path()).await;
    let mut orders: Vec<EnrichedOrder> = (0..40).map(|_| order("u1", "widget")).collect();
    orders[5].product = too_long_product();
    orders[31].product = too_long_product();
    send_all(&log, &orders).await;
    let count = |table: &str| -> i64 {
        outside
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap()
    };

    // The whole batch (refused), its first half (refused), then the first quarter (refused:
    // it holds row 5), then its first eighth (accepted): four writes, then the stop.
    let cancel = CancellationToken::new();
    let stopping = Arc::new(StopsAfter {
        inner: shard.clone(),
        writes_left: 4.into(),
        cancel: cancel.clone(),
    });
    let stopped = run_sink_worker(
        log.clone(),
        stopping,
        one_shard_map(),
        live_worker("split-stop"),
        cancel,
        None,
    )
    .await;
    assert!(stopped.is_err(), "the worker was stopped mid-split");
    assert!(count("orders") > 0, "no piece was stored before the stop");
    assert!(
        count("orders") < 38,
        "every piece was stored before the stop"
    );
    assert_eq!(count("rejected_orders"), 0);
    assert!(
        shard.positions("sink").await.unwrap().is_empty(),
        "positions moved before the batch was done"
    );

    // Started again: it reads the same records and finishes the job.
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_sink_worker(
        log.clone(),
        shard.clone(),
        one_shard_map(),
        live_worker("split-stop"),
        cancel.clone(),
        None,
    ));
    wait_for_position(shard.as_ref(), 40).await;
    cancel.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(count("orders"), 38);
    assert_eq!(count("rejected_orders"), 2);
    for (index, order) in orders.iter().enumerate() {
        let status = shard.find("u1", order.order_id).await.unwrap();
        if index == 5 || index == 31 {
            assert!(matches!(status, OrderStatus::Rejected { .. }), "{status:?}");
        } else {
            assert_eq!(
                status,
                OrderStatus::Stored {
                    order: order.clone()
                }
            );
        }
    }
}
