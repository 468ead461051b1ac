//! Consumers in groups, on a real broker: members split a topic's partitions, a partition
//! moves with everything its old owner committed, an old owner cannot commit for a partition
//! it lost, and a member that leaves hands its partitions over at once. On the embedded log,
//! which one process owns, a subscribed consumer reads every partition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::log::{CommittedStarts, Log, LogConsumer, OutRecord, Position, TopicPartition};
use sluice_log_embedded::{EmbeddedLog, Retention};
use sluice_log_kafka::{KafkaLog, KafkaLogConfig};

const ACK: Duration = Duration::from_secs(10);
const PARTITIONS: i32 = 4;

fn unique(name: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("t_{name}_{}", &id[id.len() - 10..])
}

fn kafka() -> Arc<dyn Log> {
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS")
        .expect("consumer-group tests need a broker: run `make test` (or `bash scripts/infra up` and eval its env)");
    let mut config = KafkaLogConfig::new(brokers);
    config.session_timeout_ms = 6_000;
    Arc::new(KafkaLog::new(&config, &unique("groups")).unwrap())
}

/// Appends `count` records with distinct keys spread over the topic's partitions.
async fn fill(log: &dyn Log, topic: &str, from: usize, count: usize) {
    for n in from..from + count {
        let record = OutRecord::new(format!("user-{n}").into_bytes(), n.to_string());
        log.send(topic, record, ACK).await.unwrap();
    }
}

/// What a member read: `(partition, offset)` of each record, in order.
#[derive(Default)]
struct Seen(Vec<(i32, i64)>);

impl Seen {
    /// Polls `consumer` once and commits what it returned, as a stage does after each batch.
    async fn poll_and_commit(&mut self, consumer: &mut LogConsumer) {
        let records = consumer.poll(50, Duration::from_millis(100)).await.unwrap();
        let mut positions: BTreeMap<i32, Position> = BTreeMap::new();
        for record in &records {
            self.0.push((record.partition, record.offset));
            positions.insert(record.partition, record.next_position());
        }
        let positions: Vec<Position> = positions.into_values().collect();
        consumer.commit(&positions).await.unwrap();
    }
}

async fn subscribed(log: &dyn Log, group: &str, topic: &str) -> LogConsumer {
    subscribed_reading(log, group, topic, false).await
}

/// A member of `group` reading `topic`, in time order if asked (as a shard sink reads).
async fn subscribed_reading(
    log: &dyn Log,
    group: &str,
    topic: &str,
    in_time_order: bool,
) -> LogConsumer {
    let mut consumer = log.consumer(group).await.unwrap();
    if in_time_order {
        consumer.read_in_time_order();
    }
    consumer
        .subscribe(&[topic.to_string()], Box::new(CommittedStarts))
        .await
        .unwrap();
    consumer
}

fn owned(consumer: &LogConsumer) -> BTreeSet<i32> {
    consumer.partitions().iter().map(|p| p.partition).collect()
}

