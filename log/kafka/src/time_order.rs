//! Handing out the records of several partitions in timestamp order while a reader catches up.
//!
//! librdkafka fetches each partition in runs: reading a backlog, a reader gets thousands of one
//! partition's records (a 1 MiB fetch), then thousands of another's covering the same span of
//! time. A sink that stores them in that order inserts each run's keys (UUIDv7 order ids, which
//! grow with time) among keys already stored, and InnoDB splits pages in the middle: measured
//! with four partitions per shard topic, twice the redo and twice the pages per row of rows
//! inserted in key order.
//!
//! [`TimeOrder`] buffers fetched records per partition (a *lane*) and hands them out merged by
//! timestamp. While the reader is behind (the oldest buffered record is older than
//! [`BEHIND`] by the reader's clock) it hands out a record only once every other lane has
//! buffered a record at least as new, or has stayed empty for [`IDLE_AFTER`] since it handed
//! out its last record (a partition with nothing more to read must not hold the others back).
//! A reader that is not behind hands out whatever it has, merged, without waiting: live
//! records gain no latency (as long as the producers' clocks agree with the reader's to within
//! [`BEHIND`]).
//!
//! A lane that has buffered its size is full until it is down to half: the reader takes no
//! more of its partition meanwhile, so that lanes stay level and bounded. Each partition has a
//! librdkafka queue of its own ([`crate::partition_queues`]), where the rest of what was
//! fetched waits, and librdkafka stops fetching a partition whose queue is full: nothing is
//! fetched twice. (A reader that was already reading when asked for time order reads through
//! the consumer's shared queue: it pauses a partition whose lane is full, and librdkafka drops
//! what else it fetched of it.) Nothing here commits
//! anything: a record is only the reader's once handed out, and a lane dropped (rewind,
//! revocation, new client) is fetched again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_core::log::{Record, TopicPartition};

/// A reader whose oldest buffered record is older than this is catching up on a backlog, and
/// orders what it hands out; a live reader does not wait for order.
pub(crate) const BEHIND: Duration = Duration::from_secs(1);

/// A lane that stayed empty this long no longer holds the others back (its partition has
/// nothing more to read, or its fetches are stuck).
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The default fetch-ahead of a partition read in time order (`[log.kafka]
/// time_order_lane_mib`): half of it in the partition's librdkafka queue, half in its lane.
pub(crate) const DEFAULT_LANE_BYTES: usize = 8 << 20;

/// Bytes a record takes in memory beyond its key, payload and header values (its allocations
/// and bookkeeping), so that lanes of small records are bounded too.
const RECORD_OVERHEAD: usize = 160;

/// The records of one partition that were fetched but not handed out yet.
struct Lane {
    partition: TopicPartition,
    /// The records, each with its order key: its timestamp, raised to the key of the record
    /// before it in the lane, so that keys never go down within a lane (producers on several
    /// hosts, or a clock stepped back, can append a record older than the one before it).
    records: VecDeque<(i64, Record)>,
    /// What `records` take in memory, approximately.
    bytes: usize,
    /// When the lane last became empty (handed out its last record, was created or cleared).
    empty_since: Instant,
    /// Whether the lane is full: the reader takes no more of its partition (and pauses it,
    /// unless it has a queue of its own) until the lane is down to half.
    full: bool,
}

impl Lane {
    /// An empty lane of `partition`, empty since `now`.
    fn new(partition: TopicPartition, now: Instant) -> Self {
        Lane {
            partition,
            records: VecDeque::new(),
            bytes: 0,
            empty_since: now,
            full: false,
        }
    }

    /// The order key of the lane's first record.
    fn head_ms(&self) -> Option<i64> {
        self.records.front().map(|(key, _)| *key)
    }

    /// The order key of the lane's last record: the highest in the lane.
    fn newest_ms(&self) -> Option<i64> {
        self.records.back().map(|(key, _)| *key)
    }
}

/// The order key of a record: its timestamp, or the earliest time for a record without one
/// (it never waits).
fn timestamp(record: &Record) -> i64 {
    record.timestamp_ms.unwrap_or(i64::MIN)
}

fn size(record: &Record) -> usize {
    RECORD_OVERHEAD
        + record.topic.len()
        + record.key.len()
        + record.payload.len()
        + record
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
}

/// A change of a partition's fetching that [`TimeOrder::flow`] asks the reader to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Take no more of this partition (pause it, unless it has a queue of its own): its lane
    /// is full, far ahead of the others.
    Pause(TopicPartition),
    /// Take this partition's records again (resume it): its lane is down to half.
    Resume(TopicPartition),
}

