//! The shared part of the topology model: topics, sharding and shards, which every component
//! refers to, and the tools each component uses to check its own section of `topology.toml`.
//!
//! Each component owns its configuration, beside its code, with its own validation and
//! construction: the ingress its `[ingress]` section, the processors their `[[stages]]` (one
//! config per stage kind) and `[catalog]`, the sinks their `[sink]` section, each log backend
//! its `[log.<backend>]` table. The `sluice` binary puts the sections together into the whole
//! file's model and loads it. What they share lives here:
//!
//! - [`TopicConfig`], [`ShardingConfig`], [`ShardConfig`]: the topics and the shard map;
//! - [`Issues`]: every problem found, each with the place in the file to change;
//! - [`Wiring`]: what a component's validation may look up (declared topics, shards);
//! - [`Flow`]: which component reads and writes which topic, checked for unfed inputs and
//!   cycles ([`Flow::check`]) and drawn by `sluice graph` ([`Flow::render`]).

mod flow;
mod issues;
mod model;

use std::path::{Path, PathBuf};

pub use flow::{ChainDrawing, Flow, FlowNode, GraphFormat, NodeKind};
pub use issues::{Issue, Issues};
pub use model::*;

/// `path` as written in a topology: absolute as is, relative to `base_dir` (the topology
/// file's folder) otherwise.
pub fn resolve_relative(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}
