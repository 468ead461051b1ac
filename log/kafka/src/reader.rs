//! Reading Kafka partitions: [`KafkaReader`], with partitions it is given (replays) or in a
//! consumer group with cooperative incremental (sticky) assignment (live stages and sinks).
//!
//! In a group, librdkafka reports each rebalance to [`GroupContext`] on the thread that polls
//! the client. A revocation is carried out at once (the owner has committed what it finished
//! before it polled, see `sluice_core::log::consumer`). An assignment is only recorded: the
//! group waits (librdkafka's "wait for the assign call") until the owner has claimed the
//! partitions and said where each starts ([`PartitionReader::accept`]), so no record of them
//! is fetched from a position the owner did not choose.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, MessageStream, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use sluice_core::log::{
    blocking, Assignment, LogError, PartitionReader, Position, Rebalance, Record, StartFrom,
    TopicPartition,
};

use crate::partition_queues::PartitionQueues;
use crate::time_order::{Flow, TimeOrder};
use crate::{backend, settling, META_TIMEOUT};

/// A Kafka consumer client whose rebalances Sluice handles.
type Client = StreamConsumer<GroupContext>;

/// A reader that returned nothing for this long checks whether its partitions hold records it
/// is not getting; if so, or if it cannot tell, it replaces its client.
pub(crate) const STALL_CHECK: Duration = Duration::from_secs(10);

/// Commits failing this long (or one commit attempt taking this long) mean the client is
/// stuck, typically still "waiting for coordinator" after the broker came back: a fresh client
/// finds the coordinator again.
const STUCK_COMMITS: Duration = Duration::from_secs(10);

/// Longest time a commit is tried again while the group completes a rebalance.
const REBALANCE_COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Longest wait for a client to leave its group when it is closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rebalances of one client, as librdkafka reports them while the client is polled.
#[derive(Default)]
pub(crate) struct GroupContext {
    /// Changes not handed to the reader yet.
    changes: Mutex<Vec<Rebalance>>,
    /// The last assignment, until the reader accepts it: the group waits for it.
    awaiting: Mutex<Option<TopicPartitionList>>,
    /// The client is closing: nothing reads it any more, so rebalances are served at once.
    closing: AtomicBool,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let closing = self.closing.load(Ordering::Acquire);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // The group needs an answer even to an empty assignment.
                if closing || tpl.count() == 0 {
                    if let Err(error) = consumer.incremental_assign(tpl) {
                        tracing::warn!(%error, "cannot take the group's assignment");
                    }
                    return;
                }
                *lock(&self.awaiting) = Some(tpl.clone());
                lock(&self.changes).push(Rebalance::Assigned(partitions_of(tpl)));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                if let Err(error) = consumer.incremental_unassign(tpl) {
                    tracing::warn!(%error, "cannot give up the partitions the group revoked");
                }
                if !closing && tpl.count() > 0 {
                    lock(&self.changes).push(Rebalance::Revoked {
                        partitions: partitions_of(tpl),
                        lost,
                    });
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "the consumer group reported a rebalance error");
            }
        }
    }
}

impl GroupContext {
    /// Answers an assignment the reader will never accept (the client is closing or being
    /// replaced), so the client can leave its group instead of waiting for the answer.
    fn release(&self, consumer: &Client) {
        self.closing.store(true, Ordering::Release);
        if let Some(awaiting) = lock(&self.awaiting).take() {
            if let Err(error) = consumer.incremental_assign(&awaiting) {
                tracing::debug!(%error, "cannot answer the group's last assignment while closing");
            }
        }
    }
}

/// The data behind `mutex`, even if a panic poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The partitions of a librdkafka list.
fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

/// The partition a position is in.
fn partition_of(position: &Position) -> TopicPartition {
    TopicPartition {
        topic: position.topic.clone(),
        partition: position.partition,
    }
}

/// A librdkafka list of exact positions.
fn position_list(positions: &[Position]) -> Result<TopicPartitionList, LogError> {
    let mut list = TopicPartitionList::new();
    for p in positions {
        list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
            .map_err(backend)?;
    }
    Ok(list)
}

/// Whether a commit failed because the group changed under it (a rebalance, or this member
/// was fenced out): retrying the same commit cannot succeed, and the client is not stuck.
fn group_changed(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::StaleMemberEpoch
                | RDKafkaErrorCode::AssignmentLost
        )
    )
}

