//! `sluice check --connect`: the topology against the Kafka cluster it names. Each declared
//! topic must exist with the declared partitions, or be missing (then `sluice run` creates
//! it); fewer partitions is an error, more a warning. `sluice run` applies the same rule
//! when it starts ([`sluice_core::log::ensure_declared_topics`]).
//!
//! Before the topics, one probe connects to the cluster, so credentials the brokers refuse or
//! a certificate that does not verify are said as such (and what to change), within
//! [`PROBE_LIMIT`], instead of as a metadata timeout.

use std::fmt::Write as _;
use std::time::Duration;

use sluice_core::log::{compare_partitions, LogError, PartitionCount};
use sluice_log_kafka::ConnectError;

use crate::topology::{LogBackend, Topology};

/// Why an embedded topology cannot be split across processes, said by `sluice check` and by
/// `sluice run --only`.
pub const EMBEDDED_SERVES_ONE_PROCESS: &str = "the embedded log is a file that serves one process: to run the parts in separate processes (`sluice run --only ingress|processors|sinks`), use Kafka ([log] backend = \"kafka\")";

/// Longest wait for the first answer of the cluster.
pub const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Longest the start of `sluice run` waits to learn whether the cluster refuses Sluice.
pub const START_PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Whether the Kafka cluster of `topology` refuses Sluice for good: credentials refused, a
/// certificate that does not verify, a failed TLS handshake or settings librdkafka rejects.
/// `sluice run` then stops at once saying what to fix, instead of failing a minute later
/// with a timeout. A cluster that does not answer (yet) is not a refusal: the pipeline waits
/// for it as before. Blocking, at most [`START_PROBE_LIMIT`].
pub fn refusal(topology: &Topology) -> Option<ConnectError> {
    let (LogBackend::Kafka, Some(kafka)) = (topology.log.backend, &topology.log.kafka) else {
        return None;
    };
    match kafka.probe(START_PROBE_LIMIT) {
        Ok(()) | Err(ConnectError::Unreachable { .. }) => None,
        Err(error) => Some(error),
    }
}

/// What `--connect` found, topic by topic.
#[derive(Debug, Default)]
pub struct TopicsReport {
    /// One line per topic: fine, missing (created at start) or more partitions than declared.
    pub notes: Vec<String>,
    /// Problems that stop `sluice run`: too few partitions, or brokers that do not answer.
    pub errors: Vec<String>,
}

impl TopicsReport {
    /// Whether nothing stops `sluice run`.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The report as printed: the notes, then each error prefixed `error:`.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for note in &self.notes {
            let _ = writeln!(text, "{note}");
        }
        for error in &self.errors {
            let _ = writeln!(text, "error: {error}");
        }
        text
    }
}

/// Asks the log `topology` names about every declared topic, without creating any.
pub async fn topics(topology: &Topology) -> TopicsReport {
    let mut report = TopicsReport::default();
    if let (LogBackend::Kafka, Some(kafka)) = (topology.log.backend, &topology.log.kafka) {
        let kafka = kafka.clone();
        let probe = tokio::task::spawn_blocking(move || kafka.probe(PROBE_LIMIT)).await;
        match probe {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                report
                    .errors
                    .push(format!("cannot ask the brokers about the topics: {error}"));
                return report;
            }
            Err(error) => {
                report
                    .errors
                    .push(format!("the connection probe failed: {error}"));
                return report;
            }
        }
    }
    let log = match topology.log.open(&topology.base_dir) {
        Ok(log) => log,
        Err(error) => {
            report.errors.push(format!("cannot open the log: {error}"));
            return report;
        }
    };
    for (topic, config) in &topology.topics {
        let declared = config.partitions;
        match log.partition_count(topic).await {
            Ok(actual) => match compare_partitions(topic, declared, actual) {
                PartitionCount::AsDeclared => report
                    .notes
                    .push(format!("topic {topic:?}: {actual} partitions, as declared")),
                PartitionCount::More { declared, actual } => report.notes.push(format!(
                    "warning: topic {topic:?} has {actual} partitions, more than the {declared} declared; every partition is read, but declare {actual} to say what runs"
                )),
                PartitionCount::Fewer(error) => report.errors.push(error.to_string()),
            },
            Err(LogError::UnknownTopic(_)) => report.notes.push(format!(
                "topic {topic:?}: missing; `sluice run` creates it with {declared} partitions"
            )),
            Err(error) => {
                report.errors.push(format!(
                    "cannot ask the brokers about topic {topic:?}: {error}; check [log.kafka] brokers and that the cluster is up"
                ));
                break;
            }
        }
    }
    report
}
