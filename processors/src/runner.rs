//! The stage runner: consume → process → produce → commit.
//!
//! Each batch is read, processed record by record, and every resulting record (outputs and
//! dead letters) is sent to the log. Only when the log has acknowledged all of them does the
//! runner commit the input positions, so a crash at any point replays the batch rather than
//! losing it (at-least-once; sinks deduplicate by order id). A failed send is retried with
//! backoff until it succeeds or the runner is cancelled, in which case nothing is committed.
//!
//! A live stage reads in its consumer group (`<prefix>.<stage>`): every process running the
//! stage joins the group, and Kafka divides the input's partitions among them with
//! cooperative incremental assignment. Partitions move only inside a poll, after the previous
//! batch was committed, so a stage gives up a partition with everything it finished
//! committed (a commit the broker refuses while the group completes a rebalance is tried
//! again for a few seconds). A member fenced out of its group (its session ran out), or whose
//! commit is still refused after that, abandons the commit; the partitions' owners read those
//! records again from the last committed positions (at-least-once between topics; the shards
//! store each order once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::StageConfig;
use futures::future::join_all;
use sluice_core::log::{
    assign_all, Assignment, CommittedStarts, Log, LogError, OutRecord, Position, StartFrom,
};
use sluice_core::order::{HEADER_ORDER_ID, HEADER_TRACEPARENT};
use sluice_core::retry::{Backoff, GaveUp, Retry, Verdict};
use sluice_core::telemetry;
use sluice_core::trace::{self, FinishedSpan, Hop, SpanKind, TraceParent};
use tokio_util::sync::CancellationToken;

use crate::stage::{dead_letter, Emission, Outcome, Stage};

/// Why a stage runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The log failed in a way retrying does not fix (e.g. the input topic is missing).
    #[error("stage {stage:?}: {source}")]
    Log {
        /// The stage.
        stage: String,
        /// The log error.
        source: LogError,
    },
}

/// Everything a runner needs to drive one stage.
pub struct StageRunner {
    /// Stage name (metrics label, log field).
    pub name: String,
    /// Topic read.
    pub input: String,
    /// Topic that receives rejected records.
    pub dead_letter: String,
    /// Consumer group that stores the committed input positions.
    pub group: String,
    /// Records per batch.
    pub batch_size: usize,
    /// Where to start: `Committed` for a live stage (the group's positions, else the beginning).
    pub start: StartFrom,
    /// Exact partitions and start offsets to read instead (replays); `None` reads every
    /// partition of `input` from `start`, or, for a live stage (`start` is
    /// [`StartFrom::Committed`] and there is no `stop_at`), the partitions its consumer group
    /// gives this process.
    pub assignments: Option<Vec<Assignment>>,
    /// Stop once every input partition reaches these offsets (replay); `None` runs forever.
    pub stop_at: Option<BTreeMap<i32, i64>>,
    /// How long to wait for the log to acknowledge one output before retrying it.
    pub ack_timeout: Duration,
}

