//! `[[stages]]`: the settings every stage has, and the settings of its kind.
//!
//! A stage kind is one folder under `stages/`: its [`Stage`](crate::Stage) and its config,
//! which implements [`StageKind`] (its checks, the topics it writes, and how it is built).
//! [`KindConfig`] lists the kinds, so `kind = "..."` in the file picks the variant and only
//! that kind's fields are accepted next to the common ones.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use sluice_core::topology::{FlowNode, Issues, NodeKind, Wiring};

use crate::catalog::Catalog;
use crate::stage::Stage;
use crate::stages::{EnrichConfig, RouteConfig, ValidateConfig};
use crate::BuildError;

/// `[[stages]]`: one processing stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageConfig {
    /// Unique name; also names the stage's consumer group (`<consumer_group_prefix>.<name>`).
    pub name: String,
    /// Topic the stage reads.
    pub input: String,
    /// Topic for records the stage rejects, with the reason in headers.
    pub dead_letter: String,
    /// Largest number of records handled per batch (read → write → commit).
    pub batch_size: usize,
    /// Whether this stage is fused with the stage that feeds it (`chain = true`, the
    /// default), when that stage's only output is this stage's input, nothing else writes or
    /// reads that topic, and both run in one process: the pair then runs as one task, each
    /// record is decoded once, and the topic between them is skipped (see
    /// [`crate::chain`]). `false` keeps this stage a task of its own, reading its input topic
    /// in its own consumer group (to run it in other processes than its feeder, say).
    pub chain: bool,
    /// Whether the stage writes its output topic even when the next stage is fused behind it
    /// (default `false`: the fused stage gets the records directly). `true` keeps the topic
    /// filled, for inspection and for replaying the next stage from it. A stage that is not
    /// followed by a fused stage always writes its outputs.
    pub write_output: bool,
    /// What the stage does (`kind = "validate" | "enrich" | "route"`), with that kind's own
    /// settings.
    #[serde(flatten)]
    pub kind: KindConfig,
}

/// The settings every stage has, whatever its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonFields {
    name: String,
    input: String,
    dead_letter: String,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_chain")]
    chain: bool,
    #[serde(default)]
    write_output: bool,
}

const COMMON_FIELDS: [&str; 6] = [
    "name",
    "input",
    "dead_letter",
    "batch_size",
    "chain",
    "write_output",
];

fn default_chain() -> bool {
    true
}

fn default_batch_size() -> usize {
    500
}

/// Every stage kind, picked by `kind` in the file. Adding a kind: a folder under `stages/`
/// with its config implementing [`StageKind`], a variant here, and its arm in
/// [`KindConfig::as_kind`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KindConfig {
    /// Checks each order against rules; failures go to the dead-letter topic.
    Validate(ValidateConfig),
    /// Adds price, line total, currency, timestamps, bucket and shard from the catalog.
    Enrich(EnrichConfig),
    /// Sends each enriched order to the topic of the shard that owns its bucket.
    Route(RouteConfig),
}

impl KindConfig {
    /// The kind's behaviour.
    pub fn as_kind(&self) -> &dyn StageKind {
        match self {
            KindConfig::Validate(config) => config,
            KindConfig::Enrich(config) => config,
            KindConfig::Route(config) => config,
        }
    }
}

/// What the stages may look up while they are checked and built.
#[derive(Debug, Clone, Copy)]
pub struct StageContext<'a> {
    /// Declared topics and the shards.
    pub wiring: Wiring<'a>,
    /// `[catalog]`.
    pub catalog: &'a Catalog,
}

/// A stage kind's config: its checks, its outputs and its construction.
pub trait StageKind {
    /// The topics the stage writes, besides its dead-letter topic.
    fn outputs(&self, context: &StageContext) -> Vec<String>;

    /// Checks the kind's own settings of `stage`, declared at `at` (e.g. `stages[0]
    /// "validate"`); the common settings are checked already.
    fn validate(&self, stage: &StageConfig, context: &StageContext, at: &str, issues: &mut Issues);

