//! The Kafka backend, through librdkafka (`rdkafka`).
//!
//! The producer is idempotent with `acks=all`, so an acknowledged record is on every in-sync
//! replica and retries never duplicate it. Keys are partitioned with `murmur2_random`, the
//! Java client's partitioner, so other Kafka clients agree on where a key lives.

mod config;
mod partition_queues;
mod reader;
mod time_order;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub use config::{ConnectError, KafkaLogConfig};
use reader::{KafkaReader, STALL_CHECK};
use sluice_core::log::blocking;
use sluice_core::log::{Delivery, Log, LogError, OutRecord, PartitionReader};

/// How long metadata and offset queries may take before they count as failed.
pub(crate) const META_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries of a query that fails while a new topic's partition leaders settle: about five
/// seconds of pauses, growing from 50 ms to 500 ms.
pub(crate) fn settling() -> sluice_core::retry::Retry {
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
/// How long the producer waits to fill a batch (unless `linger.ms` is set): orders of
/// concurrent requests share one produce request, so the broker handles fewer of them.
const LINGER_MS: &str = "2";

/// Compression of produced batches (unless `compression.type` is set).
const COMPRESSION: &str = "lz4";

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
    /// How long a consumer group waits for a silent member before moving its partitions.
    session_timeout: Duration,
    /// What a time-ordered reader fetches ahead per partition (`time_order_lane_mib`).
    time_order_lane_bytes: usize,
}

pub(crate) fn backend(error: KafkaError) -> LogError {
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
            // Tuning: `[log.kafka.properties]` may change these two.
            .set(
                "linger.ms",
                config
                    .properties
                    .get("linger.ms")
                    .map_or(LINGER_MS, String::as_str),
            )
            .set(
                "compression.type",
                config
                    .properties
                    .get("compression.type")
                    .map_or(COMPRESSION, String::as_str),
            )
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
            session_timeout: Duration::from_millis(config.session_timeout_ms),
            time_order_lane_bytes: config.time_order_lane_bytes(),
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
        Ok(Box::new(KafkaReader::new(
            &self.base,
            group,
            self.session_timeout,
            self.time_order_lane_bytes,
        )?))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let producer = self.current_producer();
        blocking(move || producer.flush(timeout).map_err(backend)).await
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
