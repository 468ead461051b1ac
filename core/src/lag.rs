//! Consumer lag, per consumer group and partition, in records and in seconds.
//!
//! Every [`LogConsumer`](crate::log::LogConsumer) publishes, for each partition it reads now,
//! its position (the offset after the last record it handed out) into a process-wide registry;
//! a partition the group takes away is removed at once. The lag monitor ([`run_monitor`]),
//! which `sluice run` starts, asks the log every few seconds for the end offset of every
//! partition of the declared topics and keeps a history of them per partition. From it:
//!
//! - `sluice_topic_end_offset{topic,partition}`: the end offset last seen;
//! - `sluice_consumer_lag_records{group,topic,partition}`: end offset − position;
//! - `sluice_consumer_lag_seconds{group,topic,partition}`: how long ago the first unread record
//!   was appended, estimated from the history (the time at which the end offset passed the
//!   position, interpolated between the two samples around it, as kafka-lag-exporter does);
//!   0 when the consumer is caught up. The history keeps its [`DENSE_SAMPLES`] latest samples
//!   as they came and thins older ones (see [`EndHistory`]), so it reaches back to the first
//!   sample the monitor took with bounded memory, and the lag of a stuck consumer keeps
//!   growing. A position older than every retained sample (appended before this process's
//!   monitor started) gets the oldest sample's time: the figure is then a **lower bound**.
//!
//! Each partition's end offset is stamped with the time its own answer came, and the
//! partitions are asked concurrently. A partition whose end cannot be read keeps its last end
//! offset (and `lag_records`), while `lag_seconds` keeps growing: it is the time since the
//! first unread record was appended, which needs no fresh end offset.
//!
//! A partition the group assigned to a consumer that has not started reading it yet (its claim
//! has not succeeded: a sink whose shard is down) is published with the last position this
//! process knew for it, or, when it knows none, as [`UNKNOWN_POSITION`]: the monitor then
//! counts its lag from the partition's start (its low watermark), as if nothing had been read:
//! an upper bound in records, which the claim corrects once it succeeds. A lag of 0 there
//! would hide the backlog during exactly the outage that builds it.
//!
//! Replays' consumer groups (their names contain `.replay.`, see `sluice replay`) are not
//! reported: a replay reads a bounded range, and reports its progress through
//! `sluice_replay_remaining_records`.
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

/// The latest end-offset samples kept as they came, per partition (at the default interval,
/// about 12 minutes of changes; samples are only added when the end offset moved).
pub const DENSE_SAMPLES: usize = 360;

/// Older samples kept per partition, ever sparser (see [`EndHistory`]).
pub const SPARSE_SAMPLES: usize = 120;

/// Most samples kept per partition.
pub const HISTORY_SAMPLES: usize = DENSE_SAMPLES + SPARSE_SAMPLES;

/// How many end offsets the monitor asks for at once.
const CONCURRENT_QUERIES: usize = 16;

/// The position a consumer publishes for a partition it was given but whose start it does not
/// know yet (see the [module docs](self)): its lag counts from the partition's start.
pub const UNKNOWN_POSITION: i64 = -1;

