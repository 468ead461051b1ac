//! Sluice stream processors.
//!
//! A [`Stage`] passes one [`Item`] (a record, decoded once) on to a topic, possibly changed,
//! or rejects it with a reason. Stages are synchronous and do no I/O (an enrich stage reads
//! the clock and its cached catalog, nothing else). Consecutive stages are fused into a
//! [`Chain`] that runs as one task (see [`chain`]); the [`runner`] owns the I/O: it reads a
//! batch, runs each record through the chain, writes every output, and commits the input
//! positions only once the log acknowledged them (at-least-once; the sinks are idempotent).
//!
//! Stages are declared in `topology.toml` as `[[stages]]` ([`StageConfig`]); each kind is one
//! folder under `stages/` with its config, checks and construction ([`StageKind`]).

pub mod catalog;
pub mod chain;
pub mod config;
pub mod item;
pub mod runner;
pub mod stage;
pub mod stages;

pub use catalog::{Catalog, CatalogEntry};
pub use chain::{build_chains, Chain, Neighbours};
pub use config::{validate, KindConfig, StageConfig, StageContext, StageKind};
pub use item::Item;
pub use runner::{run_chain, RunnerError, StageRunner};
pub use stage::{Outcome, Stage};

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
