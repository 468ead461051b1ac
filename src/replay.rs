//! `sluice replay`: re-read a topic from an offset or a time (optionally up to another) and
//! feed a stage or a shard, under the replay's own consumer position, so the live pipeline is
//! untouched. A run stops at the end of each partition as it was when the run started (or at
//! `--to`). Interrupted, the same command resumes from the stored position: the position's
//! name combines `--name` with the topic and bounds, so changing `--from` or `--to` starts a
//! fresh replay instead of resuming an old one. Sinks are idempotent by `order_id`, so a replay
//! never duplicates rows.
//!
//! Operations: [`plan_replay`] says what a replay would cover without reading a record
//! (`--dry-run`); [`ReplaySpec::rate`] paces the reads (`--rate`, to protect live shards);
//! while a replay runs, `sluice_replay_records_total{target}` counts its records and
//! `sluice_replay_remaining_records{target}` says how many are left; on a terminal the
//! progress is a bar, with log lines printed above it ([`LogWriter`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sluice_core::log::{clamp_position, Assignment, Log, LogError, StartFrom};
use sluice_core::telemetry;
use sluice_processors::{run_chain, StageRunner};
use sluice_sinks::{open_shard, run_sink_worker, SinkWorker};
use tokio_util::sync::CancellationToken;

use crate::topology::Topology;

/// Where a replay starts or stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The oldest retained record.
    Beginning,
    /// This offset, in every partition.
    Offset(i64),
    /// The first record appended at or after this time (ms since the Unix epoch).
    Time(i64),
}

/// What receives the replayed records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A stage of the topology, by name: its outputs go to its live output topics.
    Stage(String),
    /// A shard of the topology, by name: its rows are rewritten (idempotently).
    Shard(String),
}

impl Target {
    /// The `target` label of the replay metrics: `stage:<name>` or `shard:<name>`.
    pub fn label(&self) -> String {
        match self {
            Target::Stage(name) => format!("stage:{name}"),
            Target::Shard(name) => format!("shard:{name}"),
        }
    }
}