impl StageRunner {
    /// A live runner for the stage declared by `config`, committing under `<prefix>.<name>`.
    pub fn from_config(config: &StageConfig, group_prefix: &str) -> Self {
        StageRunner {
            name: config.name.clone(),
            input: config.input.clone(),
            dead_letter: config.dead_letter.clone(),
            group: format!("{group_prefix}.{}", config.name),
            batch_size: config.batch_size,
            start: StartFrom::Committed,
            assignments: None,
            stop_at: None,
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// Progress callback: records done in this run so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Runs `stage` until `cancel` fires (or, for a bounded replay, until `stop_at` is reached).
/// Returns the number of input records processed.
pub async fn run_stage(
    log: Arc<dyn Log>,
    stage: Arc<dyn Stage>,
    runner: StageRunner,
    cancel: CancellationToken,
    progress: Option<Progress>,
) -> Result<u64, RunnerError> {
    let fail = |source| RunnerError::Log {
        stage: runner.name.clone(),
        source,
    };
    let mut consumer = log.consumer(&runner.group).await.map_err(fail)?;
    let in_group = runner.assignments.is_none()
        && runner.stop_at.is_none()
        && runner.start == StartFrom::Committed;
    if in_group {
        consumer
            .subscribe(
                std::slice::from_ref(&runner.input),
                Box::new(CommittedStarts),
            )
            .await
            .map_err(fail)?;
    } else {
        let assignments = match &runner.assignments {
            Some(assignments) => assignments.clone(),
            None => assign_all(
                log.as_ref(),
                std::slice::from_ref(&runner.input),
                runner.start,
            )
            .await
            .map_err(fail)?,
        };
        consumer.assign(assignments).await.map_err(fail)?;
    }
    tracing::info!(
        stage = runner.name,
        input = runner.input,
        group = runner.group,
        in_group,
        "stage started"
    );

    let metrics = StageMetrics::register(&runner.name);

    let mut remaining = runner.stop_at.clone();
    let mut done: u64 = 0;
    let mut failed_polls = 0u32;
    loop {
        if remaining.as_ref().is_some_and(BTreeMap::is_empty) {
            break;
        }
        let records = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            polled = consumer.poll(runner.batch_size, Duration::from_millis(200)) => match polled {
                Ok(records) => records,
                Err(error) => {
                    // Transient broker trouble must not take the process down: back off, retry.
                    tracing::warn!(stage = runner.name, %error, "poll failed; retrying");
                    if !sluice_core::log::POLL_BACKOFF.wait(failed_polls, &cancel).await {
                        break;
                    }
                    failed_polls = failed_polls.saturating_add(1);
                    continue;
                }
            },
        };
        failed_polls = 0;
        if records.is_empty() {
            continue;
        }
        let started = Instant::now();
        let exporter = trace::exporter();
        let started_unix_nanos = exporter.map(|_| trace::now_unix_nanos());
        // Each record's hop, for the spans exported once its outputs are acknowledged.
        let mut hops: Vec<(Hop, Option<String>)> = Vec::new();
        let mut positions: BTreeMap<i32, Position> = BTreeMap::new();
        let mut emissions = Vec::with_capacity(records.len());
        let mut taken = 0u64;
        for record in &records {
            if let Some(ends) = &mut remaining {
                match ends.get(&record.partition) {
                    Some(&end) if record.offset < end => {}
                    Some(_) => {
                        // At or past its end (records below it may have been removed by
                        // retention): this partition is done.
                        ends.remove(&record.partition);
                        continue;
                    }
                    None => continue,
                }
            }
            taken += 1;
            metrics.records_in.increment(1);
            // This stage's hop of the record's trace (a record without one starts a trace):
            // its outputs, dead letters included, carry the hop's `traceparent`.
            let hop = Hop::after(TraceParent::of_record(record));
            let traceparent = hop.traceparent().header();
            let first_output = emissions.len();
            match stage.process(record) {
                Outcome::Emit(out) => {
                    tracing::debug!(
                        stage = runner.name, trace.id = %hop.trace_id, span.id = %hop.span_id,
                        order_id = order_id_in(&record.payload).as_deref(),
                        partition = record.partition, offset = record.offset, outputs = out.len(),
                        "record processed"
                    );
                    emissions.extend(out.into_iter().map(|e| (e, Output::Emitted)))
                }
                Outcome::DeadLetter(reason) => {
                    let out = dead_letter(&runner.name, record, &reason);
                    tracing::debug!(
                        stage = runner.name, trace.id = %hop.trace_id, span.id = %hop.span_id,
                        order_id = out.headers.iter().find(|(name, _)| name == HEADER_ORDER_ID)
                            .and_then(|(_, id)| std::str::from_utf8(id).ok()),
                        reason, partition = record.partition, offset = record.offset,
                        "dead-lettering record"
                    );
                    emissions.push((
                        Emission {
                            topic: runner.dead_letter.clone(),
                            record: out,
                        },
                        Output::DeadLetter,
                    ));
                }
            }
            for (emission, _) in &mut emissions[first_output..] {
                set_traceparent(&mut emission.record, &traceparent);
            }
            if exporter.is_some() {
                hops.push((hop, order_id_in(&record.payload)));
            }
            positions.insert(record.partition, record.next_position());
        }
        if !send_all(log.as_ref(), &runner, &metrics, emissions, &cancel).await {
            tracing::warn!(
                stage = runner.name,
                "cancelled before outputs were acknowledged; batch will be replayed"
            );
            break;
        }
        if let (Some(exporter), Some(start)) = (exporter, started_unix_nanos) {
            let end = trace::now_unix_nanos();
            for (hop, order_id) in hops {
                let mut attributes = vec![("sluice.stage", runner.name.clone())];
                attributes.extend(order_id.map(|id| ("sluice.order_id", id)));
                exporter.export(FinishedSpan {
                    hop,
                    name: format!("stage {}", runner.name),
                    kind: SpanKind::Consumer,
                    start_unix_nanos: start,
                    end_unix_nanos: end,
                    attributes,
                });
            }
        }
        let positions: Vec<Position> = positions.into_values().collect();
        match commit_with_retry(&mut consumer, &runner.name, &positions, &cancel)
            .await
            .map_err(fail)?
        {
            Committed::Yes => {}
            // The batch was processed and its outputs are acknowledged: it counts as done.
            Committed::Rebalanced => tracing::warn!(
                stage = runner.name,
                "the consumer group rebalanced before the batch was committed; the partitions' owners read it again"
            ),
            Committed::Cancelled => {
                tracing::warn!(
                    stage = runner.name,
                    "cancelled before the batch was committed; it will be replayed"
                );
                break;
            }
        }
        if let Some(ends) = &mut remaining {
            for p in &positions {
                if ends
                    .get(&p.partition)
                    .is_some_and(|&end| p.next_offset >= end)
                {
                    ends.remove(&p.partition);
                }
            }
        }
        done += taken;
        if let Some(progress) = &progress {
            progress(done);
        }
        metrics
            .batch_duration
            .record(started.elapsed().as_secs_f64());
        metrics.batch_records.record(taken as f64);
    }
    // Leaving the group now hands the partitions to the other processes at once.
    consumer.close().await;
    tracing::info!(stage = runner.name, records = done, "stage stopped");
    Ok(done)
}

/// The `orderId` of a JSON order payload, if it has one (for log lines and spans).
fn order_id_in(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("orderId")?.as_str().map(str::to_string)
}

/// Sets `record`'s `traceparent` header to `value` (replacing the one copied from its input).
fn set_traceparent(record: &mut OutRecord, value: &str) {
    match record
        .headers
        .iter_mut()
        .find(|(name, _)| name == HEADER_TRACEPARENT)
    {
        Some((_, old)) => *old = value.as_bytes().to_vec(),
        None => record
            .headers
            .push((HEADER_TRACEPARENT.into(), value.into())),
    }
}

/// The trace id in `record`'s `traceparent` header, if it has a valid one.
fn trace_id_of(record: &OutRecord) -> Option<String> {
    record
        .headers
        .iter()
        .find(|(name, _)| name == HEADER_TRACEPARENT)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .and_then(TraceParent::parse)
        .map(|parent| parent.trace_id.to_string())
}

/// What a record the stage writes is, for its counter.
#[derive(Debug, Clone, Copy)]
enum Output {
    /// A record the stage emitted.
    Emitted,
    /// An input sent to the dead-letter topic.
    DeadLetter,
}

/// A stage's metric handles, registered once when it starts.
struct StageMetrics {
    records_in: metrics::Counter,
    emitted: metrics::Counter,
    dead_lettered: metrics::Counter,
    batch_duration: metrics::Histogram,
    batch_records: metrics::Histogram,
}

impl StageMetrics {
    fn register(stage: &str) -> Self {
        let stage = stage.to_string();
        StageMetrics {
            records_in: metrics::counter!(telemetry::STAGE_RECORDS_IN, "stage" => stage.clone()),
            emitted: metrics::counter!(telemetry::STAGE_RECORDS_OUT, "stage" => stage.clone(), "outcome" => "emitted"),
            dead_lettered: metrics::counter!(telemetry::STAGE_RECORDS_OUT, "stage" => stage.clone(), "outcome" => "dead_letter"),
            batch_duration: metrics::histogram!(telemetry::STAGE_BATCH_DURATION, "stage" => stage.clone()),
            batch_records: metrics::histogram!(telemetry::STAGE_BATCH_RECORDS, "stage" => stage),
        }
    }
}

/// How a batch's commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// The positions are stored.
    Yes,
    /// The group rebalanced first: the positions were not stored (the batch is read again by
    /// its partitions' owners).
    Rebalanced,
    /// Cancelled first (the batch is processed again after a restart: at-least-once).
    Cancelled,
}

/// Commits positions, retrying failures with backoff. `Err` when the consumer refuses the
/// commit for good (a position past what it handed out: a bug, which retrying cannot fix and
/// which must not be skipped).
async fn commit_with_retry(
    consumer: &mut sluice_core::log::LogConsumer,
    stage: &str,
    positions: &[Position],
    cancel: &CancellationToken,
) -> Result<Committed, LogError> {
    let committed = Retry::new(Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
    ))
    .cancel_on(cancel)
    .run_with(
        consumer,
        |consumer| async move {
            let committed = consumer.commit(positions).await;
            (consumer, committed)
        },
        |error| match error {
            LogError::CommitPastRead { .. } | LogError::Rebalanced(_) => Verdict::Stop,
            _ => Verdict::Retry,
        },
        |error, _| tracing::warn!(stage, %error, "commit failed; retrying"),
    )
    .await;
    match committed {
        Ok(()) => Ok(Committed::Yes),
        Err(GaveUp::Permanent(LogError::Rebalanced(_))) => Ok(Committed::Rebalanced),
        Err(GaveUp::Permanent(error)) => Err(error),
        Err(_) => Ok(Committed::Cancelled),
    }
}

