//! The MySQL / MariaDB shard schema, as numbered migrations (see [`crate::migrations`]).

use crate::migrations::Migration;

/// The migrations in order; append new ones, never edit applied ones.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders, rejected orders and consumer positions",
        statements: &[
            "CREATE TABLE IF NOT EXISTS orders (
        order_id BINARY(16) NOT NULL PRIMARY KEY COMMENT 'UUIDv7, time-ordered',
        user_id VARCHAR(255) NOT NULL,
        product VARCHAR(255) NOT NULL,
        quantity BIGINT NOT NULL,
        unit_price_minor BIGINT NOT NULL,
        line_total_minor BIGINT NOT NULL,
        currency CHAR(3) NOT NULL,
        received_at_ms BIGINT NOT NULL,
        enriched_at_ms BIGINT NOT NULL,
        stored_at_ms BIGINT NOT NULL,
        bucket INT UNSIGNED NOT NULL,
        shard VARCHAR(64) NOT NULL,
        KEY orders_by_user (user_id, order_id)
    ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS rejected_orders (
        order_id BINARY(16) NOT NULL PRIMARY KEY,
        user_id VARCHAR(255) NOT NULL,
        stage VARCHAR(255) NOT NULL,
        reason TEXT NOT NULL,
        rejected_at_ms BIGINT NOT NULL,
        KEY rejected_by_user (user_id, order_id)
    ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS sluice_offsets (
        consumer VARCHAR(191) NOT NULL,
        topic VARCHAR(249) NOT NULL,
        partition_id INT NOT NULL,
        next_offset BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (consumer, topic, partition_id)
    ) ENGINE=InnoDB",
        ],
    },
    Migration {
        version: 2,
        name: "rejected orders indexed by user",
        // MySQL shards have had `rejected_by_user` since version 1 (SQLite's lacked it).
        statements: &[],
    },
    Migration {
        version: 3,
        name: "owner epochs of consumer positions",
        statements: &["CREATE TABLE IF NOT EXISTS sluice_owners (
        consumer VARCHAR(191) NOT NULL,
        topic VARCHAR(249) NOT NULL,
        partition_id INT NOT NULL,
        epoch BIGINT NOT NULL COMMENT 'raised by every claim; writes under an older epoch are refused',
        owner VARCHAR(255) NOT NULL COMMENT 'host and process id of the claiming sink',
        claimed_at_ms BIGINT NOT NULL,
        PRIMARY KEY (consumer, topic, partition_id)
    ) ENGINE=InnoDB"],
    },
];
