//! The embedded log: Kafka's semantics in one process, durable on local disk, on `redb`.
//!
//! - **Topics and partitions** live in one redb file; a record's key in the store is
//!   `(topic, partition, offset)`, so a partition is one ordered range and reads are range scans.
//! - **Appends are group-committed**: one writer thread takes every pending append, writes them
//!   in one transaction and commits it durably (fsync) before any of them is acknowledged. An
//!   acknowledged record therefore survives `kill -9` and power loss, and concurrent producers
//!   share the cost of each sync.
//! - **Keys map to partitions with Kafka's murmur2**, the same function as the Kafka backend.
//! - **Consumer positions** are stored per group in the same file and survive restarts.
//! - **Seek by time**: timestamps never decrease within a partition, so the offset for a time is
//!   a binary search.
//! - **Retention**: records older than `retention_hours`, and beyond `retention_records` per
//!   partition, are deleted from the front of each partition.
//!
//! The file is locked by the process that opens it: the embedded log serves one `sluice`
//! process. Deployments that split the parts over several processes use Kafka.

mod codec;
mod partitioner;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

pub use codec::StoredRecord;
pub use partitioner::{murmur2, partition_for};

use super::blocking;
use super::{
    Assignment, Delivery, Log, LogConsumer, LogError, OutRecord, Position, Record, StartFrom,
};

/// `(topic, partition, offset)` → encoded record.
const RECORDS: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("records");
/// topic → partition count.
const TOPICS: TableDefinition<&str, u32> = TableDefinition::new("topics");
/// `(group, topic, partition)` → next offset to read.
const POSITIONS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("positions");
/// `(topic, partition)` → `(oldest retained offset, next offset, newest timestamp)`.
const PARTITIONS: TableDefinition<(&str, u32), (u64, u64, i64)> =
    TableDefinition::new("partitions");

/// Most appends one transaction takes.
const MAX_GROUP: usize = 4096;
/// Most records one retention transaction deletes.
const RETENTION_CHUNK: u64 = 10_000;

fn storage(error: impl std::fmt::Display) -> LogError {
    LogError::Backend(format!("embedded log storage: {error}"))
}

/// Where each partition begins and ends, and its newest timestamp.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionState {
    /// Oldest retained offset.
    low: u64,
    /// Offset the next record gets.
    next: u64,
    /// Timestamp of the newest record.
    last_ts: i64,
}

/// Retention limits of the embedded log.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Records older than this are deleted.
    pub max_age: Option<Duration>,
    /// At most this many records are kept per partition.
    pub max_records: Option<u64>,
}

struct Append {
    topic: String,
    record: OutRecord,
    reply: oneshot::Sender<Result<Delivery, LogError>>,
}

enum Command {
    Append(Append),
    Flush(oneshot::Sender<()>),
}

struct Shared {
    db: Database,
    path: PathBuf,
    topics: RwLock<HashMap<String, Vec<PartitionState>>>,
    /// Bumped after every commit of appends, so waiting consumers wake up.
    appended: watch::Sender<u64>,
    retention: Retention,
}

/// A durable, partitioned log in one local file.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    commands: std::sync::mpsc::Sender<Command>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log stored at `path`.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, LogError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                LogError::Backend(format!(
                    "cannot create the log folder {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::create(path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => LogError::Backend(format!(
                "{} is in use by another process: the embedded log serves one `sluice` process (run every part in one \
                 `sluice run`, or switch [log] to Kafka)",
                path.display()
            )),
            other => LogError::Backend(format!("cannot open the embedded log {}: {other}", path.display())),
        })?;
        let topics = load_state(&db)?;
        let (appended, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            db,
            path: path.to_path_buf(),
            topics: RwLock::new(topics),
            appended,
            retention,
        });
        let (commands, receiver) = std::sync::mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-log-writer".into())
            .spawn(move || write_loop(&writer_shared, &receiver))
            .map_err(|e| LogError::Backend(format!("cannot start the log writer: {e}")))?;
        Ok(EmbeddedLog {
            shared,
            commands,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The file the log lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Deletes the records that the retention limits no longer keep; returns how many.
    pub async fn enforce_retention(&self) -> Result<u64, LogError> {
        let shared = self.shared.clone();
        blocking(move || enforce_retention(&shared)).await
    }

    /// Deletes expired records every `every` until the log is dropped.
    pub fn spawn_retention(&self, every: Duration) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                match tokio::task::spawn_blocking(move || enforce_retention(&shared)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(deleted)) => {
                        tracing::info!(deleted, "embedded log retention removed old records")
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "embedded log retention failed"),
                    Err(error) => tracing::warn!(%error, "embedded log retention task failed"),
                }
            }
        });
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it has committed what it holds.
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

