//! The stage runner: consume → process → produce → commit, pipelined.
//!
//! A runner drives one [`Chain`] (a single stage is a chain of one). It reads a batch, runs
//! each record through the chain's stages, and sends every resulting record (outputs and dead
//! letters) to the log. While the log acknowledges one batch, the runner already reads and
//! processes the next ones (at most [`BATCHES_IN_FLIGHT`]). Batches are committed in the order
//! they were read, each only once the log acknowledged all of its records and those of every
//! batch before it, so a committed position never passes an unacknowledged output, and a crash
//! at any point replays what was not committed rather than losing it (at-least-once; sinks
//! deduplicate by order id). A failed send is retried with backoff until it succeeds or the
//! runner stops, in which case nothing after it is committed.
//!
//! A live chain reads in its first stage's consumer group (`<prefix>.<stage>`): every
//! process running the chain joins the group, and Kafka divides the input's partitions among
//! them with cooperative incremental assignment. Partitions move only inside a poll; a batch
//! of a partition taken away while it was in flight is not committed by this member (the
//! commit is refused, or the partition is no longer this member's), and the partition's new
//! owner reads it again from the last committed position (at-least-once between topics; the
//! shards store each order once). A member fenced out of its group (its session ran out), or
//! whose commit is still refused after a few seconds, abandons the commit likewise.
//!
//! On shutdown the runner stops reading, waits up to [`DRAIN_GRACE`] for the batches in
//! flight to be acknowledged and commits them, then stops.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chain::Chain;
use crate::config::StageConfig;
use crate::item::{order_id_of, Item};
use futures::future::join_all;
use sluice_core::log::{
    assign_all, Assignment, CommittedStarts, Log, LogConsumer, LogError, OutRecord, Position,
    StartFrom,
};
use sluice_core::order::HEADER_TRACEPARENT;
use sluice_core::retry::{Backoff, GaveUp, Retry, Verdict};
use sluice_core::telemetry;
use sluice_core::trace::{self, FinishedSpan, Hop, SpanKind, TraceParent};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stage::{dead_letter, Outcome, Source};

/// Most batches a runner has read but not yet committed: while the log acknowledges them,
/// the runner reads and processes the next.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// How long a stopping runner waits for the batches in flight to be acknowledged, so that it
/// can commit them rather than leave them to be processed again.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

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