/// A Kafka consumer with explicit commits, reading assigned partitions or its group's share.
pub(crate) struct KafkaReader {
    inner: Arc<Client>,
    group: String,
    /// The client settings, to build a fresh client when this one is stuck.
    config: ClientConfig,
    /// The topics of the group subscription, once subscribed.
    subscription: Option<Vec<String>>,
    /// Changes that are not the client's own (partitions lost with a replaced client).
    replaced: Vec<Rebalance>,
    /// Since when commits have been failing, if they are.
    commit_failing_since: Option<std::time::Instant>,
    /// Since when the starts of an assignment cannot be found, if they cannot.
    accept_failing_since: Option<std::time::Instant>,
    /// The next offset this reader returns from each partition it reads.
    positions: Vec<Position>,
    /// When this reader last returned a record, or was (re)assigned.
    last_progress: std::time::Instant,
    /// When it last checked for a stall.
    last_stall_check: std::time::Instant,
    /// Whether this client has read partitions in its group (cleared when it is replaced).
    held_partitions: bool,
    /// Since when a client that held partitions has none, if it has none.
    left_out_since: Option<std::time::Instant>,
    /// Fetched records not handed out yet, when the owner asked for them in timestamp order
    /// ([`PartitionReader::read_in_time_order`]).
    time_order: Option<TimeOrder>,
    /// What the time order fetches ahead per partition (half in librdkafka, half in lanes).
    time_order_lane_bytes: usize,
    /// Partitions the time order paused that the client no longer reads: they are resumed
    /// before the client is next used (librdkafka keeps a partition paused across a
    /// revocation and a new assignment).
    to_resume: Vec<TopicPartition>,
    /// In time order, once the client is configured for it, the queue of each partition it
    /// was assigned (see [`crate::partition_queues`]).
    partition_queues: Option<PartitionQueues<GroupContext>>,
}

