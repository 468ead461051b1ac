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
    /// How long a consumer group waits for a silent member (a process killed, frozen or cut
    /// off from the brokers) before its partitions move to the group's other members, in
    /// milliseconds. Lower fails over sooner; too low, and a long pause (a full disk, a
    /// stalled VM) moves partitions needlessly. The brokers accept
    /// `group.min.session.timeout.ms` (6 s) to `group.max.session.timeout.ms` (30 min) by
    /// default. Default 10 000.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
}

/// The default `session_timeout_ms`: 10 s.
fn default_session_timeout_ms() -> u64 {
    10_000
}

/// librdkafka properties Sluice sets itself on its consumers, and what to use instead.
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("group.id", "consumer groups are named `<[log] consumer_group_prefix>.<stage>` and `<prefix>.sink.<shard>.sink`; set `[log] consumer_group_prefix`"),
    ("session.timeout.ms", "set `session_timeout_ms` in [log.kafka]"),
    ("partition.assignment.strategy", "Sluice's consumers use cooperative-sticky assignment, which rebalances without stopping the other members"),
    ("enable.auto.commit", "Sluice commits positions itself, only after the work is done"),
    ("enable.auto.offset.store", "Sluice commits positions itself, only after the work is done"),
];

impl KafkaLogConfig {
    /// Settings for the brokers `brokers` (comma-separated `host:port`), with every other
    /// setting at its default.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaLogConfig {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
            session_timeout_ms: default_session_timeout_ms(),
        }
    }

    /// Checks the settings; `at` is where the table is, e.g. `log.kafka`.
    pub fn validate(&self, at: &str, issues: &mut Issues) {
        if self.brokers.trim().is_empty() {
            issues.push(
                format!("{at}.brokers"),
                "the Kafka backend needs bootstrap servers, e.g. \"127.0.0.1:9092\"",
            );
        }
        self.validate_group_settings(at, issues);
    }

    /// Checks the consumer-group settings: properties Sluice manages itself are refused, and
    /// the session timeout must be one a broker can accept.
    fn validate_group_settings(&self, at: &str, issues: &mut Issues) {
        for (name, instead) in MANAGED_PROPERTIES {
            if self.properties.contains_key(*name) {
                issues.push(
                    format!("{at}.properties.{name}"),
                    format!("Sluice sets {name:?} itself: remove it ({instead})"),
                );
            }
        }
        if !(1_000..=1_800_000).contains(&self.session_timeout_ms) {
            issues.push(
                format!("{at}.session_timeout_ms"),
                format!(
                    "{} ms is out of range: use 1000 to 1800000 (brokers accept 6000 to 1800000 by default)",
                    self.session_timeout_ms
                ),
            );
        }
    }
}
