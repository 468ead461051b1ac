//! The embedded log on a disk that fills up, fails and stalls: it refuses new records at once
//! with the reason, keeps every acknowledged record, and takes writes again by itself once
//! the disk does. The full-disk tests mount a small tmpfs (they need root; they print why and
//! pass without checking anything where mounting is not allowed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::log::{Log, LogError, OutRecord};
use sluice_log_embedded::{EmbeddedLog, Options, Retention};

use crate::common::Mount;

fn options(min_free_bytes: u64, max_pending_appends: usize) -> Options {
    Options {
        retention: Retention::KEEP_ALL,
        min_free_bytes,
        max_pending_appends,
        cache_bytes: sluice_log_embedded::DEFAULT_CACHE_BYTES,
        stall_file: None,
        fail_file: None,
    }
}

/// Reads every record of `topic` from the beginning: payload → times seen.
async fn stored_payloads(log: &dyn Log, topic: &str) -> HashMap<Vec<u8>, u32> {
    let mut seen = HashMap::new();
    for record in crate::common::read_topic(log, topic, "check").await {
        *seen.entry(record.payload).or_insert(0) += 1;
    }
    seen
}

/// A payload of about 2 KiB that names record `n`.
fn payload(n: u64) -> Vec<u8> {
    let mut out = format!("record-{n:08}-").into_bytes();
    out.resize(2048, b'x');
    out
}

/// Appends with `try_send` from 8 writers until the log refuses; returns the acknowledged
/// payloads and the first refusal.
async fn fill(log: &Arc<EmbeddedLog>, topic: &str) -> (Vec<Vec<u8>>, LogError) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (log, next, topic) = (log.clone(), next.clone(), topic.to_string());
        writers.spawn(async move {
            let mut acked = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let record = OutRecord::new(format!("k{}", n % 16), payload(n));
                match log.try_send(&topic, record, Duration::from_secs(10)).await {
                    Ok(_) => acked.push(payload(n)),
                    Err(error) => return (acked, error),
                }
            }
        });
    }
    let mut acked = Vec::new();
    let mut first = None;
    while let Some(done) = writers.join_next().await {
        let (mine, error) = done.unwrap();
        acked.extend(mine);
        first.get_or_insert(error);
    }
    (acked, first.unwrap())
}