/// Hands `take` each message `stream` holds now, without waiting, while `take` asks for more
/// (it returns `true`). Stops when the stream holds none (or served an event in place of a
/// message: the next call takes what follows it), or at an error event, which it returns (the
/// messages before it were taken).
fn take_ready<C: ConsumerContext + 'static>(
    stream: &mut MessageStream<'_, C>,
    mut take: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Option<KafkaError> {
    loop {
        match stream.next().now_or_never() {
            Some(Some(Ok(message))) => {
                if !take(&message) {
                    return None;
                }
            }
            Some(Some(Err(error))) => return Some(error),
            _ => return None,
        }
    }
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

/// Records a poll makes room for once its first record came (more grow the vector as usual):
/// a sink's batch (`max_rows`, 2,000 by default) without regrowing it record by record, and
/// no huge `max` reserved up front.
const POLL_CAPACITY: usize = 4_096;

/// Most a reader in timestamp order holds before it stops taking records from the client's
/// shared queue, in lanes: a safety bound only. A partition's records come through its own
/// queue once it is split off ([`crate::partition_queues`]), and the reader takes them only
/// while its lane has room, so the lanes hold about a lane's size per partition.
const FETCHED_BOUND_LANES: usize = 16;

/// librdkafka settings of a reader in timestamp order, unless `[log.kafka.properties]` sets
/// them: a fetch held back by a full queue is tried again after 10 ms (instead of 1 s), so a
/// partition whose lane drained is fetched again soon. (`queued.max.messages.kbytes`, the
/// bound of each partition's queue, is set from the lane size.)
const TIME_ORDER_FETCHING: &[(&str, &str)] = &[("fetch.queue.backoff.ms", "10")];

/// Longest a fetch waits for `fetch.min.bytes` (unless `fetch.wait.max.ms` is set).
const FETCH_WAIT_MAX_MS: &str = "50";

/// Bytes a fetch waits for, up to `fetch.wait.max.ms` (unless `fetch.min.bytes` is set).
const FETCH_MIN_BYTES: &str = "65536";

impl KafkaReader {
    /// A reader whose positions are committed under `group`. In a group, a member silent for
    /// `session_timeout` is considered dead and its partitions move to the others. Asked for
    /// time order, it holds up to `time_order_lane_bytes` per partition.
    pub(crate) fn new(
        base: &ClientConfig,
        group: &str,
        session_timeout: Duration,
        time_order_lane_bytes: usize,
    ) -> Result<Self, LogError> {
        let session_ms = session_timeout.as_millis().max(1);
        let mut config = base.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A fetch waits for 64 KiB or 50 ms, whichever comes first: under load the broker
            // answers fewer, fuller fetches (on a 2-core machine running the broker and the
            // pipeline this took orders/s from 5.8k to 8.9k); an idle topic's records wait
            // at most 50 ms. `[log.kafka.properties]` may change both.
            .set(
                "fetch.wait.max.ms",
                base.get("fetch.wait.max.ms").unwrap_or(FETCH_WAIT_MAX_MS),
            )
            .set(
                "fetch.min.bytes",
                base.get("fetch.min.bytes").unwrap_or(FETCH_MIN_BYTES),
            )
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            // librdkafka refuses a session longer than the poll interval (5 min by default).
            .set(
                "max.poll.interval.ms",
                base.get("max.poll.interval.ms")
                    .and_then(|v| v.parse::<u128>().ok())
                    .unwrap_or(300_000)
                    .max(session_ms)
                    .to_string(),
            )
            // Three heartbeats per session, as Kafka recommends, at most every 3 s.
            .set(
                "heartbeat.interval.ms",
                (session_ms / 3).clamp(1, 3000).to_string(),
            );
        Ok(KafkaReader {
            inner: Arc::new(new_client(&config)?),
            group: group.to_string(),
            config,
            subscription: None,
            replaced: Vec::new(),
            commit_failing_since: None,
            accept_failing_since: None,
            positions: Vec::new(),
            last_progress: std::time::Instant::now(),
            last_stall_check: std::time::Instant::now(),
            held_partitions: false,
            left_out_since: None,
            time_order: None,
            time_order_lane_bytes,
            to_resume: Vec::new(),
            partition_queues: None,
        })
    }

    /// Replaces the client with a fresh one that reads nothing yet. Outside a group, the
    /// consumer rewinds it to its positions before reading again; in a group, the fresh
    /// client joins the group again, and the old client's partitions count as lost.
    fn renew(&mut self) -> Result<(), LogError> {
        let fresh = new_client(&self.config)?;
        if let Some(topics) = &self.subscription {
            subscribe(&fresh, topics)?;
            let mut lost: Vec<TopicPartition> = self.positions.iter().map(partition_of).collect();
            // The old client's changes the owner has not seen yet are handed on in order, and
            // assignments among them were the old client's too.
            let changes = std::mem::take(&mut *lock(&self.inner.context().changes));
            for change in &changes {
                if let Rebalance::Assigned(partitions) = change {
                    lost.extend(partitions.iter().cloned());
                }
            }
            self.replaced.extend(changes);
            if let Some(awaiting) = lock(&self.inner.context().awaiting).as_ref() {
                lost.extend(partitions_of(awaiting));
            }
            lost.sort();
            lost.dedup();
            if !lost.is_empty() {
                self.replaced.push(Rebalance::Revoked {
                    partitions: lost,
                    lost: true,
                });
            }
        }
        self.swap_client(fresh);
        self.commit_failing_since = None;
        self.accept_failing_since = None;
        self.positions.clear(); // the fresh client reads nothing yet
        if let Some(order) = &mut self.time_order {
            // Nothing is paused on the fresh client, and what the old one fetched is read
            // again.
            order.reset();
        }
        self.to_resume.clear();
        Ok(())
    }

    /// Puts `fresh` in place of the client, and closes the old one on a blocking thread
    /// (closing waits for its threads: not on an async worker).
    fn swap_client(&mut self, fresh: Client) {
        // The queues hold the old client.
        if let Some(queues) = &mut self.partition_queues {
            queues.clear();
        }
        let old = std::mem::replace(&mut self.inner, Arc::new(fresh));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || close_client(old))),
            Err(_) => close_client(old),
        }
    }

    /// Assigns exactly these offsets (a local operation, no round trip to the broker).
    async fn assign_exact(&mut self, positions: Vec<Position>) -> Result<(), LogError> {
        self.forget_fetched(&positions).await;
        let list = position_list(&positions)?;
        self.split_off(&positions);
        let consumer = self.inner.clone();
        blocking(move || consumer.assign(&list).map_err(backend)).await?;
        self.positions = positions;
        self.last_progress = std::time::Instant::now();
        Ok(())
    }

    /// Moves the group's partitions to exactly these offsets (a local operation). Partitions
    /// the client no longer holds (the group is taking them away; the revocation is served by
    /// the next read) are left alone.
    async fn seek_exact(&mut self, positions: Vec<Position>) -> Result<(), LogError> {
        let consumer = self.inner.clone();
        let held = blocking(move || consumer.assignment().map_err(backend)).await?;
        let positions: Vec<Position> = positions
            .into_iter()
            .filter(|p| held.find_partition(&p.topic, p.partition).is_some())
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        self.forget_fetched(&positions).await;
        let list = position_list(&positions)?;
        let consumer = self.inner.clone();
        blocking(move || {
            let done = consumer
                .seek_partitions(list, Duration::from_secs(5))
                .map_err(backend)?;
            for element in done.elements() {
                if let Err(error) = element.error() {
                    return Err(LogError::backend(
                        format!(
                            "cannot move the reader of {}/{}",
                            element.topic(),
                            element.partition()
                        ),
                        error,
                    ));
                }
            }
            Ok(())
        })
        .await?;
        self.read_from(positions);
        Ok(())
    }

    /// Records that the client reads these partitions from these positions now (others it
    /// reads are unchanged).
    fn read_from(&mut self, positions: Vec<Position>) {
        for target in positions {
            match self
                .positions
                .iter_mut()
                .find(|p| p.partition == target.partition && p.topic == target.topic)
            {
                Some(position) => *position = target,
                None => self.positions.push(target),
            }
        }
        if !self.positions.is_empty() {
            self.held_partitions = true;
            self.left_out_since = None;
        }
        self.last_progress = std::time::Instant::now();
    }

    /// Gives the time order a lane for exactly the partitions this reader reads, and queues
    /// the partitions it paused but no longer reads to be resumed.
    fn sync_lanes(&mut self) {
        if let Some(order) = &mut self.time_order {
            let reading: Vec<TopicPartition> = self.positions.iter().map(partition_of).collect();
            let unpause = order.keep_only(&reading, std::time::Instant::now());
            self.to_resume.extend(unpause);
        }
    }

    /// Reading in time order, splits off the queues of the partitions at `positions` (about to
    /// be assigned to the client).
    fn split_off(&mut self, positions: &[Position]) {
        if let Some(queues) = &mut self.partition_queues {
            let partitions: Vec<TopicPartition> = positions.iter().map(partition_of).collect();
            queues.split(&self.inner, &partitions);
        }
    }

    /// Drops what the time order fetched of these partitions (the client is moved, and fetches
    /// them again), resuming those it paused.
    async fn forget_fetched(&mut self, positions: &[Position]) {
        if let Some(order) = &mut self.time_order {
            let partitions: Vec<TopicPartition> = positions.iter().map(partition_of).collect();
            let unpause = order.clear(&partitions, std::time::Instant::now());
            self.to_resume.extend(unpause);
        }
        self.resume_released().await;
    }

    /// Resumes the partitions in `to_resume`. A failure is only logged: a partition that is no
    /// longer assigned keeps no fetch to resume.
    async fn resume_released(&mut self) {
        if self.to_resume.is_empty() {
            return;
        }
        let partitions = std::mem::take(&mut self.to_resume);
        if let Err(error) = self.pause_or_resume(partitions, false).await {
            tracing::debug!(group = self.group, %error, "cannot resume partitions the reader paused");
        }
    }

    /// Pauses (or resumes) fetching `partitions` (a local operation).
    async fn pause_or_resume(
        &self,
        partitions: Vec<TopicPartition>,
        pause: bool,
    ) -> Result<(), LogError> {
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition(&p.topic, p.partition);
        }
        let consumer = self.inner.clone();
        blocking(move || {
            let done = if pause {
                consumer.pause(&list)
            } else {
                consumer.resume(&list)
            };
            done.map_err(backend)
        })
        .await
    }

    /// Pauses the partitions the time order finds far ahead and resumes those it drained.
    async fn apply_flow(&mut self) {
        let Some(order) = &mut self.time_order else {
            return;
        };
        let changes = order.flow();
        let mut pauses = Vec::new();
        for change in changes {
            match change {
                Flow::Pause(partition) => pauses.push(partition),
                // A partition with a queue of its own was never paused.
                Flow::Resume(partition) if !self.has_own_queue(&partition) => {
                    self.to_resume.push(partition)
                }
                Flow::Resume(_) => {}
            }
        }
        for partition in pauses {
            self.pause_full(partition).await;
        }
        self.resume_released().await;
    }

    /// [`PartitionReader::poll`] in timestamp order (see [`crate::time_order`]): fetched
    /// records are buffered per partition and handed out merged, waiting (within `wait`) for
    /// lagging partitions while the reader is behind.
    async fn poll_in_time_order(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        self.sync_lanes();
        self.resume_released().await;
        let mut notice = None;
        loop {
            // Take what is fetched already into the shared queue. A lane that reaches its
            // pause mark is paused at once (unless its partition has a queue of its own), so
            // librdkafka drops what else it fetched of it and the lanes stay bounded.
            loop {
                let mut full = None;
                let order = self.time_order.as_mut().expect("reading in time order");
                let bound = order.lane_bytes().saturating_mul(FETCHED_BOUND_LANES);
                if order.bytes() < bound {
                    let now = std::time::Instant::now();
                    let error = take_ready(&mut self.inner.stream(), |message| {
                        full = order.push(to_record(message), now);
                        full.is_none() && order.bytes() < bound
                    });
                    notice = notice.or(error);
                }
                match full {
                    Some(partition) => self.pause_full(partition).await,
                    None => break,
                }
            }
            // Then what each partition's own queue holds, up to a full lane (the rest waits
            // there, and librdkafka fetches no more of it once that is full).
            let error = self.take_split_off();
            notice = notice.or(error);
            // Pauses and resumes first: nothing is taken from the lanes before an await, so
            // a poll dropped half-way loses nothing.
            self.apply_flow().await;
            let now = std::time::Instant::now();
            let order = self.time_order.as_mut().expect("reading in time order");
            let records = order.take(max, now, sluice_core::order::now_ms());
            if !records.is_empty() {
                if let Some(error) = notice {
                    tracing::warn!(group = self.group, %error, "the Kafka consumer reported an error; returning the records read so far");
                }
                self.returned(&records);
                return Ok(records);
            }
            let next_change = order.next_change(now);
            if tokio::time::Instant::now() >= deadline {
                self.recover_if_stalled().await?;
                return match notice {
                    Some(error) => Err(backend(error)),
                    None => Ok(Vec::new()),
                };
            }
            let wake =
                next_change.map_or(deadline, |d| deadline.min(tokio::time::Instant::now() + d));
            // Wait for the shared queue or a queue whose lane has room. The record that ends
            // the wait is put in its lane before anything else is awaited, so a poll dropped
            // here loses nothing.
            let order = self.time_order.as_mut().expect("reading in time order");
            let mut own: futures::stream::SelectAll<_> = self
                .partition_queues
                .iter()
                .flat_map(PartitionQueues::iter)
                .filter(|(partition, _)| !order.is_full(partition))
                .map(|(_, queue)| queue.stream())
                .collect();
            let shared = &self.inner;
            let next = tokio::time::timeout_at(wake, async {
                tokio::select! {
                    message = shared.recv() => message,
                    Some(message) = own.next() => message,
                }
            })
            .await;
            let full = match next {
                Ok(Ok(message)) => order.push(to_record(&message), std::time::Instant::now()),
                Ok(Err(error)) => {
                    notice = Some(error);
                    None
                }
                // The hold lapsed or the deadline passed: the loop takes what it may, or
                // returns.
                Err(_) => None,
            };
            drop(own);
            if let Some(partition) = full {
                self.pause_full(partition).await;
            }
        }
    }

    /// Moves the records already in the partitions' own queues into their lanes, each up to a
    /// full lane. Returns the first error event one of them reported (the records before it
    /// are kept, and the other queues are still read). Records of a partition no longer read
    /// are dropped by librdkafka as they are read (and none is handed out).
    fn take_split_off(&mut self) -> Option<KafkaError> {
        let (Some(order), Some(queues)) = (self.time_order.as_mut(), &self.partition_queues) else {
            return None;
        };
        let now = std::time::Instant::now();
        let mut first_error = None;
        for (partition, queue) in queues.iter() {
            if order.is_full(partition) {
                continue;
            }
            let error = take_ready(&mut queue.stream(), |message| {
                order.push(to_record(message), now).is_none()
            });
            first_error = first_error.or(error);
        }
        first_error
    }

    /// Pauses a partition whose lane just filled up. A partition with a queue of its own is
    /// not paused: the reader stops taking its records, and librdkafka stops fetching it once
    /// its queue is full.
    async fn pause_full(&mut self, partition: TopicPartition) {
        if self.has_own_queue(&partition) {
            return;
        }
        if let Err(error) = self.pause_or_resume(vec![partition.clone()], true).await {
            tracing::debug!(group = self.group, %error, "cannot pause a partition that is ahead");
            if let Some(order) = &mut self.time_order {
                order.unmark_paused(&partition);
            }
        }
    }

    /// Whether `partition`'s records come through a queue of its own.
    fn has_own_queue(&self, partition: &TopicPartition) -> bool {
        self.partition_queues
            .as_ref()
            .is_some_and(|queues| queues.has(partition))
    }

    /// Notes that `records` were handed out: the reader's positions move past them.
    fn returned(&mut self, records: &[Record]) {
        self.last_progress = std::time::Instant::now();
        for record in records {
            if let Some(position) = self
                .positions
                .iter_mut()
                .find(|p| p.partition == record.partition && p.topic == record.topic)
            {
                position.next_offset = position.next_offset.max(record.offset + 1);
            }
        }
    }

    /// Whether a partition this reader reads holds records beyond its position, or the
    /// client cannot even tell (its watermark queries fail).
    async fn lagging(&self) -> bool {
        let consumer = self.inner.clone();
        let positions = self.positions.clone();
        blocking(move || {
            Ok(positions.iter().any(|p| {
                match consumer.fetch_watermarks(&p.topic, p.partition, Duration::from_secs(5)) {
                    Ok((_, high)) => high > p.next_offset,
                    // A broker that does not answer says nothing about the client: replacing
                    // it now, while the broker is away, leaves a client that may never get
                    // its partitions back (seen with a broker paused). Look again later.
                    Err(error) if broker_unreachable(&error) => false,
                    Err(_) => true,
                }
            }))
        })
        .await
        .unwrap_or(true)
    }

    /// After librdkafka has lost and regained the broker, a client can stop fetching some
    /// partitions for good ("new leader not found in cache") without reporting anything: a
    /// reader that got nothing for [`STALL_CHECK`] while its partitions hold more records
    /// replaces its client (outside a group, it assigns the fresh one at its positions).
    async fn recover_if_stalled(&mut self) -> Result<(), LogError> {
        if self.positions.is_empty() {
            return self.rejoin_if_left_out();
        }
        if self.last_progress.elapsed() < STALL_CHECK
            || self.last_stall_check.elapsed() < STALL_CHECK
        {
            return Ok(());
        }
        self.last_stall_check = std::time::Instant::now();
        if !self.lagging().await {
            return Ok(());
        }
        tracing::warn!(
            group = self.group,
            idle_s = self.last_progress.elapsed().as_secs(),
            "the Kafka consumer client gets no records although its partitions hold more; replacing it"
        );
        let positions = self.positions.clone();
        self.renew()?;
        if self.subscription.is_none() {
            self.assign_exact(positions).await?;
        }
        Ok(())
    }

    /// A group member whose session ran out while the broker was away loses its partitions
    /// and rejoins; after a broker pause a client was seen to stay out for good, logging
    /// nothing. A client that held partitions and has had none for twice [`STALL_CHECK`] is
    /// replaced, once per loss (a member the group legitimately gives nothing, with more
    /// members than partitions, is replaced at most once, not over and over).
    fn rejoin_if_left_out(&mut self) -> Result<(), LogError> {
        if self.subscription.is_none() || !self.held_partitions {
            return Ok(());
        }
        let since = *self
            .left_out_since
            .get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < 2 * STALL_CHECK {
            return Ok(());
        }
        tracing::warn!(
            group = self.group,
            out_s = since.elapsed().as_secs(),
            "the Kafka consumer client lost its partitions and the group gave none back; replacing it"
        );
        self.held_partitions = false;
        self.left_out_since = None;
        self.renew()
    }

    /// Resolves every start position to an offset now, so that `End` means the end at
    /// assignment time (librdkafka would resolve it later, racing producers). Returns the
    /// offset each partition starts at. Right after topics are created their leaders may
    /// still be settling: failures are retried briefly.
    async fn resolve(&self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        settling()
            .run(
                || {
                    let (consumer, assignments) = (self.inner.clone(), assignments.clone());
                    blocking(move || resolve_starts(&consumer, &assignments))
                },
                |_| sluice_core::retry::Verdict::Retry,
                |error, _| tracing::debug!(%error, "cannot resolve where partitions start yet; retrying"),
            )
            .await
            .map_err(sluice_core::retry::GaveUp::into_error)
    }
}

