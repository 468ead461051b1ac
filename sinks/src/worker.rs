//! The sink worker of one shard: read, batch, write rows and positions together.
//!
//! A shard has two live workers, each in a consumer group of its own that every sink process
//! joins: one reads the shard's topic (`<prefix>.sink.<shard>.sink`), the other the
//! dead-letter topic for the shard's users (`….sink.rejections`). Each partition a worker is
//! given is claimed in the shard ([`crate::claims`]), and every batch is written with the
//! epochs it was read under, so only a partition's current owner can store its position (a
//! stale owner's rows, idempotent by order id, can at most be written again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::log::{Assignment, Log, LogConsumer, Position, Record, StartFrom, TopicPartition};
use sluice_core::order::{
    from_json, now_ms, EnrichedOrder, HEADER_DLQ_REASON, HEADER_DLQ_STAGE, HEADER_ORDER_ID,
};
use sluice_core::retry::{Backoff, GaveUp, Retry, Verdict};
use sluice_core::sharding::ShardMap;
use sluice_core::telemetry;
use sluice_core::topology::ShardConfig;
use sluice_core::trace::{self, FinishedSpan, Hop, SpanKind, TraceParent};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::claims::{Epochs, ShardClaims};
use crate::config::SinkConfig;
use crate::writer::{Batch, Fault, Rejection, ShardWriter, SinkError};

/// Settings of one shard's worker.
#[derive(Clone)]
pub struct SinkWorker {
    /// Shard name.
    pub shard: String,
    /// Index of the shard in the topology (to filter rejections by bucket).
    pub shard_index: usize,
    /// The topic of enriched orders to store (normally the shard's own topic; a replay may
    /// read any topic of enriched orders, keeping only this shard's users).
    pub topic: String,
    /// The dead-letter topic whose records this shard stores for its own users.
    pub rejections_topic: Option<String>,
    /// Name under which positions are stored in the shard (`"sink"` for the live worker).
    pub consumer: String,
    /// `[log] consumer_group_prefix`: the worker's consumer group on the log is
    /// [`SinkWorker::group`].
    pub group_prefix: String,
    /// Rows per batch.
    pub max_rows: usize,
    /// Longest wait between a batch's first record and its write.
    pub max_wait: Duration,
    /// Where to start partitions with no stored position.
    pub start: StartFrom,
    /// Start offsets per `(topic, partition)` for partitions with no stored position (replays).
    pub start_offsets: HashMap<(String, i32), i64>,
    /// Stop once every partition reaches these offsets (replay); `None` runs until cancelled,
    /// reading the partitions the shard's consumer group gives this process.
    pub stop_at: Option<HashMap<(String, i32), i64>>,
}

impl SinkWorker {
    /// The live workers of `shard`, the `index`-th of `[[shards]]`: one stores the shard's
    /// own topic, the other (when `[sink] rejections_topic` is set) its users' rejections.
    /// Each reads in a consumer group of its own, so that sink processes split the orders
    /// topic's partitions among themselves (one group over both topics would balance the
    /// count of partitions and could leave one process all of the rarely written rejections).
    pub fn live_workers(
        shard: &ShardConfig,
        index: usize,
        sink: &SinkConfig,
        group_prefix: &str,
    ) -> Vec<Self> {
        let both = SinkWorker::live(shard, index, sink, group_prefix);
        let orders = SinkWorker {
            rejections_topic: None,
            ..both.clone()
        };
        let rejections = both
            .rejections_topic
            .clone()
            .map(|topic| SinkWorker { topic, ..both });
        std::iter::once(orders).chain(rejections).collect()
    }

    /// Whether this is a live worker (it runs until cancelled, storing under `"sink"`), not a
    /// replay: only live workers record `sluice_order_freshness_seconds`, since a replay
    /// stores old orders on purpose.
    pub fn is_live(&self) -> bool {
        self.stop_at.is_none() && self.consumer == "sink"
    }

    /// The consumer group the worker reads in: `<prefix>.sink.<shard>.<consumer>`, and for
    /// a worker that reads only the rejections topic, `….rejections` after it.
    pub fn group(&self) -> String {
        let group = format!(
            "{}.sink.{}.{}",
            self.group_prefix, self.shard, self.consumer
        );
        if self.rejections_topic.as_deref() == Some(self.topic.as_str()) {
            format!("{group}.rejections")
        } else {
            group
        }
    }

    /// The live worker of `shard`, the `index`-th of `[[shards]]`: it stores the shard's own
    /// topic and its users' rejections, under the positions named `"sink"`, in batches set by
    /// `[sink]`, and reads partitions with no stored position from the beginning.
    pub fn live(shard: &ShardConfig, index: usize, sink: &SinkConfig, group_prefix: &str) -> Self {
        SinkWorker {
            shard: shard.name.clone(),
            shard_index: index,
            topic: shard.topic.clone(),
            rejections_topic: sink.rejections_topic.clone(),
            consumer: "sink".into(),
            group_prefix: group_prefix.to_string(),
            max_rows: sink.max_rows,
            max_wait: Duration::from_millis(sink.max_wait_ms),
            start: StartFrom::Beginning,
            start_offsets: HashMap::new(),
            stop_at: None,
        }
    }
}

