//! Sluice stream processors.
//!
//! A [`Stage`] turns one input record into records for other topics, or rejects it with a
//! reason. Stages are pure and synchronous; the [`runner`] owns the I/O: it reads a batch,
//! runs the stage on each record, writes every output, waits for the log to acknowledge them,
//! and only then commits the input positions (at-least-once; the sinks are idempotent).
//!
//! Stages are declared in `topology.toml`; [`build_stages`] turns those declarations into
//! runnable stages.

pub mod catalog;
pub mod runner;
pub mod stage;
pub mod stages;

use std::sync::Arc;

pub use runner::{run_stage, RunnerError, StageRunner};
use sluice_core::topology::{StageConfig, StageKind, Topology};
pub use stage::{Emission, Outcome, Stage};

/// Why stages could not be built from a topology.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The topology's shard map is inconsistent (run `sluice check`).
    #[error("the shards do not cover every bucket exactly once; run `sluice check` for details")]
    ShardMap,
    /// A validate stage's user id pattern does not compile.
    #[error("stage {stage:?}: user_id_pattern is not a valid regular expression: {error}")]
    Pattern {
        /// The stage.
        stage: String,
        /// The regex error.
        #[source]
        error: regex::Error,
    },
}

/// Builds the stage declared by `config`.
pub fn build_stage(
    topology: &Topology,
    config: &StageConfig,
) -> Result<Arc<dyn Stage>, BuildError> {
    let shard_map = topology.shard_map().ok_or(BuildError::ShardMap)?;
    Ok(match config.kind {
        StageKind::Validate => {
            let rules = config.rules.clone().unwrap_or_default();
            let known: std::collections::HashSet<String> =
                topology.catalog.keys().cloned().collect();
            Arc::new(
                stages::Validate::new(config, &rules, known).map_err(|error| {
                    BuildError::Pattern {
                        stage: config.name.clone(),
                        error,
                    }
                })?,
            )
        }
        StageKind::Enrich => {
            let catalog = catalog::CachedCatalog::new(Arc::new(catalog::TopologyCatalog::new(
                &topology.catalog,
            )));
            Arc::new(stages::Enrich::new(
                config,
                catalog,
                shard_map,
                topology.shards.iter().map(|s| s.name.clone()).collect(),
            ))
        }
        StageKind::Route => Arc::new(stages::Route::new(
            config,
            shard_map,
            topology.shards.iter().map(|s| s.topic.clone()).collect(),
        )),
    })
}

/// A stage's declaration next to the stage built from it.
pub type BuiltStage = (StageConfig, Arc<dyn Stage>);

/// Builds every stage of `topology`, in file order.
pub fn build_stages(topology: &Topology) -> Result<Vec<BuiltStage>, BuildError> {
    topology
        .stages
        .iter()
        .map(|config| Ok((config.clone(), build_stage(topology, config)?)))
        .collect()
}
