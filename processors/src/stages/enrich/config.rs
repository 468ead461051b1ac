//! `kind = "enrich"`: its settings, checks and construction.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::topology::Issues;

use super::Enrich;
use crate::catalog::{CachedCatalog, TopologyCatalog};
use crate::config::{check_output, StageConfig, StageContext, StageKind};
use crate::stage::Stage;
use crate::BuildError;

/// The settings of an `enrich` stage; prices come from `[catalog]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Topic that receives the enriched orders.
    pub output: String,
}

impl StageKind for EnrichConfig {
    fn outputs(&self, _context: &StageContext) -> Vec<String> {
        vec![self.output.clone()]
    }

    fn validate(&self, stage: &StageConfig, context: &StageContext, at: &str, issues: &mut Issues) {
        check_output(stage, &self.output, context, at, issues);
        if context.catalog.is_empty() {
            issues.push(
                "catalog",
                format!(
                    "enrich stage {:?} needs at least one product under [catalog]",
                    stage.name
                ),
            );
        }
    }

    fn build(
        &self,
        _stage: &StageConfig,
        context: &StageContext,
    ) -> Result<Arc<dyn Stage>, BuildError> {
        let wiring = context.wiring;
        let catalog = CachedCatalog::new(Arc::new(TopologyCatalog::new(context.catalog)));
        Ok(Arc::new(Enrich::new(
            self.output.clone(),
            catalog,
            wiring.shard_map().ok_or(BuildError::ShardMap)?,
            wiring.shards.iter().map(|s| s.name.clone()).collect(),
        )))
    }
}