/// Whether `error` only says the broker did not answer (away, paused, or too slow).
fn broker_unreachable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::RequestTimedOut
        )
    )
}

/// A client with its own [`GroupContext`].
fn new_client(config: &ClientConfig) -> Result<Client, LogError> {
    config
        .create_with_context(GroupContext::default())
        .map_err(backend)
}

/// Subscribes `client` to `topics`.
fn subscribe(client: &Client, topics: &[String]) -> Result<(), LogError> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    client.subscribe(&topics).map_err(backend)
}

/// Leaves the group and closes the client (blocking: call on a blocking thread).
fn close_client(client: Arc<Client>) {
    client.context().release(&client);
    drop(client);
}

/// The offset each assignment starts at (blocking: call on a blocking thread).
fn resolve_starts(
    consumer: &Client,
    assignments: &[Assignment],
) -> Result<Vec<Position>, LogError> {
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
    let mut starts = Vec::with_capacity(assignments.len());
    for a in assignments {
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
                        sluice_core::log::clamp_position(&a.topic, a.partition, n, low, high)
                    }
                    _ => watermarks()?.0,
                }
            }
            StartFrom::Beginning => watermarks()?.0,
            StartFrom::End => watermarks()?.1,
            StartFrom::Offset(n) | StartFrom::Resume(n) => {
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
        starts.push(Position {
            topic: a.topic.clone(),
            partition: a.partition,
            next_offset: offset,
        });
    }
    Ok(starts)
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        // Dropping the client waits until it left its group: answer an assignment it still
        // waits for (or it would wait for ever), and wait on a blocking thread.
        let client = self.inner.clone();
        client.context().release(&client);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(client))),
            Err(_) => drop(client),
        }
    }
}

