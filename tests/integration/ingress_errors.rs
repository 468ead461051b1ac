//! Every bad input gets its status and JSON error, and produces nothing in the orders topic,
//! on Kafka + MariaDB and on the embedded log + SQLite. An unreachable broker is a Kafka fault
//! and is tested on Kafka only; the embedded log's refusals are in `disk_full`.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use sluice::pipeline::Parts;
use sluice_core::log::Log;
use sluice_core::lookup::{LookupError, OrderLookup, OrderStatus};
use sluice_ingress::config::Quota;
use sluice_ingress::Ingress;

fn forge(header: &str, claims: &str, signature: &str) -> String {
    let encode = |text: &str| base64url(text.as_bytes());
    format!("{}.{}.{}", encode(header), encode(claims), signature)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_bad_requests_are_refused_and_produce_nothing() {
    bad_requests_are_refused_and_produce_nothing(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_bad_requests_are_refused_and_produce_nothing() {
    bad_requests_are_refused_and_produce_nothing(Backend::Embedded).await;
}

async fn bad_requests_are_refused_and_produce_nothing(backend: Backend) {
    let test = test_topology_on(backend, "badinput", &["alice", "bob"], |t| {
        t.ingress.max_body_bytes = 1024;
    });
    let pipeline = RunningPipeline::start(&test, Parts::ALL).await;
    let client = reqwest::Client::new();
    let order_url = format!("{}/order", pipeline.base_order);
    let token = login(&client, &pipeline.base_login, "alice").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let post = |body: String, auth: Option<String>| {
        let mut request = client.post(&order_url).body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let bearer = Some(format!("Bearer {token}"));
    let good = r#"{"userId":"alice","product":"widget","quantity":1}"#.to_string();

    let cases: Vec<(&str, reqwest::Response, u16, &str, &str)> = vec![
        (
            "not JSON",
            post("userId=alice".into(), bearer.clone()).await.unwrap(),
            400,
            "invalid_json",
            "not valid JSON",
        ),
        (
            "empty body",
            post(String::new(), bearer.clone()).await.unwrap(),
            400,
            "invalid_json",
            "empty",
        ),
        (
            "quantity as a string",
            post(
                r#"{"userId":"alice","product":"widget","quantity":"3"}"#.into(),
                bearer.clone(),
            )
            .await
            .unwrap(),
            422,
            "invalid_body",
            "invalid type for field `quantity`: expected i64, found a string (line 1, column",
        ),
        (
            "missing product",
            post(r#"{"userId":"alice","quantity":3}"#.into(), bearer.clone())
                .await
                .unwrap(),
            422,
            "invalid_body",
            "missing field `product`",
        ),
        (
            "unknown field",
            post(
                r#"{"userId":"alice","product":"widget","quantity":1,"price":0}"#.into(),
                bearer.clone(),
            )
            .await
            .unwrap(),
            422,
            "invalid_body",
            "unknown field `price`",
        ),
        (
            "body over the limit",
            post(
                format!("{{\"pad\":\"{}\"}}", "x".repeat(4096)),
                bearer.clone(),
            )
            .await
            .unwrap(),
            413,
            "body_too_large",
            "larger than 1024 bytes",
        ),
        (
            "no token",
            post(good.clone(), None).await.unwrap(),
            401,
            "unauthorized",
            "missing Authorization header",
        ),
        (
            "not a bearer token",
            post(good.clone(), Some(format!("Basic {token}")))
                .await
                .unwrap(),
            401,
            "unauthorized",
            "must be `Bearer <token>`",
        ),
        (
            "garbage token",
            post(good.clone(), Some("Bearer abc.def.ghi".into()))
                .await
                .unwrap(),
            401,
            "unauthorized",
            "malformed",
        ),
        (
            "forged signature",
            post(
                good.clone(),
                Some(format!(
                    "Bearer {}",
                    forge(
                        r#"{"alg":"HS256","typ":"JWT"}"#,
                        &format!(
                            r#"{{"sub":"alice","iss":"sluice","iat":{now},"exp":{}}}"#,
                            now + 600
                        ),
                        "c2lnbmF0dXJl"
                    )
                )),
            )
            .await
            .unwrap(),
            401,
            "unauthorized",
            "signature is not valid",
        ),
        (
            "alg none",
            post(
                good.clone(),
                Some(format!(
                    "Bearer {}",
                    forge(
                        r#"{"alg":"none","typ":"JWT"}"#,
                        &format!(
                            r#"{{"sub":"alice","iss":"sluice","iat":{now},"exp":{}}}"#,
                            now + 600
                        ),
                        ""
                    )
                )),
            )
            .await
            .unwrap(),
            401,
            "unauthorized",
            "",
        ),
        (
            "someone else's userId",
            post(
                r#"{"userId":"bob","product":"widget","quantity":1}"#.into(),
                bearer.clone(),
            )
            .await
            .unwrap(),
            403,
            "forbidden",
            "not the token's user",
        ),
        (
            "wrong method",
            client
                .put(&order_url)
                .body(good.clone())
                .send()
                .await
                .unwrap(),
            405,
            "method_not_allowed",
            "",
        ),
        (
            "no such route",
            client
                .get(format!("{}/nope", pipeline.base_order))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
            "",
        ),
        (
            "invalid order id",
            client
                .get(format!("{order_url}/not-a-uuid"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            400,
            "invalid_order_id",
            "not an order id",
        ),
        (
            "order id that is not recent and not stored",
            client
                .get(format!("{order_url}/00000000-0000-7000-8000-000000000000"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            404,
            "order_not_found",
            "",
        ),
        (
            "status without a token",
            client
                .get(format!("{order_url}/00000000-0000-7000-8000-000000000000"))
                .send()
                .await
                .unwrap(),
            401,
            "unauthorized",
            "",
        ),
        (
            "wrong password",
            client
                .post(format!("{}/login", pipeline.base_login))
                .body(r#"{"username":"alice","password":"nope"}"#)
                .send()
                .await
                .unwrap(),
            401,
            "invalid_credentials",
            "unknown user or wrong password",
        ),
        (
            "unknown user",
            client
                .post(format!("{}/login", pipeline.base_login))
                .body(format!(
                    r#"{{"username":"mallory","password":"{PASSWORD}"}}"#
                ))
                .send()
                .await
                .unwrap(),
            401,
            "invalid_credentials",
            "unknown user or wrong password",
        ),
        (
            "login with wrong types",
            client
                .post(format!("{}/login", pipeline.base_login))
                .body(r#"{"username":1,"password":true}"#)
                .send()
                .await
                .unwrap(),
            422,
            "invalid_body",
            "invalid type",
        ),
    ];
    for (name, response, status, code, message) in cases {
        let (got_status, got_code, got_message) = error_of(response).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{name}: {got_message}"
        );
        assert!(
            got_message.contains(message),
            "{name}: message {got_message:?} lacks {message:?}"
        );
        assert!(
            !got_message.contains(&token),
            "{name}: the error echoes the token"
        );
        assert!(
            !got_message.contains(PASSWORD),
            "{name}: the error echoes a password"
        );
    }

    // An expired token is refused too (signed with the real secret, expired an hour ago).
    let topology = test.topology();
    let expired = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let claims = serde_json::json!({ "sub": "alice", "iss": "sluice", "iat": now - 7200, "exp": now - 3600 });
        encode(
            &Header::default(),
            &claims,
            // The test topology sets no secret: development mode generated one.
            &EncodingKey::from_secret(
                std::fs::read_to_string(
                    topology.resolve_path(&topology.ingress.auth.generated_secret_file),
                )
                .unwrap()
                .trim()
                .as_bytes(),
            ),
        )
        .unwrap()
    };
    let (status, _, message) = error_of(
        post(good.clone(), Some(format!("Bearer {expired}")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(message.contains("expired"), "{message}");

    // Nothing reached the orders topic; the three well-formed login attempts reached the logins topic.
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &topology.ingress.orders_topic).await,
        0
    );
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &topology.ingress.logins_topic).await,
        3
    );

    // And a good order still goes through afterwards.
    let response = post(good, bearer).await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &topology.ingress.orders_topic).await,
        1
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_rate_limits_answer_429_with_retry_after() {
    rate_limits_answer_429_with_retry_after(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_rate_limits_answer_429_with_retry_after() {
    rate_limits_answer_429_with_retry_after(Backend::Embedded).await;
}

async fn rate_limits_answer_429_with_retry_after(backend: Backend) {
    let test = test_topology_on(backend, "ratelimit", &["alice"], |t| {
        let n = |value| std::num::NonZeroU32::new(value).unwrap();
        t.ingress.rate_limits.orders_per_principal = Quota::per_second(n(1), n(3));
        t.ingress.rate_limits.logins_per_address = Quota::per_second(n(1), n(2));
    });
    let pipeline = RunningPipeline::start(&test, Parts::INGRESS).await;
    let client = reqwest::Client::new();
    let token = login(&client, &pipeline.base_login, "alice").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let response = client
            .post(format!("{}/order", pipeline.base_order))
            .bearer_auth(&token)
            .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], &[202, 202, 202]);
    assert_eq!(statuses[3], 429, "{statuses:?}");
    assert!(
        retry_after.is_some_and(|s| (1..=2).contains(&s)),
        "Retry-After: {retry_after:?}"
    );
    let topology = test.topology();
    let produced = topic_records(pipeline.log.as_ref(), &topology.ingress.orders_topic).await;
    assert_eq!(
        produced,
        statuses.iter().filter(|&&s| s == 202).count() as i64,
        "a refused order was produced"
    );

    // Logins per client address: burst 2 (one used above), so the third attempt is refused.
    let second = client
        .post(format!("{}/login", pipeline.base_login))
        .body(format!(r#"{{"username":"alice","password":"{PASSWORD}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let third = client
        .post(format!("{}/login", pipeline.base_login))
        .body(format!(r#"{{"username":"alice","password":"{PASSWORD}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    pipeline.stop().await;
}

/// Serves `topology`'s ingress alone (no stages, no sinks) with `lookup` answering
/// `GET /order/{id}`: its base URL, a token of "alice", and the token and task that stop it.
async fn serve_alone(
    topology: &sluice::topology::Topology,
    lookup: Arc<dyn OrderLookup>,
) -> (
    String,
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let log: Arc<dyn Log> = topology.log.open(&topology.base_dir).unwrap();
    let ingress = Ingress::new(topology.ingress.clone(), &topology.base_dir, log, lookup)
        .await
        .unwrap();
    let alice = ingress
        .state()
        .users()
        .hash_of("alice")
        .unwrap()
        .to_string();
    let token = ingress
        .state()
        .tokens
        .issue_for("alice", &alice, 3600)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(ingress.serve(listener, None, cancel.clone()));
    (base, token, cancel, server)
}

struct NoLookup;

#[async_trait::async_trait]
impl OrderLookup for NoLookup {
    async fn find(&self, _: &str, _: uuid::Uuid) -> Result<OrderStatus, LookupError> {
        Err(LookupError("no shards in this test".into()))
    }
}

/// A shard that accepts connections and never answers, as a frozen MariaDB (SIGSTOP, a stalled
/// VM) looks to a client: the kernel completes the connection, the server never speaks.
/// `GET /order/{id}` answers 503 within `lookup_timeout_ms`, and the ingress keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_never_answers_makes_order_lookups_503_within_their_timeout() {
    // Listening, never accepting: connections complete in the kernel's backlog and get no
    // greeting, exactly as with a stopped server process.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "mysql://root:sluice@{}/sluice",
        frozen.local_addr().unwrap()
    );
    let test = test_topology_on(Backend::Embedded, "frozenshard", &["alice"], |t| {
        t.ingress.lookup_timeout_ms = 1000;
        for shard in &mut t.shards {
            shard.url = url.clone();
        }
    });
    let topology = test.topology();
    let shards = sluice::pipeline::open_shards(&topology).unwrap();
    let lookup = sluice_sinks::ShardLookup::new(topology.shard_map().unwrap(), shards);
    let (base, token, cancel, server) = serve_alone(&topology, Arc::new(lookup)).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let response = client
            .get(format!("{base}/order/{}", uuid::Uuid::now_v7()))
            .bearer_auth(&token)
            .send()
            .await
            .expect("the lookup must be answered, not left hanging");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "answered after {took:?}, with a 1 s lookup timeout"
        );
        assert!(response.headers().contains_key("retry-after"));
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (503, "unavailable"), "{message}");
        assert!(message.contains("did not answer in time"), "{message}");
    }
    // The ingress itself still answers at once.
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    cancel.cancel();
    server.await.unwrap();
    drop(frozen);
}

/// Kafka only: a broker address where nothing listens, so the order can never be
/// acknowledged. The embedded log has no broker; its refusals (full disk, failed writes, a
/// stalled log) are `disk_full`'s tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_means_503_never_2xx() {
    let test = test_topology("nobroker", &["alice"], |t| {
        t.ingress.ack_timeout_ms = 1500;
        if let Some(kafka) = &mut t.log.kafka {
            kafka.brokers = "127.0.0.1:1".into();
        }
    });
    let topology = test.topology();
    let (base, token, cancel, server) = serve_alone(&topology, Arc::new(NoLookup)).await;

    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let response = client
        .post(format!("{base}/order"))
        .bearer_auth(&token)
        .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 503 took {:?}",
        started.elapsed()
    );
    assert!(response.headers().contains_key("retry-after"));
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert!(
        message.contains("may not be stored") && message.contains("Idempotency-Key"),
        "{message}"
    );

    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    cancel.cancel();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_idempotency_key_returns_the_same_order_and_produces_it_once() {
    idempotency_key_returns_the_same_order_and_produces_it_once(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_idempotency_key_returns_the_same_order_and_produces_it_once() {
    idempotency_key_returns_the_same_order_and_produces_it_once(Backend::Embedded).await;
}

async fn idempotency_key_returns_the_same_order_and_produces_it_once(backend: Backend) {
    let test = test_topology_on(backend, "idem", &["alice"], |_| {});
    let pipeline = RunningPipeline::start(&test, Parts::INGRESS).await;
    let client = reqwest::Client::new();
    let token = login(&client, &pipeline.base_login, "alice").await;
    let url = format!("{}/order", pipeline.base_order);
    let body = r#"{"userId":"alice","product":"widget","quantity":2}"#;
    let send = |key: &'static str, body: &'static str| {
        client
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    // Ten concurrent requests and a late retry with one key: one order, one id.
    let first: Vec<_> = futures::future::join_all((0..10).map(|_| send("order-7f3a", body))).await;
    let mut ids = std::collections::HashSet::new();
    for response in first {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        let json: serde_json::Value = response.json().await.unwrap();
        ids.insert(json["orderId"].as_str().unwrap().to_string());
    }
    let retry: serde_json::Value = send("order-7f3a", body)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ids.insert(retry["orderId"].as_str().unwrap().to_string());
    assert_eq!(ids.len(), 1, "one key must give one order id: {ids:?}");
    let orders_topic = test.topology().ingress.orders_topic;
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &orders_topic).await,
        1,
        "one key must produce one order"
    );

    // The same key for a different order is refused; a new key is a new order.
    let (status, code, _) = error_of(
        send(
            "order-7f3a",
            r#"{"userId":"alice","product":"gadget","quantity":2}"#,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
    let (status, code, _) = error_of(send("bad key with spaces", body).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_idempotency_key"));
    let other: serde_json::Value = send("order-8b21", body)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!ids.contains(other["orderId"].as_str().unwrap()));
    assert_eq!(topic_records(pipeline.log.as_ref(), &orders_topic).await, 2);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_a_stalled_body_gets_408_and_does_not_hold_up_shutdown() {
    a_stalled_body_gets_408_and_does_not_hold_up_shutdown(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_a_stalled_body_gets_408_and_does_not_hold_up_shutdown() {
    a_stalled_body_gets_408_and_does_not_hold_up_shutdown(Backend::Embedded).await;
}

async fn a_stalled_body_gets_408_and_does_not_hold_up_shutdown(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let test = test_topology_on(backend, "slowbody", &["alice"], |t| {
        t.ingress.body_timeout_ms = 500;
        t.ingress.drain_timeout_ms = 1000;
    });
    let pipeline = RunningPipeline::start(&test, Parts::INGRESS).await;
    let client = reqwest::Client::new();
    let token = login(&client, &pipeline.base_login, "alice").await;
    let address = pipeline
        .base_order
        .trim_start_matches("http://")
        .to_string();

    // Promise 100 bytes, send 10, stall.
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /order HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"userId\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A client that opens a request and never finishes it cannot hold up a graceful stop.
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(b"POST /order HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The pipeline's own log handle: the embedded log's file serves one opener at a time.
    let log = pipeline.log.clone();
    let stopping = std::time::Instant::now();
    pipeline.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    let orders_topic = test.topology().ingress.orders_topic;
    assert_eq!(topic_records(log.as_ref(), &orders_topic).await, 0);
}

/// Two ingress processes on one Kafka with `replicas = 2`: each keeps half of every limit, so
/// together they allow the configured burst, not twice it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_replicas_share_the_configured_limits() {
    let test = test_topology_on(Backend::Services, "replicas", &["alice"], |t| {
        let n = |value| std::num::NonZeroU32::new(value).unwrap();
        t.ingress.rate_limits.orders_per_principal = Quota::per_minute(n(1), n(4));
        t.ingress.rate_limits.replicas = n(2);
    });
    let first = RunningPipeline::start(&test, Parts::INGRESS).await;
    let second = RunningPipeline::start(&test, Parts::INGRESS).await;
    let client = reqwest::Client::new();
    let token = login(&client, &first.base_login, "alice").await;
    let mut accepted = 0;
    for pipeline in [&first, &second] {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let response = client
                .post(format!("{}/order", pipeline.base_order))
                .bearer_auth(&token)
                .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        assert_eq!(
            statuses,
            [202, 202, 429],
            "each replica keeps half the burst"
        );
        accepted += 2;
    }
    let topology = test.topology();
    let produced = topic_records(first.log.as_ref(), &topology.ingress.orders_topic).await;
    assert_eq!(
        produced, accepted,
        "together the replicas allow the configured burst"
    );
    first.stop().await;
    second.stop().await;
}
