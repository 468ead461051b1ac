//! `[log.kafka]`: the Kafka backend's settings and their checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_core::topology::Issues;

/// `[log.kafka]`: Apache Kafka (or any Kafka-protocol broker), through librdkafka.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaLogConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Extra librdkafka properties for every client, e.g.
    /// `"security.protocol" = "SASL_SSL"`, or `"queue.buffering.max.messages"` to change the
    /// producer's bound (100 000 records and 64 MiB by default).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaLogConfig {
    /// Checks the settings; `at` is where the table is, e.g. `log.kafka`.
    pub fn validate(&self, at: &str, issues: &mut Issues) {
        if self.brokers.trim().is_empty() {
            issues.push(
                format!("{at}.brokers"),
                "the Kafka backend needs bootstrap servers, e.g. \"127.0.0.1:9092\"",
            );
        }
    }
}
