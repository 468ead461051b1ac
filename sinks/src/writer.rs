//! The shard-writer contract.

use async_trait::async_trait;
use sluice_core::log::{Position, TopicPartition};
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
    /// The owner epochs under which the writer [claimed](ShardWriter::claim) the partitions
    /// of `positions`. If any partition was claimed since (by another sink process), the
    /// whole batch is refused with [`SinkError::Fenced`]. Empty: no check (a position of a
    /// partition nobody claims, as in a test).
    pub epochs: Vec<(TopicPartition, i64)>,
}

/// A partition a sink worker claimed in its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The partition.
    pub partition: TopicPartition,
    /// Its owner epoch, raised by every claim: a batch written under an older one is refused.
    pub epoch: i64,
    /// The position stored for the partition, if any.
    pub next_offset: Option<i64>,
}

impl Batch {
    /// Whether the batch holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.rejections.is_empty() && self.positions.is_empty()
    }
}

/// The claims of `partitions`, from the `(topic, partition, epoch, stored next offset)` rows
/// of the consumer's owner table after the claim.
pub(crate) fn claimed(
    partitions: &[TopicPartition],
    rows: Vec<(String, i32, i64, Option<i64>)>,
) -> Vec<Claimed> {
    rows.into_iter()
        .filter(|(topic, partition, _, _)| {
            partitions
                .iter()
                .any(|p| p.partition == *partition && p.topic == *topic)
        })
        .map(|(topic, partition, epoch, next_offset)| Claimed {
            partition: TopicPartition { topic, partition },
            epoch,
            next_offset,
        })
        .collect()
}

/// The partitions of `epochs` whose owner epoch in the shard (`owners`: topic, partition,
/// epoch) is not the one the batch was read under: another process claimed them since.
pub(crate) fn fenced(
    epochs: &[(TopicPartition, i64)],
    owners: &[(String, i32, i64)],
) -> Vec<TopicPartition> {
    epochs
        .iter()
        .filter(|(p, epoch)| {
            !owners.iter().any(|(topic, partition, stored)| {
                *partition == p.partition && *topic == p.topic && stored == epoch
            })
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// Records the metrics of a batch that `shard` committed: the commit's duration since
/// `started`, and the rows per table.
pub(crate) fn record_committed(shard: &str, batch: &Batch, started: std::time::Instant) {
    let metrics = commit_metrics(shard);
    metrics.duration.record(started.elapsed().as_secs_f64());
    metrics.batch_rows.record(batch.orders.len() as f64);
    metrics.orders.increment(batch.orders.len() as u64);
    metrics.rejections.increment(batch.rejections.len() as u64);
}

/// The commit metric handles of one shard.
pub(crate) struct CommitMetrics {
    duration: metrics::Histogram,
    batch_rows: metrics::Histogram,
    orders: metrics::Counter,
    rejections: metrics::Counter,
}

/// The commit metric handles of `shard`, registered on first use (a sink worker registers
/// its shard's when it starts, so the counters have series from start-up) and then only
/// looked up.
pub(crate) fn commit_metrics(shard: &str) -> std::sync::Arc<CommitMetrics> {
    use std::collections::HashMap;
    use std::sync::{Arc, OnceLock, RwLock};
    static SHARDS: OnceLock<RwLock<HashMap<String, Arc<CommitMetrics>>>> = OnceLock::new();
    let shards = SHARDS.get_or_init(Default::default);
    if let Some(metrics) = shards.read().unwrap_or_else(|e| e.into_inner()).get(shard) {
        return metrics.clone();
    }
    let mut shards = shards.write().unwrap_or_else(|e| e.into_inner());
    shards
        .entry(shard.to_string())
        .or_insert_with(|| {
            let shard = shard.to_string();
            Arc::new(CommitMetrics {
                duration: metrics::histogram!(telemetry::SINK_COMMIT_DURATION, "shard" => shard.clone()),
                batch_rows: metrics::histogram!(telemetry::SINK_BATCH_ROWS, "shard" => shard.clone()),
                orders: metrics::counter!(telemetry::SINK_ROWS, "shard" => shard.clone(), "table" => "orders"),
                rejections: metrics::counter!(telemetry::SINK_ROWS, "shard" => shard, "table" => "rejected_orders"),
            })
        })
        .clone()
}

/// Whether a failed write can succeed if it is tried again, which decides what the sink
/// worker does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database or the way to it is unavailable for now: connection lost or refused,
    /// timeout, lock wait timeout, deadlock, server read-only or shutting down, too many
    /// connections, SQLite busy or locked, disk full. The same write is retried with backoff.
    Transient,
    /// The database refuses the data of some row for good: a value too long for its column,
    /// out of range or incorrect, a constraint violation. Retrying cannot help; the worker
    /// splits the batch to find the refused rows, records them as rejected and stores the rest.
    Permanent,
    /// Neither of the above, or not known to be: a missing table or privilege, a driver
    /// error. It is not the rows' fault, so no row is rejected for it; the write is retried
    /// (and logged as an error) until the cause is fixed.
    Other,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Transient => "transient",
            Fault::Permanent => "permanent",
            Fault::Other => "unclassified",
        })
    }
}