/// Everything a runner needs to read a chain's input.
pub struct StageRunner {
    /// Runner name (log field): the first stage's name for a live chain.
    pub name: String,
    /// Prefix of the `stage` label of the chain's metrics (empty for a live chain; a replay
    /// sets `replay.<name>.`, so its counts stay apart from the live stages').
    pub metric_prefix: String,
    /// Topic read.
    pub input: String,
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
    /// A live runner for a chain whose first stage is `config`, committing under
    /// `<prefix>.<name>`.
    pub fn from_config(config: &StageConfig, group_prefix: &str) -> Self {
        StageRunner {
            name: config.name.clone(),
            metric_prefix: String::new(),
            input: config.input.clone(),
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

/// Runs `chain` until `cancel` fires (or, for a bounded replay, until `stop_at` is reached).
/// Returns the number of input records processed.
pub async fn run_chain(
    log: Arc<dyn Log>,
    chain: Arc<Chain>,
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
        chain = chain.describe(),
        input = runner.input,
        group = runner.group,
        in_group,
        "stage started"
    );

    let mut state = RunState {
        metrics: chain
            .links()
            .iter()
            .map(|link| {
                StageMetrics::register(&format!("{}{}", runner.metric_prefix, link.config.name))
            })
            .collect(),
        remaining: runner.stop_at.clone(),
        done: 0,
        progress,
    };
    // Sends stop on this token, which fires only after the drain: a stopping runner still
    // commits what the log acknowledged in time.
    let sends = CancellationToken::new();
    // Each send task, once done, wakes the runner waiting for the oldest batch.
    let sent = Arc::new(Notify::new());
    let mut in_flight: VecDeque<(JoinHandle<bool>, Batch)> = VecDeque::new();
    let mut failed_polls = 0u32;
    let mut stopped = false;
    let result = loop {
        // Commit every batch at the front whose outputs are all acknowledged, with one commit
        // (under load, several finish between two looks).
        let mut ready = Vec::new();
        while in_flight
            .front()
            .is_some_and(|(send, _)| send.is_finished())
        {
            ready.push(in_flight.pop_front().expect("checked above"));
        }
        if !ready.is_empty() {
            // A commit that keeps failing gives up when the runner is told to stop.
            match state
                .finish(&mut consumer, &runner, &chain, ready, &cancel)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    stopped = true;
                    break Ok(());
                }
                Err(error) => break Err(fail(error)),
            }
        }
        // With the queue full, or a bounded run read to its ends, wait for the oldest batch
        // (or the order to stop) before reading on.
        let read_to_ends = state.remaining.as_ref().is_some_and(BTreeMap::is_empty);
        if in_flight.len() >= BATCHES_IN_FLIGHT || (read_to_ends && !in_flight.is_empty()) {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Ok(()),
                _ = oldest_sent(&in_flight, &sent) => continue,
            }
        }
        if read_to_ends {
            break Ok(());
        }
        // With batches in flight, look again soon to commit the ones acknowledged meanwhile.
        let wait = if in_flight.is_empty() { 200 } else { 5 };
        let records = tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(()),
            polled = consumer.poll(runner.batch_size, Duration::from_millis(wait)) => match polled {
                Ok(records) => records,
                Err(error) => {
                    // Transient broker trouble must not take the process down: back off, retry.
                    tracing::warn!(stage = runner.name, %error, "poll failed; retrying");
                    if !sluice_core::log::POLL_BACKOFF.wait(failed_polls, &cancel).await {
                        break Ok(());
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
        let (batch, emissions) = state.process(&chain, &runner, records, consumer.generation());
        let (log, name, ack_timeout, sends, sent) = (
            log.clone(),
            runner.name.clone(),
            runner.ack_timeout,
            sends.clone(),
            sent.clone(),
        );
        let send = tokio::spawn(async move {
            let acknowledged = send_all(log, name, ack_timeout, emissions, sends).await;
            sent.notify_one();
            acknowledged
        });
        in_flight.push_back((send, batch));
    };
    // Stopping: commit the batches in flight that the log acknowledges in time.
    let unfinished = in_flight.len();
    let mut committed = 0;
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while let Some((send, batch)) = in_flight.pop_front() {
            if result.is_err() || stopped {
                break;
            }
            match state
                .finish(&mut consumer, &runner, &chain, vec![(send, batch)], &sends)
                .await
            {
                Ok(true) => committed += 1,
                Ok(false) | Err(_) => break,
            }
        }
    })
    .await;
    sends.cancel();
    if drained.is_err() || committed < unfinished {
        tracing::warn!(
            stage = runner.name,
            batches = unfinished - committed,
            "stopped with batches not acknowledged or not committed; they will be processed again"
        );
    }
    // Leaving the group now hands the partitions to the other processes at once.
    consumer.close().await;
    tracing::info!(stage = runner.name, records = state.done, "stage stopped");
    result.map(|()| state.done)
}

