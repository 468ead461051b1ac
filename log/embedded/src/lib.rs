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
//! - **Bounded, and honest about the disk**: at most `max_pending_appends` records wait to be
//!   written; [`Log::try_send`] (new orders) is refused at once when the queue is full, when
//!   free disk space is below the watermark, or while writing fails, and [`Log::check_ready`]
//!   says why; [`Log::send`] (stage outputs) waits for room. After a failed write (no space,
//!   an I/O error: redb then refuses every write until it is reopened) the writer reopens the
//!   file every half second until a commit works, and carries on with what is queued.
//!
//! The file is locked by the process that opens it: the embedded log serves one `sluice`
//! process. Deployments that split the parts over several processes use Kafka. The holder
//! writes its pid beside the file (`<log file>.pid`), and a process taking over from it waits
//! for the lock ([`EmbeddedLogConfig::open_when_free`]), naming that pid.

mod codec;
mod config;
mod partitioner;
mod read_only;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

pub use codec::StoredRecord;
pub use config::EmbeddedLogConfig;
pub use partitioner::{murmur2, partition_for};
pub use read_only::ReadOnlyEmbeddedLog;

use sluice_core::log::blocking;
use sluice_core::log::{
    Assignment, Delivery, Log, LogError, OutRecord, PartitionReader, Position, Rebalance, Record,
    StartFrom, TopicPartition,
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

/// A failure of redb (or of the file system under it), kept as the error's source.
fn storage(error: impl std::error::Error + Send + Sync + 'static) -> LogError {
    LogError::backend("embedded log storage", error)
}

/// A storage failure that no redb error caused (a poisoned lock, an unreadable record).
fn storage_message(message: impl std::fmt::Display) -> LogError {
    LogError::backend_message(format!("embedded log storage: {message}"))
}

/// The message of `error` without the variant's prefix.
fn message(error: &LogError) -> String {
    match error {
        LogError::Backend {
            message,
            source: Some(source),
        } => format!("{message}: {source}"),
        LogError::Backend {
            message,
            source: None,
        } => message.clone(),
        other => other.to_string(),
    }
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

impl Retention {
    /// Keeps every record: no age or count limit.
    pub const KEEP_ALL: Retention = Retention {
        max_age: None,
        max_records: None,
    };
}

/// Options of the embedded log beyond its file.
#[derive(Debug, Clone)]
pub struct Options {
    /// What retention deletes.
    pub retention: Retention,
    /// Below this many free bytes on the log's filesystem, [`Log::try_send`] refuses new
    /// records and [`Log::check_ready`] fails; `0` turns the check off.
    pub min_free_bytes: u64,
    /// Most appends waiting to be written at once.
    pub max_pending_appends: usize,
    /// Bytes of the file that the log keeps cached in memory (redb's page cache).
    pub cache_bytes: usize,
    /// Fault injection for tests: while this file exists, the writer pauses before every
    /// commit (a stalled disk).
    pub stall_file: Option<PathBuf>,
    /// Fault injection for tests: while this file exists, every commit fails as an I/O error
    /// would (a failing disk).
    pub fail_file: Option<PathBuf>,
}

impl Options {
    /// The defaults (64 MiB free-space watermark, 8192 pending appends) with `retention`;
    /// the fault-injection files come from `SLUICE_FAULT_LOG_STALL_FILE` and
    /// `SLUICE_FAULT_LOG_FAIL_FILE` when set.
    pub fn new(retention: Retention) -> Self {
        let file = |name: &str| std::env::var_os(name).map(PathBuf::from);
        Options {
            retention,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            max_pending_appends: DEFAULT_MAX_PENDING_APPENDS,
            cache_bytes: DEFAULT_CACHE_BYTES,
            stall_file: file("SLUICE_FAULT_LOG_STALL_FILE"),
            fail_file: file("SLUICE_FAULT_LOG_FAIL_FILE"),
        }
    }
}

/// Default free-space watermark: 64 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;
/// Default page cache: 64 MiB. The stages and sinks read what was just written, which the
/// cache holds; a larger cache mostly keeps old records no one reads again.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Default bound of the append queue.
pub const DEFAULT_MAX_PENDING_APPENDS: usize = 8192;
/// How often the writer measures free space while idle, and retries after a write failure.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

struct Append {
    topic: String,
    record: OutRecord,
    reply: oneshot::Sender<Result<Delivery, LogError>>,
    /// This append's place in the bounded queue, given back once it is answered.
    _slot: OwnedSemaphorePermit,
}

enum Command {
    Append(Append),
    Flush(oneshot::Sender<()>),
}

/// What keeps the log from taking new records, if anything.
#[derive(Debug, Default)]
struct Health {
    /// Why the last write failed, while writing does not work.
    write_failure: Option<String>,
    /// When writing stopped working.
    failed_since: Option<std::time::Instant>,
    /// The free-space report while below the watermark.
    low_space: Option<String>,
    /// Reopen attempts since writing stopped working.
    attempts: u64,
}

/// Metric handles, registered once when the log opens.
struct Gauges {
    write_failure: metrics::Gauge,
    low_space: metrics::Gauge,
    free_bytes: metrics::Gauge,
    queue: metrics::Gauge,
    refused_write_failure: metrics::Counter,
    refused_low_space: metrics::Counter,
    refused_queue_full: metrics::Counter,
}

impl Gauges {
    fn register() -> Self {
        use sluice_core::telemetry::{
            LOG_APPENDS_REFUSED, LOG_APPEND_QUEUE, LOG_FREE_BYTES, LOG_WRITE_BLOCKED,
        };
        Gauges {
            write_failure: metrics::gauge!(LOG_WRITE_BLOCKED, "reason" => "write_failure"),
            low_space: metrics::gauge!(LOG_WRITE_BLOCKED, "reason" => "low_disk_space"),
            free_bytes: metrics::gauge!(LOG_FREE_BYTES),
            queue: metrics::gauge!(LOG_APPEND_QUEUE),
            refused_write_failure: metrics::counter!(LOG_APPENDS_REFUSED, "reason" => "write_failure"),
            refused_low_space: metrics::counter!(LOG_APPENDS_REFUSED, "reason" => "low_disk_space"),
            refused_queue_full: metrics::counter!(LOG_APPENDS_REFUSED, "reason" => "queue_full"),
        }
    }
}

struct Shared {
    /// The open database; `None` only while the writer reopens it after a write failure.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    topics: RwLock<HashMap<String, Vec<PartitionState>>>,
    /// Bumped after every commit of appends, so waiting consumers wake up.
    appended: watch::Sender<u64>,
    retention: Retention,
    /// Places in the append queue.
    slots: Arc<Semaphore>,
    max_pending_appends: usize,
    min_free_bytes: u64,
    /// The page cache's size, for reopening the file.
    cache_bytes: usize,
    health: Mutex<Health>,
    gauges: Gauges,
    /// Set when the log is dropped, so a writer waiting for the disk gives up.
    closing: AtomicBool,
    stall_file: Option<PathBuf>,
    fail_file: Option<PathBuf>,
}

/// A durable, partitioned log in one local file.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    commands: std::sync::mpsc::Sender<Command>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Opens the redb file at `path`, with errors that say what to do.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, LogError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|error| match error {
        error @ redb::DatabaseError::DatabaseAlreadyOpen => LogError::backend(
            format!(
                "{} is in use by another process: the embedded log serves one `sluice` process (run every part in \
                 one `sluice run`, or switch [log] to Kafka)",
                path.display()
            ),
            error,
        ),
        other => LogError::backend(
            format!("cannot open the embedded log {}", path.display()),
            other,
        ),
    })
}

