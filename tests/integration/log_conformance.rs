//! One conformance suite for every log backend: real Apache Kafka (from `scripts/infra up`,
//! `SLUICE_KAFKA_BROKERS`) and the embedded log. Both must behave the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::log::{
    Assignment, Log, LogConsumer, LogError, OutRecord, PartitionReader, Position, Record, StartFrom,
};
use sluice_log_embedded::{partition_for, EmbeddedLog, Retention};
use sluice_log_kafka::{KafkaLog, KafkaLogConfig};

const ACK: Duration = Duration::from_secs(10);

fn unique(name: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("t_{name}_{}", &id[id.len() - 10..])
}

async fn read_all(consumer: &mut LogConsumer, expected: usize) -> Vec<Record> {
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while records.len() < expected && tokio::time::Instant::now() < deadline {
        records.extend(
            consumer
                .poll(500, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    records
}

async fn assign(consumer: &mut LogConsumer, topic: &str, partitions: i32, start: StartFrom) {
    let assignments = (0..partitions)
        .map(|partition| Assignment {
            topic: topic.into(),
            partition,
            start,
        })
        .collect();
    consumer.assign(assignments).await.unwrap();
}

/// The contract every backend keeps.
async fn conformance(log: Arc<dyn Log>) {
    let topic = unique("conf");
    let other = unique("conf_other");
    let topics = vec![(topic.clone(), 4, 1), (other.clone(), 1, 1)];
    log.ensure_topics(&topics).await.unwrap();
    log.ensure_topics(&topics)
        .await
        .expect("ensure_topics must be idempotent");
    assert_eq!(log.partition_count(&topic).await.unwrap(), 4);
    log.check_ready().await.unwrap();

    // Keyed appends: one key, one partition (Kafka's murmur2 on both backends), offsets grow.
    let before = sluice_core::order::now_ms() - 1;
    let users: Vec<String> = (0..10).map(|n| format!("user-{n}")).collect();
    let mut by_partition: BTreeMap<i32, Vec<(i64, String, usize)>> = BTreeMap::new();
    for n in 0..200usize {
        let user = &users[n % users.len()];
        let record = OutRecord::new(user.as_bytes(), format!("payload-{n}").into_bytes())
            .with_header("n", n.to_string());
        let delivery = log.send(&topic, record, ACK).await.unwrap();
        assert_eq!(
            delivery.partition,
            partition_for(user.as_bytes(), 4),
            "key {user} went to an unexpected partition"
        );
        by_partition.entry(delivery.partition).or_default().push((
            delivery.offset,
            user.clone(),
            n,
        ));
    }
    for deliveries in by_partition.values() {
        assert!(
            deliveries.windows(2).all(|w| w[0].0 < w[1].0),
            "offsets must increase within a partition"
        );
    }
    let mut total_high = 0;
    for partition in 0..4 {
        let (low, high) = log.watermarks(&topic, partition).await.unwrap();
        assert_eq!(low, 0);
        assert_eq!(
            high,
            by_partition.get(&partition).map_or(0, Vec::len) as i64
        );
        total_high += high;
    }
    assert_eq!(total_high, 200);

    // Reading from the beginning returns every record, in order within each partition.
    let group = unique("group");
    let mut consumer = log.consumer(&group).await.unwrap();
    assign(&mut consumer, &topic, 4, StartFrom::Beginning).await;
    let records = read_all(&mut consumer, 200).await;
    assert_eq!(records.len(), 200);
    let mut seen: HashMap<i32, Vec<i64>> = HashMap::new();
    for record in &records {
        let n: usize = record.header("n").unwrap().parse().unwrap();
        assert_eq!(record.payload, format!("payload-{n}").into_bytes());
        assert_eq!(record.key, users[n % users.len()].as_bytes());
        assert!(record.timestamp_ms.unwrap() >= before);
        seen.entry(record.partition)
            .or_default()
            .push(record.offset);
    }
    for offsets in seen.values() {
        assert!(
            offsets.windows(2).all(|w| w[0] + 1 == w[1]),
            "records must come in offset order"
        );
    }

    // Committed positions survive in the group; another group starts afresh.
    let commits: Vec<Position> = (0..4)
        .map(|partition| Position {
            topic: topic.clone(),
            partition,
            next_offset: 3,
        })
        .collect();
    consumer.commit(&commits).await.unwrap();
    assert_eq!(consumer.committed(&topic, 2).await.unwrap(), Some(3));
    drop(consumer);
    let mut resumed = log.consumer(&group).await.unwrap();
    assign(&mut resumed, &topic, 4, StartFrom::Committed).await;
    let rest = read_all(&mut resumed, 200 - 12).await;
    assert_eq!(
        rest.len(),
        200 - 12,
        "resuming from committed positions skips exactly what was committed"
    );
    assert!(rest.iter().all(|r| r.offset >= 3));
    let mut fresh = log.consumer(&unique("fresh")).await.unwrap();
    assert_eq!(fresh.committed(&topic, 0).await.unwrap(), None);
    assign(&mut fresh, &topic, 4, StartFrom::Committed).await;
    assert_eq!(
        read_all(&mut fresh, 200).await.len(),
        200,
        "no committed position means the beginning"
    );

    // Seek by offset and by time; End sees only new records.
    let busiest = *by_partition.iter().max_by_key(|(_, d)| d.len()).unwrap().0;
    let mut seek = log.consumer(&unique("seek")).await.unwrap();
    seek.assign(vec![Assignment {
        topic: topic.clone(),
        partition: busiest,
        start: StartFrom::Offset(5),
    }])
    .await
    .unwrap();
    let from_five = read_all(&mut seek, by_partition[&busiest].len() - 5).await;
    assert_eq!(from_five.first().map(|r| r.offset), Some(5));

    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = sluice_core::order::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tail = log.consumer(&unique("tail")).await.unwrap();
    assign(&mut tail, &topic, 4, StartFrom::End).await;
    assert!(
        tail.poll(100, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "End must not return old records"
    );
    let late = log
        .send(
            &topic,
            OutRecord::new(b"user-1".to_vec(), b"late".to_vec()),
            ACK,
        )
        .await
        .unwrap();
    let got = read_all(&mut tail, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"late");
    assert_eq!(
        log.offset_for_time(&topic, late.partition, cut)
            .await
            .unwrap(),
        late.offset
    );
    assert_eq!(
        log.offset_for_time(&topic, late.partition, cut + 3_600_000)
            .await
            .unwrap(),
        late.offset + 1,
        "a time after the newest record maps to the high watermark"
    );
    let mut by_time = log.consumer(&unique("time")).await.unwrap();
    assign(&mut by_time, &topic, 4, StartFrom::Time(cut)).await;
    let after_cut = read_all(&mut by_time, 1).await;
    assert_eq!(
        after_cut
            .iter()
            .map(|r| r.payload.clone())
            .collect::<Vec<_>>(),
        vec![b"late".to_vec()]
    );

    // Topics are independent.
    assert_eq!(log.watermarks(&other, 0).await.unwrap(), (0, 0));
    log.flush(Duration::from_secs(5)).await.unwrap();
}

/// A backend's real reader with the faults of a broker outage or a storage error injected
/// between records: every fourth poll takes records and then fails, losing them, and every
/// fourth poll (another one) drops records from the middle of its batch. Like librdkafka, the
/// reader's own position has moved past every record it took either way.
struct FaultyReader {
    inner: Box<dyn PartitionReader>,
    polls: u64,
    injected: u64,
}

#[async_trait]
impl PartitionReader for FaultyReader {
    async fn assign(&mut self, assignments: Vec<Assignment>) -> Result<Vec<Position>, LogError> {
        self.inner.assign(assignments).await
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let records = self.inner.poll(max, wait).await?;
        if records.is_empty() {
            return Ok(records);
        }
        self.polls += 1;
        match self.polls % 4 {
            1 => {
                self.injected += records.len() as u64;
                Err(LogError::backend_message(
                    "injected: connection to the broker lost",
                ))
            }
            2 => Ok(records
                .into_iter()
                .enumerate()
                .filter(|(n, _)| {
                    let keep = n % 3 != 1;
                    if !keep {
                        self.injected += 1;
                    }
                    keep
                })
                .map(|(_, record)| record)
                .collect()),
            _ => Ok(records),
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        self.inner.commit(positions).await
    }

    async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>, LogError> {
        self.inner.committed(topic, partition).await
    }
}

/// A consumer whose backend loses records on errors still hands out every record once, in
/// order, and refuses to commit past what it handed out.
async fn no_record_is_skipped_when_the_reader_fails(log: Arc<dyn Log>) {
    let topic = unique("faults");
    log.ensure_topics(&[(topic.clone(), 4, 1)]).await.unwrap();
    let total = 300;
    for n in 0..total {
        let record = OutRecord::new(format!("user-{}", n % 13).into_bytes(), n.to_string());
        log.send(&topic, record, ACK).await.unwrap();
    }
    let group = unique("faults");
    let mut faulty = FaultyReader {
        inner: log.reader(&group).await.unwrap(),
        polls: 0,
        injected: 0,
    };
    // Check the fault really loses records when nothing guards the reader.
    faulty
        .assign(
            (0..4)
                .map(|partition| Assignment {
                    topic: topic.clone(),
                    partition,
                    start: StartFrom::Beginning,
                })
                .collect(),
        )
        .await
        .unwrap();
    let mut unguarded = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match faulty.poll(7, Duration::from_millis(300)).await {
            Ok(records) if records.is_empty() => break,
            Ok(records) => unguarded += records.len(),
            Err(_) => {}
        }
    }
    assert!(
        unguarded < total && faulty.injected > 0,
        "the injected faults must lose records of a bare reader ({unguarded} of {total} read)"
    );

    let mut consumer = LogConsumer::new(Box::new(faulty), &group);
    assign(&mut consumer, &topic, 4, StartFrom::Beginning).await;
    let mut records = Vec::new();
    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while records.len() < total && tokio::time::Instant::now() < deadline {
        match consumer.poll(7, Duration::from_millis(200)).await {
            Ok(batch) => records.extend(batch),
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0, "the faulty reader must have failed some polls");
    assert_eq!(
        records.len(),
        total,
        "every record once, despite {errors} failed polls"
    );
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for record in &records {
        by_partition
            .entry(record.partition)
            .or_default()
            .push(record.offset);
    }
    for (partition, offsets) in &by_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, &expected,
            "partition {partition}: offsets handed out in order, none skipped or repeated"
        );
    }
    let mut payloads: Vec<usize> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).parse().unwrap())
        .collect();
    payloads.sort_unstable();
    assert_eq!(payloads, (0..total).collect::<Vec<_>>());

    // Positions up to what was read commit; one past it is refused.
    let (&busiest, offsets) = by_partition.iter().max_by_key(|(_, o)| o.len()).unwrap();
    let read = offsets.len() as i64;
    consumer
        .commit(&[Position {
            topic: topic.clone(),
            partition: busiest,
            next_offset: read,
        }])
        .await
        .unwrap();
    assert_eq!(
        consumer.committed(&topic, busiest).await.unwrap(),
        Some(read)
    );
    let refused = consumer
        .commit(&[Position {
            topic: topic.clone(),
            partition: busiest,
            next_offset: read + 1,
        }])
        .await;
    assert!(
        matches!(refused, Err(LogError::CommitPastRead { .. })),
        "a commit past what was read must be refused, got {refused:?}"
    );
    let unassigned = consumer
        .commit(&[Position {
            topic: unique("never_read"),
            partition: 0,
            next_offset: 1,
        }])
        .await;
    assert!(matches!(
        unassigned,
        Err(LogError::CommitPastRead { read: None, .. })
    ));
    assert_eq!(
        consumer.committed(&topic, busiest).await.unwrap(),
        Some(read)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&dir.path().join("log.redb"), Retention::KEEP_ALL).unwrap();
    let log: Arc<dyn Log> = Arc::new(log);
    conformance(log.clone()).await;
    no_record_is_skipped_when_the_reader_fails(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_log_conforms() {
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS")
        .expect("the Kafka conformance test needs a broker: run `make test` (or `bash scripts/infra up` and eval its env)");
    let config = KafkaLogConfig::new(brokers);
    let log: Arc<dyn Log> = Arc::new(KafkaLog::new(&config, &unique("conf")).unwrap());
    conformance(log.clone()).await;
    no_record_is_skipped_when_the_reader_fails(log).await;
}

/// Creates `topic` with one partition, appends `count` records (payloads "0", "1", …), reads
/// them and commits group "g" at `offset`.
async fn fill_and_commit(log: &EmbeddedLog, topic: &str, count: usize, offset: i64) {
    log.ensure_topics(&[(topic.to_string(), 1, 1)])
        .await
        .unwrap();
    for n in 0..count {
        let record = OutRecord::new(b"k".to_vec(), format!("{n}").into_bytes());
        log.send(topic, record, ACK).await.unwrap();
    }
    let mut consumer = log.consumer("g").await.unwrap();
    assign(&mut consumer, topic, 1, StartFrom::Beginning).await;
    let read = read_all(&mut consumer, count).await;
    assert_eq!(read.len(), count);
    consumer
        .commit(&[Position {
            topic: topic.to_string(),
            partition: 0,
            next_offset: offset,
        }])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_survives_reopen_and_enforces_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let topic = "orders".to_string();
    {
        let log = EmbeddedLog::open(
            &path,
            Retention {
                max_age: None,
                max_records: Some(10),
            },
        )
        .unwrap();
        fill_and_commit(&log, &topic, 25, 7).await;
        assert!(
            EmbeddedLog::open(&path, Retention::KEEP_ALL).is_err(),
            "a second opener must be refused"
        );
    }
    let log = EmbeddedLog::open(
        &path,
        Retention {
            max_age: None,
            max_records: Some(10),
        },
    )
    .unwrap();
    assert_eq!(
        log.watermarks(&topic, 0).await.unwrap(),
        (0, 25),
        "records survive a reopen"
    );
    assert_eq!(
        log.consumer("g")
            .await
            .unwrap()
            .committed(&topic, 0)
            .await
            .unwrap(),
        Some(7)
    );
    assert_eq!(log.enforce_retention().await.unwrap(), 15);
    assert_eq!(log.watermarks(&topic, 0).await.unwrap(), (15, 25));
    let mut consumer = log.consumer("g").await.unwrap();
    assign(&mut consumer, &topic, 1, StartFrom::Committed).await;
    let records = read_all(&mut consumer, 10).await;
    assert_eq!(
        records.first().map(|r| r.offset),
        Some(15),
        "positions behind retention move to the oldest record"
    );
    let next = log
        .send(&topic, OutRecord::new(b"k".to_vec(), b"x".to_vec()), ACK)
        .await
        .unwrap();
    assert_eq!(next.offset, 25, "offsets continue after a reopen");
    assert!(matches!(
        log.send("missing", OutRecord::new(b"k".to_vec(), b"x".to_vec()), ACK)
            .await,
        Err(sluice_core::log::LogError::UnknownTopic(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_offsets_never_repeat_after_retention_empties_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let topic = "orders".to_string();
    let retention = Retention {
        max_age: Some(Duration::from_millis(50)),
        max_records: None,
    };
    {
        let log = EmbeddedLog::open(&path, retention).unwrap();
        fill_and_commit(&log, &topic, 5, 5).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(log.enforce_retention().await.unwrap(), 5);
        assert_eq!(
            log.watermarks(&topic, 0).await.unwrap(),
            (5, 5),
            "the partition is empty but keeps its end"
        );
    }
    let log = EmbeddedLog::open(&path, retention).unwrap();
    assert_eq!(
        log.watermarks(&topic, 0).await.unwrap(),
        (5, 5),
        "an emptied partition keeps its end across a reopen"
    );
    let next = log
        .send(&topic, OutRecord::new(b"k".to_vec(), b"new".to_vec()), ACK)
        .await
        .unwrap();
    assert_eq!(next.offset, 5, "offsets must never be reused");
    let mut consumer = log.consumer("g").await.unwrap();
    assign(&mut consumer, &topic, 1, StartFrom::Committed).await;
    let records = read_all(&mut consumer, 1).await;
    assert_eq!(
        records.len(),
        1,
        "the group's committed position must see the new record"
    );
    assert_eq!(records[0].payload, b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_passes_records_retention_removed_under_it_and_loses_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(
        &dir.path().join("log.redb"),
        Retention {
            max_age: None,
            max_records: Some(10),
        },
    )
    .unwrap();
    let topic = "orders".to_string();
    log.ensure_topics(&[(topic.clone(), 1, 1)]).await.unwrap();
    for n in 0..5 {
        log.send(&topic, OutRecord::new(b"k".to_vec(), format!("{n}")), ACK)
            .await
            .unwrap();
    }
    let mut consumer = log.consumer("g").await.unwrap();
    assign(&mut consumer, &topic, 1, StartFrom::Beginning).await;
    let first = read_all(&mut consumer, 5).await;
    assert_eq!(first.len(), 5);
    // While the consumer is at offset 5, 20 more records arrive and retention keeps only 10.
    for n in 5..25 {
        log.send(&topic, OutRecord::new(b"k".to_vec(), format!("{n}")), ACK)
            .await
            .unwrap();
    }
    assert_eq!(log.enforce_retention().await.unwrap(), 15);
    let rest = read_all(&mut consumer, 10).await;
    assert_eq!(
        rest.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (15..25).collect::<Vec<_>>(),
        "the consumer moves past the removed records once and reads every retained one"
    );
    assert_eq!(consumer.next_offset(&topic, 0), Some(25));
    consumer
        .commit(&[Position {
            topic: topic.clone(),
            partition: 0,
            next_offset: 25,
        }])
        .await
        .expect("the positions past a reported retention gap are committable");
}

/// A key of `topic`'s `partition` (of `partitions`), by the partitioner both backends share.
fn key_for(partition: i32, partitions: u32) -> Vec<u8> {
    (0..)
        .map(|n| format!("key-{n}").into_bytes())
        .find(|key| partition_for(key, partitions) as i32 == partition)
        .expect("some key lands in every partition")
}

/// Reads `topic` from the beginning through a consumer that asked for time order, `max`
/// records per poll.
async fn read_in_time_order(
    log: &Arc<dyn Log>,
    topic: &str,
    expected: usize,
    max: usize,
) -> Vec<Record> {
    let mut consumer = log.consumer(&unique("time_order")).await.unwrap();
    consumer.read_in_time_order();
    assign(&mut consumer, topic, 4, StartFrom::Beginning).await;
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while records.len() < expected && tokio::time::Instant::now() < deadline {
        let polled = consumer.poll(max, Duration::from_millis(200)).await;
        records.extend(polled.unwrap());
    }
    records
}
/// Every record of `sent` (partition, offset) exactly once, each partition in offset order.
fn assert_each_once_in_offset_order(read: &[Record], sent: &[(i32, i64)]) {
    let mut got: Vec<(i32, i64)> = read.iter().map(|r| (r.partition, r.offset)).collect();
    for partition in 0..4 {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of offset order"
        );
    }
    got.sort();
    let mut sent = sent.to_vec();
    sent.sort();
    assert_eq!(got, sent, "every record exactly once");
}

/// A sink reads its partitions in time order: a backlog spread over four partitions comes out
/// merged by timestamp (librdkafka alone hands it out a partition's fetch at a time), and a
/// partition far ahead of the others in time waits (its lane full, then its queue in
/// librdkafka) while the others are still fetched, without losing or repeating a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_reader_in_time_order_merges_partitions_and_loses_nothing_when_lanes_fill() {
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS").expect(
        "this test needs a broker: run `make test` (or `bash scripts/infra up` and eval its env)",
    );
    let config = KafkaLogConfig::new(brokers);
    let log: Arc<dyn Log> = Arc::new(KafkaLog::new(&config, &unique("tord")).unwrap());

    // Interleaved: partitions 0, 1, 2, 3, 0, 1, … one record at a time, so timestamps grow
    // across partitions.
    let topic = unique("tord_merge");
    log.ensure_topics(&[(topic.clone(), 4, 1)]).await.unwrap();
    let keys: Vec<Vec<u8>> = (0..4).map(|p| key_for(p, 4)).collect();
    let mut sent = Vec::new();
    for n in 0..400 {
        let record = OutRecord::new(keys[n % 4].clone(), format!("{n}"));
        let delivery = log.send(&topic, record, ACK).await.unwrap();
        assert_eq!(delivery.partition, (n % 4) as i32);
        sent.push((delivery.partition, delivery.offset));
    }
    // Older than a live record: the reader is catching up on a backlog.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let read = read_in_time_order(&log, &topic, sent.len(), 500).await;
    assert_each_once_in_offset_order(&read, &sent);
    let times: Vec<i64> = read.iter().map(|r| r.timestamp_ms.unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "records out of time order: {:?}",
        read.iter()
            .map(|r| (r.partition, r.offset, r.timestamp_ms))
            .collect::<Vec<_>>()
    );

    // Partition 1 holds the older half, partition 0 the newer: partition 0's records wait
    // for partition 1's, and its lane fills (4 MiB, half the default fetch-ahead), then its
    // queue in librdkafka, long before partition 1 is read out; partition 1 must still be
    // fetched. Polls take fewer records than half a lane, as a sink's batch does, so a
    // drained lane is refilled before it runs dry.
    let topic = unique("tord_pause");
    log.ensure_topics(&[(topic.clone(), 4, 1)]).await.unwrap();
    let payload = vec![b'x'; 64 * 1024];
    let mut sent = Vec::new();
    for partition in [1, 0] {
        let sends = (0..400).map(|_| {
            let record = OutRecord::new(keys[partition].clone(), payload.clone());
            let (log, topic) = (log.clone(), topic.clone());
            async move { log.send(&topic, record, ACK).await.unwrap() }
        });
        for delivery in futures::future::join_all(sends).await {
            sent.push((delivery.partition, delivery.offset));
        }
        tokio::time::sleep(Duration::from_millis(5)).await; // partition 0 strictly newer
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let read = read_in_time_order(&log, &topic, sent.len(), 32).await;
    assert_each_once_in_offset_order(&read, &sent);
    let first_of_0 = read.iter().position(|r| r.partition == 0).unwrap();
    assert!(
        read[first_of_0..].iter().all(|r| r.partition == 0),
        "a record of partition 1 came after partition 0's newer records"
    );
}
