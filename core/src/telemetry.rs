//! The name of every metric Sluice emits, so dashboards have one place to look.
//!
//! Components record through the `metrics` facade; the `sluice` binary installs the
//! Prometheus recorder before it builds anything (handles taken before a recorder exists
//! count nowhere), and `/metrics` renders it.

/// Counter: HTTP requests answered by the ingress, labelled `route` and `status`.
pub const HTTP_REQUESTS: &str = "sluice_http_requests_total";
/// Histogram: seconds from request to response, labelled `route` and `status`.
pub const HTTP_DURATION: &str = "sluice_http_request_duration_seconds";
/// Counter: login attempts, labelled `outcome` (`success`, `failure`).
pub const LOGINS: &str = "sluice_logins_total";
/// Counter: login attempts made to wait because their user name has too many recent failures.
pub const LOGINS_DELAYED: &str = "sluice_logins_delayed_total";
/// Counter: logins refused because no password check was free for them, labelled `reason`
/// (`queue_full`, `wait_timeout`: 503; `per_address`: the client address holds its share of
/// the checks already, 429).
pub const PASSWORD_CHECKS_REFUSED: &str = "sluice_password_checks_refused_total";
/// Counter: requests from a trusted proxy whose `X-Forwarded-For` header could not be read;
/// their client address is the proxy's.
pub const FORWARDED_MALFORMED: &str = "sluice_forwarded_for_malformed_total";
/// Counter: orders the log acknowledged to the ingress.
pub const ORDERS_ACCEPTED: &str = "sluice_orders_accepted_total";
/// Counter: token verifications, labelled `kind` (`jwt` or `capability`): one per request
/// with a bearer token on a route that needs one, accepted or refused. Registered when a key
/// ring or capability authority is built.
pub const AUTH_VERIFICATIONS: &str = "sluice_auth_verifications_total";
/// Counter: requests refused by a rate limit, labelled `limit`.
pub const RATE_LIMITED: &str = "sluice_rate_limited_total";
/// Counter: connections the ingress closed as soon as it accepted them, by `reason`
/// (`per_address`: the client address held its share of connections already).
pub const CONNECTIONS_REFUSED: &str = "sluice_connections_refused_total";
/// Counter: records a stage read, labelled `stage`.
pub const STAGE_RECORDS_IN: &str = "sluice_stage_records_in_total";
/// Counter: records a stage wrote, labelled `stage` and `outcome` (`emitted`, `dead_letter`).
pub const STAGE_RECORDS_OUT: &str = "sluice_stage_records_out_total";
/// Histogram: seconds a stage batch took from read to commit, labelled `stage`.
pub const STAGE_BATCH_DURATION: &str = "sluice_stage_batch_duration_seconds";
/// Histogram: records per stage batch, labelled `stage`.
pub const STAGE_BATCH_RECORDS: &str = "sluice_stage_batch_records";
/// Counter: rows a shard sink committed, labelled `shard` and `table`.
pub const SINK_ROWS: &str = "sluice_sink_rows_total";
/// Histogram: rows per committed sink batch, labelled `shard`.
pub const SINK_BATCH_ROWS: &str = "sluice_sink_batch_rows";
/// Histogram: seconds a sink transaction took, labelled `shard`.
pub const SINK_COMMIT_DURATION: &str = "sluice_sink_commit_duration_seconds";
/// Counter: failed sink transactions that were retried, labelled `shard`.
pub const SINK_RETRIES: &str = "sluice_sink_retries_total";
/// Counter: orders a shard refused for good (a value too long for its column, a constraint),
/// recorded as rejected by stage `sink` instead of stored, labelled `shard`.
pub const SINK_ROWS_REFUSED: &str = "sluice_sink_rows_refused_total";
/// Counter: records deleted by retention before a consumer read them, labelled `topic`.
pub const LOG_RECORDS_SKIPPED: &str = "sluice_log_records_skipped_total";
/// Counter: records a replay delivered, labelled `target`.
pub const REPLAY_RECORDS: &str = "sluice_replay_records_total";
/// Gauge: records a running replay still has to deliver, labelled `target`.
pub const REPLAY_REMAINING: &str = "sluice_replay_remaining_records";
/// Counter: spans the collector accepted.
pub const OTLP_SPANS_EXPORTED: &str = "sluice_otlp_spans_exported_total";
/// Counter: spans dropped, labelled `reason` (`queue_full`: the export queue was full;
/// `export_failed`: the collector did not take their batch).
pub const OTLP_SPANS_DROPPED: &str = "sluice_otlp_spans_dropped_total";
/// Gauge: 1 while the embedded log refuses new orders, labelled `reason` (`write_failure`:
/// the disk refused a write and the log retries; `low_disk_space`: free space is below
/// `[log.embedded] min_free_mib`), else 0.
pub const LOG_WRITE_BLOCKED: &str = "sluice_log_write_blocked";
/// Gauge: free bytes on the embedded log's filesystem.
pub const LOG_FREE_BYTES: &str = "sluice_log_free_bytes";
/// Gauge: records waiting in the embedded log's append queue.
pub const LOG_APPEND_QUEUE: &str = "sluice_log_append_queue_records";
/// Counter: new records the embedded log refused, labelled `reason` (`write_failure`,
/// `low_disk_space`, `queue_full`).
pub const LOG_APPENDS_REFUSED: &str = "sluice_log_appends_refused_total";
/// Gauge: partitions a consumer reads now, labelled `group` (in a consumer group: its share).
pub const CONSUMER_PARTITIONS: &str = "sluice_consumer_partitions";
/// Counter: partitions a consumer's group gave or took, labelled `group` and `change`
/// (`assigned`, `revoked`, `lost`).
pub const CONSUMER_REBALANCED_PARTITIONS: &str = "sluice_consumer_rebalanced_partitions_total";
/// Counter: sink batches refused because another sink process claimed one of their partitions
/// since (the stale rows were dropped; the new owner stores them), labelled `shard`.
pub const SINK_BATCHES_FENCED: &str = "sluice_sink_batches_fenced_total";
/// Gauge: HTTP connections open now, labelled `listener` (`login`, `order`: the login
/// listener serves every route when no separate order listener is configured).
pub const HTTP_CONNECTIONS_OPEN: &str = "sluice_http_connections_open";
/// Histogram: seconds from handing a record to the log until the log acknowledged it,
/// labelled `topic`.
pub const LOG_PRODUCE_DURATION: &str = "sluice_log_produce_duration_seconds";
/// Gauge: records a consumer has yet to read (end offset − its position), labelled `group`,
/// `topic` and `partition`.
pub const CONSUMER_LAG_RECORDS: &str = "sluice_consumer_lag_records";
/// Gauge: seconds since the log's end offset first passed the consumer's position (roughly the
/// age of the oldest unread record; 0 when caught up), labelled `group`, `topic`, `partition`.
pub const CONSUMER_LAG_SECONDS: &str = "sluice_consumer_lag_seconds";
/// Gauge: the end offset (high watermark) of a partition as the lag monitor last saw it,
/// labelled `topic` and `partition`.
pub const TOPIC_END_OFFSET: &str = "sluice_topic_end_offset";
/// Histogram: seconds from the ingress receiving an order (`received_at_ms`) until a shard sink
/// stored it, labelled `shard`.
pub const ORDER_FRESHNESS: &str = "sluice_order_freshness_seconds";
/// Gauge: always 1, labelled `version`, `revision` (git commit, `unknown` outside git) and
/// `rustc` (the compiler version), so dashboards can tell builds apart.
pub const BUILD_INFO: &str = "sluice_build_info";
/// Gauge: resident memory of the process, in bytes (Linux only).
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Gauge: virtual memory of the process, in bytes (Linux only).
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// Gauge: file descriptors the process holds open (Linux only).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Gauge: the process's soft limit on open file descriptors (Linux only).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Counter: user and system CPU seconds the process used (Linux only).
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Gauge: when the process started, in seconds since the Unix epoch (Linux only).
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";