/// One replay. Unknown fields are refused, so an option this build does not know is never
/// silently dropped (see [`crate::replay_socket::Request`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySpec {
    /// Topic to read; defaults to the stage's input or the shard's topic.
    pub topic: Option<String>,
    /// Where to start.
    pub from: Bound,
    /// Where to stop (exclusive); defaults to the end of each partition when the replay starts.
    pub to: Option<Bound>,
    /// What to feed.
    pub target: Target,
    /// Names the replay's own consumer position; rerun with the same name to resume.
    pub name: String,
    /// Most records read per second (none: as fast as the target takes them). A replay that
    /// rebuilds a shard under live traffic uses it to leave the shard room for the live sink.
    #[serde(default)]
    pub rate: Option<NonZeroU32>,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The target does not exist.
    #[error("{0}")]
    UnknownTarget(String),
    /// The log failed.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// The stage could not be built (or the topology's shards are inconsistent).
    #[error(transparent)]
    Build(#[from] sluice_processors::BuildError),
    /// The stage failed.
    #[error(transparent)]
    Stage(#[from] sluice_processors::RunnerError),
    /// The shard failed.
    #[error(transparent)]
    Shard(#[from] sluice_sinks::SinkError),
    /// The running `sluice` process that holds the embedded log refused or failed the replay
    /// (its own error's message).
    #[error("{0}")]
    Remote(String),
    /// The connection to the running `sluice` process failed.
    #[error("lost the connection to the running sluice: {0}")]
    Connection(#[source] std::io::Error),
    /// The running `sluice` process closed the connection before the replay ended.
    #[error("the running sluice closed the connection before the replay ended (was it stopped?)")]
    Closed,
    /// The running `sluice` process answered something that is not a replay reply (another
    /// version?), or the request could not be encoded.
    #[error("unexpected reply from the running sluice: {0}")]
    Protocol(#[source] serde_json::Error),
    /// The running `sluice` process is an older build that does not take this request (or
    /// answered it in a way this build does not expect); the connection was dropped, which
    /// cancels anything it may have started.
    #[error("the running pipeline is an older Sluice; restart it or stop it to {action}")]
    OlderPipeline {
        /// What the user asked for: `dry-run` or `replay`.
        action: &'static str,
    },
}

/// How far a replay got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOutcome {
    /// Records delivered to the target in this run.
    pub records: u64,
    /// Records this run had to cover (from its start or resume point to its end).
    pub total: u64,
    /// Whether it reached its end (false when interrupted).
    pub complete: bool,
}

impl ReplayOutcome {
    /// A run that reached its end.
    fn finished(records: u64, total: u64) -> Self {
        ReplayOutcome {
            records,
            total,
            complete: true,
        }
    }

    /// The outcome of a runner that returned. It returns early only when cancelled; records
    /// removed by retention during the run can leave `records` short of `total` in a run that
    /// did finish.
    fn after_run(records: u64, total: u64, cancel: &CancellationToken) -> Self {
        ReplayOutcome {
            records,
            total,
            complete: !cancel.is_cancelled() || records >= total,
        }
    }
}

/// One partition of a [`ReplayPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlan {
    /// The partition.
    pub partition: i32,
    /// First offset to read (the stored position when the replay resumes).
    pub start: i64,
    /// Offset to stop before.
    pub stop: i64,
    /// Records in between (`stop - start`; fewer if retention removes some first).
    pub records: u64,
}

/// What a replay covers, computed without reading a record or writing anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayPlan {
    /// The target's metric label (`stage:<name>` or `shard:<name>`).
    pub target: String,
    /// The topic read.
    pub topic: String,
    /// The name the replay's position is stored under.
    pub position: String,
    /// Whether a stored position of an earlier, interrupted run of the same replay was found
    /// (then the starts are where it stopped).
    pub resumed: bool,
    /// Every partition with something to replay.
    pub partitions: Vec<PartitionPlan>,
    /// Records in all (the sum of the partitions').
    pub total: u64,
    /// Something the plan could not settle, said to the user (say, a stored position that
    /// could not be read: then the plan assumes a fresh start).
    pub note: Option<String>,
}

impl ReplayPlan {
    fn new(target: &Target, topic: &str, position: String, ranges: &[(i32, i64, i64)]) -> Self {
        let partitions: Vec<PartitionPlan> = ranges
            .iter()
            .map(|&(partition, start, stop)| PartitionPlan {
                partition,
                start,
                stop,
                records: (stop - start).max(0) as u64,
            })
            .collect();
        ReplayPlan {
            target: target.label(),
            topic: topic.to_string(),
            position,
            resumed: false,
            total: partitions.iter().map(|p| p.records).sum(),
            partitions,
            note: None,
        }
    }

    /// `(partition, start, stop)` of every partition.
    fn ranges(&self) -> Vec<(i32, i64, i64)> {
        self.partitions
            .iter()
            .map(|p| (p.partition, p.start, p.stop))
            .collect()
    }

    /// The plan as `sluice replay --dry-run` prints it: a header, one line per partition
    /// (topic, partition, start offset, stop offset, records), and the total.
    pub fn text(&self) -> String {
        let mut text = format!(
            "replay plan: {} -> {} (position {}{})\n",
            self.topic,
            self.target,
            self.position,
            if self.resumed {
                ", from its stored position"
            } else {
                ""
            }
        );
        if let Some(note) = &self.note {
            let _ = writeln!(text, "note: {note}");
        }
        let _ = writeln!(
            text,
            "{:<40} {:>9} {:>12} {:>12} {:>10}",
            "topic", "partition", "start", "stop", "records"
        );
        for p in &self.partitions {
            let _ = writeln!(
                text,
                "{:<40} {:>9} {:>12} {:>12} {:>10}",
                self.topic, p.partition, p.start, p.stop, p.records
            );
        }
        let _ = writeln!(
            text,
            "total: {} records in {} partition(s); nothing was read or written (--dry-run)",
            self.total,
            self.partitions.len()
        );
        text
    }
}

/// Progress callback: `(records done, records to do)`.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

async fn resolve(
    log: &dyn Log,
    topic: &str,
    partition: i32,
    bound: Bound,
) -> Result<i64, LogError> {
    let (low, high) = log.watermarks(topic, partition).await?;
    Ok(match bound {
        Bound::Beginning => low,
        Bound::Offset(n) => n.clamp(low, high),
        Bound::Time(ms) => log
            .offset_for_time(topic, partition, ms)
            .await?
            .clamp(low, high),
    })
}

/// What to do with a stored position that retention has passed (or that is past the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resumed {
    /// A replay that runs: clamp it with [`clamp_position`], which reports and counts the
    /// records retention removed before the replay read them.
    Run,
    /// A plan: clamp it quietly (the replay itself reports the loss when it runs).
    Plan,
}

/// The ranges of a replay, and the records retention removed after its stored positions.
struct Ranges {
    /// `(partition, start, end)` for every partition with something to replay.
    ranges: Vec<(i32, i64, i64)>,
    /// Records between a stored position and the oldest retained offset, in all partitions.
    expired: u64,
}

/// The ranges of `spec` on `topic`; `resumed` maps a partition to a stored position that
/// overrides the start, moved into `[oldest retained offset, end of the partition]`.
async fn ranges(
    log: &dyn Log,
    topic: &str,
    spec: &ReplaySpec,
    resumed: &HashMap<i32, i64>,
    mode: Resumed,
) -> Result<Ranges, LogError> {
    let mut found = Ranges {
        ranges: Vec::new(),
        expired: 0,
    };
    for partition in 0..log.partition_count(topic).await? as i32 {
        let (low, high) = log.watermarks(topic, partition).await?;
        let end = match spec.to {
            None => high,
            Some(bound) => resolve(log, topic, partition, bound).await?.min(high),
        };
        let start = match resumed.get(&partition) {
            Some(&position) => {
                found.expired += (low - position).max(0) as u64;
                match mode {
                    Resumed::Run => clamp_position(topic, partition, position, low, high),
                    Resumed::Plan => position.clamp(low, high),
                }
            }
            None => resolve(log, topic, partition, spec.from).await?,
        };
        if start < end {
            found.ranges.push((partition, start, end));
        }
    }
    Ok(found)
}

