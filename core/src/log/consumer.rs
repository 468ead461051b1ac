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

use std::time::Duration;

use async_trait::async_trait;

use super::{report_skipped, Assignment, LogError, Position, Record, StartFrom};

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

    /// The committed next offset of a partition for this reader's group.
    async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>, LogError>;
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
}

/// Reads assigned partitions, handing out every record exactly once and in order per partition,
/// and commits positions explicitly. See the [module docs](self).
pub struct LogConsumer {
    reader: Box<dyn PartitionReader>,
    expected: Vec<Expected>,
    /// The reader must be rewound to `expected` before it is read again.
    rewind_pending: bool,
}

impl LogConsumer {
    /// A consumer over a backend's reader.
    pub fn new(reader: Box<dyn PartitionReader>) -> Self {
        LogConsumer {
            reader,
            expected: Vec::new(),
            rewind_pending: false,
        }
    }

    /// Replaces the assignment: read these partitions from these positions. A
    /// [`StartFrom::Resume`] position that retention has already removed is reported as
    /// skipped records.
    pub async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<(), LogError> {
        let requested: Vec<(String, i32, StartFrom)> = assignments
            .iter()
            .map(|a| (a.topic.clone(), a.partition, a.start))
            .collect();
        let starts = self.reader.assign(assignments).await?;
        for start in &starts {
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
        self.expected = starts
            .into_iter()
            .map(|p| Expected {
                topic: p.topic,
                partition: p.partition,
                next: p.next_offset,
                rereads: 0,
                gap_at: None,
            })
            .collect();
        self.rewind_pending = false;
        Ok(())
    }

    /// Up to `max` records, waiting at most `wait` for the first; empty when none came.
    /// Every record of an assigned partition is handed out once, in offset order, with no
    /// offset skipped unless the log reports it gone (see the [module docs](self)).
    pub async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        if self.rewind_pending {
            self.rewind().await?;
        }
        let polled = match self.reader.poll(max, wait).await {
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
        Ok(())
    }

    /// What this consumer expects from a partition, if it is assigned.
    fn expected_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Expected> {
        self.expected
            .iter_mut()
            .find(|e| e.partition == partition && e.topic == topic)
    }

    /// The next offset this consumer will hand out from a partition, if it is assigned.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.expected
            .iter()
            .find(|e| e.partition == partition && e.topic == topic)
            .map(|e| e.next)
    }

    /// Stores positions under this consumer's group. A position beyond the records this
    /// consumer handed out is refused with [`LogError::CommitPastRead`]: committing it would
    /// lose the records in between.
    pub async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        for position in positions {
            let read = self.next_offset(&position.topic, position.partition);
            if read.is_none_or(|read| position.next_offset > read) {
                return Err(LogError::CommitPastRead {
                    topic: position.topic.clone(),
                    partition: position.partition,
                    position: position.next_offset,
                    read,
                });
            }
        }
        let result = self.reader.commit(positions).await;
        if result.is_err() {
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
