//! `[sink]`: batching of the shard sink workers, and the checks of what the sinks read from
//! the rest of the topology (the shards' URLs and topics).

use serde::{Deserialize, Serialize};
use sluice_core::topology::{FlowNode, Issues, NodeKind, Wiring};

/// `[sink]`: batching of the shard sink workers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A batch is written once it holds this many rows, in one transaction (on MariaDB /
    /// MySQL as INSERTs of at most [`crate::mysql::ROWS_PER_STATEMENT`] rows each): under a
    /// backlog a transaction's fixed cost, its round trips and its commit, is shared by this
    /// many rows...
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// ...or once its first row has waited this long, whichever comes first.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Dead-letter topic whose records each shard stores for its own users, so that
    /// `GET /order/{id}` can report rejections. Leave out to not record rejections.
    #[serde(default)]
    pub rejections_topic: Option<String>,
}

fn default_max_rows() -> usize {
    2000
}

fn default_max_wait_ms() -> u64 {
    200
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            max_rows: default_max_rows(),
            max_wait_ms: default_max_wait_ms(),
            rejections_topic: None,
        }
    }
}

impl SinkConfig {
    /// Checks `[sink]` and the shards' URLs.
    pub fn validate(&self, wiring: &Wiring, issues: &mut Issues) {
        if self.max_rows == 0 {
            issues.push("sink.max_rows", "must be at least 1");
        }
        if self.max_wait_ms == 0 {
            issues.push("sink.max_wait_ms", "must be at least 1");
        }
        if let Some(topic) = &self.rejections_topic {
            wiring.check_topic(topic, "sink.rejections_topic", issues);
        }
        for (index, shard) in wiring.shards.iter().enumerate() {
            if !shard.url.starts_with("mysql://") && !shard.url.starts_with("sqlite://") {
                issues.push(
                    format!("shards[{index}] {:?}.url", shard.name),
                    "must be mysql://user:password@host:3306/database or sqlite://path/to/shard.db",
                );
            }
        }
    }

    /// Every shard's sink worker in the topology's data flow.
    pub fn flow_nodes(&self, wiring: &Wiring) -> Vec<FlowNode> {
        wiring
            .shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                let node = FlowNode::new(
                    NodeKind::Shard,
                    &shard.name,
                    format!("shards[{index}] {:?}", shard.name),
                )
                .reads_fed(
                    &shard.topic,
                    "sinks",
                    "topic",
                    "add a stage with kind = \"route\", which writes every shard's topic",
                );
                match &self.rejections_topic {
                    Some(topic) => node.reads(topic, "rejections"),
                    None => node,
                }
            })
            .collect()
    }
}