/// The sink's hop of each order's trace in a batch, by order id.
type Traces = HashMap<Uuid, Hop>;

/// The trace context each row of a batch arrived with (`None`: it came with none), in the
/// order of the batch's orders and of its rejections. Reading a record only keeps its
/// context; the sink's hops (a new span id each, in a map by order id) are made from it once
/// a batch is written and something uses them: spans exported or logged at DEBUG, or a
/// refused row's warning.
#[derive(Default)]
struct Incoming {
    /// One per order of the batch.
    orders: Vec<Option<TraceParent>>,
    /// One per rejection of the batch.
    rejections: Vec<Option<TraceParent>>,
}

impl Incoming {
    /// The sink's hop of each row of `batch` (whose rows these contexts came with): it
    /// continues the incoming trace, or starts one for a row that came with none. Each call
    /// makes new span ids: a batch written again after it was fenced (some of its rows may
    /// already be stored, see [`store_around_refusals`]) logs its rows under new spans.
    fn hops(&self, batch: &Batch) -> Traces {
        debug_assert_eq!(self.orders.len(), batch.orders.len());
        debug_assert_eq!(self.rejections.len(), batch.rejections.len());
        let orders = batch.orders.iter().map(|order| order.order_id);
        let rejections = batch.rejections.iter().map(|rejection| rejection.order_id);
        orders
            .zip(&self.orders)
            .chain(rejections.zip(&self.rejections))
            .map(|(order_id, parent)| (order_id, Hop::after(*parent)))
            .collect()
    }
}

/// Whether stored rows' spans are used: exported, or logged at DEBUG.
fn spans_wanted() -> bool {
    trace::exporter().is_some() || tracing::enabled!(tracing::Level::DEBUG)
}

/// Turns a record into a row for this shard, or nothing: a record of another shard's user
/// (so a shard can be rebuilt from a topic that holds every shard's orders, such as the
/// enriched topic), or a record that cannot be read, which is logged and skipped. A row's
/// trace context goes into `incoming`.
fn classify(
    worker: &SinkWorker,
    map: &ShardMap,
    record: &Record,
    batch: &mut Batch,
    incoming: &mut Incoming,
) {
    if worker.rejections_topic.as_deref() != Some(record.topic.as_str()) {
        match from_json::<EnrichedOrder>(&record.payload) {
            Ok(order) if map.shard_for_user(&order.user_id) == worker.shard_index => {
                incoming.orders.push(TraceParent::of_record(record));
                batch.orders.push(order)
            }
            Ok(_) => {}
            Err(error) => tracing::error!(
                shard = worker.shard, topic = record.topic, partition = record.partition, offset = record.offset, %error,
                trace.id = TraceParent::of_record(record).map(|parent| tracing::field::display(parent.trace_id)),
                "skipping a record that is not an enriched order"
            ),
        }
        return;
    }
    let user_id = record.key_str();
    if map.shard_for_user(&user_id) != worker.shard_index {
        return;
    }
    let Some(order_id) = record
        .header(HEADER_ORDER_ID)
        .and_then(|id| Uuid::parse_str(id).ok())
    else {
        tracing::warn!(
            shard = worker.shard,
            offset = record.offset,
            trace.id = TraceParent::of_record(record)
                .map(|parent| tracing::field::display(parent.trace_id)),
            "dead letter without an order id; not recorded"
        );
        return;
    };
    incoming.rejections.push(TraceParent::of_record(record));
    batch.rejections.push(Rejection {
        order_id,
        user_id,
        stage: record
            .header(HEADER_DLQ_STAGE)
            .unwrap_or("unknown")
            .to_string(),
        reason: record
            .header(HEADER_DLQ_REASON)
            .unwrap_or("unknown")
            .to_string(),
        rejected_at_ms: now_ms(),
    });
}

