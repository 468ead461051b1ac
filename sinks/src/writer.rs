//! The shard-writer contract.

use async_trait::async_trait;
use sluice_core::log::Position;
use sluice_core::lookup::OrderStatus;
use sluice_core::order::EnrichedOrder;
use sluice_core::telemetry;
use uuid::Uuid;

/// A rejected order, recorded in its user's shard so `GET /order/{id}` can report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The order id.
    pub order_id: Uuid,
    /// The ordering user (the record key).
    pub user_id: String,
    /// The stage that rejected it.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// When the sink recorded it (ms since the Unix epoch).
    pub rejected_at_ms: i64,
}

/// One transaction's worth of work for a shard.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Enriched orders to store.
    pub orders: Vec<EnrichedOrder>,
    /// Rejections to store.
    pub rejections: Vec<Rejection>,
    /// Positions that this batch completes, stored in the same transaction.
    pub positions: Vec<Position>,
}

impl Batch {
    /// Whether the batch holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.rejections.is_empty() && self.positions.is_empty()
    }
}

/// Records the metrics of a batch that `shard` committed: the commit's duration since
/// `started`, and the rows per table.
pub(crate) fn record_committed(shard: &str, batch: &Batch, started: std::time::Instant) {
    let shard = shard.to_string();
    metrics::histogram!(telemetry::SINK_COMMIT_DURATION, "shard" => shard.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!(telemetry::SINK_BATCH_ROWS, "shard" => shard.clone())
        .record(batch.orders.len() as f64);
    metrics::counter!(telemetry::SINK_ROWS, "shard" => shard.clone(), "table" => "orders")
        .increment(batch.orders.len() as u64);
    metrics::counter!(telemetry::SINK_ROWS, "shard" => shard, "table" => "rejected_orders")
        .increment(batch.rejections.len() as u64);
}

/// Errors from a shard backend.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The shard URL is malformed.
    #[error("shard {shard:?}: invalid database URL: {message}")]
    Url {
        /// The shard.
        shard: String,
        /// What is wrong.
        message: String,
    },
    /// The database refused or failed an operation.
    #[error("shard {shard:?}: database error: {message}")]
    Database {
        /// The shard.
        shard: String,
        /// The driver's message.
        message: String,
    },
    /// The log failed.
    #[error("shard {shard:?}: {source}")]
    Log {
        /// The shard.
        shard: String,
        /// The log error.
        source: sluice_core::log::LogError,
    },
}

/// Stores batches of one shard atomically, together with consumer positions.
#[async_trait]
pub trait ShardWriter: Send + Sync {
    /// Creates or upgrades the shard's schema (idempotent).
    async fn migrate(&self) -> Result<(), SinkError>;

    /// Positions stored by `consumer` (e.g. `"sink"`, or a replay's own name).
    async fn positions(&self, consumer: &str) -> Result<Vec<Position>, SinkError>;

    /// Stores the batch's rows and `consumer`'s positions in ONE transaction.
    /// A row whose `order_id` is already stored keeps its values unless the incoming one was
    /// enriched later (`enriched_at_ms`), in which case its prices are replaced: replays of
    /// the same records change nothing, a re-run of `enrich` reprices.
    async fn write_batch(&self, consumer: &str, batch: &Batch) -> Result<(), SinkError>;

    /// The status of one order of one user in this shard.
    async fn find(&self, user_id: &str, order_id: Uuid) -> Result<OrderStatus, SinkError>;

    /// Releases connections (called once at shutdown).
    async fn close(&self) {}
}