/// Whether `group` is a replay's consumer group (not reported, see the [module docs](self)).
pub fn is_replay_group(group: &str) -> bool {
    group.contains(".replay.")
}

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

    /// Publishes that `group` was given `partition` of `topic` but does not know yet where it
    /// starts reading it ([`UNKNOWN_POSITION`]).
    pub fn unknown(group: &Arc<str>, topic: &str, partition: i32) -> Self {
        PublishedPosition::new(group, topic, partition, UNKNOWN_POSITION)
    }

    /// Updates the position: the next offset the consumer hands out. Lock-free.
    pub fn set(&self, next: i64) {
        self.slot.next.store(next, Ordering::Relaxed);
    }

    /// The position last published.
    pub fn get(&self) -> i64 {
        self.slot.next.load(Ordering::Relaxed)
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
    /// The next offset the consumer hands out (the partition's low watermark while the consumer
    /// does not know it yet: see the [module docs](self)).
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

/// `(group, topic, partition, next offset)` of every published position but replays'; when
/// two consumers of one group in this process hold the same partition (a hand-over), the
/// further one.
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
        if is_replay_group(&slot.group) {
            continue;
        }
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

/// The end offsets of one partition, oldest first.
///
/// The [`DENSE_SAMPLES`] latest are kept as they came. When the history is full, every other
/// one of the older samples is dropped (never the oldest), so the older a stretch of the
/// history, the sparser its samples: memory stays bounded ([`HISTORY_SAMPLES`]) while the
/// history reaches back to the first sample. Dropping a sample only widens the interval an
/// append time is interpolated in; the estimate stays between the two samples kept around it.
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
        if self.samples.len() >= HISTORY_SAMPLES {
            self.thin();
        }
        self.samples.push_back(Sample {
            end,
            first_seen: at,
            last_seen: at,
        });
    }

    /// Drops every other sample of the sparse part (the samples before the dense latest ones),
    /// keeping the oldest sample and the last sparse one.
    fn thin(&mut self) {
        let sparse = self.samples.len().saturating_sub(DENSE_SAMPLES);
        let mut index = 0;
        self.samples.retain(|_| {
            let keep = index == 0 || index + 1 >= sparse || index % 2 == 0;
            index += 1;
            keep
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
    /// (caught up). For a position older than the history, the oldest sample's time: a lower
    /// bound, since the record was appended before it.
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
    /// consumer at `position` is caught up. A lower bound when `position` is older than the
    /// history (see [`EndHistory::appended_at`]).
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
    /// The low watermark last seen per partition: where an [`UNKNOWN_POSITION`] counts from.
    starts: HashMap<(String, i32), i64>,
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
            starts: HashMap::new(),
            end_gauges: HashMap::new(),
            lag_gauges: HashMap::new(),
        }
    }

    /// Reads every partition's watermarks once ([`CONCURRENT_QUERIES`] at a time, each stamped
    /// with the time of its own answer), then updates the gauges and the [`snapshot`]. A
    /// partition whose end offset cannot be read now keeps its last end offset, and its lag in
    /// seconds keeps growing.
    pub async fn sample(&mut self, log: &dyn Log) {
        use futures::StreamExt;
        let mut partitions = Vec::new();
        for topic in &self.topics {
            match log.partition_count(topic).await {
                Ok(count) => partitions.extend((0..count as i32).map(|p| (topic.clone(), p))),
                Err(error) => {
                    tracing::debug!(topic, %error, "lag monitor: cannot count partitions")
                }
            }
        }
        let ends: Vec<Watermarks> = futures::stream::iter(partitions)
            .map(|(topic, partition)| async move {
                let answer = log.watermarks(&topic, partition).await;
                let (at, wall) = (Instant::now(), SystemTime::now());
                match answer {
                    Ok((low, high)) => Some(Watermarks {
                        topic,
                        partition,
                        low,
                        high,
                        at,
                        wall,
                    }),
                    Err(error) => {
                        tracing::debug!(topic, partition, %error, "lag monitor: cannot read the end offset");
                        None
                    }
                }
            })
            .buffer_unordered(CONCURRENT_QUERIES)
            .filter_map(|found| async move { found })
            .collect()
            .await;
        self.update(ends, positions(), Instant::now());
    }

    /// Records the watermarks read and sets every figure from them and `positions`, with
    /// lags in seconds as of `now`.
    fn update(
        &mut self,
        ends: Vec<Watermarks>,
        positions: BTreeMap<(String, String, i32), i64>,
        now: Instant,
    ) {
        let mut figures = registry().figures.lock().expect("lag registry poisoned");
        for Watermarks {
            topic,
            partition,
            low,
            high: end,
            at,
            wall,
        } in ends
        {
            let key = (topic, partition);
            self.histories
                .entry(key.clone())
                .or_default()
                .observe(end, at);
            self.starts.insert(key.clone(), low);
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
            let position = match position {
                UNKNOWN_POSITION => self
                    .starts
                    .get(&(topic.clone(), partition))
                    .copied()
                    .unwrap_or(0),
                known => known,
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

/// A partition's watermarks, as the monitor read them.
struct Watermarks {
    topic: String,
    partition: i32,
    /// The offset of the first record the partition retains.
    low: i64,
    /// The offset the next record appended will get.
    high: i64,
    /// When the answer came.
    at: Instant,
    /// When the answer came, on the wall clock.
    wall: SystemTime,
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
        for n in 0..(10 * HISTORY_SAMPLES as i64) {
            history.observe(n, base + Duration::from_secs(n as u64));
            assert!(history.samples.len() <= HISTORY_SAMPLES);
        }
        assert_eq!(history.end(), Some(10 * HISTORY_SAMPLES as i64 - 1));
        // The oldest sample stays, and the latest are all there, one per second.
        assert_eq!(history.samples[0].first_seen, base);
        let latest: Vec<i64> = history
            .samples
            .iter()
            .rev()
            .take(DENSE_SAMPLES)
            .map(|s| s.end)
            .collect();
        assert!(latest.windows(2).all(|w| w[0] == w[1] + 1), "{latest:?}");
        assert!(history
            .samples
            .iter()
            .zip(history.samples.iter().skip(1))
            .all(|(a, b)| a.end < b.end));
        history.observe(3, base + Duration::from_secs(100_000));
        assert_eq!(history.samples.len(), 1);
        assert_eq!(history.end(), Some(3));
    }

    /// A consumer stuck at one offset on a busy topic, for far longer than the dense history
    /// covers: its lag in seconds keeps growing with the time since its first unread record was
    /// appended (within the coarser resolution of old samples), and never levels off.
    #[test]
    fn a_stuck_consumer_lags_for_longer_and_longer_beyond_the_dense_history() {
        let base = Instant::now();
        let mut history = EndHistory::default();
        // 10 records every 2 s; the consumer stopped at offset 1_000, appended at 200 s.
        let stuck = 1_000;
        let appended = 200.0;
        let mut last = 0.0;
        for n in 0..(20 * HISTORY_SAMPLES as u64) {
            let now = base + Duration::from_secs(2 * n);
            history.observe(10 * n as i64, now);
            let lag = history.lag_seconds(stuck, now);
            let truth = (2 * n) as f64 - appended;
            if truth <= 0.0 {
                continue;
            }
            assert!(lag >= last, "the lag went down from {last} to {lag} at {n}");
            // Off by at most a tenth of the age (old samples are sparse), never more.
            assert!(
                (lag - truth).abs() <= truth / 10.0 + 2.0,
                "{lag} s, not {truth} s, at {n}"
            );
            last = lag;
        }
        let dense_window = 2.0 * DENSE_SAMPLES as f64;
        assert!(last > 10.0 * dense_window, "{last}");
        // A position older than every sample: the oldest sample's age, a lower bound.
        let mut late = EndHistory::default();
        late.observe(5_000, base + Duration::from_secs(10));
        late.observe(6_000, base + Duration::from_secs(12));
        assert_eq!(
            late.lag_seconds(0, base + Duration::from_secs(1_010)),
            1_000.0
        );
    }

    /// Watermarks of partition 0 of `topic`, read at `at`.
    fn read(topic: &str, low: i64, high: i64, at: Instant) -> Vec<Watermarks> {
        vec![Watermarks {
            topic: topic.to_string(),
            partition: 0,
            low,
            high,
            at,
            wall: SystemTime::now(),
        }]
    }

    /// The positions published for `topic`.
    fn positions_of(topic: &str) -> BTreeMap<(String, String, i32), i64> {
        positions()
            .into_iter()
            .filter(|((_, t, _), _)| t == topic)
            .collect()
    }

    /// The lag in the snapshot of `group` on `topic`.
    fn lag_of(group: &str, topic: &str) -> Option<ConsumerLag> {
        snapshot()
            .consumers
            .into_iter()
            .find(|c| c.topic == topic && c.group == group)
    }

    #[test]
    fn a_partition_whose_start_is_unknown_lags_from_the_partition_start_and_grows() {
        let group: Arc<str> = Arc::from("lag-unknown.sink.s0.sink");
        let topic = "lag-unknown-topic";
        let base = Instant::now();
        let mut monitor = LagMonitor::new(vec![topic.to_string()]);
        let position = PublishedPosition::unknown(&group, topic, 0);
        monitor.update(read(topic, 3, 50, base), positions_of(topic), base);
        monitor.update(
            read(topic, 3, 80, base + Duration::from_secs(2)),
            positions_of(topic),
            base + Duration::from_secs(2),
        );
        let found = lag_of(&group, topic).expect("a lag for the unclaimed partition");
        assert_eq!((found.position, found.lag_records), (3, 77));
        // Its end offset cannot be read any more: the records stay, the seconds grow.
        monitor.update(
            Vec::new(),
            positions_of(topic),
            base + Duration::from_secs(30),
        );
        let later = lag_of(&group, topic).unwrap();
        assert_eq!(later.lag_records, 77);
        assert!((later.lag_seconds - 30.0).abs() < 1e-6, "{later:?}");
        position.set(80);
        monitor.update(
            Vec::new(),
            positions_of(topic),
            base + Duration::from_secs(32),
        );
        assert_eq!(lag_of(&group, topic).unwrap().lag_records, 0);
    }

    #[test]
    fn replay_groups_are_not_reported() {
        let topic = "lag-replay-topic";
        let replay: Arc<str> = Arc::from("sluice.replay.fix.0a1b2c3d.enrich");
        let sink: Arc<str> = Arc::from("sluice.sink.s0.replay.fix.0a1b2c3d");
        let live: Arc<str> = Arc::from("sluice.enrich");
        let _positions = [
            PublishedPosition::new(&replay, topic, 0, 1),
            PublishedPosition::new(&sink, topic, 0, 1),
            PublishedPosition::new(&live, topic, 0, 1),
        ];
        let groups: Vec<String> = positions_of(topic).into_keys().map(|(g, _, _)| g).collect();
        assert_eq!(groups, vec!["sluice.enrich".to_string()]);
    }

    #[test]
    fn published_positions_feed_the_figures_and_leave_with_their_partition() {
        let group: Arc<str> = Arc::from("lag-test.stage");
        let topic = "lag-test-topic";
        let base = Instant::now();
        let mut monitor = LagMonitor::new(vec![topic.to_string()]);
        let position = PublishedPosition::new(&group, topic, 0, 4);
        let ends = |end, at| read(topic, 0, end, at);
        let mine = || positions_of(topic);
        monitor.update(ends(4, base), mine(), base);
        monitor.update(
            ends(10, base + Duration::from_secs(2)),
            mine(),
            base + Duration::from_secs(2),
        );
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
        monitor.update(
            ends(10, base + Duration::from_secs(4)),
            mine(),
            base + Duration::from_secs(4),
        );
        let found = lag(&snapshot()).expect("the consumer's lag");
        assert_eq!((found.lag_records, found.lag_seconds), (0, 0.0));
        drop(position);
        monitor.update(
            ends(10, base + Duration::from_secs(6)),
            mine(),
            base + Duration::from_secs(6),
        );
        assert_eq!(lag(&snapshot()), None);
    }
}
