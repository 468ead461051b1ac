//! `kind = "validate"`: its settings, checks and construction.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::topology::Issues;

use super::Validate;
use crate::config::{check_output, StageConfig, StageContext, StageKind};
use crate::stage::Stage;
use crate::BuildError;

/// The settings of a `validate` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Topic that receives the orders that pass.
    pub output: String,
    /// `[stages.rules]`: the checks.
    #[serde(default)]
    pub rules: ValidateRules,
}

/// `[stages.rules]`: the checks of a `validate` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRules {
    /// Smallest accepted quantity.
    #[serde(default = "default_min_quantity")]
    pub min_quantity: i64,
    /// Largest accepted quantity.
    #[serde(default = "default_max_quantity")]
    pub max_quantity: i64,
    /// Regular expression a user id must match in full.
    #[serde(default = "default_user_id_pattern")]
    pub user_id_pattern: String,
    /// Whether the product must be in `[catalog]`.
    #[serde(default = "yes")]
    pub require_known_product: bool,
}

fn default_min_quantity() -> i64 {
    1
}

fn default_max_quantity() -> i64 {
    1_000
}

fn default_user_id_pattern() -> String {
    "[A-Za-z0-9_.@-]{1,64}".into()
}

fn yes() -> bool {
    true
}

impl Default for ValidateRules {
    fn default() -> Self {
        ValidateRules {
            min_quantity: default_min_quantity(),
            max_quantity: default_max_quantity(),
            user_id_pattern: default_user_id_pattern(),
            require_known_product: true,
        }
    }
}

impl StageKind for ValidateConfig {
    fn outputs(&self, _context: &StageContext) -> Vec<String> {
        vec![self.output.clone()]
    }

    fn validate(&self, stage: &StageConfig, context: &StageContext, at: &str, issues: &mut Issues) {
        check_output(stage, &self.output, context, at, issues);
        let rules = &self.rules;
        if rules.min_quantity > rules.max_quantity {
            issues.push(
                format!("{at}.rules"),
                format!(
                    "min_quantity {} is above max_quantity {}",
                    rules.min_quantity, rules.max_quantity
                ),
            );
        }
        if let Err(error) = regex::Regex::new(&rules.user_id_pattern) {
            issues.push(
                format!("{at}.rules.user_id_pattern"),
                format!("not a valid regular expression: {error}"),
            );
        }
    }

    fn build(
        &self,
        stage: &StageConfig,
        context: &StageContext,
    ) -> Result<Arc<dyn Stage>, BuildError> {
        let known: HashSet<String> = context.catalog.keys().cloned().collect();
        let validate = Validate::new(self.output.clone(), &self.rules, known).map_err(|error| {
            BuildError::Pattern {
                stage: stage.name.clone(),
                error,
            }
        })?;
        Ok(Arc::new(validate))
    }
}