fn now_ms() -> i64 {
    crate::order::now_ms()
}

/// Reads every topic's partition count and each partition's first and next offsets.
fn load_state(db: &Database) -> Result<HashMap<String, Vec<PartitionState>>, LogError> {
    let write = db.begin_write().map_err(storage)?;
    {
        write.open_table(TOPICS).map_err(storage)?;
        write.open_table(RECORDS).map_err(storage)?;
        write.open_table(POSITIONS).map_err(storage)?;
        write.open_table(PARTITIONS).map_err(storage)?;
    }
    write.commit().map_err(storage)?;
    let read = db.begin_read().map_err(storage)?;
    let topics = read.open_table(TOPICS).map_err(storage)?;
    let ends = read.open_table(PARTITIONS).map_err(storage)?;
    let mut state = HashMap::new();
    for entry in topics.iter().map_err(storage)? {
        let (name, count) = entry.map_err(storage)?;
        let name = name.value().to_string();
        let mut partitions = Vec::new();
        for partition in 0..count.value() {
            let stored = ends
                .get((name.as_str(), partition))
                .map_err(storage)?
                .map(|v| v.value());
            let (low, next, last_ts) = stored.unwrap_or((0, 0, 0));
            partitions.push(PartitionState { low, next, last_ts });
        }
        state.insert(name, partitions);
    }
    Ok(state)
}

/// Records the bounds of the partitions in `touched` within `write`'s transaction, so offsets
/// are never reused, even after retention empties a partition.
fn store_bounds(
    write: &redb::WriteTransaction,
    states: &HashMap<String, Vec<PartitionState>>,
    touched: &std::collections::BTreeSet<(String, u32)>,
) -> Result<(), LogError> {
    let mut table = write.open_table(PARTITIONS).map_err(storage)?;
    for (topic, partition) in touched {
        if let Some(state) = states.get(topic).and_then(|p| p.get(*partition as usize)) {
            // The stored low bound belongs to retention (serialised with us by redb's single
            // writer); appends only move the end.
            let low = table
                .get((topic.as_str(), *partition))
                .map_err(storage)?
                .map_or(state.low, |v| v.value().0);
            table
                .insert(
                    (topic.as_str(), *partition),
                    (low, state.next, state.last_ts),
                )
                .map_err(storage)?;
        }
    }
    Ok(())
}

