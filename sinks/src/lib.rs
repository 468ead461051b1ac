//! Sluice shard sinks.
//!
//! One [`worker`] per shard reads that shard's topic (and the rejections topic, keeping only
//! its own users' records), gathers rows into batches by count or elapsed time, and hands each
//! batch to a [`ShardWriter`], which stores the rows **and** the consumer positions that
//! produced them in one transaction. On start a worker resumes from the positions stored in
//! its shard, so a crash between write and commit can neither lose nor duplicate a row; rows
//! are also idempotent by `order_id`, so a replay through a fresh cursor adds nothing twice.

pub mod claims;
pub mod config;
pub mod lookup;
pub mod migrations;
pub mod mysql;
pub mod sqlite;
pub mod worker;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

pub use claims::{owner_name, Epochs, ShardClaims};
pub use config::SinkConfig;
pub use lookup::ShardLookup;
pub use worker::{run_sink_worker, SinkWorker};
pub use writer::{Batch, Claimed, DatabaseError, Fault, Rejection, ShardWriter, SinkError};

/// Opens the shard backend named by `url`: `mysql://…` or `sqlite://path` (a relative path
/// resolves against `base_dir`, the topology file's folder).
pub fn open_shard(
    name: &str,
    url: &str,
    base_dir: &Path,
) -> Result<Arc<dyn ShardWriter>, SinkError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = sluice_core::topology::resolve_relative(base_dir, Path::new(path));
        Ok(Arc::new(sqlite::SqliteShard::new(name, &path)))
    } else if url.starts_with("mysql://") {
        Ok(Arc::new(mysql::MysqlShard::new(name, url)?))
    } else {
        Err(SinkError::Url {
            shard: name.to_string(),
            message: "use a mysql:// or sqlite:// URL".into(),
            source: None,
        })
    }
}