impl ReplaySpec {
    /// The name the replay's position is stored under: `--name` plus a fingerprint of the
    /// topic and bounds, so one command resumes itself and a different one starts afresh.
    pub fn position_name(&self, topic: &str) -> String {
        let fingerprint =
            xxhash_rust::xxh3::xxh3_64(format!("{topic}|{:?}|{:?}", self.from, self.to).as_bytes());
        format!("{}.{:08x}", self.name, fingerprint as u32)
    }
}

/// The stage `name` and the topic its replay reads: `--topic`, else the stage's input. A
/// stage fused behind one that does not write the topic between them has nothing to replay
/// there: the error says what to do instead.
fn stage_and_topic<'t>(
    topology: &'t Topology,
    spec: &ReplaySpec,
    name: &str,
) -> Result<(&'t sluice_processors::StageConfig, String), ReplayError> {
    let config = topology.stage(name).ok_or_else(|| {
        ReplayError::UnknownTarget(format!("no stage named {name:?} in the topology"))
    })?;
    if let Some(topic) = &spec.topic {
        return Ok((config, topic.clone()));
    }
    match topology.fused_feeder(name) {
        Some(feeder) if !feeder.write_output => Err(ReplayError::UnknownTarget(format!(
            "stage {name:?} runs fused behind stage {feeder:?}, which does not write {input:?} \
             (write_output = false), so there is nothing to replay there: replay stage \
             {feeder:?} instead (its records go on through {name:?}), set write_output = true \
             on stage {feeder:?} for later replays, or name another topic with --topic",
            feeder = feeder.name,
            input = config.input,
        ))),
        _ => Ok((config, config.input.clone())),
    }
}

/// The stage replay's consumer group for `topic`.
fn stage_group(topology: &Topology, spec: &ReplaySpec, topic: &str, stage: &str) -> String {
    format!(
        "{}.replay.{}.{}",
        topology.log.consumer_group_prefix,
        spec.position_name(topic),
        stage
    )
}

/// The stored positions of a stage replay's group, by partition (read only).
async fn stage_positions(
    log: &dyn Log,
    group: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, LogError> {
    let mut consumer = log.consumer(group).await?;
    let mut resumed = HashMap::new();
    for partition in 0..log.partition_count(topic).await? as i32 {
        if let Some(position) = consumer.committed(topic, partition).await? {
            resumed.insert(partition, position);
        }
    }
    Ok(resumed)
}

/// Whether a plan of a shard replay reads the replay's stored position from the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPositions {
    /// Read it (the running pipeline, whose shards are open anyway): the shard's database is
    /// neither created nor migrated.
    Read,
    /// Open no shard at all (`sluice replay --dry-run` with no pipeline running): the plan
    /// starts at `--from` and says so in its note.
    Skip,
}

/// What `spec` would replay against `topology` over `log`, without reading a record or
/// writing anything: the stored position is read (from the log for a stage, from the shard
/// for a shard when `shard_positions` says so) and the bounds resolved.
pub async fn plan_replay(
    topology: &Topology,
    log: Arc<dyn Log>,
    spec: &ReplaySpec,
    shard_positions: ShardPositions,
) -> Result<ReplayPlan, ReplayError> {
    let (topic, position, resumed, note) = match &spec.target {
        Target::Stage(name) => {
            let (_, topic) = stage_and_topic(topology, spec, name)?;
            let group = stage_group(topology, spec, &topic, name);
            let resumed = stage_positions(log.as_ref(), &group, &topic).await?;
            (topic, group, resumed, None)
        }
        Target::Shard(name) => {
            let config = shard_config(topology, name)?.1;
            let topic = spec.topic.clone().unwrap_or_else(|| config.topic.clone());
            let consumer = format!("replay.{}", spec.position_name(&topic));
            let (resumed, note) = match shard_positions {
                ShardPositions::Skip => (
                    HashMap::new(),
                    Some(format!(
                        "a dry run opens no shard, so it cannot see where an interrupted run of this replay stopped in shard {name:?}: the plan starts at --from, and the replay itself resumes from its stored position if it has one"
                    )),
                ),
                ShardPositions::Read => {
                    match stored_shard_positions(topology, config, &consumer, &topic).await {
                        Ok(resumed) => (resumed, None),
                        Err(error) => (
                            HashMap::new(),
                            Some(format!(
                                "the stored position of this replay could not be read from shard {name:?} ({error}); the plan assumes a fresh start"
                            )),
                        ),
                    }
                }
            };
            (topic, consumer, resumed, note)
        }
    };
    let found = ranges(log.as_ref(), &topic, spec, &resumed, Resumed::Plan).await?;
    let mut plan = ReplayPlan::new(&spec.target, &topic, position, &found.ranges);
    plan.resumed = !resumed.is_empty();
    let expired = (found.expired > 0).then(|| {
        format!(
            "retention removed {} records after the stored position before the replay read them; it resumes at the oldest retained record",
            found.expired
        )
    });
    plan.note = match (note, expired) {
        (Some(note), Some(expired)) => Some(format!("{note}; {expired}")),
        (note, expired) => note.or(expired),
    };
    Ok(plan)
}