/// Runs the worker until `cancel` fires (finishing and committing the batch in hand), or
/// until `stop_at` is reached. Returns the number of records consumed.
pub async fn run_sink_worker(
    log: Arc<dyn Log>,
    writer: Arc<dyn ShardWriter>,
    map: ShardMap,
    worker: SinkWorker,
    cancel: CancellationToken,
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
) -> Result<u64, SinkError> {
    let log_error = |source| SinkError::Log {
        shard: worker.shard.clone(),
        source,
    };
    writer.migrate().await?;
    let mut topics = vec![worker.topic.clone()];
    topics.extend(worker.rejections_topic.clone());
    topics.dedup();
    let epochs = Epochs::default();
    let claims = ShardClaims {
        shard: worker.shard.clone(),
        writer: writer.clone(),
        consumer: worker.consumer.clone(),
        start: worker.start,
        start_offsets: worker.start_offsets.clone(),
        epochs: epochs.clone(),
    };
    let mut consumer = log.consumer(&worker.group()).await.map_err(log_error)?;
    // Rows reaching the shard in key order (order ids grow with time) cost InnoDB half the
    // page splits of rows that come a partition's run at a time.
    consumer.read_in_time_order();
    let mut remaining = worker.stop_at.clone();
    match &mut remaining {
        None => {
            consumer
                .subscribe(&topics, Box::new(claims))
                .await
                .map_err(log_error)?;
            tracing::info!(shard = worker.shard, topics = ?topics, "sink worker started in its consumer group");
        }
        Some(ends) => {
            // A bounded replay reads every partition it still has to cover.
            let mut partitions = Vec::new();
            for topic in &topics {
                let count = log.partition_count(topic).await.map_err(log_error)? as i32;
                partitions.extend((0..count).map(|partition| TopicPartition {
                    topic: topic.clone(),
                    partition,
                }));
            }
            let claimed = claims.claim_in_shard(&partitions).await?;
            let mut assignments = Vec::new();
            for (claim, start) in claimed {
                let key = (claim.partition.topic.clone(), claim.partition.partition);
                let done = claim
                    .next_offset
                    .is_some_and(|done| ends.get(&key).is_some_and(|&end| done >= end));
                if done {
                    ends.remove(&key);
                }
                if ends.contains_key(&key) {
                    assignments.push(Assignment {
                        topic: key.0,
                        partition: key.1,
                        start,
                    });
                }
            }
            consumer.assign(assignments).await.map_err(log_error)?;
            tracing::info!(shard = worker.shard, topics = ?topics, "sink worker started");
        }
    }

    // The reader assembles the next batch while the writer commits the current one: with a
    // queue of one, reading and writing overlap and at most three batches are in memory. The
    // reader is a task of its own, so that decoding a batch runs beside the writer's round
    // trips instead of holding up its next statement (in one task, the shard sat idle while
    // the reader decoded).
    let (ready, mut queued) = tokio::sync::mpsc::channel::<ReadBatch>(1);
    let read = AbortOnDropHandle::new(tokio::spawn({
        let (worker, epochs, cancel) = (worker.clone(), epochs.clone(), cancel.clone());
        async move {
            read_batches(
                &mut consumer,
                &worker,
                &map,
                &epochs,
                remaining,
                &cancel,
                ready,
            )
            .await;
            consumer
        }
    }));
    let metrics = WriteMetrics::new(&worker.shard, worker.is_live());
    let (writer, worker_ref, cancel_ref, progress) = (&writer, &worker, &cancel, &progress);
    let metrics_ref = &metrics;
    let epochs_ref = &epochs;
    // `move`: the queue's receiver belongs to `write`, so a failed write drops it, which
    // fails the reader's pending send and stops the reader.
    let write = async move {
        let mut done = 0u64;
        while let Some(read) = queued.recv().await {
            let consumed = read.consumed;
            write_owned(
                writer.as_ref(),
                worker_ref,
                epochs_ref,
                read,
                cancel_ref,
                metrics_ref,
            )
            .await?;
            done += consumed as u64;
            if let Some(progress) = progress {
                progress(done);
            }
        }
        Ok::<u64, SinkError>(done)
    };
    // A failed write drops the queue, which stops the reader.
    let done = write.await;
    match read.await {
        // Leaving the group now hands the partitions to the other sink processes at once.
        Ok(consumer) => consumer.close().await,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => {} // the runtime is shutting down
    }
    let done = done?;
    tracing::info!(shard = worker.shard, records = done, "sink worker stopped");
    Ok(done)
}

/// A batch ready to write, with the number of records it consumed (records of other shards'
/// users and unreadable records count as consumed: their positions are stored too).
struct ReadBatch {
    batch: Batch,
    consumed: usize,
    /// For each order of the batch, the index in `batch.positions` of its partition.
    order_partitions: Vec<usize>,
    /// For each rejection of the batch, the index in `batch.positions` of its partition.
    rejection_partitions: Vec<usize>,
    /// The trace context each row came with.
    incoming: Incoming,
}