/// Whether `error` says that another process holds the log file (so opening it again later
/// may work).
pub fn held_by_another_process(error: &LogError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if matches!(
            error.downcast_ref::<redb::DatabaseError>(),
            Some(redb::DatabaseError::DatabaseAlreadyOpen)
        ) {
            return true;
        }
        source = error.source();
    }
    false
}

/// The file beside the log where its holder writes its pid.
pub fn pid_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pid");
    PathBuf::from(name)
}

/// The pid the holder of the log at `path` wrote, if it wrote one.
pub fn holder_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file(path))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl EmbeddedLog {
    /// Opens (or creates) the log stored at `path`, with the default [`Options`].
    pub fn open(path: &Path, retention: Retention) -> Result<Self, LogError> {
        Self::open_with(path, Options::new(retention))
    }

    /// Opens (or creates) the log stored at `path`.
    pub fn open_with(path: &Path, options: Options) -> Result<Self, LogError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                LogError::backend(
                    format!("cannot create the log folder {}", parent.display()),
                    e,
                )
            })?;
        }
        let db = open_database(path, options.cache_bytes)?;
        // For a process waiting to take over: who it waits for. Best effort; the lock is what
        // guards the file.
        if let Err(error) = std::fs::write(pid_file(path), format!("{}\n", std::process::id())) {
            tracing::debug!(%error, "cannot write the log's pid file");
        }
        let topics = load_state(&db)?;
        let (appended, _) = watch::channel(0);
        let max_pending_appends = options.max_pending_appends.max(1);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            path: path.to_path_buf(),
            topics: RwLock::new(topics),
            appended,
            retention: options.retention,
            slots: Arc::new(Semaphore::new(max_pending_appends)),
            max_pending_appends,
            min_free_bytes: options.min_free_bytes,
            cache_bytes: options.cache_bytes,
            health: Mutex::new(Health::default()),
            gauges: Gauges::register(),
            closing: AtomicBool::new(false),
            stall_file: options.stall_file,
            fail_file: options.fail_file,
        });
        shared.gauges.write_failure.set(0.0);
        shared.gauges.low_space.set(0.0);
        refresh_free_space(&shared);
        let (commands, receiver) = std::sync::mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-log-writer".into())
            .spawn(move || write_loop(&writer_shared, &receiver))
            .map_err(|e| LogError::backend("cannot start the log writer", e))?;
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

    /// Queues one append holding `slot` and waits for its answer until `deadline`.
    async fn enqueue(
        &self,
        topic: &str,
        record: OutRecord,
        slot: OwnedSemaphorePermit,
        timeout: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<Delivery, LogError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append(Append {
                topic: topic.to_string(),
                record,
                reply,
                _slot: slot,
            }))
            .map_err(|_| LogError::backend_message("the embedded log is closed"))?;
        // A caller that gives up drops `answer`; the writer then leaves the record out.
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(LogError::Timeout(timeout)),
            Ok(Err(_)) => Err(LogError::backend_message("the embedded log writer stopped")),
            Ok(Ok(result)) => result,
        }
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it has committed what it holds (a writer
        // waiting for the disk to work again fails what it holds instead).
        self.shared.closing.store(true, Ordering::Release);
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

fn now_ms() -> i64 {
    sluice_core::order::now_ms()
}

/// Creates the tables that do not exist yet, then reads every topic's partition count and
/// each partition's first and next offsets.
fn load_state(db: &Database) -> Result<HashMap<String, Vec<PartitionState>>, LogError> {
    let write = db.begin_write().map_err(storage)?;
    {
        write.open_table(TOPICS).map_err(storage)?;
        write.open_table(RECORDS).map_err(storage)?;
        write.open_table(POSITIONS).map_err(storage)?;
        write.open_table(PARTITIONS).map_err(storage)?;
    }
    write.commit().map_err(storage)?;
    read_state(db)
}

/// Reads every topic's partition count and each partition's first and next offsets (none
/// when the tables were never created).
fn read_state(
    db: &impl ReadableDatabase,
) -> Result<HashMap<String, Vec<PartitionState>>, LogError> {
    let read = db.begin_read().map_err(storage)?;
    let topics = match read.open_table(TOPICS) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
        other => other.map_err(storage)?,
    };
    let ends = match read.open_table(PARTITIONS) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
        other => other.map_err(storage)?,
    };
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

