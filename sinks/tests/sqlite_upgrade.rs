//! A SQLite shard created before shard schemas were versioned (no `sluice_schema` table, no
//! `rejected_by_user` index) is upgraded in place on start and keeps every row.

use rusqlite::{params, Connection};
use sluice_core::log::Position;
use sluice_core::lookup::OrderStatus;
use sluice_sinks::sqlite::SqliteShard;
use sluice_sinks::ShardWriter;
use uuid::Uuid;

/// The schema SQLite shards were created with before they were versioned, verbatim.
const UNVERSIONED_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id BLOB NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    product TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price_minor INTEGER NOT NULL,
    line_total_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    enriched_at_ms INTEGER NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    shard TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, order_id);
CREATE TABLE IF NOT EXISTS rejected_orders (
    order_id BLOB NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sluice_offsets (
    consumer TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, topic, partition_id)
) WITHOUT ROWID;
";

/// `(version, applied_at_ms)` rows of the shard's migration table.
fn applied(path: &std::path::Path) -> Vec<(u32, i64)> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT version, applied_at_ms FROM sluice_schema ORDER BY version")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn has_index(path: &std::path::Path, name: &str) -> bool {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?",
            [name],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
        == 1
}

#[tokio::test]
async fn an_unversioned_sqlite_shard_is_upgraded_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard0.db");
    let (stored, rejected) = (Uuid::now_v7(), Uuid::now_v7());
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(UNVERSIONED_SCHEMA).unwrap();
        old.execute(
            "INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            params![
                stored.as_bytes().as_slice(),
                "alice",
                "widget",
                3,
                999,
                2997,
                "EUR",
                10,
                20,
                30,
                7,
                "s0"
            ],
        )
        .unwrap();
        old.execute(
            "INSERT INTO rejected_orders VALUES (?,?,?,?,?)",
            params![
                rejected.as_bytes().as_slice(),
                "alice",
                "validate",
                "unknown product",
                40
            ],
        )
        .unwrap();
        old.execute(
            "INSERT INTO sluice_offsets VALUES (?,?,?,?,?)",
            params!["sink", "orders.shard.0", 0, 42, 50],
        )
        .unwrap();
    }
    assert!(!has_index(&path, "rejected_by_user"));

    let shard = SqliteShard::new("s0", &path);
    shard.migrate().await.unwrap();
    let versions: Vec<u32> = applied(&path).into_iter().map(|(v, _)| v).collect();
    assert_eq!(
        versions,
        (1..=sluice_sinks::migrations::latest_version()).collect::<Vec<_>>(),
        "every migration is recorded, in order"
    );
    assert!(
        has_index(&path, "rejected_by_user"),
        "the drifted index is added"
    );
    assert!(has_index(&path, "orders_by_user"));

    // Every row is still there and reads back.
    match shard.find("alice", stored).await.unwrap() {
        OrderStatus::Stored { order } => {
            assert_eq!(
                (
                    order.product.as_str(),
                    order.quantity,
                    order.line_total_minor
                ),
                ("widget", 3, 2997)
            );
        }
        other => panic!("the stored order was lost: {other:?}"),
    }
    assert_eq!(
        shard.find("alice", rejected).await.unwrap(),
        OrderStatus::Rejected {
            stage: "validate".into(),
            reason: "unknown product".into()
        }
    );
    assert_eq!(
        shard.positions("sink").await.unwrap(),
        vec![Position {
            topic: "orders.shard.0".into(),
            partition: 0,
            next_offset: 42
        }]
    );

    // A restart migrates again: nothing is applied twice.
    let before = applied(&path);
    drop(shard);
    let restarted = SqliteShard::new("s0", &path);
    restarted.migrate().await.unwrap();
    restarted.migrate().await.unwrap();
    assert_eq!(applied(&path), before);
    assert_eq!(restarted.positions("sink").await.unwrap().len(), 1);
}
