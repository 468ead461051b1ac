//! [`MeteredLog`]: a [`Log`] that times every append from send to acknowledgement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Delivery, Log, LogConsumer, LogError, OutRecord, PartitionReader};
use crate::telemetry::LOG_PRODUCE_DURATION;

/// Wraps a log and records `sluice_log_produce_duration_seconds{topic}` for every
/// [`Log::send`] and [`Log::try_send`] the log acknowledged (failed appends are not timed).
/// The ingress and the stage runners share the log they are given, so wrapping it once
/// measures both. Everything else is passed through.
pub struct MeteredLog {
    inner: Arc<dyn Log>,
    /// Handles of the declared topics, built once.
    produce: HashMap<String, metrics::Histogram>,
}

impl MeteredLog {
    /// `inner`, timed, with a histogram handle for each of `topics` (normally every declared
    /// topic; an append to another topic registers its handle then and there).
    pub fn new(inner: Arc<dyn Log>, topics: impl IntoIterator<Item = String>) -> Self {
        let produce = topics
            .into_iter()
            .map(|topic| {
                let histogram = metrics::histogram!(LOG_PRODUCE_DURATION, "topic" => topic.clone());
                (topic, histogram)
            })
            .collect();
        MeteredLog { inner, produce }
    }

    fn record(&self, topic: &str, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        match self.produce.get(topic) {
            Some(histogram) => histogram.record(seconds),
            // Topics are declared before anything sends; this is not a per-record path.
            None => metrics::histogram!(LOG_PRODUCE_DURATION, "topic" => topic.to_string())
                .record(seconds),
        }
    }
}

#[async_trait]
impl Log for MeteredLog {
    async fn ensure_topics(&self, topics: &[(String, u32, u32)]) -> Result<(), LogError> {
        self.inner.ensure_topics(topics).await
    }

    async fn send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        let started = Instant::now();
        let delivery = self.inner.send(topic, record, timeout).await?;
        self.record(topic, started);
        Ok(delivery)
    }

    async fn try_send(
        &self,
        topic: &str,
        record: OutRecord,
        timeout: Duration,
    ) -> Result<Delivery, LogError> {
        let started = Instant::now();
        let delivery = self.inner.try_send(topic, record, timeout).await?;
        self.record(topic, started);
        Ok(delivery)
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.inner.partition_count(topic).await
    }

    async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), LogError> {
        self.inner.watermarks(topic, partition).await
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        time_ms: i64,
    ) -> Result<i64, LogError> {
        self.inner.offset_for_time(topic, partition, time_ms).await
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        self.inner.check_ready().await
    }

    async fn reader(&self, group: &str) -> Result<Box<dyn PartitionReader>, LogError> {
        self.inner.reader(group).await
    }

    async fn consumer(&self, group: &str) -> Result<LogConsumer, LogError> {
        self.inner.consumer(group).await
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        self.inner.flush(timeout).await
    }
}
