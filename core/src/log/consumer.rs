//! The one consumer every part of Sluice reads the log through.
//!
//! A backend's [`PartitionReader`] may hand out records with holes: librdkafka moves its
//! position past records that a failed poll never returned, a storage error can end a read
//! half-way, and retention deletes records nobody read. A consumer that commits the position
//! after the last record it saw would then commit past records it never processed, and they
//! would be lost for good.
//!
//! [`LogConsumer`] makes that impossible. It knows, per assigned partition, the next offset it
//! expects, and hands out only the record with exactly that offset:
//! - a record below it (a repeat after a rewind) is dropped;
//! - a record beyond it is a **gap**: the consumer drops it and everything after it in that
//!   partition, and rewinds the reader to the expected offset. If the log itself says the
//!   missing offsets are gone (retention moved its start past them), or keeps answering with the
//!   same gap after reading again from the expected offset (compaction, transaction markers),
//!   the gap is reported in `sluice_log_records_skipped_total` and a log line, then accepted.
//!   Otherwise reading simply resumes at the expected offset;
//! - a failed poll rewinds every partition to its expected offset, so a transient error never
//!   discards a record;
//! - [`LogConsumer::commit`] refuses a position beyond the records this consumer handed out.
//!
//! A consumer either reads partitions it was given ([`LogConsumer::assign`]: replays, tests),
//! or joins its group ([`LogConsumer::subscribe`]) and reads the partitions the group gives
//! it, as they come and go. In a group:
//! - a partition the group gives is read only once its [`Claims`] said where to start (a
//!   stage: its group's committed position; a sink: the position stored in its shard, which
//!   it claims there). A claim that fails (the shard is down) fails the poll, so nothing is
//!   read until it succeeds; it is tried again before the next read;
//! - a partition the group takes away is dropped at once: records of it that were polled but
//!   not handed out are discarded, and positions of it are no longer committed (the new owner
//!   reads on from the last committed position). The group revokes partitions only inside
//!   [`LogConsumer::poll`], so an owner that commits each batch before it polls again has
//!   committed everything it finished when it gives a partition up. (A reader that replaces
//!   a stuck client loses every partition at once, in a poll or a commit; the new owners
//!   read on from the last committed positions.)
//! - a partition whose claim another process took while this member still holds it (a
//!   sink's batch was fenced) can be claimed again ([`LogConsumer::reclaim`]).
//!
//! For the lag monitor ([`crate::lag`]), the consumer publishes the next offset of every
//! partition it reads. A partition the group gave but that is not read yet keeps a published
//! position too, so its backlog shows while its claim fails (a sink whose shard is down): the
//! last position this member handed out from it (a partition being claimed again), or, when
//! the member never read it, [`crate::lag::UNKNOWN_POSITION`] once a claim has failed (the
//! monitor then counts from the partition's start). Only a revocation removes it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::lag::PublishedPosition;

use super::{
    report_skipped, Assignment, LogError, Position, Rebalance, Record, StartFrom, TopicPartition,
};

/// How many times a gap is read again from its start before the log's answer is believed.
const REREADS_BEFORE_ACCEPTING_A_GAP: u8 = 2;

/// What a log backend implements to read partitions. Callers use [`LogConsumer`], which adds
/// the contiguity checks; a reader may skip offsets, and the consumer notices.
#[async_trait]
pub trait PartitionReader: Send {
    /// Replaces the assignment with these partitions and returns, for each, the offset reading
    /// starts at (starts resolved to offsets and clamped to what the partition retains).
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError>;

    /// Up to `max` records of the assigned partitions, in offset order per partition, waiting
    /// at most `wait` for the first; empty when none came.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError>;

    /// Moves the assigned partitions back to `positions` (offsets this reader returned
    /// before, or their successors) and returns where each now starts. The default assigns them
    /// again as [`StartFrom::Resume`]; a backend whose assignment needs round trips to a server
    /// may move its position locally instead and return `positions` unchanged: a start that
    /// retention has removed then shows as a gap, which the consumer settles.
    async fn rewind(&mut self, positions: Vec<Position>) -> Result<Vec<Position>, LogError> {
        let assignments = positions
            .into_iter()
            .map(|p| Assignment {
                topic: p.topic,
                partition: p.partition,
                start: StartFrom::Resume(p.next_offset),
            })
            .collect();
        self.assign(assignments).await
    }