/// The `# HELP` text of every metric above, which `/metrics` shows (a name missing here is
/// rendered without one; a test keeps the list complete).
pub const HELP: &[(&str, &str)] = &[
    (HTTP_REQUESTS, "HTTP requests answered by the ingress, by route and status."),
    (HTTP_DURATION, "Seconds from request to response, by route and status."),
    (LOGINS, "Login attempts, by outcome."),
    (LOGINS_DELAYED, "Login attempts made to wait because their user name has too many recent failures."),
    (PASSWORD_CHECKS_REFUSED, "Logins refused because no password check was free for them, by reason."),
    (FORWARDED_MALFORMED, "Requests from a trusted proxy whose X-Forwarded-For header could not be read."),
    (ORDERS_ACCEPTED, "Orders the log acknowledged to the ingress."),
    (AUTH_VERIFICATIONS, "Token verifications, by kind."),
    (RATE_LIMITED, "Requests refused by a rate limit, by limit."),
    (CONNECTIONS_REFUSED, "Connections the ingress closed as soon as it accepted them, by reason."),
    (STAGE_RECORDS_IN, "Records a stage read."),
    (STAGE_RECORDS_OUT, "Records a stage wrote, by outcome (emitted, dead_letter)."),
    (STAGE_BATCH_DURATION, "Seconds a stage batch took from read to commit."),
    (STAGE_BATCH_RECORDS, "Records per stage batch."),
    (SINK_ROWS, "Rows a shard sink committed, by table."),
    (SINK_BATCH_ROWS, "Orders per committed sink batch."),
    (SINK_COMMIT_DURATION, "Seconds a sink transaction took."),
    (SINK_RETRIES, "Failed sink transactions that were retried."),
    (SINK_ROWS_REFUSED, "Orders a shard refused for good, recorded as rejected instead."),
    (LOG_RECORDS_SKIPPED, "Records deleted by retention before a consumer read them."),
    (REPLAY_RECORDS, "Records a replay delivered, by target."),
    (REPLAY_REMAINING, "Records a running replay still has to deliver, by target."),
    (OTLP_SPANS_EXPORTED, "Spans the OTLP collector accepted."),
    (OTLP_SPANS_DROPPED, "Spans dropped before export, by reason."),
    (LOG_WRITE_BLOCKED, "1 while the embedded log refuses new orders, by reason."),
    (LOG_FREE_BYTES, "Free bytes on the embedded log's filesystem."),
    (LOG_APPEND_QUEUE, "Records waiting in the embedded log's append queue."),
    (LOG_APPENDS_REFUSED, "New records the embedded log refused, by reason."),
    (CONSUMER_PARTITIONS, "Partitions this process reads in the consumer group."),
    (CONSUMER_REBALANCED_PARTITIONS, "Partitions the consumer group gave or took, by change."),
    (SINK_BATCHES_FENCED, "Sink batches refused because another sink process claimed one of their partitions."),
    (HTTP_CONNECTIONS_OPEN, "HTTP connections open now, by listener."),
    (LOG_PRODUCE_DURATION, "Seconds from handing a record to the log until it was acknowledged, by topic."),
    (CONSUMER_LAG_RECORDS, "Records a consumer of this process has yet to read: end offset minus position."),
    (CONSUMER_LAG_SECONDS, "Seconds since the oldest record a consumer of this process has not read was appended (estimated; 0 when caught up)."),
    (TOPIC_END_OFFSET, "End offset (high watermark) of a partition, as the lag monitor last saw it."),
    (ORDER_FRESHNESS, "Seconds from the ingress receiving an order until a shard sink stored it."),
    (BUILD_INFO, "Always 1: the version, git revision and compiler of the running build."),
    (PROCESS_RESIDENT_MEMORY, "Resident memory size in bytes."),
    (PROCESS_VIRTUAL_MEMORY, "Virtual memory size in bytes."),
    (PROCESS_OPEN_FDS, "Number of open file descriptors."),
    (PROCESS_MAX_FDS, "Maximum number of open file descriptors."),
    (PROCESS_CPU_SECONDS, "Total user and system CPU time spent in seconds."),
    (PROCESS_START_TIME, "Start time of the process since unix epoch in seconds."),
];

