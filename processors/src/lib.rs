//! Sluice stream processors.
//!
//! A [`Stage`] turns one input record into records for other topics, or rejects it with a
//! reason. Stages are synchronous and do no I/O (an enrich stage reads the clock and its
//! cached catalog, nothing else); the [`runner`] owns the I/O: it reads a batch, runs the
//! stage on each record, writes every output, waits for the log to acknowledge them, and only
//! then commits the input positions (at-least-once; the sinks are idempotent).
//!
//! Stages are declared in `topology.toml` as `[[stages]]` ([`StageConfig`]); each kind is one
//! folder under `stages/` with its config, checks and construction ([`StageKind`]).

pub mod catalog;
pub mod config;
pub mod runner;
pub mod stage;
pub mod stages;

use std::sync::Arc;

pub use catalog::{Catalog, CatalogEntry};
pub use config::{validate, KindConfig, StageConfig, StageContext, StageKind};
pub use runner::{run_stage, RunnerError, StageRunner};
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

/// A stage's declaration next to the stage built from it.
pub type BuiltStage = (StageConfig, Arc<dyn Stage>);

/// Builds every stage of `stages`, in file order.
pub fn build_stages(
    stages: &[StageConfig],
    context: &StageContext,
) -> Result<Vec<BuiltStage>, BuildError> {
    stages
        .iter()
        .map(|config| Ok((config.clone(), config.build(context)?)))
        .collect()
}
