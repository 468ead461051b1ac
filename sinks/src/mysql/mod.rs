//! The MySQL / MariaDB shard backend (`mysql_async`).
//!
//! Rows go in with prepared multi-row `INSERT … ON DUPLICATE KEY UPDATE` statements in which
//! the latest enrichment wins: a row already stored changes only when the incoming one was
//! enriched later (a replay of `enrich` after a catalog change), so replaying the same records
//! is a no-op, at most [`ROWS_PER_STATEMENT`] rows each,
//! inside the same transaction that upserts the consumer positions.

pub(crate) mod schema;

use std::sync::OnceLock;
use std::time::Instant;

use async_trait::async_trait;
use mysql_async::prelude::*;
use mysql_async::{Opts, OptsBuilder, Params, Pool, Statement, TxOpts, Value};
use sluice_core::log::{Position, TopicPartition};
use sluice_core::lookup::OrderStatus;
use sluice_core::order::{now_ms, EnrichedOrder};
use uuid::Uuid;

use crate::writer::{Batch, Claimed, Fault, ShardWriter, SinkError};

/// Largest number of rows in one INSERT statement.
pub const ROWS_PER_STATEMENT: usize = 500;

/// The columns of the orders INSERT, in the order [`order_params`] gives their values.
pub const ORDER_COLUMNS: &str =
    "order_id, user_id, product, quantity, unit_price_minor, line_total_minor, currency, \
     received_at_ms, enriched_at_ms, stored_at_ms, bucket, shard";
/// The placeholders of one row of the orders INSERT.
pub const ORDER_PLACEHOLDERS: &str = "(?,?,?,?,?,?,?,?,?,?,?,?)";
/// When a repeated row may replace the stored prices: it is a later enrichment of the *same*
/// order (same user, product and quantity, compared byte for byte). A repeat of the order id with
/// another body (an `Idempotency-Key` reused after the ingress forgot it) changes nothing: the
/// first stored body wins.
macro_rules! later_enrichment_of_the_same_order {
    () => {
        "VALUES(enriched_at_ms) > enriched_at_ms \
         AND CAST(VALUES(user_id) AS BINARY) = CAST(user_id AS BINARY) \
         AND CAST(VALUES(product) AS BINARY) = CAST(product AS BINARY) \
         AND VALUES(quantity) = quantity"
    };
}
/// Upsert clause: a stored row takes the incoming prices only from a later enrichment of the
/// same order (a repricing replay); it never changes what was ordered. `enriched_at_ms` is
/// assigned last because MySQL evaluates the assignments in order.
const LATEST_ENRICHMENT_WINS: &str = concat!(
    "ON DUPLICATE KEY UPDATE unit_price_minor = IF(",
    later_enrichment_of_the_same_order!(),
    ", VALUES(unit_price_minor), unit_price_minor), line_total_minor = IF(",
    later_enrichment_of_the_same_order!(),
    ", VALUES(line_total_minor), line_total_minor), currency = IF(",
    later_enrichment_of_the_same_order!(),
    ", VALUES(currency), currency), stored_at_ms = IF(",
    later_enrichment_of_the_same_order!(),
    ", VALUES(stored_at_ms), stored_at_ms), enriched_at_ms = IF(",
    later_enrichment_of_the_same_order!(),
    ", VALUES(enriched_at_ms), enriched_at_ms)"
);

/// Run on every new connection. On MariaDB (`/*M! … */` is MariaDB-only), a transaction that
/// sits idle for 10 s is rolled back and its connection closed: a sink process frozen in the
/// middle of a batch (SIGSTOP, a stalled VM) would otherwise hold its row locks, and the sink
/// process that takes its partitions over could not claim them until it woke. A live sink
/// sends a transaction's statements back to back, so it is never idle that long. MySQL has
/// no such setting: there a frozen sink's locks last until its connection ends.
const IDLE_TRANSACTION_LIMIT: &str =
    "SET @sluice_session = 1 /*M!100300 , SESSION idle_transaction_timeout = 10 */";