/// Fetched records of several partitions, handed out in timestamp order. See the
/// [module docs](self).
pub(crate) struct TimeOrder {
    lanes: Vec<Lane>,
    /// What all lanes hold, approximately.
    bytes: usize,
    /// A lane holding this much is full until it is down to half.
    lane_bytes: usize,
}

impl TimeOrder {
    /// Lanes that are full when they hold `lane_bytes`.
    pub(crate) fn new(lane_bytes: usize) -> Self {
        TimeOrder {
            lanes: Vec::new(),
            bytes: 0,
            lane_bytes: lane_bytes.max(1),
        }
    }

    /// What a lane holds when it is full.
    pub(crate) fn lane_bytes(&self) -> usize {
        self.lane_bytes
    }

    /// Buffers a fetched record. Returns its partition when this record filled the lane: the
    /// lane counts as full from now on. The reader then takes no more from the partition's
    /// own queue; a partition without one it pauses at once (librdkafka then drops what it
    /// fetched of it, so the lane grows no further), or calls [`TimeOrder::unmark_paused`] if
    /// it cannot.
    pub(crate) fn push(&mut self, record: Record, now: Instant) -> Option<TopicPartition> {
        let bytes = size(&record);
        let lane = match self.lanes.iter().position(|l| {
            l.partition.partition == record.partition && l.partition.topic == record.topic
        }) {
            Some(i) => &mut self.lanes[i],
            None => {
                let partition = TopicPartition {
                    topic: record.topic.clone(),
                    partition: record.partition,
                };
                self.lanes.push(Lane::new(partition, now));
                self.lanes.last_mut().expect("just pushed")
            }
        };
        let key = timestamp(&record).max(lane.newest_ms().unwrap_or(i64::MIN));
        lane.records.push_back((key, record));
        lane.bytes += bytes;
        self.bytes += bytes;
        if !lane.full && lane.bytes >= self.lane_bytes {
            lane.full = true;
            return Some(lane.partition.clone());
        }
        None
    }

    /// What the buffered records take in memory, approximately.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps lanes for exactly the partitions the reader reads: a partition it no longer reads
    /// loses its buffered records, and one it started reading gets an (empty) lane, so that
    /// the others wait for its first records while the reader is behind. Returns the
    /// partitions dropped while full (the reader resumes them if it paused them).
    pub(crate) fn keep_only(
        &mut self,
        reading: &[TopicPartition],
        now: Instant,
    ) -> Vec<TopicPartition> {
        let mut unpause = Vec::new();
        let mut freed = 0;
        self.lanes.retain(|lane| {
            let keep = reading.contains(&lane.partition);
            if !keep {
                freed += lane.bytes;
                if lane.full {
                    unpause.push(lane.partition.clone());
                }
            }
            keep
        });
        self.bytes -= freed;
        for partition in reading {
            if !self.lanes.iter().any(|l| &l.partition == partition) {
                self.lanes.push(Lane::new(partition.clone(), now));
            }
        }
        unpause
    }

    /// Drops the buffered records of `partitions` (the reader fetches them again from its
    /// position). Their lanes stay, not full; returns those that were full.
    pub(crate) fn clear(
        &mut self,
        partitions: &[TopicPartition],
        now: Instant,
    ) -> Vec<TopicPartition> {
        let mut unpause = Vec::new();
        for lane in self
            .lanes
            .iter_mut()
            .filter(|l| partitions.contains(&l.partition))
        {
            self.bytes -= lane.bytes;
            lane.bytes = 0;
            lane.records.clear();
            lane.empty_since = now;
            if std::mem::take(&mut lane.full) {
                unpause.push(lane.partition.clone());
            }
        }
        unpause
    }

    /// Forgets every lane (a new client: nothing is paused on it).
    pub(crate) fn reset(&mut self) {
        self.lanes.clear();
        self.bytes = 0;
    }

    /// Whether a lane stops records newer than its last one from being handed out: it is
    /// empty but not idle.
    fn awaited(lane: &Lane, now: Instant) -> bool {
        lane.records.is_empty() && now.saturating_duration_since(lane.empty_since) < IDLE_AFTER
    }

    /// The newest timestamp that may be handed out now: everything when the reader is not
    /// behind; otherwise up to the oldest of the lanes' newest records, and nothing while an
    /// empty lane is awaited.
    fn horizon(&self, now: Instant, wall_ms: i64) -> Option<i64> {
        let oldest = self.lanes.iter().filter_map(Lane::head_ms).min()?;
        let behind_ms = i64::try_from(BEHIND.as_millis()).unwrap_or(i64::MAX);
        if oldest > wall_ms.saturating_sub(behind_ms) {
            return Some(i64::MAX);
        }
        let mut horizon = i64::MAX;
        for lane in &self.lanes {
            if Self::awaited(lane, now) {
                return None;
            }
            if let Some(newest) = lane.newest_ms() {
                horizon = horizon.min(newest);
            }
        }
        Some(horizon)
    }