impl ReadBatch {
    /// The batch without the rows and positions of `lost` partitions.
    fn without(self, lost: &[TopicPartition]) -> ReadBatch {
        let keep: Vec<bool> = self
            .batch
            .positions
            .iter()
            .map(|p| {
                !lost
                    .iter()
                    .any(|l| l.partition == p.partition && l.topic == p.topic)
            })
            .collect();
        // New indices of the positions kept.
        let mut renumbered = Vec::with_capacity(keep.len());
        let mut next = 0;
        for &kept in &keep {
            renumbered.push(next);
            next += usize::from(kept);
        }
        let mut out = ReadBatch {
            batch: Batch::default(),
            consumed: self.consumed,
            order_partitions: Vec::new(),
            rejection_partitions: Vec::new(),
            incoming: Incoming::default(),
        };
        let orders = self.batch.orders.into_iter().zip(self.incoming.orders);
        for ((order, parent), index) in orders.zip(self.order_partitions) {
            if keep[index] {
                out.batch.orders.push(order);
                out.incoming.orders.push(parent);
                out.order_partitions.push(renumbered[index]);
            }
        }
        let rejections = self
            .batch
            .rejections
            .into_iter()
            .zip(self.incoming.rejections);
        for ((rejection, parent), index) in rejections.zip(self.rejection_partitions) {
            if keep[index] {
                out.batch.rejections.push(rejection);
                out.incoming.rejections.push(parent);
                out.rejection_partitions.push(renumbered[index]);
            }
        }
        for (position, kept) in self.batch.positions.into_iter().zip(&keep) {
            if *kept {
                out.batch.positions.push(position);
            }
        }
        out.batch.epochs = self
            .batch
            .epochs
            .into_iter()
            .filter(|(p, _)| !lost.contains(p))
            .collect();
        out
    }
}

/// Writes a batch; if another process claimed some of its partitions since they were read
/// ([`SinkError::Fenced`]), drops their rows and positions (the new owner stores them) and
/// writes the rest.
async fn write_owned(
    writer: &dyn ShardWriter,
    worker: &SinkWorker,
    epochs: &Epochs,
    mut read: ReadBatch,
    cancel: &CancellationToken,
    metrics: &WriteMetrics,
) -> Result<(), SinkError> {
    loop {
        match write_with_retry(writer, worker, &read.batch, &read.incoming, cancel, metrics).await {
            Err(SinkError::Fenced { partitions, .. }) => {
                metrics.fenced.increment(1);
                epochs.stale_if_current(&partitions, &read.batch.epochs);
                let rows = read.batch.orders.len() + read.batch.rejections.len();
                read = read.without(&partitions);
                tracing::warn!(
                    shard = worker.shard,
                    partitions = %TopicPartition::list(&partitions),
                    dropped_rows = rows - read.batch.orders.len() - read.batch.rejections.len(),
                    "another sink process owns these partitions now; dropped their rows from this batch (the new owner stores them)"
                );
                if read.batch.is_empty() {
                    return Ok(());
                }
            }
            other => {
                if other.is_ok() {
                    metrics.stored(&read.batch.orders);
                }
                return other;
            }
        }
    }
}

