//! A repeated order id on every shard backend (real MariaDB from `scripts/infra up`, and
//! SQLite): a keyed order's id is derived from the user and the `Idempotency-Key`, so a retry
//! that the ingress no longer remembers appends the same id again, possibly with another body.
//! The shard stores one row, keeps the first body, and still takes a repricing replay of it.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use sluice_core::lookup::OrderStatus;
use sluice_core::order::EnrichedOrder;
use sluice_sinks::mysql::MysqlShard;
use sluice_sinks::sqlite::SqliteShard;
use sluice_sinks::{Batch, ShardWriter};
use uuid::Uuid;

fn order(order_id: Uuid, product: &str, quantity: i64, enriched_at_ms: i64) -> EnrichedOrder {
    EnrichedOrder {
        order_id,
        user_id: "alice".into(),
        product: product.into(),
        quantity,
        unit_price_minor: 999,
        line_total_minor: 999 * quantity,
        currency: "EUR".into(),
        received_at_ms: 10,
        enriched_at_ms,
        bucket: 7,
        shard: "s0".into(),
    }
}

async fn write(shard: &dyn ShardWriter, order: &EnrichedOrder) {
    shard
        .write_batch(
            "sink",
            &Batch {
                orders: vec![order.clone()],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
}

async fn stored(shard: &dyn ShardWriter, user: &str, order_id: Uuid) -> EnrichedOrder {
    match shard.find(user, order_id).await.unwrap() {
        OrderStatus::Stored { order } => order,
        other => panic!("expected a stored order, got {other:?}"),
    }
}

async fn repeated_order_ids(shard: Arc<dyn ShardWriter>) {
    shard.migrate().await.unwrap();
    // A name-based (v8) id, as the ingress derives for a keyed order.
    let id = uuid::Builder::from_custom_bytes(*Uuid::now_v7().as_bytes()).into_uuid();
    let first = order(id, "widget", 2, 20);
    write(shard.as_ref(), &first).await;

    // The same id with another body, enriched later (a retry after a restart that changed the
    // order): nothing changes, not even the prices.
    let mut other_body = order(id, "gadget", 5, 40);
    other_body.unit_price_minor = 500;
    other_body.line_total_minor = 2500;
    write(shard.as_ref(), &other_body).await;
    let mut other_quantity = order(id, "widget", 3, 45);
    other_quantity.line_total_minor = 999 * 3;
    write(shard.as_ref(), &other_quantity).await;
    // Products differing only in letter case are different products.
    write(shard.as_ref(), &order(id, "WIDGET", 2, 46)).await;
    assert_eq!(
        stored(shard.as_ref(), "alice", id).await,
        first,
        "a repeat with another body changed the stored order"
    );
    // Another user's order with the same id changes nothing either.
    let mut other_user = order(id, "widget", 2, 50);
    other_user.user_id = "mallory".into();
    other_user.unit_price_minor = 1;
    write(shard.as_ref(), &other_user).await;
    assert_eq!(stored(shard.as_ref(), "alice", id).await, first);
    assert_eq!(
        shard.find("mallory", id).await.unwrap(),
        OrderStatus::Unknown
    );

    // A repricing replay of the first body (enriched later than it, though earlier than the
    // refused repeats) still reprices it.
    let mut repriced = order(id, "widget", 2, 30);
    repriced.unit_price_minor = 1234;
    repriced.line_total_minor = 2468;
    write(shard.as_ref(), &repriced).await;
    assert_eq!(stored(shard.as_ref(), "alice", id).await, repriced);
    // And an exact repeat (a replayed record) changes nothing.
    write(shard.as_ref(), &first).await;
    assert_eq!(stored(shard.as_ref(), "alice", id).await, repriced);
    shard.close().await;
}

#[tokio::test]
async fn sqlite_keeps_the_first_body_of_a_repeated_order_id() {
    let dir = tempfile::tempdir().unwrap();
    let shard = SqliteShard::new("s0", &dir.path().join("shard0.db"));
    repeated_order_ids(Arc::new(shard)).await;
}

#[tokio::test]
async fn mysql_keeps_the_first_body_of_a_repeated_order_id() {
    let servers = std::env::var("SLUICE_MYSQL_SHARDS").expect(
        "this test needs MariaDB: run `make test` (or `bash scripts/infra up` and eval its env)",
    );
    let server = servers.split(',').next().unwrap().trim_end_matches('/');
    let id = Uuid::now_v7().simple().to_string();
    let url = format!("{server}/t_repeat_{}", &id[id.len() - 10..]);
    repeated_order_ids(Arc::new(MysqlShard::new("s0", &url).unwrap())).await;
    let mut conn = mysql_async::Conn::from_url(server).await.unwrap();
    let database = url.rsplit('/').next().unwrap();
    conn.query_drop(format!("DROP DATABASE `{database}`"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}