/// The writer thread: group-commits appends until the channel closes. After a failed write it
/// stops taking appends (they wait in the queue) and reopens the file until writing works
/// again.
fn write_loop(shared: &Shared, commands: &std::sync::mpsc::Receiver<Command>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut space_checked = std::time::Instant::now();
    loop {
        if shared.write_failure().is_some() {
            if shared.closing.load(Ordering::Acquire) {
                fail_queued(shared, commands);
                return;
            }
            std::thread::sleep(CHECK_INTERVAL);
            refresh_free_space(shared);
            space_checked = std::time::Instant::now();
            recover(shared);
            continue;
        }
        let first = match commands.recv_timeout(CHECK_INTERVAL) {
            Ok(command) => command,
            Err(RecvTimeoutError::Timeout) => {
                refresh_free_space(shared);
                space_checked = std::time::Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut appends = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                // A caller that gave up (timed out) has been told the record may not be
                // stored; leaving it out keeps its retry from storing it twice.
                Command::Append(append) if append.reply.is_closed() => {}
                Command::Append(append) => appends.push(append),
                Command::Flush(done) => flushes.push(done),
            }
            if appends.len() < MAX_GROUP {
                next = commands.try_recv().ok();
            }
        }
        stall_while_asked(shared);
        appends.retain(|append| !append.reply.is_closed());
        if !appends.is_empty() {
            commit_group(shared, appends);
        }
        for done in flushes {
            let _ = done.send(());
        }
        let free_slots = shared.slots.available_permits();
        let queued = shared.max_pending_appends.saturating_sub(free_slots);
        shared.gauges.queue.set(queued as f64);
        if space_checked.elapsed() >= CHECK_INTERVAL {
            refresh_free_space(shared);
            space_checked = std::time::Instant::now();
        }
    }
}

