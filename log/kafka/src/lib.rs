//! The Kafka backend, through librdkafka (`rdkafka`).
//!
//! The producer is idempotent with `acks=all`, so an acknowledged record is on every in-sync
//! replica and retries never duplicate it. Keys are partitioned with `murmur2_random`, the
//! Java client's partitioner, so other Kafka clients agree on where a key lives.

mod config;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub use config::{ConnectError, KafkaLogConfig};
use sluice_core::log::blocking;
use sluice_core::log::{
    Assignment, Delivery, Log, LogError, OutRecord, PartitionReader, Position, Record, StartFrom,
};

/// How long metadata and offset queries may take before they count as failed.
const META_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries of a query that fails while a new topic's partition leaders settle: about five
/// seconds of pauses, growing from 50 ms to 500 ms.
fn settling() -> sluice_core::retry::Retry {
    sluice_core::retry::Retry::new(sluice_core::retry::Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(500),
    ))
    .max_attempts(15)
}

/// Most records the producer holds while the broker has not acknowledged them (unless
/// `queue.buffering.max.messages` is set in `[log.kafka]`). Beyond it new orders get 503 at
/// once, so a slow or absent broker cannot grow the process's memory without bound.
const QUEUE_MAX_MESSAGES: &str = "100000";
/// How often every client refreshes its metadata (unless `topic.metadata.refresh.interval.ms`
/// is set in `[log.kafka]`), which bounds how long a partition can stay without a known leader.
const METADATA_REFRESH_MS: &str = "5000";
/// Records waiting this long without any acknowledgement make the log not ready.
const ACK_STALL: Duration = Duration::from_secs(2);
/// Records waiting this long without any acknowledgement while the broker answers metadata
/// queries mean the producer is stuck (librdkafka can be left so after a broker pause): it is
/// replaced, at most once per this period.
const PRODUCER_STUCK: Duration = Duration::from_secs(20);
/// Most KiB of records the producer holds (unless `queue.buffering.max.kbytes` is set).
const QUEUE_MAX_KBYTES: &str = "65536";

/// Sends waiting for the broker, to tell a broker that stopped acknowledging.
#[derive(Default)]
struct AckWatch {
    /// Sends waiting for their acknowledgement now.
    waiting: AtomicI64,
    /// When the last acknowledgement came, or when sends started waiting with none waiting
    /// before (ms since the Unix epoch).
    progress_ms: AtomicI64,
    /// When the last acknowledgement came (ms since the Unix epoch).
    acked_ms: AtomicI64,
}