/// Reads records into batches of at most `max_rows`, closed `max_wait` after their first
/// record, and queues them for the writer, until `cancel` fires (the batch in hand is still
/// queued), every `remaining` partition reaches its end, or the writer stops.
async fn read_batches(
    consumer: &mut LogConsumer,
    worker: &SinkWorker,
    map: &ShardMap,
    epochs: &Epochs,
    mut remaining: Option<HashMap<(String, i32), i64>>,
    cancel: &CancellationToken,
    ready: tokio::sync::mpsc::Sender<ReadBatch>,
) {
    let mut failed_polls = 0u32;
    // Records polled for the next batch (the current one had to close first).
    let mut carried: Vec<Record> = Vec::new();
    'run: loop {
        if remaining.as_ref().is_some_and(HashMap::is_empty) {
            break;
        }
        let mut batch = Batch::default();
        // The batch's partitions, in the order they came, with the next offset of each, and
        // the epoch each was claimed under when its first record came.
        let mut positions: Vec<Position> = Vec::new();
        let mut claimed_under: Vec<(TopicPartition, i64)> = Vec::new();
        let mut order_partitions = Vec::new();
        let mut rejection_partitions = Vec::new();
        let mut incoming = Incoming::default();
        let mut consumed = 0usize;
        let mut deadline: Option<Instant> = None;
        while consumed < worker.max_rows {
            let wait = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(200),
            };
            if deadline.is_some() && wait.is_zero() {
                break;
            }
            let stale = epochs.take_stale();
            if !stale.is_empty() {
                consumer.reclaim(&stale);
            }
            let records = if !carried.is_empty() {
                std::mem::take(&mut carried)
            } else {
                tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    if consumed == 0 { break 'run; }
                    break;
                }
                _ = ready.closed() => break 'run,
                polled = consumer.poll(worker.max_rows - consumed, wait) => match polled {
                    Ok(records) => records,
                    Err(error) => {
                        // Transient broker trouble must not take the process down. A
                        // cancellation during the pause is handled by the `select!` above.
                        tracing::warn!(shard = worker.shard, %error, "poll failed; retrying");
                        sluice_core::log::POLL_BACKOFF.wait(failed_polls, cancel).await;
                        failed_polls = failed_polls.saturating_add(1);
                        continue;
                    }
                },
                }
            };
            failed_polls = 0;
            if records.is_empty() {
                continue; // nothing yet; the deadline (if a batch has started) ends the wait
            }
            // A partition of this batch claimed again since its first record (taken away and
            // given back within the batch): the batch closes with the epoch it was read under
            // (so it is fenced for that partition), and these records start the next one.
            if claimed_under
                .iter()
                .any(|(partition, epoch)| epochs.of(partition) != *epoch)
            {
                carried = records;
                break;
            }
            deadline.get_or_insert_with(|| Instant::now() + worker.max_wait);
            for record in &records {
                if let Some(ends) = &mut remaining {
                    let key = (record.topic.clone(), record.partition);
                    match ends.get(&key) {
                        Some(&end) if record.offset < end => {}
                        Some(_) => {
                            // At or past its end (records below it may have been removed by
                            // retention): this partition is done.
                            ends.remove(&key);
                            continue;
                        }
                        None => continue,
                    }
                }
                let index = match positions
                    .iter()
                    .position(|p| p.partition == record.partition && p.topic == record.topic)
                {
                    Some(index) => index,
                    None => {
                        let partition = TopicPartition {
                            topic: record.topic.clone(),
                            partition: record.partition,
                        };
                        let epoch = epochs.of(&partition);
                        positions.push(Position {
                            topic: partition.topic.clone(),
                            partition: partition.partition,
                            next_offset: record.offset,
                        });
                        claimed_under.push((partition, epoch));
                        positions.len() - 1
                    }
                };
                positions[index].next_offset = record.offset + 1;
                classify(worker, map, record, &mut batch, &mut incoming);
                order_partitions.resize(batch.orders.len(), index);
                rejection_partitions.resize(batch.rejections.len(), index);
                consumed += 1;
            }
        }
        if positions.is_empty() {
            continue;
        }
        if let Some(ends) = &mut remaining {
            for p in &positions {
                let key = (p.topic.clone(), p.partition);
                if ends.get(&key).is_some_and(|&end| p.next_offset >= end) {
                    ends.remove(&key);
                }
            }
        }
        batch.epochs = claimed_under;
        batch.positions = positions;
        let read = ReadBatch {
            batch,
            consumed,
            order_partitions,
            rejection_partitions,
            incoming,
        };
        if ready.send(read).await.is_err() {
            break; // the writer failed; it reports why
        }
    }
}

/// Longest time one batch write may take before it counts as failed (and is retried).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest reason stored with a row the shard refused (the database's message).
const MAX_REASON_CHARS: usize = 1000;

/// The metric handles of one shard's worker, registered once.
struct WriteMetrics {
    /// Failed writes that were retried.
    retries: metrics::Counter,
    /// Orders the shard refused for good and that were recorded as rejected.
    refused: metrics::Counter,
    /// Batches refused because another sink process claimed one of their partitions.
    fenced: metrics::Counter,
    /// Seconds from the ingress receiving an order to its batch being stored (live workers
    /// only: see [`SinkWorker::is_live`]).
    freshness: Option<metrics::Histogram>,
}

impl WriteMetrics {
    /// The handles of `shard`'s worker; `live`: it records freshness.
    fn new(shard: &str, live: bool) -> Self {
        WriteMetrics {
            retries: metrics::counter!(telemetry::SINK_RETRIES, "shard" => shard.to_string()),
            refused: metrics::counter!(telemetry::SINK_ROWS_REFUSED, "shard" => shard.to_string()),
            fenced: metrics::counter!(telemetry::SINK_BATCHES_FENCED, "shard" => shard.to_string()),
            freshness: live.then(
                || metrics::histogram!(telemetry::ORDER_FRESHNESS, "shard" => shard.to_string()),
            ),
        }
        .with_commit_metrics(shard)
    }

    /// Registers the shard's commit metrics too, so they have series from start-up.
    fn with_commit_metrics(self, shard: &str) -> Self {
        crate::writer::commit_metrics(shard);
        self
    }

    /// Records the freshness of `orders`, which were just stored (a live worker's).
    fn stored(&self, orders: &[EnrichedOrder]) {
        let Some(freshness) = &self.freshness else {
            return;
        };
        let now = now_ms();
        for order in orders {
            let age_ms = (now - order.received_at_ms).max(0);
            freshness.record(age_ms as f64 / 1000.0);
        }
    }
}