/// A subscribed consumer reads every record once; a later member of the same group starts
/// from the committed positions.
async fn a_member_reads_everything_once(log: Arc<dyn Log>) {
    let topic = unique("group_all");
    log.ensure_topics(&[(topic.clone(), PARTITIONS as u32, 1)])
        .await
        .unwrap();
    fill(log.as_ref(), &topic, 0, 100).await;
    let group = unique("group_all");
    let mut first = subscribed(log.as_ref(), &group, &topic).await;
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.0.len() < 100 && tokio::time::Instant::now() < deadline {
        seen.poll_and_commit(&mut first).await;
    }
    assert_eq!(seen.0.len(), 100, "every record, once");
    assert_eq!(seen.0.iter().collect::<BTreeSet<_>>().len(), 100);
    assert_eq!(owned(&first), (0..PARTITIONS).collect());
    first.close().await;

    fill(log.as_ref(), &topic, 100, 20).await;
    let mut second = subscribed(log.as_ref(), &group, &topic).await;
    let mut later = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while later.0.len() < 20 && tokio::time::Instant::now() < deadline {
        later.poll_and_commit(&mut second).await;
    }
    // A few more polls: nothing else may come.
    for _ in 0..5 {
        later.poll_and_commit(&mut second).await;
    }
    assert_eq!(
        later.0.len(),
        20,
        "only the records appended after the first member committed"
    );
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_subscribed_consumer_reads_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&dir.path().join("log.redb"), Retention::KEEP_ALL).unwrap();
    a_member_reads_everything_once(Arc::new(log)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_subscribed_consumer_reads_every_partition() {
    a_member_reads_everything_once(kafka()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_members_split_partitions_and_take_over_without_rereading() {
    members_split_partitions_and_take_over(false).await;
}

/// The same with members reading in time order, as shard sinks do (each partition read
/// through a librdkafka queue of its own, split off before the partition is assigned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_members_reading_in_time_order_split_partitions_and_take_over_without_rereading() {
    members_split_partitions_and_take_over(true).await;
}

/// Two members split the partitions without reading any record twice (each commits before it
/// polls again, so a moving partition carries its position), each reading every partition in
/// offset order; the member that lost a partition cannot commit a position for it; when a
/// member leaves, the other takes all.
async fn members_split_partitions_and_take_over(in_time_order: bool) {
    let log = kafka();
    let topic = unique("group_split");
    log.ensure_topics(&[(topic.clone(), PARTITIONS as u32, 1)])
        .await
        .unwrap();
    let group = unique("group_split");
    fill(log.as_ref(), &topic, 0, 200).await;

    let mut a = subscribed_reading(log.as_ref(), &group, &topic, in_time_order).await;
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    // A alone owns everything and reads part of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (owned(&a).len() < PARTITIONS as usize || seen_a.0.len() < 40)
        && tokio::time::Instant::now() < deadline
    {
        seen_a.poll_and_commit(&mut a).await;
    }
    assert_eq!(
        owned(&a),
        (0..PARTITIONS).collect(),
        "a lone member owns all"
    );
    let stale: Vec<Position> = (0..PARTITIONS)
        .map(|partition| Position {
            topic: topic.clone(),
            partition,
            next_offset: a.next_offset(&topic, partition).unwrap(),
        })
        .collect();

    // B joins: the partitions are split, while A keeps working (cooperative rebalancing).
    let mut b = subscribed_reading(log.as_ref(), &group, &topic, in_time_order).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        seen_a.poll_and_commit(&mut a).await;
        seen_b.poll_and_commit(&mut b).await;
        let (pa, pb) = (owned(&a), owned(&b));
        if !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == PARTITIONS as usize {
            assert!(pa.is_disjoint(&pb), "{pa:?} and {pb:?} overlap");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group never split the partitions: a {pa:?}, b {pb:?}"
        );
    }
    // A cannot commit for a partition it lost: the position is left out, B's stays.
    let moved = *owned(&b).iter().next().unwrap();
    let before = b.committed(&topic, moved).await.unwrap();
    let rewound = Position {
        next_offset: 0,
        ..stale[moved as usize].clone()
    };
    a.commit(&[rewound])
        .await
        .expect("a lost partition's position is skipped, not an error");
    assert_eq!(b.committed(&topic, moved).await.unwrap(), before);

    // Both read on; then A leaves, and B takes every partition at once (no session timeout).
    fill(log.as_ref(), &topic, 200, 100).await;
    for _ in 0..10 {
        seen_a.poll_and_commit(&mut a).await;
        seen_b.poll_and_commit(&mut b).await;
    }
    let (b_own, b_generation) = (owned(&b), b.generation());
    let left = tokio::time::Instant::now();
    a.close().await;
    let deadline = left + Duration::from_secs(30);
    while owned(&b).len() < PARTITIONS as usize {
        seen_b.poll_and_commit(&mut b).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never took A's partitions: {:?}",
            owned(&b)
        );
    }
    let took = left.elapsed();
    // B can tell the partitions it was given after a point (a batch read before then must
    // not commit positions there) from the ones it held throughout.
    for partition in 0..PARTITIONS {
        assert_eq!(
            b.given_since(&topic, partition, b_generation),
            !b_own.contains(&partition),
            "partition {partition}: B held {b_own:?} before A left"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen_a.0.len() + seen_b.0.len() < 300 && tokio::time::Instant::now() < deadline {
        seen_b.poll_and_commit(&mut b).await;
    }
    for _ in 0..5 {
        seen_b.poll_and_commit(&mut b).await;
    }
    let all: Vec<(i32, i64)> = seen_a.0.iter().chain(&seen_b.0).copied().collect();
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 300, "every record read");
    assert_eq!(all.len(), 300, "no record read twice");
    for (member, seen) in [("A", &seen_a), ("B", &seen_b)] {
        for partition in 0..PARTITIONS {
            let offsets: Vec<i64> = seen
                .0
                .iter()
                .filter(|(p, _)| *p == partition)
                .map(|(_, offset)| *offset)
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{member} read partition {partition} out of offset order: {offsets:?}"
            );
        }
    }
    assert!(
        !seen_b.0.is_empty() && seen_a.0.len() > 40,
        "both members did work"
    );
    assert!(
        took < Duration::from_secs(6),
        "a member that leaves hands over at once, not after the session timeout: {took:?}"
    );
    let partitions: Vec<TopicPartition> = b.partitions();
    assert_eq!(partitions.len(), PARTITIONS as usize);
    b.close().await;
}