/// The shard named `name`, with its index.
fn shard_config<'a>(
    topology: &'a Topology,
    name: &str,
) -> Result<(usize, &'a sluice_core::topology::ShardConfig), ReplayError> {
    topology
        .shards
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == name)
        .ok_or_else(|| {
            ReplayError::UnknownTarget(format!("no shard named {name:?} in the topology"))
        })
}

/// The positions a shard stores for `consumer` on `topic`, read without creating or
/// migrating anything (a SQLite file that does not exist has none).
async fn stored_shard_positions(
    topology: &Topology,
    config: &sluice_core::topology::ShardConfig,
    consumer: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, sluice_sinks::SinkError> {
    if let Some(path) = config.url.strip_prefix("sqlite://") {
        let path =
            sluice_core::topology::resolve_relative(&topology.base_dir, std::path::Path::new(path));
        if !path.exists() {
            return Ok(HashMap::new());
        }
    }
    let writer = open_shard(&config.name, &config.url, &topology.base_dir)?;
    let positions = writer.positions(consumer).await;
    writer.close().await;
    Ok(positions?
        .into_iter()
        .filter(|p| p.topic == topic)
        .map(|p| (p.partition, p.next_offset))
        .collect())
}

/// The replay metrics of one target, registered once per replay: records delivered
/// (`sluice_replay_records_total`) and records left (`sluice_replay_remaining_records`).
struct ReplayMetrics {
    records: metrics::Counter,
    remaining: metrics::Gauge,
    counted: AtomicU64,
    total: u64,
}

/// Sets `sluice_replay_remaining_records{target}` to 0 when dropped: however a replay ends
/// (complete, cancelled, failed, or its future dropped), the gauge does not keep its last
/// value. The gauge is only looked up then: registering it earlier would show 0 remaining
/// while the replay is still planning.
struct RemainingReset(String);

impl RemainingReset {
    fn new(target: &Target) -> Self {
        RemainingReset(target.label())
    }
}

impl Drop for RemainingReset {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::REPLAY_REMAINING, "target" => std::mem::take(&mut self.0))
            .set(0.0);
    }
}

impl ReplayMetrics {
    fn new(target: &Target, total: u64) -> Arc<Self> {
        let label = target.label();
        let metrics = ReplayMetrics {
            records: metrics::counter!(telemetry::REPLAY_RECORDS, "target" => label.clone()),
            remaining: metrics::gauge!(telemetry::REPLAY_REMAINING, "target" => label),
            counted: AtomicU64::new(0),
            total,
        };
        metrics.records.increment(0);
        metrics.remaining.set(total as f64);
        Arc::new(metrics)
    }

    /// `done` records of this run are delivered.
    fn done(&self, done: u64) {
        let before = self.counted.fetch_max(done, Ordering::Relaxed);
        if done > before {
            self.records.increment(done - before);
        }
        self.remaining.set(self.total.saturating_sub(done) as f64);
    }

    /// The runner's reporter: updates the metrics, then `progress`.
    fn reporter(self: &Arc<Self>, progress: Option<ProgressFn>) -> Arc<dyn Fn(u64) + Send + Sync> {
        let (metrics, total) = (self.clone(), self.total);
        Arc::new(move |done: u64| {
            metrics.done(done);
            if let Some(progress) = &progress {
                progress(done, total);
            }
        })
    }
}

/// `progress`, also counting into this process's replay metrics of `target`: for a replay
/// that runs in another process (the running embedded pipeline), whose progress comes back
/// over its socket. The metric handles are made here, once.
pub fn with_metrics(target: &Target, progress: ProgressFn) -> ProgressFn {
    let label = target.label();
    let records = metrics::counter!(telemetry::REPLAY_RECORDS, "target" => label.clone());
    let remaining = metrics::gauge!(telemetry::REPLAY_REMAINING, "target" => label);
    records.increment(0);
    let counted = AtomicU64::new(0);
    Arc::new(move |done: u64, total: u64| {
        let before = counted.fetch_max(done, Ordering::Relaxed);
        if done > before {
            records.increment(done - before);
        }
        remaining.set(total.saturating_sub(done) as f64);
        progress(done, total);
    })
}

