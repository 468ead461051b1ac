//! Operator chaining: consecutive stages fused into one task.
//!
//! When a stage's only output is the next stage's input, nothing else writes or reads that
//! topic, and the next stage allows it (`chain = true`, the default), the two run as one
//! task, as Flink and Kafka Streams fuse operators: the task reads the first stage's input,
//! hands each record from stage to stage in memory (decoded once, see [`crate::item`]), and
//! writes only the chain's final outputs and dead letters. The topic between two fused
//! stages is written only when the first one asks for it (`write_output = true`).
//!
//! What a chain guarantees is what the stages guaranteed one by one: every record the chain
//! reads ends in the chain's outputs or in the dead-letter topic of the stage that rejected it
//! before the chain commits its input position. A dead letter from a fused stage names that
//! stage, and the position the chain read the record from.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{StageConfig, StageContext};
use crate::stage::Stage;
use crate::BuildError;

/// Topics that something besides the stages writes or reads (the ingress, the sinks): a
/// stage reading one of them is never fused behind another.
#[derive(Debug, Clone, Default)]
pub struct Neighbours<'a> {
    /// Topics written outside the stages (the ingress's topics).
    pub writes: Vec<&'a str>,
    /// Topics read outside the stages (the shards' topics, the sink's rejections topic).
    pub reads: Vec<&'a str>,
}

/// Splits `stages` into chains: each chain is the indexes of its stages, in the order a
/// record goes through them, and the chains are in the file order of their first stage. Every
/// stage is in exactly one chain.
pub fn plan(
    stages: &[StageConfig],
    context: &StageContext,
    neighbours: &Neighbours,
) -> Vec<Vec<usize>> {
    let outputs: Vec<Vec<String>> = stages.iter().map(|s| s.outputs(context)).collect();
    let mut writers: BTreeMap<&str, usize> = BTreeMap::new();
    let mut readers: BTreeMap<&str, usize> = BTreeMap::new();
    for topic in &neighbours.writes {
        *writers.entry(topic).or_default() += 1;
    }
    for topic in &neighbours.reads {
        *readers.entry(topic).or_default() += 1;
    }
    for shard in context.wiring.shards {
        *readers.entry(shard.topic.as_str()).or_default() += 1;
    }
    for (stage, outputs) in stages.iter().zip(&outputs) {
        *readers.entry(stage.input.as_str()).or_default() += 1;
        *writers.entry(stage.dead_letter.as_str()).or_default() += 1;
        for output in outputs {
            *writers.entry(output.as_str()).or_default() += 1;
        }
    }
    // The stage fused behind each stage, if any.
    let next: Vec<Option<usize>> = outputs
        .iter()
        .enumerate()
        .map(|(index, outputs)| {
            let [output] = outputs.as_slice() else {
                return None;
            };
            let output = output.as_str();
            if writers.get(output) != Some(&1) || readers.get(output) != Some(&1) {
                return None;
            }
            stages
                .iter()
                .position(|stage| stage.input == output && stage.chain)
                .filter(|&follower| follower != index)
        })
        .collect();
    let mut fed = vec![false; stages.len()];
    for follower in next.iter().flatten() {
        fed[*follower] = true;
    }
    let mut placed = vec![false; stages.len()];
    let mut chains = Vec::new();
    // Chains start at stages nothing is fused in front of; stages left over sit on a loop of
    // fused stages, which is cut at its first stage in file order.
    let starts = (0..stages.len())
        .filter(|&index| !fed[index])
        .chain(0..stages.len());
    for start in starts {
        if placed[start] {
            continue;
        }
        let mut chain = vec![start];
        placed[start] = true;
        let mut at = start;
        while let Some(follower) = next[at].filter(|&f| !placed[f]) {
            chain.push(follower);
            placed[follower] = true;
            at = follower;
        }
        chains.push(chain);
    }
    chains.sort_by_key(|chain| chain[0]);
    chains
}

/// One stage of a chain.
pub struct Link {
    /// The stage's declaration.
    pub config: StageConfig,
    /// The stage.
    pub stage: Arc<dyn Stage>,
    /// The topic this stage hands to the next stage of the chain (`None` for the last).
    pub handoff: Option<Arc<str>>,
    /// The stage's dead-letter topic.
    pub dead_letter: Arc<str>,
}

/// Stages fused into one task, in the order a record goes through them.
pub struct Chain {
    links: Vec<Link>,
}

impl Chain {
    /// A chain of `stages`, each fused behind the one before it (the caller has checked that
    /// each stage's input is the previous stage's output).
    pub fn new(stages: Vec<(StageConfig, Arc<dyn Stage>)>) -> Self {
        let inputs: Vec<Arc<str>> = stages
            .iter()
            .skip(1)
            .map(|(config, _)| Arc::from(config.input.as_str()))
            .collect();
        let links = stages
            .into_iter()
            .enumerate()
            .map(|(index, (config, stage))| Link {
                dead_letter: Arc::from(config.dead_letter.as_str()),
                handoff: inputs.get(index).cloned(),
                config,
                stage,
            })
            .collect();
        Chain { links }
    }

    /// The stages, first to last.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The first stage: the chain reads its input, in its consumer group.
    pub fn head(&self) -> &StageConfig {
        &self.links[0].config
    }

    /// The stage names joined by ` → `, for log lines and `sluice graph`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.links.iter().map(|l| l.config.name.as_str()).collect();
        names.join(" → ")
    }
}

/// Builds the stages of `stages` and fuses them into chains (see [`plan`]).
pub fn build_chains(
    stages: &[StageConfig],
    context: &StageContext,
    neighbours: &Neighbours,
) -> Result<Vec<Chain>, BuildError> {
    plan(stages, context, neighbours)
        .iter()
        .map(|indexes| build_chain(stages, indexes, context))
        .collect()
}

/// Builds the stages at `indexes` of `stages` (one chain of [`plan`], or its tail) into a
/// chain.
pub fn build_chain(
    stages: &[StageConfig],
    indexes: &[usize],
    context: &StageContext,
) -> Result<Chain, BuildError> {
    let built = indexes
        .iter()
        .map(|&index| {
            let config = &stages[index];
            Ok((config.clone(), config.build(context)?))
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    Ok(Chain::new(built))
}
