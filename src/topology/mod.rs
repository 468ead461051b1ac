//! `topology.toml`: the whole file's model, put together from each component's own section,
//! and its loading (with `${VAR}` substitution), validation and drawing.
//!
//! Loading is strict (`deny_unknown_fields`, so a misspelt key is an error) and validation is
//! pure: [`load`] returns either a topology that is safe to build, or every problem at once.
//! Each section is checked by the component that owns it; the shared parts (topics, shards,
//! the data flow) by `sluice_core::topology`.

mod env;
mod log;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_core::topology::{
    ChainDrawing, Flow, GraphFormat, Issue, Issues, ShardConfig, ShardingConfig, TopicConfig,
    Wiring,
};
use sluice_ingress::IngressConfig;
use sluice_processors::config::stage_location;
use sluice_processors::{build_chains, Catalog, Chain, Neighbours, StageConfig, StageContext};
use sluice_sinks::SinkConfig;

pub use env::{interpolate, substitute_env, Substituted};
pub use log::{LogBackend, LogConfig};

/// A whole `topology.toml`: the log, its topics, the ingress, the stages, the catalog, the
/// shards and the sink settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Which log backend carries the topics, and how to reach it.
    pub log: LogConfig,
    /// Every topic the pipeline uses, by name.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    /// The HTTP ingress.
    pub ingress: IngressConfig,
    /// The processing stages, each reading one topic and writing the next.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Products that can be ordered: product code → price and currency.
    #[serde(default)]
    pub catalog: Catalog,
    /// How user ids map to virtual buckets.
    #[serde(default)]
    pub sharding: ShardingConfig,
    /// The shards that store orders, each owning a range of buckets.
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Batching of the shard sink workers.
    #[serde(default)]
    pub sink: SinkConfig,
    /// The operations listener.
    #[serde(default)]
    pub ops: OpsConfig,
    /// Folder the topology was loaded from; relative paths in it resolve against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file the topology was loaded from (empty when parsed from memory).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[ops]`: a listener with `/healthz`, `/readyz` and `/metrics` for any set of parts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Address of the operations listener; leave out to serve those routes only on the
    /// ingress listeners (which a `--only processors|sinks` process does not open). In
    /// production mode the ingress listeners answer only a bare `/healthz` and `/readyz`, so
    /// `/metrics` and the reasons of `/readyz` are served here alone: keep it off the public
    /// network.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Milliseconds between two readings of the topics' end offsets for the consumer lag
    /// metrics (`sluice_consumer_lag_records`, `sluice_consumer_lag_seconds`); at least 100.
    #[serde(default = "default_lag_interval_ms")]
    pub lag_interval_ms: u64,
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver (such as
    /// `http://localhost:4318`): spans are sent to `{otlp_endpoint}/v1/traces` as OTLP/JSON.
    /// Leave out to export no spans (or to take `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: None,
            lag_interval_ms: default_lag_interval_ms(),
            otlp_endpoint: None,
        }
    }
}

fn default_lag_interval_ms() -> u64 {
    sluice_core::lag::DEFAULT_INTERVAL.as_millis() as u64
}