/// One MySQL shard.
pub struct MysqlShard {
    name: String,
    url: String,
    pool: Pool,
}

impl MysqlShard {
    /// A shard named `name` at `url` (`mysql://user:password@host:port/database`).
    /// Connections are made lazily; the database is created by [`ShardWriter::migrate`].
    pub fn new(name: &str, url: &str) -> Result<Self, SinkError> {
        let opts = parse_url(name, url)?;
        if opts.db_name().is_none() {
            return Err(SinkError::Url {
                shard: name.into(),
                message: "the URL must name a database, e.g. …/sluice".into(),
                source: None,
            });
        }
        // A connection goes back to the pool as it is, not reset: a reset drops the server's
        // prepared statements and the driver's statement cache with them, so every batch
        // prepared its 500-row INSERT again (6,000 parameters described back to the client),
        // which halved the rows a sink stores per second. The sink leaves no session state
        // behind: a transaction it drops is rolled back before the connection is reused, and
        // the setup below is the same for every connection. (So `reset_connection` in a shard
        // URL is overridden.)
        let pool_opts = opts.pool_opts().clone().with_reset_connection(false);
        let opts = OptsBuilder::from_opts(opts)
            .setup(vec![IDLE_TRANSACTION_LIMIT])
            .pool_opts(pool_opts);
        Ok(MysqlShard {
            name: name.to_string(),
            url: url.to_string(),
            pool: Pool::new(opts),
        })
    }

    /// The shard's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection pool (for tests and benchmarks).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn db_error(&self, error: mysql_async::Error) -> SinkError {
        SinkError::Database {
            shard: self.name.clone(),
            source: error.into(),
        }
    }

    async fn create_database(&self) -> Result<(), SinkError> {
        let opts = parse_url(&self.name, &self.url)?;
        let database = opts.db_name().unwrap_or_default().to_string();
        if !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(SinkError::Url {
                shard: self.name.clone(),
                message: format!("database name {database:?} may only use letters, digits and '_'"),
                source: None,
            });
        }
        let server = OptsBuilder::from_opts(opts).db_name(None::<String>);
        let mut conn = mysql_async::Conn::new(server)
            .await
            .map_err(|e| self.db_error(e))?;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"
        ))
        .await
        .map_err(|e| self.db_error(e))?;
        conn.disconnect().await.map_err(|e| self.db_error(e))
    }

    /// What the shard records about order `order_id` of `user_id`.
    async fn query_status(
        &self,
        user_id: &str,
        order_id: Uuid,
    ) -> Result<OrderStatus, mysql_async::Error> {
        let mut conn = self.pool.get_conn().await?;
        let id = order_id.as_bytes().to_vec();
        let stored: Option<OrderRow> = conn
            .exec_first(
                "SELECT order_id, user_id, product, quantity, unit_price_minor, line_total_minor, currency, \
                 received_at_ms, enriched_at_ms, bucket, shard FROM orders WHERE order_id = ? AND user_id = ?",
                (id.clone(), user_id),
            )
            .await?;
        if let Some(order) = stored.and_then(row_to_order) {
            return Ok(OrderStatus::Stored { order });
        }
        let rejected: Option<(String, String)> = conn
            .exec_first(
                "SELECT stage, reason FROM rejected_orders WHERE order_id = ? AND user_id = ?",
                (id, user_id),
            )
            .await?;
        Ok(match rejected {
            Some((stage, reason)) => OrderStatus::Rejected { stage, reason },
            None => OrderStatus::Unknown,
        })
    }
}

/// The driver's options for the URL of shard `shard`.
fn parse_url(shard: &str, url: &str) -> Result<Opts, SinkError> {
    Opts::from_url(url).map_err(|source| SinkError::Url {
        shard: shard.into(),
        message: "write it as mysql://user:password@host:port/database".into(),
        source: Some(source),
    })
}