    /// Stores positions under this reader's group.
    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError>;

    /// Joins this reader's group to read `topics`: the group divides their partitions among
    /// its members and reports each member's share through [`PartitionReader::rebalances`].
    /// The default refuses: the backend cannot divide partitions (a backend that one process
    /// owns implements it as one [`Rebalance::Assigned`] of every partition).
    async fn subscribe(&mut self, topics: &[String]) -> Result<(), LogError> {
        let _ = topics;
        Err(LogError::backend_message(
            "this log backend cannot divide partitions among a group's members",
        ))
    }

    /// The group's changes to this member's partitions since the last call, in order.
    fn rebalances(&mut self) -> Vec<Rebalance> {
        Vec::new()
    }

    /// Starts reading partitions the group assigned (every partition of the last
    /// [`Rebalance::Assigned`], with where to start each), keeping the others, and returns
    /// the offset each starts at.
    async fn accept(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        let _ = assignments;
        Err(LogError::backend_message(
            "this log backend cannot divide partitions among a group's members",
        ))
    }

    /// Asks for the records of several partitions in timestamp order rather than in the runs
    /// the backend fetches them in, as far as that costs no more than a short wait while the
    /// reader catches up on a backlog (records stay in offset order per partition). A sink asks
    /// for it: rows that reach a shard in key order (order ids grow with time) cost InnoDB
    /// half the page splits. The default does nothing (a backend that interleaves partitions
    /// finely already). A reader that wraps another forwards it, or time order is lost
    /// silently. Call it before the reader reads.
    fn read_in_time_order(&mut self) {}

    /// Leaves the group (so its partitions move to the other members at once, not after a
    /// session timeout) and releases the backend's resources.
    async fn close(&mut self) {}

    /// The committed next offset of a partition for this reader's group.
    async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>, LogError>;
}

/// Where a group member starts reading the partitions its group gives it, and what it does
/// when they are taken away.
#[async_trait]
pub trait Claims: Send {
    /// Where to start reading `partitions`, which the group just gave this member: one
    /// assignment for each. An error leaves them unread; the claim is tried again before the
    /// next read.
    async fn claim(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Assignment>, LogError>;

    /// `partitions` were taken away (`lost`: without a revocation).
    fn released(&mut self, partitions: &[TopicPartition], lost: bool) {
        let _ = (partitions, lost);
    }
}

/// Claims for a member whose positions are committed to the log: each partition starts at
/// its group's committed position ([`StartFrom::Committed`]).
pub struct CommittedStarts;

#[async_trait]
impl Claims for CommittedStarts {
    async fn claim(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Assignment>, LogError> {
        Ok(partitions
            .iter()
            .map(|p| Assignment {
                topic: p.topic.clone(),
                partition: p.partition,
                start: StartFrom::Committed,
            })
            .collect())
    }
}

/// A subscribed consumer's membership in its group.
struct Membership {
    /// Where the partitions the group gives start.
    claims: Box<dyn Claims>,
    /// Partitions the group gave that are not read yet (their claim has not succeeded).
    waiting: Vec<TopicPartition>,
    /// Partitions this member still holds whose claim another process took since: they
    /// are claimed again before the next read (see [`LogConsumer::reclaim`]).
    reclaiming: Vec<TopicPartition>,
    /// Positions published for partitions of `waiting` or `reclaiming` (see the
    /// [module docs](self)): the last one handed out, or unknown.
    unclaimed: Vec<(TopicPartition, PublishedPosition)>,
    /// The membership's metric handles.
    metrics: MembershipMetrics,
}

/// The metric handles of a group member, registered once when it subscribes.
struct MembershipMetrics {
    partitions: metrics::Gauge,
    assigned: metrics::Counter,
    revoked: metrics::Counter,
    lost: metrics::Counter,
}

impl MembershipMetrics {
    fn register(group: &str) -> Self {
        use crate::telemetry::{CONSUMER_PARTITIONS, CONSUMER_REBALANCED_PARTITIONS};
        let counter = |change: &'static str| metrics::counter!(CONSUMER_REBALANCED_PARTITIONS, "group" => group.to_string(), "change" => change);
        MembershipMetrics {
            partitions: metrics::gauge!(CONSUMER_PARTITIONS, "group" => group.to_string()),
            assigned: counter("assigned"),
            revoked: counter("revoked"),
            lost: counter("lost"),
        }
    }
}

/// One assigned partition and the next offset the consumer hands out from it.
#[derive(Debug)]
struct Expected {
    topic: String,
    partition: i32,
    /// The offset of the next record to hand out.
    next: i64,
    /// Times the reader was rewound to `next` because of a gap, since a record last matched.
    rereads: u8,
    /// A gap was seen in the current poll: the partition's later records in it are dropped.
    gap_at: Option<i64>,
    /// `next`, as published for the lag monitor (see [`crate::lag`]); dropping the partition
    /// unpublishes it.
    published: PublishedPosition,
    /// The consumer's [`LogConsumer::generation`] when it was given the partition.
    given_at: u64,
}

impl Expected {
    /// A partition of `group` whose next record to hand out is at `position`.
    fn at(group: &Arc<str>, position: Position) -> Self {
        let published = PublishedPosition::new(
            group,
            &position.topic,
            position.partition,
            position.next_offset,
        );
        Expected::with(published, position)
    }

