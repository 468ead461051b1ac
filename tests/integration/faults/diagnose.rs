//! Evidence for lost orders on Kafka: where each lost order is in the topics, how far each
//! stage's committed position and each shard's stored position are, and the high watermarks.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::infra::InfraAddress;
use super::load::LostOrder;
use crate::common::TestTopology;

/// A report on `lost` (the first ten orders are listed one by one).
pub async fn lost_orders(infra: &InfraAddress, test: &TestTopology, lost: &[LostOrder]) -> String {
    let topology = test.topology();
    let brokers = infra.brokers();
    let mut topics: Vec<String> = topology
        .topics
        .keys()
        .filter(|t| t.contains(".orders."))
        .cloned()
        .collect();
    topics.sort();
    let ids: Vec<String> = lost
        .iter()
        .map(|l| {
            uuid::Uuid::parse_str(&l.id)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| l.id.clone())
        })
        .collect();
    let groups: Vec<(String, String)> = topology
        .stages
        .iter()
        .map(|s| {
            (
                format!("{}.{}", topology.log.consumer_group_prefix, s.name),
                s.input.clone(),
            )
        })
        .collect();
    let scan = {
        let (brokers, topics, ids) = (brokers.clone(), topics.clone(), ids.clone());
        tokio::task::spawn_blocking(move || scan_topics(&brokers, &topics, &ids, &groups))
    };
    let mut report = match tokio::time::timeout(Duration::from_secs(120), scan).await {
        Ok(Ok(report)) => report,
        Ok(Err(panic)) => format!("  (topic scan failed: {panic})\n"),
        Err(_) => "  (topic scan timed out)\n".into(),
    };
    for (index, shard) in topology.shards.iter().enumerate() {
        let positions = sink_positions(&shard.url).await;
        report.push_str(&format!("  shard{index} sluice_offsets: {positions}\n"));
    }
    let listed = lost.iter().zip(&ids).take(10);
    let mut lines = String::new();
    for (lost, id) in listed {
        lines.push_str(&format!(
            "  lost order {id} (key {}): acknowledged at orders.raw partition/offset {:?}; stored as {:?}\n",
            lost.key, lost.raw, lost.stored_as
        ));
    }
    format!("{lines}{report}")
}

/// Reads every topic from the start and finds the records of the lost ids: per partition how
/// many and their offset range, and for the first few ids every place; then the watermarks and
/// the stages' committed positions.
fn scan_topics(
    brokers: &str,
    topics: &[String],
    ids: &[String],
    groups: &[(String, String)],
) -> String {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-fault-diagnosis")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("diagnosis consumer");
    let timeout = Duration::from_secs(10);
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let listed: HashSet<&str> = ids.iter().take(10).map(String::as_str).collect();
    let mut out = String::new();
    let mut places: HashMap<&str, Vec<String>> = HashMap::new();
    let mut watermarks: HashMap<(String, i32), i64> = HashMap::new();
    for topic in topics {
        let short = topic
            .rsplit_once(".orders.")
            .map_or(topic.clone(), |(_, t)| format!("orders.{t}"));
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else {
            out.push_str(&format!("  {short}: no metadata\n"));
            continue;
        };
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut list = TopicPartitionList::new();
        let mut pending: HashMap<i32, i64> = HashMap::new();
        let mut highs = Vec::new();
        for &partition in &partitions {
            let high = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map(|(_, high)| high)
                .unwrap_or(-1);
            watermarks.insert((topic.clone(), partition), high);
            highs.push(format!("p{partition}={high}"));
            if high > 0 {
                list.add_partition_offset(topic, partition, Offset::Beginning)
                    .unwrap();
                pending.insert(partition, high);
            }
        }
        // Offsets of lost orders found, per partition.
        let mut hits: HashMap<i32, Vec<i64>> = HashMap::new();
        if !pending.is_empty() {
            consumer.assign(&list).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !pending.is_empty() && Instant::now() < deadline {
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let Ok(message) = message else { continue };
                let (partition, offset) = (message.partition(), message.offset());
                let order_id = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["orderId"].as_str().map(str::to_string));
                if let Some(id) = order_id.as_deref().and_then(|id| wanted.get(id)) {
                    hits.entry(partition).or_default().push(offset);
                    if listed.contains(id) {
                        places
                            .entry(id)
                            .or_default()
                            .push(format!("{short}[{partition}]@{offset}"));
                    }
                }
                if pending
                    .get(&partition)
                    .is_some_and(|high| offset + 1 >= *high)
                {
                    pending.remove(&partition);
                }
            }
        }
        let mut found: Vec<String> = hits
            .iter()
            .map(|(partition, offsets)| {
                let (low, high) = (offsets.iter().min().unwrap(), offsets.iter().max().unwrap());
                format!("p{partition}: {} at offsets {low}..={high}", offsets.len())
            })
            .collect();
        found.sort();
        out.push_str(&format!(
            "  {short}: high watermarks {}; lost orders found: {}{}\n",
            highs.join(" "),
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            },
            if pending.is_empty() {
                ""
            } else {
                " (not read to the end)"
            }
        ));
    }
    for (group, input) in groups {
        let Ok(committer) = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
        else {
            continue;
        };
        let mut list = TopicPartitionList::new();
        for partition in 0..4 {
            list.add_partition(input, partition);
        }
        let positions = committer
            .committed_offsets(list, timeout)
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| {
                        let high = watermarks
                            .get(&(input.clone(), e.partition()))
                            .copied()
                            .unwrap_or(-1);
                        let at = match e.offset() {
                            Offset::Offset(n) => n.to_string(),
                            other => format!("{other:?}"),
                        };
                        format!("p{}={at}/{high}", e.partition())
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|e| e.to_string());
        out.push_str(&format!(
            "  stage group {group}: committed/high {positions}\n"
        ));
    }
    let mut where_found = String::new();
    for id in ids.iter().take(10) {
        where_found.push_str(&format!(
            "  {id} is in: {}\n",
            places
                .get(id.as_str())
                .map(|places| places.join(", "))
                .unwrap_or_else(|| "no topic".into())
        ));
    }
    format!("{where_found}{out}")
}

/// The `sluice_offsets` rows of a shard, as text.
async fn sink_positions(url: &str) -> String {
    let read = async {
        let opts = mysql_async::Opts::from_url(url).map_err(|e| e.to_string())?;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| e.to_string())?;
        let rows: Vec<(String, i32, i64)> = conn
            .query("SELECT topic, partition_id, next_offset FROM sluice_offsets ORDER BY topic, partition_id")
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        Ok::<_, String>(
            rows.iter()
                .map(|(topic, partition, next)| {
                    format!(
                        "{}[{partition}]={next}",
                        topic
                            .rsplit_once(".orders.")
                            .map_or(topic.as_str(), |(_, t)| t)
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(text)) => text,
        Ok(Err(error)) => error,
        Err(_) => "no answer".into(),
    }
}
