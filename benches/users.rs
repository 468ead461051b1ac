//! `cargo bench --bench users`: what a large users file costs the `sluice` binary (release
//! build, embedded defaults, free ports), printed as a table next to a 2-user file:
//!
//! 1. start: from spawning `sluice run` to its `ingress listening` log line;
//! 2. reload: from SIGHUP to its `… users reloaded` log line, and the slowest authenticated
//!    request (`GET /order/{id}`, which looks the user up) served meanwhile;
//! 3. memory: the process's resident memory once ready, and the user table's share (the
//!    difference to the 2-user file, per user), next to `Users::heap_bytes`;
//! 4. a login's latency (median) for a known user and for an unknown one;
//! 5. the parse and validation of the file inside this process (`Users::load`).
//!
//! The file has SLUICE_BENCH_USERS users (default 100,000), `user0`…, all sharing one argon2id
//! hash (one password is hashed, so writing the file is fast).
#![allow(clippy::print_stdout)] // a benchmark prints its figures

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sluice_ingress::config::Quota;
use sluice_ingress::Users;

/// What one run of the binary measured.
struct Figures {
    users: usize,
    start: Duration,
    reload: Duration,
    rss_mib: f64,
    login_known: Duration,
    login_unknown: Duration,
    request_before_reload: Duration,
    request_during_reload: Duration,
}

/// Resident memory of process `pid`, in MiB (Linux).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// How many lines of the log at `path` contain `needle`.
fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