    /// Up to `max` records that may be handed out now (see the [module docs](self)), oldest
    /// first; each partition's records stay in offset order. `wall_ms` is the time now, in
    /// milliseconds since the Unix epoch.
    pub(crate) fn take(&mut self, max: usize, now: Instant, wall_ms: i64) -> Vec<Record> {
        let Some(horizon) = self.horizon(now, wall_ms) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(max.min(self.lanes.iter().map(|l| l.records.len()).sum()));
        while out.len() < max {
            let next = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(i, lane)| lane.head_ms().map(|ms| (ms, i)))
                .filter(|(ms, _)| *ms <= horizon)
                .min();
            let Some((_, i)) = next else { break };
            let lane = &mut self.lanes[i];
            let (_, record) = lane.records.pop_front().expect("the lane has a head");
            let bytes = size(&record);
            lane.bytes -= bytes;
            if lane.records.is_empty() {
                lane.empty_since = now;
            }
            self.bytes -= bytes;
            out.push(record);
        }
        out
    }

    /// How long until an awaited lane turns idle (so that records held for it may be handed
    /// out), if one is awaited.
    pub(crate) fn next_change(&self, now: Instant) -> Option<Duration> {
        self.lanes
            .iter()
            .filter(|lane| Self::awaited(lane, now))
            .map(|lane| IDLE_AFTER.saturating_sub(now.saturating_duration_since(lane.empty_since)))
            .min()
    }

    /// The partitions to pause (lanes that reached their size and are not marked full yet: a
    /// pause failed before) and to resume (full lanes down to half), marked as done: the reader
    /// carries them out, and calls [`TimeOrder::unmark_paused`] for a pause that failed.
    pub(crate) fn flow(&mut self) -> Vec<Flow> {
        let mut changes = Vec::new();
        let (pause, resume) = (self.lane_bytes, self.lane_bytes / 2);
        for lane in &mut self.lanes {
            if !lane.full && lane.bytes >= pause {
                lane.full = true;
                changes.push(Flow::Pause(lane.partition.clone()));
            } else if lane.full && lane.bytes <= resume {
                lane.full = false;
                changes.push(Flow::Resume(lane.partition.clone()));
            }
        }
        changes
    }

    /// Whether the lane of `partition` is full (until it is down to half).
    pub(crate) fn is_full(&self, partition: &TopicPartition) -> bool {
        self.lanes
            .iter()
            .any(|lane| &lane.partition == partition && lane.full)
    }

    /// Records that pausing `partition` did not happen.
    pub(crate) fn unmark_paused(&mut self, partition: &TopicPartition) {
        if let Some(lane) = self.lanes.iter_mut().find(|l| &l.partition == partition) {
            lane.full = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition {
            topic: "shard".into(),
            partition,
        }
    }

    fn record(partition: i32, offset: i64, timestamp_ms: i64) -> Record {
        Record {
            topic: "shard".into(),
            partition,
            offset,
            key: Vec::new(),
            payload: vec![0; 40],
            headers: Vec::new(),
            timestamp_ms: Some(timestamp_ms),
        }
    }

    fn ids(records: &[Record]) -> Vec<(i32, i64)> {
        records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    /// Two partitions' runs of an old backlog, each covering the same minute.
    fn backlog(order: &mut TimeOrder, now: Instant) {
        order.keep_only(&[tp(0), tp(1)], now);
        let old = NOW_MS - 60_000;
        for i in 0..3 {
            order.push(record(0, i, old + i * 10), now);
        }
        for i in 0..2 {
            order.push(record(1, i, old + 5 + i * 10), now);
        }
    }

    #[test]
    fn a_backlog_comes_out_merged_by_time_up_to_the_oldest_lane_end() {
        let now = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        backlog(&mut order, now);
        let out = order.take(100, now, NOW_MS);
        // Partition 1's newest record (old + 15) bounds what may go: partition 0's record at
        // old + 20 waits for partition 1's next records.
        assert_eq!(ids(&out), vec![(0, 0), (1, 0), (0, 1), (1, 1)]);
        assert!(
            order.take(100, now, NOW_MS).is_empty(),
            "partition 1 is awaited"
        );
        assert_eq!(order.next_change(now), Some(IDLE_AFTER));
        order.push(record(1, 2, NOW_MS - 60_000 + 25), now);
        assert_eq!(ids(&order.take(100, now, NOW_MS)), vec![(0, 2)]);
    }

    #[test]
    fn an_empty_lane_stops_holding_the_others_once_idle() {
        let start = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        backlog(&mut order, start);
        order.take(100, start, NOW_MS);
        let later = start + IDLE_AFTER;
        assert_eq!(order.next_change(later), None, "partition 1 is idle now");
        assert_eq!(ids(&order.take(100, later, NOW_MS)), vec![(0, 2)]);
    }

    #[test]
    fn a_partition_the_reader_starts_reading_is_awaited_before_it_sends_anything() {
        let now = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        backlog(&mut order, now);
        order.keep_only(&[tp(0), tp(1), tp(2)], now);
        assert!(order.take(100, now, NOW_MS).is_empty());
        let later = now + IDLE_AFTER;
        assert_eq!(order.take(100, later, NOW_MS).len(), 4);
    }

    #[test]
    fn live_records_go_at_once_merged() {
        let now = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        order.keep_only(&[tp(0), tp(1), tp(2)], now);
        order.push(record(0, 0, NOW_MS - 20), now);
        order.push(record(0, 1, NOW_MS - 5), now);
        order.push(record(1, 0, NOW_MS - 10), now);
        // Partition 2 has nothing, and records are fresh: no waiting.
        assert_eq!(
            ids(&order.take(100, now, NOW_MS)),
            vec![(0, 0), (1, 0), (0, 1)]
        );
        assert_eq!(order.bytes(), 0);
    }

    #[test]
    fn a_record_older_than_the_one_before_it_in_its_lane_does_not_hold_the_lane_back() {
        let now = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        order.keep_only(&[tp(0)], now);
        let old = NOW_MS - 60_000;
        order.push(record(0, 0, old + 10), now);
        order.push(record(0, 1, old + 5), now);
        assert_eq!(ids(&order.take(10, now, NOW_MS)), vec![(0, 0), (0, 1)]);
    }

    #[test]
    fn take_hands_out_at_most_max_and_keeps_the_rest_in_order() {
        let now = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        order.keep_only(&[tp(0)], now);
        for i in 0..5 {
            order.push(record(0, i, NOW_MS), now);
        }
        assert_eq!(ids(&order.take(2, now, NOW_MS)), vec![(0, 0), (0, 1)]);
        assert_eq!(
            ids(&order.take(10, now, NOW_MS)),
            vec![(0, 2), (0, 3), (0, 4)]
        );
    }

    #[test]
    fn a_lane_far_ahead_is_paused_and_resumed_once_drained() {
        let now = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        order.keep_only(&[tp(0), tp(1)], now);
        let old = NOW_MS - 60_000;
        let per_record = size(&record(0, 0, old));
        let count = (DEFAULT_LANE_BYTES / per_record + 1) as i64;
        let paused: Vec<TopicPartition> = (0..count)
            .filter_map(|i| order.push(record(0, i, old + i), now))
            .collect();
        assert_eq!(
            paused,
            vec![tp(0)],
            "the record reaching the mark pauses the lane"
        );
        assert_eq!(order.flow(), Vec::new(), "already paused");
        order.unmark_paused(&tp(0));
        assert_eq!(
            order.flow(),
            vec![Flow::Pause(tp(0))],
            "a failed pause is tried again"
        );
        // Partition 1 catches up with everything partition 0 holds (its own record waits for
        // partition 0's next ones).
        order.push(record(1, 0, old + count), now);
        let taken = order.take(usize::MAX, now, NOW_MS);
        assert_eq!(taken.len() as i64, count);
        assert_eq!(order.flow(), vec![Flow::Resume(tp(0))]);
    }

    #[test]
    fn dropped_and_cleared_lanes_free_their_bytes_and_report_their_pauses() {
        let now = Instant::now();
        let mut order = TimeOrder::new(DEFAULT_LANE_BYTES);
        order.keep_only(&[tp(0), tp(1)], now);
        let per_record = size(&record(0, 0, 0));
        let mut paused = 0;
        for i in 0..(DEFAULT_LANE_BYTES / per_record + 1) as i64 {
            paused += order.push(record(0, i, NOW_MS - 60_000), now).is_some() as usize;
            paused += order.push(record(1, i, NOW_MS - 60_000), now).is_some() as usize;
        }
        assert_eq!(paused, 2);
        assert_eq!(order.clear(&[tp(1)], now), vec![tp(1)]);
        assert_eq!(order.keep_only(&[tp(1)], now), vec![tp(0)]);
        assert_eq!(order.bytes(), 0);
        assert!(order.take(10, now, NOW_MS).is_empty());
    }
}
