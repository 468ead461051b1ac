//! The shard schema as numbered migrations, one list per backend with the same numbers.
//!
//! Every backend keeps the versions it applied in a `sluice_schema` table
//! (`version`, `applied_at_ms`) and, when a shard starts, applies the migrations after the
//! highest one in order, each recorded as it is applied, so `migrate` is idempotent and a
//! shard created by an older Sluice catches up. Migration `n` means the same change on every
//! backend (its `name` says which), written in that backend's SQL; where a backend already
//! had the change, its statements are empty. SQLite applies each migration in one
//! transaction; MySQL / MariaDB commit DDL statements one by one, so their migrations are
//! written to be safe to run again (`IF NOT EXISTS`) should a crash stop one half-way.
//!
//! Append new migrations to both lists; never edit one that was released.

/// The table that records the applied migrations.
pub const SCHEMA_TABLE: &str = "sluice_schema";

/// One numbered change of the shard schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number: 1 for the first, one more for each next.
    pub version: u32,
    /// What it changes, the same words on every backend.
    pub name: &'static str,
    /// The statements, in this backend's SQL, run in order.
    pub statements: &'static [&'static str],
}

/// The version a fully migrated shard is at: the last migration's number.
pub fn latest_version() -> u32 {
    latest(crate::mysql::schema::MIGRATIONS)
}

/// The number of the last of `migrations` (0 when there is none).
pub(crate) fn latest(migrations: &[Migration]) -> u32 {
    migrations.last().map_or(0, |m| m.version)
}

/// The migrations of `migrations` that a shard at version `applied` still needs, in order.
pub(crate) fn pending(
    migrations: &'static [Migration],
    applied: u32,
) -> impl Iterator<Item = &'static Migration> {
    migrations.iter().filter(move |m| m.version > applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered_from_one(migrations: &[Migration]) -> bool {
        migrations
            .iter()
            .enumerate()
            .all(|(index, m)| m.version as usize == index + 1)
    }

    #[test]
    fn every_backend_has_the_same_numbered_migrations() {
        let mysql = crate::mysql::schema::MIGRATIONS;
        let sqlite = crate::sqlite::schema::MIGRATIONS;
        assert!(numbered_from_one(mysql), "{mysql:#?}");
        assert!(numbered_from_one(sqlite), "{sqlite:#?}");
        let names =
            |list: &[Migration]| list.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(
            names(mysql),
            names(sqlite),
            "the backends' migrations drifted"
        );
        assert_eq!(latest(sqlite), latest_version());
    }

    #[test]
    fn pending_migrations_are_those_after_the_applied_version() {
        let sqlite = crate::sqlite::schema::MIGRATIONS;
        let all: Vec<u32> = pending(sqlite, 0).map(|m| m.version).collect();
        assert_eq!(all, (1..=latest(sqlite)).collect::<Vec<_>>());
        assert_eq!(pending(sqlite, 1).next().map(|m| m.version), Some(2));
        assert_eq!(pending(sqlite, latest(sqlite)).count(), 0);
        assert_eq!(pending(sqlite, latest(sqlite) + 5).count(), 0);
    }
}
