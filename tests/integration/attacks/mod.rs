//! The ingress under attack, over real HTTP: forged, confused, expired and retired tokens;
//! key rotation without a restart; login brute force; oversized, slow and deeply nested
//! requests; weak production settings; secrets in logs. Every refused request must produce
//! nothing in the log. Each runs on Kafka + MariaDB and on the embedded log + SQLite, except
//! the production-mode check, which starts the shipped topology as it is (the embedded
//! defaults), and the RS256 check, which needs no backend. The suites below hold the rest,
//! on the embedded defaults: capability tokens that try to stall the process
//! ([`capability`]), connection hoarding ([`connections`]), the login defences (lock-outs,
//! floods, hostile names and passwords: [`login`]), operational endpoints in production
//! ([`operations`]), published secrets ([`secrets`]), sessions after a password change
//! ([`sessions`]) and the users file ([`users`]).

mod capability;
mod connections;
mod login;
mod operations;
mod secrets;
mod sessions;
mod users;

use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sluice::pipeline::Parts;
use sluice::topology::Topology;
use sluice_ingress::config::{JwtAlgorithm, JwtKeyConfig, Quota};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STRONG_SECRET: &str = "6f1c2b9e0a7d4c3b8e5f2a1d9c7b6e4f3a2d1c0b";

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// An Ed25519 key pair as PEM files `<name>.pem` and `<name>.pub.pem` in `dir`.
fn ed25519_keys(dir: &Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem")).display().to_string();
    let public = dir.join(format!("{name}.pub.pem")).display().to_string();
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", &private]);
    openssl(&["pkey", "-in", &private, "-pubout", "-out", &public]);
    (private, public)
}

fn sluice(args: &[&str], topology: &Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--topology")
        .arg(topology)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `sluice users add <name> --file <file> [extra]`, with `password` on standard input.
pub(super) fn users_add(file: &Path, name: &str, password: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["users", "add", name, "--file"])
        .arg(file)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The shipped `topology.toml` and `users.toml` in a fresh folder, as a new user has them;
/// returns the folder and the topology's path.
fn shipped_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.toml");
    std::fs::write(&topology, SHIPPED).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/users.toml"),
        dir.path().join("users.toml"),
    )
    .unwrap();
    (dir, topology)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, aud: Option<&str>, iat: u64, nbf: u64, exp: u64) -> serde_json::Value {
    let mut claims =
        serde_json::json!({ "sub": sub, "iss": "sluice", "iat": iat, "nbf": nbf, "exp": exp });
    if let Some(aud) = aud {
        claims["aud"] = aud.into();
    }
    claims
}