    /// A partition whose next record to hand out is at `position`, published through
    /// `published` (already published while the partition waited for its claim).
    fn with(published: PublishedPosition, position: Position) -> Self {
        published.set(position.next_offset);
        Expected {
            published,
            topic: position.topic,
            partition: position.partition,
            next: position.next_offset,
            rereads: 0,
            gap_at: None,
            given_at: 0,
        }
    }

    /// Whether this is `partition` of `topic`.
    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

/// Reads assigned partitions, handing out every record exactly once and in order per partition,
/// and commits positions explicitly. See the [module docs](self).
pub struct LogConsumer {
    reader: Box<dyn PartitionReader>,
    expected: Vec<Expected>,
    /// The reader must be rewound to `expected` before it is read again.
    rewind_pending: bool,
    /// Set once the consumer joined its group.
    membership: Option<Membership>,
    /// The group the consumer's positions are stored under.
    group: String,
    /// `group`, shared with the positions published for the lag monitor.
    lag_group: Arc<str>,
    /// Grows by one each time the consumer is given partitions.
    generation: u64,
}

impl LogConsumer {
    /// A consumer over a backend's reader whose positions are stored under `group`.
    pub fn new(reader: Box<dyn PartitionReader>, group: &str) -> Self {
        LogConsumer {
            reader,
            expected: Vec::new(),
            rewind_pending: false,
            membership: None,
            group: group.to_string(),
            lag_group: Arc::from(group),
            generation: 0,
        }
    }

    /// Asks the reader for the records of several partitions in timestamp order (see
    /// [`PartitionReader::read_in_time_order`]).
    pub fn read_in_time_order(&mut self) {
        self.reader.read_in_time_order();
    }

    /// A number that grows each time this consumer is given partitions (assigned, or given
    /// by its group). A caller that reads records, then commits their positions later (with
    /// polls in between), notes it when it reads: see [`LogConsumer::given_since`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether partition `partition` of `topic` was given to this consumer after
    /// `generation` (the group took it away and gave it back since): records read from it
    /// before belong to the earlier ownership, and their positions must not be committed
    /// (the partition is read again from its committed position).
    pub fn given_since(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.expected
            .iter()
            .any(|e| e.is(topic, partition) && e.given_at > generation)
    }

    /// Joins the consumer's group to read `topics`: from now on it reads the partitions the
    /// group gives it, each from where `claims` says (see the [module docs](self)).
    pub async fn subscribe(
        &mut self,
        topics: &[String],
        claims: Box<dyn Claims>,
    ) -> Result<(), LogError> {
        self.reader.subscribe(topics).await?;
        self.expected.clear();
        let metrics = MembershipMetrics::register(&self.group);
        metrics.partitions.set(0.0);
        self.membership = Some(Membership {
            claims,
            waiting: Vec::new(),
            reclaiming: Vec::new(),
            unclaimed: Vec::new(),
            metrics,
        });
        Ok(())
    }

