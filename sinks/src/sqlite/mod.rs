//! The SQLite shard backend: one database file per shard, for running with no services.
//!
//! Same guarantees as MySQL: rows and consumer positions commit in one transaction (WAL
//! journal, `synchronous = FULL`, so a committed batch survives a crash), and rows are
//! idempotent by `order_id`, the latest enrichment winning.

pub(crate) mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sluice_core::log::{Position, TopicPartition};
use sluice_core::lookup::OrderStatus;
use sluice_core::order::{now_ms, EnrichedOrder};
use uuid::Uuid;

use crate::writer::{Batch, Claimed, DatabaseError, Fault, ShardWriter, SinkError};

/// One SQLite shard file.
pub struct SqliteShard {
    name: String,
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl SqliteShard {
    /// A shard named `name` stored in the file at `path` (created with its folder on first use).
    pub fn new(name: &str, path: &Path) -> Self {
        SqliteShard {
            name: name.to_string(),
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the shard's connection in a blocking thread, opening it on first use.
    async fn with_conn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, SinkError> {
        let (conn, path, name) = (self.conn.clone(), self.path.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || {
            let database = |source: DatabaseError| SinkError::Database {
                shard: name.clone(),
                source,
            };
            let open = |source: DatabaseError| SinkError::Open {
                shard: name.clone(),
                path: path.clone(),
                source,
            };
            let mut guard = conn.lock().map_err(|_| database(DatabaseError::Poisoned))?;
            let conn = match &mut *guard {
                Some(conn) => conn,
                empty => {
                    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::create_dir_all(parent).map_err(|e| open(e.into()))?;
                    }
                    let opened = Connection::open(&path).map_err(|e| open(e.into()))?;
                    opened
                        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
                        .map_err(|e| open(e.into()))?;
                    empty.insert(opened)
                }
            };
            work(conn).map_err(|e| database(e.into()))
        })
        .await
        .map_err(|e| SinkError::Database {
            shard: self.name.clone(),
            source: e.into(),
        })?
    }
}

/// Whether `error` says a table does not exist (see
/// [`DatabaseError::not_created_yet`]).
pub(crate) fn not_created_yet(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(_, Some(message)) if message.contains("no such table"))
}

/// Whether retrying a write that failed with `error` can help: a busy or locked database, a
/// full disk, a read-only file or an I/O error are [`Fault::Transient`]; a constraint
/// violation (`NOT NULL`, `CHECK`, a trigger's `RAISE(ABORT, …)`), a value too big or of the
/// wrong type is [`Fault::Permanent`]; anything else is [`Fault::Other`].
pub fn classify(error: &rusqlite::Error) -> Fault {
    use rusqlite::ErrorCode;
    match error {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory
            | ErrorCode::OperationInterrupted
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::SchemaChanged => Fault::Transient,
            ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch => {
                Fault::Permanent
            }
            _ => Fault::Other,
        },
        rusqlite::Error::ToSqlConversionFailure(_) => Fault::Permanent,
        _ => Fault::Other,
    }
}

fn insert_order(
    tx: &rusqlite::Transaction<'_>,
    order: &EnrichedOrder,
    stored_at_ms: i64,
) -> Result<(), rusqlite::Error> {
    // A repeated order id takes the incoming prices only from a later enrichment of the same
    // order (same user, product and quantity: a repricing replay). A repeat with another body
    // (an Idempotency-Key reused after the ingress forgot it) changes nothing: the first wins.
    let mut statement = tx.prepare_cached(
        "INSERT INTO orders (order_id, user_id, product, quantity, unit_price_minor, line_total_minor, currency, \
         received_at_ms, enriched_at_ms, stored_at_ms, bucket, shard) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) \
         ON CONFLICT (order_id) DO UPDATE SET unit_price_minor = excluded.unit_price_minor, \
         line_total_minor = excluded.line_total_minor, currency = excluded.currency, \
         stored_at_ms = excluded.stored_at_ms, enriched_at_ms = excluded.enriched_at_ms \
         WHERE excluded.enriched_at_ms > orders.enriched_at_ms AND excluded.user_id = orders.user_id \
         AND excluded.product = orders.product AND excluded.quantity = orders.quantity",
    )?;
    statement.execute(params![
        order.order_id.as_bytes().as_slice(),
        order.user_id,
        order.product,
        order.quantity,
        order.unit_price_minor,
        order.line_total_minor,
        order.currency,
        order.received_at_ms,
        order.enriched_at_ms,
        stored_at_ms,
        order.bucket,
        order.shard,
    ])?;
    Ok(())
}

