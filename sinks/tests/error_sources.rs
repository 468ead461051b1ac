//! Shard errors keep the driver's own error as their source, and say in their message what
//! to fix.

use std::error::Error;
use std::sync::Arc;

use sluice_core::lookup::OrderLookup;
use sluice_core::sharding::{BucketRange, ShardMap};
use sluice_sinks::mysql::MysqlShard;
use sluice_sinks::sqlite::SqliteShard;
use sluice_sinks::{DatabaseError, ShardLookup, ShardWriter, SinkError};

#[test]
fn a_url_the_driver_cannot_parse_keeps_the_drivers_error() {
    let error = MysqlShard::new("s0", "mysql://root@127.0.0.1:notaport/sluice")
        .err()
        .unwrap();
    assert!(matches!(error, SinkError::Url { .. }), "{error:?}");
    assert!(
        error
            .source()
            .is_some_and(|s| s.is::<mysql_async::UrlError>()),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("write it as mysql://"), "{text}");
}

#[test]
fn a_url_without_a_database_has_no_driver_error() {
    let error = MysqlShard::new("s0", "mysql://root@127.0.0.1:1")
        .err()
        .unwrap();
    assert!(error.source().is_none(), "{error:?}");
    assert!(
        error.to_string().contains("must name a database"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_shard_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    // The shard's folder would have to be created inside a regular file.
    let shard: Arc<dyn ShardWriter> = Arc::new(SqliteShard::new("s0", &file.join("shard.db")));
    let map = ShardMap::new(
        16,
        &[("s0".to_string(), BucketRange { first: 0, last: 15 })],
    )
    .unwrap();
    let lookup = ShardLookup::new(map, vec![shard]);
    let error = lookup
        .find("alice", uuid::Uuid::now_v7())
        .await
        .expect_err("the shard cannot be opened");
    let shard_error = error
        .source()
        .and_then(|s| s.downcast_ref::<SinkError>())
        .unwrap_or_else(|| panic!("no SinkError source in {error:?}"));
    assert!(
        matches!(shard_error, SinkError::Open { .. }),
        "{shard_error:?}"
    );
    assert!(
        matches!(
            shard_error
                .source()
                .and_then(|s| s.downcast_ref::<DatabaseError>()),
            Some(DatabaseError::Io(_))
        ),
        "the file system's error is the shard error's source: {shard_error:?}"
    );
}
