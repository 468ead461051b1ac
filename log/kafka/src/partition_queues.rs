//! One librdkafka queue per partition, for a reader in time order.
//!
//! A consumer's partitions normally share one queue, and librdkafka's fetch-ahead bound
//! (`queued.max.messages.kbytes`) applies to that queue as a whole: once it is full of some
//! partitions' records, no partition is fetched. A reader that merges partitions by timestamp
//! needs the partition it waits for, so it had to take the others' records out of the way and
//! pause them, and pausing makes librdkafka drop what it had fetched of them (measured: a sink
//! catching up fetched its topic three times over).
//!
//! Split off into a queue of its own, each partition is fetched ahead up to that bound on its
//! own: the reader takes records from the partition it needs, the others wait in librdkafka,
//! fetched once, and nothing is paused. A partition is split off before the client is assigned
//! it, so none of its records ever go through the shared queue (which would put them out of
//! order with those in its own queue); librdkafka keeps it split off for the client's life,
//! across revocations and new assignments, so its queue is kept as long as the client. Records
//! fetched before a revocation or a rewind are dropped by librdkafka when the queue is read.

use std::sync::Arc;

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use sluice_core::log::TopicPartition;

/// The split-off queues of the partitions a client was assigned, reading in time order.
pub(crate) struct PartitionQueues<C: ConsumerContext + 'static> {
    queues: Vec<(TopicPartition, StreamPartitionQueue<C>)>,
}

impl<C: ConsumerContext + 'static> PartitionQueues<C> {
    /// No queue split off yet.
    pub(crate) fn new() -> Self {
        PartitionQueues { queues: Vec::new() }
    }

    /// Splits off the queue of each of `partitions` that has none yet. Called before `client`
    /// is assigned them: from then on librdkafka puts none of their records in the shared
    /// queue. (`None` from librdkafka, which it answers only for a topic name it cannot
    /// hold, leaves the partition's records in the shared queue.)
    pub(crate) fn split<'a>(
        &mut self,
        client: &Arc<StreamConsumer<C>>,
        partitions: impl IntoIterator<Item = &'a TopicPartition>,
    ) {
        for partition in partitions {
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
