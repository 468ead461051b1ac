//! Which partitions a sink worker owns, claimed in its shard.
//!
//! Positions of a shard's topic live in the shard, beside the rows. When the consumer group
//! gives a sink worker a partition, the worker claims it there ([`ShardWriter::claim`]): the
//! partition's owner epoch goes up by one and its stored position is read, in one
//! transaction. Every batch is written with the epochs its partitions were claimed under and
//! is refused whole if one of them changed ([`SinkError::Fenced`]), so a worker that lost a
//! partition (it was too slow to notice, or considered dead) can never overwrite the new
//! owner's position with a stale one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_core::log::{Assignment, Claims, LogError, StartFrom, TopicPartition};

use crate::writer::{Claimed, ShardWriter, SinkError};

/// The owner epochs of the partitions a worker claimed, shared by its reader (which claims)
/// and the batches it writes (which carry them).
#[derive(Clone, Default)]
pub struct Epochs(Arc<Mutex<ClaimedEpochs>>);

/// What [`Epochs`] holds.
#[derive(Default)]
struct ClaimedEpochs {
    /// The epoch of each partition this worker claimed and still owns.
    epochs: HashMap<TopicPartition, i64>,
    /// Partitions whose claim another process took although this worker holds them.
    stale: Vec<TopicPartition>,
}

/// An epoch no claim ever gets: a batch carrying it is always refused.
const NOT_OWNED: i64 = -1;

impl Epochs {
    /// The epoch `partition` was claimed under, or one that no write accepts if this worker
    /// does not own it (any more).
    pub fn of(&self, partition: &TopicPartition) -> i64 {
        self.lock()
            .epochs
            .get(partition)
            .copied()
            .unwrap_or(NOT_OWNED)
    }

    /// After a batch read under `claimed_under` was fenced for `fenced`: those whose claim
    /// this worker has not renewed since were claimed by another process while this worker
    /// still holds them, and are to be claimed again ([`Epochs::take_stale`]).
    pub fn stale_if_current(
        &self,
        fenced: &[TopicPartition],
        claimed_under: &[(TopicPartition, i64)],
    ) {
        let mut claims = self.lock();
        for partition in fenced {
            let current = claims.epochs.get(partition).copied();
            let read_under = claimed_under
                .iter()
                .find(|(p, _)| p == partition)
                .map(|(_, epoch)| *epoch);
            if current.is_some() && current == read_under && !claims.stale.contains(partition) {
                claims.stale.push(partition.clone());
            }
        }
    }

    /// The partitions to claim again, once.
    pub fn take_stale(&self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.lock().stale)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClaimedEpochs> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records claims.
    pub fn record(&self, claimed: &[Claimed]) {
        let mut claims = self.lock();
        for claim in claimed {
            claims.epochs.insert(claim.partition.clone(), claim.epoch);
            claims.stale.retain(|p| *p != claim.partition);
        }
    }

    /// Forgets partitions this worker no longer owns.
    pub fn forget(&self, partitions: &[TopicPartition]) {
        let mut claims = self.lock();
        for partition in partitions {
            claims.epochs.remove(partition);
            claims.stale.retain(|p| p != partition);
        }
    }
}

/// How a sink worker starts the partitions it claims.
pub struct ShardClaims {
    /// The shard.
    pub shard: String,
    /// Its writer.
    pub writer: Arc<dyn ShardWriter>,
    /// The name positions are stored under (`"sink"`, or a replay's).
    pub consumer: String,
    /// Where partitions with no stored position start.
    pub start: StartFrom,
    /// Start offsets of particular partitions with no stored position (replays).
    pub start_offsets: HashMap<(String, i32), i64>,
    /// The epochs claimed, for the batches.
    pub epochs: Epochs,
}

impl ShardClaims {
    /// Claims `partitions` in the shard and says where each starts: its stored position,
    /// else its entry in `start_offsets`, else `start`.
    pub async fn claim_in_shard(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(Claimed, StartFrom)>, SinkError> {
        let claimed = self
            .writer
            .claim(&self.consumer, &owner_name(), partitions)
            .await?;
        self.epochs.record(&claimed);
        tracing::info!(
            shard = self.shard,
            partitions = %claimed.iter().map(|c| format!("{}@{}", c.partition, c.epoch)).collect::<Vec<_>>().join(", "),
            "claimed partitions in the shard"
        );
        Ok(claimed
            .into_iter()
            .map(|claim| {
                let key = (claim.partition.topic.clone(), claim.partition.partition);
                let start = match (claim.next_offset, self.start_offsets.get(&key)) {
                    (Some(offset), _) => StartFrom::Resume(offset),
                    (None, Some(&offset)) => StartFrom::Offset(offset),
                    (None, None) => self.start,
                };
                (claim, start)
            })
            .collect())
    }
}

#[async_trait]
impl Claims for ShardClaims {
    async fn claim(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Assignment>, LogError> {
        let claimed = self.claim_in_shard(partitions).await.map_err(|error| {
            LogError::backend(
                format!(
                    "cannot claim the partitions the group assigned in shard {:?}",
                    self.shard
                ),
                error,
            )
        })?;
        Ok(claimed
            .into_iter()
            .map(|(claim, start)| Assignment {
                topic: claim.partition.topic,
                partition: claim.partition.partition,
                start,
            })
            .collect())
    }

    fn released(&mut self, partitions: &[TopicPartition], _lost: bool) {
        self.epochs.forget(partitions);
    }
}

/// This process, as recorded with its claims: host name and process id.
pub fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}
