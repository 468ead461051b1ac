//! The sink worker of one shard: read, batch, write rows and positions together.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::log::{Assignment, Log, LogConsumer, Position, Record, StartFrom};
use sluice_core::order::{
    now_ms, EnrichedOrder, HEADER_DLQ_REASON, HEADER_DLQ_STAGE, HEADER_ORDER_ID,
};
use sluice_core::sharding::ShardMap;
use sluice_core::topology::Topology;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::writer::{Batch, Rejection, ShardWriter, SinkError};

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
    /// Rows per batch.
    pub max_rows: usize,
    /// Longest wait between a batch's first record and its write.
    pub max_wait: Duration,
    /// Where to start partitions with no stored position.
    pub start: StartFrom,
    /// Start offsets per `(topic, partition)` for partitions with no stored position (replays).
    pub start_offsets: HashMap<(String, i32), i64>,
    /// Stop once every partition reaches these offsets (replay); `None` runs until cancelled.
    pub stop_at: Option<HashMap<(String, i32), i64>>,
}

impl SinkWorker {
    /// The live worker of shard `index` of `topology`: it stores the shard's own topic and its
    /// users' rejections, under the positions named `"sink"`, in batches set by `[sink]`, and
    /// reads partitions with no stored position from the beginning.
    pub fn live(topology: &Topology, index: usize) -> Self {
        let shard = &topology.shards[index];
        SinkWorker {
            shard: shard.name.clone(),
            shard_index: index,
            topic: shard.topic.clone(),
            rejections_topic: topology.sink.rejections_topic.clone(),
            consumer: "sink".into(),
            max_rows: topology.sink.max_rows,
            max_wait: Duration::from_millis(topology.sink.max_wait_ms),
            start: StartFrom::Beginning,
            start_offsets: HashMap::new(),
            stop_at: None,
        }
    }
}

