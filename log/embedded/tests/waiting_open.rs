//! A process taking over the embedded log waits while another holds it, naming the holder,
//! and gets it once the holder lets go.

use std::time::Duration;

use sluice_log_embedded::{held_by_another_process, holder_pid, EmbeddedLogConfig};

#[tokio::test]
async fn open_when_free_waits_for_the_holder_and_then_opens() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedLogConfig {
        path: "log.redb".into(),
        min_free_mib: 0,
        ..EmbeddedLogConfig::default()
    };
    let holder = config.open(dir.path()).unwrap();
    let file = dir.path().join("log.redb");
    assert_eq!(
        holder_pid(&file),
        Some(std::process::id()),
        "the holder wrote its pid beside the log"
    );
    let again = config.open(dir.path()).err().expect("the log is held");
    assert!(held_by_another_process(&again), "{again}");

    let waiting = {
        let (config, dir) = (config.clone(), dir.path().to_path_buf());
        tokio::spawn(async move { config.open_when_free(&dir, Duration::from_millis(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "opened while the log was held");

    drop(holder);
    let opened = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("opened once the holder let go")
        .unwrap();
    assert!(opened.is_ok(), "{:?}", opened.err());
}

#[tokio::test]
async fn open_when_free_returns_other_errors_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A folder where the log file should be: not a lock to wait for.
    std::fs::create_dir(dir.path().join("log.redb")).unwrap();
    let config = EmbeddedLogConfig {
        path: "log.redb".into(),
        ..EmbeddedLogConfig::default()
    };
    let opened = tokio::time::timeout(
        Duration::from_secs(5),
        config.open_when_free(dir.path(), Duration::from_millis(10)),
    )
    .await
    .expect("no waiting for an error that is not a held lock");
    let error = opened.err().expect("a folder is not a log");
    assert!(!held_by_another_process(&error), "{error}");
}
