//! Capability tokens (biscuit) under attack, over real HTTP against the `sluice` binary on the
//! embedded defaults: a holder can append blocks offline, without any key, so every appended
//! block is attacker-controlled. Blocks outside Sluice's vocabulary (facts, rules, checks of
//! other kinds, oversized checks) and expired tokens are refused with 401 before any Datalog
//! evaluation, fast, while the process stays responsive; requests that fail authentication
//! are charged to their client address's rate limit; `sluice biscuit mint` gives tokens a
//! lifetime unless told otherwise.

use std::num::NonZeroU32;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::builder::Algorithm;
use biscuit_auth::macros::biscuit;
use biscuit_auth::{Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey};
use sluice_ingress::capability::{attenuate, generate_root_keypair, mint, Restrictions};
use sluice_ingress::config::Quota;

use super::order;
use crate::common::*;

/// How fast a refused attack token and `/healthz` must be answered. A security bound, not a
/// speed target: generous for a debug build, yet far below the seconds to minutes the attack
/// token's evaluation takes.
const BOUND: Duration = Duration::from_millis(100);

/// No request of these tests may take this long, ever: unpatched, an attack request takes
/// minutes, and so does everything queued behind it.
const CEILING: Duration = Duration::from_secs(2);

/// Attempts at a measurement within [`BOUND`]. The tests share two cores with the rest of the
/// suite (and more): a process starved of CPU answers late whatever it does, so a disturbed
/// attempt is made again, a few times; every attempt must still be answered within
/// [`CEILING`].
const ATTEMPTS: usize = 5;

/// Facts of the self-join block: its rule enumerates this many cubed bindings.
const JOINED_FACTS: usize = 256;

/// A `sluice run` process trusting a fresh biscuit root key, for user alice.
pub(super) struct Served {
    test: TestTopology,
    pub(super) process: SluiceProcess,
    /// Serves `/order`.
    pub(super) base: String,
    /// Serves `/login`.
    pub(super) login_base: String,
    private: String,
    /// The root public key (hex).
    pub(super) public: String,
}

impl Served {
    pub(super) async fn start(
        name: &str,
        tweak: impl FnOnce(&mut sluice::topology::Topology),
    ) -> Self {
        let ports = Ports::free();
        let mut test = test_topology_on(Backend::Embedded, name, &["alice"], |t| {
            ports.apply(t);
            tweak(t);
        });
        let (private, public) = generate_root_keypair();
        let key_file = test.dir.path().join("biscuit-root.pub");
        std::fs::write(&key_file, &public).unwrap();
        test.edit(|t| t.ingress.auth.biscuit_public_key_file = Some(key_file));
        let base = ports.order_base();
        let mut child = start_sluice(
            &test.path,
            &test.dir.path().join("run.log"),
            &[("RUST_LOG", "warn")],
        );
        wait_ready(&base, &mut child).await;
        Served {
            test,
            process: child,
            base,
            login_base: ports.login_base(),
            private,
            public,
        }
    }

    /// A genuine token for alice, valid for ten minutes.
    pub(super) fn token(&self) -> String {
        mint(&self.private, "alice", Some(Duration::from_secs(600))).unwrap()
    }

    /// `token` with `block` appended, as any holder can do offline.
    fn append(&self, token: &str, block: BlockBuilder) -> String {
        let root = PublicKey::from_bytes_hex(&self.public, Algorithm::Ed25519).unwrap();
        Biscuit::from_base64(token, root)
            .unwrap()
            .append(block)
            .unwrap()
            .to_base64()
            .unwrap()
    }

    /// Stops the process and counts the orders its log holds.
    async fn stop_and_count_orders(self) -> i64 {
        assert!(
            terminate(self.process).success(),
            "sluice did not stop cleanly"
        );
        let topology = self.test.topology();
        let log = sluice::pipeline::open_log(&topology).unwrap();
        topic_records(log.as_ref(), &topology.ingress.orders_topic).await
    }
}

/// A block of `JOINED_FACTS` facts and a rule joining them with themselves three times that
/// never derives anything: no fact limit ever trips, and biscuit only looks at the clock
/// between iterations, so evaluating it runs until the whole join is done.
fn self_join_block() -> BlockBuilder {
    let facts: String = (0..JOINED_FACTS).map(|i| format!("n({i});\n")).collect();
    BlockBuilder::new()
        .code(format!(
            "{facts}never($x) <- n($x), n($y), n($z), $x + $y + $z < 0;"
        ))
        .unwrap()
}