/// Waits until `check_ready` is Ok; returns how long that took.
async fn until_ready(log: &dyn Log, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if log.check_ready().await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not ready {limit:?} after space was freed: {:?}",
            log.check_ready().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_then_recovers_without_losing_acknowledged_records() {
    let Some(mount) = Mount::tmpfs(8, "a_full_disk_refuses_then_recovers") else {
        return;
    };
    let path = mount.path().join("log.redb");
    // No watermark: the disk really fills and the commit fails.
    let log = Arc::new(EmbeddedLog::open_with(&path, options(0, 1024)).unwrap());
    log.ensure_topics(&[("t".into(), 4, 1)]).await.unwrap();
    log.check_ready().await.unwrap();

    let (acked, refusal) = fill(&log, "t").await;
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the disk filled"
    );
    let not_ready = log
        .check_ready()
        .await
        .expect_err("a log that cannot write must not be ready");
    let reason = not_ready.to_string();
    assert!(
        reason.contains("cannot write"),
        "unexpected reason: {reason}"
    );
    // New records are refused at once while the disk is full.
    let started = Instant::now();
    let refused = log
        .try_send("t", OutRecord::new("k", "late"), Duration::from_secs(10))
        .await;
    assert!(refused.is_err(), "a record was accepted on a full disk");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A stage output waits for the disk instead of failing.
    let waiting = {
        let log = log.clone();
        tokio::spawn(async move {
            log.send(
                "t",
                OutRecord::new("k", "stage-output"),
                Duration::from_secs(30),
            )
            .await
        })
    };

    mount.resize(64);
    let recovery = until_ready(log.as_ref(), Duration::from_secs(10)).await;
    waiting
        .await
        .unwrap()
        .expect("the waiting stage output was not written after recovery");
    log.try_send("t", OutRecord::new("k", "after"), Duration::from_secs(10))
        .await
        .expect("new records are taken again after recovery");

    let stored = stored_payloads(log.as_ref(), "t").await;
    let lost = acked.iter().filter(|p| !stored.contains_key(*p)).count();
    let doubled = stored.values().filter(|&&n| n > 1).count();
    eprintln!(
        "embedded full disk: acknowledged {} stored {} lost {lost} duplicated {doubled} ready again after {} ms (first refusal: {refusal})",
        acked.len(),
        acked.len() - lost,
        recovery.as_millis()
    );
    assert_eq!(lost, 0, "acknowledged records were lost");
    assert_eq!(doubled, 0, "records were stored twice");
    assert_eq!(stored.get(b"stage-output".as_slice()), Some(&1));
    assert_eq!(stored.get(b"after".as_slice()), Some(&1));
    drop(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_watermark_new_records_are_refused_and_stage_outputs_still_written() {
    let Some(mount) = Mount::tmpfs(24, "below_the_watermark") else {
        return;
    };
    let path = mount.path().join("log.redb");
    let log = Arc::new(EmbeddedLog::open_with(&path, options(12 << 20, 1024)).unwrap());
    log.ensure_topics(&[("t".into(), 4, 1)]).await.unwrap();

    let (acked, refusal) = fill(&log, "t").await;
    assert!(
        matches!(refusal, LogError::Overloaded(_)),
        "expected a watermark refusal, got {refusal}"
    );
    let reason = log
        .check_ready()
        .await
        .expect_err("ready below the watermark")
        .to_string();
    assert!(
        reason.contains("min_free_mib"),
        "unexpected reason: {reason}"
    );
    // Work already inside the pipeline is still written.
    for n in 0..200 {
        log.send(
            "t",
            OutRecord::new("k", format!("stage-{n}")),
            Duration::from_secs(10),
        )
        .await
        .expect("stage outputs must be written below the watermark");
    }
    mount.resize(128);
    let recovery = until_ready(log.as_ref(), Duration::from_secs(5)).await;
    log.try_send("t", OutRecord::new("k", "after"), Duration::from_secs(10))
        .await
        .unwrap();
    let stored = stored_payloads(log.as_ref(), "t").await;
    assert!(acked.iter().all(|p| stored.get(p) == Some(&1)));
    assert_eq!(stored.len(), acked.len() + 201);
    eprintln!(
        "embedded watermark: acknowledged {} refused at {} ready again after {} ms",
        acked.len(),
        refusal,
        recovery.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_fills_the_bounded_queue_and_new_records_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let stall: PathBuf = dir.path().join("stall");
    let log = Arc::new(
        EmbeddedLog::open_with(
            &dir.path().join("log.redb"),
            Options {
                stall_file: Some(stall.clone()),
                ..options(0, 64)
            },
        )
        .unwrap(),
    );
    log.ensure_topics(&[("t".into(), 2, 1)]).await.unwrap();
    std::fs::write(&stall, b"").unwrap();
    // 100 stage outputs: the first 64 take the queue, the others wait for room.
    let mut outputs = tokio::task::JoinSet::new();
    for n in 0..100 {
        let log = log.clone();
        outputs.spawn(async move {
            log.send(
                "t",
                OutRecord::new("k", format!("s{n}")),
                Duration::from_secs(60),
            )
            .await
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = log
        .try_send("t", OutRecord::new("k", "new"), Duration::from_secs(10))
        .await;
    let took = started.elapsed();
    assert!(
        matches!(refused, Err(LogError::Overloaded(_))),
        "expected a full queue, got {refused:?}"
    );
    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");
    std::fs::remove_file(&stall).unwrap();
    while let Some(done) = outputs.join_next().await {
        done.unwrap().expect("a waiting stage output failed");
    }
    log.try_send("t", OutRecord::new("k", "new"), Duration::from_secs(10))
        .await
        .expect("new records are taken again once the disk answers");
    let stored = stored_payloads(log.as_ref(), "t").await;
    assert_eq!(stored.len(), 101);
    assert!(stored.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_write_failure_is_reported_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    let log = Arc::new(
        EmbeddedLog::open_with(
            &dir.path().join("log.redb"),
            Options {
                fail_file: Some(fail.clone()),
                ..options(0, 1024)
            },
        )
        .unwrap(),
    );
    log.ensure_topics(&[("t".into(), 2, 1)]).await.unwrap();
    for n in 0..50 {
        log.try_send(
            "t",
            OutRecord::new("k", format!("a{n}")),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    std::fs::write(&fail, b"").unwrap();
    let failed = log
        .try_send("t", OutRecord::new("k", "lost"), Duration::from_secs(5))
        .await;
    assert!(failed.is_err());
    let reason = log.check_ready().await.unwrap_err().to_string();
    assert!(reason.contains("injected write failure"), "{reason}");
    std::fs::remove_file(&fail).unwrap();
    until_ready(log.as_ref(), Duration::from_secs(10)).await;
    for n in 50..100 {
        log.try_send(
            "t",
            OutRecord::new("k", format!("a{n}")),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    let stored = stored_payloads(log.as_ref(), "t").await;
    assert_eq!(
        stored.len(),
        100,
        "only the acknowledged records are stored"
    );
    assert!(!stored.contains_key(b"lost".as_slice()));
}