/// The writer thread: group-commits appends until the channel closes.
fn write_loop(shared: &Shared, commands: &std::sync::mpsc::Receiver<Command>) {
    while let Ok(first) = commands.recv() {
        let mut appends = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append(append) => appends.push(append),
                Command::Flush(done) => flushes.push(done),
            }
            if appends.len() < MAX_GROUP {
                next = commands.try_recv().ok();
            }
        }
        if !appends.is_empty() {
            commit_group(shared, appends);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Writes one group of appends in one durable transaction, then answers each of them.
fn commit_group(shared: &Shared, appends: Vec<Append>) {
    let mut states = match shared.topics.read() {
        Ok(topics) => topics.clone(),
        Err(_) => return,
    };
    let now = now_ms();
    let mut placed: Vec<(Append, Result<Delivery, LogError>)> = Vec::with_capacity(appends.len());
    let mut touched = std::collections::BTreeSet::new();
    let result = (|| -> Result<(), LogError> {
        let write = shared.db.begin_write().map_err(storage)?;
        {
            let mut records = write.open_table(RECORDS).map_err(storage)?;
            for append in appends {
                let Some(partitions) = states.get_mut(&append.topic) else {
                    let topic = append.topic.clone();
                    placed.push((append, Err(LogError::UnknownTopic(topic))));
                    continue;
                };
                let partition = partition_for(&append.record.key, partitions.len() as u32);
                let state = &mut partitions[partition as usize];
                let offset = state.next;
                state.next += 1;
                state.last_ts = state.last_ts.max(now);
                touched.insert((append.topic.clone(), partition as u32));
                let stored = StoredRecord {
                    timestamp_ms: state.last_ts,
                    key: append.record.key.clone(),
                    payload: append.record.payload.clone(),
                    headers: append.record.headers.clone(),
                };
                records
                    .insert(
                        (append.topic.as_str(), partition as u32, offset),
                        codec::encode(&stored).as_slice(),
                    )
                    .map_err(storage)?;
                placed.push((
                    append,
                    Ok(Delivery {
                        partition,
                        offset: offset as i64,
                    }),
                ));
            }
        }
        store_bounds(&write, &states, &touched)?;
        write.commit().map_err(storage)
    })();
    match result {
        Ok(()) => {
            if let Ok(mut topics) = shared.topics.write() {
                // Only partition ends moved; topics created meanwhile are kept.
                for (name, partitions) in states {
                    if let Some(current) = topics.get_mut(&name) {
                        for (current, new) in current.iter_mut().zip(partitions) {
                            current.next = current.next.max(new.next);
                            current.last_ts = current.last_ts.max(new.last_ts);
                        }
                    }
                }
            }
            shared.appended.send_modify(|n| *n += 1);
            for (append, delivery) in placed {
                let _ = append.reply.send(delivery);
            }
        }
        Err(error) => {
            tracing::error!(%error, "embedded log commit failed");
            for (append, _) in placed {
                let _ = append.reply.send(Err(LogError::Backend(error.to_string())));
            }
        }
    }
}

fn enforce_retention(shared: &Shared) -> Result<u64, LogError> {
    let Retention {
        max_age,
        max_records,
    } = shared.retention;
    if max_age.is_none() && max_records.is_none() {
        return Ok(0);
    }
    let snapshot = shared
        .topics
        .read()
        .map_err(|_| storage("state lock poisoned"))?
        .clone();
    let mut cutoffs = Vec::new();
    for (topic, partitions) in &snapshot {
        for (partition, state) in partitions.iter().enumerate() {
            let mut cutoff = state.low;
            if let Some(max) = max_records {
                cutoff = cutoff.max(state.next.saturating_sub(max));
            }
            if let Some(age) = max_age {
                let oldest_kept = now_ms() - age.as_millis() as i64;
                cutoff = cutoff.max(offset_for_time_sync(
                    shared,
                    topic,
                    partition as u32,
                    state,
                    oldest_kept,
                )?);
            }
            if cutoff > state.low {
                cutoffs.push((topic.clone(), partition as u32, state.low, cutoff));
            }
        }
    }
    // Delete in bounded transactions, so appends (which share redb's single writer) never wait
    // behind one huge deletion.
    let mut deleted = 0;
    for (topic, partition, low, cutoff) in cutoffs {
        let mut from = low;
        while from < cutoff {
            let to = cutoff.min(from + RETENTION_CHUNK);
            let write = shared.db.begin_write().map_err(storage)?;
            {
                let mut records = write.open_table(RECORDS).map_err(storage)?;
                records
                    .retain_in(
                        (topic.as_str(), partition, from)..(topic.as_str(), partition, to),
                        |_, _| false,
                    )
                    .map_err(storage)?;
                let mut bounds = write.open_table(PARTITIONS).map_err(storage)?;
                let (_, next, last_ts) = bounds
                    .get((topic.as_str(), partition))
                    .map_err(storage)?
                    .map_or((0, to, 0), |v| v.value());
                bounds
                    .insert((topic.as_str(), partition), (to, next.max(to), last_ts))
                    .map_err(storage)?;
            }
            write.commit().map_err(storage)?;
            if let Some(state) = shared
                .topics
                .write()
                .map_err(|_| storage("state lock poisoned"))?
                .get_mut(&topic)
                .and_then(|p| p.get_mut(partition as usize))
            {
                state.low = state.low.max(to);
            }
            deleted += to - from;
            from = to;
        }
    }
    Ok(deleted)
}

/// First offset of a partition whose timestamp is at or after `time_ms` (binary search).
fn offset_for_time_sync(
    shared: &Shared,
    topic: &str,
    partition: u32,
    state: &PartitionState,
    time_ms: i64,
) -> Result<u64, LogError> {
    let read = shared.db.begin_read().map_err(storage)?;
    let records = read.open_table(RECORDS).map_err(storage)?;
    let (mut low, mut high) = (state.low, state.next);
    while low < high {
        let middle = low + (high - low) / 2;
        let timestamp = records
            .get((topic, partition, middle))
            .map_err(storage)?
            .and_then(|v| codec::decode(v.value()))
            .map(|r| r.timestamp_ms)
            .unwrap_or(i64::MIN);
        if timestamp < time_ms {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

impl Shared {
    fn partition(&self, topic: &str, partition: i32) -> Result<PartitionState, LogError> {
        let topics = self
            .topics
            .read()
            .map_err(|_| storage("state lock poisoned"))?;
        let partitions = topics
            .get(topic)
            .ok_or_else(|| LogError::UnknownTopic(topic.to_string()))?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| partitions.get(p).copied())
            .ok_or_else(|| {
                LogError::Backend(format!("topic {topic:?} has no partition {partition}"))
            })
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn ensure_topics(&self, topics: &[(String, u32, u32)]) -> Result<(), LogError> {
        let shared = self.shared.clone();
        let topics = topics.to_vec();
        blocking(move || {
            let mut state = shared
                .topics
                .write()
                .map_err(|_| storage("state lock poisoned"))?;
            let missing: Vec<_> = topics
                .iter()
                .filter(|(name, _, _)| !state.contains_key(name))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let write = shared.db.begin_write().map_err(storage)?;
            {
                let mut table = write.open_table(TOPICS).map_err(storage)?;
                for (name, partitions, _) in &missing {
                    table.insert(name.as_str(), *partitions).map_err(storage)?;
                }
            }
            write.commit().map_err(storage)?;
            for (name, partitions, _) in missing {
                state.insert(
                    name.clone(),
                    vec![PartitionState::default(); *partitions as usize],
                );
            }
            Ok(())
        })
        .await
    }

    async fn send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append(Append {
                topic: topic.to_string(),
                record,
                reply,
            }))
            .map_err(|_| LogError::Backend("the embedded log is closed".into()))?;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(LogError::Timeout(timeout)),
            Ok(Err(_)) => Err(LogError::Backend("the embedded log writer stopped".into())),
            Ok(Ok(result)) => result,
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        let topics = self
            .shared
            .topics
            .read()
            .map_err(|_| storage("state lock poisoned"))?;
        topics
            .get(topic)
            .map(|p| p.len() as u32)
            .ok_or_else(|| LogError::UnknownTopic(topic.to_string()))
    }

    async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), LogError> {
        let state = self.shared.partition(topic, partition)?;
        Ok((state.low as i64, state.next as i64))
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        time_ms: i64,
    ) -> Result<i64, LogError> {
        let state = self.shared.partition(topic, partition)?;
        let (shared, topic) = (self.shared.clone(), topic.to_string());
        blocking(move || {
            offset_for_time_sync(&shared, &topic, partition as u32, &state, time_ms)
                .map(|o| o as i64)
        })
        .await
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        Ok(())
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        Ok(Box::new(EmbeddedConsumer {
            shared: self.shared.clone(),
            group: group.to_string(),
            assigned: Vec::new(),
            next_partition: 0,
            appended: self.shared.appended.subscribe(),
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let (done, finished) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .map_err(|_| LogError::Backend("the embedded log is closed".into()))?;
        tokio::time::timeout(timeout, finished)
            .await
            .map_err(|_| LogError::Timeout(timeout))?
            .ok();
        Ok(())
    }
}

/// A consumer of the embedded log: assigned partitions, read positions, stored positions.
struct EmbeddedConsumer {
    shared: Arc<Shared>,
    group: String,
    /// `(topic, partition, next offset to read)`.
    assigned: Vec<(String, u32, u64)>,
    /// Where the next poll starts, so partitions take turns.
    next_partition: usize,
    appended: watch::Receiver<u64>,
}

impl EmbeddedConsumer {
    fn stored_position(&self, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let positions = read.open_table(POSITIONS).map_err(storage)?;
        Ok(positions
            .get((self.group.as_str(), topic, partition))
            .map_err(storage)?
            .map(|v| v.value()))
    }
}

/// Reads up to `max` records from the `assigned` partitions, advancing their positions and
/// starting with partition `first`, so partitions take turns.
fn read_batch(
    shared: &Shared,
    assigned: &mut [(String, u32, u64)],
    first: usize,
    max: usize,
) -> Result<Vec<Record>, LogError> {
    let mut out = Vec::new();
    if assigned.is_empty() {
        return Ok(out);
    }
    let read = shared.db.begin_read().map_err(storage)?;
    let records = read.open_table(RECORDS).map_err(storage)?;
    let count = assigned.len();
    for step in 0..count {
        if out.len() >= max {
            break;
        }
        let (topic, partition, position) = &mut assigned[(first + step) % count];
        // Skip what retention removed (loudly: a consumer fell behind the retention limit).
        let low = shared.partition(topic, *partition as i32)?.low;
        if *position < low {
            super::report_skipped(topic, *partition as i32, (low - *position) as i64);
            *position = low;
        }
        let range = records
            .range((topic.as_str(), *partition, *position)..=(topic.as_str(), *partition, u64::MAX))
            .map_err(storage)?;
        for entry in range {
            if out.len() >= max {
                break;
            }
            let (key, value) = entry.map_err(storage)?;
            let offset = key.value().2;
            let stored = codec::decode(value.value()).ok_or_else(|| {
                storage(format!("unreadable record at {topic}/{partition}/{offset}"))
            })?;
            out.push(Record {
                topic: topic.clone(),
                partition: *partition as i32,
                offset: offset as i64,
                key: stored.key,
                payload: stored.payload,
                headers: stored.headers,
                timestamp_ms: Some(stored.timestamp_ms),
            });
            *position = offset + 1;
        }
    }
    Ok(out)
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<(), LogError> {
        let mut assigned = Vec::with_capacity(assignments.len());
        for a in assignments {
            let state = self.shared.partition(&a.topic, a.partition)?;
            let partition = a.partition as u32;
            let start = match a.start {
                StartFrom::Committed => match self.stored_position(&a.topic, partition)? {
                    Some(stored) => super::clamp_position(
                        &a.topic,
                        a.partition,
                        stored as i64,
                        state.low as i64,
                        state.next as i64,
                    ) as u64,
                    None => state.low,
                },
                StartFrom::Beginning => state.low,
                StartFrom::End => state.next,
                StartFrom::Offset(n) => (n.max(0) as u64).clamp(state.low, state.next),
                StartFrom::Time(ms) => {
                    offset_for_time_sync(&self.shared, &a.topic, partition, &state, ms)?
                }
            };
            assigned.push((a.topic, partition, start));
        }
        self.assigned = assigned;
        self.next_partition = 0;
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.appended.borrow_and_update();
            let (shared, mut assigned, first) = (
                self.shared.clone(),
                std::mem::take(&mut self.assigned),
                self.next_partition,
            );
            let (records, assigned) = tokio::task::spawn_blocking(move || {
                let records = read_batch(&shared, &mut assigned, first, max);
                (records, assigned)
            })
            .await
            .map_err(|e| LogError::Backend(format!("worker thread failed: {e}")))?;
            self.assigned = assigned;
            if !self.assigned.is_empty() {
                self.next_partition = (self.next_partition + 1) % self.assigned.len();
            }
            let records = records?;
            if !records.is_empty() {
                return Ok(records);
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(Err(_)) => return Err(LogError::Backend("the embedded log was closed".into())),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let (shared, group, positions) =
            (self.shared.clone(), self.group.clone(), positions.to_vec());
        blocking(move || {
            let write = shared.db.begin_write().map_err(storage)?;
            {
                let mut table = write.open_table(POSITIONS).map_err(storage)?;
                for p in &positions {
                    table
                        .insert(
                            (group.as_str(), p.topic.as_str(), p.partition as u32),
                            p.next_offset.max(0) as u64,
                        )
                        .map_err(storage)?;
                }
            }
            write.commit().map_err(storage)
        })
        .await
    }

    async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>, LogError> {
        Ok(self
            .stored_position(topic, partition as u32)?
            .map(|n| n as i64))
    }
}
