//! The SQLite shard schema, as numbered migrations (see [`crate::migrations`]), and how they
//! are applied: each in one transaction, with its version.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sluice_core::order::now_ms;

use crate::migrations::{latest, pending, Migration, SCHEMA_TABLE};

/// The migrations in order; append new ones, never edit applied ones.
///
/// Version 1 is the schema SQLite shards had before they were versioned, statement for
/// statement (`IF NOT EXISTS`), so such a shard takes it as a no-op and is then upgraded.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders, rejected orders and consumer positions",
        statements: &[
            "CREATE TABLE IF NOT EXISTS orders (
    order_id BLOB NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    product TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price_minor INTEGER NOT NULL,
    line_total_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    enriched_at_ms INTEGER NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    shard TEXT NOT NULL
) WITHOUT ROWID",
            "CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, order_id)",
            "CREATE TABLE IF NOT EXISTS rejected_orders (
    order_id BLOB NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at_ms INTEGER NOT NULL
) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS sluice_offsets (
    consumer TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, topic, partition_id)
) WITHOUT ROWID",
        ],
    },
    Migration {
        version: 2,
        name: "rejected orders indexed by user",
        statements: &[
            "CREATE INDEX IF NOT EXISTS rejected_by_user ON rejected_orders (user_id, order_id)",
        ],
    },
    Migration {
        version: 3,
        name: "owner epochs of consumer positions",
        statements: &["CREATE TABLE IF NOT EXISTS sluice_owners (
    consumer TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL,
    claimed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, topic, partition_id)
) WITHOUT ROWID"],
    },
];

/// The highest version recorded in the shard, 0 for a shard with no version table.
fn applied_version(conn: &Connection) -> Result<u32, rusqlite::Error> {
    let versioned = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            [SCHEMA_TABLE],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !versioned {
        return Ok(0);
    }
    conn.query_row(
        &format!("SELECT COALESCE(MAX(version), 0) FROM {SCHEMA_TABLE}"),
        [],
        |row| row.get(0),
    )
}

/// Applies the `migrations` the shard does not have yet, in order, each with its version in
/// one transaction (a failing one leaves no trace and stops the rest); returns the versions
/// applied. A shard already up to date is only read, so a shard locked by another writer can
/// still be checked. Concurrent callers are serialised by SQLite's write lock, and each
/// re-reads the version inside its transaction, so a migration is never applied twice.
pub(crate) fn migrate(
    conn: &mut Connection,
    migrations: &'static [Migration],
) -> Result<Vec<u32>, rusqlite::Error> {
    let mut applied_now = Vec::new();
    if applied_version(conn)? >= latest(migrations) {
        return Ok(applied_now);
    }
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (
            version INTEGER NOT NULL PRIMARY KEY,
            applied_at_ms INTEGER NOT NULL
        )"
    ))?;
    for migration in pending(migrations, 0) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if applied_version(&tx)? >= migration.version {
            continue; // dropping the transaction ends it
        }
        for statement in migration.statements {
            tx.execute_batch(statement)?;
        }
        tx.execute(
            &format!("INSERT INTO {SCHEMA_TABLE} (version, applied_at_ms) VALUES (?, ?)"),
            params![migration.version, now_ms()],
        )?;
        tx.commit()?;
        applied_now.push(migration.version);
    }
    Ok(applied_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(conn: &Connection) -> Vec<u32> {
        let mut statement = conn
            .prepare(&format!(
                "SELECT version FROM {SCHEMA_TABLE} ORDER BY version"
            ))
            .unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn table_exists(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = ?",
            [name],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
            > 0
    }

    #[test]
    fn migrations_apply_in_order_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        let all: Vec<u32> = (1..=latest(MIGRATIONS)).collect();
        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), all);
        assert_eq!(versions(&conn), all);
        assert!(
            migrate(&mut conn, MIGRATIONS).unwrap().is_empty(),
            "a second run applies nothing"
        );
        assert_eq!(versions(&conn), all);
    }

    /// A made-up history whose second migration fails half-way.
    const BROKEN: &[Migration] = &[
        Migration {
            version: 1,
            name: "one table",
            statements: &["CREATE TABLE first (id INTEGER PRIMARY KEY)"],
        },
        Migration {
            version: 2,
            name: "a table, then a mistake",
            statements: &[
                "CREATE TABLE second (id INTEGER PRIMARY KEY)",
                "CREATE INDEX broken ON no_such_table (id)",
            ],
        },
        Migration {
            version: 3,
            name: "never reached",
            statements: &["CREATE TABLE third (id INTEGER PRIMARY KEY)"],
        },
    ];

    #[test]
    fn a_failing_migration_leaves_no_trace_and_stops_the_rest() {
        let mut conn = Connection::open_in_memory().unwrap();
        let error = migrate(&mut conn, BROKEN).unwrap_err();
        assert!(error.to_string().contains("no_such_table"), "{error}");
        assert_eq!(versions(&conn), vec![1], "only the first is recorded");
        assert!(table_exists(&conn, "first"));
        assert!(
            !table_exists(&conn, "second"),
            "the failed migration's first statement was rolled back"
        );
        assert!(!table_exists(&conn, "third"));
    }
}