/// Whether retrying a write that failed with `error` can help.
///
/// Lost, refused or broken connections are [`Fault::Transient`], and so are the server's
/// answers that mean "not now" (see [`server_fault`]). Errors about the data of a row are
/// [`Fault::Permanent`]. Everything else is [`Fault::Other`].
pub fn classify(error: &mysql_async::Error) -> Fault {
    use mysql_async::DriverError;
    match error {
        mysql_async::Error::Io(_) => Fault::Transient,
        mysql_async::Error::Driver(
            DriverError::ConnectionClosed
            | DriverError::PoolDisconnected
            | DriverError::PacketOutOfOrder
            | DriverError::UnexpectedPacket { .. },
        ) => Fault::Transient,
        mysql_async::Error::Server(server) => server_fault(server.code, &server.state),
        _ => Fault::Other,
    }
}

/// Classifies a MariaDB / MySQL server error by its code, then by its SQLSTATE class.
pub fn server_fault(code: u16, sqlstate: &str) -> Fault {
    match code {
        // Transient: the server cannot take the write now.
        1021 // ER_DISK_FULL
        | 1037 | 1038 | 1041 // out of memory
        | 1040 // ER_CON_COUNT_ERROR: too many connections
        | 1053 // ER_SERVER_SHUTDOWN
        | 1114 // ER_RECORD_FILE_FULL: the table (its disk) is full
        | 1135 // ER_CANT_CREATE_THREAD
        | 1152 | 1184 // aborted connection
        | 1158..=1161 // network read / write errors and interruptions
        | 1180 | 1181 // error during COMMIT / ROLLBACK
        | 1203 // ER_TOO_MANY_USER_CONNECTIONS
        | 1205 // ER_LOCK_WAIT_TIMEOUT
        | 1213 // ER_LOCK_DEADLOCK
        | 1226 // ER_USER_LIMIT_REACHED
        | 1290 // ER_OPTION_PREVENTS_STATEMENT: --read-only
        | 1317 // ER_QUERY_INTERRUPTED
        | 1637 // ER_TOO_MANY_CONCURRENT_TRXS
        | 1792 // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        | 1836 // ER_READ_ONLY_MODE
        | 1927 // ER_CONNECTION_KILLED (MariaDB)
        | 1969 // ER_STATEMENT_TIMEOUT (MariaDB max_statement_time)
        | 3024 // ER_QUERY_TIMEOUT (MySQL max_execution_time)
        | 4031 // ER_CLIENT_INTERACTION_TIMEOUT (MySQL)
        => Fault::Transient,
        // Permanent: the data of a row is refused (whatever their SQLSTATE).
        1048 // ER_BAD_NULL_ERROR
        | 1264 // ER_WARN_DATA_OUT_OF_RANGE
        | 1265 // WARN_DATA_TRUNCATED (an error in strict mode)
        | 1292 // ER_TRUNCATED_WRONG_VALUE
        | 1366 // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: incorrect value / string value
        | 1367 // ER_ILLEGAL_VALUE_FOR_TYPE
        | 1406 // ER_DATA_TOO_LONG
        | 1451 | 1452 // foreign key constraint
        | 1690 // ER_DATA_OUT_OF_RANGE
        | 3819 // ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
        | 4025 // ER_CONSTRAINT_FAILED (MariaDB CHECK)
        => Fault::Permanent,
        _ if sqlstate.starts_with("08") || sqlstate == "40001" => Fault::Transient,
        // Class 22: data exception; class 23: integrity constraint violation.
        _ if sqlstate.starts_with("22") || sqlstate.starts_with("23") => Fault::Permanent,
        _ => Fault::Other,
    }
}

/// Whether `error` says the shard's database or a table does not exist (see
/// [`DatabaseError::not_created_yet`](crate::writer::DatabaseError::not_created_yet)).
pub(crate) fn not_created_yet(error: &mysql_async::Error) -> bool {
    matches!(
        error,
        mysql_async::Error::Server(server) if matches!(
            server.code,
            1049 // ER_BAD_DB_ERROR: unknown database
            | 1146 // ER_NO_SUCH_TABLE
        )
    )
}