    /// The partitions this consumer reads now.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.expected
            .iter()
            .map(|e| TopicPartition {
                topic: e.topic.clone(),
                partition: e.partition,
            })
            .collect()
    }

    /// Applies the group's changes the reader reported: revoked partitions are dropped at
    /// once, assigned ones wait for their claim.
    fn take_rebalances(&mut self) {
        let Some(membership) = self.membership.as_mut() else {
            return;
        };
        for change in self.reader.rebalances() {
            match change {
                Rebalance::Assigned(partitions) => {
                    tracing::info!(group = self.group, partitions = %TopicPartition::list(&partitions), "the group assigned partitions");
                    membership
                        .metrics
                        .assigned
                        .increment(partitions.len() as u64);
                    membership.waiting.extend(partitions);
                }
                Rebalance::Revoked { partitions, lost } => {
                    tracing::info!(group = self.group, partitions = %TopicPartition::list(&partitions), lost, "the group took partitions away");
                    match lost {
                        true => &membership.metrics.lost,
                        false => &membership.metrics.revoked,
                    }
                    .increment(partitions.len() as u64);
                    membership.waiting.retain(|w| !partitions.contains(w));
                    membership.reclaiming.retain(|w| !partitions.contains(w));
                    membership
                        .unclaimed
                        .retain(|(w, _)| !partitions.contains(w));
                    membership.claims.released(&partitions, lost);
                    forget(&mut self.expected, &partitions);
                }
            }
        }
        self.count_partitions();
    }

    /// Claims the partitions the group gave and starts reading them.
    async fn claim_waiting(&mut self) -> Result<(), LogError> {
        let Some(membership) = self.membership.as_mut() else {
            return Ok(());
        };
        if membership.waiting.is_empty() {
            return Ok(());
        }
        let waiting = membership.waiting.clone();
        let claimed = match claim_every(membership.claims.as_mut(), &waiting).await {
            Ok(assignments) => {
                let requested = requested_starts(&assignments);
                self.reader
                    .accept(assignments)
                    .await
                    .map(|starts| (requested, starts))
            }
            Err(error) => Err(error),
        };
        let Some(membership) = self.membership.as_mut() else {
            return Ok(());
        };
        let (requested, starts) = match claimed {
            Ok(claimed) => claimed,
            Err(error) => {
                // Not read yet, and maybe not for long (the shard is down): publish the
                // partitions as given, with their start unknown, so their lag shows.
                for partition in &waiting {
                    if !membership.unclaimed.iter().any(|(p, _)| p == partition) {
                        let published = PublishedPosition::unknown(
                            &self.lag_group,
                            &partition.topic,
                            partition.partition,
                        );
                        membership.unclaimed.push((partition.clone(), published));
                    }
                }
                return Err(error);
            }
        };
        report_resumed(&requested, &starts);
        membership.waiting.clear();
        forget(&mut self.expected, &waiting);
        self.generation += 1;
        for start in starts {
            let mut expected = match take_unclaimed(membership, &start.topic, start.partition) {
                Some(published) => Expected::with(published, start),
                None => Expected::at(&self.lag_group, start),
            };
            expected.given_at = self.generation;
            self.expected.push(expected);
        }
        self.count_partitions();
        Ok(())
    }