/// One waiting send; dropping it (answered, failed or given up) ends the wait.
struct Waiting<'a>(&'a AckWatch);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AckWatch {
    fn waiting(watch: &AckWatch) -> Waiting<'_> {
        if watch.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            watch
                .progress_ms
                .fetch_max(sluice_core::order::now_ms(), Ordering::Relaxed);
        }
        Waiting(watch)
    }

    fn acknowledged(&self) {
        let now = sluice_core::order::now_ms();
        self.progress_ms.fetch_max(now, Ordering::Relaxed);
        self.acked_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Starts the stall clock again (a new producer took over the waiting).
    fn restart(&self) {
        self.progress_ms
            .fetch_max(sluice_core::order::now_ms(), Ordering::Relaxed);
    }

    /// Whether the broker acknowledged a record within `window`.
    fn acknowledged_within(&self, window: Duration) -> bool {
        sluice_core::order::now_ms() - self.acked_ms.load(Ordering::Relaxed)
            <= window.as_millis() as i64
    }

    /// `(waiting sends, ms without progress)` when sends have waited longer than `limit`
    /// without any acknowledgement.
    fn stalled(&self, limit: Duration) -> Option<(i64, i64)> {
        let waiting = self.waiting.load(Ordering::Relaxed);
        let silent_ms = sluice_core::order::now_ms() - self.progress_ms.load(Ordering::Relaxed);
        (waiting > 0 && silent_ms > limit.as_millis() as i64).then_some((waiting, silent_ms))
    }
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A Kafka cluster as a [`Log`].
pub struct KafkaLog {
    base: ClientConfig,
    /// The producer's settings, to build a new one after a fatal error.
    producer_config: ClientConfig,
    /// The idempotent producer; replaced when librdkafka declares it unusable, or when it
    /// stays stuck while the broker answers.
    producer: std::sync::RwLock<FutureProducer>,
    /// When the producer was last replaced because it was stuck.
    producer_renewed: std::sync::Mutex<std::time::Instant>,
    /// Whether a sender is asking the broker whether the producer is stuck.
    producer_probing: std::sync::atomic::AtomicBool,
    /// Sends waiting for an acknowledgement, and since when they have been waiting without
    /// one, for readiness.
    acks: AckWatch,
    /// Client for metadata and watermark queries (no group, never subscribes); replaced when
    /// its queries keep failing while the broker answers others.
    meta: std::sync::RwLock<Arc<StreamConsumer>>,
    /// The metadata client's settings.
    meta_config: ClientConfig,
    /// When the metadata client was last replaced.
    meta_renewed: std::sync::Mutex<std::time::Instant>,
}

fn backend(error: KafkaError) -> LogError {
    LogError::backend("Kafka", error)
}

impl KafkaLog {
    /// Connects lazily to the brokers of `config` (librdkafka connects in the background);
    /// its own metadata client's group is `<group_prefix>.meta`.
    pub fn new(config: &KafkaLogConfig, group_prefix: &str) -> Result<Self, LogError> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &config.brokers);
        // After a broker comes back, librdkafka can be left with partitions whose "new leader
        // is not found in cache"; they stay without a leader (no fetches, no produces) until
        // the next periodic metadata refresh, which is 5 minutes by default.
        base.set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS);
        for (key, value) in &config.properties {
            base.set(key, value);
        }
        let mut producer_config = base.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set(
                "queue.buffering.max.messages",
                config
                    .properties
                    .get("queue.buffering.max.messages")
                    .map_or(QUEUE_MAX_MESSAGES, String::as_str),
            )
            .set(
                "queue.buffering.max.kbytes",
                config
                    .properties
                    .get("queue.buffering.max.kbytes")
                    .map_or(QUEUE_MAX_KBYTES, String::as_str),
            )
            // Give up on a record well before librdkafka's 5-minute default, so a record the
            // ingress answered 503 for is not still being retried long after.
            .set(
                "message.timeout.ms",
                config
                    .properties
                    .get("message.timeout.ms")
                    .map_or("30000", String::as_str),
            );
        let producer: FutureProducer = producer_config.create().map_err(backend)?;
        let mut meta_config = base.clone();
        meta_config.set("group.id", format!("{group_prefix}.meta"));
        let meta: StreamConsumer = meta_config.create().map_err(backend)?;
        Ok(KafkaLog {
            base,
            producer_config,
            producer: std::sync::RwLock::new(producer),
            producer_renewed: std::sync::Mutex::new(std::time::Instant::now()),
            producer_probing: std::sync::atomic::AtomicBool::new(false),
            acks: AckWatch::default(),
            meta: std::sync::RwLock::new(Arc::new(meta)),
            meta_config,
            meta_renewed: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    /// The metadata client in use now.
    fn meta(&self) -> Arc<StreamConsumer> {
        match self.meta.read() {
            Ok(meta) => meta.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the metadata client, at most once per [`STALL_CHECK`]: like a consumer's, it
    /// can be left unable to reach a broker that came back.
    fn renew_meta(&self) {
        let Ok(mut renewed) = self.meta_renewed.lock() else {
            return;
        };
        if renewed.elapsed() < STALL_CHECK {
            return;
        }
        *renewed = std::time::Instant::now();
        match self.meta_config.create::<StreamConsumer>() {
            Ok(fresh) => {
                if let Ok(mut meta) = self.meta.write() {
                    let old = std::mem::replace(&mut *meta, Arc::new(fresh));
                    tokio::task::spawn_blocking(move || drop(old));
                }
            }
            Err(error) => tracing::warn!(%error, "cannot create a new Kafka metadata client"),
        }
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, LogError> {
        self.base.create().map_err(backend)
    }

    /// Produces one record: waits at most `queue_wait` for room in the producer's bounded
    /// queue, then at most `timeout` in all for the acknowledgement.
    async fn produce(
        &self,
        topic: &str,
        record: &OutRecord,
        queue_wait: Duration,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let producer = self.current_producer();
        let _waiting = AckWatch::waiting(&self.acks);
        let future = producer.send(
            FutureRecord::to(topic)
                .key(&record.key)
                .payload(&record.payload)
                .headers(headers),
            queue_wait,
        );
        match tokio::time::timeout(timeout, future).await {
            Err(_) => {
                self.replace_if_stuck(&producer).await;
                Err(LogError::Timeout(timeout))
            }
            Ok(Ok(delivery)) => {
                self.acks.acknowledged();
                Ok(Delivery {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                self.replace_if_stuck(&producer).await;
                Err(LogError::Timeout(timeout))
            }
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))) => {
                Err(LogError::Overloaded(
                    "the Kafka producer queue is full: the broker has not acknowledged \
                     `queue.buffering.max.messages` records or `queue.buffering.max.kbytes` KiB"
                        .into(),
                ))
            }
            Ok(Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
                _,
            ))) => Err(LogError::UnknownTopic(topic.to_string())),
            Ok(Err((error, _))) => {
                self.replace_if_fatal(&producer);
                Err(backend(error))
            }
        }
    }

    /// The producer in use now.
    fn current_producer(&self) -> FutureProducer {
        match self.producer.read() {
            Ok(producer) => producer.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether a broker answers a metadata query within 2 s. A failed query renews the
    /// metadata client, which can itself be left stuck after a broker came back.
    async fn broker_answers(&self) -> Result<(), LogError> {
        let meta = self.meta();
        let answer = blocking(move || {
            let metadata = meta
                .fetch_metadata(None, Duration::from_secs(2))
                .map_err(backend)?;
            if metadata.brokers().is_empty() {
                Err(LogError::backend_message("no broker is reachable"))
            } else {
                Ok(())
            }
        })
        .await;
        if answer.is_err() {
            self.renew_meta();
        }
        answer
    }

    /// After a broker pause, librdkafka can leave the producer connected but delivering
    /// nothing for minutes while the broker takes records again (the consumers' stall
    /// watchdog handles the same for reads). When records have waited [`PRODUCER_STUCK`]
    /// without any acknowledgement and the broker answers a metadata query, the producer is
    /// replaced. Its records are purged: their senders see an error and retry (stages), or
    /// were answered 503 already (the ingress); one that reached the broker anyway is a
    /// duplicate the shards absorb by order id.
    async fn replace_if_stuck(&self, stuck: &FutureProducer) {
        let recently_renewed = self
            .producer_renewed
            .lock()
            .map_or(true, |renewed| renewed.elapsed() < PRODUCER_STUCK);
        if recently_renewed || self.acks.stalled(PRODUCER_STUCK).is_none() {
            return;
        }
        // One sender asks the broker; the others, timing out at the same moment, do not.
        if self.producer_probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let _probing = ClearOnDrop(&self.producer_probing);
        if self.broker_answers().await.is_err() {
            return; // the broker is away: a new producer would not help
        }
        {
            let Ok(mut renewed) = self.producer_renewed.lock() else {
                return;
            };
            if renewed.elapsed() < PRODUCER_STUCK {
                return;
            }
            *renewed = std::time::Instant::now();
        }
        if self.replace_producer(stuck) {
            tracing::error!(
                stuck_s = PRODUCER_STUCK.as_secs(),
                "the Kafka producer has delivered nothing although the broker answers; replaced it with a new one"
            );
            self.acks.restart();
        }
    }

    /// An idempotent producer can fail for good (librdkafka's fatal errors, such as a sequence
    /// desynchronisation after a broker came back): every later record would fail too. Replace
    /// it with a new producer, so the log recovers without a restart. Records that failed are
    /// retried by their senders (stages retry; the ingress answered 503).
    fn replace_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        if self.replace_producer(failed) {
            tracing::error!(%code, reason, "the Kafka producer failed for good; replaced it with a new one");
        }
    }

    /// Puts a new producer in place of `old`, unless another sender replaced it already.
    /// Whether it did.
    fn replace_producer(&self, old: &FutureProducer) -> bool {
        let Ok(mut current) = self.producer.write() else {
            return false;
        };
        if current.client().native_ptr() != old.client().native_ptr() {
            return false; // replaced already
        }
        match self.producer_config.create::<FutureProducer>() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, fresh);
                // Dropping a producer purges its queue and waits for its threads: not on an
                // async worker.
                tokio::task::spawn_blocking(move || drop(old));
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot create a new Kafka producer; will try again");
                false
            }
        }
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topics(&self, topics: &[(String, u32, u32)]) -> Result<(), LogError> {
        let admin = self.admin()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions, replication)| {
                NewTopic::new(
                    name,
                    *partitions as i32,
                    TopicReplication::Fixed(*replication as i32),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(META_TIMEOUT));
        for result in admin.create_topics(&new, &options).await.map_err(backend)? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(LogError::backend(
                        format!("cannot create topic {topic:?}"),
                        code,
                    ))
                }
            }
        }
        // Wait until every topic's metadata is visible, so consumers can be assigned at once.
        // A topic that existed with another partition count shows it at once: the caller
        // compares the counts.
        for (name, _, _) in topics {
            let deadline = tokio::time::Instant::now() + META_TIMEOUT;
            while self.partition_count(name).await.is_err() {
                if tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        // Waits up to `timeout` for room in the producer's bounded queue.
        self.produce(topic, &record, timeout, timeout).await
    }

    async fn try_send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        // A full producer queue (the broker is slow or away) refuses the record at once.
        self.produce(topic, &record, Duration::ZERO, timeout).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        let meta = self.meta();
        let topic = topic.to_string();
        blocking(move || {
            let metadata = meta
                .fetch_metadata(Some(&topic), META_TIMEOUT)
                .map_err(backend)?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok(t.partitions().len() as u32)
                }
                _ => Err(LogError::UnknownTopic(topic)),
            }
        })
        .await
    }

    async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), LogError> {
        // Right after a topic is created its leaders may still be moving in; retry briefly.
        settling()
            .run(
                || {
                    let meta = self.meta();
                    let name = topic.to_string();
                    blocking(move || {
                        meta.fetch_watermarks(&name, partition, META_TIMEOUT)
                            .map_err(backend)
                    })
                },
                |_| sluice_core::retry::Verdict::Retry,
                |error, _| tracing::debug!(%error, topic, partition, "watermarks not available yet; retrying"),
            )
            .await
            .map_err(sluice_core::retry::GaveUp::into_error)
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        time_ms: i64,
    ) -> Result<i64, LogError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(time_ms))
            .map_err(backend)?;
        let meta = self.meta();
        let found = blocking(move || {
            let found = meta
                .offsets_for_times(list, META_TIMEOUT)
                .map_err(backend)?;
            Ok(match found.elements().first().map(|e| e.offset()) {
                Some(Offset::Offset(n)) => Some(n),
                _ => None,
            })
        })
        .await?;
        match found {
            Some(n) => Ok(n),
            None => Ok(self.watermarks(topic, partition).await?.1),
        }
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        // A broker that is frozen rather than gone keeps its connections open, so metadata may
        // still look fine: records waiting for an acknowledgement that does not come are the
        // surer sign.
        if let Some((waiting, silent_ms)) = self.acks.stalled(ACK_STALL) {
            return Err(LogError::backend_message(format!(
                "the broker has acknowledged none of {waiting} waiting records for {:.1}s",
                silent_ms as f64 / 1000.0
            )));
        }
        if self.acks.acknowledged_within(ACK_STALL) {
            return Ok(()); // the broker is taking records right now
        }
        self.broker_answers().await
    }

    async fn reader(&self, group: &str) -> Result<Box<dyn PartitionReader>, LogError> {
        let mut config = self.base.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50");
        let consumer: StreamConsumer = config.create().map_err(backend)?;
        Ok(Box::new(KafkaReader {
            inner: Arc::new(consumer),
            group: group.to_string(),
            config,
            commit_failing_since: None,
            positions: Vec::new(),
            last_progress: std::time::Instant::now(),
            last_stall_check: std::time::Instant::now(),
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let producer = self.current_producer();
        blocking(move || producer.flush(timeout).map_err(backend)).await
    }
}

/// A Kafka consumer with manual partition assignment and explicit commits.
struct KafkaReader {
    inner: Arc<StreamConsumer>,
    group: String,
    /// The client settings, to build a fresh client when this one is stuck.
    config: ClientConfig,
    /// Since when commits have been failing, if they are.
    commit_failing_since: Option<std::time::Instant>,
    /// The next offset this reader returns from each assigned partition.
    positions: Vec<Position>,
    /// When this reader last returned a record, or was (re)assigned.
    last_progress: std::time::Instant,
    /// When it last checked for a stall.
    last_stall_check: std::time::Instant,
}

/// A reader that returned nothing for this long checks whether its partitions hold records it
/// is not getting; if so, or if it cannot tell, it replaces its client.
const STALL_CHECK: Duration = Duration::from_secs(10);

/// Commits failing this long (or one commit attempt taking this long) mean the client is
/// stuck, typically still "waiting for coordinator" after the broker came back: a fresh client
/// finds the coordinator again.
const STUCK_COMMITS: Duration = Duration::from_secs(10);

fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    (
                        header.key.to_string(),
                        header.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().unwrap_or_default().to_vec(),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp_ms: message.timestamp().to_millis(),
    }
}

impl KafkaReader {
    /// Replaces the client with a fresh one that has no assignment; the consumer rewinds it
    /// to its positions before reading again.
    fn renew(&mut self) -> Result<(), LogError> {
        let fresh: StreamConsumer = self.config.create().map_err(backend)?;
        let old = std::mem::replace(&mut self.inner, Arc::new(fresh));
        // Closing a client waits for its threads: not on an async worker.
        tokio::task::spawn_blocking(move || drop(old));
        self.commit_failing_since = None;
        self.positions.clear(); // the fresh client has no assignment yet
        Ok(())
    }

    /// Assigns exactly these offsets (a local operation, no round trip to the broker).
    async fn assign_exact(&mut self, positions: Vec<Position>) -> Result<(), LogError> {
        let mut list = TopicPartitionList::new();
        for p in &positions {
            list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
                .map_err(backend)?;
        }
        let consumer = self.inner.clone();
        blocking(move || consumer.assign(&list).map_err(backend)).await?;
        self.positions = positions;
        self.last_progress = std::time::Instant::now();
        Ok(())
    }

    /// Whether an assigned partition holds records beyond this reader's position, or the
    /// client cannot even tell (its watermark queries fail).
    async fn lagging(&self) -> bool {
        let consumer = self.inner.clone();
        let positions = self.positions.clone();
        blocking(move || {
            Ok(positions.iter().any(|p| {
                match consumer.fetch_watermarks(&p.topic, p.partition, Duration::from_secs(5)) {
                    Ok((_, high)) => high > p.next_offset,
                    Err(_) => true,
                }
            }))
        })
        .await
        .unwrap_or(true)
    }

    /// After librdkafka has lost and regained the broker, a client can stop fetching some
    /// partitions for good ("new leader not found in cache") without reporting anything: a
    /// reader that got nothing for [`STALL_CHECK`] while its partitions hold more records
    /// replaces its client and assigns it at its positions.
    async fn recover_if_stalled(&mut self) -> Result<(), LogError> {
        if self.positions.is_empty()
            || self.last_progress.elapsed() < STALL_CHECK
            || self.last_stall_check.elapsed() < STALL_CHECK
        {
            return Ok(());
        }
        self.last_stall_check = std::time::Instant::now();
        if !self.lagging().await {
            return Ok(());
        }
        tracing::warn!(
            group = self.group,
            idle_s = self.last_progress.elapsed().as_secs(),
            "the Kafka consumer client gets no records although its partitions hold more; replacing it"
        );
        let positions = self.positions.clone();
        self.renew()?;
        self.assign_exact(positions).await
    }

    /// Resolves every start position to an offset now, so that `End` means the end at
    /// assignment time (librdkafka would resolve it later, racing producers), then assigns.
    /// Returns the offset each partition starts at.
    async fn try_assign(&self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        let consumer = self.inner.clone();
        let group = self.group.clone();
        blocking(move || {
            let mut committed = TopicPartitionList::new();
            for a in assignments
                .iter()
                .filter(|a| a.start == StartFrom::Committed)
            {
                committed.add_partition(&a.topic, a.partition);
            }
            let committed = if committed.count() > 0 {
                consumer
                    .committed_offsets(committed, META_TIMEOUT)
                    .map_err(backend)?
            } else {
                committed
            };
            let mut list = TopicPartitionList::new();
            let mut starts = Vec::with_capacity(assignments.len());
            for a in &assignments {
                let watermarks = || {
                    consumer
                        .fetch_watermarks(&a.topic, a.partition, META_TIMEOUT)
                        .map_err(backend)
                };
                let offset = match a.start {
                    StartFrom::Committed => {
                        match committed
                            .find_partition(&a.topic, a.partition)
                            .map(|e| e.offset())
                        {
                            Some(Offset::Offset(n)) => {
                                let (low, high) = watermarks()?;
                                sluice_core::log::clamp_position(
                                    &a.topic,
                                    a.partition,
                                    n,
                                    low,
                                    high,
                                )
                            }
                            _ => watermarks()?.0,
                        }
                    }
                    StartFrom::Beginning => watermarks()?.0,
                    StartFrom::End => watermarks()?.1,
                    StartFrom::Offset(n) | StartFrom::Resume(n) => {
                        let (low, high) = watermarks()?;
                        n.clamp(low, high)
                    }
                    StartFrom::Time(ms) => {
                        let mut query = TopicPartitionList::new();
                        query
                            .add_partition_offset(&a.topic, a.partition, Offset::Offset(ms))
                            .map_err(backend)?;
                        let found = consumer
                            .offsets_for_times(query, META_TIMEOUT)
                            .map_err(backend)?;
                        match found.elements().first().map(|e| e.offset()) {
                            Some(Offset::Offset(n)) => n,
                            // No record at or after the time: start at the end.
                            _ => watermarks()?.1,
                        }
                    }
                };
                list.add_partition_offset(&a.topic, a.partition, Offset::Offset(offset))
                    .map_err(backend)?;
                starts.push(Position {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    next_offset: offset,
                });
            }
            tracing::debug!(group, partitions = list.count(), "assigning partitions");
            consumer.assign(&list).map_err(backend)?;
            Ok(starts)
        })
        .await
    }
}

#[async_trait]
impl PartitionReader for KafkaReader {
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        // Right after topics are created their leaders may still be settling; retry briefly.
        let starts = settling()
            .run(
                || self.try_assign(assignments.clone()),
                |_| sluice_core::retry::Verdict::Retry,
                |error, _| tracing::debug!(%error, "partition assignment not possible yet; retrying"),
            )
            .await
            .map_err(sluice_core::retry::GaveUp::into_error)?;
        self.positions = starts.clone();
        self.last_progress = std::time::Instant::now();
        Ok(starts)
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        // Error events (the broker going away, a failed connection) are notices: librdkafka
        // reconnects by itself and loses no record over them. They queue up while the broker
        // is away, so take them all now, or a caller that pauses after each error would still
        // be working through stale notices long after the broker is back.
        let deadline = tokio::time::Instant::now() + wait;
        let mut notice = None;
        let first = loop {
            match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                Ok(Ok(message)) => break message,
                Ok(Err(error)) => notice = Some(error),
                Err(_) => {
                    self.recover_if_stalled().await?;
                    return match notice {
                        Some(error) => Err(backend(error)),
                        None => Ok(records),
                    };
                }
            }
        };
        records.push(to_record(&first));
        drop(first);
        // Take whatever else is already fetched, without waiting for more. An error event in
        // that stream (a broker going away, say) ends the batch but never discards the records
        // already taken: librdkafka's position is past them, so they would be lost.
        let mut stream = self.inner.stream();
        while records.len() < max {
            match stream.next().now_or_never() {
                Some(Some(Ok(message))) => records.push(to_record(&message)),
                Some(Some(Err(error))) => {
                    tracing::warn!(group = self.group, %error, "the Kafka consumer reported an error; returning the records read so far");
                    break;
                }
                _ => break,
            }
        }
        self.last_progress = std::time::Instant::now();
        for record in &records {
            if let Some(position) = self
                .positions
                .iter_mut()
                .find(|p| p.partition == record.partition && p.topic == record.topic)
            {
                position.next_offset = position.next_offset.max(record.offset + 1);
            }
        }
        Ok(records)
    }

    /// Assigns the exact offsets, with no round trip to the broker, so a rewind works at once
    /// even while the broker is away; nothing is done when the client is already there. An
    /// offset that retention removed meanwhile makes librdkafka start at the oldest record
    /// (`auto.offset.reset=earliest`), which the consumer sees as a gap and reports.
    async fn rewind(&mut self, positions: Vec<Position>) -> Result<Vec<Position>, LogError> {
        // After an error event that lost nothing (this reader returns what it took), the
        // client is already where the consumer wants it: assigning again would only restart
        // its fetches, and while the broker is away every restart reports the outage again.
        if positions != self.positions {
            self.assign_exact(positions.clone()).await?;
        }
        Ok(positions)
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for p in positions {
            list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
                .map_err(backend)?;
        }
        let consumer = self.inner.clone();
        let started = std::time::Instant::now();
        // A synchronous commit can block for most of a minute while the client waits for a
        // coordinator; stop waiting once it counts as stuck (the commit is retried, and a late
        // success of the abandoned one only moves the position back: records are re-read).
        let commit = blocking(move || consumer.commit(&list, CommitMode::Sync).map_err(backend));
        let result = tokio::time::timeout(STUCK_COMMITS, commit)
            .await
            .unwrap_or(Err(LogError::Timeout(STUCK_COMMITS)));
        match &result {
            Ok(()) => self.commit_failing_since = None,
            Err(error) => {
                let since = *self.commit_failing_since.get_or_insert(started);
                if since.elapsed() >= STUCK_COMMITS || started.elapsed() >= STUCK_COMMITS {
                    tracing::warn!(group = self.group, %error, "commits keep failing; replacing the Kafka consumer client");
                    self.renew()?;
                }
            }
        }
        result
    }

    async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>, LogError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let consumer = self.inner.clone();
        blocking(move || {
            let found = consumer
                .committed_offsets(list, META_TIMEOUT)
                .map_err(backend)?;
            Ok(found.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_waiting_without_an_acknowledgement_are_a_stall() {
        let watch = AckWatch::default();
        assert_eq!(watch.stalled(Duration::ZERO), None, "nothing waits");
        let waiting = AckWatch::waiting(&watch);
        assert_eq!(
            watch.stalled(Duration::from_secs(60)),
            None,
            "not waiting long"
        );
        watch
            .progress_ms
            .store(sluice_core::order::now_ms() - 5_000, Ordering::Relaxed);
        let (count, silent_ms) = watch.stalled(Duration::from_secs(2)).unwrap();
        assert_eq!(count, 1);
        assert!(silent_ms >= 5_000);
        watch.acknowledged();
        assert_eq!(
            watch.stalled(Duration::from_secs(2)),
            None,
            "an ack is progress"
        );
        watch
            .progress_ms
            .store(sluice_core::order::now_ms() - 5_000, Ordering::Relaxed);
        drop(waiting);
        assert_eq!(
            watch.stalled(Duration::from_secs(2)),
            None,
            "an idle producer is not stalled however old its last ack"
        );
    }
}