/// The error a database driver reported, kept whole so it can be classified and reported.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// From the MariaDB / MySQL driver.
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
    /// From SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// From the file system (creating a SQLite shard's folder).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The thread that ran a SQLite call failed (it panicked or was cancelled).
    #[error("the thread running the SQLite call failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
    /// An earlier SQLite call panicked while holding the connection.
    #[error("the SQLite connection is unusable: an earlier call panicked while holding it")]
    Poisoned,
}

impl DatabaseError {
    /// Whether retrying can help (see [`Fault`]).
    pub fn fault(&self) -> Fault {
        match self {
            DatabaseError::Mysql(error) => crate::mysql::classify(error),
            DatabaseError::Sqlite(error) => crate::sqlite::classify(error),
            DatabaseError::Io(_) | DatabaseError::Thread(_) | DatabaseError::Poisoned => {
                Fault::Other
            }
        }
    }

    /// Whether the error says the shard's database or tables do not exist: usually because
    /// its sink worker has not [migrated](ShardWriter::migrate) it yet (a process that just
    /// started, or runs no sinks), so no order is stored there. A database or table missing
    /// for another reason (a wrong name in the URL) also reads so; `sluice check` reports it,
    /// and a sink worker cannot write to such a shard.
    pub fn not_created_yet(&self) -> bool {
        match self {
            DatabaseError::Mysql(error) => crate::mysql::not_created_yet(error),
            DatabaseError::Sqlite(error) => crate::sqlite::not_created_yet(error),
            DatabaseError::Io(_) | DatabaseError::Thread(_) | DatabaseError::Poisoned => false,
        }
    }

    /// The database's own words for a refusal, as stored with a rejected row: the server's
    /// message with its error code for MariaDB / MySQL, SQLite's message for SQLite.
    pub fn reason(&self) -> String {
        match self {
            DatabaseError::Mysql(mysql_async::Error::Server(server)) => format!(
                "{} (MariaDB error {}, SQLSTATE {})",
                server.message, server.code, server.state
            ),
            DatabaseError::Sqlite(rusqlite::Error::SqliteFailure(failure, Some(message))) => {
                format!("{message} (SQLite error {})", failure.extended_code)
            }
            other => other.to_string(),
        }
    }
}

/// What [`ShardWriter::find`] answers, given a backend's lookup `found` in shard `shard`: a
/// shard not created yet ([`DatabaseError::not_created_yet`]) holds nothing, so no order.
pub(crate) fn found_unless_not_created(
    shard: &str,
    found: Result<OrderStatus, SinkError>,
) -> Result<OrderStatus, SinkError> {
    match found {
        Err(SinkError::Database { source, .. }) if source.not_created_yet() => {
            tracing::debug!(shard, error = %source, "shard not created yet: it holds no order");
            Ok(OrderStatus::Unknown)
        }
        found => found,
    }
}

