//! The sections of `topology.toml` every component refers to: topics, sharding and shards.
//! Their `///` comments are the user documentation of these settings.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Issues;
use crate::sharding::{BucketRange, ShardMap};

/// `[topics.<name>]`: one topic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions, created when the topic does not exist yet.
    pub partitions: u32,
    /// Replication factor used when creating the topic.
    #[serde(default = "default_replication")]
    pub replication: u32,
}

fn default_replication() -> u32 {
    1
}

/// `[sharding]`: user id → bucket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    /// Number of virtual buckets. Fixed for the life of the data: shards own bucket ranges.
    #[serde(default = "default_buckets")]
    pub buckets: u32,
}

fn default_buckets() -> u32 {
    256
}

impl Default for ShardingConfig {
    fn default() -> Self {
        ShardingConfig {
            buckets: default_buckets(),
        }
    }
}

/// `[[shards]]`: one database that stores the orders of a bucket range.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Unique shard name, stored in each row's `shard` column.
    pub name: String,
    /// Database URL, e.g. `mysql://user:password@host:3306/database` or
    /// `sqlite://data/shard0.db`; the database is created when missing. Use `${VAR}` to keep
    /// passwords out of the file.
    pub url: String,
    /// Inclusive bucket range this shard owns, e.g. `"0-63"`.
    pub buckets: BucketRange,
    /// Topic the route stage writes this shard's orders to, and its sink worker reads.
    pub topic: String,
}

/// What a component's validation and construction may look up in the rest of the topology:
/// the declared topics and the shard map.
#[derive(Debug, Clone, Copy)]
pub struct Wiring<'a> {
    /// Every declared topic, by name.
    pub topics: &'a BTreeMap<String, TopicConfig>,
    /// `[sharding]`.
    pub sharding: &'a ShardingConfig,
    /// `[[shards]]`, in file order.
    pub shards: &'a [ShardConfig],
}

impl Wiring<'_> {
    /// Records an issue at `at` unless `topic` is declared under `[topics]`.
    pub fn check_topic(&self, topic: &str, at: impl Into<String>, issues: &mut Issues) {
        if !self.topics.contains_key(topic) {
            let known: Vec<_> = self.topics.keys().map(String::as_str).collect();
            issues.push(
                at,
                format!(
                    "topic {topic:?} is not declared; add [topics.\"{topic}\"] or use one of: {}",
                    known.join(", ")
                ),
            );
        }
    }

    /// The shard map described by `[sharding]` and `[[shards]]` (`None` when the shards do
    /// not cover every bucket exactly once; [`Wiring::check`] says why).
    pub fn shard_map(&self) -> Option<ShardMap> {
        let ranges: Vec<_> = self
            .shards
            .iter()
            .map(|s| (s.name.clone(), s.buckets))
            .collect();
        ShardMap::new(self.sharding.buckets, &ranges)
    }

    /// The shards' topics, in shard order.
    pub fn shard_topics(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.topic.clone()).collect()
    }

    /// Checks `[topics]`, `[sharding]` and `[[shards]]`.
    pub fn check(&self, issues: &mut Issues) {
        self.check_topics(issues);
        self.check_shards(issues);
    }

    fn check_topics(&self, issues: &mut Issues) {
        for (name, topic) in self.topics {
            if topic.partitions == 0 {
                issues.push(
                    format!("topics.\"{name}\".partitions"),
                    "must be at least 1",
                );
            }
            if topic.replication == 0 {
                issues.push(
                    format!("topics.\"{name}\".replication"),
                    "must be at least 1",
                );
            }
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                issues.push(
                    format!("topics.\"{name}\""),
                    "topic names may only use letters, digits, '.', '_' and '-'",
                );
            }
        }
    }

    fn check_shards(&self, issues: &mut Issues) {
        let buckets = self.sharding.buckets;
        if buckets == 0 {
            issues.push("sharding.buckets", "must be at least 1");
            return;
        }
        if self.shards.is_empty() {
            issues.push("shards", "declare at least one [[shards]] entry");
            return;
        }
        let mut names = BTreeSet::new();
        let mut topics = BTreeSet::new();
        let mut owner: Vec<Option<&str>> = vec![None; buckets as usize];
        for (index, shard) in self.shards.iter().enumerate() {
            let at = format!("shards[{index}] {:?}", shard.name);
            if !names.insert(shard.name.as_str()) {
                issues.push(
                    format!("{at}.name"),
                    "another shard has the same name; shard names must be unique",
                );
            }
            if !topics.insert(shard.topic.as_str()) {
                issues.push(
                    format!("{at}.topic"),
                    "another shard reads the same topic; each shard needs its own",
                );
            }
            self.check_topic(&shard.topic, format!("{at}.topic"), issues);
            if shard.buckets.last >= buckets {
                issues.push(
                    format!("{at}.buckets"),
                    format!(
                        "range {} goes past the last bucket {} (sharding.buckets = {buckets})",
                        shard.buckets,
                        buckets - 1
                    ),
                );
                continue;
            }
            for bucket in shard.buckets.first..=shard.buckets.last {
                if let Some(other) = owner[bucket as usize] {
                    issues.push(
                        format!("{at}.buckets"),
                        format!("bucket {bucket} is also owned by shard {other:?}"),
                    );
                    break;
                }
                owner[bucket as usize] = Some(shard.name.as_str());
            }
        }
        for (first, last) in uncovered_runs(&owner) {
            issues.push(
                "shards",
                format!(
                    "buckets {first}-{last} belong to no shard; extend a range so that 0-{} is covered",
                    buckets - 1
                ),
            );
        }
    }
}

fn uncovered_runs(owner: &[Option<&str>]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (bucket, slot) in owner.iter().enumerate() {
        match (slot, start) {
            (None, None) => start = Some(bucket),
            (Some(_), Some(first)) => {
                runs.push((first, bucket - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        runs.push((first, owner.len() - 1));
    }
    runs
}
