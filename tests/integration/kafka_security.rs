//! Sluice on a secured Kafka cluster: the `sluice` binary over the test broker's SASL_SSL
//! listener (`scripts/infra` makes its CA and users; `scripts/infra env` names them), with the
//! SASL password taken from the environment through the topology's `${VAR}`.
//!
//! - the whole pipeline over SASL_SSL with SCRAM-SHA-512: login, an order answered 2xx and
//!   stored in its MariaDB shard;
//! - `sluice check --connect` succeeds with PLAIN and SCRAM-SHA-256 too;
//! - a wrong password and a CA that did not sign the broker's certificate each make
//!   `sluice check --connect` fail quickly, saying what to fix.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The environment variable the test topologies take the SASL password from.
const PASSWORD_VAR: &str = "SLUICE_TEST_SECURE_KAFKA_PASSWORD";
/// Longest a failing `sluice check --connect` may take: it must not hang on a refusal.
const CHECK_LIMIT: Duration = Duration::from_secs(30);

/// The SASL_SSL listener of the test broker, as `scripts/infra env` exports it.
struct Secured {
    brokers: String,
    ca: String,
    other_ca: String,
    scram: (String, String),
    plain: (String, String),
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `bash scripts/infra up && eval \"$(bash scripts/infra env)\"` (scripts/infra makes the SASL_SSL listener)")
    })
}

fn secured() -> Secured {
    Secured {
        brokers: var("SLUICE_TEST_KAFKA_SASL_SSL_BROKERS"),
        ca: var("SLUICE_TEST_KAFKA_CA"),
        other_ca: var("SLUICE_TEST_KAFKA_OTHER_CA"),
        scram: (
            var("SLUICE_TEST_KAFKA_SCRAM_USER"),
            var("SLUICE_TEST_KAFKA_SCRAM_PASSWORD"),
        ),
        plain: (
            var("SLUICE_TEST_KAFKA_PLAIN_USER"),
            var("SLUICE_TEST_KAFKA_PLAIN_PASSWORD"),
        ),
    }
}

/// Points a services topology at the SASL_SSL listener with `mechanism`, `user` and `ca`;
/// the password is `${PASSWORD_VAR}`, for the process's environment to fill in.
fn secure(topology: &mut sluice::topology::Topology, mechanism: &str, user: &str, ca: &str) {
    let kafka = topology
        .log
        .kafka
        .as_mut()
        .expect("a services topology has [log.kafka]");
    kafka.brokers = secured().brokers;
    for (key, value) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", mechanism),
        ("sasl.username", user),
        ("sasl.password", &format!("${{{PASSWORD_VAR}}}")),
        ("ssl.ca.location", ca),
    ] {
        kafka.properties.insert(key.to_string(), value.to_string());
    }
}

/// What `sluice check --connect` did: whether it succeeded, its output, how long it took.
struct Checked {
    success: bool,
    output: String,
    took: Duration,
}