/// Writes the batch, rows and positions in one transaction, retrying transient failures
/// with backoff. If the shard refuses some rows for good ([`Fault::Permanent`]), the batch is
/// split to find them ([`store_around_refusals`]): they are recorded as rejected and the rest
/// is stored, so one bad row never stalls the shard.
async fn write_with_retry(
    writer: &dyn ShardWriter,
    worker: &SinkWorker,
    batch: &Batch,
    incoming: &Incoming,
    cancel: &CancellationToken,
    metrics: &WriteMetrics,
) -> Result<(), SinkError> {
    let started = trace::exporter().map(|_| trace::now_unix_nanos());
    match write_retrying(writer, worker, batch, cancel, metrics).await {
        Ok(()) => {
            if spans_wanted() {
                stored(worker, batch, &incoming.hops(batch), started);
            }
            Ok(())
        }
        Err(error) if error.fault() == Fault::Permanent => {
            tracing::warn!(
                shard = worker.shard, %error, rows = batch.orders.len() + batch.rejections.len(),
                "the shard refused a row of the batch for good; splitting the batch to find it"
            );
            let traces = incoming.hops(batch);
            store_around_refusals(writer, worker, batch, &traces, cancel, metrics).await
        }
        other => other,
    }
}

/// Logs (at DEBUG) and exports the span of each row of `batch`, now stored; `started` is
/// when the store began (set when spans are exported).
fn stored(worker: &SinkWorker, batch: &Batch, traces: &Traces, started: Option<u64>) {
    if !spans_wanted() {
        return;
    }
    let exporter = trace::exporter();
    let end = trace::now_unix_nanos();
    let rows = batch
        .orders
        .iter()
        .map(|order| (order.order_id, "order stored"))
        .chain(
            batch
                .rejections
                .iter()
                .map(|rejection| (rejection.order_id, "rejection recorded")),
        );
    for (order_id, what) in rows {
        let hop = traces.get(&order_id);
        tracing::debug!(
            shard = worker.shard, order_id = %order_id,
            trace.id = hop.map(|hop| tracing::field::display(hop.trace_id)),
            span.id = hop.map(|hop| tracing::field::display(hop.span_id)),
            "{what}"
        );
        if let (Some(exporter), Some(hop), Some(start)) = (exporter, hop, started) {
            exporter.export(FinishedSpan {
                hop: *hop,
                name: "sink store".into(),
                kind: SpanKind::Consumer,
                start_unix_nanos: start,
                end_unix_nanos: end,
                attributes: vec![
                    ("sluice.shard", worker.shard.clone()),
                    ("sluice.order_id", order_id.to_string()),
                    ("sluice.outcome", what.into()),
                ],
            });
        }
    }
}

/// Writes `batch` until it is stored, it fails with a [`Fault::Permanent`] error (returned at
/// once), or the worker is cancelled and a few more attempts failed too. While draining
/// (cancelled) it retries only briefly: the positions were not stored, so nothing is lost.
async fn write_retrying(
    writer: &dyn ShardWriter,
    worker: &SinkWorker,
    batch: &Batch,
    cancel: &CancellationToken,
    metrics: &WriteMetrics,
) -> Result<(), SinkError> {
    Retry::new(Backoff::new(Duration::from_millis(100), Duration::from_secs(5)))
        .cancel_on(cancel)
        // While draining, retry briefly: a shutdown should not wait on a broken shard.
        .drain(3, Duration::from_millis(200))
        .run(
            || write_once(writer, worker, batch),
            |error| match error {
                // Another process owns a partition now: retrying cannot succeed.
                SinkError::Fenced { .. } => Verdict::Stop,
                error if error.fault() == Fault::Permanent => Verdict::Stop,
                _ => Verdict::Retry,
            },
            |error, next| {
                metrics.retries.increment(1);
                let pause = next.pause;
                if error.fault() == Fault::Transient {
                    tracing::warn!(shard = worker.shard, %error, retry_in = ?pause, "batch write failed; retrying");
                } else {
                    tracing::error!(
                        shard = worker.shard, %error, retry_in = ?pause,
                        "batch write failed for a reason that is neither transient nor a refused row; \
                         retrying until it is fixed"
                    );
                }
            },
        )
        .await
        .map_err(GaveUp::into_error)
}

/// One attempt at writing `batch`, failing with [`SinkError::Timeout`] after [`WRITE_TIMEOUT`].
async fn write_once(
    writer: &dyn ShardWriter,
    worker: &SinkWorker,
    batch: &Batch,
) -> Result<(), SinkError> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_batch(&worker.consumer, batch)).await {
        Ok(written) => written,
        Err(_) => Err(SinkError::Timeout {
            shard: worker.shard.clone(),
            after: WRITE_TIMEOUT,
        }),
    }
}

