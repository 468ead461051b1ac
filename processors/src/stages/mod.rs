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
    use crate::item::Item;

    /// An item as a stage would get it from its input topic.
    pub fn item(key: &str, payload: &str) -> Item {
        Item::new(
            key.as_bytes().to_vec(),
            payload.as_bytes().to_vec(),
            Vec::new(),
        )
    }
}
