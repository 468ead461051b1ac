//! Sluice shard sinks.
//!
//! One [`worker`] per shard reads that shard's topic (and the rejections topic, keeping only
//! its own users' records), gathers rows into batches by count or elapsed time, and hands each
//! batch to a [`ShardWriter`], which stores the rows **and** the consumer positions that
//! produced them in one transaction. On start a worker resumes from the positions stored in
//! its shard, so a crash between write and commit can neither lose nor duplicate a row; rows
//! are also idempotent by `order_id`, so a replay through a fresh cursor adds nothing twice.

pub mod lookup;
pub mod mysql;
pub mod worker;
pub mod writer;

pub use lookup::ShardLookup;
pub use worker::{run_sink_worker, SinkWorker};
pub use writer::{Batch, Rejection, ShardWriter, SinkError};