fn block(code: &str) -> BlockBuilder {
    BlockBuilder::new()
        .code(code)
        .unwrap_or_else(|e| panic!("{code}: {e}"))
}

/// Posts an order for alice with `token`: status, error message (if any) and how long the
/// answer took.
async fn timed_order(client: &reqwest::Client, base: &str, token: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/order"))
        .bearer_auth(token)
        .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let elapsed = started.elapsed();
    let message = body["error"]["message"].as_str().unwrap_or("").to_string();
    (status, message, elapsed)
}

/// `GET /healthz`: status and how long the answer took.
async fn timed_health(client: &reqwest::Client, base: &str) -> (u16, Duration) {
    let started = Instant::now();
    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    (response.status().as_u16(), started.elapsed())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CEILING).build().unwrap()
}

/// Posts an order with `token` until it is refused with 401 within [`BOUND`] (at most
/// [`ATTEMPTS`] times; each attempt must be a 401 within [`CEILING`]); returns the message.
async fn refused_fast(client: &reqwest::Client, base: &str, token: &str) -> String {
    let mut attempts = Vec::new();
    for _ in 0..ATTEMPTS {
        let (status, message, took) = timed_order(client, base, token).await;
        assert_eq!(status, 401, "{message}");
        if took < BOUND {
            return message;
        }
        attempts.push(took);
    }
    panic!("never refused within {BOUND:?}: {attempts:?}");
}

/// One round of the self-join attack: `concurrent` attack requests at once, and `/healthz`
/// probed meanwhile. Every answer comes within [`CEILING`] (the client's timeout); returns
/// the attacks' statuses and times, and the probes'.
async fn attack_round(
    client: &reqwest::Client,
    base: &str,
    heavy: &str,
    concurrent: usize,
) -> (Vec<(u16, String, Duration)>, Vec<(u16, Duration)>) {
    let attacks: Vec<_> = (0..concurrent)
        .map(|_| {
            let (client, base, heavy) = (client.clone(), base.to_string(), heavy.to_string());
            tokio::spawn(async move { timed_order(&client, &base, &heavy).await })
        })
        .collect();
    let mut health = Vec::new();
    for _ in 0..8 {
        health.push(timed_health(client, base).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut answers = Vec::new();
    for attack in attacks {
        answers.push(attack.await.unwrap());
    }
    (answers, health)
}

/// A genuine token with an appended self-join block is refused with 401 within [`BOUND`],
/// before any evaluation, and `/healthz` keeps answering within [`BOUND`] while several such
/// requests are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_join_block_is_refused_at_once_and_health_stays_fast() {
    let served = Served::start("capjoin", |_| {}).await;
    let client = client();
    let token = served.token();
    assert_eq!(order(&client, &served.base, &token).await.0, 202);
    let heavy = served.append(&token, self_join_block());
    assert!(heavy.len() < 16 * 1024, "the attack fits in a token");

    let mut rounds = Vec::new();
    for _ in 0..ATTEMPTS {
        let (attacks, health) = attack_round(&client, &served.base, &heavy, 4).await;
        for (status, message, _) in &attacks {
            // 503 is the ingress shedding load on a starved machine: a disturbed round.
            assert!(matches!(status, 401 | 503), "{status}: {message}");
            if *status == 401 {
                assert!(message.contains("block 1 adds"), "{message}");
            }
        }
        assert!(health.iter().all(|(status, _)| *status == 200));
        let clean = attacks
            .iter()
            .all(|(status, _, took)| *status == 401 && *took < BOUND)
            && health.iter().all(|(_, took)| *took < BOUND);
        rounds.push((attacks, health));
        if clean {
            break;
        }
    }
    let (attacks, health) = rounds.last().unwrap();
    for (status, _, took) in attacks {
        assert!(
            *status == 401 && *took < BOUND,
            "no round of the attack was refused within {BOUND:?} with /healthz as fast: {rounds:?}"
        );
    }
    for (_, took) in health {
        assert!(
            *took < BOUND,
            "/healthz was slow in every round: {rounds:?}"
        );
    }

    // Reading orders authenticates the same way.
    let mut reads = Vec::new();
    for _ in 0..ATTEMPTS {
        let started = Instant::now();
        let read = client
            .get(format!(
                "{}/order/01a2136e-1011-7166-b62d-77bb390cf211",
                served.base
            ))
            .bearer_auth(&heavy)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 401);
        reads.push(started.elapsed());
        if started.elapsed() < BOUND {
            break;
        }
    }
    assert!(reads.last().unwrap() < &BOUND, "{reads:?}");
    // The genuine token still works afterwards.
    assert_eq!(order(&client, &served.base, &token).await.0, 202);
    assert_eq!(served.stop_and_count_orders().await, 2);
}