/// One row of a batch being split.
#[derive(Clone, Copy)]
enum Row<'a> {
    Order(&'a EnrichedOrder),
    Rejection(&'a Rejection),
}

/// A batch of `rows` without positions.
fn rows_batch(rows: &[Row<'_>]) -> Batch {
    let mut batch = Batch::default();
    for row in rows {
        match row {
            Row::Order(order) => batch.orders.push((*order).clone()),
            Row::Rejection(rejection) => batch.rejections.push((*rejection).clone()),
        }
    }
    batch
}

/// Stores a batch the shard refused for good: splits its rows in halves, and halves of the
/// halves that are refused too, until each refused row stands alone; every piece that is
/// accepted is stored (without positions) as it is found. Then one last transaction records
/// the refused orders as rejected by stage `sink`, with the database's reason, together
/// with the positions of the whole batch.
///
/// Positions move only in that last transaction, after every good row is stored. A crash
/// before it leaves the positions where they were: the batch is read and split again, and
/// since rows are idempotent by `order_id`, the pieces already stored are written again
/// without effect. Transient errors on the way are retried as for any batch.
async fn store_around_refusals(
    writer: &dyn ShardWriter,
    worker: &SinkWorker,
    batch: &Batch,
    traces: &Traces,
    cancel: &CancellationToken,
    metrics: &WriteMetrics,
) -> Result<(), SinkError> {
    let started = trace::exporter().map(|_| trace::now_unix_nanos());
    let trace_of = |order_id: &Uuid| {
        traces
            .get(order_id)
            .map(|hop| tracing::field::display(hop.trace_id))
    };
    let span_of = |order_id: &Uuid| {
        traces
            .get(order_id)
            .map(|hop| tracing::field::display(hop.span_id))
    };
    let rows: Vec<Row<'_>> = batch
        .orders
        .iter()
        .map(Row::Order)
        .chain(batch.rejections.iter().map(Row::Rejection))
        .collect();
    // A stack of pieces still to write, the next one on top.
    let mut pieces: Vec<&[Row<'_>]> = Vec::new();
    let (first, second) = rows.split_at(rows.len() / 2);
    pieces.extend([second, first].into_iter().filter(|p| !p.is_empty()));
    let mut refused: Vec<Rejection> = Vec::new();
    while let Some(piece) = pieces.pop() {
        let piece_batch = rows_batch(piece);
        let error = match write_retrying(writer, worker, &piece_batch, cancel, metrics).await {
            Ok(()) => {
                stored(worker, &piece_batch, traces, started);
                continue;
            }
            Err(error) if error.fault() == Fault::Permanent => error,
            Err(error) => return Err(error),
        };
        match piece {
            [Row::Order(order)] => {
                let reason = truncate(&error.refusal_reason(), MAX_REASON_CHARS);
                tracing::warn!(
                    shard = worker.shard, order_id = %order.order_id, user_id = order.user_id, reason,
                    trace.id = trace_of(&order.order_id), span.id = span_of(&order.order_id),
                    "the shard refused an order for good; recording it as rejected"
                );
                refused.push(Rejection {
                    order_id: order.order_id,
                    user_id: order.user_id.clone(),
                    stage: "sink".into(),
                    reason,
                    rejected_at_ms: now_ms(),
                });
            }
            [Row::Rejection(rejection)] => tracing::error!(
                shard = worker.shard, order_id = %rejection.order_id, stage = rejection.stage, %error,
                trace.id = trace_of(&rejection.order_id), span.id = span_of(&rejection.order_id),
                "the shard refused to record a dead-lettered order's rejection; skipping the record"
            ),
            _ => {
                let (first, second) = piece.split_at(piece.len() / 2);
                pieces.extend([second, first]);
            }
        }
    }
    let closing = Batch {
        orders: Vec::new(),
        rejections: refused,
        positions: batch.positions.clone(),
        epochs: batch.epochs.clone(),
    };
    match write_retrying(writer, worker, &closing, cancel, metrics).await {
        Ok(()) => {
            metrics.refused.increment(closing.rejections.len() as u64);
            stored(worker, &closing, traces, started);
            return Ok(());
        }
        Err(error) if error.fault() == Fault::Permanent => {
            tracing::error!(shard = worker.shard, %error, "the shard refused a rejection record; recording them one by one");
        }
        Err(error) => return Err(error),
    }
    // Some rejection record is refused itself (say, a user id longer than the shard stores):
    // record each one that the shard takes, then the positions.
    for rejection in &closing.rejections {
        let single = Batch {
            rejections: vec![rejection.clone()],
            ..Batch::default()
        };
        match write_retrying(writer, worker, &single, cancel, metrics).await {
            Ok(()) => metrics.refused.increment(1),
            Err(error) if error.fault() == Fault::Permanent => tracing::error!(
                shard = worker.shard, order_id = %rejection.order_id, user_id = rejection.user_id, %error,
                trace.id = trace_of(&rejection.order_id), span.id = span_of(&rejection.order_id),
                "the shard refused an order and its rejection record; the order is neither stored nor recorded"
            ),
            Err(error) => return Err(error),
        }
    }
    let positions = Batch {
        positions: batch.positions.clone(),
        epochs: batch.epochs.clone(),
        ..Batch::default()
    };
    write_retrying(writer, worker, &positions, cancel, metrics).await
}

/// `text` cut to at most `max` characters.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::sharding::BucketRange;

    use super::*;

    #[test]
    fn only_live_workers_record_freshness() {
        let shard = ShardConfig {
            name: "s0".into(),
            url: "sqlite://s0.db".into(),
            buckets: BucketRange { first: 0, last: 15 },
            topic: "orders.s0".into(),
        };
        let workers = SinkWorker::live_workers(&shard, 0, &SinkConfig::default(), "sluice");
        assert!(!workers.is_empty());
        assert!(workers.iter().all(SinkWorker::is_live));
        // A replay into the shard: bounded, under positions of its own.
        let replay = SinkWorker {
            consumer: "replay.fix.0a1b2c3d".into(),
            stop_at: Some(HashMap::new()),
            ..workers[0].clone()
        };
        assert!(!replay.is_live());
        assert!(WriteMetrics::new("s0", false).freshness.is_none());
        assert!(WriteMetrics::new("s0", true).freshness.is_some());
    }

    fn order(user: &str) -> EnrichedOrder {
        EnrichedOrder {
            order_id: Uuid::now_v7(),
            user_id: user.into(),
            product: "widget".into(),
            quantity: 1,
            unit_price_minor: 100,
            line_total_minor: 100,
            currency: "EUR".into(),
            received_at_ms: 1,
            enriched_at_ms: 2,
            bucket: 0,
            shard: "s0".into(),
        }
    }

    fn rejection(user: &str) -> Rejection {
        Rejection {
            order_id: Uuid::now_v7(),
            user_id: user.into(),
            stage: "validate".into(),
            reason: "quantity must be positive".into(),
            rejected_at_ms: 3,
        }
    }

    /// An incoming trace context whose trace and parent span ids are both `n`.
    fn parent(n: u8) -> TraceParent {
        TraceParent::parse(&format!("00-{n:032x}-{n:016x}-01")).unwrap()
    }

    #[test]
    fn each_rows_hop_continues_the_trace_it_came_with_or_starts_one() {
        let batch = Batch {
            orders: vec![order("a"), order("b")],
            rejections: vec![rejection("c")],
            ..Batch::default()
        };
        let incoming = Incoming {
            orders: vec![Some(parent(1)), None],
            rejections: vec![Some(parent(3))],
        };
        let hops = incoming.hops(&batch);
        assert_eq!(hops.len(), 3);
        let first = hops[&batch.orders[0].order_id];
        assert_eq!(first.trace_id, parent(1).trace_id);
        assert_eq!(first.parent_id, Some(parent(1).parent_id));
        assert_ne!(
            first.span_id,
            parent(1).parent_id,
            "the sink's hop is a span of its own"
        );
        let started = hops[&batch.orders[1].order_id];
        assert_eq!(
            started.parent_id, None,
            "a row that came without a trace starts one"
        );
        assert_ne!(started.trace_id, first.trace_id);
        let rejected = hops[&batch.rejections[0].order_id];
        assert_eq!(rejected.trace_id, parent(3).trace_id);
    }

    #[test]
    fn dropping_a_lost_partition_keeps_each_rows_trace_with_its_row() {
        let partition = |n| TopicPartition {
            topic: "orders.s0".into(),
            partition: n,
        };
        let position = |n| Position {
            topic: "orders.s0".into(),
            partition: n,
            next_offset: 10,
        };
        let read = ReadBatch {
            batch: Batch {
                orders: vec![order("a"), order("b"), order("c")],
                rejections: vec![rejection("d"), rejection("e")],
                positions: vec![position(0), position(1)],
                epochs: vec![(partition(0), 1), (partition(1), 1)],
            },
            consumed: 5,
            order_partitions: vec![0, 1, 1],
            rejection_partitions: vec![1, 0],
            incoming: Incoming {
                orders: vec![Some(parent(1)), Some(parent(2)), None],
                rejections: vec![Some(parent(4)), Some(parent(5))],
            },
        };
        let (b, c, d) = (
            read.batch.orders[1].order_id,
            read.batch.orders[2].order_id,
            read.batch.rejections[0].order_id,
        );
        let kept = read.without(&[partition(0)]);
        let ids: Vec<Uuid> = kept.batch.orders.iter().map(|o| o.order_id).collect();
        assert_eq!(ids, [b, c]);
        assert_eq!(kept.batch.rejections.len(), 1);
        assert_eq!(kept.batch.rejections[0].order_id, d);
        assert_eq!(kept.incoming.orders, [Some(parent(2)), None]);
        assert_eq!(kept.incoming.rejections, [Some(parent(4))]);
        assert_eq!(kept.order_partitions, [0, 0]);
        assert_eq!(kept.rejection_partitions, [0]);
        assert_eq!(kept.batch.positions, [position(1)]);
        assert_eq!(kept.batch.epochs, [(partition(1), 1)]);
        assert_eq!(kept.consumed, 5, "the records read still count as consumed");
    }
}