/// Waits (polling every millisecond, up to a minute) until the log at `path` has more than
/// `before` lines containing `needle`.
async fn wait_for_line(path: &Path, needle: &str, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_lines(path, needle) <= before {
        assert!(Instant::now() < deadline, "no {needle:?} line in a minute");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A users file of `count` users `user0`… sharing `hash`.
fn users_file_text(count: usize, hash: &str) -> String {
    let mut text = String::with_capacity(count * 140);
    text.push_str("# Sluice users: benchmark file, one hash shared by every user.\n");
    for n in 0..count {
        text.push_str(&format!(
            "[[users]]\nname = \"user{n}\"\npassword_hash = \"{hash}\"\n\n"
        ));
    }
    text
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The latency of one `POST /login`, checking its status.
async fn login_time(client: &reqwest::Client, base: &str, user: &str, status: u16) -> Duration {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/login"))
        .json(&serde_json::json!({ "username": user, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), status, "login of {user}");
    started.elapsed()
}

/// Sends authenticated `GET /order/{id}` requests one after another until `stop`; returns
/// the slowest.
async fn slowest_request(
    client: reqwest::Client,
    base: String,
    token: String,
    stop: tokio_util::sync::CancellationToken,
) -> Duration {
    let mut slowest = Duration::ZERO;
    while !stop.is_cancelled() {
        let started = Instant::now();
        let response = client
            .get(format!("{base}/order/01a2136e-1011-7166-b62d-77bb390cf211"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "the token must be accepted");
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Starts the binary on a users file of `users` users, measures, and stops it.
async fn run_binary(users: usize, hash: &str) -> Figures {
    let ports = Ports::free();
    let many = NonZeroU32::new(100_000).unwrap();
    let test = test_topology_on(Backend::Embedded, "busers", &[], |t| {
        ports.apply(t);
        // The benchmark logs in (and fails) many times from one address: no limit may
        // refuse or delay it.
        let limits = &mut t.ingress.rate_limits;
        limits.logins_per_address = Quota::per_second(many, many);
        limits.login_failures_per_user_address = Quota::per_second(many, many);
        limits.login_failures_per_address = Quota::per_second(many, many);
        limits.login_failures_per_user = Quota::per_second(many, many);
    });
    let topology = test.topology();
    let users_file = topology.resolve_path(&topology.ingress.auth.users_file);
    std::fs::write(&users_file, users_file_text(users, hash)).unwrap();
    let log = test.dir.path().join("run.log");

    let started = Instant::now();
    let mut child = start_sluice(&test.path, &log, &[("RUST_LOG", "info")]);
    wait_for_line(&log, "ingress listening", 0).await;
    let start = started.elapsed();
    wait_ready(&ports.login_base(), &mut child).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Before any login: a password check allocates argon2's 19 MiB.
    let rss_mib = rss_mib(child.id());

    let client = reqwest::Client::new();
    let base = ports.login_base();
    let known = format!("user{}", users - 1);
    let (mut known_times, mut unknown_times) = (Vec::new(), Vec::new());
    for n in 0..9 {
        known_times.push(login_time(&client, &base, &known, 200).await);
        unknown_times.push(login_time(&client, &base, &format!("nobody{n}"), 401).await);
    }
    let token = {
        let response = client
            .post(format!("{base}/login"))
            .json(&serde_json::json!({ "username": known, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    };

    // The slowest authenticated request over 300 ms without a reload, then during one.
    let probe = |stop: &tokio_util::sync::CancellationToken| {
        tokio::spawn(slowest_request(
            client.clone(),
            ports.order_base(),
            token.clone(),
            stop.clone(),
        ))
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let quiet = probe(&stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let request_before_reload = quiet.await.unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let busy = probe(&stop);
    let before = count_lines(&log, "users reloaded");
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for_line(&log, "users reloaded", before).await;
    let reload = started.elapsed();
    stop.cancel();
    let request_during_reload = busy.await.unwrap();
    assert!(terminate(child).success());
    Figures {
        users,
        start,
        reload,
        rss_mib,
        login_known: median(known_times),
        login_unknown: median(unknown_times),
        request_before_reload,
        request_during_reload,
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let users: usize = std::env::var("SLUICE_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let hash = sluice_ingress::users::hash_password(PASSWORD).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let small = runtime.block_on(run_binary(2, &hash));
    let large = runtime.block_on(run_binary(users, &hash));

    // The parse and validation alone, in this process, and the table's own estimate.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(&file, users_file_text(users, &hash)).unwrap();
    let started = Instant::now();
    let table = Users::load(&file).unwrap();
    let parse = started.elapsed();
    let estimate = table.heap_bytes();
    assert_eq!(table.len(), users);
    drop(table);

    let per_user = (large.rss_mib - small.rss_mib) * 1024.0 * 1024.0 / (users - 2) as f64;
    let rows: Vec<(String, String, String)> = vec![
        (
            "spawn → `ingress listening`".into(),
            ms(small.start),
            ms(large.start),
        ),
        (
            "SIGHUP → `users reloaded`".into(),
            ms(small.reload),
            ms(large.reload),
        ),
        (
            "slowest GET /order/{id}: quiet / during reload".into(),
            format!(
                "{} / {}",
                ms(small.request_before_reload),
                ms(small.request_during_reload)
            ),
            format!(
                "{} / {}",
                ms(large.request_before_reload),
                ms(large.request_during_reload)
            ),
        ),
        (
            "resident memory once ready".into(),
            format!("{:.1} MiB", small.rss_mib),
            format!("{:.1} MiB", large.rss_mib),
        ),
        (
            "user table (RSS difference)".into(),
            "-".into(),
            format!(
                "{:.1} MiB, {per_user:.0} B/user",
                large.rss_mib - small.rss_mib
            ),
        ),
        (
            "user table (Users::heap_bytes)".into(),
            "-".into(),
            format!(
                "{:.1} MiB, {:.0} B/user",
                estimate as f64 / (1024.0 * 1024.0),
                estimate as f64 / users as f64
            ),
        ),
        (
            "Users::load (read, parse, validate)".into(),
            "-".into(),
            ms(parse),
        ),
        (
            "login, known user (median of 9)".into(),
            ms(small.login_known),
            ms(large.login_known),
        ),
        (
            "login, unknown user (median of 9)".into(),
            ms(small.login_unknown),
            ms(large.login_unknown),
        ),
    ];
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    println!();
    println!(
        "{:width$} | {:>22} | {:>28}",
        "users file",
        format!("{} users", small.users),
        format!("{} users", large.users)
    );
    println!("{}", "-".repeat(width + 56));
    for (what, a, b) in rows {
        println!("{what:width$} | {a:>22} | {b:>28}");
    }
}
