//! The stage kinds named in `topology.toml`: `validate`, `enrich`, `route`. Each is one
//! folder: the stage, and its config with its checks and construction.

mod enrich;
mod route;
mod validate;

pub use enrich::{Enrich, EnrichConfig};
pub use route::{Route, RouteConfig};
pub use validate::{Validate, ValidateConfig, ValidateRules};

#[cfg(test)]
pub(crate) mod test_support {
    use sluice_core::log::Record;

    /// A record as a stage would read it from `topic`.
    pub fn record(topic: &str, key: &str, payload: &str) -> Record {
        Record {
            topic: topic.into(),
            partition: 2,
            offset: 41,
            key: key.as_bytes().to_vec(),
            payload: payload.as_bytes().to_vec(),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }
}
