//! Consumer lag, per consumer group and partition, in records and in seconds.
//!
//! Every [`LogConsumer`](crate::log::LogConsumer) publishes, for each partition it reads now,
//! its position (the offset after the last record it handed out) into a process-wide registry;
//! a partition the group takes away is removed at once. The lag monitor ([`run_monitor`]),
//! which `sluice run` starts, asks the log every few seconds for the end offset of every
//! partition of the declared topics and keeps a short history of them per partition. From it:
//!
//! - `sluice_topic_end_offset{topic,partition}`: the end offset last seen;
//! - `sluice_consumer_lag_records{group,topic,partition}`: end offset − position;
//! - `sluice_consumer_lag_seconds{group,topic,partition}`: how long ago the first unread record
//!   was appended, estimated from the history (the time at which the end offset passed the
//!   position, interpolated between the two samples around it, as kafka-lag-exporter does);
//!   0 when the consumer is caught up. When the position is older than the history
//!   ([`HISTORY_SAMPLES`] samples), the oldest sample's time is used: a lower bound.
//!
//! Both backends work alike: only positions this process's consumers hold are reported, so in a
//! split deployment each process reports the partitions it reads (a partition that moved away
//! is reported as 0 by the process that lost it, so `max` or `sum` over processes is right).
//! [`snapshot`] returns the latest figures, for status pages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::log::Log;
use crate::telemetry;

/// How often `sluice run` samples end offsets, unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// End-offset samples kept per partition (at the default interval, about 12 minutes of
/// changes; samples are only added when the end offset moved).
pub const HISTORY_SAMPLES: usize = 360;

/// A consumer's position in one partition, as published into the registry.
#[derive(Debug)]
struct Slot {
    group: Arc<str>,
    topic: String,
    partition: i32,
    next: AtomicI64,
}

/// The position a consumer publishes for one partition it reads. Dropping it removes the
/// partition from the registry (the consumer no longer reads it).
#[derive(Debug)]
pub struct PublishedPosition {
    id: u64,
    slot: Arc<Slot>,
}

impl PublishedPosition {
    /// Publishes that `group` reads `partition` of `topic` and will hand out `next` next.
    pub fn new(group: &Arc<str>, topic: &str, partition: i32, next: i64) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            group: group.clone(),
            topic: topic.to_string(),
            partition,
            next: AtomicI64::new(next),
        });
        registry()
            .positions
            .lock()
            .expect("lag registry poisoned")
            .insert(id, slot.clone());
        PublishedPosition { id, slot }
    }

    /// Updates the position: the next offset the consumer hands out. Lock-free.
    pub fn set(&self, next: i64) {
        self.slot.next.store(next, Ordering::Relaxed);
    }
}

impl Drop for PublishedPosition {
    fn drop(&mut self) {
        if let Ok(mut positions) = registry().positions.lock() {
            positions.remove(&self.id);
        }
    }
}

/// The process-wide registry: positions of the consumers, figures of the monitors.
#[derive(Default)]
struct Registry {
    positions: Mutex<HashMap<u64, Arc<Slot>>>,
    figures: Mutex<Figures>,
}

#[derive(Default)]
struct Figures {
    ends: BTreeMap<(String, i32), TopicEnd>,
    lags: BTreeMap<(String, String, i32), ConsumerLag>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The end of one partition, as the lag monitor last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicEnd {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The offset the next record appended will get (the high watermark).
    pub end_offset: i64,
    /// When the monitor read it.
    pub seen_at: SystemTime,
}

/// How far one consumer group's reader of a partition in this process is behind its end.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerLag {
    /// Consumer group (`<prefix>.<stage>`, `<prefix>.sink.<shard>.sink`, …).
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the consumer hands out.
    pub position: i64,
    /// The partition's end offset when the lag was computed.
    pub end_offset: i64,
    /// Records not read yet: `end_offset − position` (0 when caught up).
    pub lag_records: i64,
    /// Seconds since the first unread record was appended (estimated; 0 when caught up).
    pub lag_seconds: f64,
}

/// What the lag monitors of this process saw last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagSnapshot {
    /// The end offset of every partition of the monitored topics, by topic and partition.
    pub topics: Vec<TopicEnd>,
    /// The lag of every partition a consumer of this process reads, by group, topic and
    /// partition.
    pub consumers: Vec<ConsumerLag>,
}