#[async_trait]
impl ShardWriter for SqliteShard {
    async fn migrate(&self) -> Result<(), SinkError> {
        let applied = self
            .with_conn(|conn| schema::migrate(conn, schema::MIGRATIONS))
            .await?;
        for version in applied {
            tracing::info!(shard = self.name, version, "shard schema migrated");
        }
        Ok(())
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<Position>, SinkError> {
        let consumer = consumer.to_string();
        self.with_conn(move |conn| {
            let mut statement = conn.prepare(
                "SELECT topic, partition_id, next_offset FROM sluice_offsets WHERE consumer = ?",
            )?;
            let rows = statement.query_map([consumer], |row| {
                Ok(Position {
                    topic: row.get(0)?,
                    partition: row.get(1)?,
                    next_offset: row.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn claim(
        &self,
        consumer: &str,
        owner: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Claimed>, SinkError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let (consumer, owner, partitions) =
            (consumer.to_string(), owner.to_string(), partitions.to_vec());
        self.with_conn(move |conn| {
            let now = now_ms();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for p in &partitions {
                tx.prepare_cached(
                    "INSERT INTO sluice_owners (consumer, topic, partition_id, epoch, owner, claimed_at_ms) VALUES (?,?,?,1,?,?) \
                     ON CONFLICT (consumer, topic, partition_id) DO UPDATE SET epoch = epoch + 1, owner = excluded.owner, \
                     claimed_at_ms = excluded.claimed_at_ms",
                )?
                .execute(params![consumer, p.topic, p.partition, owner, now])?;
            }
            let rows = {
                let mut statement = tx.prepare(
                    "SELECT o.topic, o.partition_id, o.epoch, p.next_offset FROM sluice_owners o \
                     LEFT JOIN sluice_offsets p ON p.consumer = o.consumer AND p.topic = o.topic AND p.partition_id = o.partition_id \
                     WHERE o.consumer = ?",
                )?;
                let rows = statement.query_map([&consumer], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(crate::writer::claimed(&partitions, rows))
        })
        .await
    }

    async fn write_batch(&self, consumer: &str, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (consumer, batch_owned) = (consumer.to_string(), batch.clone());
        let fenced = self.with_conn(move |conn| {
            let now = now_ms();
            // Immediate: the owner epochs read below cannot change before the commit.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !batch_owned.epochs.is_empty() {
                let mut owners = Vec::with_capacity(batch_owned.epochs.len());
                for (p, _) in &batch_owned.epochs {
                    let epoch: Option<i64> = tx
                        .prepare_cached(
                            "SELECT epoch FROM sluice_owners WHERE consumer = ? AND topic = ? AND partition_id = ?",
                        )?
                        .query_row(params![consumer, p.topic, p.partition], |row| row.get(0))
                        .optional()?;
                    owners.extend(epoch.map(|epoch| (p.topic.clone(), p.partition, epoch)));
                }
                let fenced = crate::writer::fenced(&batch_owned.epochs, &owners);
                if !fenced.is_empty() {
                    return Ok(fenced); // the transaction rolls back when dropped
                }
            }
            for order in &batch_owned.orders {
                insert_order(&tx, order, now)?;
            }
            for r in &batch_owned.rejections {
                tx.prepare_cached(
                    "INSERT INTO rejected_orders (order_id, user_id, stage, reason, rejected_at_ms) VALUES (?,?,?,?,?) \
                     ON CONFLICT (order_id) DO NOTHING",
                )?
                .execute(params![r.order_id.as_bytes().as_slice(), r.user_id, r.stage, r.reason, r.rejected_at_ms])?;
            }
            for p in &batch_owned.positions {
                tx.prepare_cached(
                    "INSERT INTO sluice_offsets (consumer, topic, partition_id, next_offset, updated_at_ms) VALUES (?,?,?,?,?) \
                     ON CONFLICT (consumer, topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset, \
                     updated_at_ms = excluded.updated_at_ms",
                )?
                .execute(params![consumer, p.topic, p.partition, p.next_offset, now])?;
            }
            tx.commit()?;
            Ok(Vec::new())
        })
        .await?;
        if !fenced.is_empty() {
            return Err(SinkError::Fenced {
                shard: self.name.clone(),
                partitions: fenced,
            });
        }
        crate::writer::record_committed(&self.name, batch, started);
        Ok(())
    }

    async fn find(&self, user_id: &str, order_id: Uuid) -> Result<OrderStatus, SinkError> {
        let user_id = user_id.to_string();
        let found = self.with_conn(move |conn| {
            let id = order_id.as_bytes().to_vec();
            let stored = conn
                .query_row(
                    "SELECT user_id, product, quantity, unit_price_minor, line_total_minor, currency, received_at_ms, \
                     enriched_at_ms, bucket, shard FROM orders WHERE order_id = ? AND user_id = ?",
                    params![id, user_id],
                    |row| {
                        Ok(EnrichedOrder {
                            order_id,
                            user_id: row.get(0)?,
                            product: row.get(1)?,
                            quantity: row.get(2)?,
                            unit_price_minor: row.get(3)?,
                            line_total_minor: row.get(4)?,
                            currency: row.get(5)?,
                            received_at_ms: row.get(6)?,
                            enriched_at_ms: row.get(7)?,
                            bucket: row.get(8)?,
                            shard: row.get(9)?,
                        })
                    },
                )
                .optional()?;
            if let Some(order) = stored {
                return Ok(OrderStatus::Stored { order });
            }
            let rejected = conn
                .query_row(
                    "SELECT stage, reason FROM rejected_orders WHERE order_id = ? AND user_id = ?",
                    params![id, user_id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?;
            Ok(match rejected {
                Some((stage, reason)) => OrderStatus::Rejected { stage, reason },
                None => OrderStatus::Unknown,
            })
        })
        .await;
        crate::writer::found_unless_not_created(&self.name, found)
    }
}