/// Appends the parameters of one row of the orders INSERT (its 12 columns, in the order of
/// the statement's column list) to `params`. Public for the benchmark that measures bare
/// INSERTs next to the sinks.
pub fn order_params(order: &EnrichedOrder, stored_at_ms: i64, params: &mut Vec<Value>) {
    params.extend([
        Value::from(order.order_id.as_bytes().to_vec()),
        Value::from(order.user_id.as_str()),
        Value::from(order.product.as_str()),
        Value::from(order.quantity),
        Value::from(order.unit_price_minor),
        Value::from(order.line_total_minor),
        Value::from(order.currency.as_str()),
        Value::from(order.received_at_ms),
        Value::from(order.enriched_at_ms),
        Value::from(stored_at_ms),
        Value::from(order.bucket),
        Value::from(order.shard.as_str()),
    ]);
}

/// A table's multi-row upsert, for any number of rows up to [`ROWS_PER_STATEMENT`].
struct Upsert {
    /// The statement's text for a number of rows.
    text: fn(usize) -> String,
    /// The text for [`ROWS_PER_STATEMENT`] rows, built once.
    full_text: OnceLock<String>,
}

impl Upsert {
    /// The text for [`ROWS_PER_STATEMENT`] rows.
    fn full_text(&self) -> &str {
        self.full_text
            .get_or_init(|| (self.text)(ROWS_PER_STATEMENT))
    }
}

/// The upsert of orders: the latest enrichment of an order wins.
static ORDERS_UPSERT: Upsert = Upsert {
    text: |rows| {
        format!(
            "INSERT INTO orders ({ORDER_COLUMNS}) VALUES {} {LATEST_ENRICHMENT_WINS}",
            placeholders(ORDER_PLACEHOLDERS, rows)
        )
    },
    full_text: OnceLock::new(),
};

/// The upsert of rejections: the first recorded rejection of an order stays.
static REJECTIONS_UPSERT: Upsert = Upsert {
    text: |rows| {
        format!(
            "INSERT INTO rejected_orders (order_id, user_id, stage, reason, rejected_at_ms) VALUES {} \
             ON DUPLICATE KEY UPDATE order_id = order_id",
            placeholders("(?,?,?,?,?)", rows)
        )
    },
    full_text: OnceLock::new(),
};

/// Runs `upsert` for `rows` rows. A full statement ([`ROWS_PER_STATEMENT`] rows, the shape of
/// every statement under a backlog) stays prepared on the connection for the next batch, and
/// is looked up once per batch: `full` holds it for the batch's other full chunks (given a
/// statement's text, mysql_async scans all of it, thousands of placeholders, for named
/// parameters first). Any other row count is prepared for this run only and closed after it:
/// batches that close on time have every size, and keeping each size's statement (with its
/// thousands of parameter descriptions, on the client and on the server) would grow the
/// sink's memory by tens of MiB per connection.
async fn exec_rows(
    tx: &mut mysql_async::Transaction<'_>,
    upsert: &Upsert,
    full: &mut Option<Statement>,
    params: Vec<Value>,
    rows: usize,
) -> Result<(), mysql_async::Error> {
    if rows == ROWS_PER_STATEMENT {
        let statement = match full {
            Some(statement) => statement,
            None => full.insert(tx.prep(upsert.full_text()).await?),
        };
        return tx.exec_drop(&*statement, Params::Positional(params)).await;
    }
    let statement = tx.prep((upsert.text)(rows)).await?;
    // Closed whether it ran or not: a refused row makes the worker split the batch into
    // pieces of every size, and each piece's statement would otherwise stay prepared.
    let ran = tx.exec_drop(&statement, Params::Positional(params)).await;
    let closed = tx.close(statement).await;
    ran.and(closed)
}

