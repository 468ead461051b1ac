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
    /// Most products whose price the stage keeps cached (misses included); default 100 000.
    #[serde(default = "default_catalog_cache_entries")]
    pub catalog_cache_entries: u64,
    /// Seconds a cached price is used before the catalog is asked again; default 60.
    #[serde(default = "default_catalog_cache_ttl_secs")]
    pub catalog_cache_ttl_secs: u64,
}

fn default_catalog_cache_entries() -> u64 {
    100_000
}

fn default_catalog_cache_ttl_secs() -> u64 {
    60
}

impl StageKind for EnrichConfig {
    fn outputs(&self, _context: &StageContext) -> Vec<String> {
        vec![self.output.clone()]
    }

    fn validate(&self, stage: &StageConfig, context: &StageContext, at: &str, issues: &mut Issues) {
        check_output(stage, &self.output, context, at, issues);
        if self.catalog_cache_entries == 0 {
            issues.push(
                format!("{at}.catalog_cache_entries"),
                "must be at least 1 (products whose price is kept cached)",
            );
        }
        if self.catalog_cache_ttl_secs == 0 {
            issues.push(
                format!("{at}.catalog_cache_ttl_secs"),
                "must be at least 1 (seconds a cached price is used)",
            );
        }
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
        let catalog = CachedCatalog::with_limits(
            Arc::new(TopologyCatalog::new(context.catalog)),
            self.catalog_cache_entries,
            std::time::Duration::from_secs(self.catalog_cache_ttl_secs),
        );
        Ok(Arc::new(Enrich::new(
            self.output.clone(),
            catalog,
            wiring.shard_map().ok_or(BuildError::ShardMap)?,
            wiring.shards.iter().map(|s| s.name.clone()).collect(),
        )))
    }
}
