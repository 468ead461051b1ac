//! Users under attack, over real HTTP against the `sluice` binary on the embedded defaults:
//! `sluice users add` refuses weak passwords; the shipped demo users (whose passwords the
//! README publishes) are disabled when the ingress is reachable from the network in
//! development mode and refuse the start, or a reload, in production mode; and a users file
//! of many users starts and reloads (the timings are in `cargo bench --bench users`).

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{order, sluice, users_add, STRONG_SECRET};
use crate::common::*;
use sluice_ingress::config::Mode;

const SHIPPED_USERS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/users.toml"));

#[test]
fn users_add_refuses_weak_short_and_name_containing_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    for (password, reason) in [
        ("Wonderland", "well-known passwords"),
        ("qwertyuiop", "well-known passwords"),
        ("password123", "well-known passwords"),
        ("tiny-pw", "fewer than 10 characters"),
        ("i am carol, hi", "contains the user name"),
    ] {
        let output = users_add(&file, "carol", password, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{password} was accepted");
        assert!(stderr.contains(reason), "{password}: {stderr}");
        assert!(stderr.contains("--allow-weak"), "{stderr}");
        assert!(
            !stderr.to_lowercase().contains(&password.to_lowercase()),
            "the error repeats the password: {stderr}"
        );
        assert!(!file.exists(), "a refused password must write nothing");
    }

    // A demo may insist, with a warning; only the hash is written, nothing says "weak".
    let output = users_add(&file, "carol", "Wonderland", &["--allow-weak"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("--allow-weak"),
        "{stderr}"
    );
    assert!(!stderr.to_lowercase().contains("wonderland"), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("$argon2id$"));
    for trace in ["wonderland", "weak", "allow"] {
        assert!(!text.to_lowercase().contains(trace), "{trace} in {text}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "users file mode {mode:o}");
    }

    // A good password needs no flag and prints no warning.
    let output = users_add(&file, "dave", PASSWORD, &[]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).is_empty());
    assert!(String::from_utf8_lossy(&output.stdout).contains("user dave saved"));
    let listed = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["users", "list", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "carol\ndave\n");
}

/// Appends the shipped demo users (alice/wonderland, bob/builder) to `test`'s users file.
fn add_demo_users(test: &TestTopology) {
    let topology = test.topology();
    let file = topology.resolve_path(&topology.ingress.auth.users_file);
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push('\n');
    text.push_str(SHIPPED_USERS);
    std::fs::write(&file, text).unwrap();
}

/// `POST /login`; the status and the body.
async fn try_login(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> (u16, String) {
    let response = client
        .post(format!("{base}/login"))
        .json(&serde_json::json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A token for `user` from `sluice token`, signed with `topology`'s key.
fn minted_token(topology: &Path, user: &str) -> String {
    let output = sluice(&["token", "--user", user], topology, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The lines of the JSON log at `path` whose text contains `needle`.
fn log_lines(path: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_development_demo_users_work_on_loopback_only() {
    // The order listener on every interface: the ingress is reachable from the network. The
    // test still talks to it over loopback only.
    let (login_port, order_port) = (free_port(), free_port());
    let mut test = test_topology_on(Backend::Embedded, "demo_dev", &["carol"], |t| {
        t.ingress.login_listen = ([127, 0, 0, 1], login_port).into();
        t.ingress.order_listen = ([0, 0, 0, 0], order_port).into();
    });
    add_demo_users(&test);
    let log_file = test.dir.path().join("reachable.log");
    let mut child = start_sluice(&test.path, &log_file, &[]);
    let login_base = format!("http://127.0.0.1:{login_port}");
    let order_base = format!("http://127.0.0.1:{order_port}");
    wait_ready(&login_base, &mut child).await;
    let client = reqwest::Client::new();

    // Alice's right password fails exactly as an unknown user's login does.
    let alice = try_login(&client, &login_base, "alice", "wonderland").await;
    let stranger = try_login(&client, &login_base, "mallory", "wonderland").await;
    assert_eq!(alice.0, 401);
    assert_eq!(alice, stranger, "a disabled demo user must look unknown");
    assert_eq!(
        try_login(&client, &login_base, "bob", "builder").await.0,
        401
    );
    assert_eq!(
        try_login(&client, &login_base, "carol", PASSWORD).await.0,
        200
    );
    // Tokens for them are refused; other users' are not.
    let alice_token = minted_token(&test.path, "alice");
    assert_eq!(
        order(&client, &order_base, &alice_token).await,
        (401, "unauthorized".to_string())
    );
    let carol_token = minted_token(&test.path, "carol");
    let carol_reads = client
        .get(format!(
            "{order_base}/order/01a2136e-1011-7166-b62d-77bb390cf211"
        ))
        .bearer_auth(&carol_token)
        .send()
        .await
        .unwrap();
    assert_eq!(carol_reads.status(), 404, "carol's token is accepted");
    assert!(terminate(child).success());
    let warnings = log_lines(&log_file, "demo users disabled");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("alice, bob") && warnings[0].contains("sluice users add"),
        "{}",
        warnings[0]
    );
    assert!(!std::fs::read_to_string(&log_file)
        .unwrap()
        .contains("wonderland"));

    // On loopback listeners only, the README's walk-through works as documented.
    let ports = Ports::free();
    test.edit(|t| ports.apply(t));
    let log_file = test.dir.path().join("loopback.log");
    let mut child = start_sluice(&test.path, &log_file, &[]);
    wait_ready(&ports.login_base(), &mut child).await;
    let (status, body) = try_login(&client, &ports.login_base(), "alice", "wonderland").await;
    assert_eq!(status, 200, "{body}");
    let alice_token = minted_token(&test.path, "alice");
    assert_eq!(
        order(&client, &ports.order_base(), &alice_token).await.0,
        202
    );
    assert!(terminate(child).success());
    assert!(log_lines(&log_file, "demo users disabled").is_empty());
    let warned = log_lines(&log_file, "shipped demo passwords");
    assert_eq!(warned.len(), 1, "{warned:?}");

    // Loopback listeners behind a trusted proxy serve other machines: disabled again.
    let ports = Ports::free();
    test.edit(|t| {
        ports.apply(t);
        t.ingress.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    let log_file = test.dir.path().join("proxied.log");
    let mut child = start_sluice(&test.path, &log_file, &[]);
    wait_ready(&ports.login_base(), &mut child).await;
    let alice = try_login(&client, &ports.login_base(), "alice", "wonderland").await;
    let stranger = try_login(&client, &ports.login_base(), "mallory", "wonderland").await;
    assert_eq!(alice.0, 401);
    assert_eq!(alice, stranger, "a disabled demo user must look unknown");
    assert_eq!(
        try_login(&client, &ports.login_base(), "carol", PASSWORD)
            .await
            .0,
        200
    );
    assert!(terminate(child).success());
    let warnings = log_lines(&log_file, "demo users disabled");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("trusted_proxies"), "{}", warnings[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_production_demo_users_refuse_the_start_and_the_reload() {
    let ports = Ports::free();
    let test = test_topology_on(Backend::Embedded, "demo_prod", &["carol"], |t| {
        ports.apply(t);
        t.ingress.mode = Mode::Production;
        t.ingress.auth.jwt_secret = Some(STRONG_SECRET.into());
    });
    let topology = test.topology();
    let users_file = topology.resolve_path(&topology.ingress.auth.users_file);
    let carol_only = std::fs::read_to_string(&users_file).unwrap();
    add_demo_users(&test);

    let output = sluice(&["run"], &test.path, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("production mode refuses to start"),
        "{stderr}"
    );
    for name in ["alice", "bob"] {
        assert!(
            stderr.contains(&format!("user {name:?}"))
                && stderr.contains(&format!("sluice users remove {name}")),
            "{stderr}"
        );
    }
    assert!(
        !stderr.contains("carol"),
        "carol's password is her own: {stderr}"
    );
    assert!(!stderr.contains("wonderland") && !stderr.contains("$argon2id$"));

    // Without them it starts; a reload that brings them back is refused and changes nothing.
    std::fs::write(&users_file, &carol_only).unwrap();
    let log_file = test.dir.path().join("run.log");
    let mut child = start_sluice(&test.path, &log_file, &[]);
    wait_ready(&ports.login_base(), &mut child).await;
    add_demo_users(&test);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&users_file)
        .unwrap()
        .write_all(
            format!(
                "\n[[users]]\nname = \"dave\"\npassword_hash = {:?}\n",
                sluice_ingress::users::hash_password(PASSWORD).unwrap()
            )
            .as_bytes(),
        )
        .unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    eventually(Duration::from_secs(20), "the refused reload", || async {
        !log_lines(&log_file, "reload failed").is_empty()
    })
    .await;
    let failure = log_lines(&log_file, "reload failed").join("\n");
    assert!(failure.contains("shipped demo password"), "{failure}");
    let client = reqwest::Client::new();
    let base = ports.login_base();
    assert_eq!(
        try_login(&client, &base, "alice", "wonderland").await.0,
        401
    );
    assert_eq!(
        try_login(&client, &base, "dave", PASSWORD).await.0,
        401,
        "a refused reload must change nothing"
    );
    assert_eq!(try_login(&client, &base, "carol", PASSWORD).await.0, 200);
    assert!(terminate(child).success());
}

/// A users file of `count` users `user0`… sharing one hash of [`PASSWORD`] (hashed once).
fn many_users(count: usize) -> String {
    let hash = sluice_ingress::users::hash_password(PASSWORD).unwrap();
    let mut text = String::with_capacity(count * 130);
    for n in 0..count {
        text.push_str(&format!(
            "[[users]]\nname = \"user{n}\"\npassword_hash = \"{hash}\"\n\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_twenty_thousand_users_reaches_ingress_listening_and_reloads() {
    const USERS: usize = 20_000;
    let ports = Ports::free();
    let test = test_topology_on(Backend::Embedded, "many_users", &[], |t| ports.apply(t));
    let topology = test.topology();
    let users_file = topology.resolve_path(&topology.ingress.auth.users_file);
    std::fs::write(&users_file, many_users(USERS)).unwrap();
    let log_file = test.dir.path().join("run.log");
    let mut child = start_sluice(&test.path, &log_file, &[]);
    eventually(Duration::from_secs(60), "ingress listening", || async {
        !log_lines(&log_file, "ingress listening").is_empty()
    })
    .await;
    wait_ready(&ports.login_base(), &mut child).await;
    let client = reqwest::Client::new();
    let base = ports.login_base();
    let last = format!("user{}", USERS - 1);
    assert_eq!(try_login(&client, &base, &last, PASSWORD).await.0, 200);
    assert_eq!(
        try_login(&client, &base, &last, "not the password").await.0,
        401
    );
    assert_eq!(try_login(&client, &base, "nobody", PASSWORD).await.0, 401);

    // One more user, then a reload: the new user logs in.
    let mut text = many_users(USERS + 1);
    text.insert_str(0, "# regenerated\n");
    std::fs::write(&users_file, text).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let reloaded = format!("\"sluice.users\":{}", USERS + 1);
    eventually(Duration::from_secs(60), "the reload", || async {
        log_lines(&log_file, "users reloaded")
            .iter()
            .any(|line| line.contains(&reloaded))
    })
    .await;
    let newest = format!("user{USERS}");
    assert_eq!(try_login(&client, &base, &newest, PASSWORD).await.0, 200);
    assert!(terminate(child).success());
}
