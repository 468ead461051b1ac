//! The Kafka backend, through librdkafka (`rdkafka`).
//!
//! The producer is idempotent with `acks=all`, so an acknowledged record is on every in-sync
//! replica and retries never duplicate it. Keys are partitioned with `murmur2_random`, the
//! Java client's partitioner, so other Kafka clients agree on where a key lives.

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

use super::blocking;
use super::{
    Assignment, Delivery, Log, LogConsumer, LogError, OutRecord, Position, Record, StartFrom,
};
use crate::topology::LogConfig;

/// How long metadata and offset queries may take before they count as failed.
const META_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka cluster as a [`Log`].
pub struct KafkaLog {
    base: ClientConfig,
    producer: FutureProducer,
    /// Client for metadata and watermark queries (no group, never subscribes).
    meta: Arc<StreamConsumer>,
}

fn backend(error: KafkaError) -> LogError {
    LogError::Backend(error.to_string())
}

impl KafkaLog {
    /// Connects lazily to the brokers of `config` (librdkafka connects in the background).
    pub fn new(config: &LogConfig) -> Result<Self, LogError> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &config.brokers);
        for (key, value) in &config.kafka {
            base.set(key, value);
        }
        let producer: FutureProducer = base
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            // Give up on a record well before librdkafka's 5-minute default, so a record the
            // ingress answered 503 for is not still being retried long after.
            .set(
                "message.timeout.ms",
                config
                    .kafka
                    .get("message.timeout.ms")
                    .map_or("30000", String::as_str),
            )
            .create()
            .map_err(backend)?;
        let meta: StreamConsumer = base
            .clone()
            .set("group.id", format!("{}.meta", config.consumer_group_prefix))
            .create()
            .map_err(backend)?;
        Ok(KafkaLog {
            base,
            producer,
            meta: Arc::new(meta),
        })
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, LogError> {
        self.base.create().map_err(backend)
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
                    return Err(LogError::Backend(format!(
                        "cannot create topic {topic:?}: {code}"
                    )))
                }
            }
        }
        // Wait until every topic's metadata is visible, so consumers can be assigned at once.
        for (name, partitions, _) in topics {
            let deadline = tokio::time::Instant::now() + META_TIMEOUT;
            while self.partition_count(name).await.ok() != Some(*partitions) {
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
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let future = self.producer.send(
            FutureRecord::to(topic)
                .key(&record.key)
                .payload(&record.payload)
                .headers(headers),
            timeout,
        );
        match tokio::time::timeout(timeout, future).await {
            Err(_) => Err(LogError::Timeout(timeout)),
            Ok(Ok(delivery)) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                Err(LogError::Timeout(timeout))
            }
            Ok(Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
                _,
            ))) => Err(LogError::UnknownTopic(topic.to_string())),
            Ok(Err((error, _))) => Err(backend(error)),
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        let meta = self.meta.clone();
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
        let mut attempt = 0;
        loop {
            let meta = self.meta.clone();
            let name = topic.to_string();
            match blocking(move || {
                meta.fetch_watermarks(&name, partition, META_TIMEOUT)
                    .map_err(backend)
            })
            .await
            {
                Err(error) if attempt < 20 => {
                    tracing::debug!(%error, topic, partition, "watermarks not available yet; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return result,
            }
        }
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
        let meta = self.meta.clone();
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
        let meta = self.meta.clone();
        blocking(move || {
            let metadata = meta
                .fetch_metadata(None, Duration::from_secs(2))
                .map_err(backend)?;
            if metadata.brokers().is_empty() {
                Err(LogError::Backend("no broker is reachable".into()))
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let consumer: StreamConsumer = self
            .base
            .clone()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(backend)?;
        Ok(Box::new(KafkaConsumer {
            inner: Arc::new(consumer),
            group: group.to_string(),
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let producer = self.producer.clone();
        blocking(move || producer.flush(timeout).map_err(backend)).await
    }
}

/// A Kafka consumer with manual partition assignment and explicit commits.
struct KafkaConsumer {
    inner: Arc<StreamConsumer>,
    group: String,
}

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

impl KafkaConsumer {
    /// Resolves every start position to an offset now, so that `End` means the end at
    /// assignment time (librdkafka would resolve it later, racing producers), then assigns.
    async fn try_assign(&self, assignments: Vec<Assignment>) -> Result<(), LogError> {
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
                                super::clamp_position(&a.topic, a.partition, n, low, high)
                            }
                            _ => watermarks()?.0,
                        }
                    }
                    StartFrom::Beginning => watermarks()?.0,
                    StartFrom::End => watermarks()?.1,
                    StartFrom::Offset(n) => {
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
            }
            tracing::debug!(group, partitions = list.count(), "assigning partitions");
            consumer.assign(&list).map_err(backend)
        })
        .await
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<(), LogError> {
        // Right after topics are created their leaders may still be settling; retry briefly.
        let mut attempt = 0;
        loop {
            match self.try_assign(assignments.clone()).await {
                Err(error) if attempt < 20 => {
                    tracing::debug!(%error, "partition assignment not possible yet; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return result,
            }
        }
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        let first = match tokio::time::timeout(wait, self.inner.recv()).await {
            Err(_) => return Ok(records),
            Ok(result) => result.map_err(backend)?,
        };
        records.push(to_record(&first));
        drop(first);
        // Take whatever else is already fetched, without waiting for more.
        let mut stream = self.inner.stream();
        while records.len() < max {
            match stream.next().now_or_never() {
                Some(Some(Ok(message))) => records.push(to_record(&message)),
                Some(Some(Err(error))) => return Err(backend(error)),
                _ => break,
            }
        }
        Ok(records)
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
        blocking(move || consumer.commit(&list, CommitMode::Sync).map_err(backend)).await
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