/// Runs `spec` against `topology` over `log` until done or `cancel`.
pub async fn replay(
    topology: &Topology,
    log: Arc<dyn Log>,
    spec: &ReplaySpec,
    cancel: CancellationToken,
    progress: Option<ProgressFn>,
) -> Result<ReplayOutcome, ReplayError> {
    let map = topology
        .shard_map()
        .ok_or(sluice_processors::BuildError::ShardMap)?;
    let _reset = RemainingReset::new(&spec.target);
    match &spec.target {
        Target::Stage(name) => {
            let (config, topic) = stage_and_topic(topology, spec, name)?;
            let group = stage_group(topology, spec, &topic, name);
            let resumed = stage_positions(log.as_ref(), &group, &topic).await?;
            let plan = ReplayPlan::new(
                &spec.target,
                &topic,
                group.clone(),
                &ranges(log.as_ref(), &topic, spec, &resumed, Resumed::Run)
                    .await?
                    .ranges,
            );
            let metrics = ReplayMetrics::new(&spec.target, plan.total);
            if plan.partitions.is_empty() {
                return Ok(ReplayOutcome::finished(0, 0));
            }
            let ranges = plan.ranges();
            // The stage and the stages fused behind it, so that the replayed records reach the
            // topics live ones reach.
            let chain = topology.chain_from(name)?.ok_or_else(|| {
                ReplayError::UnknownTarget(format!("no stage named {name:?} in the topology"))
            })?;
            let mut runner = StageRunner::from_config(config, &topology.log.consumer_group_prefix);
            runner.name = format!("replay.{}.{name}", spec.name);
            runner.metric_prefix = format!("replay.{}.", spec.name);
            runner.input = topic.clone();
            runner.group = group;
            runner.assignments = Some(
                ranges
                    .iter()
                    .map(|&(partition, start, _)| Assignment {
                        topic: topic.clone(),
                        partition,
                        start: StartFrom::Offset(start),
                    })
                    .collect(),
            );
            runner.stop_at = Some(
                ranges
                    .iter()
                    .map(|&(partition, _, end)| (partition, end))
                    .collect::<BTreeMap<_, _>>(),
            );
            let records = run_chain(
                paced(log, spec.rate),
                Arc::new(chain),
                runner,
                cancel.clone(),
                Some(metrics.reporter(progress)),
            )
            .await?;
            metrics.done(records);
            Ok(ReplayOutcome::after_run(records, plan.total, &cancel))
        }
        Target::Shard(name) => {
            let (index, config) = shard_config(topology, name)?;
            let topic = spec.topic.clone().unwrap_or_else(|| config.topic.clone());
            let writer = open_shard(&config.name, &config.url, &topology.base_dir)?;
            writer.migrate().await?;
            let consumer = format!("replay.{}", spec.position_name(&topic));
            let resumed: HashMap<i32, i64> = writer
                .positions(&consumer)
                .await?
                .into_iter()
                .filter(|p| p.topic == topic)
                .map(|p| (p.partition, p.next_offset))
                .collect();
            let plan = ReplayPlan::new(
                &spec.target,
                &topic,
                consumer.clone(),
                &ranges(log.as_ref(), &topic, spec, &resumed, Resumed::Run)
                    .await?
                    .ranges,
            );
            let metrics = ReplayMetrics::new(&spec.target, plan.total);
            if plan.partitions.is_empty() {
                return Ok(ReplayOutcome::finished(0, 0));
            }
            let ranges = plan.ranges();
            let worker = SinkWorker {
                topic: topic.clone(),
                rejections_topic: None,
                consumer,
                start_offsets: ranges
                    .iter()
                    .map(|&(p, start, _)| ((topic.clone(), p), start))
                    .collect(),
                stop_at: Some(
                    ranges
                        .iter()
                        .map(|&(p, _, end)| ((topic.clone(), p), end))
                        .collect(),
                ),
                ..SinkWorker::live(
                    config,
                    index,
                    &topology.sink,
                    &topology.log.consumer_group_prefix,
                )
            };
            let records = run_sink_worker(
                paced(log, spec.rate),
                writer.clone(),
                map,
                worker,
                cancel.clone(),
                Some(metrics.reporter(progress)),
            )
            .await?;
            writer.close().await;
            metrics.done(records);
            Ok(ReplayOutcome::after_run(records, plan.total, &cancel))
        }
    }
}

/// `log`, with its reads paced to `rate` records per second when one is given.
fn paced(log: Arc<dyn Log>, rate: Option<NonZeroU32>) -> Arc<dyn Log> {
    match rate {
        Some(rate) => Arc::new(pace::PacedLog::new(log, rate)),
        None => log,
    }
}

/// `--rate`: a log whose readers hand out records no faster than a rate.
mod pace {
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use sluice_core::log::{
        Assignment, Delivery, Log, LogError, OutRecord, PartitionReader, Position, Rebalance,
        Record,
    };
    use tokio::time::Instant;

    /// When the next records may go: every record read pushes it `1 / rate` seconds on, and
    /// the reader hands records out only once their time has come. It never runs ahead of
    /// the clock (no burst is saved up while idle), so `n` records take at least
    /// `n / rate` seconds.
    pub(super) struct Pacer {
        per_record: Duration,
        /// Largest poll: a quarter of a second's records (at least one), so the wait between
        /// hand-outs stays short and even.
        batch: usize,
        next: tokio::sync::Mutex<Option<Instant>>,
    }