    /// Claims again partitions this member holds but whose claim another process has taken
    /// since (a sink found its batch fenced while the group still gives it the partition: a
    /// member that woke up after its session ran out, or a claim that came late). They are
    /// read no more until claimed again, then from where the claim says: records handed out
    /// meanwhile are read again. Without this, the group's owner of a partition could be
    /// fenced for ever by a claim the group no longer backs.
    pub fn reclaim(&mut self, partitions: &[TopicPartition]) {
        let Some(membership) = self.membership.as_mut() else {
            return;
        };
        for partition in partitions {
            let held = self
                .expected
                .iter()
                .any(|e| e.is(&partition.topic, partition.partition));
            if held && !membership.reclaiming.contains(partition) {
                tracing::warn!(
                    group = self.group,
                    %partition,
                    "another process claimed a partition this member holds; claiming it again"
                );
                membership.reclaiming.push(partition.clone());
            }
        }
        // Their last positions stay published until the claim succeeds again.
        for partition in &membership.reclaiming {
            let Some(index) = self
                .expected
                .iter()
                .position(|e| e.is(&partition.topic, partition.partition))
            else {
                continue;
            };
            let expected = self.expected.remove(index);
            membership
                .unclaimed
                .push((partition.clone(), expected.published));
        }
        self.count_partitions();
    }

    /// Claims the partitions [`LogConsumer::reclaim`] gave back and moves the reader to where
    /// the claims say (a start without an offset reads the partition from its beginning).
    async fn claim_again(&mut self) -> Result<(), LogError> {
        let Some(membership) = self.membership.as_mut() else {
            return Ok(());
        };
        if membership.reclaiming.is_empty() {
            return Ok(());
        }
        let reclaiming = membership.reclaiming.clone();
        let assignments = claim_every(membership.claims.as_mut(), &reclaiming).await?;
        membership.reclaiming.clear();
        for assignment in assignments {
            let next_offset = match assignment.start {
                StartFrom::Offset(n) | StartFrom::Resume(n) => n,
                _ => 0,
            };
            let position = Position {
                topic: assignment.topic,
                partition: assignment.partition,
                next_offset,
            };
            let mut expected = match take_unclaimed(membership, &position.topic, position.partition)
            {
                Some(published) => Expected::with(published, position),
                None => Expected::at(&self.lag_group, position),
            };
            self.generation += 1;
            expected.given_at = self.generation;
            self.expected.push(expected);
        }
        self.rewind_pending = true;
        self.count_partitions();
        Ok(())
    }

    /// Sets the gauge of the partitions this member reads.
    fn count_partitions(&self) {
        if let Some(membership) = self.membership.as_ref() {
            membership
                .metrics
                .partitions
                .set(self.expected.len() as f64);
        }
    }

    /// Leaves the group, so its partitions move to the other members at once.
    pub async fn close(mut self) {
        self.reader.close().await;
    }

    /// Replaces the assignment: read these partitions from these positions. A
    /// [`StartFrom::Resume`] position that retention has already removed is reported as
    /// skipped records.
    pub async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<(), LogError> {
        let requested = requested_starts(&assignments);
        let starts = self.reader.assign(assignments).await?;
        report_resumed(&requested, &starts);
        let group = &self.lag_group;
        self.generation += 1;
        let generation = self.generation;
        self.expected = starts
            .into_iter()
            .map(|start| Expected {
                given_at: generation,
                ..Expected::at(group, start)
            })
            .collect();
        self.rewind_pending = false;
        Ok(())
    }

    /// Up to `max` records, waiting at most `wait` for the first; empty when none came.
    /// Every record of an assigned partition is handed out once, in offset order, with no
    /// offset skipped unless the log reports it gone (see the [module docs](self)).
    pub async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        self.take_rebalances();
        if self.rewind_pending {
            if let Err(error) = self.rewind().await {
                if self.membership.is_some() {
                    // The group may be taking a partition away (this member's session ran
                    // out while the broker was away): moving it fails until the revocation
                    // is served, and only a read serves it. Read once and drop the records:
                    // the rewind, still pending, reads them again.
                    let _ = self.reader.poll(max, Duration::from_millis(100)).await;
                    self.take_rebalances();
                }
                return Err(error);
            }
        }
        self.claim_waiting().await?;
        self.claim_again().await?;
        if self.rewind_pending {
            self.rewind().await?;
        }
        let polled = self.reader.poll(max, wait).await;
        // Partitions revoked during the poll: their records are not handed out.
        self.take_rebalances();
        let polled = match polled {
            Ok(records) => records,
            Err(error) => {
                // The reader may have moved past records it did not return: read them again.
                self.rewind_pending = true;
                return Err(error);
            }
        };
        let mut out = Vec::with_capacity(polled.len());
        let mut gaps = false;
        for record in polled {
            let Some(expected) = self.expected_mut(&record.topic, record.partition) else {
                continue; // a partition no longer assigned
            };
            if expected.gap_at.is_some() || record.offset < expected.next {
                continue; // after a gap in this poll, or already handed out
            }
            if record.offset > expected.next {
                expected.gap_at = Some(record.offset);
                gaps = true;
                continue;
            }
            expected.next += 1;
            expected.rereads = 0;
            out.push(record);
        }
        if gaps {
            self.settle_gaps();
            // Rewind now, so the next poll reads the missing offsets; if the reader cannot be
            // rewound now, the next poll tries again before reading anything.
            if let Err(error) = self.rewind().await {
                tracing::warn!(%error, "cannot rewind the log reader after a gap; will retry");
                self.rewind_pending = true;
            }
        }
        self.publish();
        Ok(out)
    }