    /// Builds the stage (only for a topology that passed validation).
    fn build(
        &self,
        stage: &StageConfig,
        context: &StageContext,
    ) -> Result<Arc<dyn Stage>, BuildError>;
}

impl<'de> Deserialize<'de> for StageConfig {
    /// Splits the table into the common fields and the kind's fields, so that each part
    /// refuses fields it does not know (`deny_unknown_fields` cannot see through a flattened
    /// enum).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let mut common = toml::Table::new();
        for field in COMMON_FIELDS {
            if let Some(value) = table.remove(field) {
                common.insert(field.to_string(), value);
            }
        }
        let name = common
            .get("name")
            .and_then(|name| name.as_str())
            .unwrap_or("(unnamed)")
            .to_string();
        let in_stage =
            |error: toml::de::Error| D::Error::custom(format!("stage {name:?}: {error}"));
        let common: CommonFields = common.try_into().map_err(in_stage)?;
        let kind: KindConfig = table.try_into().map_err(in_stage)?;
        Ok(StageConfig {
            name: common.name,
            input: common.input,
            dead_letter: common.dead_letter,
            batch_size: common.batch_size,
            chain: common.chain,
            write_output: common.write_output,
            kind,
        })
    }
}

impl StageConfig {
    /// The topics the stage writes, besides its dead-letter topic.
    pub fn outputs(&self, context: &StageContext) -> Vec<String> {
        self.kind.as_kind().outputs(context)
    }

    /// Builds the stage (only for a topology that passed validation).
    pub fn build(&self, context: &StageContext) -> Result<Arc<dyn Stage>, BuildError> {
        self.kind.as_kind().build(self, context)
    }

    /// The stage in the topology's data flow; `at` is where it is declared.
    pub fn flow_node(&self, context: &StageContext, at: &str) -> FlowNode {
        let mut node = FlowNode::new(NodeKind::Stage, &self.name, at).reads_fed(
            &self.input,
            "reads",
            "input",
            "point it at the ingress orders topic or another stage's output",
        );
        for output in self.outputs(context) {
            node = node.writes(&output, "writes", true);
        }
        node.writes(&self.dead_letter, "rejects", false)
    }
}

/// Where stage `index` is declared, for issues: `stages[1] "enrich"`.
pub fn stage_location(index: usize, stage: &StageConfig) -> String {
    format!("stages[{index}] {:?}", stage.name)
}

/// Checks `[[stages]]` and `[catalog]`: every problem, each with where to fix it.
pub fn validate(stages: &[StageConfig], context: &StageContext, issues: &mut Issues) {
    crate::catalog::validate(context.catalog, issues);
    let mut names = BTreeSet::new();
    for (index, stage) in stages.iter().enumerate() {
        let at = stage_location(index, stage);
        if stage.name.trim().is_empty() {
            issues.push(format!("stages[{index}].name"), "must not be empty");
        } else if !names.insert(stage.name.as_str()) {
            issues.push(
                format!("{at}.name"),
                "another stage has the same name; stage names must be unique",
            );
        }
        let wiring = context.wiring;
        wiring.check_topic(&stage.input, format!("{at}.input"), issues);
        wiring.check_topic(&stage.dead_letter, format!("{at}.dead_letter"), issues);
        if stage.dead_letter == stage.input {
            issues.push(
                format!("{at}.dead_letter"),
                "a stage cannot dead-letter into the topic it reads",
            );
        }
        if stage.batch_size == 0 {
            issues.push(format!("{at}.batch_size"), "must be at least 1");
        }
        stage.kind.as_kind().validate(stage, context, &at, issues);
    }
}

/// Checks an `output` topic of a stage kind that writes one: declared, and not its input.
pub fn check_output(
    stage: &StageConfig,
    output: &str,
    context: &StageContext,
    at: &str,
    issues: &mut Issues,
) {
    context
        .wiring
        .check_topic(output, format!("{at}.output"), issues);
    if output == stage.input {
        issues.push(
            format!("{at}.output"),
            "a stage cannot write to the topic it reads",
        );
    }
}