    impl Pacer {
        pub(super) fn new(rate: NonZeroU32) -> Self {
            Pacer {
                per_record: Duration::from_secs_f64(1.0 / f64::from(rate.get())),
                batch: (rate.get() as usize / 4).max(1),
                next: tokio::sync::Mutex::new(None),
            }
        }

        /// Waits until `records` more records may be handed out.
        pub(super) async fn take(&self, records: usize) {
            let until = {
                let mut next = self.next.lock().await;
                let now = Instant::now();
                let from = next.map_or(now, |next| next.max(now));
                let until = from + self.per_record * records as u32;
                *next = Some(until);
                until
            };
            tokio::time::sleep_until(until).await;
        }
    }

    /// A log whose readers share one [`Pacer`]; everything else goes straight through.
    pub(super) struct PacedLog {
        inner: Arc<dyn Log>,
        pacer: Arc<Pacer>,
    }

    impl PacedLog {
        pub(super) fn new(inner: Arc<dyn Log>, rate: NonZeroU32) -> Self {
            PacedLog {
                inner,
                pacer: Arc::new(Pacer::new(rate)),
            }
        }
    }

    #[async_trait]
    impl Log for PacedLog {
        async fn ensure_topics(&self, topics: &[(String, u32, u32)]) -> Result<(), LogError> {
            self.inner.ensure_topics(topics).await
        }

        async fn send(
            &self,
            topic: &str,
            record: OutRecord,
            timeout: Duration,
        ) -> Result<Delivery, LogError> {
            self.inner.send(topic, record, timeout).await
        }

        async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
            self.inner.partition_count(topic).await
        }

        async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), LogError> {
            self.inner.watermarks(topic, partition).await
        }

        async fn offset_for_time(
            &self,
            topic: &str,
            partition: i32,
            time_ms: i64,
        ) -> Result<i64, LogError> {
            self.inner.offset_for_time(topic, partition, time_ms).await
        }

        async fn try_send(
            &self,
            topic: &str,
            record: OutRecord,
            timeout: Duration,
        ) -> Result<Delivery, LogError> {
            self.inner.try_send(topic, record, timeout).await
        }

        async fn check_ready(&self) -> Result<(), LogError> {
            self.inner.check_ready().await
        }

        async fn reader(&self, group: &str) -> Result<Box<dyn PartitionReader>, LogError> {
            Ok(Box::new(PacedReader {
                inner: self.inner.reader(group).await?,
                pacer: self.pacer.clone(),
            }))
        }

        async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
            self.inner.flush(timeout).await
        }
    }

    /// A reader that hands out records as its [`Pacer`] allows; every other call goes
    /// straight to the backend's reader.
    struct PacedReader {
        inner: Box<dyn PartitionReader>,
        pacer: Arc<Pacer>,
    }

    #[async_trait]
    impl PartitionReader for PacedReader {
        async fn assign(
            &mut self,
            assignments: Vec<Assignment>,
        ) -> Result<Vec<Position>, LogError> {
            self.inner.assign(assignments).await
        }

        async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
            let records = self.inner.poll(max.min(self.pacer.batch), wait).await?;
            if !records.is_empty() {
                self.pacer.take(records.len()).await;
            }
            Ok(records)
        }

        async fn rewind(&mut self, positions: Vec<Position>) -> Result<Vec<Position>, LogError> {
            self.inner.rewind(positions).await
        }

        async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
            self.inner.commit(positions).await
        }

        async fn subscribe(&mut self, topics: &[String]) -> Result<(), LogError> {
            self.inner.subscribe(topics).await
        }

        fn rebalances(&mut self) -> Vec<Rebalance> {
            self.inner.rebalances()
        }

        fn read_in_time_order(&mut self) {
            self.inner.read_in_time_order()
        }

        async fn accept(
            &mut self,
            assignments: Vec<Assignment>,
        ) -> Result<Vec<Position>, LogError> {
            self.inner.accept(assignments).await
        }

        async fn close(&mut self) {
            self.inner.close().await
        }

        async fn committed(
            &mut self,
            topic: &str,
            partition: i32,
        ) -> Result<Option<i64>, LogError> {
            self.inner.committed(topic, partition).await
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn the_pacer_hands_out_no_more_than_its_rate() {
            let pacer = Pacer::new(NonZeroU32::new(1000).unwrap());
            assert_eq!(pacer.batch, 250);
            let started = Instant::now();
            for _ in 0..2 {
                pacer.take(250).await;
            }
            // 500 records at 1000 per second: at least half a second, and not much more.
            assert!(started.elapsed() >= Duration::from_millis(500));
            assert!(started.elapsed() < Duration::from_secs(3));
            // Idle time is not saved up as a burst.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let again = Instant::now();
            pacer.take(100).await;
            assert!(again.elapsed() >= Duration::from_millis(100));
        }
    }
}

