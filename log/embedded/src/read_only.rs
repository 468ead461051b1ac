//! The embedded log opened read-only, for commands that only look (`sluice replay --dry-run`):
//! the file is opened for reading, never created, repaired or written, and no writer thread
//! starts. Every write is refused with [`LogError::Backend`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::ReadOnlyDatabase;
use sluice_core::log::{
    blocking, Assignment, Delivery, Log, LogError, OutRecord, PartitionReader, Position, Record,
};

use super::{offset_for_time_sync, read_state, stored_position, PartitionState};

/// An embedded log file opened read-only: partition counts, watermarks, offsets by time and
/// stored consumer positions, as of the moment it was opened.
pub struct ReadOnlyEmbeddedLog {
    db: Arc<ReadOnlyDatabase>,
    path: PathBuf,
    topics: HashMap<String, Vec<PartitionState>>,
}

impl ReadOnlyEmbeddedLog {
    /// Opens the existing log at `path` for reading only. Fails when there is no file there,
    /// when a process holds it (the running `sluice`), or when it was not closed cleanly (a
    /// read-only open does not repair it; the next `sluice run` does).
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let db = ReadOnlyDatabase::open(path).map_err(|error| match error {
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::NotFound =>
            {
                LogError::backend(format!("no embedded log at {}", path.display()), io)
            }
            error @ redb::DatabaseError::DatabaseAlreadyOpen => LogError::backend(
                format!(
                    "{} is in use by another process (a running `sluice`)",
                    path.display()
                ),
                error,
            ),
            error @ redb::DatabaseError::RepairAborted => LogError::backend(
                format!(
                    "the embedded log {} was not closed cleanly and needs a repair, which a \
                     read-only open does not do: start `sluice run` once (it repairs the log), \
                     then try again",
                    path.display()
                ),
                error,
            ),
            other => LogError::backend(
                format!("cannot open the embedded log {} read-only", path.display()),
                other,
            ),
        })?;
        let topics = read_state(&db)?;
        Ok(ReadOnlyEmbeddedLog {
            db: Arc::new(db),
            path: path.to_path_buf(),
            topics,
        })
    }

    /// The file the log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn partition(&self, topic: &str, partition: i32) -> Result<PartitionState, LogError> {
        let partitions = self
            .topics
            .get(topic)
            .ok_or_else(|| LogError::UnknownTopic(topic.to_string()))?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| partitions.get(p).copied())
            .ok_or_else(|| {
                LogError::backend_message(format!("topic {topic:?} has no partition {partition}"))
            })
    }

    fn refuse(&self, what: &str) -> LogError {
        LogError::backend_message(format!(
            "the embedded log {} is open read-only: cannot {what}",
            self.path.display()
        ))
    }
}

#[async_trait]
impl Log for ReadOnlyEmbeddedLog {
    async fn ensure_topics(&self, _topics: &[(String, u32, u32)]) -> Result<(), LogError> {
        Err(self.refuse("create topics"))
    }

    async fn send(
        &self,
        _topic: &str,
        _record: OutRecord,
        _timeout: Duration,
    ) -> Result<Delivery, LogError> {
        Err(self.refuse("append records"))
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.topics
            .get(topic)
            .map(|p| p.len() as u32)
            .ok_or_else(|| LogError::UnknownTopic(topic.to_string()))
    }

    async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), LogError> {
        let state = self.partition(topic, partition)?;
        Ok((state.low as i64, state.next as i64))
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        time_ms: i64,
    ) -> Result<i64, LogError> {
        let state = self.partition(topic, partition)?;
        let (db, topic) = (self.db.clone(), topic.to_string());
        blocking(move || {
            offset_for_time_sync(&*db, &topic, partition as u32, &state, time_ms).map(|o| o as i64)
        })
        .await
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        Ok(())
    }

    async fn reader(&self, group: &str) -> Result<Box<dyn PartitionReader>, LogError> {
        Ok(Box::new(ReadOnlyReader {
            db: self.db.clone(),
            path: self.path.clone(),
            group: group.to_string(),
        }))
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), LogError> {
        Ok(())
    }
}

/// A reader of a read-only log: it reads stored positions ([`PartitionReader::committed`]);
/// reading records and committing are refused.
struct ReadOnlyReader {
    db: Arc<ReadOnlyDatabase>,
    path: PathBuf,
    group: String,
}

impl ReadOnlyReader {
    fn refuse(&self, what: &str) -> LogError {
        LogError::backend_message(format!(
            "the embedded log {} is open read-only: cannot {what}",
            self.path.display()
        ))
    }
}

#[async_trait]
impl PartitionReader for ReadOnlyReader {
    async fn assign(&mut self, _assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        Err(self.refuse("read records"))
    }

    async fn poll(&mut self, _max: usize, _wait: Duration) -> Result<Vec<Record>, LogError> {
        Err(self.refuse("read records"))
    }

    async fn commit(&mut self, _positions: &[Position]) -> Result<(), LogError> {
        Err(self.refuse("store positions"))
    }

    async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>, LogError> {
        let (db, group, topic) = (self.db.clone(), self.group.clone(), topic.to_string());
        blocking(move || {
            Ok(stored_position(&*db, &group, &topic, partition as u32)?.map(|n| n as i64))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedLog, Retention};

    /// Everything in `dir`: names, sizes and modification times.
    fn listing(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    meta.len(),
                    meta.modified().unwrap(),
                )
            })
            .collect();
        entries.sort();
        entries
    }

    #[tokio::test]
    async fn a_missing_log_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("log.redb");
        let error = ReadOnlyEmbeddedLog::open(&path).err().unwrap();
        assert!(error.to_string().contains("no embedded log at"), "{error}");
        assert!(listing(dir.path()).is_empty(), "the open created something");
    }

    #[tokio::test]
    async fn reads_what_the_log_holds_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        {
            let log = EmbeddedLog::open(&path, Retention::KEEP_ALL).unwrap();
            log.ensure_topics(&[("t".into(), 2, 1)]).await.unwrap();
            for n in 0..5 {
                log.send(
                    "t",
                    OutRecord::new("k", format!("{n}")),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            }
            let mut consumer = log.reader("g").await.unwrap();
            let partition = crate::partition_for(b"k", 2);
            consumer
                .commit(&[Position {
                    topic: "t".into(),
                    partition,
                    next_offset: 3,
                }])
                .await
                .unwrap();
        }
        // Modification times only move in whole ticks of the file system's clock.
        std::thread::sleep(Duration::from_millis(20));
        let before = listing(dir.path());
        let log = ReadOnlyEmbeddedLog::open(&path).unwrap();
        let partition = crate::partition_for(b"k", 2);
        assert_eq!(log.partition_count("t").await.unwrap(), 2);
        assert_eq!(log.watermarks("t", partition).await.unwrap(), (0, 5));
        assert_eq!(log.offset_for_time("t", partition, 0).await.unwrap(), 0);
        let mut reader = log.reader("g").await.unwrap();
        assert_eq!(reader.committed("t", partition).await.unwrap(), Some(3));
        assert_eq!(reader.committed("t", 1 - partition).await.unwrap(), None);
        assert!(log.ensure_topics(&[("u".into(), 1, 1)]).await.is_err());
        assert!(reader
            .commit(&[Position {
                topic: "t".into(),
                partition,
                next_offset: 4,
            }])
            .await
            .is_err());
        drop(reader);
        drop(log);
        assert_eq!(
            listing(dir.path()),
            before,
            "the read-only open changed the folder"
        );
    }
}