/// An expired token is refused as expired before anything of it is evaluated, whatever its
/// blocks hold, and whichever block's check sets the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_with_a_heavy_block_is_refused_as_expired_at_once() {
    let served = Served::start("capexpired", |_| {}).await;
    let client = client();
    let root =
        KeyPair::from(&PrivateKey::from_bytes_hex(&served.private, Algorithm::Ed25519).unwrap());
    let expired = biscuit!(
        r#"
        user("alice");
        right("order");
        check if time($t), $t <= {expiry};
        "#,
        expiry = SystemTime::now() - Duration::from_secs(60),
    )
    .build(&root)
    .unwrap()
    .to_base64()
    .unwrap();
    let (status, message, _) = timed_order(&client, &served.base, &expired).await;
    assert_eq!(status, 401, "{message}");
    assert!(message.contains("expired"), "{message}");

    let heavy = served.append(&expired, self_join_block());
    let message = refused_fast(&client, &served.base, &heavy).await;
    assert!(message.contains("expired"), "{message}");

    // A genuine token whose holder narrowed its lifetime into the past, then appended the
    // heavy block: expired too, by the attenuation's own check.
    let narrowed = served.append(
        &served.token(),
        block(&format!(
            "check if time($t), $t <= {};",
            rfc3339(SystemTime::now() - Duration::from_secs(5))
        )),
    );
    let heavy = served.append(&narrowed, self_join_block());
    let message = refused_fast(&client, &served.base, &heavy).await;
    assert!(message.contains("expired"), "{message}");
    assert_eq!(served.stop_and_count_orders().await, 0);
}