/// The progress bar on the terminal while a replay runs, if any: log lines are printed above
/// it ([`LogWriter`]).
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Where Sluice's log lines go: standard error, and while a replay's progress bar is on the
/// terminal, above the bar (it is hidden for the line and drawn again after), so the two do
/// not overwrite each other. Give it to `tracing_subscriber`'s `with_writer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

/// One log line's writer (see [`LogWriter`]).
#[derive(Debug)]
pub struct LogLine;

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine
    }
}

/// Prints `line` on standard error, above the progress bar when one is shown.
pub fn eprint_line(line: &str) {
    let _ = LogLine.write_all(format!("{line}\n").as_bytes());
}

/// Progress shown on a terminal as a progress bar (records done/total, rate, estimated time
/// left, labelled with the target), elsewhere as a plain line every `every` (records done,
/// total, rate, left, estimated time left). Call [`finish_progress`] when the replay ends.
pub fn progress_printer(label: String, every: Duration) -> ProgressFn {
    if std::io::stderr().is_terminal() {
        // Hidden until the first progress, which brings the total.
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(
            "{prefix} [{wide_bar}] {human_pos}/{human_len} {percent}% {rate} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label);
        *ACTIVE_BAR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bar.clone());
        let shown = std::sync::atomic::AtomicBool::new(false);
        return Arc::new(move |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
            if !shown.swap(true, Ordering::Relaxed) {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        });
    }
    let started = Instant::now();
    let last_print = Arc::new(AtomicU64::new(0));
    Arc::new(move |done: u64, total: u64| {
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        let previous = last_print.load(Ordering::Relaxed);
        let finished = done >= total;
        if !finished
            && elapsed_ms.saturating_sub(previous) < every.as_millis() as u64
            && previous != 0
        {
            return;
        }
        last_print.store(elapsed_ms.max(1), Ordering::Relaxed);
        let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
        let left = total.saturating_sub(done);
        let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
        let percent = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let line = format!("{label}: {done}/{total} records ({percent:.1}%), {rate:.0} records/s, {left} left, ~{eta:.0}s to go");
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    })
}