impl Topology {
    /// What components may look up: declared topics and the shards.
    pub fn wiring(&self) -> Wiring<'_> {
        Wiring {
            topics: &self.topics,
            sharding: &self.sharding,
            shards: &self.shards,
        }
    }

    /// What stages may look up while they are checked and built.
    pub fn stage_context(&self) -> StageContext<'_> {
        StageContext {
            wiring: self.wiring(),
            catalog: &self.catalog,
        }
    }

    /// The topics the ingress writes and the sinks read besides the shard topics: a stage
    /// reading one of them is never fused behind another (see [`sluice_processors::chain`]).
    pub fn stage_neighbours(&self) -> Neighbours<'_> {
        Neighbours {
            writes: vec![
                self.ingress.orders_topic.as_str(),
                self.ingress.logins_topic.as_str(),
            ],
            reads: self
                .sink
                .rejections_topic
                .iter()
                .map(String::as_str)
                .collect(),
        }
    }

    /// The stages fused into chains, as `sluice run` runs them.
    pub fn chains(&self) -> Result<Vec<Chain>, sluice_processors::BuildError> {
        build_chains(
            &self.stages,
            &self.stage_context(),
            &self.stage_neighbours(),
        )
    }

    /// The chains `sluice run` runs, as indexes into `stages` (see
    /// [`sluice_processors::chain::plan`]).
    pub fn chain_plan(&self) -> Vec<Vec<usize>> {
        sluice_processors::chain::plan(
            &self.stages,
            &self.stage_context(),
            &self.stage_neighbours(),
        )
    }

    /// Stage `name` and the stages fused behind it, built (what a replay of that stage runs,
    /// so its records reach the topics live ones reach); `None` when no stage has that name.
    pub fn chain_from(&self, name: &str) -> Result<Option<Chain>, sluice_processors::BuildError> {
        for indexes in self.chain_plan() {
            if let Some(at) = indexes.iter().position(|&i| self.stages[i].name == name) {
                let chain = sluice_processors::chain::build_chain(
                    &self.stages,
                    &indexes[at..],
                    &self.stage_context(),
                )?;
                return Ok(Some(chain));
            }
        }
        Ok(None)
    }

    /// The stage that stage `name` is fused behind in its chain, if any.
    pub fn fused_feeder(&self, name: &str) -> Option<&StageConfig> {
        self.chain_plan().into_iter().find_map(|chain| {
            let at = chain.iter().position(|&i| self.stages[i].name == name)?;
            at.checked_sub(1).map(|feeder| &self.stages[chain[feeder]])
        })
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageConfig> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    /// The shard named `name`.
    pub fn shard(&self, name: &str) -> Option<&ShardConfig> {
        self.shards.iter().find(|shard| shard.name == name)
    }

    /// The topics a stage writes, besides its dead-letter topic.
    pub fn stage_outputs(&self, stage: &StageConfig) -> Vec<String> {
        stage.outputs(&self.stage_context())
    }

    /// The shard map described by `[sharding]` and `[[shards]]` (valid topologies only).
    pub fn shard_map(&self) -> Option<sluice_core::sharding::ShardMap> {
        self.wiring().shard_map()
    }

    /// Resolves a path from the topology against the topology's folder.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        sluice_core::topology::resolve_relative(&self.base_dir, path)
    }

    /// Which component reads and writes which topic.
    pub fn flow(&self) -> Flow {
        let context = self.stage_context();
        let mut flow = Flow::default();
        flow.nodes.push(self.ingress.flow_node());
        for (index, stage) in self.stages.iter().enumerate() {
            let at = stage_location(index, stage);
            flow.nodes.push(stage.flow_node(&context, &at));
        }
        flow.nodes.extend(self.sink.flow_nodes(&self.wiring()));
        flow
    }

    /// Checks every section and the data flow; returns every issue found (empty when the
    /// topology is valid).
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Issues::new();
        let wiring = self.wiring();
        self.log.validate(&mut issues);
        wiring.check(&mut issues);
        self.ingress.validate(&wiring, &mut issues);
        sluice_processors::validate(&self.stages, &self.stage_context(), &mut issues);
        self.sink.validate(&wiring, &mut issues);
        self.flow().check(&mut issues);
        if self.ops.lag_interval_ms < 100 {
            issues.push("ops.lag_interval_ms", "must be at least 100 (milliseconds)");
        }
        issues.into_vec()
    }

    /// The flow drawn in `format` (`sluice graph`), each chain of fused stages in a box.
    pub fn render(&self, format: GraphFormat) -> String {
        let chains: Vec<ChainDrawing> = self
            .chain_plan()
            .into_iter()
            .map(|chain| ChainDrawing {
                stages: chain.iter().map(|&i| self.stages[i].name.clone()).collect(),
                skipped: chain[..chain.len() - 1]
                    .iter()
                    .zip(&chain[1..])
                    .filter(|&(&feeder, _)| !self.stages[feeder].write_output)
                    .map(|(_, &fused)| self.stages[fused].input.clone())
                    .collect(),
            })
            .collect();
        self.flow().render_chains(format, &chains)
    }
}

/// Why a topology could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `${VAR}` references without a value or default.
    #[error("{path}: environment variables not set (and no `:-default` given): {}", .names.join(", "))]
    MissingVariables {
        /// The file.
        path: PathBuf,
        /// The unset variables.
        names: Vec<String>,
    },
    /// The TOML does not match the topology schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        message: String,
    },
    /// The topology parsed but is not consistent.
    #[error("{path}: {} problem(s):\n{}", .issues.len(), .issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<Issue>,
    },
}

/// Reads, substitutes, parses and validates the topology at `path`.
pub fn load(path: &Path) -> Result<Topology, TopologyError> {
    let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, path, base_dir)
}

/// Like [`load`], for topology text already in memory; `path` only names it in errors.
pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Topology, TopologyError> {
    let substituted = substitute_env(text, |name| std::env::var(name).ok()).map_err(|names| {
        TopologyError::MissingVariables {
            path: path.to_path_buf(),
            names,
        }
    })?;
    let mut topology: Topology =
        toml::from_str(&substituted.text).map_err(|error| TopologyError::Parse {
            path: path.to_path_buf(),
            // Never the parser's `Display`: it quotes the failing line, which may hold a
            // secret (a `jwt_secret` written literally). The explanation and position only,
            // with values that came from the environment masked too.
            message: substituted.values.iter().filter(|v| v.len() >= 4).fold(
                sluice_ingress::toml_error::describe(&error, &substituted.text),
                |m, v| m.replace(v.as_str(), "***"),
            ),
        })?;
    topology.base_dir = base_dir;
    topology.source = path.to_path_buf();
    check(topology)
}

/// Validates a topology built in code (or loaded): it comes back only when it is valid.
pub fn check(topology: Topology) -> Result<Topology, TopologyError> {
    let issues = topology.validate();
    if issues.is_empty() {
        Ok(topology)
    } else {
        Err(TopologyError::Invalid {
            path: topology.source.clone(),
            issues,
        })
    }
}

#[cfg(test)]
mod tests;