/// Sends every emission, retrying the failed ones with backoff. Returns false if cancelled
/// first.
async fn send_all(
    log: &dyn Log,
    runner: &StageRunner,
    metrics: &StageMetrics,
    pending: Vec<(Emission, Output)>,
    cancel: &CancellationToken,
) -> bool {
    Retry::new(Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(5),
    ))
    .cancel_on(cancel)
    .run_with(
        pending,
        |mut pending| async move {
            let sent = send_pending(log, runner, metrics, &mut pending).await;
            (pending, sent)
        },
        // Any send error can pass (a broker away, a full queue): only cancellation stops.
        |_| Verdict::Retry,
        |_, _| {},
    )
    .await
    .is_ok()
}

/// Sends the `pending` emissions once and keeps the ones that failed; `Err` counts them.
async fn send_pending(
    log: &dyn Log,
    runner: &StageRunner,
    metrics: &StageMetrics,
    pending: &mut Vec<(Emission, Output)>,
) -> Result<(), usize> {
    let results = join_all(
        pending
            .iter()
            .map(|(e, _)| log.send(&e.topic, e.record.clone(), runner.ack_timeout)),
    )
    .await;
    let mut failed = Vec::new();
    for ((emission, outcome), result) in std::mem::take(pending).into_iter().zip(results) {
        match result {
            Ok(_) => match outcome {
                Output::Emitted => metrics.emitted.increment(1),
                Output::DeadLetter => metrics.dead_lettered.increment(1),
            },
            Err(error) => {
                tracing::warn!(
                    stage = runner.name, topic = emission.topic, %error,
                    trace.id = trace_id_of(&emission.record).as_deref(),
                    order_id = order_id_in(&emission.record.payload).as_deref(),
                    "send failed; will retry"
                );
                failed.push((emission, outcome));
            }
        }
    }
    *pending = failed;
    match pending.len() {
        0 => Ok(()),
        unsent => Err(unsent),
    }
}