/// Ends the progress bar of [`progress_printer`], if one is shown: it stays on the terminal
/// as it ended, and log lines go straight to standard error again.
pub fn finish_progress() {
    let bar = ACTIVE_BAR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(bar) = bar {
        if !bar.is_hidden() {
            bar.abandon();
            // The bar's line stays; what follows starts on the next one.
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Serves `/metrics` (the replay's counters among the process's others) on `listener` until
/// `shutdown`: `sluice replay --metrics-listen`.
pub async fn serve_metrics(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    use warp::Filter;
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(sluice_ingress::routes::health::metrics);
    warp::serve(metrics)
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
}

/// Parses a `--from`/`--to` value: `beginning`, an offset (`1234`), or a time (RFC 3339 with
/// any offset, such as `2026-11-25T10:00:00Z` or `2026-11-25T12:00:00+02:00`, or milliseconds
/// since the epoch written `@1795622309905`).
pub fn parse_bound(text: &str) -> Result<Bound, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("beginning") {
        return Ok(Bound::Beginning);
    }
    if let Some(ms) = text.strip_prefix('@') {
        return ms
            .parse()
            .map(Bound::Time)
            .map_err(|_| format!("{text:?}: after '@' give milliseconds since the epoch"));
    }
    if let Ok(offset) = text.parse::<i64>() {
        return if offset >= 0 {
            Ok(Bound::Offset(offset))
        } else {
            Err(format!("{text:?}: offsets are not negative"))
        };
    }
    // Text that starts like a date (`YYYY-`) was meant as a time: say what is wrong with it.
    let looks_like_a_date = text
        .get(..5)
        .is_some_and(|head| head[..4].bytes().all(|b| b.is_ascii_digit()) && head.ends_with('-'));
    match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        Ok(at) => Ok(Bound::Time(
            at.unix_timestamp() * 1000 + i64::from(at.millisecond()),
        )),
        Err(error) if looks_like_a_date => Err(format!(
            "{text:?} is not a valid RFC 3339 time ({error}); write YYYY-MM-DDTHH:MM:SS[.fff] \
             followed by Z or an offset ±HH:MM, such as 2026-11-25T10:00:00Z or \
             2026-11-25T12:00:00+02:00"
        )),
        Err(_) => Err(format!(
            "{text:?} is not `beginning`, an offset, `@<epoch ms>` or an RFC 3339 time such as \
             2026-11-25T10:00:00Z or 2026-11-25T12:00:00+02:00"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored position that retention has passed resumes at the oldest retained record:
    /// the replay's total counts only what is left, and the plan says how many were lost.
    #[tokio::test]
    async fn resumed_starts_are_clamped_to_the_oldest_retained_record() {
        use sluice_core::log::OutRecord;
        use sluice_log_embedded::{EmbeddedLog, Retention};
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(
            &dir.path().join("log.redb"),
            Retention {
                max_age: None,
                max_records: Some(4),
            },
        )
        .unwrap();
        log.ensure_topics(&[("t".into(), 1, 1)]).await.unwrap();
        for n in 0..10 {
            log.send(
                "t",
                OutRecord::new("k", format!("{n}")),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        }
        log.enforce_retention().await.unwrap();
        assert_eq!(log.watermarks("t", 0).await.unwrap(), (6, 10));
        let spec = ReplaySpec {
            topic: Some("t".into()),
            from: Bound::Beginning,
            to: None,
            target: Target::Stage("s".into()),
            name: "n".into(),
            rate: None,
        };
        let resumed = HashMap::from([(0, 2)]);
        for mode in [Resumed::Plan, Resumed::Run] {
            let found = ranges(&log, "t", &spec, &resumed, mode).await.unwrap();
            assert_eq!(found.ranges, vec![(0, 6, 10)], "{mode:?}");
            assert_eq!(found.expired, 4, "{mode:?}");
        }
        // Past the end: nothing left to replay.
        let found = ranges(&log, "t", &spec, &HashMap::from([(0, 99)]), Resumed::Run)
            .await
            .unwrap();
        assert!(found.ranges.is_empty() && found.expired == 0);
        // Within the retained records: the stored position as it is.
        let found = ranges(&log, "t", &spec, &HashMap::from([(0, 8)]), Resumed::Run)
            .await
            .unwrap();
        assert_eq!(found.ranges, vec![(0, 8, 10)]);
    }

    /// However a replay ends, `sluice_replay_remaining_records` of its target goes to 0.
    #[test]
    fn the_remaining_records_gauge_is_reset_when_the_replay_ends() {
        let handle = sluice_ingress::prometheus::handle();
        // A target no other test uses: the recorder is the process's.
        let target = Target::Shard("remaining-reset".into());
        let line = || {
            handle
                .render()
                .lines()
                .find(|l| {
                    l.starts_with("sluice_replay_remaining_records{")
                        && l.contains("shard:remaining-reset")
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        let reset = RemainingReset::new(&target);
        let metrics = ReplayMetrics::new(&target, 10);
        metrics.done(3);
        assert_eq!(line().as_deref(), Some("7"));
        drop(reset); // the replay stopped here: cancelled, failed or done
        assert_eq!(line().as_deref(), Some("0"));
    }

    #[test]
    fn bounds_parse() {
        assert_eq!(parse_bound("beginning"), Ok(Bound::Beginning));
        assert_eq!(parse_bound("42"), Ok(Bound::Offset(42)));
        assert_eq!(
            parse_bound("@1795622309905"),
            Ok(Bound::Time(1_795_622_309_905))
        );
        assert_eq!(parse_bound("1970-01-01T00:00:01Z"), Ok(Bound::Time(1000)));
        assert_eq!(
            parse_bound("2026-11-25T15:58:29.905Z"),
            Ok(Bound::Time(1_795_622_309_905))
        );
        assert!(parse_bound("-1").unwrap_err().contains("not negative"));
        assert!(parse_bound("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn times_with_an_offset_are_converted_to_utc() {
        // 17:58:29.905 at UTC+2 is 15:58:29.905 UTC.
        assert_eq!(
            parse_bound("2026-11-25T17:58:29.905+02:00"),
            Ok(Bound::Time(1_795_622_309_905))
        );
        assert_eq!(
            parse_bound("2026-11-25T10:28:29.905-05:30"),
            Ok(Bound::Time(1_795_622_309_905))
        );
        assert_eq!(
            parse_bound("2026-11-25T15:58:29.905+00:00"),
            Ok(Bound::Time(1_795_622_309_905))
        );
        // Across midnight and the year: 00:30 on 1 January at +02:00 is 22:30 on 31 December.
        assert_eq!(
            parse_bound("1971-01-01T00:30:00+02:00"),
            parse_bound("1970-12-31T22:30:00Z")
        );
        assert_eq!(
            parse_bound("1970-12-31T22:30:00Z"),
            Ok(Bound::Time((364 * 86_400 + 22 * 3_600 + 30 * 60) * 1000))
        );
        // Digits beyond the millisecond are truncated.
        assert_eq!(
            parse_bound("1970-01-01T00:00:01.999999Z"),
            Ok(Bound::Time(1999))
        );
    }

    #[test]
    fn impossible_dates_are_refused_with_the_expected_format() {
        for text in [
            "2026-02-31T10:00:00Z",
            "2025-02-29T10:00:00Z",
            "2026-04-31T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00:00",
            "2026-11-25",
        ] {
            let error = parse_bound(text).unwrap_err();
            assert!(
                error.contains(&format!("{text:?} is not a valid RFC 3339 time")),
                "{error}"
            );
            assert!(
                error.contains("YYYY-MM-DDTHH:MM:SS[.fff]")
                    && error.contains("2026-11-25T10:00:00Z"),
                "the error does not show the expected format: {error}"
            );
        }
        // 29 February of a leap year exists.
        assert_eq!(
            parse_bound("2024-02-29T00:00:00Z"),
            Ok(Bound::Time(1_709_164_800_000))
        );
    }
}
