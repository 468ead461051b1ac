//! The embedded log's errors keep the storage's own error as their source (redb's, the file
//! system's), so callers can inspect it, and still say in their message what failed.

use std::error::Error;
use std::time::Duration;

use sluice_core::log::{Log, LogError, OutRecord};
use sluice_log_embedded::{EmbeddedLog, Options, Retention};

/// The errors of `error`'s source chain, outermost first, without `error` itself.
fn sources(error: &dyn Error) -> Vec<&(dyn Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = error.source();
    while let Some(source) = next {
        chain.push(source);
        next = source.source();
    }
    chain
}

#[test]
fn an_embedded_log_in_use_reports_redbs_error_as_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let _first = EmbeddedLog::open(&path, Retention::KEEP_ALL).unwrap();
    let error = EmbeddedLog::open(&path, Retention::KEEP_ALL).err().unwrap();
    assert!(
        error.to_string().contains("in use by another process"),
        "{error}"
    );
    let source = error.source().expect("the redb error is kept");
    assert!(
        matches!(
            source.downcast_ref::<redb::DatabaseError>(),
            Some(redb::DatabaseError::DatabaseAlreadyOpen)
        ),
        "source is {source:?}"
    );
}

#[test]
fn a_log_folder_that_cannot_be_created_reports_the_io_error_as_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let error = EmbeddedLog::open(&file.join("sub").join("log.redb"), Retention::KEEP_ALL)
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("cannot create the log folder"),
        "{error}"
    );
    let io = error
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("no io::Error source in {error:?}"));
    assert_ne!(io.kind(), std::io::ErrorKind::Other, "{io}");
}

#[tokio::test]
async fn a_failed_write_gives_the_append_the_storage_error_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    let log = EmbeddedLog::open_with(
        &dir.path().join("log.redb"),
        Options {
            fail_file: Some(fail.clone()),
            min_free_bytes: 0,
            ..Options::new(Retention::KEEP_ALL)
        },
    )
    .unwrap();
    log.ensure_topics(&[("t".into(), 1, 1)]).await.unwrap();
    std::fs::write(&fail, b"").unwrap();
    let error = log
        .send("t", OutRecord::new("k", "lost"), Duration::from_secs(5))
        .await
        .expect_err("the disk fails every write");
    assert!(matches!(error, LogError::Backend { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("could not write the record"),
        "the message says what failed: {text}"
    );
    assert_eq!(
        text.matches("injected write failure").count(),
        1,
        "the cause is told once: {text}"
    );
    assert!(
        sources(&error)
            .iter()
            .any(|s| s.to_string().contains("injected write failure")),
        "the storage error is the source: {error:?}"
    );
    std::fs::remove_file(&fail).unwrap();
}
