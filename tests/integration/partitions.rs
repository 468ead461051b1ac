//! Declared topics against the topics that exist: a topic with fewer partitions than
//! `topology.toml` declares stops `sluice run` and fails `sluice check --connect`, naming the
//! topic; one with more is a warning; brokers that do not answer are an error, not a hang.
//! And the embedded log, which serves one process, refuses `sluice run --only`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs the `sluice` binary with `args` and waits for it to exit, at most `limit`.
fn sluice_exits(args: &[&str], topology: &std::path::Path, limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg(topology)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("sluice {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_too_few_partitions_stop_the_start_and_the_check_names_the_topic() {
    let mut test = test_topology_on(Backend::Services, "partitions", &["alice"], |_| {});
    let topology = test.topology();
    let raw = topology.ingress.orders_topic.clone();
    let dlq = topology.stages[0].dead_letter.clone();
    assert_eq!(topology.topics[&raw].partitions, 4);
    // Someone made the orders topic with 2 partitions and the dead letters with 6.
    let log = sluice::pipeline::open_log(&topology).unwrap();
    log.ensure_topics(&[(raw.clone(), 2, 1), (dlq.clone(), 6, 1)])
        .await
        .unwrap();

    let checked = sluice_exits(&["check", "--connect"], &test.path, Duration::from_secs(60));
    let report = text(&checked);
    assert!(!checked.status.success(), "{report}");
    assert!(
        report.contains(&format!(
            "topic {raw:?} has 2 partitions but topology.toml declares 4"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("warning: topic {dlq:?} has 6 partitions")),
        "{report}"
    );
    assert!(
        report.contains("missing; `sluice run` creates it with 4 partitions"),
        "{report}"
    );

    let run = sluice_exits(&["run", "--topology"], &test.path, Duration::from_secs(60));
    let stderr = text(&run);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("topic {raw:?} has 2 partitions")),
        "{stderr}"
    );

    // Declaring what exists settles it; the extra partitions stay a warning.
    test.edit(|t| t.topics.get_mut(&raw).unwrap().partitions = 2);
    let checked = sluice_exits(&["check", "--connect"], &test.path, Duration::from_secs(60));
    let report = text(&checked);
    assert!(checked.status.success(), "{report}");
    assert!(report.contains(&format!("topic {raw:?}: 2 partitions, as declared")));
    assert!(report.contains(&format!("warning: topic {dlq:?} has 6 partitions")));
}

#[test]
fn a_check_against_brokers_that_do_not_answer_fails_with_the_setting_to_check() {
    let mut test = test_topology_on(Backend::Services, "nobroker", &[], |_| {});
    let nobody = format!("127.0.0.1:{}", free_port());
    test.edit(|t| t.log.kafka.as_mut().unwrap().brokers = nobody.clone());
    let checked = sluice_exits(&["check", "--connect"], &test.path, Duration::from_secs(60));
    let report = text(&checked);
    assert!(!checked.status.success(), "{report}");
    assert!(report.contains("cannot ask the brokers"), "{report}");
    assert!(report.contains("[log.kafka] brokers"), "{report}");
}

#[test]
fn the_embedded_log_refuses_to_be_split_across_processes() {
    let test = test_topology_on(Backend::Embedded, "onlyembedded", &["alice"], |_| {});
    for part in ["ingress", "processors", "sinks"] {
        let run = sluice_exits(
            &["run", "--only", part, "--topology"],
            &test.path,
            Duration::from_secs(30),
        );
        let stderr = text(&run);
        assert!(!run.status.success(), "--only {part} started: {stderr}");
        assert!(
            stderr.contains("the embedded log is a file that serves one process"),
            "{stderr}"
        );
        assert!(stderr.contains("[log] backend = \"kafka\""), "{stderr}");
    }
    assert!(
        !test.topology().log.embedded.path.exists(),
        "a refused start must not create the log"
    );
    let checked = sluice_exits(&["check"], &test.path, Duration::from_secs(30));
    assert!(checked.status.success());
    assert!(text(&checked).contains("serves one process"));
}