/// Turns a record into a row for this shard, or nothing: a record of another shard's user
/// (so a shard can be rebuilt from a topic that holds every shard's orders, such as the
/// enriched topic), or a record that cannot be read, which is logged and skipped.
fn classify(worker: &SinkWorker, map: &ShardMap, record: &Record, batch: &mut Batch) {
    if worker.rejections_topic.as_deref() != Some(record.topic.as_str()) {
        match serde_json::from_slice::<EnrichedOrder>(&record.payload) {
            Ok(order) if map.shard_for_user(&order.user_id) == worker.shard_index => {
                batch.orders.push(order)
            }
            Ok(_) => {}
            Err(error) => tracing::error!(
                shard = worker.shard, topic = record.topic, partition = record.partition, offset = record.offset, %error,
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
            "dead letter without an order id; not recorded"
        );
        return;
    };
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
    let stored: HashMap<(String, i32), i64> = writer
        .positions(&worker.consumer)
        .await?
        .into_iter()
        .map(|p| ((p.topic, p.partition), p.next_offset))
        .collect();
    let mut topics = vec![worker.topic.clone()];
    topics.extend(worker.rejections_topic.clone());
    let mut assignments = Vec::new();
    let mut remaining = worker.stop_at.clone();
    if let Some(ends) = &mut remaining {
        ends.retain(|key, end| stored.get(key).is_none_or(|&done| done < *end));
    }
    for topic in &topics {
        for partition in 0..log.partition_count(topic).await.map_err(log_error)? as i32 {
            let key = (topic.clone(), partition);
            if remaining
                .as_ref()
                .is_some_and(|ends| !ends.contains_key(&key))
            {
                continue; // a bounded replay reads only the partitions it still has to cover
            }
            let start = match (stored.get(&key), worker.start_offsets.get(&key)) {
                (Some(&offset), _) | (None, Some(&offset)) => StartFrom::Offset(offset),
                (None, None) => worker.start,
            };
            assignments.push(Assignment {
                topic: topic.clone(),
                partition,
                start,
            });
        }
    }
    let mut consumer = log
        .consumer(&format!("sluice.sink.{}.{}", worker.shard, worker.consumer))
        .await
        .map_err(log_error)?;
    consumer.assign(assignments).await.map_err(log_error)?;
    tracing::info!(shard = worker.shard, topics = ?topics, resumed = stored.len(), "sink worker started");

    // The reader assembles the next batch while the writer commits the current one: with a
    // queue of one, reading and writing overlap and at most three batches are in memory.
    let (ready, mut queued) = tokio::sync::mpsc::channel::<ReadBatch>(1);
    let read = read_batches(consumer.as_mut(), &worker, &map, remaining, &cancel, ready);
    let (writer, worker_ref, cancel_ref, progress) = (&writer, &worker, &cancel, &progress);
    // `move`: the queue's receiver belongs to `write`, so a failed write drops it, which
    // fails the reader's pending send and stops the reader.
    let write = async move {
        let mut done = 0u64;
        while let Some(read) = queued.recv().await {
            write_with_retry(writer.as_ref(), worker_ref, &read.batch, cancel_ref).await?;
            done += read.consumed as u64;
            if let Some(progress) = progress {
                progress(done);
            }
        }
        Ok::<u64, SinkError>(done)
    };
    let ((), done) = tokio::join!(read, write);
    let done = done?;
    tracing::info!(shard = worker.shard, records = done, "sink worker stopped");
    Ok(done)
}

/// A batch ready to write, with the number of records it consumed (records of other shards'
/// users and unreadable records count as consumed: their positions are stored too).
struct ReadBatch {
    batch: Batch,
    consumed: usize,
}

/// Reads records into batches of at most `max_rows`, closed `max_wait` after their first
/// record, and queues them for the writer, until `cancel` fires (the batch in hand is still
/// queued), every `remaining` partition reaches its end, or the writer stops.
async fn read_batches(
    consumer: &mut dyn LogConsumer,
    worker: &SinkWorker,
    map: &ShardMap,
    mut remaining: Option<HashMap<(String, i32), i64>>,
    cancel: &CancellationToken,
    ready: tokio::sync::mpsc::Sender<ReadBatch>,
) {
    'run: loop {
        if remaining.as_ref().is_some_and(HashMap::is_empty) {
            break;
        }
        let mut batch = Batch::default();
        let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
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
            let records = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    if consumed == 0 { break 'run; }
                    break;
                }
                _ = ready.closed() => break 'run,
                polled = consumer.poll(worker.max_rows - consumed, wait) => match polled {
                    Ok(records) => records,
                    Err(error) => {
                        // Transient broker trouble must not take the process down.
                        tracing::warn!(shard = worker.shard, %error, "poll failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            if records.is_empty() {
                continue; // nothing yet; the deadline (if a batch has started) ends the wait
            }
            deadline.get_or_insert_with(|| Instant::now() + worker.max_wait);
            for record in &records {
                let key = (record.topic.clone(), record.partition);
                if let Some(ends) = &mut remaining {
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
                classify(worker, map, record, &mut batch);
                positions.insert(key, record.offset + 1);
                consumed += 1;
            }
        }
        if positions.is_empty() {
            continue;
        }
        if let Some(ends) = &mut remaining {
            for (key, next) in &positions {
                if ends.get(key).is_some_and(|end| next >= end) {
                    ends.remove(key);
                }
            }
        }
        batch.positions = positions
            .into_iter()
            .map(|((topic, partition), next_offset)| Position {
                topic,
                partition,
                next_offset,
            })
            .collect();
        if ready.send(ReadBatch { batch, consumed }).await.is_err() {
            break; // the writer failed; it reports why
        }
    }
}

/// Longest time one batch write may take before it counts as failed (and is retried).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes the batch, retrying transient failures with backoff. While draining (cancelled) it
/// still tries a few times, then gives up: the positions were not stored, so nothing is lost.
async fn write_with_retry(
    writer: &dyn ShardWriter,
    worker: &SinkWorker,
    batch: &Batch,
    cancel: &CancellationToken,
) -> Result<(), SinkError> {
    let mut backoff = Duration::from_millis(100);
    let mut attempts_after_cancel = 0;
    loop {
        let attempt =
            tokio::time::timeout(WRITE_TIMEOUT, writer.write_batch(&worker.consumer, batch)).await;
        let attempt = attempt.unwrap_or_else(|_| {
            Err(SinkError::Database {
                shard: worker.shard.clone(),
                message: format!("the batch write did not finish within {WRITE_TIMEOUT:?}"),
            })
        });
        match attempt {
            Ok(()) => return Ok(()),
            Err(error) => {
                metrics::counter!(sluice_core::telemetry::SINK_RETRIES, "shard" => worker.shard.clone()).increment(1);
                if cancel.is_cancelled() {
                    attempts_after_cancel += 1;
                    if attempts_after_cancel >= 3 {
                        return Err(error);
                    }
                }
                // While draining, retry briefly: a shutdown should not wait on a broken shard.
                let pause = if cancel.is_cancelled() {
                    backoff.min(Duration::from_millis(200))
                } else {
                    backoff
                };
                tracing::warn!(shard = worker.shard, %error, retry_in = ?pause, "batch write failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = cancel.cancelled(), if !cancel.is_cancelled() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
