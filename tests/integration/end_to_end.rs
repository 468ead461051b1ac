//! The whole pipeline on real Kafka and four real MariaDB shards, driven over HTTP:
//! every order that got a 2xx is stored exactly once, in the shard its bucket maps to, with
//! the enriched fields right; rejected orders are reported with their reason.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use sluice::pipeline::Parts;
use sluice_core::sharding::bucket_of;

const PRODUCTS: [(&str, i64); 4] = [
    ("widget", 999),
    ("gadget", 2450),
    ("gizmo", 12000),
    ("sprocket", 75),
];

struct Sent {
    user: String,
    product_index: usize,
    quantity: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_and_mariadb_every_order_is_stored_exactly_once_in_its_shard() {
    orders_from_many_users_are_stored_exactly_once_in_their_shard(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_embedded_defaults_every_order_is_stored_exactly_once_in_its_shard() {
    orders_from_many_users_are_stored_exactly_once_in_their_shard(Backend::Embedded).await;
}

async fn orders_from_many_users_are_stored_exactly_once_in_their_shard(backend: Backend) {
    let users = users_covering_shards(3);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let test = test_topology_on(backend, "e2e", &user_refs, |_| {});
    let topology = test.topology();
    let map = topology.shard_map().unwrap();
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();

    // Log in every user; one of them the way the original curl example does (form content type).
    let mut tokens = HashMap::new();
    for user in &users {
        tokens.insert(
            user.clone(),
            login(&client, &pipeline.base_login, user).await,
        );
    }
    let curl_style = client
        .post(format!("{}/login", pipeline.base_login))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            r#"{{"username":"{}","password":"{PASSWORD}"}}"#,
            users[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(curl_style.status(), 200);

    // 3 000 orders from 12 users, 32 in flight at once; every 50th has quantity 0 (rejected).
    let total = 3_000;
    let requests = (0..total).map(|n| {
        let user = users[n % users.len()].clone();
        let token = tokens[&user].clone();
        let quantity = if n % 50 == 7 { 0 } else { (n % 9) as i64 + 1 };
        let product_index = n % PRODUCTS.len();
        let client = client.clone();
        let url = format!("{}/order", pipeline.base_order);
        async move {
            let body = serde_json::json!({ "userId": user, "product": PRODUCTS[product_index].0, "quantity": quantity });
            let response = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            let status = response.status();
            let json: serde_json::Value = response.json().await.unwrap();
            (status, json, Sent { user, product_index, quantity })
        }
    });
    let responses: Vec<_> = futures::stream::iter(requests)
        .buffer_unordered(32)
        .collect()
        .await;
    let mut accepted: HashMap<String, Sent> = HashMap::new();
    for (status, json, sent) in responses {
        assert_eq!(status, 202, "order refused: {json}");
        let id = json["orderId"].as_str().unwrap().replace('-', "");
        assert!(
            accepted.insert(id, sent).is_none(),
            "duplicate order id handed out"
        );
    }
    let expected_valid = accepted.values().filter(|s| s.quantity > 0).count();
    let expected_rejected = accepted.len() - expected_valid;
    assert_eq!(expected_rejected, total / 50);

    eventually(
        Duration::from_secs(120),
        "every accepted order to reach its shard",
        || async {
            let mut stored = 0;
            let mut rejected = 0;
            for shard in 0..4 {
                stored += count_rows(&test, shard, "orders").await;
                rejected += count_rows(&test, shard, "rejected_orders").await;
            }
            stored as usize >= expected_valid && rejected as usize >= expected_rejected
        },
    )
    .await;

    // Read every stored row of every shard.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut shards_of_user: HashMap<String, HashSet<usize>> = HashMap::new();
    for shard in 0..4 {
        let lines = order_lines(&test, shard).await;
        assert!(!lines.is_empty(), "shard {shard} received no orders");
        for line in lines {
            let f: Vec<&str> = line.split('|').collect();
            let (user, product, quantity, unit, line_total) = (
                f[1],
                f[2],
                f[3].parse::<i64>().unwrap(),
                f[4].parse::<i64>().unwrap(),
                f[5].parse::<i64>().unwrap(),
            );
            let id = f[0].to_string();
            *seen.entry(id.clone()).or_default() += 1;
            let sent = accepted
                .get(&id)
                .unwrap_or_else(|| panic!("row {id} was never accepted"));
            assert!(sent.quantity > 0, "rejected order {id} was stored");
            assert_eq!(user, sent.user);
            assert_eq!(product, PRODUCTS[sent.product_index].0);
            assert_eq!(quantity, sent.quantity);
            assert_eq!(unit, PRODUCTS[sent.product_index].1);
            assert_eq!(line_total, unit * quantity);
            assert_eq!(f[6], "EUR");
            assert_eq!(f[9].parse::<u32>().unwrap(), bucket_of(user, 256));
            assert_eq!(
                map.shard_for_user(user),
                shard,
                "order {id} of {user} is in the wrong shard"
            );
            assert_eq!(f[10], format!("shard{shard}"));
            shards_of_user
                .entry(user.to_string())
                .or_default()
                .insert(shard);
        }
    }
    assert_eq!(
        seen.len(),
        expected_valid,
        "stored orders differ from accepted valid orders"
    );
    assert!(
        seen.values().all(|&n| n == 1),
        "an order is stored in more than one shard"
    );
    assert!(
        shards_of_user.values().all(|s| s.len() == 1),
        "a user's orders span shards"
    );
    assert_eq!(shards_of_user.len(), users.len());

    // GET /order/{id}: stored, rejected, pending, other user's.
    let dashed = |hex: &str| uuid::Uuid::parse_str(hex).unwrap().to_string();
    let order_status = |id: &str, user: &str| {
        let request = client
            .get(format!("{}/order/{id}", pipeline.base_order))
            .bearer_auth(&tokens[user]);
        async move {
            let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            body
        }
    };
    let (stored_id, stored) = accepted.iter().find(|(_, s)| s.quantity > 0).unwrap();
    let stored_id = dashed(stored_id);
    let body = order_status(&stored_id, &stored.user).await;
    assert_eq!(body["status"], "stored", "{body}");
    assert_eq!(
        body["order"]["lineTotalMinor"],
        PRODUCTS[stored.product_index].1 * stored.quantity
    );

    let (rejected_id, rejected) = accepted.iter().find(|(_, s)| s.quantity == 0).unwrap();
    let rejected_id = dashed(rejected_id);
    let body = order_status(&rejected_id, &rejected.user).await;
    assert_eq!(body["status"], "rejected", "{body}");
    assert_eq!(body["stage"], "validate");
    assert_eq!(body["reason"], "quantity 0 is outside 1..=1000");

    let other_user = users.iter().find(|u| **u != stored.user).unwrap();
    let body = order_status(&stored_id, other_user).await;
    assert_ne!(
        body["status"], "stored",
        "another user's order was disclosed: {body}"
    );

    // Operations: liveness, readiness and Prometheus metrics on both listeners.
    for base in [&pipeline.base_login, &pipeline.base_order] {
        assert_eq!(
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let metrics = scrape_metrics(&client, base).await;
        for name in [
            "sluice_orders_accepted_total",
            "sluice_http_requests_total",
            "sluice_stage_records_out_total",
            "sluice_sink_rows_total",
        ] {
            assert!(metrics.contains(name), "/metrics lacks {name}");
        }
    }

    // Every login attempt was recorded.
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &format!("{}.auth.logins", test.id)).await,
        users.len() as i64 + 1
    );
    // The dead-letter topic holds exactly the rejected orders.
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &format!("{}.orders.dlq", test.id)).await,
        expected_rejected as i64
    );

    pipeline.stop().await;
}