    /// Decides, for each partition with a gap in this poll, whether to read the gap again or
    /// to believe the log that the missing offsets do not exist.
    fn settle_gaps(&mut self) {
        for expected in &mut self.expected {
            let Some(found) = expected.gap_at.take() else {
                continue;
            };
            if expected.rereads < REREADS_BEFORE_ACCEPTING_A_GAP {
                expected.rereads += 1;
                tracing::warn!(
                    topic = expected.topic,
                    partition = expected.partition,
                    expected = expected.next,
                    found,
                    "the log skipped offsets; reading again from the expected offset"
                );
                continue;
            }
            // Read again from `next` more than once, and the log still starts at `found`:
            // those offsets hold no records (compaction, transaction markers, retention racing
            // the read). Count and report them, as records the consumer cannot read.
            report_skipped(&expected.topic, expected.partition, found - expected.next);
            expected.next = found;
            expected.rereads = 0;
        }
    }

    /// Moves the reader back to the next expected offset of every partition. Offsets that
    /// retention removed meanwhile are reported as skipped.
    async fn rewind(&mut self) -> Result<(), LogError> {
        let positions = self
            .expected
            .iter()
            .map(|e| Position {
                topic: e.topic.clone(),
                partition: e.partition,
                next_offset: e.next,
            })
            .collect();
        let starts = self.reader.rewind(positions).await?;
        for start in starts {
            if let Some(expected) = self.expected_mut(&start.topic, start.partition) {
                if start.next_offset > expected.next {
                    report_skipped(
                        &expected.topic,
                        expected.partition,
                        start.next_offset - expected.next,
                    );
                    expected.next = start.next_offset;
                    expected.rereads = 0;
                }
            }
        }
        self.rewind_pending = false;
        self.publish();
        Ok(())
    }

    /// Publishes the next offset of every partition for the lag monitor.
    fn publish(&self) {
        for expected in &self.expected {
            expected.published.set(expected.next);
        }
    }

    /// What this consumer expects from a partition, if it is assigned.
    fn expected_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Expected> {
        self.expected.iter_mut().find(|e| e.is(topic, partition))
    }

    /// The next offset this consumer will hand out from a partition, if it is assigned.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.expected
            .iter()
            .find(|e| e.is(topic, partition))
            .map(|e| e.next)
    }

    /// Stores positions under this consumer's group. A position beyond the records this
    /// consumer handed out is refused with [`LogError::CommitPastRead`]: committing it would
    /// lose the records in between.
    ///
    /// In a group, positions of partitions the group took away are not committed (the new
    /// owner's positions are not overwritten): they are left out, and the rest committed.
    pub async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        // A reader that replaced its client (a stuck commit) lost its partitions: learn it
        // before committing for them.
        self.take_rebalances();
        let mut owned = Vec::with_capacity(positions.len());
        for position in positions {
            let read = self.next_offset(&position.topic, position.partition);
            if read.is_none() && self.membership.is_some() {
                tracing::debug!(
                    topic = position.topic,
                    partition = position.partition,
                    "not committing a position of a partition the group took away"
                );
                continue;
            }
            if read.is_none_or(|read| position.next_offset > read) {
                return Err(LogError::CommitPastRead {
                    topic: position.topic.clone(),
                    partition: position.partition,
                    position: position.next_offset,
                    read,
                });
            }
            owned.push(position.clone());
        }
        if owned.is_empty() {
            return Ok(());
        }
        let result = self.reader.commit(&owned).await;
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, LogError::Rebalanced(_)))
        {
            // A reader may replace a stuck client when commits fail; rewind before reading.
            self.rewind_pending = true;
        }
        result
    }

    /// The committed next offset of a partition for this consumer's group.
    pub async fn committed(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, LogError> {
        self.reader.committed(topic, partition).await
    }
}

