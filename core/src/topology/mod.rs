//! `topology.toml`: loading (with `${VAR}` substitution), validation and rendering.
//!
//! Loading is strict (`deny_unknown_fields`, so a misspelt key is an error) and validation is
//! pure: [`load`] returns either a topology that is safe to build, or every problem at once.

mod env;
mod graph;
mod model;
mod validate;

use std::path::{Path, PathBuf};

pub use env::interpolate;
pub use graph::{render, GraphFormat};
pub use model::*;
pub use validate::{validate, Issue};

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

/// `path` as written in a topology: absolute as is, relative to `base_dir` (the topology
/// file's folder) otherwise.
pub fn resolve_relative(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
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
    let substituted = std::cell::RefCell::new(Vec::new());
    let text = interpolate(text, |name| {
        let value = std::env::var(name).ok();
        if let Some(value) = &value {
            substituted.borrow_mut().push(value.clone());
        }
        value
    })
    .map_err(|names| TopologyError::MissingVariables {
        path: path.to_path_buf(),
        names,
    })?;
    let mut topology: Topology = toml::from_str(&text).map_err(|error| TopologyError::Parse {
        path: path.to_path_buf(),
        // The parser quotes the failing line, which may hold a value from the environment
        // (a secret): those values are masked.
        message: substituted
            .borrow()
            .iter()
            .filter(|v| v.len() >= 4)
            .fold(error.to_string(), |m, v| m.replace(v.as_str(), "***")),
    })?;
    topology.base_dir = base_dir;
    topology.source = path.to_path_buf();
    let issues = validate(&topology);
    if issues.is_empty() {
        Ok(topology)
    } else {
        Err(TopologyError::Invalid {
            path: path.to_path_buf(),
            issues,
        })
    }
}

#[cfg(test)]
mod tests;