#[async_trait]
impl PartitionReader for KafkaReader {
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        let starts = self.resolve(assignments).await?;
        tracing::debug!(
            group = self.group,
            partitions = starts.len(),
            "assigning partitions"
        );
        self.assign_exact(starts.clone()).await?;
        Ok(starts)
    }

    async fn subscribe(&mut self, topics: &[String]) -> Result<(), LogError> {
        subscribe(&self.inner, topics)?;
        self.subscription = Some(topics.to_vec());
        self.positions.clear();
        Ok(())
    }

    fn rebalances(&mut self) -> Vec<Rebalance> {
        let mut changes = std::mem::take(&mut self.replaced);
        changes.append(&mut lock(&self.inner.context().changes));
        for change in &changes {
            if let Rebalance::Revoked { partitions, .. } = change {
                self.positions.retain(|p| {
                    !partitions
                        .iter()
                        .any(|r| r.partition == p.partition && r.topic == p.topic)
                });
            }
        }
        // A revoked partition stays paused in librdkafka: it is resumed before the client
        // takes an assignment again.
        self.sync_lanes();
        changes
    }

    /// Called before the reader reads, it replaces the client (which has joined nothing yet)
    /// with one whose partitions each get a queue of their own ([`crate::partition_queues`]),
    /// bounded to half the fetch-ahead, and that retries a fetch held back by a full queue
    /// soon ([`TIME_ORDER_FETCHING`]). Called later, the lanes work with the client as it is,
    /// pausing a partition whose lane is full.
    fn read_in_time_order(&mut self) {
        if self.time_order.is_some() {
            return;
        }
        // Half of a partition's fetch-ahead waits in its own queue in librdkafka, half in its
        // lane.
        let half = (self.time_order_lane_bytes / 2).max(1024);
        self.time_order = Some(TimeOrder::new(half));
        if self.subscription.is_some() || !self.positions.is_empty() {
            // Already reading: the lanes work with the client as it is, pausing partitions.
            return;
        }
        let mut config = self.config.clone();
        let queued_kib = (half / 1024).to_string();
        let fetching = TIME_ORDER_FETCHING
            .iter()
            .copied()
            .chain([("queued.max.messages.kbytes", queued_kib.as_str())]);
        for (property, value) in fetching {
            if config.get(property).is_none() {
                config.set(property, value);
            }
        }
        match new_client(&config) {
            Ok(fresh) => {
                self.config = config;
                self.swap_client(fresh);
                self.partition_queues = Some(PartitionQueues::new());
            }
            Err(error) => {
                tracing::warn!(group = self.group, %error, "cannot configure the Kafka consumer for reading in time order; reading with its defaults")
            }
        }
    }

    /// A client that cannot find where its assigned partitions start for [`STALL_CHECK`]
    /// (after a broker came back it can be left unable to reach a partition's leader) is
    /// replaced: its assignment counts as lost, and the fresh client joins the group again.
    async fn accept(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        let started = std::time::Instant::now();
        let resolved = tokio::time::timeout(STALL_CHECK, self.resolve(assignments))
            .await
            .unwrap_or(Err(LogError::Timeout(STALL_CHECK)));
        let starts = match resolved {
            Ok(starts) => {
                self.accept_failing_since = None;
                starts
            }
            Err(error) => {
                let since = *self.accept_failing_since.get_or_insert(started);
                if since.elapsed() >= STALL_CHECK {
                    tracing::warn!(
                        group = self.group,
                        %error,
                        "cannot find where the assigned partitions start; replacing the Kafka consumer client"
                    );
                    self.accept_failing_since = None;
                    self.renew()?;
                }
                return Err(error);
            }
        };
        self.resume_released().await;
        let list = position_list(&starts)?;
        self.split_off(&starts);
        let consumer = self.inner.clone();
        blocking(move || {
            // The group's assignment is answered with the same partitions, now with their
            // offsets: the group waits for this call.
            consumer.incremental_assign(&list).map_err(backend)?;
            lock(&consumer.context().awaiting).take();
            Ok(())
        })
        .await?;
        tracing::debug!(
            group = self.group,
            partitions = starts.len(),
            "reading the partitions the group assigned"
        );
        self.read_from(starts.clone());
        Ok(starts)
    }

    async fn close(&mut self) {
        let client = self.inner.clone();
        let leaving = blocking(move || {
            client.context().release(&client);
            client.unsubscribe();
            Ok(())
        });
        // Serve the revocation that leaving the group brings, until nothing is assigned.
        let left = async {
            leaving.await?;
            loop {
                let _ = tokio::time::timeout(Duration::from_millis(100), self.inner.recv()).await;
                let client = self.inner.clone();
                if blocking(move || Ok(client.assignment().map_or(0, |a| a.count()))).await? == 0 {
                    return Ok::<(), LogError>(());
                }
            }
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, left).await {
            Ok(Ok(())) => tracing::debug!(group = self.group, "left the consumer group"),
            Ok(Err(error)) => {
                tracing::warn!(group = self.group, %error, "cannot leave the consumer group cleanly")
            }
            Err(_) => tracing::warn!(
                group = self.group,
                "the Kafka consumer did not leave its group in time"
            ),
        }
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        if self.time_order.is_some() {
            return self.poll_in_time_order(max, wait).await;
        }
        // Error events (the broker going away, a failed connection) are notices: librdkafka
        // reconnects by itself and loses no record over them. They queue up while the broker
        // is away, so take them all now, or a caller that pauses after each error would still
        // be working through stale notices long after the broker is back.
        let deadline = tokio::time::Instant::now() + wait;
        let mut notice = None;
        let first = loop {
            match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                Ok(Ok(message)) => break message,
                Ok(Err(error)) => notice = Some(error),
                Err(_) => {
                    self.recover_if_stalled().await?;
                    return match notice {
                        Some(error) => Err(backend(error)),
                        None => Ok(Vec::new()),
                    };
                }
            }
        };
        let mut records = Vec::with_capacity(max.min(POLL_CAPACITY));
        records.push(to_record(&first));
        drop(first);
        // Take whatever else is already fetched, without waiting for more. An error event in
        // that stream (a broker going away, say) ends the batch but never discards the records
        // already taken: librdkafka's position is past them, so they would be lost.
        if records.len() < max {
            let error = take_ready(&mut self.inner.stream(), |message| {
                records.push(to_record(message));
                records.len() < max
            });
            if let Some(error) = error {
                tracing::warn!(group = self.group, %error, "the Kafka consumer reported an error; returning the records read so far");
            }
        }
        self.returned(&records);
        Ok(records)
    }

    /// Moves to the exact offsets, with no round trip to the broker, so a rewind works at once
    /// even while the broker is away; nothing is done when the reader is already there (in
    /// any order; reading in time order, the client is ahead of it and the lanes hold the
    /// records in between, which are kept). Otherwise what the lanes held of those partitions
    /// is dropped and fetched again. An offset that retention removed meanwhile makes librdkafka start at the oldest record
    /// (`auto.offset.reset=earliest`), which the consumer sees as a gap and reports.
    async fn rewind(&mut self, positions: Vec<Position>) -> Result<Vec<Position>, LogError> {
        // After an error event that lost nothing (this reader returns what it took), the
        // client is already where the consumer wants it: assigning again would only restart
        // its fetches, and while the broker is away every restart reports the outage again.
        let already_there = positions.len() == self.positions.len()
            && positions.iter().all(|p| self.positions.contains(p));
        if !already_there {
            if self.subscription.is_some() {
                // In a group, assigning would answer (or disturb) a rebalance: seek instead.
                self.seek_exact(positions.clone()).await?;
            } else {
                self.assign_exact(positions.clone()).await?;
            }
        }
        Ok(positions)
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let list = position_list(positions)?;
        let consumer = self.inner.clone();
        let started = std::time::Instant::now();
        // A synchronous commit can block for most of a minute while the client waits for a
        // coordinator; stop waiting once it counts as stuck (the commit is retried, and a late
        // success of the abandoned one only moves the position back: records are re-read).
        let commit = blocking(move || {
            // While the group completes a rebalance the broker refuses commits for a moment;
            // this member still owns its partitions until it polls again (a revocation is
            // carried out there), so the commit is tried again: a partition that moves takes
            // the position of everything finished with it.
            let mut pause = Duration::from_millis(20);
            loop {
                match consumer.commit(&list, CommitMode::Sync) {
                    Err(error)
                        if error.rdkafka_error_code()
                            == Some(RDKafkaErrorCode::RebalanceInProgress)
                            && started.elapsed() + pause < REBALANCE_COMMIT_WAIT =>
                    {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    Err(error) if group_changed(&error) => {
                        return Err(LogError::Rebalanced(error.to_string()))
                    }
                    other => return other.map_err(backend),
                }
            }
        });
        let result = tokio::time::timeout(STUCK_COMMITS, commit)
            .await
            .unwrap_or(Err(LogError::Timeout(STUCK_COMMITS)));
        match &result {
            Ok(()) | Err(LogError::Rebalanced(_)) => self.commit_failing_since = None,
            Err(error) => {
                let since = *self.commit_failing_since.get_or_insert(started);
                if since.elapsed() >= STUCK_COMMITS || started.elapsed() >= STUCK_COMMITS {
                    tracing::warn!(group = self.group, %error, "commits keep failing; replacing the Kafka consumer client");
                    self.renew()?;
                }
            }
        }
        result
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
