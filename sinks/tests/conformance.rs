//! One conformance suite for every shard backend: real MariaDB (from `scripts/infra up`,
//! `SLUICE_MYSQL_SHARDS`) and SQLite.

use std::collections::BTreeSet;
use std::sync::Arc;

use mysql_async::prelude::Queryable;

use sluice_core::log::{Position, TopicPartition};
use sluice_core::lookup::OrderStatus;
use sluice_core::order::EnrichedOrder;
use sluice_sinks::mysql::MysqlShard;
use sluice_sinks::sqlite::SqliteShard;
use sluice_sinks::{Batch, Rejection, ShardWriter, SinkError};
use uuid::Uuid;

fn order(user: &str, quantity: i64) -> EnrichedOrder {
    EnrichedOrder {
        order_id: Uuid::now_v7(),
        user_id: user.into(),
        product: "widget".into(),
        quantity,
        unit_price_minor: 999,
        line_total_minor: 999 * quantity,
        currency: "EUR".into(),
        received_at_ms: 10,
        enriched_at_ms: 20,
        bucket: 7,
        shard: "s0".into(),
    }
}

fn position(topic: &str, partition: i32, next_offset: i64) -> Position {
    Position {
        topic: topic.into(),
        partition,
        next_offset,
    }
}

async fn count_orders(shard: &dyn ShardWriter, batch: &Batch) -> usize {
    let mut found = 0;
    for order in &batch.orders {
        if matches!(
            shard.find(&order.user_id, order.order_id).await.unwrap(),
            OrderStatus::Stored { .. }
        ) {
            found += 1;
        }
    }
    found
}

