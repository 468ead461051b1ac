//! An order its shard refuses for good never stalls the shard: an order for a product the
//! catalog sells but whose name is longer than the shard allows ends up `rejected` by stage
//! `sink` with the database's reason, and the orders around it, and those that come after it,
//! are stored. On MariaDB the limit is the `product VARCHAR(255)` column (strict mode); SQLite
//! does not limit the length of text, so there the test gives the shard the same limit as a
//! constraint (a trigger that aborts the insert), which SQLite reports as a broken constraint.

use std::time::Duration;

use crate::common::*;
use sluice::pipeline::Parts;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_and_mariadb_an_order_its_shard_refuses_is_rejected_and_the_shard_goes_on() {
    an_order_its_shard_refuses_is_rejected_and_the_shard_goes_on(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_embedded_defaults_an_order_its_shard_refuses_is_rejected_and_the_shard_goes_on() {
    an_order_its_shard_refuses_is_rejected_and_the_shard_goes_on(Backend::Embedded).await;
}

async fn an_order_its_shard_refuses_is_rejected_and_the_shard_goes_on(backend: Backend) {
    let long_product = too_long_product();
    let users = users_covering_shards(1);
    let user = users[0].as_str();
    let test = test_topology_on(backend, "refuse", &[user], |t| {
        t.catalog.insert(
            long_product.clone(),
            sluice_processors::CatalogEntry {
                price: "1.00".into(),
                currency: "EUR".into(),
            },
        );
    });
    let expected_reason = shard_refuses_long_products(&test, user).await;
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let token = login(&client, &pipeline.base_login, user).await;
    let post = |product: &str| {
        let request = client
            .post(format!("{}/order", pipeline.base_order))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "userId": user, "product": product, "quantity": 1 }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            let body: serde_json::Value = response.json().await.unwrap();
            body["orderId"].as_str().unwrap().to_string()
        }
    };
    let status = |id: String| {
        let request = client
            .get(format!("{}/order/{id}", pipeline.base_order))
            .bearer_auth(&token);
        async move {
            let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            body
        }
    };

    let mut good = Vec::new();
    for _ in 0..5 {
        good.push(post("widget").await);
    }
    let refused = post(&long_product).await;
    for _ in 0..5 {
        good.push(post("widget").await);
    }
    eventually(
        Duration::from_secs(60),
        "the refused order to be reported",
        || async {
            let body = status(refused.clone()).await;
            body["status"] == "rejected" || body["status"] == "stored"
        },
    )
    .await;
    let body = status(refused.clone()).await;
    assert_eq!(body["status"], "rejected", "{body}");
    assert_eq!(body["stage"], "sink", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains(expected_reason),
        "the database's reason is missing: {reason}"
    );

    // Orders after the refused one are stored too: the shard did not stall.
    for _ in 0..5 {
        good.push(post("gadget").await);
    }
    for id in &good {
        eventually(
            Duration::from_secs(60),
            "a good order to be stored",
            || async { status(id.clone()).await["status"] == "stored" },
        )
        .await;
    }
    let metrics = scrape_metrics(&client, &pipeline.base_order).await;
    assert!(
        metrics.contains("sluice_sink_rows_refused_total"),
        "/metrics lacks sluice_sink_rows_refused_total"
    );
    pipeline.stop().await;
}