/// Where each of `partitions` starts, from `claims`. The group waits for an answer covering
/// exactly the partitions it gave, and a partition left out would be fetched but never
/// handed out: a claim that leaves one out is an error, and is tried again.
async fn claim_every(
    claims: &mut dyn Claims,
    partitions: &[TopicPartition],
) -> Result<Vec<Assignment>, LogError> {
    let assignments = claims.claim(partitions).await?;
    let uncovered = uncovered(partitions, &assignments);
    if !uncovered.is_empty() {
        return Err(LogError::backend_message(format!(
            "claiming gave no start for {}; claiming again",
            TopicPartition::list(&uncovered)
        )));
    }
    Ok(assignments)
}

/// Takes the position published for a partition while it waited for its claim, if any.
fn take_unclaimed(
    membership: &mut Membership,
    topic: &str,
    partition: i32,
) -> Option<PublishedPosition> {
    let index = membership
        .unclaimed
        .iter()
        .position(|(p, _)| p.partition == partition && p.topic == topic)?;
    Some(membership.unclaimed.swap_remove(index).1)
}

/// Drops `partitions` from `expected`.
fn forget(expected: &mut Vec<Expected>, partitions: &[TopicPartition]) {
    expected.retain(|e| !partitions.iter().any(|p| e.is(&p.topic, p.partition)));
}

/// The partitions of `partitions` that no assignment covers.
fn uncovered(partitions: &[TopicPartition], assignments: &[Assignment]) -> Vec<TopicPartition> {
    partitions
        .iter()
        .filter(|p| {
            !assignments
                .iter()
                .any(|a| a.partition == p.partition && a.topic == p.topic)
        })
        .cloned()
        .collect()
}

/// `(topic, partition, start)` of each assignment, to compare with where reading starts.
fn requested_starts(assignments: &[Assignment]) -> Vec<(String, i32, StartFrom)> {
    assignments
        .iter()
        .map(|a| (a.topic.clone(), a.partition, a.start))
        .collect()
}

/// Reports partitions that could not resume where they were asked to: a stored position
/// that retention removed (skipped records) or one beyond the partition's end.
fn report_resumed(requested: &[(String, i32, StartFrom)], starts: &[Position]) {
    for start in starts {
        let resumed = requested
            .iter()
            .find(|(t, p, _)| *t == start.topic && *p == start.partition)
            .and_then(|(_, _, s)| match s {
                StartFrom::Resume(n) => Some(*n),
                _ => None,
            });
        match resumed {
            Some(from) if start.next_offset > from => {
                report_skipped(&start.topic, start.partition, start.next_offset - from)
            }
            Some(from) if start.next_offset < from => tracing::warn!(
                topic = start.topic,
                partition = start.partition,
                stored = from,
                end = start.next_offset,
                "stored position is past the end of the partition; reading from its end"
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(n: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: n,
        }
    }

    #[test]
    fn a_claim_must_give_a_start_to_every_partition_the_group_gave() {
        let given = [partition(0), partition(1), partition(2)];
        let start = |n: i32| Assignment {
            topic: "t".into(),
            partition: n,
            start: StartFrom::Committed,
        };
        assert!(uncovered(&given, &[start(2), start(0), start(1)]).is_empty());
        assert_eq!(uncovered(&given, &[start(0), start(2)]), vec![partition(1)]);
        assert_eq!(uncovered(&given, &[]), given.to_vec());
    }
}
