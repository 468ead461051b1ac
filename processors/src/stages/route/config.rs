//! `kind = "route"`: its settings, checks and construction.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::topology::Issues;

use super::Route;
use crate::config::{StageConfig, StageContext, StageKind};
use crate::stage::Stage;
use crate::BuildError;

/// The settings of a `route` stage: none besides the common ones; it writes the topic of
/// every `[[shards]]` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {}

impl StageKind for RouteConfig {
    fn outputs(&self, context: &StageContext) -> Vec<String> {
        context.wiring.shard_topics()
    }

    fn validate(
        &self,
        _stage: &StageConfig,
        _context: &StageContext,
        _at: &str,
        _issues: &mut Issues,
    ) {
        // The shard topics are checked with `[[shards]]`.
    }

    fn build(
        &self,
        _stage: &StageConfig,
        context: &StageContext,
    ) -> Result<Arc<dyn Stage>, BuildError> {
        let wiring = context.wiring;
        Ok(Arc::new(Route::new(
            wiring.shard_map().ok_or(BuildError::ShardMap)?,
            wiring.shard_topics(),
        )))
    }
}
