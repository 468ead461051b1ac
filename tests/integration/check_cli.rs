//! `sluice check` as a user runs it: the binary against real Kafka and MariaDB (and the
//! embedded log), with text and JSON output. A good topology passes; a wrong shard password,
//! a shard port nobody listens on, a missing key file and a users file with a bad line are
//! all reported in one run, each with the setting to fix; production mode turns the weak
//! settings into errors, development mode into warnings.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use sluice_ingress::Mode;

/// Longest a `sluice check --connect` may take, whatever it finds.
const CHECK_LIMIT: Duration = Duration::from_secs(30);

/// Runs `sluice check` with `args` on the topology at `path`; fails the test past
/// [`CHECK_LIMIT`]. Returns the output and how long it took.
async fn check(path: &Path, args: &[&str]) -> (Output, Duration) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("check")
        .arg("--topology")
        .arg(path)
        .args(args)
        .env_remove("SLUICE_TOPOLOGY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let child = command.spawn().expect("start sluice check");
        let pid = child.id();
        let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
        while !waiter.is_finished() {
            if started.elapsed() > CHECK_LIMIT {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("`sluice check` still ran after {CHECK_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (waiter.join().unwrap(), started.elapsed())
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn everything(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The JSON document of `--format json`.
fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not one JSON document ({error}): {}", everything(output)))
}

/// The problems of a JSON report as `(severity, component, setting, message)`.
fn problems(report: &serde_json::Value) -> Vec<(String, String, String, String)> {
    report["problems"]
        .as_array()
        .expect("a problems array")
        .iter()
        .map(|p| {
            let field = |name: &str| p[name].as_str().unwrap_or_default().to_string();
            (
                field("severity"),
                field("component"),
                field("setting"),
                field("message"),
            )
        })
        .collect()
}

/// Creates the shard databases and schema, as `sluice run` would.
async fn migrate_shards(test: &TestTopology) {
    let topology = test.topology();
    for shard in &topology.shards {
        let writer = sluice_sinks::open_shard(&shard.name, &shard.url, &topology.base_dir).unwrap();
        writer.migrate().await.unwrap();
        writer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_kafka_and_mariadb_topology_checks_ok_in_text_and_json() {
    let test = test_topology_on(Backend::Services, "checkok", &["alice"], |_| {});
    migrate_shards(&test).await;

    let (output, _) = check(&test.path, &["--connect"]).await;
    let text = everything(&output);
    assert!(output.status.success(), "{text}");
    assert!(!text.contains("error:"), "{text}");
    let version = sluice_sinks::migrations::latest_version();
    for shard in &test.topology().shards {
        assert!(
            text.contains(&format!(
                "shard {:?} at {}",
                shard.name,
                shard.url.rsplit_once('@').unwrap().1
            )) && text.contains(&format!(
                "schema at version {version}, as this build expects"
            )),
            "{text}"
        );
    }
    assert!(text.contains("users: 1 in"), "{text}");
    // The topics are missing until `sluice run` creates them: fine, said as such.
    assert!(text.contains("missing; `sluice run` creates it"), "{text}");

    let (output, _) = check(&test.path, &["--connect", "--format", "json"]).await;
    assert!(output.status.success(), "{}", everything(&output));
    let report = json(&output);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["topology"], test.path.display().to_string());
    assert_eq!(problems(&report), vec![], "{report:#}");
    let checked = &report["checked"];
    assert_eq!(checked["shards"], 4, "{report:#}");
    assert_eq!(checked["shards_reachable"], 4, "{report:#}");
    assert_eq!(
        checked["kafka_topics"],
        test.topology().topics.len(),
        "{report:#}"
    );
    assert_eq!(checked["users"], 1, "{report:#}");

    // Without --connect: the file only, in the same JSON shape.
    let (output, _) = check(&test.path, &["--format", "json"]).await;
    let report = json(&output);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["checked"]["topics"], test.topology().topics.len());
    assert!(report["checked"].get("shards_reachable").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_is_listed_in_one_run_with_the_setting_to_fix() {
    let nobody = free_port();
    let test = test_topology_on(Backend::Services, "checkbad", &["alice"], |t| {
        // Shard 1: a wrong password. Shard 2: a port nobody listens on.
        t.shards[1].url = t.shards[1]
            .url
            .replacen(":sluice@", ":not-the-password@", 1);
        t.shards[2].url = format!("mysql://root:sluice@127.0.0.1:{nobody}/checkbad");
        // A biscuit public key file that does not exist.
        t.ingress.auth.biscuit_public_key_file = Some("no-such-biscuit.pub".into());
    });
    assert!(test.shard_url(1).contains(":not-the-password@"));
    // The users file gets a bad line: an entry whose password hash is not a hash.
    let users_file = test.topology().ingress.auth.users_file;
    let mut users = std::fs::read_to_string(&users_file).unwrap();
    users.push_str("\n[[users]]\nname = \"mallory\"\npassword_hash = \"plain-text-password\"\n");
    std::fs::write(&users_file, users).unwrap();
    migrate_shards_except(&test, &[1, 2]).await;

    let (output, took) = check(&test.path, &["--connect"]).await;
    let text = everything(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("authentication refused for user \"root\"")
            && text.contains("[shard:shard1: shards[1].url]"),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{nobody}/checkbad is unreachable"))
            && text.contains("[shard:shard2: shards[2].url]"),
        "{text}"
    );
    assert!(
        text.contains("no-such-biscuit.pub")
            && text.contains("[keys: ingress.auth.biscuit_public_key_file]"),
        "{text}"
    );
    assert!(
        text.contains("users file") && text.contains("[users: ingress.auth.users_file]"),
        "{text}"
    );
    assert!(text.contains("4 error(s)"), "{text}");
    assert!(
        !text.contains("not-the-password"),
        "a password was printed: {text}"
    );
    assert!(took < Duration::from_secs(15), "the check took {took:?}");

    let (output, _) = check(&test.path, &["--connect", "--format", "json"]).await;
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    assert_eq!(report["ok"], false);
    let found = problems(&report);
    let errors: Vec<(&str, &str)> = found
        .iter()
        .filter(|p| p.0 == "error")
        .map(|p| (p.1.as_str(), p.2.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![
            ("shard:shard1", "shards[1].url"),
            ("shard:shard2", "shards[2].url"),
            ("keys", "ingress.auth.biscuit_public_key_file"),
            ("users", "ingress.auth.users_file"),
        ],
        "{report:#}"
    );
    // The healthy shards were checked all the same.
    assert_eq!(report["checked"]["shards_reachable"], 2, "{report:#}");
    assert!(!stdout(&output).contains("not-the-password"));
}

/// Creates the databases of every shard but `skip`.
async fn migrate_shards_except(test: &TestTopology, skip: &[usize]) {
    let topology = test.topology();
    for (index, shard) in topology.shards.iter().enumerate() {
        if skip.contains(&index) {
            continue;
        }
        let writer = sluice_sinks::open_shard(&shard.name, &shard.url, &topology.base_dir).unwrap();
        writer.migrate().await.unwrap();
        writer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_makes_the_weak_settings_errors_and_development_mode_warnings() {
    let shipped_users = concat!(env!("CARGO_MANIFEST_DIR"), "/users.toml");
    let mut test = test_topology_on(Backend::Services, "checkprod", &[], |t| {
        t.ingress.mode = Mode::Production;
        t.ingress.auth.jwt_secret = Some("too-short-a-secret".into());
        t.ingress.auth.users_file = shipped_users.into();
    });
    migrate_shards(&test).await;

    let (output, _) = check(&test.path, &["--connect", "--format", "json"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", everything(&output));
    let report = json(&output);
    let security: Vec<_> = problems(&report)
        .into_iter()
        .filter(|p| p.1 == "security")
        .collect();
    assert_eq!(security.len(), 3, "{report:#}");
    assert!(security.iter().all(|p| p.0 == "error"), "{report:#}");
    assert!(
        security.iter().any(|p| p.2 == "ingress.auth.jwt_secret"
            && p.3.contains("is 18 bytes; HS256 needs at least 32")),
        "{report:#}"
    );
    for user in ["alice", "bob"] {
        assert!(
            security.iter().any(|p| p.2 == "ingress.auth.users_file"
                && p.3.contains(&format!("user {user:?}"))
                && p.3.contains("shipped demo password")),
            "{report:#}"
        );
    }

    // The same settings in development mode: warnings, and the check passes.
    test.edit(|t| t.ingress.mode = Mode::Development);
    let (output, _) = check(&test.path, &["--connect"]).await;
    let text = everything(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("warning: ingress.auth.jwt_secret is 18 bytes")
            && text.contains("production mode refuses this"),
        "{text}"
    );
    assert!(text.contains("0 error(s), 3 warning(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_log_the_check_looks_at_its_folder_shards_and_users() {
    let test = test_topology_on(Backend::Embedded, "checkembedded", &["alice"], |t| {
        // More free space than any test machine has.
        t.log.embedded.min_free_mib = u64::MAX >> 21;
    });
    let (output, _) = check(&test.path, &["--connect", "--format", "json"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", everything(&output));
    let report = json(&output);
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    let (severity, component, setting, message) = &found[0];
    assert_eq!(
        (severity.as_str(), component.as_str(), setting.as_str()),
        ("error", "log", "log.embedded.min_free_mib")
    );
    assert!(
        message.contains("MiB free for the embedded log"),
        "{message}"
    );
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("does not exist yet; `sluice run` creates it"),
        "{notes}"
    );
    assert_eq!(report["checked"]["users"], 1);
    assert_eq!(report["checked"]["shards_checked"], 4);
}

#[test]
fn check_and_graph_take_the_topology_as_a_path_or_an_option_not_both() {
    let test = test_topology_on(Backend::Embedded, "checkargs", &[], |_| {});
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env_remove("SLUICE_TOPOLOGY")
            .output()
            .unwrap()
    };
    let path = test.path.to_str().unwrap();
    for args in [
        vec!["check", path],
        vec!["check", "-t", path],
        vec!["check", "--topology", path],
    ] {
        let output = run(&args);
        assert!(output.status.success(), "{args:?}: {}", everything(&output));
        assert!(stdout(&output).contains(&format!("{path}: ok")));
    }
    let env = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .env("SLUICE_TOPOLOGY", path)
        .output()
        .unwrap();
    assert!(env.status.success(), "{}", everything(&env));
    for args in [vec!["graph", path], vec!["graph", "-t", path]] {
        let output = run(&args);
        assert!(output.status.success(), "{args:?}: {}", everything(&output));
        assert!(
            stdout(&output).starts_with("flowchart"),
            "{}",
            stdout(&output)
        );
    }
    let both = run(&["check", path, "--topology", path]);
    assert_eq!(both.status.code(), Some(2));
    assert!(
        everything(&both).contains("either as a path or with --topology"),
        "{}",
        everything(&both)
    );
    // A topology with several problems: every one of them, in JSON too, each with where.
    let valid = std::fs::read_to_string(&test.path).unwrap();
    let mut broken: toml::Table = toml::from_str(&valid).unwrap();
    broken["sharding"]["buckets"] = toml::Value::Integer(100);
    broken["shards"][3]["topic"] = broken["shards"][2]["topic"].clone();
    std::fs::write(&test.path, toml::to_string(&broken).unwrap()).unwrap();
    let output = run(&["check", path, "--format", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", everything(&output));
    let report = json(&output);
    assert_eq!(report["ok"], false);
    let found = problems(&report);
    assert!(found.len() >= 2, "{report:#}");
    assert!(
        found
            .iter()
            .all(|p| p.0 == "error" && p.1 == "topology" && !p.2.is_empty()),
        "{report:#}"
    );
    assert!(
        found.iter().any(|p| p.2.starts_with("shards")),
        "{report:#}"
    );
    // In text, the same problems, as the loader says them.
    let output = run(&["check", path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        everything(&output).contains("problem(s)"),
        "{}",
        everything(&output)
    );
    // A file that does not parse: one problem.
    std::fs::write(&test.path, "[log]\nbackend = \"carrier-pigeon\"\n").unwrap();
    let output = run(&["check", path, "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    assert_eq!(report["ok"], false);
    assert_eq!(problems(&report)[0].1, "topology", "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_user_without_the_privileges_sluice_needs_is_told_what_to_grant() {
    let mut test = test_topology_on(Backend::Services, "checkgrants", &["alice"], |_| {});
    migrate_shards(&test).await;
    // Shard 0's user may only read its database.
    let user = format!("ro_{}", &test.id[test.id.len() - 10..]);
    let database = test.shard_url(0).rsplit_once('/').unwrap().1.to_string();
    execute(
        &test,
        0,
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'read-only-password'"),
    )
    .await;
    execute(
        &test,
        0,
        &format!("GRANT SELECT ON `{database}`.* TO '{user}'@'%'"),
    )
    .await;
    let root_url = test.shard_url(0);
    let url = root_url.replacen("root:sluice@", &format!("{user}:read-only-password@"), 1);
    test.edit(|t| t.shards[0].url = url);

    let (output, _) = check(&test.path, &["--connect", "--format", "json"]).await;
    // The clean-up drops the test's databases as root.
    test.edit(|t| t.shards[0].url = root_url);
    let dropped = {
        let mut conn = mysql_async::Conn::new(
            mysql_async::Opts::from_url(&format!("{}/mysql", infra().mysql_servers[0])).unwrap(),
        )
        .await
        .unwrap();
        use mysql_async::prelude::Queryable;
        conn.query_drop(format!("DROP USER '{user}'@'%'")).await
    };
    dropped.unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", everything(&output));
    let report = json(&output);
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    let (severity, component, setting, message) = &found[0];
    assert_eq!(
        (severity.as_str(), component.as_str(), setting.as_str()),
        ("error", "shard:shard0", "shards[0].url"),
        "{report:#}"
    );
    assert!(
        message.contains("lacks INSERT, UPDATE, CREATE")
            && message.contains(&format!(
                "GRANT SELECT, INSERT, UPDATE, CREATE ON `{database}`.* TO '{user}'@'%'"
            )),
        "{message}"
    );
    assert!(!message.contains("read-only-password"), "{message}");
}
