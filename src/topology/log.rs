//! `[log]`: which backend carries the topics. Each backend's settings live in its own table
//! (`[log.embedded]`, `[log.kafka]`), defined beside its code; both may be written, so one
//! file switches backends with `backend = "${SLUICE_LOG_BACKEND:-embedded}"`.

use std::collections::BTreeMap;
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
    /// Any other key: refused by [`LogConfig::validate`], which says where a setting that
    /// moved to a backend's table now goes (`deny_unknown_fields` could not say that).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// Settings that were once written directly under `[log]`, and the table they belong to now.
const MOVED: [(&str, &str); 6] = [
    ("path", "log.embedded"),
    ("retention_hours", "log.embedded"),
    ("retention_records", "log.embedded"),
    ("min_free_mib", "log.embedded"),
    ("max_pending_appends", "log.embedded"),
    ("brokers", "log.kafka"),
];

fn default_group_prefix() -> String {
    "sluice".into()
}

impl LogConfig {
    /// Checks `[log]` and the selected backend's table.
    pub fn validate(&self, issues: &mut Issues) {
        for key in self.unknown.keys() {
            match MOVED.iter().find(|(moved, _)| moved == key) {
                Some((_, table)) => issues.push(
                    format!("log.{key}"),
                    format!("this setting belongs to the backend's own table now: move it under [{table}]"),
                ),
                None => issues.push(
                    format!("log.{key}"),
                    "unknown setting; [log] takes backend and consumer_group_prefix, and the tables [log.embedded] and [log.kafka]",
                ),
            }
        }
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
