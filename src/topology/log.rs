//! `[log]`: which backend carries the topics. Each backend's settings live in its own table
//! (`[log.embedded]`, `[log.kafka]`), defined beside its code; both may be written, so one
//! file switches backends with `backend = "${SLUICE_LOG_BACKEND:-embedded}"`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::log::{Log, LogError};
use sluice_core::topology::Issues;
use sluice_log_embedded::EmbeddedLogConfig;
use sluice_log_kafka::{KafkaLog, KafkaLogConfig};

/// The log backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogBackend {
    /// Apache Kafka (or any Kafka-protocol broker), through librdkafka: `[log.kafka]`.
    Kafka,
    /// The embedded log: one local file, no services, one process: `[log.embedded]`.
    Embedded,
}

/// `[log]`: where the topics live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Backend: `"embedded"` (a local file, no services) or `"kafka"`.
    pub backend: LogBackend,
    /// Prefix of every consumer group name: a stage's group is `<prefix>.<stage name>`, a
    /// shard sink's `<prefix>.sink.<shard>.sink`.
    #[serde(default = "default_group_prefix")]
    pub consumer_group_prefix: String,
    /// The embedded log's settings (used when `backend = "embedded"`).
    #[serde(default)]
    pub embedded: EmbeddedLogConfig,
    /// The Kafka backend's settings (needed when `backend = "kafka"`).
    #[serde(default)]
    pub kafka: Option<KafkaLogConfig>,
}

fn default_group_prefix() -> String {
    "sluice".into()
}

impl LogConfig {
    /// Checks `[log]` and the selected backend's table.
    pub fn validate(&self, issues: &mut Issues) {
        if self.consumer_group_prefix.trim().is_empty() {
            issues.push("log.consumer_group_prefix", "must not be empty");
        }
        match (self.backend, &self.kafka) {
            (LogBackend::Embedded, _) => self.embedded.validate("log.embedded", issues),
            (LogBackend::Kafka, Some(kafka)) => kafka.validate("log.kafka", issues),
            (LogBackend::Kafka, None) => issues.push(
                "log.kafka",
                "the Kafka backend needs a [log.kafka] table with brokers = \"host:9092,...\"",
            ),
        }
    }

    /// Opens the selected backend; relative paths resolve against `base_dir` (the topology
    /// file's folder). Call within a Tokio runtime (the embedded log starts its retention
    /// sweeper there).
    pub fn open(&self, base_dir: &Path) -> Result<Arc<dyn Log>, LogError> {
        match (self.backend, &self.kafka) {
            (LogBackend::Embedded, _) => Ok(Arc::new(self.embedded.open(base_dir)?)),
            (LogBackend::Kafka, Some(kafka)) => {
                Ok(Arc::new(KafkaLog::new(kafka, &self.consumer_group_prefix)?))
            }
            (LogBackend::Kafka, None) => Err(LogError::backend_message(
                "the Kafka backend needs a [log.kafka] table; run `sluice check`",
            )),
        }
    }
}