/// Seconds since the epoch of `t` as an RFC 3339 date, for Datalog source.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Appended blocks may only add checks of the kinds Sluice documents, few and small: anything
/// else is refused with 401 (not evaluated and found wanting: refused), while the documented
/// attenuations keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undocumented_content_in_appended_blocks_is_refused() {
    let served = Served::start("capvocab", |_| {}).await;
    let client = client();
    let token = served.token();

    let many_checks = "check if quantity($q), $q <= 5;\n".repeat(9);
    let many_products = format!(
        "check if product($p), {{{}}}.contains($p);",
        (0..257)
            .map(|i| format!("\"p{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let refused: Vec<(&str, String)> = vec![
        ("a fact", r#"user("bob");"#.into()),
        (
            "a fact beside a check",
            "time(1970-01-01T00:00:00Z);\ncheck if quantity($q), $q <= 5;".into(),
        ),
        ("a rule", "r($x) <- right($x);".into()),
        (
            "an undocumented check",
            r#"check if right("order");"#.into(),
        ),
        (
            "a check of another kind",
            "check all quantity($q), $q <= 5;".into(),
        ),
        ("a reject check", "reject if quantity($q), $q > 5;".into()),
        (
            "a check with two alternatives",
            "check if quantity($q), $q <= 5 or product(\"widget\");".into(),
        ),
        (
            "another comparison",
            "check if quantity($q), $q < 5;".into(),
        ),
        (
            "an expression beside the documented one",
            "check if quantity($q), $q <= 5, $q + 1 > 0;".into(),
        ),
        (
            "a closure",
            r#"check if product($p), {"widget"}.any($x -> $x == $p);"#.into(),
        ),
        (
            "a scope",
            "check if quantity($q), $q <= 5 trusting authority;".into(),
        ),
        ("too many checks", many_checks),
        ("too large a product set", many_products),
    ];
    for (what, code) in refused {
        let attenuated = served.append(&token, block(&code));
        let (status, message, _) = timed_order(&client, &served.base, &attenuated).await;
        assert_eq!(status, 401, "{what}: {message}");
        assert!(message.contains("block 1"), "{what}: {message}");
    }

    // What `sluice biscuit attenuate` appends, and the same checks written by hand.
    let documented = attenuate(
        &token,
        &served.public,
        &Restrictions {
            products: Some(vec!["widget".into(), "gizmo".into()]),
            max_quantity: Some(5),
            expires_at: Some(SystemTime::now() + Duration::from_secs(300)),
        },
    )
    .unwrap();
    assert_eq!(order(&client, &served.base, &documented).await.0, 202);
    let by_hand = served.append(
        &documented,
        block(
            r#"
            check if quantity($n), $n <= 3;
            check if product($item), {"widget"}.contains($item);
            "#,
        ),
    );
    assert_eq!(order(&client, &served.base, &by_hand).await.0, 202);
    let narrower = served.append(&by_hand, block("check if quantity($q), $q <= 0;"));
    assert_eq!(order(&client, &served.base, &narrower).await.0, 403);
    assert_eq!(served.stop_and_count_orders().await, 2);
}

fn n(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap()
}

/// Every request to `/order` routes is charged to its client address before its credential is
/// looked at: a flood of refused credentials from one address runs into 429, which then also
/// holds back that address's genuine requests, while `/healthz` and `/login` are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_floods_from_one_address_are_rate_limited() {
    const BURST: u32 = 10;
    let served = Served::start("capflood", |t| {
        t.ingress.rate_limits.orders_per_address = Quota::per_minute(n(1), n(BURST));
    })
    .await;
    let client = client();
    let token = served.token();
    let heavy = served.append(&token, self_join_block());
    let mut statuses = Vec::new();
    for attempt in 0..BURST + 5 {
        let request = client.post(format!("{}/order", served.base));
        let request = match attempt % 3 {
            0 => request,
            1 => request.bearer_auth("not-a-token"),
            _ => request.bearer_auth(&heavy),
        };
        let response = request
            .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "{retry}");
            let (_, code, message) = error_of(response).await;
            assert_eq!(code, "rate_limited");
            assert!(message.contains("per client address"), "{message}");
        }
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(refused, BURST as usize, "{statuses:?}");
    assert!(
        statuses[BURST as usize..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    // The address is exhausted for genuine credentials too, on every /order route.
    assert_eq!(order(&client, &served.base, &token).await.0, 429);
    let read = client
        .get(format!(
            "{}/order/01a2136e-1011-7166-b62d-77bb390cf211",
            served.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 429);
    assert_eq!(timed_health(&client, &served.base).await.0, 200);
    login(&client, &served.login_base, "alice").await;
    assert_eq!(served.stop_and_count_orders().await, 0);
}

/// Runs `sluice biscuit <args>`: exit success, stdout, stderr.
fn biscuit_cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("biscuit")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `sluice biscuit mint` without `--ttl-secs` mints a token that expires in 30 days, as
/// `sluice biscuit inspect` shows; `--no-expiry` mints one that never does, with a warning.
#[test]
fn mint_gives_tokens_a_default_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("root.key").display().to_string();
    let public = dir.path().join("root.pub").display().to_string();
    let (ok, _, stderr) = biscuit_cli(&[
        "keygen",
        "--private-key-file",
        &private,
        "--public-key-file",
        &public,
    ]);
    assert!(ok, "{stderr}");
    let inspect = |token: &str| {
        let (ok, listing, stderr) = biscuit_cli(&[
            "inspect",
            "--public-key-file",
            &public,
            "--token",
            token.trim(),
        ]);
        assert!(ok, "{stderr}");
        listing
    };

    let before = SystemTime::now();
    let (ok, token, stderr) =
        biscuit_cli(&["mint", "--private-key-file", &private, "--user", "alice"]);
    assert!(ok, "{stderr}");
    assert!(!stderr.to_lowercase().contains("warning"), "{stderr}");
    let listing = inspect(&token);
    let expiry = listing
        .lines()
        .find_map(|line| line.trim().strip_prefix("check if time($t), $t <= "))
        .unwrap_or_else(|| panic!("no expiry in:\n{listing}"));
    let expiry = sluice::capability_cli::parse_expiry(expiry.trim_end_matches(';')).unwrap();
    let thirty_days = Duration::from_secs(30 * 24 * 3600);
    assert!(
        expiry >= before + thirty_days - Duration::from_secs(2)
            && expiry <= SystemTime::now() + thirty_days + Duration::from_secs(2),
        "{listing}"
    );

    let (ok, token, stderr) = biscuit_cli(&[
        "mint",
        "--private-key-file",
        &private,
        "--user",
        "alice",
        "--no-expiry",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("never expires"),
        "{stderr}"
    );
    let listing = inspect(&token);
    assert!(listing.contains(r#"user("alice")"#), "{listing}");
    assert!(!listing.contains("time("), "{listing}");

    let (ok, _, stderr) = biscuit_cli(&[
        "mint",
        "--private-key-file",
        &private,
        "--user",
        "alice",
        "--no-expiry",
        "--ttl-secs",
        "60",
    ]);
    assert!(!ok, "--no-expiry and --ttl-secs together must be refused");
    assert!(stderr.contains("--no-expiry"), "{stderr}");
}