/// The latest end offsets and consumer lags of this process (empty until a lag monitor has
/// run once). Partitions no consumer of this process reads have no [`ConsumerLag`].
pub fn snapshot() -> LagSnapshot {
    let figures = registry().figures.lock().expect("lag registry poisoned");
    LagSnapshot {
        topics: figures.ends.values().cloned().collect(),
        consumers: figures.lags.values().cloned().collect(),
    }
}

/// `(group, topic, partition, next offset)` of every published position; when two consumers
/// of one group in this process hold the same partition (a hand-over), the further one.
fn positions() -> BTreeMap<(String, String, i32), i64> {
    let slots: Vec<Arc<Slot>> = registry()
        .positions
        .lock()
        .expect("lag registry poisoned")
        .values()
        .cloned()
        .collect();
    let mut out = BTreeMap::new();
    for slot in slots {
        let next = slot.next.load(Ordering::Relaxed);
        out.entry((slot.group.to_string(), slot.topic.clone(), slot.partition))
            .and_modify(|n: &mut i64| *n = (*n).max(next))
            .or_insert(next);
    }
    out
}

/// One distinct end offset of a partition: when the monitor first and last saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    end: i64,
    first_seen: Instant,
    last_seen: Instant,
}

/// The recent end offsets of one partition, oldest first.
#[derive(Debug, Clone, Default)]
pub struct EndHistory {
    samples: VecDeque<Sample>,
}

impl EndHistory {
    /// Records that the partition's end offset was `end` at `at`.
    pub fn observe(&mut self, end: i64, at: Instant) {
        match self.samples.back_mut() {
            Some(last) if last.end == end => last.last_seen = at,
            // An end offset going back (a topic re-created): start over.
            Some(last) if last.end > end => {
                self.samples.clear();
                self.push(end, at);
            }
            _ => self.push(end, at),
        }
    }