/// The contract every backend must keep.
async fn conformance(shard: Arc<dyn ShardWriter>) {
    // Before its sink worker created it, a shard answers lookups: nothing is stored there.
    assert_eq!(
        shard.find("user1", Uuid::now_v7()).await.unwrap(),
        OrderStatus::Unknown,
        "a shard not migrated yet must report nothing stored, not fail the lookup"
    );
    shard.migrate().await.unwrap();
    shard.migrate().await.expect("migrate must be idempotent");
    assert!(shard.positions("sink").await.unwrap().is_empty());

    // Rows and positions go in together.
    let first = Batch {
        orders: (0..1200)
            .map(|n| order(&format!("user{}", n % 7), n % 5 + 1))
            .collect(),
        rejections: vec![Rejection {
            order_id: Uuid::now_v7(),
            user_id: "user1".into(),
            stage: "validate".into(),
            reason: "quantity 0 is outside 1..=1000".into(),
            rejected_at_ms: 30,
        }],
        positions: vec![
            position("orders.shard.0", 0, 600),
            position("orders.shard.0", 1, 601),
            position("orders.dlq", 2, 1),
        ],
        epochs: Vec::new(),
    };
    shard.write_batch("sink", &first).await.unwrap();
    assert_eq!(count_orders(shard.as_ref(), &first).await, 1200);
    let mut stored = shard.positions("sink").await.unwrap();
    stored.sort();
    let mut expected = first.positions.clone();
    expected.sort();
    assert_eq!(stored, expected);

    // The stored row reads back field for field.
    let sample = &first.orders[17];
    match shard.find(&sample.user_id, sample.order_id).await.unwrap() {
        OrderStatus::Stored { order } => assert_eq!(&order, sample),
        other => panic!("expected the stored row, got {other:?}"),
    }
    // Only its own user sees it.
    assert_eq!(
        shard.find("someone-else", sample.order_id).await.unwrap(),
        OrderStatus::Unknown
    );
    // Rejections are reported with stage and reason.
    let rejected = &first.rejections[0];
    assert_eq!(
        shard.find("user1", rejected.order_id).await.unwrap(),
        OrderStatus::Rejected {
            stage: "validate".into(),
            reason: "quantity 0 is outside 1..=1000".into()
        }
    );
    assert_eq!(
        shard.find("user1", Uuid::now_v7()).await.unwrap(),
        OrderStatus::Unknown
    );

    // Writing the same rows again (a replay) changes nothing but the positions.
    let mut replay = first.clone();
    replay.orders[0].quantity = 99;
    replay.positions = vec![position("orders.shard.0", 0, 700)];
    shard.write_batch("sink", &replay).await.unwrap();
    match shard
        .find(&first.orders[0].user_id, first.orders[0].order_id)
        .await
        .unwrap()
    {
        OrderStatus::Stored { order } => assert_eq!(
            order.quantity, first.orders[0].quantity,
            "a replayed row overwrote the stored one"
        ),
        other => panic!("{other:?}"),
    }
    let stored = shard.positions("sink").await.unwrap();
    assert!(stored.contains(&position("orders.shard.0", 0, 700)));
    assert!(stored.contains(&position("orders.shard.0", 1, 601)));

    // A later enrichment (a replay of `enrich` after a catalog change) reprices the row.
    let mut repriced = first.orders[1].clone();
    repriced.unit_price_minor = 1234;
    repriced.line_total_minor = 1234 * repriced.quantity;
    repriced.enriched_at_ms += 1000;
    shard
        .write_batch(
            "sink",
            &Batch {
                orders: vec![repriced.clone()],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    match shard
        .find(&repriced.user_id, repriced.order_id)
        .await
        .unwrap()
    {
        OrderStatus::Stored { order } => {
            assert_eq!(order, repriced, "the later enrichment must win")
        }
        other => panic!("{other:?}"),
    }
    // ...but an older one does not.
    let mut stale = repriced.clone();
    stale.unit_price_minor = 1;
    stale.enriched_at_ms -= 500;
    shard
        .write_batch(
            "sink",
            &Batch {
                orders: vec![stale],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    match shard
        .find(&repriced.user_id, repriced.order_id)
        .await
        .unwrap()
    {
        OrderStatus::Stored { order } => assert_eq!(
            order.unit_price_minor, 1234,
            "an older enrichment overwrote a newer one"
        ),
        other => panic!("{other:?}"),
    }

    // Positions are kept per consumer: a replay's cursor does not move the live one.
    shard
        .write_batch(
            "replay-a",
            &Batch {
                positions: vec![position("orders.enriched", 0, 5)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        shard.positions("replay-a").await.unwrap(),
        vec![position("orders.enriched", 0, 5)]
    );
    assert_eq!(shard.positions("sink").await.unwrap().len(), 3);

    // An empty batch is a no-op.
    shard.write_batch("sink", &Batch::default()).await.unwrap();
    claims_fence_the_previous_owner(shard.as_ref()).await;
    shard.close().await;
}

/// A partition claimed by a second process cannot be written by the first any more: its
/// stale batch is refused whole (no row, no position), while the new owner's is stored, and
/// a claim reads the position stored so far.
async fn claims_fence_the_previous_owner(shard: &dyn ShardWriter) {
    let partition = |n: i32| TopicPartition {
        topic: "orders.shard.fenced".into(),
        partition: n,
    };
    let first = shard
        .claim("sink", "host-a:1", &[partition(0), partition(1)])
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|c| c.next_offset.is_none()), "{first:?}");
    let epoch_a = first[0].epoch;
    let batch = |epoch: i64, next_offset: i64| Batch {
        orders: vec![order("fenced-user", 1)],
        rejections: Vec::new(),
        positions: vec![position("orders.shard.fenced", 0, next_offset)],
        epochs: vec![(partition(0), epoch)],
    };
    let stored_by_a = batch(epoch_a, 10);
    shard.write_batch("sink", &stored_by_a).await.unwrap();

    // Process B takes partition 0 over: it reads A's position.
    let taken = shard
        .claim("sink", "host-b:2", &[partition(0)])
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "only the partition claimed: {taken:?}");
    assert_eq!(taken[0].next_offset, Some(10));
    assert!(taken[0].epoch > epoch_a);

    // A's late batch is refused, and stores nothing.
    let stale = batch(epoch_a, 20);
    match shard.write_batch("sink", &stale).await {
        Err(SinkError::Fenced { partitions, .. }) => assert_eq!(partitions, vec![partition(0)]),
        other => panic!("a stale owner's batch must be fenced, got {other:?}"),
    }
    assert_eq!(
        count_orders(shard, &stale).await,
        0,
        "the fenced batch's row"
    );
    let stored = |positions: Vec<Position>| {
        positions
            .into_iter()
            .find(|p| p.topic == "orders.shard.fenced" && p.partition == 0)
            .map(|p| p.next_offset)
    };
    assert_eq!(stored(shard.positions("sink").await.unwrap()), Some(10));

    // B writes under its epoch; A still owns partition 1 and can write it.
    shard
        .write_batch("sink", &batch(taken[0].epoch, 30))
        .await
        .unwrap();
    assert_eq!(stored(shard.positions("sink").await.unwrap()), Some(30));
    let epoch_a1 = first[1].epoch;
    shard
        .write_batch(
            "sink",
            &Batch {
                positions: vec![position("orders.shard.fenced", 1, 7)],
                epochs: vec![(partition(1), epoch_a1)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    // A partition nobody claimed under that name is fenced too.
    let unclaimed = Batch {
        positions: vec![position("orders.shard.fenced", 1, 8)],
        epochs: vec![(partition(1), epoch_a1)],
        ..Batch::default()
    };
    assert!(matches!(
        shard.write_batch("replay-x", &unclaimed).await,
        Err(SinkError::Fenced { .. })
    ));
}

/// A shard's schema as the backends can compare it: the highest applied migration, and each
/// secondary index as `(table, index, columns in order)`.
#[derive(Debug, PartialEq, Eq)]
struct Schema {
    version: u32,
    indexes: BTreeSet<(String, String, Vec<String>)>,
}

/// The schema every backend must end at.
fn expected_schema() -> Schema {
    let index = |table: &str, name: &str| {
        (
            table.to_string(),
            name.to_string(),
            vec!["user_id".to_string(), "order_id".to_string()],
        )
    };
    Schema {
        version: sluice_sinks::migrations::latest_version(),
        indexes: [
            index("orders", "orders_by_user"),
            index("rejected_orders", "rejected_by_user"),
        ]
        .into(),
    }
}

/// The schema of the SQLite shard file at `path`.
fn sqlite_schema(path: &std::path::Path) -> Schema {
    let conn = rusqlite::Connection::open(path).unwrap();
    let version: u32 = conn
        .query_row("SELECT MAX(version) FROM sluice_schema", [], |row| {
            row.get(0)
        })
        .unwrap();
    let mut indexes = BTreeSet::new();
    let mut list = conn
        .prepare(
            "SELECT m.tbl_name, m.name FROM sqlite_master m WHERE m.type = 'index' \
             AND m.sql IS NOT NULL ORDER BY m.name",
        )
        .unwrap();
    let named: Vec<(String, String)> = list
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (table, name) in named {
        let mut info = conn
            .prepare(&format!(
                "SELECT name FROM pragma_index_info('{name}') ORDER BY seqno"
            ))
            .unwrap();
        let columns: Vec<String> = info
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        indexes.insert((table, name, columns));
    }
    Schema { version, indexes }
}

/// The schema of the MySQL shard behind `shard`.
async fn mysql_schema(shard: &MysqlShard) -> Schema {
    let mut conn = shard.pool().get_conn().await.unwrap();
    let version: u32 = conn
        .query_first("SELECT MAX(version) FROM sluice_schema")
        .await
        .unwrap()
        .unwrap();
    let rows: Vec<(String, String, String)> = conn
        .query(
            "SELECT TABLE_NAME, INDEX_NAME, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) \
             FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME <> 'PRIMARY' \
             GROUP BY TABLE_NAME, INDEX_NAME",
        )
        .await
        .unwrap();
    let indexes = rows
        .into_iter()
        .map(|(table, name, columns)| {
            (
                table,
                name,
                columns.split(',').map(str::to_string).collect(),
            )
        })
        .collect();
    Schema { version, indexes }
}

/// A fresh MySQL shard in a database of its own on the first test server, and that database.
fn fresh_mysql_shard(prefix: &str) -> (MysqlShard, String, String) {
    let servers = std::env::var("SLUICE_MYSQL_SHARDS")
        .expect("the MySQL conformance test needs MariaDB: run `make test` (or `bash scripts/infra up` and eval its env)");
    let server = servers.split(',').next().unwrap().trim_end_matches('/');
    let id = Uuid::now_v7().simple().to_string();
    let database = format!("{prefix}_{}", &id[id.len() - 10..]);
    let url = format!("{server}/{database}");
    (
        MysqlShard::new("s0", &url).unwrap(),
        server.to_string(),
        database,
    )
}

/// Removes a test database, so repeated runs do not fill the shard's disk.
async fn drop_database(server: &str, database: &str) {
    let mut conn = mysql_async::Conn::from_url(server).await.unwrap();
    conn.query_drop(format!("DROP DATABASE `{database}`"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test]
async fn sqlite_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let shard = SqliteShard::new("s0", &dir.path().join("nested/shard0.db"));
    conformance(Arc::new(shard)).await;
    // Survives a reopen: the file holds everything.
    let reopened = SqliteShard::new("s0", &dir.path().join("nested/shard0.db"));
    reopened.migrate().await.unwrap();
    assert_eq!(
        reopened.positions("sink").await.unwrap().len(),
        5,
        "the three positions of the first batch and the two of the fencing check"
    );
    assert_eq!(
        sqlite_schema(&dir.path().join("nested/shard0.db")),
        expected_schema()
    );
}

#[tokio::test]
async fn mysql_backend_conforms() {
    let (shard, server, database) = fresh_mysql_shard("t_conf");
    conformance(Arc::new(shard)).await;
    // `conformance` closed the shard's connections: look at its schema through a new one.
    let reopened = MysqlShard::new("s0", &format!("{server}/{database}")).unwrap();
    assert_eq!(mysql_schema(&reopened).await, expected_schema());
    reopened.close().await;
    // Passed: remove the test database so repeated runs do not fill the shard's disk.
    drop_database(&server, &database).await;
}

#[tokio::test]
async fn both_backends_end_at_the_same_schema_version_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteShard::new("s0", &dir.path().join("shard0.db"));
    sqlite.migrate().await.unwrap();
    let (mysql, server, database) = fresh_mysql_shard("t_schema");
    mysql.migrate().await.unwrap();
    let (on_sqlite, on_mysql) = (sqlite_schema(sqlite.path()), mysql_schema(&mysql).await);
    mysql.close().await;
    drop_database(&server, &database).await;
    assert_eq!(on_sqlite, on_mysql, "the backends' schemas drifted");
    assert_eq!(on_sqlite, expected_schema());
}

#[tokio::test]
async fn mysql_lookups_in_a_database_without_tables_find_nothing() {
    let (shard, server, database) = fresh_mysql_shard("t_empty");
    let mut conn = mysql_async::Conn::from_url(server.as_str()).await.unwrap();
    conn.query_drop(format!("CREATE DATABASE `{database}`"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    assert_eq!(
        shard.find("user1", Uuid::now_v7()).await.unwrap(),
        OrderStatus::Unknown,
        "a database whose tables are not created yet holds no order"
    );
    shard.close().await;
    drop_database(&server, &database).await;
}

#[tokio::test]
async fn mysql_url_without_database_is_refused() {
    let error = MysqlShard::new("s0", "mysql://root@127.0.0.1:1")
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("must name a database"),
        "{error}"
    );
}

/// A sink's connections go back to the pool as they are: a reset would drop the server's
/// prepared statements, and every batch would prepare its 500-row INSERT again. The session
/// keeps the setup run when the connection was made; a full 500-row INSERT is prepared once,
/// and an INSERT of any other row count is closed after its batch (so the cache holds no
/// statement per batch size).
#[tokio::test]
async fn mysql_connections_keep_their_full_prepared_statements_between_batches() {
    let (_, server, database) = fresh_mysql_shard("t_stmt");
    // One connection, so its session counters see every statement.
    let shard =
        MysqlShard::new("s0", &format!("{server}/{database}?pool_min=1&pool_max=1")).unwrap();
    shard.migrate().await.unwrap();
    let mut next_offset = 0;
    let mut batch = |rows: usize| {
        next_offset += rows as i64;
        Batch {
            orders: (0..rows).map(|_| order("user1", 1)).collect(),
            positions: vec![position("orders.shard.0", 0, next_offset)],
            ..Batch::default()
        }
    };
    // The statements prepared and closed on the connection so far.
    async fn statements(shard: &MysqlShard) -> (u64, u64) {
        let mut conn = shard.pool().get_conn().await.unwrap();
        let session: Option<i64> = conn.query_first("SELECT @sluice_session").await.unwrap();
        assert_eq!(session, Some(1), "the connection lost its setup");
        let rows: Vec<(String, u64)> = conn
            .query(
                "SHOW SESSION STATUS WHERE Variable_name IN ('Com_stmt_prepare', 'Com_stmt_close')",
            )
            .await
            .unwrap();
        let count = |name: &str| rows.iter().find(|(n, _)| n == name).unwrap().1;
        (count("Com_stmt_prepare"), count("Com_stmt_close"))
    }
    let (migrated, _) = statements(&shard).await;

    for _ in 0..5 {
        shard.write_batch("sink", &batch(1000)).await.unwrap();
    }
    let reset = shard
        .pool()
        .metrics()
        .resetting_connection
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        reset, 0,
        "connections were reset on their way back to the pool"
    );
    let (prepared, closed) = statements(&shard).await;
    assert_eq!(
        (prepared - migrated, closed),
        (2, 0),
        "5 batches of two full INSERTs each: the 500-row INSERT and the positions upsert are \
         prepared once, not once per batch"
    );

    // 700 rows: a full INSERT, still prepared, and a 200-row one prepared and closed each time.
    for _ in 0..3 {
        shard.write_batch("sink", &batch(700)).await.unwrap();
    }
    let (prepared_after, closed_after) = statements(&shard).await;
    assert_eq!(
        (prepared_after - prepared, closed_after),
        (3, 3),
        "each 200-row INSERT is prepared for its batch and closed after it, and only it"
    );
    assert_eq!(
        shard.positions("sink").await.unwrap(),
        vec![position("orders.shard.0", 0, 7100)]
    );
    shard.close().await;
    drop_database(&server, &database).await;
}