/// Fault injection: waits while the stall file exists (a disk that does not answer).
fn stall_while_asked(shared: &Shared) {
    let Some(file) = &shared.stall_file else {
        return;
    };
    while file.exists() && !shared.closing.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fault injection: an I/O error while the fail file exists.
fn injected_failure(shared: &Shared) -> Result<(), LogError> {
    match &shared.fail_file {
        Some(file) if file.exists() => Err(storage(std::io::Error::other(format!(
            "injected write failure (remove {} to end it)",
            file.display()
        )))),
        _ => Ok(()),
    }
}

/// On shutdown while the disk does not work: fails every queued append.
fn fail_queued(shared: &Shared, commands: &std::sync::mpsc::Receiver<Command>) {
    let why = shared
        .write_failure()
        .unwrap_or_else(|| "the embedded log closed".into());
    while let Ok(command) = commands.try_recv() {
        match command {
            Command::Append(append) => {
                let _ = append
                    .reply
                    .send(Err(LogError::backend_message(why.clone())));
            }
            Command::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Marks the log as unable to write, loudly, once per failure.
fn record_write_failure(shared: &Shared, error: &LogError) {
    let reason = format!(
        "the embedded log cannot write to {}: {}; new orders are refused until writing works again (it retries by itself)",
        shared.path.display(),
        message(error)
    );
    let Ok(mut health) = shared.health.lock() else {
        return;
    };
    if health.write_failure.is_none() {
        tracing::error!(
            path = %shared.path.display(),
            %error,
            "embedded log write failed; refusing new orders and retrying until the disk takes writes again"
        );
        health.failed_since = Some(std::time::Instant::now());
        health.attempts = 0;
    }
    health.write_failure = Some(reason);
    shared.gauges.write_failure.set(1.0);
}

/// After a write failure: closes the database, opens it again and reloads where every
/// partition ends (redb refuses every write after an I/O error until it is reopened). The
/// log takes appends again once that worked and a commit succeeded.
fn recover(shared: &Shared) {
    let attempt = || -> Result<(), LogError> {
        injected_failure(shared)?;
        if shared.min_free_bytes > 0 {
            // Writing again into a disk that is still full only fails again.
            if let Some(free) = free_bytes(&shared.path) {
                if free < shared.min_free_bytes.min(1 << 20) {
                    return Err(storage_message(format!("only {free} bytes free")));
                }
            }
        }
        drop(shared.replace_db(None)?);
        let db = open_database(&shared.path, shared.cache_bytes)?;
        // `load_state` commits a transaction: the proof that writing works again.
        let topics = match load_state(&db) {
            Ok(topics) => topics,
            Err(error) => {
                shared.replace_db(Some(Arc::new(db)))?;
                return Err(error);
            }
        };
        *shared
            .topics
            .write()
            .map_err(|_| storage_message("state lock poisoned"))? = topics;
        shared.replace_db(Some(Arc::new(db)))?;
        Ok(())
    };
    match attempt() {
        Ok(()) => {
            if let Ok(mut health) = shared.health.lock() {
                let down = health.failed_since.take().map(|t| t.elapsed());
                health.write_failure = None;
                tracing::info!(
                    path = %shared.path.display(),
                    down_ms = down.map_or(0, |d| d.as_millis() as u64),
                    "embedded log writes again"
                );
            }
            shared.gauges.write_failure.set(0.0);
            shared.appended.send_modify(|n| *n += 1);
        }
        // `/readyz` keeps the reason of the first failure; a reminder every ten seconds.
        Err(error) => {
            let Ok(mut health) = shared.health.lock() else {
                return;
            };
            health.attempts += 1;
            if health.attempts % 20 == 0 {
                tracing::error!(
                    path = %shared.path.display(),
                    %error,
                    down_s = health.failed_since.map_or(0, |t| t.elapsed().as_secs()),
                    "embedded log still cannot write; new orders are still refused"
                );
            } else {
                tracing::debug!(%error, "embedded log still cannot write");
            }
        }
    }
}

/// Free bytes (for unprivileged users) on the filesystem holding `path`.
#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Free space is not measured on this platform.
#[cfg(not(unix))]
fn free_bytes(_path: &Path) -> Option<u64> {
    None
}

/// Measures free space and updates the watermark state, logging each change once.
fn refresh_free_space(shared: &Shared) {
    let Some(free) = free_bytes(&shared.path) else {
        return;
    };
    shared.gauges.free_bytes.set(free as f64);
    if shared.min_free_bytes == 0 {
        return;
    }
    let Ok(mut health) = shared.health.lock() else {
        return;
    };
    // Once below, new orders wait for a little more than the watermark (1/16 of it, at least
    // 1 MiB), so readiness does not flap while free space hovers around it.
    let margin = (shared.min_free_bytes / 16).max(1 << 20);
    let low = if health.low_space.is_some() {
        free < shared.min_free_bytes.saturating_add(margin)
    } else {
        free < shared.min_free_bytes
    };
    match (low, health.low_space.is_some()) {
        (true, _) => {
            if health.low_space.is_none() {
                tracing::error!(
                    path = %shared.path.display(),
                    free_bytes = free,
                    min_free_bytes = shared.min_free_bytes,
                    "disk space of the embedded log is below [log.embedded] min_free_mib; refusing new orders until space is freed"
                );
            }
            health.low_space = Some(format!(
                "only {} MiB of disk space free for the embedded log, below [log.embedded] min_free_mib = {}: new orders are refused until space is freed",
                free >> 20,
                shared.min_free_bytes >> 20
            ));
            shared.gauges.low_space.set(1.0);
        }
        (false, true) => {
            tracing::info!(
                path = %shared.path.display(),
                free_bytes = free,
                "disk space of the embedded log is above [log.embedded] min_free_mib again; taking new orders"
            );
            health.low_space = None;
            shared.gauges.low_space.set(0.0);
        }
        (false, false) => {}
    }
}

/// Writes one group of appends in one durable transaction, then answers each of them.
fn commit_group(shared: &Shared, appends: Vec<Append>) {
    let mut states = match shared.topics.read() {
        Ok(topics) => topics.clone(),
        Err(_) => return,
    };
    let now = now_ms();
    let mut deliveries: Vec<Result<Delivery, LogError>> = Vec::with_capacity(appends.len());
    let mut touched = std::collections::BTreeSet::new();
    let result = (|| -> Result<(), LogError> {
        let write = shared.db()?.begin_write().map_err(storage)?;
        {
            let mut records = write.open_table(RECORDS).map_err(storage)?;
            for append in &appends {
                let Some(partitions) = states.get_mut(&append.topic) else {
                    deliveries.push(Err(LogError::UnknownTopic(append.topic.clone())));
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
                deliveries.push(Ok(Delivery {
                    partition,
                    offset: offset as i64,
                }));
            }
        }
        store_bounds(&write, &states, &touched)?;
        // Dropping the transaction without committing aborts it.
        injected_failure(shared)?;
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
            for (append, delivery) in appends.into_iter().zip(deliveries) {
                let _ = append.reply.send(delivery);
            }
        }
        Err(error) => {
            record_write_failure(shared, &error);
            // Every append gets the same cause, shared.
            let (what, cause): (_, Option<Arc<dyn std::error::Error + Send + Sync>>) = match error {
                LogError::Backend { message, source } => (message, source.map(Arc::from)),
                other => (other.to_string(), None),
            };
            let what = format!("the embedded log could not write the record: {what}");
            for append in appends {
                let _ = append.reply.send(Err(match &cause {
                    Some(cause) => LogError::backend(what.clone(), cause.clone()),
                    None => LogError::backend_message(what.clone()),
                }));
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
        .map_err(|_| storage_message("state lock poisoned"))?
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
                    &*shared.db()?,
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
            let write = shared.db()?.begin_write().map_err(storage)?;
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
                .map_err(|_| storage_message("state lock poisoned"))?
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
    db: &impl ReadableDatabase,
    topic: &str,
    partition: u32,
    state: &PartitionState,
    time_ms: i64,
) -> Result<u64, LogError> {
    let read = db.begin_read().map_err(storage)?;
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
    /// The open database (an error only while the writer reopens it after a write failure).
    fn db(&self) -> Result<Arc<Database>, LogError> {
        self.db
            .read()
            .map_err(|_| storage_message("database lock poisoned"))?
            .clone()
            .ok_or_else(|| {
                LogError::backend_message(format!(
                    "the embedded log {} is being reopened after a write failure",
                    self.path.display()
                ))
            })
    }

    /// Puts `db` in place of the open database and returns the one it replaces.
    fn replace_db(&self, db: Option<Arc<Database>>) -> Result<Option<Arc<Database>>, LogError> {
        let mut current = self
            .db
            .write()
            .map_err(|_| storage_message("database lock poisoned"))?;
        Ok(std::mem::replace(&mut *current, db))
    }

    /// Why writing does not work, while it does not.
    fn write_failure(&self) -> Option<String> {
        self.health.lock().ok()?.write_failure.clone()
    }

    /// Whether the log takes new work now: not while writing fails or disk space is low.
    fn admit(&self) -> Result<(), LogError> {
        let health = self
            .health
            .lock()
            .map_err(|_| storage_message("health lock poisoned"))?;
        if let Some(reason) = &health.write_failure {
            return Err(LogError::backend_message(reason.clone()));
        }
        if let Some(reason) = &health.low_space {
            return Err(LogError::Overloaded(reason.clone()));
        }
        Ok(())
    }

    fn partition(&self, topic: &str, partition: i32) -> Result<PartitionState, LogError> {
        let topics = self
            .topics
            .read()
            .map_err(|_| storage_message("state lock poisoned"))?;
        let partitions = topics
            .get(topic)
            .ok_or_else(|| LogError::UnknownTopic(topic.to_string()))?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| partitions.get(p).copied())
            .ok_or_else(|| {
                LogError::backend_message(format!("topic {topic:?} has no partition {partition}"))
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
                .map_err(|_| storage_message("state lock poisoned"))?;
            let missing: Vec<_> = topics
                .iter()
                .filter(|(name, _, _)| !state.contains_key(name))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let write = shared.db()?.begin_write().map_err(storage)?;
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
        // Work already inside the pipeline waits for room in the queue (and for the disk).
        let deadline = tokio::time::Instant::now() + timeout;
        let room = self.shared.slots.clone().acquire_owned();
        let slot = match tokio::time::timeout_at(deadline, room).await {
            Err(_) => return Err(LogError::Timeout(timeout)),
            Ok(Err(_)) => return Err(LogError::backend_message("the embedded log is closed")),
            Ok(Ok(slot)) => slot,
        };
        self.enqueue(topic, record, slot, timeout, deadline).await
    }

    async fn try_send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        if let Err(error) = self.shared.admit() {
            match error {
                LogError::Overloaded(_) => self.shared.gauges.refused_low_space.increment(1),
                _ => self.shared.gauges.refused_write_failure.increment(1),
            }
            return Err(error);
        }
        let slot = self.shared.slots.clone().try_acquire_owned().map_err(|_| {
            self.shared.gauges.refused_queue_full.increment(1);
            LogError::Overloaded(format!(
                "{} records are waiting to be written to the embedded log ([log.embedded] max_pending_appends)",
                self.shared.max_pending_appends
            ))
        })?;
        let deadline = tokio::time::Instant::now() + timeout;
        self.enqueue(topic, record, slot, timeout, deadline).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        let topics = self
            .shared
            .topics
            .read()
            .map_err(|_| storage_message("state lock poisoned"))?;
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
            offset_for_time_sync(&*shared.db()?, &topic, partition as u32, &state, time_ms)
                .map(|o| o as i64)
        })
        .await
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        self.shared.admit()
    }

    async fn reader(&self, group: &str) -> Result<Box<dyn PartitionReader>, LogError> {
        Ok(Box::new(EmbeddedReader {
            shared: self.shared.clone(),
            group: group.to_string(),
            assigned: Vec::new(),
            next_partition: 0,
            appended: self.shared.appended.subscribe(),
            rebalances: Vec::new(),
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let (done, finished) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .map_err(|_| LogError::backend_message("the embedded log is closed"))?;
        tokio::time::timeout(timeout, finished)
            .await
            .map_err(|_| LogError::Timeout(timeout))?
            .ok();
        Ok(())
    }
}

/// A reader of the embedded log: assigned partitions, read positions, stored positions.
struct EmbeddedReader {
    shared: Arc<Shared>,
    group: String,
    /// `(topic, partition, next offset to read)`.
    assigned: Vec<(String, u32, u64)>,
    /// Where the next poll starts, so partitions take turns.
    next_partition: usize,
    appended: watch::Receiver<u64>,
    /// Group changes not handed out yet: one process owns the embedded log, so a
    /// subscription is one assignment of every partition.
    rebalances: Vec<Rebalance>,
}

/// The position `group` stored for a partition (a redb read: call on a blocking thread).
fn stored_position(
    db: &impl ReadableDatabase,
    group: &str,
    topic: &str,
    partition: u32,
) -> Result<Option<u64>, LogError> {
    let read = db.begin_read().map_err(storage)?;
    let positions = match read.open_table(POSITIONS) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        other => other.map_err(storage)?,
    };
    Ok(positions
        .get((group, topic, partition))
        .map_err(storage)?
        .map(|v| v.value()))
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
    let read = shared.db()?.begin_read().map_err(storage)?;
    let records = read.open_table(RECORDS).map_err(storage)?;
    let count = assigned.len();
    for step in 0..count {
        if out.len() >= max {
            break;
        }
        // What retention removed is simply absent from the range; the consumer notices the
        // jump in offsets and reports it.
        let (topic, partition, position) = &mut assigned[(first + step) % count];
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
                storage_message(format!("unreadable record at {topic}/{partition}/{offset}"))
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

impl EmbeddedReader {
    /// Each assignment's partition and the offset it starts at.
    #[allow(clippy::type_complexity)]
    async fn resolve(
        &self,
        assignments: Vec<Assignment>,
    ) -> Result<(Vec<(String, u32, u64)>, Vec<Position>), LogError> {
        // Stored positions and seeks by time read the redb file: off the async threads.
        let (shared, group) = (self.shared.clone(), self.group.clone());
        let assigned = blocking(move || {
            let mut assigned = Vec::with_capacity(assignments.len());
            for a in assignments {
                let state = shared.partition(&a.topic, a.partition)?;
                let partition = a.partition as u32;
                let start = match a.start {
                    StartFrom::Committed => {
                        match stored_position(&*shared.db()?, &group, &a.topic, partition)? {
                            Some(stored) => sluice_core::log::clamp_position(
                                &a.topic,
                                a.partition,
                                stored as i64,
                                state.low as i64,
                                state.next as i64,
                            ) as u64,
                            None => state.low,
                        }
                    }
                    StartFrom::Beginning => state.low,
                    StartFrom::End => state.next,
                    StartFrom::Offset(n) | StartFrom::Resume(n) => {
                        (n.max(0) as u64).clamp(state.low, state.next)
                    }
                    StartFrom::Time(ms) => {
                        offset_for_time_sync(&*shared.db()?, &a.topic, partition, &state, ms)?
                    }
                };
                assigned.push((a.topic, partition, start));
            }
            Ok(assigned)
        })
        .await?;
        let starts = assigned
            .iter()
            .map(|(topic, partition, start)| Position {
                topic: topic.clone(),
                partition: *partition as i32,
                next_offset: *start as i64,
            })
            .collect();
        Ok((assigned, starts))
    }
}

#[async_trait]
impl PartitionReader for EmbeddedReader {
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        let (assigned, starts) = self.resolve(assignments).await?;
        self.assigned = assigned;
        self.next_partition = 0;
        Ok(starts)
    }

    async fn subscribe(&mut self, topics: &[String]) -> Result<(), LogError> {
        let mut partitions = Vec::new();
        {
            let known = self
                .shared
                .topics
                .read()
                .map_err(|_| storage_message("state lock poisoned"))?;
            for topic in topics {
                let count = known
                    .get(topic)
                    .map(|p| p.len() as i32)
                    .ok_or_else(|| LogError::UnknownTopic(topic.clone()))?;
                partitions.extend((0..count).map(|partition| TopicPartition {
                    topic: topic.clone(),
                    partition,
                }));
            }
        }
        self.assigned.clear();
        self.rebalances.push(Rebalance::Assigned(partitions));
        Ok(())
    }

    fn rebalances(&mut self) -> Vec<Rebalance> {
        std::mem::take(&mut self.rebalances)
    }

    async fn accept(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        let (accepted, starts) = self.resolve(assignments).await?;
        self.assigned
            .retain(|(t, p, _)| !accepted.iter().any(|(at, ap, _)| at == t && ap == p));
        self.assigned.extend(accepted);
        Ok(starts)
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
            .map_err(|e| LogError::backend("worker thread failed", e))?;
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
                Ok(Err(_)) => return Err(LogError::backend_message("the embedded log was closed")),
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
            let write = shared.db()?.begin_write().map_err(storage)?;
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
        let (shared, group, topic) = (self.shared.clone(), self.group.clone(), topic.to_string());
        blocking(move || {
            Ok(
                stored_position(&*shared.db()?, &group, &topic, partition as u32)?
                    .map(|n| n as i64),
            )
        })
        .await
    }
}
