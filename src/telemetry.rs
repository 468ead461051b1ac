//! Structured logs: JSON lines on stderr (one object per event, with `timestamp`, `level`,
//! `target` and `fields`), ready for Filebeat/Logstash into Elasticsearch.

/// Installs JSON logging on stderr, filtered by `RUST_LOG` (default `info`).
/// Safe to call more than once; later calls do nothing.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(false)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(crate::replay::LogWriter)
        .try_init();
}
