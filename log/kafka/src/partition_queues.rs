//! One librdkafka queue per partition, for a reader in time order.
//!
//! A consumer's partitions normally share one queue, and librdkafka's fetch-ahead bound
//! (`queued.max.messages.kbytes`) applies to that queue as a whole: once it is full of some
//! partitions' records, no partition is fetched. A reader that merges partitions by timestamp
//! needs the partition it waits for, so it had to take the others' records out of the way and
//! pause them, and pausing makes librdkafka drop what it had fetched of them (measured: a sink
//! catching up fetched its records 2.3 times over).
//!
//! Split off into a queue of its own, each partition is fetched ahead up to that bound on its
//! own: the reader takes records from the partition it needs, the others wait in librdkafka,
//! fetched once, and nothing is paused. librdkafka keeps a split partition out of the shared
//! queue from then on, also across a revocation and a new assignment; records it queued there
//! before the split are still read from the shared queue, which the reader always drains
//! first, so each partition's records keep their order.

use std::sync::Arc;

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use sluice_core::log::TopicPartition;

/// The split-off queues of the partitions a client reads.
pub(crate) struct PartitionQueues<C: ConsumerContext + 'static> {
    queues: Vec<(TopicPartition, StreamPartitionQueue<C>)>,
}

impl<C: ConsumerContext + 'static> PartitionQueues<C> {
    /// No queue split off yet.
    pub(crate) fn new() -> Self {
        PartitionQueues { queues: Vec::new() }
    }

    /// Keeps a queue for exactly the partitions in `reading`, splitting off those of `client`
    /// that have none yet. A partition librdkafka does not know cannot be split; its records
    /// come through the shared queue.
    pub(crate) fn sync(&mut self, client: &Arc<StreamConsumer<C>>, reading: &[TopicPartition]) {
        // Dropped before any split: two handles of one queue share its wake-up callback, and
        // dropping one would switch it off for the other.
        self.queues
            .retain(|(partition, _)| reading.contains(partition));
        for partition in reading {
            if self.has(partition) {
                continue;
            }
            if let Some(queue) = client.split_partition_queue(&partition.topic, partition.partition)
            {
                self.queues.push((partition.clone(), queue));
            }
        }
    }

    /// Whether `partition` has a queue of its own.
    pub(crate) fn has(&self, partition: &TopicPartition) -> bool {
        self.queues.iter().any(|(p, _)| p == partition)
    }

    /// The queues, each with its partition.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(TopicPartition, StreamPartitionQueue<C>)> {
        self.queues.iter()
    }

    /// Drops every queue (each holds its client: a client being replaced must not be kept
    /// alive by them).
    pub(crate) fn clear(&mut self) {
        self.queues.clear();
    }
}