fn placeholders(template: &str, rows: usize) -> String {
    vec![template; rows].join(",")
}

type OrderRow = (
    Vec<u8>,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    i64,
    i64,
    u32,
    String,
);

fn row_to_order(row: OrderRow) -> Option<EnrichedOrder> {
    let (
        id,
        user_id,
        product,
        quantity,
        unit_price_minor,
        line_total_minor,
        currency,
        received_at_ms,
        enriched_at_ms,
        bucket,
        shard,
    ) = row;
    Some(EnrichedOrder {
        order_id: Uuid::from_slice(&id).ok()?,
        user_id,
        product,
        quantity,
        unit_price_minor,
        line_total_minor,
        currency,
        received_at_ms,
        enriched_at_ms,
        bucket,
        shard,
    })
}

#[async_trait]
impl ShardWriter for MysqlShard {
    async fn migrate(&self) -> Result<(), SinkError> {
        self.create_database().await?;
        let mut conn = self.pool.get_conn().await.map_err(|e| self.db_error(e))?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS sluice_schema (version INT NOT NULL PRIMARY KEY, applied_at_ms BIGINT NOT NULL) ENGINE=InnoDB",
        )
        .await
        .map_err(|e| self.db_error(e))?;
        let applied: Option<i64> = conn
            .query_first("SELECT MAX(version) FROM sluice_schema")
            .await
            .map_err(|e| self.db_error(e))?
            .flatten();
        let applied = applied.unwrap_or(0).max(0) as u32;
        // DDL commits by itself here, so each statement is written to be run again safely.
        for migration in crate::migrations::pending(schema::MIGRATIONS, applied) {
            for statement in migration.statements {
                conn.query_drop(*statement)
                    .await
                    .map_err(|e| self.db_error(e))?;
            }
            conn.exec_drop(
                "INSERT IGNORE INTO sluice_schema (version, applied_at_ms) VALUES (?, ?)",
                (migration.version, now_ms()),
            )
            .await
            .map_err(|e| self.db_error(e))?;
            tracing::info!(
                shard = self.name,
                version = migration.version,
                "shard schema migrated"
            );
        }
        Ok(())
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<Position>, SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(|e| self.db_error(e))?;
        let rows: Vec<(String, i32, i64)> = conn
            .exec(
                "SELECT topic, partition_id, next_offset FROM sluice_offsets WHERE consumer = ?",
                (consumer,),
            )
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(rows
            .into_iter()
            .map(|(topic, partition, next_offset)| Position {
                topic,
                partition,
                next_offset,
            })
            .collect())
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
        let now = now_ms();
        let mut tx = self
            .pool
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| self.db_error(e))?;
        let sql = format!(
            "INSERT INTO sluice_owners (consumer, topic, partition_id, epoch, owner, claimed_at_ms) VALUES {} \
             ON DUPLICATE KEY UPDATE epoch = epoch + 1, owner = VALUES(owner), claimed_at_ms = VALUES(claimed_at_ms)",
            placeholders("(?,?,?,1,?,?)", partitions.len())
        );
        let mut params = Vec::with_capacity(partitions.len() * 5);
        for p in partitions {
            params.extend([
                Value::from(consumer),
                Value::from(p.topic.as_str()),
                Value::from(p.partition),
                Value::from(owner),
                Value::from(now),
            ]);
        }
        tx.exec_drop(sql, Params::Positional(params))
            .await
            .map_err(|e| self.db_error(e))?;
        let rows: Vec<(String, i32, i64, Option<i64>)> = tx
            .exec(
                "SELECT o.topic, o.partition_id, o.epoch, p.next_offset FROM sluice_owners o \
                 LEFT JOIN sluice_offsets p ON p.consumer = o.consumer AND p.topic = o.topic AND p.partition_id = o.partition_id \
                 WHERE o.consumer = ?",
                (consumer,),
            )
            .await
            .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(crate::writer::claimed(partitions, rows))
    }

    async fn write_batch(&self, consumer: &str, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let now = now_ms();
        let mut tx = self
            .pool
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| self.db_error(e))?;
        if !batch.epochs.is_empty() {
            // Lock the batch's owner rows first: a claim by another process waits for this
            // transaction, or this one sees its new epoch and stores nothing.
            let sql = format!(
                "SELECT topic, partition_id, epoch FROM sluice_owners WHERE consumer = ? AND ({}) FOR UPDATE",
                vec!["(topic = ? AND partition_id = ?)"; batch.epochs.len()].join(" OR ")
            );
            let mut params = Vec::with_capacity(1 + batch.epochs.len() * 2);
            params.push(Value::from(consumer));
            for (p, _) in &batch.epochs {
                params.extend([Value::from(p.topic.as_str()), Value::from(p.partition)]);
            }
            let owners: Vec<(String, i32, i64)> = tx
                .exec(sql, Params::Positional(params))
                .await
                .map_err(|e| self.db_error(e))?;
            let fenced = crate::writer::fenced(&batch.epochs, &owners);
            if !fenced.is_empty() {
                drop(tx); // rolls back
                return Err(SinkError::Fenced {
                    shard: self.name.clone(),
                    partitions: fenced,
                });
            }
        }
        // Rows go in primary-key order: InnoDB then fills each page and starts the next
        // (order ids grow with time, and the reader hands records out in time order), where
        // rows out of order split pages half-full and log twice the redo. It also locks the
        // keys in one order in every transaction.
        let mut orders: Vec<&EnrichedOrder> = batch.orders.iter().collect();
        orders.sort_by_key(|order| order.order_id);
        let mut full = None;
        for chunk in orders.chunks(ROWS_PER_STATEMENT) {
            let mut params = Vec::with_capacity(chunk.len() * 12);
            for order in chunk {
                order_params(order, now, &mut params);
            }
            exec_rows(&mut tx, &ORDERS_UPSERT, &mut full, params, chunk.len())
                .await
                .map_err(|e| self.db_error(e))?;
        }
        let mut full = None;
        for chunk in batch.rejections.chunks(ROWS_PER_STATEMENT) {
            let mut params = Vec::with_capacity(chunk.len() * 5);
            for r in chunk {
                params.extend([
                    Value::from(r.order_id.as_bytes().to_vec()),
                    Value::from(r.user_id.as_str()),
                    Value::from(r.stage.as_str()),
                    Value::from(r.reason.as_str()),
                    Value::from(r.rejected_at_ms),
                ]);
            }
            exec_rows(&mut tx, &REJECTIONS_UPSERT, &mut full, params, chunk.len())
                .await
                .map_err(|e| self.db_error(e))?;
        }
        if !batch.positions.is_empty() {
            let sql = format!(
                "INSERT INTO sluice_offsets (consumer, topic, partition_id, next_offset, updated_at_ms) VALUES {} \
                 ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), updated_at_ms = VALUES(updated_at_ms)",
                placeholders("(?,?,?,?,?)", batch.positions.len())
            );
            let mut params = Vec::with_capacity(batch.positions.len() * 5);
            for p in &batch.positions {
                params.extend([
                    Value::from(consumer),
                    Value::from(p.topic.as_str()),
                    Value::from(p.partition),
                    Value::from(p.next_offset),
                    Value::from(now),
                ]);
            }
            tx.exec_drop(sql, Params::Positional(params))
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        crate::writer::record_committed(&self.name, batch, started);
        Ok(())
    }

    async fn find(&self, user_id: &str, order_id: Uuid) -> Result<OrderStatus, SinkError> {
        let found = self.query_status(user_id, order_id).await;
        crate::writer::found_unless_not_created(&self.name, found.map_err(|e| self.db_error(e)))
    }

    async fn close(&self) {
        let _ = self.pool.clone().disconnect().await;
    }
}