    fn push(&mut self, end: i64, at: Instant) {
        if self.samples.len() == HISTORY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            end,
            first_seen: at,
            last_seen: at,
        });
    }

    /// The latest end offset, if any was seen.
    pub fn end(&self) -> Option<i64> {
        self.samples.back().map(|s| s.end)
    }

    /// When the record at offset `position` (the first one a consumer at `position` has not
    /// read) was appended, estimated: between the last time the end offset was seen at or
    /// below `position` and the first time it was seen beyond it, assuming records came at an
    /// even pace in between. `None` when the end offset was never seen beyond `position`
    /// (caught up). For a position older than the history, the oldest sample's time.
    pub fn appended_at(&self, position: i64) -> Option<Instant> {
        let after = self.samples.iter().position(|s| s.end > position)?;
        let beyond = self.samples[after];
        if after == 0 {
            return Some(beyond.first_seen);
        }
        let before = self.samples[after - 1];
        let span = beyond
            .first_seen
            .saturating_duration_since(before.last_seen);
        // Offset `o` is taken to have been appended at before + (o + 1 − end₀)/(end₁ − end₀)
        // of the span: the last offset of the step at `first_seen` of the later sample.
        let share = (position + 1 - before.end) as f64 / (beyond.end - before.end) as f64;
        Some(before.last_seen + span.mul_f64(share.clamp(0.0, 1.0)))
    }

    /// Seconds between when the record at `position` was appended and `now`; 0 when the
    /// consumer at `position` is caught up.
    pub fn lag_seconds(&self, position: i64, now: Instant) -> f64 {
        self.appended_at(position)
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// The gauges of one consumer's partition.
struct LagGauges {
    records: metrics::Gauge,
    seconds: metrics::Gauge,
}

/// A lag monitor's state: histories and metric handles, built once per partition.
pub struct LagMonitor {
    topics: Vec<String>,
    histories: HashMap<(String, i32), EndHistory>,
    end_gauges: HashMap<(String, i32), metrics::Gauge>,
    lag_gauges: HashMap<(String, String, i32), LagGauges>,
}

impl LagMonitor {
    /// A monitor of `topics` (normally every declared topic). Registers the
    /// `sluice_log_records_skipped_total` counter of each with value 0, so it has a series
    /// from start-up.
    pub fn new(topics: Vec<String>) -> Self {
        for topic in &topics {
            metrics::counter!(telemetry::LOG_RECORDS_SKIPPED, "topic" => topic.clone())
                .increment(0);
        }
        LagMonitor {
            topics,
            histories: HashMap::new(),
            end_gauges: HashMap::new(),
            lag_gauges: HashMap::new(),
        }
    }

    /// Reads every partition's end offset once, then updates the gauges and the
    /// [`snapshot`]. A partition whose end offset cannot be read now keeps its last figures.
    pub async fn sample(&mut self, log: &dyn Log) {
        let mut ends = Vec::new();
        for topic in &self.topics {
            let count = match log.partition_count(topic).await {
                Ok(count) => count as i32,
                Err(error) => {
                    tracing::debug!(topic, %error, "lag monitor: cannot count partitions");
                    continue;
                }
            };
            for partition in 0..count {
                match log.watermarks(topic, partition).await {
                    Ok((_, high)) => ends.push((topic.clone(), partition, high)),
                    Err(error) => {
                        tracing::debug!(topic, partition, %error, "lag monitor: cannot read the end offset")
                    }
                }
            }
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.update(ends, positions(), now, wall);
    }

    /// Records end offsets seen at `now` and sets every figure from them and `positions`.
    fn update(
        &mut self,
        ends: Vec<(String, i32, i64)>,
        positions: BTreeMap<(String, String, i32), i64>,
        now: Instant,
        wall: SystemTime,
    ) {
        let mut figures = registry().figures.lock().expect("lag registry poisoned");
        for (topic, partition, end) in ends {
            let key = (topic, partition);
            self.histories
                .entry(key.clone())
                .or_default()
                .observe(end, now);
            self.end_gauges
                .entry(key.clone())
                .or_insert_with(|| {
                    metrics::gauge!(telemetry::TOPIC_END_OFFSET, "topic" => key.0.clone(), "partition" => key.1.to_string())
                })
                .set(end as f64);
            figures.ends.insert(
                key.clone(),
                TopicEnd {
                    topic: key.0,
                    partition: key.1,
                    end_offset: end,
                    seen_at: wall,
                },
            );
        }
        // Consumers of this monitor's topics that no longer read a partition show no lag.
        for (key, gauges) in &self.lag_gauges {
            if !positions.contains_key(key) {
                gauges.records.set(0.0);
                gauges.seconds.set(0.0);
                figures.lags.remove(key);
            }
        }
        for ((group, topic, partition), position) in positions {
            let Some(history) = self.histories.get(&(topic.clone(), partition)) else {
                continue; // not a topic of this monitor, or its end is not known yet
            };
            let end = history.end().unwrap_or(position);
            let lag = ConsumerLag {
                lag_records: (end - position).max(0),
                lag_seconds: history.lag_seconds(position, now),
                group,
                topic,
                partition,
                position,
                end_offset: end,
            };
            let key = (lag.group.clone(), lag.topic.clone(), lag.partition);
            let gauges = self.lag_gauges.entry(key.clone()).or_insert_with(|| {
                let labels = [
                    ("group", key.0.clone()),
                    ("topic", key.1.clone()),
                    ("partition", key.2.to_string()),
                ];
                LagGauges {
                    records: metrics::gauge!(telemetry::CONSUMER_LAG_RECORDS, &labels),
                    seconds: metrics::gauge!(telemetry::CONSUMER_LAG_SECONDS, &labels),
                }
            });
            gauges.records.set(lag.lag_records as f64);
            gauges.seconds.set(lag.lag_seconds);
            figures.lags.insert(key, lag);
        }
    }
}

/// Samples `topics` every `interval` until `stop` fires (see the [module docs](self)).
pub async fn run_monitor(
    log: Arc<dyn Log>,
    topics: Vec<String>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut monitor = LagMonitor::new(topics);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => monitor.sample(log.as_ref()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(samples: &[(i64, u64)], base: Instant) -> EndHistory {
        let mut history = EndHistory::default();
        for &(end, at) in samples {
            history.observe(end, base + Duration::from_secs(at));
        }
        history
    }

    #[test]
    fn caught_up_consumers_have_no_lag() {
        let base = Instant::now();
        let history = history(&[(0, 0), (10, 2), (10, 4)], base);
        assert_eq!(history.lag_seconds(10, base + Duration::from_secs(60)), 0.0);
        assert_eq!(history.lag_seconds(12, base + Duration::from_secs(60)), 0.0);
        assert_eq!(EndHistory::default().lag_seconds(0, base), 0.0);
    }

    #[test]
    fn the_append_time_is_interpolated_between_the_samples_around_the_position() {
        let base = Instant::now();
        // End 100 seen from 0 s to 10 s, then 200 at 20 s: offsets 100..200 came in between.
        let history = history(&[(100, 0), (100, 10), (200, 20), (300, 30)], base);
        let at = |position| {
            history
                .appended_at(position)
                .unwrap()
                .duration_since(base)
                .as_secs_f64()
        };
        // Offset 149 is the 50th of 100 records that came between 10 s and 20 s.
        assert!((at(149) - 15.0).abs() < 1e-6, "{}", at(149));
        assert!((at(199) - 20.0).abs() < 1e-6, "{}", at(199));
        assert!((at(100) - 10.1).abs() < 1e-6, "{}", at(100));
        assert!((at(249) - 25.0).abs() < 1e-6, "{}", at(249));
        let now = base + Duration::from_secs(40);
        assert!((history.lag_seconds(149, now) - 25.0).abs() < 1e-6);
        assert!((history.lag_seconds(299, now) - 10.0).abs() < 1e-6);
    }

    #[test]
    fn a_position_older_than_the_history_gets_the_oldest_time_as_a_lower_bound() {
        let base = Instant::now();
        let history = history(&[(500, 5), (600, 10)], base);
        let now = base + Duration::from_secs(65);
        assert!((history.lag_seconds(3, now) - 60.0).abs() < 1e-6);
    }

    #[test]
    fn the_history_is_bounded_and_restarts_when_the_end_goes_back() {
        let base = Instant::now();
        let mut history = EndHistory::default();
        for n in 0..(HISTORY_SAMPLES as i64 + 50) {
            history.observe(n, base + Duration::from_secs(n as u64));
        }
        assert_eq!(history.samples.len(), HISTORY_SAMPLES);
        assert_eq!(history.end(), Some(HISTORY_SAMPLES as i64 + 49));
        history.observe(3, base + Duration::from_secs(1000));
        assert_eq!(history.samples.len(), 1);
        assert_eq!(history.end(), Some(3));
    }

    #[test]
    fn published_positions_feed_the_figures_and_leave_with_their_partition() {
        let group: Arc<str> = Arc::from("lag-test.stage");
        let topic = "lag-test-topic";
        let base = Instant::now();
        let wall = SystemTime::now();
        let mut monitor = LagMonitor::new(vec![topic.to_string()]);
        let position = PublishedPosition::new(&group, topic, 0, 4);
        let ends = |end| vec![(topic.to_string(), 0, end)];
        let mine = || {
            positions()
                .into_iter()
                .filter(|((_, t, _), _)| t == topic)
                .collect::<BTreeMap<_, _>>()
        };
        monitor.update(ends(4), mine(), base, wall);
        monitor.update(ends(10), mine(), base + Duration::from_secs(2), wall);
        let lag = |snapshot: &LagSnapshot| {
            snapshot
                .consumers
                .iter()
                .find(|c| c.topic == topic)
                .cloned()
        };
        let found = lag(&snapshot()).expect("the consumer's lag");
        assert_eq!((found.lag_records, found.end_offset), (6, 10));
        assert!(found.lag_seconds > 0.0);
        assert!(snapshot()
            .topics
            .iter()
            .any(|t| t.topic == topic && t.end_offset == 10));
        position.set(10);
        monitor.update(ends(10), mine(), base + Duration::from_secs(4), wall);
        let found = lag(&snapshot()).expect("the consumer's lag");
        assert_eq!((found.lag_records, found.lag_seconds), (0, 0.0));
        drop(position);
        monitor.update(ends(10), mine(), base + Duration::from_secs(6), wall);
        assert_eq!(lag(&snapshot()), None);
    }
}