/// Runs `sluice check <topology> --connect` with the SASL password in the environment;
/// fails the test if it runs longer than [`CHECK_LIMIT`].
async fn check_connect(test: &TestTopology, password: &str) -> Checked {
    let dir = test.dir.path().to_path_buf();
    let path = test.path.clone();
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        let (stdout, stderr) = (dir.join("check.out"), dir.join("check.err"));
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("check")
            .arg(&path)
            .arg("--connect")
            .env(PASSWORD_VAR, &password)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start sluice check");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > CHECK_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`sluice check --connect` still ran after {CHECK_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output =
            std::fs::read_to_string(&stdout).unwrap() + &std::fs::read_to_string(&stderr).unwrap();
        Checked {
            success: status.success(),
            output,
            took: started.elapsed(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sasl_ssl_with_scram_sha_512_an_order_is_acknowledged_and_stored() {
    let secured = secured();
    let (user, password) = secured.scram.clone();
    let customer = "tls_customer";
    let ports = Ports::free();
    let test = test_topology("tls512", &[customer], |t| {
        ports.apply(t);
        secure(t, "SCRAM-SHA-512", &user, &secured.ca);
    });
    let written = std::fs::read_to_string(&test.path).unwrap();
    assert!(
        !written.contains(&password),
        "the password must come from the environment, not the file"
    );

    let checked = check_connect(&test, &password).await;
    assert!(
        checked.success,
        "check --connect failed:\n{}",
        checked.output
    );

    let log = test.dir.path().join("sluice.log");
    let mut child = start_sluice(&test.path, &log, &[(PASSWORD_VAR, password.as_str())]);
    wait_ready(&ports.order_base(), &mut child).await;
    let client = reqwest::Client::new();
    let token = login(&client, &ports.login_base(), customer).await;
    let response = client
        .post(format!("{}/order", ports.order_base()))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "userId": customer, "product": "widget", "quantity": 3 }))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "POST /order over SASL_SSL answered {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["orderId"].as_str().unwrap().replace('-', "");
    let shard = test
        .topology()
        .shard_map()
        .unwrap()
        .shard_for_user(customer);
    eventually(
        Duration::from_secs(60),
        "the order in its MariaDB shard",
        || async {
            order_lines(&test, shard)
                .await
                .iter()
                .any(|line| line.starts_with(&id))
        },
    )
    .await;
    let stored = order_lines(&test, shard).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].contains("|widget|3|"), "{stored:?}");
    assert!(terminate(child).success(), "sluice did not stop cleanly");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(&password), "the password reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_scram_sha_256_connect_over_sasl_ssl() {
    let secured = secured();
    for (mechanism, (user, password)) in [
        ("PLAIN", secured.plain.clone()),
        ("SCRAM-SHA-256", secured.scram.clone()),
    ] {
        let test = test_topology("tlsmech", &[], |t| {
            secure(t, mechanism, &user, &secured.ca);
        });
        let checked = check_connect(&test, &password).await;
        assert!(
            checked.success,
            "check --connect with {mechanism} failed:\n{}",
            checked.output
        );
        assert!(
            checked.output.contains("missing; `sluice run` creates it"),
            "{}",
            checked.output
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_check_connect_saying_authentication_failed() {
    let secured = secured();
    let wrong = "not-the-password-4711";
    for (mechanism, user) in [
        ("SCRAM-SHA-512", secured.scram.0.clone()),
        ("PLAIN", secured.plain.0.clone()),
    ] {
        let test = test_topology("tlsauth", &[], |t| {
            secure(t, mechanism, &user, &secured.ca);
        });
        let checked = check_connect(&test, wrong).await;
        assert!(
            !checked.success,
            "a wrong {mechanism} password passed:\n{}",
            checked.output
        );
        assert!(
            checked.output.contains("SASL authentication failed")
                && checked.output.contains("sasl.password"),
            "{}",
            checked.output
        );
        assert!(
            !checked.output.contains(wrong),
            "the password was printed: {}",
            checked.output
        );
        assert!(
            checked.took < Duration::from_secs(12),
            "a refused login took {:?} to report",
            checked.took
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_broker_fails_check_connect_saying_certificate_verification_failed(
) {
    let secured = secured();
    let (user, password) = secured.scram.clone();
    let test = test_topology("tlsca", &[], |t| {
        secure(t, "SCRAM-SHA-512", &user, &secured.other_ca);
    });
    let checked = check_connect(&test, &password).await;
    assert!(
        !checked.success,
        "an unrelated CA passed:\n{}",
        checked.output
    );
    assert!(
        checked
            .output
            .contains("TLS certificate verification failed")
            && checked.output.contains("ssl.ca.location"),
        "{}",
        checked.output
    );
    assert!(!checked.output.contains(&password), "{}", checked.output);
    assert!(
        checked.took < Duration::from_secs(12),
        "an unverified certificate took {:?} to report",
        checked.took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_with_a_wrong_password_stops_at_once_saying_authentication_failed() {
    let secured = secured();
    let wrong = "not-the-password-0815";
    let ports = Ports::free();
    let test = test_topology("tlsrun", &[], |t| {
        ports.apply(t);
        secure(t, "SCRAM-SHA-512", &secured.scram.0, &secured.ca);
    });
    let log = test.dir.path().join("sluice.log");
    let started = Instant::now();
    let mut child = start_sluice(&test.path, &log, &[(PASSWORD_VAR, wrong)]);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "sluice run kept running with refused credentials"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("cannot connect to the Kafka cluster: SASL authentication failed"),
        "{logged}"
    );
    assert!(
        !logged.contains(wrong),
        "the password reached the log: {logged}"
    );
}