/// Errors from a shard backend.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The shard URL is malformed.
    #[error("shard {shard:?}: invalid database URL: {}{message}", parse_error(.source))]
    Url {
        /// The shard.
        shard: String,
        /// What is wrong, or how to write it.
        message: String,
        /// The driver's reason when it could not parse the URL.
        #[source]
        source: Option<mysql_async::UrlError>,
    },
    /// The database refused or failed an operation.
    #[error("shard {shard:?}: database error ({fault}): {source}", fault = .source.fault())]
    Database {
        /// The shard.
        shard: String,
        /// The driver's error.
        #[source]
        source: DatabaseError,
    },
    /// The SQLite shard file cannot be opened or created.
    #[error("shard {shard:?}: cannot open {}: {source}; check that its folder is writable and the disk has room", path.display())]
    Open {
        /// The shard.
        shard: String,
        /// The database file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: DatabaseError,
    },
    /// A batch write did not finish in time: the server is frozen, overloaded or unreachable.
    #[error("shard {shard:?}: the batch write did not finish within {after:?}; is the database server frozen or unreachable?")]
    Timeout {
        /// The shard.
        shard: String,
        /// The time limit.
        after: std::time::Duration,
    },
    /// Another sink process claimed some of the batch's partitions after this worker did
    /// (the group moved them while the batch was being read or written): the batch was
    /// rolled back whole, so it cannot overwrite the new owner's position.
    #[error(
        "shard {shard:?}: another sink process owns {} now; this process's batch for {} was not stored (the new owner stores those records)",
        TopicPartition::list(.partitions), if .partitions.len() == 1 { "it" } else { "them" }
    )]
    Fenced {
        /// The shard.
        shard: String,
        /// The partitions claimed since.
        partitions: Vec<TopicPartition>,
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

/// `"{error}; "` for a URL the driver could not parse, else nothing.
fn parse_error(error: &Option<mysql_async::UrlError>) -> String {
    error
        .as_ref()
        .map(|error| format!("{error}; "))
        .unwrap_or_default()
}

impl SinkError {
    /// Whether retrying can help (see [`Fault`]). Only a database error can be
    /// [`Fault::Permanent`]; time-outs and log errors are transient.
    pub fn fault(&self) -> Fault {
        match self {
            SinkError::Database { source, .. } => source.fault(),
            SinkError::Open { source, .. } => match source.fault() {
                // Opening a file does not store a row: nothing to reject.
                Fault::Permanent => Fault::Other,
                fault => fault,
            },
            SinkError::Timeout { .. } | SinkError::Log { .. } => Fault::Transient,
            SinkError::Url { .. } | SinkError::Fenced { .. } => Fault::Other,
        }
    }

    /// The reason to record with a row this error refused: the database's own message.
    pub fn refusal_reason(&self) -> String {
        match self {
            SinkError::Database { source, .. } => source.reason(),
            other => other.to_string(),
        }
    }
}

/// Stores batches of one shard atomically, together with consumer positions.
#[async_trait]
pub trait ShardWriter: Send + Sync {
    /// Creates or upgrades the shard's schema (idempotent).
    async fn migrate(&self) -> Result<(), SinkError>;

    /// Positions stored by `consumer` (e.g. `"sink"`, or a replay's own name).
    async fn positions(&self, consumer: &str) -> Result<Vec<Position>, SinkError>;

    /// Takes ownership of `partitions` for `consumer`: in one transaction, raises each one's
    /// owner epoch (so a batch another process still writes under the old epoch is refused,
    /// see [`Batch::epochs`]) and reads its stored position. `owner` names this process for
    /// operators (host and process id).
    async fn claim(
        &self,
        consumer: &str,
        owner: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Claimed>, SinkError>;

    /// Stores the batch's rows and `consumer`'s positions in ONE transaction.
    /// A row whose `order_id` is already stored keeps its values unless the incoming one was
    /// enriched later (`enriched_at_ms`), in which case its prices are replaced: replays of
    /// the same records change nothing, a re-run of `enrich` reprices.
    async fn write_batch(&self, consumer: &str, batch: &Batch) -> Result<(), SinkError>;

    /// The status of one order of one user in this shard. A shard not
    /// [migrated](ShardWriter::migrate) yet holds nothing: [`OrderStatus::Unknown`], not an
    /// error.
    async fn find(&self, user_id: &str, order_id: Uuid) -> Result<OrderStatus, SinkError>;

    /// Releases connections (called once at shutdown).
    async fn close(&self) {}
}
