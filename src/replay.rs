//! `sluice replay`: re-read a topic from an offset or a time (optionally up to another) and
//! feed a stage or a shard, under the replay's own consumer position, so the live pipeline is
//! untouched. A run stops at the end of each partition as it was when the run started (or at
//! `--to`). Interrupted, the same command resumes from the stored position: the position's
//! name combines `--name` with the topic and bounds, so changing `--from` or `--to` starts a
//! fresh replay instead of resuming an old one. Sinks are idempotent by `order_id`, so a replay
//! never duplicates rows.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_core::log::{Assignment, Log, LogError, StartFrom};
use sluice_core::telemetry;
use sluice_processors::{run_stage, StageRunner};
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

/// One replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Records to cover in `(partition, start, end)` ranges.
    fn total_of(ranges: &[(i32, i64, i64)]) -> u64 {
        ranges
            .iter()
            .map(|(_, start, end)| (end - start) as u64)
            .sum()
    }

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

/// `(partition, start, end)` for every partition with something to replay; `resumed` maps a
/// partition to a stored position that overrides the start.
async fn plan(
    log: &dyn Log,
    topic: &str,
    spec: &ReplaySpec,
    resumed: &HashMap<i32, i64>,
) -> Result<Vec<(i32, i64, i64)>, LogError> {
    let mut ranges = Vec::new();
    for partition in 0..log.partition_count(topic).await? as i32 {
        let high = log.watermarks(topic, partition).await?.1;
        let end = match spec.to {
            None => high,
            Some(bound) => resolve(log, topic, partition, bound).await?.min(high),
        };
        let start = match resumed.get(&partition) {
            Some(&position) => position,
            None => resolve(log, topic, partition, spec.from).await?,
        };
        if start < end {
            ranges.push((partition, start, end));
        }
    }
    Ok(ranges)
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
    match &spec.target {
        Target::Stage(name) => {
            let config = topology.stage(name).ok_or_else(|| {
                ReplayError::UnknownTarget(format!("no stage named {name:?} in the topology"))
            })?;
            let topic = spec.topic.clone().unwrap_or_else(|| config.input.clone());
            let group = format!(
                "{}.replay.{}.{}",
                topology.log.consumer_group_prefix,
                spec.position_name(&topic),
                name
            );
            let mut consumer = log.consumer(&group).await?;
            let mut resumed = HashMap::new();
            for partition in 0..log.partition_count(&topic).await? as i32 {
                if let Some(position) = consumer.committed(&topic, partition).await? {
                    resumed.insert(partition, position);
                }
            }
            drop(consumer);
            let ranges = plan(log.as_ref(), &topic, spec, &resumed).await?;
            let total = ReplayOutcome::total_of(&ranges);
            if ranges.is_empty() {
                return Ok(ReplayOutcome::finished(0, 0));
            }
            let stage = config.build(&topology.stage_context())?;
            let mut runner = StageRunner::from_config(config, &topology.log.consumer_group_prefix);
            runner.name = format!("replay.{}.{name}", spec.name);
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
            let reporter = progress.map(|p| {
                Arc::new(move |done: u64| p(done, total)) as Arc<dyn Fn(u64) + Send + Sync>
            });
            let records = run_stage(log, stage, runner, cancel.clone(), reporter).await?;
            metrics::counter!(telemetry::REPLAY_RECORDS, "target" => format!("stage:{name}"))
                .increment(records);
            Ok(ReplayOutcome::after_run(records, total, &cancel))
        }
        Target::Shard(name) => {
            let (index, config) = topology
                .shards
                .iter()
                .enumerate()
                .find(|(_, s)| &s.name == name)
                .ok_or_else(|| {
                    ReplayError::UnknownTarget(format!("no shard named {name:?} in the topology"))
                })?;
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
            let ranges = plan(log.as_ref(), &topic, spec, &resumed).await?;
            let total = ReplayOutcome::total_of(&ranges);
            if ranges.is_empty() {
                return Ok(ReplayOutcome::finished(0, 0));
            }
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
            let reporter = progress.map(|p| {
                Arc::new(move |done: u64| p(done, total)) as Arc<dyn Fn(u64) + Send + Sync>
            });
            let records =
                run_sink_worker(log, writer.clone(), map, worker, cancel.clone(), reporter).await?;
            writer.close().await;
            metrics::counter!(telemetry::REPLAY_RECORDS, "target" => format!("shard:{name}"))
                .increment(records);
            Ok(ReplayOutcome::after_run(records, total, &cancel))
        }
    }
}

/// Progress shown on a terminal as one updating line, elsewhere as a plain line every
/// `every` (records done, total, rate, estimated time left).
pub fn progress_printer(label: String, every: Duration) -> ProgressFn {
    let on_terminal = std::io::stderr().is_terminal();
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
        let mut err = std::io::stderr().lock();
        if on_terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            if finished {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    })
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