/// Waits until the oldest batch's send task is done. Every send task notifies `sent` just
/// before it ends; as its handle reads as finished a moment later, a wait woken while the
/// oldest still runs looks again a millisecond later.
async fn oldest_sent(in_flight: &VecDeque<(JoinHandle<bool>, Batch)>, sent: &Notify) {
    let running = || {
        in_flight
            .front()
            .is_some_and(|(send, _)| !send.is_finished())
    };
    while running() {
        sent.notified().await;
        if running() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A batch read and processed, whose outputs are being sent.
struct Batch {
    /// The input positions to commit once its outputs are acknowledged.
    positions: Vec<Position>,
    /// Input records it took.
    taken: u64,
    /// When it was read.
    started: Instant,
    /// Per stage of the chain: what it did with the batch, counted once acknowledged.
    counts: Vec<StageCounts>,
    /// Each record's hop per stage, for the spans exported once acknowledged (only when
    /// spans are exported).
    spans: Vec<(usize, Hop, Option<String>)>,
    /// When processing began, for the spans.
    started_unix_nanos: Option<u64>,
    /// The consumer's generation when the batch was read: a partition given to the consumer
    /// again since then (taken away and given back while the batch was in flight) is read
    /// again from its committed position, so the batch's position there is not committed.
    generation: u64,
}

/// What one stage of a chain did with one batch.
#[derive(Debug, Clone, Copy, Default)]
struct StageCounts {
    records_in: u64,
    emitted: u64,
    dead_lettered: u64,
}

/// A record to send: its topic and the record.
type Emission = (Arc<str>, OutRecord);

/// What a runner keeps across batches.
struct RunState {
    /// Per stage of the chain.
    metrics: Vec<StageMetrics>,
    /// For a bounded run, the partitions not yet at their end.
    remaining: Option<BTreeMap<i32, i64>>,
    /// Input records done (committed).
    done: u64,
    progress: Option<Progress>,
}

impl RunState {
    /// Runs `records` through the chain: the batch, and the records to send for it.
    fn process(
        &mut self,
        chain: &Chain,
        runner: &StageRunner,
        records: Vec<sluice_core::log::Record>,
        generation: u64,
    ) -> (Batch, Vec<Emission>) {
        let exporter = trace::exporter();
        let mut batch = Batch {
            positions: Vec::new(),
            taken: 0,
            started: Instant::now(),
            counts: vec![StageCounts::default(); chain.links().len()],
            spans: Vec::new(),
            started_unix_nanos: exporter.map(|_| trace::now_unix_nanos()),
            generation,
        };
        let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut emissions = Vec::with_capacity(records.len());
        for record in records {
            if let Some(ends) = &mut self.remaining {
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
            batch.taken += 1;
            next_offsets.insert(record.partition, record.offset + 1);
            let source = Source {
                topic: &runner.input,
                partition: record.partition,
                offset: record.offset,
            };
            let mut parent = TraceParent::of_record(&record);
            let mut item = Item::from(record);
            for (index, link) in chain.links().iter().enumerate() {
                batch.counts[index].records_in += 1;
                // This stage's hop of the record's trace (a record without one starts a
                // trace): what it writes, dead letters included, carries the hop's
                // `traceparent`.
                let hop = Hop::after(parent);
                parent = Some(hop.traceparent());
                if exporter.is_some() {
                    batch.spans.push((index, hop, item.order_id()));
                }
                let stage = link.config.name.as_str();
                match link.stage.process(&mut item) {
                    Outcome::Forward(topic) => {
                        tracing::debug!(
                            stage, trace.id = %hop.trace_id, span.id = %hop.span_id,
                            order_id = item.order_id().as_deref(), topic = &*topic,
                            partition = source.partition, offset = source.offset,
                            "record processed"
                        );
                        batch.counts[index].emitted += 1;
                        if link.handoff.as_deref() == Some(&*topic) {
                            if link.config.write_output {
                                emissions.push((topic, traced(item.to_out_record(), &hop)));
                            }
                            continue;
                        }
                        emissions.push((topic, traced(item.into_out_record(), &hop)));
                        break;
                    }
                    Outcome::DeadLetter(reason) => {
                        tracing::debug!(
                            stage, trace.id = %hop.trace_id, span.id = %hop.span_id,
                            order_id = item.order_id().as_deref(), reason,
                            partition = source.partition, offset = source.offset,
                            "dead-lettering record"
                        );
                        batch.counts[index].dead_lettered += 1;
                        let out = dead_letter(stage, item, source, &reason);
                        emissions.push((link.dead_letter.clone(), traced(out, &hop)));
                        break;
                    }
                }
            }
        }
        // Counted as read now, once per stage and batch rather than per record.
        for (metrics, counts) in self.metrics.iter().zip(&batch.counts) {
            metrics.records_in.increment(counts.records_in);
        }
        batch.positions = next_offsets
            .into_iter()
            .map(|(partition, next_offset)| Position {
                topic: runner.input.clone(),
                partition,
                next_offset,
            })
            .collect();
        (batch, emissions)
    }

    /// Waits for the outputs of `batches` (in the order they were read) and commits the
    /// input positions of those acknowledged, with one commit. `Ok(false)` when the runner
    /// must stop (a batch's sends were cancelled, or so was the commit).
    async fn finish(
        &mut self,
        consumer: &mut LogConsumer,
        runner: &StageRunner,
        chain: &Chain,
        batches: Vec<(JoinHandle<bool>, Batch)>,
        cancel: &CancellationToken,
    ) -> Result<bool, LogError> {
        let mut acknowledged = Vec::with_capacity(batches.len());
        let mut go_on = true;
        for (send, batch) in batches {
            let sent = send.await.map_err(|error| {
                LogError::backend("the task sending a batch's outputs failed", error)
            })?;
            if !sent {
                tracing::warn!(
                    stage = runner.name,
                    "stopped before the outputs were acknowledged; the batch will be processed again"
                );
                go_on = false;
                break;
            }
            acknowledged.push(batch);
        }
        if acknowledged.is_empty() {
            return Ok(go_on);
        }
        if let Some(exporter) = trace::exporter() {
            let end = trace::now_unix_nanos();
            for batch in &mut acknowledged {
                let Some(start) = batch.started_unix_nanos else {
                    continue;
                };
                for (index, hop, order_id) in std::mem::take(&mut batch.spans) {
                    let name = &chain.links()[index].config.name;
                    let mut attributes = vec![("sluice.stage", name.clone())];
                    attributes.extend(order_id.map(|id| ("sluice.order_id", id)));
                    exporter.export(FinishedSpan {
                        hop,
                        name: format!("stage {name}"),
                        kind: SpanKind::Consumer,
                        start_unix_nanos: start,
                        end_unix_nanos: end,
                        attributes,
                    });
                }
            }
        }
        // A later batch's position in a partition is past an earlier one's.
        let mut positions: BTreeMap<i32, Position> = BTreeMap::new();
        for batch in &acknowledged {
            for position in &batch.positions {
                if consumer.given_since(&position.topic, position.partition, batch.generation) {
                    tracing::debug!(
                        stage = runner.name,
                        partition = position.partition,
                        "the partition was given back while the batch was in flight; not committing its position"
                    );
                    positions.remove(&position.partition);
                } else {
                    positions.insert(position.partition, position.clone());
                }
            }
        }
        let positions: Vec<Position> = positions.into_values().collect();
        match commit_with_retry(consumer, &runner.name, &positions, cancel).await? {
            Committed::Yes => {}
            // The batches were processed and their outputs are acknowledged: they count as
            // done.
            Committed::Rebalanced => tracing::warn!(
                stage = runner.name,
                "the consumer group rebalanced before the batch was committed; the partitions' owners read it again"
            ),
            Committed::Cancelled => {
                tracing::warn!(
                    stage = runner.name,
                    "stopped before the batch was committed; it will be processed again"
                );
                return Ok(false);
            }
        }
        if let Some(ends) = &mut self.remaining {
            for p in &positions {
                if ends
                    .get(&p.partition)
                    .is_some_and(|&end| p.next_offset >= end)
                {
                    ends.remove(&p.partition);
                }
            }
        }
        for batch in &acknowledged {
            self.done += batch.taken;
            let seconds = batch.started.elapsed().as_secs_f64();
            for (metrics, counts) in self.metrics.iter().zip(&batch.counts) {
                metrics.emitted.increment(counts.emitted);
                metrics.dead_lettered.increment(counts.dead_lettered);
                if counts.records_in > 0 {
                    metrics.batch_duration.record(seconds);
                    metrics.batch_records.record(counts.records_in as f64);
                }
            }
        }
        if let Some(progress) = &self.progress {
            progress(self.done);
        }
        Ok(go_on)
    }
}

/// `record` with `hop`'s `traceparent` header (replacing the one copied from its input).
fn traced(mut record: OutRecord, hop: &Hop) -> OutRecord {
    let value = hop.traceparent().header().into_bytes();
    match record
        .headers
        .iter_mut()
        .find(|(name, _)| name == HEADER_TRACEPARENT)
    {
        Some((_, old)) => *old = value,
        None => record.headers.push((HEADER_TRACEPARENT.into(), value)),
    }
    record
}

/// The trace id in `record`'s `traceparent` header, if it has a valid one.
fn trace_id_of(record: &OutRecord) -> Option<String> {
    record
        .header(HEADER_TRACEPARENT)
        .and_then(TraceParent::parse)
        .map(|parent| parent.trace_id.to_string())
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
    log: Arc<dyn Log>,
    runner: String,
    ack_timeout: Duration,
    pending: Vec<Emission>,
    cancel: CancellationToken,
) -> bool {
    let (log, runner) = (log.as_ref(), runner.as_str());
    Retry::new(Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(5),
    ))
    .cancel_on(&cancel)
    .run_with(
        pending,
        |mut pending| async move {
            let sent = send_pending(log, runner, ack_timeout, &mut pending).await;
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
    runner: &str,
    ack_timeout: Duration,
    pending: &mut Vec<Emission>,
) -> Result<(), usize> {
    let results = join_all(
        pending
            .iter()
            .map(|(topic, record)| log.send(topic, record.clone(), ack_timeout)),
    )
    .await;
    let mut failed = Vec::new();
    for ((topic, record), result) in std::mem::take(pending).into_iter().zip(results) {
        if let Err(error) = result {
            tracing::warn!(
                stage = runner, topic = &*topic, %error,
                trace.id = trace_id_of(&record).as_deref(),
                order_id = order_id_of(&record.payload).as_deref(),
                "send failed; will retry"
            );
            failed.push((topic, record));
        }
    }
    *pending = failed;
    match pending.len() {
        0 => Ok(()),
        unsent => Err(unsent),
    }
}
