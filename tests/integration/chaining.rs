//! Fused stages (operator chaining) on both backends: validate → enrich → route run as one
//! task that reads the raw orders once and writes only the shard topics, the dead letters
//! and the intermediate topics a stage asks for (`write_output`). A dead letter from a fused
//! stage names that stage and the raw record it came from, as a separate stage's would.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use sluice::pipeline::Parts;
use sluice_core::log::Record;
use sluice_core::order::{
    HEADER_DLQ_REASON, HEADER_DLQ_SOURCE_OFFSET, HEADER_DLQ_SOURCE_PARTITION,
    HEADER_DLQ_SOURCE_TOPIC, HEADER_DLQ_STAGE, HEADER_ORDER_ID, HEADER_TRACEPARENT,
};
use sluice_processors::KindConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_fused_stages_write_only_what_they_must() {
    fused_stages_write_only_what_they_must(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_fused_stages_write_only_what_they_must() {
    fused_stages_write_only_what_they_must(Backend::Embedded).await;
}

async fn fused_stages_write_only_what_they_must(backend: Backend) {
    let users = users_covering_shards(1);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(backend, "chain", &user_refs, |t| {
        // validate lets unknown products through, so enrich (fused behind it) rejects them.
        if let KindConfig::Validate(validate) = &mut t.stages[0].kind {
            validate.rules.require_known_product = false;
        }
        // enrich keeps writing its output topic; validate does not.
        t.stages[1].write_output = true;
    });
    let topology = test.topology();
    let chains: Vec<String> = topology
        .chains()
        .unwrap()
        .iter()
        .map(|c| c.describe())
        .collect();
    assert_eq!(chains, ["validate → enrich → route"]);
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let mut tokens = HashMap::new();
    for user in &users {
        tokens.insert(
            user.clone(),
            login(&client, &pipeline.base_login, user).await,
        );
    }

    // 200 orders: every 10th for a product the catalog lacks (enrich rejects it), every 10th
    // (another one) for quantity 0 (validate rejects it).
    let total = 200;
    let requests = (0..total).map(|n| {
        let user = users[n % users.len()].clone();
        let token = tokens[&user].clone();
        let (product, quantity) = match n % 10 {
            3 => ("boat", 1),
            7 => ("widget", 0),
            _ => ("gadget", 2),
        };
        let (client, url) = (client.clone(), format!("{}/order", pipeline.base_order));
        async move {
            let body =
                serde_json::json!({ "userId": user, "product": product, "quantity": quantity });
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            let json: serde_json::Value = response.json().await.unwrap();
            (
                json["orderId"].as_str().unwrap().to_string(),
                product,
                quantity,
            )
        }
    });
    let sent: Vec<(String, &str, i64)> = futures::stream::iter(requests)
        .buffer_unordered(16)
        .collect()
        .await;
    let good: Vec<String> = sent
        .iter()
        .filter(|(_, product, quantity)| *product == "gadget" && *quantity > 0)
        .map(|(id, _, _)| id.clone())
        .collect();
    assert_eq!(good.len(), total * 8 / 10);
    let stored = assert_stored_exactly_once(&test, &good, Duration::from_secs(120)).await;
    assert_eq!(stored.len(), good.len(), "only the good orders are stored");

    // The dead letters: one per rejected order, each naming the stage that rejected it and
    // the raw record it was read from, with its order id and a trace context.
    let log = pipeline.log.as_ref();
    let dlq = format!("{}.orders.dlq", test.id);
    let raw_topic = topology.ingress.orders_topic.clone();
    eventually(Duration::from_secs(60), "every dead letter", || async {
        read_topic(log, &dlq, &unique("dlq-check")).await.len() >= total / 5
    })
    .await;
    let dead = read_topic(log, &dlq, &unique("dlq-check")).await;
    assert_eq!(dead.len(), total / 5);
    let raw: HashMap<(i32, i64), Record> = read_topic(log, &raw_topic, &unique("raw-check"))
        .await
        .into_iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    for letter in &dead {
        let header = |name: &str| letter.header(name).unwrap_or_default().to_string();
        let id = header(HEADER_ORDER_ID);
        let (_, product, _) = sent.iter().find(|(sent_id, _, _)| *sent_id == id).unwrap();
        let (stage, reason) = match *product {
            "boat" => ("enrich", "product \"boat\" is not in the catalog"),
            _ => ("validate", "quantity 0 is outside 1..=1000"),
        };
        assert_eq!(header(HEADER_DLQ_STAGE), stage, "{letter:?}");
        assert_eq!(header(HEADER_DLQ_REASON), reason, "{letter:?}");
        assert_eq!(header(HEADER_DLQ_SOURCE_TOPIC), raw_topic, "{letter:?}");
        let position: (i32, i64) = (
            header(HEADER_DLQ_SOURCE_PARTITION).parse().unwrap(),
            header(HEADER_DLQ_SOURCE_OFFSET).parse().unwrap(),
        );
        let source = &raw[&position];
        assert_eq!(
            letter.payload, source.payload,
            "a dead letter carries the order as the rejecting stage got it"
        );
        assert!(String::from_utf8_lossy(&source.payload).contains(&id));
        assert!(letter.header(HEADER_TRACEPARENT).is_some(), "{letter:?}");
    }

    // Nothing was written to orders.valid (validate hands its orders over); enrich, asked
    // to, wrote one record per order it enriched.
    let valid = format!("{}.orders.valid", test.id);
    let enriched = format!("{}.orders.enriched", test.id);
    assert_eq!(topic_records(log, &valid).await, 0);
    assert_eq!(topic_records(log, &enriched).await, good.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_orders_left_between_stages_are_processed_once_they_are_fused() {
    orders_left_between_stages_are_processed_once_they_are_fused(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_orders_left_between_stages_are_processed_once_they_are_fused() {
    orders_left_between_stages_are_processed_once_they_are_fused(Backend::Embedded).await;
}

/// An upgrade from separate stages: enrich's consumer group has read part of orders.valid
/// and the rest waits there. Once enrich runs fused behind validate it reads orders.valid no
/// more, so the pipeline processes what is left at start-up, and every such order is stored.
async fn orders_left_between_stages_are_processed_once_they_are_fused(backend: Backend) {
    use sluice_core::log::{assign_all, OutRecord, Position, StartFrom};
    use sluice_core::order::RawOrder;

    let users = users_covering_shards(1);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(backend, "leftover", &user_refs, |_| {});
    let topology = test.topology();
    let valid = format!("{}.orders.valid", test.id);
    let group = format!("{}.enrich", topology.log.consumer_group_prefix);

    // What the separate stages left: 60 valid orders, of which enrich's group committed
    // the first record of each partition it had read (the records before are "done").
    let log = sluice::pipeline::open_log(&topology).unwrap();
    sluice_core::log::ensure_declared_topics(log.as_ref(), &topology.topics)
        .await
        .unwrap();
    let mut left = Vec::new();
    for n in 0..60 {
        let user = &users[n % users.len()];
        let order = RawOrder {
            order_id: uuid::Uuid::now_v7(),
            user_id: user.clone(),
            product: "gadget".into(),
            quantity: 1,
            received_at_ms: sluice_core::order::now_ms(),
        };
        log.send(
            &valid,
            OutRecord::new(user.as_bytes(), serde_json::to_vec(&order).unwrap()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        left.push(order.order_id.to_string());
    }
    let assignments = assign_all(
        log.as_ref(),
        std::slice::from_ref(&valid),
        StartFrom::Beginning,
    )
    .await
    .unwrap();
    let partitions = assignments.len();
    let mut consumer = log.consumer(&group).await.unwrap();
    consumer.assign(assignments).await.unwrap();
    // Read one record per partition and commit past it: those orders count as enriched.
    let mut done = std::collections::HashSet::new();
    let mut committed = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while committed.len() < partitions && tokio::time::Instant::now() < deadline {
        for record in consumer
            .poll(100, Duration::from_millis(300))
            .await
            .unwrap()
        {
            if let std::collections::hash_map::Entry::Vacant(entry) =
                committed.entry(record.partition)
            {
                entry.insert(record.next_position());
                let order: RawOrder = serde_json::from_slice(&record.payload).unwrap();
                done.insert(order.order_id.to_string());
            }
        }
    }
    let positions: Vec<Position> = committed.into_values().collect();
    consumer.commit(&positions).await.unwrap();
    consumer.close().await;
    drop(log);

    // The fused pipeline starts: the orders left in orders.valid reach the shards, once.
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let expected: Vec<String> = left
        .iter()
        .filter(|id| !done.contains(*id))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 60 - positions.len());
    let stored = assert_stored_exactly_once(&test, &expected, Duration::from_secs(120)).await;
    assert_eq!(
        stored.len(),
        expected.len(),
        "only the orders left over are stored"
    );
    drop(pipeline);
}
