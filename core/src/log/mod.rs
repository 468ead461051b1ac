//! The log: a partitioned, keyed, replayable sequence of records per topic.
//!
//! - [`Log::send`] resolves only once the record is durable (for Kafka: acknowledged by all
//!   in-sync replicas, through an idempotent producer);
//! - a [`LogConsumer`] reads partitions from a chosen [`StartFrom`] position and commits
//!   positions explicitly, so the caller decides when work is done. It hands out every record
//!   exactly once and in order per partition: a backend that skips offsets (a failed poll, a
//!   storage error) is rewound, and a position beyond what was read cannot be committed, so
//!   no consumer of the log ever commits past a record it did not see (see [`consumer`]);
//! - records of one key always land in one partition, so a user's orders stay in order.

pub mod consumer;
pub mod metered;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use consumer::{Claims, CommittedStarts, LogConsumer, PartitionReader};
pub use metered::MeteredLog;

use crate::topology::TopicConfig;

/// Pauses of a consumer's owner after failed polls (the log is unreachable or recovering),
/// growing from 100 ms to 5 s.
pub const POLL_BACKOFF: crate::retry::Backoff =
    crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A record to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutRecord {
    /// Partitioning key; records with the same key keep their order.
    pub key: Vec<u8>,
    /// The record body.
    pub payload: Vec<u8>,
    /// Named metadata (e.g. a dead-letter reason).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutRecord {
    /// A record with a key and payload and no headers.
    pub fn new(key: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> Self {
        OutRecord {
            key: key.into(),
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The value of header `name`, as UTF-8 text.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// The value of header `name` among `headers`, as UTF-8 text.
pub fn header_value<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Partitioning key (empty when the producer set none).
    pub key: Vec<u8>,
    /// The record body.
    pub payload: Vec<u8>,
    /// Named metadata.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Append time in milliseconds since the Unix epoch, when known.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The value of header `name`, as UTF-8 text.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The key as UTF-8 text (lossy).
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// The position that resumes reading right after this record.
    pub fn next_position(&self) -> Position {
        Position {
            topic: self.topic.clone(),
            partition: self.partition,
            next_offset: self.offset + 1,
        }
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition the record was written to.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// A consumer position: the next offset to read in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The offset of the next record to read.
    pub next_offset: i64,
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The position committed by this consumer's group, else the beginning.
    Committed,
    /// The oldest retained record.
    Beginning,
    /// After the newest record.
    End,
    /// A given offset.
    Offset(i64),
    /// The first record appended at or after this time (ms since the Unix epoch).
    Time(i64),
    /// A position this consumer stored earlier (for example in a shard, beside the rows it
    /// produced). Unlike [`StartFrom::Offset`], records that retention removed after it are
    /// reported as skipped (`sluice_log_records_skipped_total`), never passed over silently.
    Resume(i64),
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic/partition, …`, for messages and log lines.
    pub fn list(partitions: &[TopicPartition]) -> String {
        partitions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A change of the partitions a group member reads, reported by a [`PartitionReader`] that
/// was [subscribed](PartitionReader::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// The group gave these partitions to this member. The reader reads none of them until
    /// it is told where to start ([`PartitionReader::accept`]).
    Assigned(Vec<TopicPartition>),
    /// The group took these partitions away (`lost`: without asking, because this member
    /// was considered dead or its client was replaced). The reader reads them no more.
    Revoked {
        /// The partitions.
        partitions: Vec<TopicPartition>,
        /// Whether they were taken without a revocation (another member may already own
        /// them).
        lost: bool,
    },
}

/// One partition to read and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Start position.
    pub start: StartFrom,
}

/// Errors from the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The record was not acknowledged within the allowed time.
    #[error("the log did not acknowledge the record within {0:?}")]
    Timeout(Duration),
    /// The backend is unreachable or refused the operation. Build it with
    /// [`LogError::backend`] when the backend reported an error of its own, else with
    /// [`LogError::backend_message`].
    #[error("log backend error: {message}{}", caused_by(.source))]
    Backend {
        /// What failed, in words that say what to check.
        message: String,
        /// The backend's own error (librdkafka's, redb's, the file system's), when there is
        /// one; its message also ends this error's.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The topic does not exist.
    #[error("topic {0:?} does not exist; declare it in topology.toml so `sluice run` creates it")]
    UnknownTopic(String),
    /// The log has no room for new records now (its append queue is full, or its disk is
    /// nearly full); the record was not taken. Retrying later can succeed.
    #[error("the log cannot take more records now: {0}; retry shortly")]
    Overloaded(String),
    /// A topic exists with fewer partitions than the topology declares: records keyed to
    /// the missing partitions would have nowhere to go, and the parts would disagree on
    /// where a key lives.
    #[error(
        "topic {topic:?} has {actual} partitions but topology.toml declares {declared}: add partitions to the topic (kafka-topics.sh --alter --topic {topic} --partitions {declared}; keyed records then move partitions, so do it while the pipeline is drained), or declare {actual}"
    )]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// Partitions declared in `[topics]`.
        declared: u32,
        /// Partitions the topic has.
        actual: u32,
    },
    /// The consumer group rebalanced (or this member was fenced out of it) while positions
    /// were being committed: they were not stored. The partitions' owners read the records
    /// again from the last stored positions (at-least-once).
    #[error("the consumer group rebalanced before the positions were committed: {0}")]
    Rebalanced(String),
    /// A consumer was asked to commit a position beyond the records it handed out; committing
    /// it would lose the records in between. This is a bug in the caller.
    #[error(
        "refusing to commit {topic}/{partition} at offset {position}: this consumer has only read up to {read:?}; \
         committing would skip records nobody processed"
    )]
    CommitPastRead {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The position that was to be committed.
        position: i64,
        /// The next offset the consumer would hand out (`None`: the partition is not assigned).
        read: Option<i64>,
    },
}

impl LogError {
    /// A [`LogError::Backend`] caused by the backend's own `source` error (kept whole for
    /// [`std::error::Error::source`]); `message` says what failed.
    pub fn backend(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        LogError::Backend {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A [`LogError::Backend`] that no error of the backend caused (the log is closed, a
    /// partition does not exist): `message` says it all.
    pub fn backend_message(message: impl Into<String>) -> Self {
        LogError::Backend {
            message: message.into(),
            source: None,
        }
    }
}

/// `": {source}"`, or nothing when there is no source.
fn caused_by(source: &Option<Box<dyn std::error::Error + Send + Sync>>) -> String {
    source
        .as_ref()
        .map(|source| format!(": {source}"))
        .unwrap_or_default()
}

/// A partitioned, replayable log.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates the topics that do not exist yet with the given partition counts and replication.
    async fn ensure_topics(&self, topics: &[(String, u32, u32)]) -> Result<(), LogError>;

    /// Appends `record` to `topic` and resolves once it is durable, or fails after `timeout`.
    async fn send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError>;

    /// Number of partitions of `topic`.
    async fn partition_count(&self, topic: &str) -> Result<u32, LogError>;

    /// `(low, high)`: the oldest retained offset and the offset the next record will get.
    async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), LogError>;

    /// The offset of the first record of a partition appended at or after `time_ms`
    /// (ms since the Unix epoch), or the high watermark when there is none.
    async fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        time_ms: i64,
    ) -> Result<i64, LogError>;

    /// Appends a record that brings new work into the pipeline (an order from a client), like
    /// [`Log::send`], except that when the log has no room for more it fails at once with
    /// [`LogError::Overloaded`] instead of waiting, so the caller can answer "retry later"
    /// while the log keeps its room for the work already inside (stage outputs use
    /// [`Log::send`], which waits for room).
    async fn try_send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        self.send(topic, record, timeout).await
    }

    /// Whether the backend answers now (for `/readyz`).
    async fn check_ready(&self) -> Result<(), LogError>;

    /// A backend reader whose committed positions are stored under `group`. Read through
    /// [`Log::consumer`], which adds the checks that no record is skipped.
    async fn reader(&self, group: &str) -> Result<Box<dyn PartitionReader>, LogError>;

    /// A new consumer whose committed positions are stored under `group`.
    async fn consumer(&self, group: &str) -> Result<LogConsumer, LogError> {
        Ok(LogConsumer::new(self.reader(group).await?, group))
    }

    /// Waits until records handed to [`Log::send`] are out, for at most `timeout`.
    async fn flush(&self, timeout: Duration) -> Result<(), LogError>;
}

/// Creates every topic of `[topics]` that does not exist yet.
pub async fn ensure_declared_topics(
    log: &dyn Log,
    topics: &BTreeMap<String, TopicConfig>,
) -> Result<(), LogError> {
    let declared: Vec<_> = topics
        .iter()
        .map(|(name, t)| (name.clone(), t.partitions, t.replication))
        .collect();
    log.ensure_topics(&declared).await?;
    for (topic, config) in topics {
        match compare_partitions(topic, config.partitions, log.partition_count(topic).await?) {
            PartitionCount::AsDeclared => {}
            PartitionCount::More { declared, actual } => tracing::warn!(
                topic = %topic,
                declared,
                actual,
                "the topic has more partitions than topology.toml declares; every partition is read, but declare {actual} to say what runs"
            ),
            PartitionCount::Fewer(error) => return Err(error),
        }
    }
    Ok(())
}

/// How a topic's partitions compare with the topology's declaration.
#[derive(Debug)]
pub enum PartitionCount {
    /// As many as declared.
    AsDeclared,
    /// More than declared: workable (every partition is read), but worth a warning.
    More {
        /// Partitions declared.
        declared: u32,
        /// Partitions the topic has.
        actual: u32,
    },
    /// Fewer than declared: an error ([`LogError::TooFewPartitions`]).
    Fewer(LogError),
}

/// Compares the `actual` partitions of `topic` with the `declared` ones.
pub fn compare_partitions(topic: &str, declared: u32, actual: u32) -> PartitionCount {
    match actual.cmp(&declared) {
        std::cmp::Ordering::Equal => PartitionCount::AsDeclared,
        std::cmp::Ordering::Greater => PartitionCount::More { declared, actual },
        std::cmp::Ordering::Less => PartitionCount::Fewer(LogError::TooFewPartitions {
            topic: topic.to_string(),
            declared,
            actual,
        }),
    }
}

/// Assignments for every partition of `topics`, all starting at `start`.
pub async fn assign_all(
    log: &dyn Log,
    topics: &[String],
    start: StartFrom,
) -> Result<Vec<Assignment>, LogError> {
    let mut assignments = Vec::new();
    for topic in topics {
        for partition in 0..log.partition_count(topic).await? as i32 {
            assignments.push(Assignment {
                topic: topic.clone(),
                partition,
                start,
            });
        }
    }
    Ok(assignments)
}

/// Runs blocking backend work (librdkafka metadata calls, redb transactions) off the async
/// threads; for log backends.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::backend("worker thread failed", e))?
}

/// A stored position moved into `[low, high]`, for log backends. Below `low`, retention deleted records the
/// consumer never read: that is reported as an error and counted, never silently skipped.
pub fn clamp_position(topic: &str, partition: i32, stored: i64, low: i64, high: i64) -> i64 {
    if stored < low {
        report_skipped(topic, partition, low - stored);
    } else if stored > high {
        tracing::warn!(
            topic,
            partition,
            stored,
            high,
            "stored position is past the end of the partition; reading from its end"
        );
    }
    stored.clamp(low, high)
}

/// Records that `count` unread records of a partition were removed by retention.
pub fn report_skipped(topic: &str, partition: i32, count: i64) {
    tracing::error!(
        topic,
        partition,
        count,
        "records were deleted by retention before this consumer read them; raise the retention or catch up faster"
    );
    metrics::counter!(crate::telemetry::LOG_RECORDS_SKIPPED, "topic" => topic.to_string())
        .increment(count.max(0) as u64);
}