/// Buckets (seconds) of the latency histograms on the request path: HTTP requests and log
/// produce acknowledgements.
pub const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets (seconds) of batch durations: stage batches and sink transactions.
pub const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets (seconds) of end-to-end order freshness: from the ingress to a shard.
pub const FRESHNESS_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// Buckets (records or rows) of batch sizes: stage batches and sink batches.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 2500.0, 5000.0,
];

/// Every histogram Sluice records, with its buckets: the Prometheus recorder is configured
/// from this list, so no histogram is rendered as a summary.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (HTTP_DURATION, REQUEST_SECONDS_BUCKETS),
    (LOG_PRODUCE_DURATION, REQUEST_SECONDS_BUCKETS),
    (STAGE_BATCH_DURATION, BATCH_SECONDS_BUCKETS),
    (SINK_COMMIT_DURATION, BATCH_SECONDS_BUCKETS),
    (ORDER_FRESHNESS, FRESHNESS_SECONDS_BUCKETS),
    (STAGE_BATCH_RECORDS, BATCH_SIZE_BUCKETS),
    (SINK_BATCH_ROWS, BATCH_SIZE_BUCKETS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_name_has_help_text_once() {
        let source = include_str!("telemetry.rs");
        let names: Vec<&str> = source
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(names.len() >= 41, "{names:?}");
        for name in &names {
            let found = HELP.iter().filter(|(n, _)| n == name).count();
            assert_eq!(found, 1, "{name}: add one line for it to telemetry::HELP");
        }
        assert_eq!(HELP.len(), names.len());
    }

    #[test]
    fn every_histogram_has_increasing_buckets() {
        for (name, buckets) in HISTOGRAM_BUCKETS {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{name}");
            assert!(name.ends_with("_seconds") || buckets[0] >= 1.0, "{name}");
        }
    }
}