fn hs256(kid: &str, secret: &[u8], claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Posts one order with `token`; returns the status and the error code, if any.
async fn order(client: &reqwest::Client, base: &str, token: &str) -> (u16, String) {
    let response = client
        .post(format!("{base}/order"))
        .bearer_auth(token)
        .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// Replaces `[ingress.auth]`'s secret with the key ring `keys`, signing with `signing_kid`.
fn with_key_ring(topology: &mut Topology, signing_kid: &str, keys: Vec<JwtKeyConfig>) {
    let auth = &mut topology.ingress.auth;
    auth.jwt_secret = None;
    auth.audience = Some("sluice-orders".into());
    auth.signing_kid = Some(signing_kid.into());
    auth.keys = keys;
}

/// An EdDSA key of the key ring.
fn eddsa_key(kid: &str, private: &str, public: &str) -> JwtKeyConfig {
    JwtKeyConfig {
        kid: kid.into(),
        algorithm: JwtAlgorithm::EdDSA,
        secret: None,
        private_key_file: Some(private.into()),
        public_key_file: Some(public.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_jwt_forgeries_fail_and_keys_rotate_without_restart() {
    jwt_forgeries_fail_and_keys_rotate_without_restart(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_jwt_forgeries_fail_and_keys_rotate_without_restart() {
    jwt_forgeries_fail_and_keys_rotate_without_restart(Backend::Embedded).await;
}

async fn jwt_forgeries_fail_and_keys_rotate_without_restart(backend: Backend) {
    let ports = Ports::free();
    let mut test = test_topology_on(backend, "jwt", &["alice"], |t| ports.apply(t));
    let dir = test.dir.path().to_path_buf();
    let (ed1_private, ed1_public) = ed25519_keys(&dir, "ed-1");
    let old_secret = "an-old-hs256-secret-that-is-being-retired-0001";
    let hs_old = JwtKeyConfig {
        kid: "hs-old".into(),
        algorithm: JwtAlgorithm::HS256,
        secret: Some(old_secret.into()),
        private_key_file: None,
        public_key_file: None,
    };
    let ed1 = eddsa_key("ed-1", &ed1_private, &ed1_public);
    test.edit(|t| with_key_ring(t, "ed-1", vec![ed1.clone(), hs_old]));

    let base = ports.order_base();
    let mut child = start_sluice(&test.path, &dir.join("run.log"), &[("RUST_LOG", "warn")]);
    wait_ready(&base, &mut child).await;
    let pid = child.id();
    let client = reqwest::Client::new();

    // `sluice token` mints with the signing key (EdDSA, kid ed-1).
    let minted = sluice(&["token", "--user", "alice"], &test.path, &[]);
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let ed1_token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    assert_eq!(order(&client, &base, &ed1_token).await.0, 202);

    let now = now_secs();
    let mut good = claims("alice", Some("sluice-orders"), now, now, now + 600);
    // Every token of a key this service signs with carries alice's credential version.
    let users_file = test
        .topology()
        .resolve_path(&test.topology().ingress.auth.users_file);
    let alice = sluice_ingress::users::read_entries(&users_file)
        .unwrap()
        .into_iter()
        .find(|entry| entry.name == "alice")
        .unwrap();
    good["cred"] = sluice_ingress::auth::credential_version(&alice.password_hash).into();
    let without_cred = hs256(
        "hs-old",
        old_secret.as_bytes(),
        &claims("alice", Some("sluice-orders"), now, now, now + 600),
    );
    assert_eq!(
        order(&client, &base, &without_cred).await,
        (401, "unauthorized".to_string()),
        "a token of our own key without cred was not issued here"
    );
    let hs_token = hs256("hs-old", old_secret.as_bytes(), &good);
    assert_eq!(
        order(&client, &base, &hs_token).await.0,
        202,
        "a second, HS256 key verifies by kid"
    );

    // Each attack with the reason it must be refused for: a check other than the one meant
    // for it must not be what stops it.
    let attacks: Vec<(&str, String, &str)> = vec![
        (
            "no audience",
            hs256(
                "hs-old",
                old_secret.as_bytes(),
                &claims("alice", None, now, now, now + 600),
            ),
            "the token lacks a required claim",
        ),
        (
            "other audience",
            hs256(
                "hs-old",
                old_secret.as_bytes(),
                &claims("alice", Some("billing"), now, now, now + 600),
            ),
            "the token is not meant for this service",
        ),
        (
            "algorithm confusion: HS256 keyed with the EdDSA public key",
            hs256("ed-1", &std::fs::read(&ed1_public).unwrap(), &good),
            "the token's algorithm is not accepted for its key",
        ),
        (
            "unknown kid",
            hs256("hs-new", old_secret.as_bytes(), &good),
            "the token's key id is not known",
        ),
        (
            "expired",
            hs256(
                "hs-old",
                old_secret.as_bytes(),
                &claims(
                    "alice",
                    Some("sluice-orders"),
                    now - 7200,
                    now - 7200,
                    now - 3600,
                ),
            ),
            "the token has expired; log in again",
        ),
        (
            "not valid yet",
            hs256(
                "hs-old",
                old_secret.as_bytes(),
                &claims("alice", Some("sluice-orders"), now, now + 3600, now + 7200),
            ),
            "the token is not valid yet",
        ),
        (
            "wrong secret",
            hs256("hs-old", b"guessed-secret-guessed-secret-guessed!", &good),
            "the token's signature is not valid",
        ),
        (
            // Well-formed: valid base64url JSON with every claim valid, under the original
            // EdDSA signature; only the signature check can refuse it.
            "tampered payload",
            {
                let mut parts: Vec<String> = ed1_token.split('.').map(str::to_string).collect();
                let forged = claims("alice", Some("sluice-orders"), now, now, now + 86_400 * 365);
                parts[1] = jsonwebtoken_payload(&forged);
                parts.join(".")
            },
            "the token's signature is not valid",
        ),
        (
            // `none` is no algorithm the JWT library knows: the header itself is refused.
            "alg none",
            format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoiZWQtMSJ9.{}.",
                jsonwebtoken_payload(&good)
            ),
            "the token is malformed",
        ),
    ];
    for (name, token, reason) in &attacks {
        let response = client
            .post(format!("{base}/order"))
            .bearer_auth(token)
            .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
            .send()
            .await
            .unwrap();
        let (status, code, message) = error_of(response).await;
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (401, "unauthorized", *reason),
            "attack {name:?} was not refused for the right reason"
        );
    }

    // Rotate: add ed-2 and sign with it, retire hs-old; SIGHUP, no restart.
    let (ed2_private, ed2_public) = ed25519_keys(&dir, "ed-2");
    let ed2 = eddsa_key("ed-2", &ed2_private, &ed2_public);
    test.edit(|t| with_key_ring(t, "ed-2", vec![ed1, ed2]));
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    let minted = sluice(&["token", "--user", "alice"], &test.path, &[]);
    let ed2_token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    // Probed with a read, so that no order is placed while the reload lands.
    let probe = format!("{base}/order/01a2136e-1011-7166-b62d-77bb390cf211");
    let status_with = |token: &str| {
        let request = client.get(&probe).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    eventually(
        Duration::from_secs(10),
        "the reload to retire hs-old",
        || async { status_with(&hs_token).await == 401 },
    )
    .await;
    assert_eq!(
        order(&client, &base, &hs_token).await,
        (401, "unauthorized".to_string()),
        "the retired key must be refused for orders too"
    );
    assert_eq!(
        order(&client, &base, &ed2_token).await.0,
        202,
        "the new signing key must be accepted"
    );
    assert_eq!(
        order(&client, &base, &ed1_token).await.0,
        202,
        "a key still in the ring keeps verifying"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the reload must not restart the process"
    );

    // Removing a user and reloading revokes their live tokens.
    let users_file = test
        .topology()
        .resolve_path(&test.topology().ingress.auth.users_file);
    sluice_ingress::users::upsert_user(
        &users_file,
        "carol",
        "a long passphrase of her own",
        sluice_ingress::users::PasswordPolicy::RefuseWeak,
    )
    .unwrap();
    assert!(sluice_ingress::users::remove_user(&users_file, "alice").unwrap());
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "alice's tokens to be revoked",
        || async { status_with(&ed2_token).await == 401 },
    )
    .await;
    assert_eq!(
        order(&client, &base, &ed2_token).await,
        (401, "unauthorized".to_string())
    );
    assert!(terminate(child).success());

    // Four orders were accepted; none of the refused ones was produced.
    let topology = test.topology();
    let log = sluice::pipeline::open_log(&topology).unwrap();
    assert_eq!(
        topic_records(log.as_ref(), &topology.ingress.orders_topic).await,
        4
    );
}

/// The base64url (unpadded) JSON of `claims`, as a JWT payload segment.
fn jsonwebtoken_payload(claims: &serde_json::Value) -> String {
    base64url(&serde_json::to_vec(claims).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_login_brute_force_is_limited_and_failures_look_alike() {
    login_brute_force_is_limited_and_failures_look_alike(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_login_brute_force_is_limited_and_failures_look_alike() {
    login_brute_force_is_limited_and_failures_look_alike(Backend::Embedded).await;
}

async fn login_brute_force_is_limited_and_failures_look_alike(backend: Backend) {
    let n = |value| NonZeroU32::new(value).unwrap();
    let test = test_topology_on(backend, "brute", &["alice", "bob"], |t| {
        let limits = &mut t.ingress.rate_limits;
        limits.login_failures_per_user_address = Quota::per_minute(n(10), n(12));
        // No slow-down of the name here: the times of failures are compared.
        limits.login_failures_per_user = Quota::per_minute(n(10), n(1_000));
    });
    let pipeline = RunningPipeline::start(&test, Parts::INGRESS).await;
    let client = reqwest::Client::new();
    let attempt = |user: &str, password: &str| {
        client
            .post(format!("{}/login", pipeline.base_login))
            .body(format!(
                r#"{{"username":"{user}","password":"{password}"}}"#
            ))
            .send()
    };

    // Unknown user and wrong password: same status, same body, about the same time.
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    let mut bodies = std::collections::HashSet::new();
    for _ in 0..5 {
        let started = Instant::now();
        let response = attempt("mallory", "guess-guess-guess").await.unwrap();
        unknown.push(started.elapsed());
        assert_eq!(response.status(), 401);
        bodies.insert(response.text().await.unwrap());
        let started = Instant::now();
        let response = attempt("alice", "guess-guess-guess").await.unwrap();
        wrong.push(started.elapsed());
        assert_eq!(response.status(), 401);
        bodies.insert(response.text().await.unwrap());
    }
    assert_eq!(
        bodies.len(),
        1,
        "unknown user and wrong password must answer alike: {bodies:?}"
    );
    // Both paths run one argon2id verification with the same parameters (see the users
    // module's tests); wall-clock times are printed, not asserted, since a loaded machine
    // makes them noisy.
    unknown.sort();
    wrong.sort();
    eprintln!(
        "median login time: unknown user {:?}, wrong password {:?}",
        unknown[2], wrong[2]
    );
    // This address may fail 12 times for alice; 5 are used. Seven more wrong ones, then 429
    // even with the right password, from this address; Bob is unaffected (other addresses
    // too: see `attacks::login`).
    for _ in 0..7 {
        assert_eq!(
            attempt("alice", "guess-guess-guess")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let limited = attempt("alice", PASSWORD).await.unwrap();
    assert_eq!(limited.status(), 429);
    for header in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(limited.headers().contains_key(header), "429 lacks {header}");
    }
    assert_eq!(attempt("bob", PASSWORD).await.unwrap().status(), 200);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_oversized_headers_slow_headers_and_deep_json_are_refused() {
    oversized_headers_slow_headers_and_deep_json_are_refused(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_oversized_headers_slow_headers_and_deep_json_are_refused() {
    oversized_headers_slow_headers_and_deep_json_are_refused(Backend::Embedded).await;
}

async fn oversized_headers_slow_headers_and_deep_json_are_refused(backend: Backend) {
    let test = test_topology_on(backend, "abuse", &["alice"], |t| {
        t.ingress.ack_timeout_ms = 5000;
        t.ingress.header_read_timeout_ms = 1000;
        t.ingress.max_header_bytes = 8192;
    });
    let pipeline = RunningPipeline::start(&test, Parts::INGRESS).await;
    let client = reqwest::Client::new();
    let token = login(&client, &pipeline.base_login, "alice").await;
    let url = format!("{}/order", pipeline.base_order);

    let huge = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-padding", "p".repeat(20_000))
        .body("{}")
        .send()
        .await;
    match huge {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(error) => assert!(
            error.is_request() || error.is_connect(),
            "unexpected error: {error}"
        ),
    }

    let deep = format!("{}{}", "[".repeat(50), "]".repeat(50));
    let response = client
        .post(&url)
        .bearer_auth(&token)
        .body(deep)
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, 400);
    assert!(message.contains("nests deeper"), "{message}");

    // Slowloris: headers trickle in and never finish; the server hangs up.
    let address = pipeline
        .base_order
        .trim_start_matches("http://")
        .to_string();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"POST /order HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match slow.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a client that never finishes its headers must be disconnected"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "disconnected before the header timeout"
    );

    let topology = test.topology();
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &topology.ingress.orders_topic).await,
        0
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_refuses_weak_settings_and_says_what_to_change() {
    let (dir, topology) = shipped_copy();
    // Development mode starts with the same settings (on loopback listeners the demo users
    // stay usable, and a token secret is generated), and warns once of the demo users.
    let listen = format!("127.0.0.1:{}", free_port());
    let log_file = dir.path().join("development.log");
    let mut child = start_sluice(
        &topology,
        &log_file,
        &[
            ("SLUICE_LOGIN_LISTEN", listen.as_str()),
            ("SLUICE_ORDER_LISTEN", listen.as_str()),
        ],
    );
    wait_ready(&format!("http://{listen}"), &mut child).await;
    eventually(
        Duration::from_secs(20),
        "a warning for each weakness",
        || async {
            let log = std::fs::read_to_string(&log_file).unwrap();
            let warnings: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("DEVELOPMENT MODE: not safe for production"))
                .collect();
            warnings.len() == 1
                && warnings[0].contains("users alice, bob have the shipped demo passwords")
        },
    )
    .await;
    assert!(terminate(child).success());
    assert!(!std::fs::read_to_string(&log_file)
        .unwrap()
        .contains("wonderland"));

    let production = [
        ("SLUICE_MODE", "production"),
        ("SLUICE_LOGIN_LISTEN", "127.0.0.1:0"),
        ("SLUICE_ORDER_LISTEN", "127.0.0.1:0"),
    ];
    // Production mode generates no secret: without one it does not start.
    let output = sluice(&["run"], &topology, &production);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("production mode needs a token key"),
        "{stderr}"
    );
    // With a secret, the demo users still refuse the start.
    let with_secret = [
        production.as_slice(),
        &[("SLUICE_JWT_SECRET", STRONG_SECRET)],
    ]
    .concat();
    let output = sluice(&["run"], &topology, &with_secret);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("production mode refuses to start"),
        "{stderr}"
    );
    assert!(
        stderr.contains("user \"alice\"")
            && stderr.contains("user \"bob\"")
            && stderr.contains("shipped demo password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wonderland"),
        "the error must not repeat the password"
    );

    let short = [production.as_slice(), &[("SLUICE_JWT_SECRET", "too-short")]].concat();
    let stderr = String::from_utf8_lossy(&sluice(&["run"], &topology, &short).stderr).to_string();
    assert!(
        stderr.contains("is 9 bytes; HS256 needs at least 32"),
        "{stderr}"
    );

    // Strong secret and a changed password: it starts (and drains on SIGTERM).
    let added = users_add(
        &dir.path().join("users.toml"),
        "alice",
        "a much better passphrase",
        &[],
    );
    assert!(added.status.success());
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["users", "remove", "bob", "--file"])
        .arg(dir.path().join("users.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("user bob removed"));
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["users", "list", "--file"])
        .arg(dir.path().join("users.toml"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "alice\n");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let strong = [
        ("SLUICE_MODE", "production"),
        ("SLUICE_JWT_SECRET", STRONG_SECRET),
        ("SLUICE_LOGIN_LISTEN", listen.as_str()),
        ("SLUICE_ORDER_LISTEN", listen.as_str()),
    ];
    let mut child = start_sluice(&topology, &dir.path().join("run.log"), &strong);
    wait_ready(&format!("http://{listen}"), &mut child).await;
    assert!(terminate(child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_secrets_passwords_and_tokens_never_reach_the_logs() {
    secrets_passwords_and_tokens_never_reach_the_logs(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_secrets_passwords_and_tokens_never_reach_the_logs() {
    secrets_passwords_and_tokens_never_reach_the_logs(Backend::Embedded).await;
}

async fn secrets_passwords_and_tokens_never_reach_the_logs(backend: Backend) {
    let port = free_port();
    let test = test_topology_on(backend, "secrets", &["alice"], |t| {
        t.ingress.login_listen = ([127, 0, 0, 1], port).into();
        t.ingress.order_listen = ([127, 0, 0, 1], port).into();
        t.ingress.auth.jwt_secret = Some(STRONG_SECRET.into());
    });
    let log_file = test.dir.path().join("run.log");
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_sluice(&test.path, &log_file, &[("RUST_LOG", "trace")]);
    wait_ready(&base, &mut child).await;
    let client = reqwest::Client::new();
    let token = login(&client, &base, "alice").await;
    assert_eq!(order(&client, &base, &token).await.0, 202);
    let wrong = "not-the-password-but-secret-too";
    client
        .post(format!("{base}/login"))
        .body(format!(r#"{{"username":"alice","password":"{wrong}"}}"#))
        .send()
        .await
        .unwrap();
    let forged = format!("{}.forged-signature", &token[..token.rfind('.').unwrap()]);
    assert_eq!(order(&client, &base, &forged).await.0, 401);
    client
        .post(format!("{base}/order"))
        .header("authorization", format!("Basic {STRONG_SECRET}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(terminate(child).success());

    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.lines().count() > 20, "expected a verbose log to search");
    let signature = &token[token.rfind('.').unwrap() + 1..];
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", wrong),
        ("token signature", signature),
        ("JWT secret", STRONG_SECRET),
        ("password hash", "$argon2id$"),
    ] {
        assert!(!log.contains(secret), "the log contains the {what}");
    }
}

/// The revocation id of a token's first (authority) block, in hex.
fn authority_revocation_id(token: &str, root_public: &str) -> String {
    let root = biscuit_auth::PublicKey::from_bytes_hex(
        root_public,
        biscuit_auth::builder::Algorithm::Ed25519,
    )
    .unwrap();
    let token = biscuit_auth::Biscuit::from_base64(token, root).unwrap();
    token.revocation_identifiers()[0]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_biscuit_roots_rotate_and_tokens_are_revoked_without_restart() {
    biscuit_roots_rotate_and_tokens_are_revoked_without_restart(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_biscuit_roots_rotate_and_tokens_are_revoked_without_restart() {
    biscuit_roots_rotate_and_tokens_are_revoked_without_restart(Backend::Embedded).await;
}

async fn biscuit_roots_rotate_and_tokens_are_revoked_without_restart(backend: Backend) {
    use sluice_ingress::capability::{attenuate, generate_root_keypair, mint, Restrictions};
    let ports = Ports::free();
    let mut test = test_topology_on(backend, "bisrot", &["alice"], |t| ports.apply(t));
    let dir = test.dir.path().to_path_buf();
    let (key_file, revoked_file) = (dir.join("biscuit-roots.pub"), dir.join("revoked.txt"));
    let (old_private, old_public) = generate_root_keypair();
    let (new_private, new_public) = generate_root_keypair();
    std::fs::write(&key_file, format!("# current root\n{old_public}\n")).unwrap();
    std::fs::write(&revoked_file, "# revoked capability tokens\n").unwrap();
    test.edit(|t| {
        t.ingress.auth.biscuit_public_key_file = Some(key_file.clone());
        t.ingress.auth.biscuit_revocation_file = Some(revoked_file.clone());
    });
    let base = ports.order_base();
    let mut child = start_sluice(&test.path, &dir.join("run.log"), &[("RUST_LOG", "warn")]);
    wait_ready(&base, &mut child).await;
    let hangup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    let client = reqwest::Client::new();
    // A capability token may not read orders: a genuine one gets 403 on a read, a refused
    // one 401. That probes the ingress's view of a token without placing an order.
    let probe = format!("{base}/order/01a2136e-1011-7166-b62d-77bb390cf211");
    let read_status = |token: &str| {
        let request = client.get(&probe).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Reloads (SIGHUP), then waits until `token` reads as `status` (403: accepted, 401: refused).
    let reload_until = |what: &'static str, token: &str, status: u16| {
        hangup();
        let (token, read_status) = (token.to_string(), &read_status);
        async move {
            eventually(Duration::from_secs(10), what, || async {
                read_status(&token).await == status
            })
            .await
        }
    };
    let mut accepted = 0;

    let revoked_later = mint(&old_private, "alice", Some(Duration::from_secs(600))).unwrap();
    let kept = mint(&old_private, "alice", Some(Duration::from_secs(600))).unwrap();
    let from_new_root = mint(&new_private, "alice", Some(Duration::from_secs(600))).unwrap();
    assert_eq!(order(&client, &base, &revoked_later).await.0, 202);
    accepted += 1;
    assert_eq!(
        order(&client, &base, &from_new_root).await,
        (401, "unauthorized".to_string()),
        "a root not yet trusted"
    );

    // Rotation, step 1: trust both roots; tokens of either work.
    std::fs::write(&key_file, format!("{new_public}\n{old_public}\n")).unwrap();
    reload_until("the new root to be trusted", &from_new_root, 403).await;
    for token in [&from_new_root, &kept] {
        assert_eq!(order(&client, &base, token).await.0, 202);
        accepted += 1;
    }

    // Revocation: one token (and everything attenuated from it) is refused; the rest work.
    let attenuated = attenuate(
        &revoked_later,
        &old_public,
        &Restrictions {
            products: Some(vec!["widget".into()]),
            max_quantity: None,
            expires_at: None,
        },
    )
    .unwrap();
    let id = authority_revocation_id(&revoked_later, &old_public);
    std::fs::write(&revoked_file, format!("# leaked on 2026-11-25\n{id}\n")).unwrap();
    reload_until("the token to be revoked", &revoked_later, 401).await;
    for token in [&revoked_later, &attenuated] {
        let response = client
            .post(format!("{base}/order"))
            .bearer_auth(token)
            .body(r#"{"userId":"alice","product":"widget","quantity":1}"#)
            .send()
            .await
            .unwrap();
        let (status, _, message) = error_of(response).await;
        assert_eq!(status, 401);
        assert!(message.contains("revoked"), "{message}");
    }
    assert_eq!(order(&client, &base, &kept).await.0, 202);
    accepted += 1;

    // A broken revocation file is refused at reload, naming the file and line; what was in
    // force stays in force: the revoked token stays revoked, the others keep working.
    std::fs::write(&revoked_file, format!("{id}\n{}\n", &id[..20])).unwrap();
    hangup();
    let run_log = dir.join("run.log");
    eventually(
        Duration::from_secs(10),
        "the failed reload to be logged",
        || async {
            let log = std::fs::read_to_string(&run_log).unwrap();
            log.contains("biscuit_revocation_file") && log.contains("line 2")
        },
    )
    .await;
    assert_eq!(
        order(&client, &base, &revoked_later).await,
        (401, "unauthorized".to_string())
    );
    assert_eq!(read_status(&revoked_later).await, 401);
    assert_eq!(order(&client, &base, &kept).await.0, 202);
    accepted += 1;
    std::fs::write(&revoked_file, format!("{id}\n")).unwrap();

    // Rotation, step 2: retire the old root; its tokens stop, the new root's go on.
    std::fs::write(&key_file, format!("{new_public}\n")).unwrap();
    reload_until("the old root to be retired", &kept, 401).await;
    assert_eq!(order(&client, &base, &from_new_root).await.0, 202);
    accepted += 1;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a reload must not stop the process"
    );
    assert!(terminate(child).success());

    let topology = test.topology();
    let log = sluice::pipeline::open_log(&topology).unwrap();
    assert_eq!(
        topic_records(log.as_ref(), &topology.ingress.orders_topic).await,
        accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_mariadb_biscuit_capabilities_hold_inside_and_outside_their_checks() {
    biscuit_capabilities_hold_inside_and_outside_their_checks(Backend::Services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_biscuit_capabilities_hold_inside_and_outside_their_checks() {
    biscuit_capabilities_hold_inside_and_outside_their_checks(Backend::Embedded).await;
}

async fn biscuit_capabilities_hold_inside_and_outside_their_checks(backend: Backend) {
    use sluice_ingress::capability::{attenuate, generate_root_keypair, mint, Restrictions};
    let (private, public) = generate_root_keypair();
    let mut test = test_topology_on(backend, "biscuit", &["alice"], |_| {});
    let key_file = test.dir.path().join("biscuit-root.pub");
    std::fs::write(&key_file, &public).unwrap();
    test.edit(|t| t.ingress.auth.biscuit_public_key_file = Some(key_file));
    let pipeline = RunningPipeline::start(&test, Parts::INGRESS).await;
    let client = reqwest::Client::new();
    let url = format!("{}/order", pipeline.base_order);
    let post =
        |token: String, body: &'static str| client.post(&url).bearer_auth(token).body(body).send();

    let token = mint(&private, "alice", Some(Duration::from_secs(600))).unwrap();
    let attenuated = attenuate(
        &token,
        &public,
        &Restrictions {
            products: Some(vec!["widget".into()]),
            max_quantity: Some(5),
            expires_at: Some(std::time::SystemTime::now() + Duration::from_secs(300)),
        },
    )
    .unwrap();
    let (other_private, _) = generate_root_keypair();
    let foreign = mint(&other_private, "alice", None).unwrap();
    // Well-formed (it parses) but claiming carol: only the signature check refuses it.
    let mut bytes = biscuit_auth::UnverifiedBiscuit::from_base64(&token)
        .unwrap()
        .to_vec()
        .unwrap();
    let at = bytes.windows(5).position(|w| w == b"alice").unwrap();
    bytes[at..at + 5].copy_from_slice(b"carol");
    let tampered = biscuit_auth::UnverifiedBiscuit::from(&bytes)
        .expect("the tampered token is still a biscuit")
        .to_base64()
        .unwrap();

    let cases: Vec<(&str, String, &'static str, u16)> = vec![
        (
            "full token",
            token.clone(),
            r#"{"userId":"alice","product":"gizmo","quantity":50}"#,
            202,
        ),
        (
            "attenuated, inside its checks",
            attenuated.clone(),
            r#"{"userId":"alice","product":"widget","quantity":5}"#,
            202,
        ),
        (
            "attenuated, other product",
            attenuated.clone(),
            r#"{"userId":"alice","product":"gadget","quantity":1}"#,
            403,
        ),
        (
            "attenuated, quantity above its bound",
            attenuated.clone(),
            r#"{"userId":"alice","product":"widget","quantity":6}"#,
            403,
        ),
        (
            "another user's orders",
            token.clone(),
            r#"{"userId":"bob","product":"widget","quantity":1}"#,
            403,
        ),
        (
            "signed by another root key",
            foreign,
            r#"{"userId":"alice","product":"widget","quantity":1}"#,
            401,
        ),
        (
            "tampered",
            tampered,
            r#"{"userId":"carol","product":"widget","quantity":1}"#,
            401,
        ),
    ];
    let mut accepted = 0;
    for (name, token, body, status) in cases {
        let response = post(token, body).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        if status == 202 {
            accepted += 1;
        } else {
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"]["code"].is_string(), "{name}: {body}");
            if status == 401 {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("signature"), "{name}: {body}");
            }
        }
    }
    // A capability token places orders under its checks; it cannot read them.
    let read = client
        .get(format!("{url}/01a2136e-1011-7166-b62d-77bb390cf211"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403);
    // JWTs still work beside capabilities.
    let jwt = login(&client, &pipeline.base_login, "alice").await;
    assert_eq!(
        post(jwt, r#"{"userId":"alice","product":"widget","quantity":1}"#)
            .await
            .unwrap()
            .status(),
        202
    );
    let topology = test.topology();
    assert_eq!(
        topic_records(pipeline.log.as_ref(), &topology.ingress.orders_topic).await,
        accepted + 1
    );
    pipeline.stop().await;
}

#[test]
fn rs256_keys_sign_and_verify_and_refuse_confusion() {
    use sluice_ingress::auth::TokenAuthority;
    use sluice_ingress::config::AuthConfig;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("rsa.pem").display().to_string();
    let public = dir.path().join("rsa.pub.pem").display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &private,
    ]);
    openssl(&["pkey", "-in", &private, "-pubout", "-out", &public]);
    let config = AuthConfig {
        jwt_secret: None,
        keys: vec![JwtKeyConfig {
            kid: "rsa-1".into(),
            algorithm: JwtAlgorithm::RS256,
            secret: None,
            private_key_file: Some(private.into()),
            public_key_file: Some(public.clone().into()),
        }],
        signing_kid: None,
        issuer: "sluice".into(),
        audience: Some("sluice-orders".into()),
        biscuit_public_key_file: None,
        biscuit_revocation_file: None,
        leeway_secs: 5,
        token_ttl_secs: 60,
        users_file: "users.toml".into(),
        generated_secret_file: "data/jwt-secret".into(),
    };
    let authority = TokenAuthority::from_config(&config, dir.path()).unwrap();
    let token = authority
        .issue_for("alice", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", 60)
        .unwrap();
    let claims = authority.verify(&token).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.aud.as_deref()),
        ("alice", Some("sluice-orders"))
    );
    let now = now_secs();
    let confused = hs256("rsa-1", &std::fs::read(&public).unwrap(), &claims_json(now));
    assert_eq!(
        authority.verify(&confused).unwrap_err().to_string(),
        "the token's algorithm is not accepted for its key"
    );
}

fn claims_json(now: u64) -> serde_json::Value {
    claims("alice", Some("sluice-orders"), now, now, now + 60)
}

/// `sluice token` with a ring that can only verify (an EdDSA key without its private key)
/// says which setting to change, not an HTTP error's message.
#[test]
fn sluice_token_says_which_key_setting_to_fix() {
    let mut test = test_topology_on(Backend::Embedded, "tokencli", &["alice"], |_| {});
    let dir = test.dir.path().to_path_buf();
    let (_, public) = ed25519_keys(&dir, "ed-verify");
    test.edit(|t| {
        t.ingress.auth.jwt_secret = None;
        t.ingress.auth.keys = vec![JwtKeyConfig {
            kid: "ed-verify".into(),
            algorithm: JwtAlgorithm::EdDSA,
            secret: None,
            private_key_file: None,
            public_key_file: Some(public.into()),
        }];
    });
    let output = sluice(&["token", "--user", "alice"], &test.path, &[]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("key \"ed-verify\" has no private_key_file")
            && stderr.contains("ingress.auth.signing_kid"),
        "{stderr}"
    );
}

/// `sluice_auth_verifications_total{kind}` of the process serving `base` (0 when absent).
async fn verifications(client: &reqwest::Client, base: &str, kind: &str) -> u64 {
    let text = scrape_metrics(client, base).await;
    let prefix = format!("sluice_auth_verifications_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Each request verifies its token once, whatever route and token kind, accepted or refused.
/// Runs its own process, so that no other test's requests are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_verifies_its_token_once() {
    use sluice_ingress::capability::{attenuate, Restrictions};
    let served = capability::Served::start("verifyonce", |_| {}).await;
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let counts = || async {
        (
            verifications(&client, &base, "jwt").await,
            verifications(&client, &base, "capability").await,
        )
    };
    assert_eq!(counts().await, (0, 0));

    let jwt = login(&client, &served.login_base, "alice").await;
    assert_eq!(counts().await, (0, 0), "issuing a token verifies none");
    assert_eq!(order(&client, &base, &jwt).await.0, 202);
    assert_eq!(counts().await, (1, 0), "POST /order with a JWT");
    let read = client
        .get(format!("{base}/order/01a2136e-1011-7166-b62d-77bb390cf211"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 404);
    assert_eq!(counts().await, (2, 0), "GET /order/{{id}} with a JWT");
    let forged = format!("{}.forged-signature", &jwt[..jwt.rfind('.').unwrap()]);
    assert_eq!(order(&client, &base, &forged).await.0, 401);
    assert_eq!(counts().await, (3, 0), "a refused JWT");

    let capability = served.token();
    assert_eq!(order(&client, &base, &capability).await.0, 202);
    assert_eq!(
        counts().await,
        (3, 1),
        "POST /order with a capability token"
    );
    let gizmos_only = attenuate(
        &capability,
        &served.public,
        &Restrictions {
            products: Some(vec!["gizmo".into()]),
            max_quantity: None,
            expires_at: None,
        },
    )
    .unwrap();
    assert_eq!(order(&client, &base, &gizmos_only).await.0, 403);
    assert_eq!(
        counts().await,
        (3, 2),
        "a capability token refused by its checks"
    );
    assert!(terminate(served.process).success());
}

struct NoOrders;

#[async_trait::async_trait]
impl sluice_core::lookup::OrderLookup for NoOrders {
    async fn find(
        &self,
        _: &str,
        _: uuid::Uuid,
    ) -> Result<sluice_core::lookup::OrderStatus, sluice_core::lookup::LookupError> {
        Ok(sluice_core::lookup::OrderStatus::Unknown)
    }
}

/// Start-up and reload read the users file on a blocking thread, not on the async worker.
/// The users file is a named pipe that a thread fills only after a while: on a
/// single-threaded runtime a ticker keeps ticking meanwhile, which it could not do if the read
/// blocked the worker.
#[cfg(unix)]
#[tokio::test(flavor = "current_thread")]
async fn loading_users_leaves_the_async_worker_free() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let test = test_topology_on(
        Backend::Embedded,
        "offworker",
        &["alice", "bob", "carol"],
        |_| {},
    );
    let mut topology = test.topology();
    topology.ingress.mode = sluice_ingress::config::Mode::Production;
    topology.ingress.auth.jwt_secret = Some(STRONG_SECRET.into());
    let users_file = topology.resolve_path(&topology.ingress.auth.users_file);
    let contents = std::fs::read(&users_file).unwrap();
    // Replaces the users file by a pipe that gets `contents` after 300 ms.
    let slow_users_file = || {
        std::fs::remove_file(&users_file).unwrap();
        assert!(Command::new("mkfifo")
            .arg(&users_file)
            .status()
            .unwrap()
            .success());
        let (path, contents) = (users_file.clone(), contents.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(path, contents).unwrap();
        })
    };
    let log = sluice::pipeline::open_log(&topology).unwrap();
    let ticks = Arc::new(AtomicU32::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let writer = slow_users_file();
    let started = Instant::now();
    let ingress = sluice_ingress::Ingress::new(
        topology.ingress.clone(),
        &topology.base_dir,
        log,
        Arc::new(NoOrders),
    )
    .await
    .expect("strong settings and users pass production mode");
    let (during_start, took) = (ticks.swap(0, Ordering::Relaxed), started.elapsed());
    writer.join().unwrap();
    assert_eq!(ingress.state().users().len(), 3);
    assert!(
        during_start >= 5,
        "the worker ticked {during_start} times in {took:?} of start-up"
    );

    let writer = slow_users_file();
    let started = Instant::now();
    ingress.reloader().reload(|| Ok(None)).await.unwrap();
    let (during_reload, took) = (ticks.swap(0, Ordering::Relaxed), started.elapsed());
    writer.join().unwrap();
    assert!(
        during_reload >= 5,
        "the worker ticked {during_reload} times in {took:?} of reload"
    );
    ticker.abort();
}
