//! Optional span export over OTLP/HTTP with JSON encoding.
//!
//! When `[ops] otlp_endpoint` (or, when that is not set, `OTEL_EXPORTER_OTLP_ENDPOINT`) names
//! a collector, `sluice run` and `sluice replay` send the spans of every order's trace to
//! `POST {endpoint}/v1/traces`: the ingress's `POST /order` (request to answer), each stage's
//! handling of the record (read to outputs acknowledged) and the sink's store (write to
//! commit). Components hand finished spans to a bounded queue
//! ([`sluice_core::trace::SpanExporter`]) and never wait: when the queue is full the span is
//! dropped and counted in `sluice_otlp_spans_dropped_total{reason="queue_full"}`. A background
//! task sends them in batches; a batch the collector does not take (after one retry) is dropped
//! and counted with `reason="export_failed"`.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_core::trace::{FinishedSpan, SpanExporter, SpanKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use sluice_core::telemetry::{OTLP_SPANS_DROPPED, OTLP_SPANS_EXPORTED};

/// Spans the queue holds before new ones are dropped.
pub const QUEUE_SPANS: usize = 8192;
/// Most spans in one request.
pub const BATCH_SPANS: usize = 512;
/// Longest a span waits in the queue before its batch is sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Why span export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("OTLP endpoint {0:?} is not an http:// or https:// URL; set [ops] otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) to the collector's OTLP/HTTP base URL, such as http://localhost:4318")]
    Endpoint(String),
    /// The HTTP client could not be built.
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The collector's base URL: `configured` (`[ops] otlp_endpoint`), else
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; `None` when neither is set (or set empty).
pub fn endpoint(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .map(|endpoint| endpoint.trim().to_string())
        .filter(|endpoint| !endpoint.is_empty())
}

/// The running exporter: [`Exporter::flush`] sends what is queued before the process exits.
pub struct Exporter {
    closing: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// Sends the spans still queued (for at most `timeout`) and stops the background task.
    pub async fn flush(self, timeout: Duration) {
        self.closing.cancel();
        let _ = tokio::time::timeout(timeout, self.task).await;
    }
}

/// Starts exporting spans to `endpoint` (call within a Tokio runtime) and installs the
/// process's span exporter. `Ok(None)` if an exporter is installed already.
pub fn start(endpoint: &str) -> Result<Option<Exporter>, OtlpError> {
    let base = endpoint.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(OtlpError::Endpoint(endpoint.to_string()));
    }
    let url = format!("{base}/v1/traces");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    // Metric handles count only once the recorder is installed.
    sluice_ingress::prometheus::handle();
    let (queue, spans) = mpsc::channel(QUEUE_SPANS);
    let queue_full = metrics::counter!(OTLP_SPANS_DROPPED, "reason" => "queue_full");
    if !sluice_core::trace::install_exporter(Box::new(Queue { queue, queue_full })) {
        return Ok(None);
    }
    let closing = CancellationToken::new();
    let task = tokio::spawn(send_batches(client, url, spans, closing.clone()));
    tracing::info!(endpoint = base, "exporting spans over OTLP/HTTP");
    Ok(Some(Exporter { closing, task }))
}

/// The installed [`SpanExporter`]: a bounded queue that drops and counts when full.
struct Queue {
    queue: mpsc::Sender<FinishedSpan>,
    queue_full: metrics::Counter,
}

impl SpanExporter for Queue {
    fn export(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.queue_full.increment(1);
        }
    }
}

/// Sends queued spans in batches of at most [`BATCH_SPANS`], at least every
/// [`FLUSH_INTERVAL`], until `closing` fires; then sends what is left and returns.
async fn send_batches(
    client: reqwest::Client,
    url: String,
    mut spans: mpsc::Receiver<FinishedSpan>,
    closing: CancellationToken,
) {
    let exported = metrics::counter!(OTLP_SPANS_EXPORTED);
    let failed = metrics::counter!(OTLP_SPANS_DROPPED, "reason" => "export_failed");
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    loop {
        let closed = tokio::select! {
            _ = closing.cancelled() => true,
            received = spans.recv_many(&mut batch, BATCH_SPANS) => received == 0,
        };
        if !closed && batch.len() < BATCH_SPANS {
            // Gather more for a while, unless told to close.
            let deadline = tokio::time::sleep(FLUSH_INTERVAL);
            tokio::pin!(deadline);
            while batch.len() < BATCH_SPANS {
                let room = BATCH_SPANS - batch.len();
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = closing.cancelled() => break,
                    received = spans.recv_many(&mut batch, room) => {
                        if received == 0 { break; }
                    }
                }
            }
        }
        if closed {
            while batch.len() < BATCH_SPANS {
                match spans.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let body = request_body(&batch);
            batch.clear();
            if post(&client, &url, &body).await {
                exported.increment(count);
            } else {
                failed.increment(count);
            }
        }
        if closed && spans.is_empty() {
            return;
        }
    }
}

/// POSTs `body` to the collector, trying once more after a failure; true if it answered 2xx.
async fn post(client: &reqwest::Client, url: &str, body: &Value) -> bool {
    for attempt in 0..2 {
        match client.post(url).json(body).send().await {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => {
                tracing::warn!(
                    url,
                    status = response.status().as_u16(),
                    attempt,
                    "the OTLP collector refused a batch of spans"
                )
            }
            Err(error) => {
                tracing::warn!(url, %error, attempt, "cannot send spans to the OTLP collector")
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans`: one resource (this process), one
/// scope (`sluice`).
pub fn request_body(spans: &[FinishedSpan]) -> Value {
    let string = |key: &str, value: &str| json!({ "key": key, "value": { "stringValue": value } });
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut out = json!({
                "traceId": span.hop.trace_id.to_string(),
                "spanId": span.hop.span_id.to_string(),
                "name": span.name,
                "kind": match span.kind {
                    SpanKind::Internal => 1,
                    SpanKind::Server => 2,
                    SpanKind::Consumer => 5,
                },
                "startTimeUnixNano": span.start_unix_nanos.to_string(),
                "endTimeUnixNano": span.end_unix_nanos.to_string(),
                "flags": span.hop.flags,
                "attributes": span.attributes.iter().map(|(key, value)| string(key, value)).collect::<Vec<_>>(),
            });
            if let Some(parent) = span.hop.parent_id {
                out["parentSpanId"] = Value::from(parent.to_string());
            }
            out
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                string("service.name", "sluice"),
                string("service.version", env!("CARGO_PKG_VERSION")),
                string("host.name", &crate::telemetry::hostname()),
                json!({ "key": "process.pid", "value": { "intValue": std::process::id().to_string() } }),
            ] },
            "scopeSpans": [{
                "scope": { "name": "sluice", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use sluice_core::trace::{Hop, TraceParent};

    use super::*;

    #[test]
    fn the_body_follows_the_otlp_json_encoding() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let hop = Hop::after(Some(parent));
        let root = Hop::after(None);
        let span = |hop, kind| FinishedSpan {
            hop,
            name: "stage validate".into(),
            kind,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_001_000_000,
            attributes: vec![("sluice.stage", "validate".into())],
        };
        let body = request_body(&[span(hop, SpanKind::Consumer), span(root, SpanKind::Server)]);
        let resource = &body["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0],
            json!({ "key": "service.name", "value": { "stringValue": "sluice" } })
        );
        let spans = &resource["scopeSpans"][0]["spans"];
        assert_eq!(spans[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(spans[0]["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(spans[0]["spanId"], hop.span_id.to_string());
        assert_eq!(spans[0]["kind"], 5);
        assert_eq!(spans[0]["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(spans[0]["endTimeUnixNano"], "1700000000001000000");
        assert_eq!(
            spans[0]["attributes"][0],
            json!({ "key": "sluice.stage", "value": { "stringValue": "validate" } })
        );
        assert!(spans[1].get("parentSpanId").is_none());
        assert_eq!(spans[1]["kind"], 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let prometheus = sluice_ingress::prometheus::handle();
        let (queue, mut spans) = mpsc::channel(2);
        let exporter = Queue {
            queue,
            queue_full: metrics::counter!(OTLP_SPANS_DROPPED, "reason" => "queue_full"),
        };
        let span = FinishedSpan {
            hop: Hop::after(None),
            name: "sink store".into(),
            kind: SpanKind::Consumer,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
        };
        let started = std::time::Instant::now();
        for _ in 0..5 {
            exporter.export(span.clone());
        }
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(spans.try_recv().unwrap().name, "sink store");
        assert!(spans.try_recv().is_ok() && spans.try_recv().is_err());
        let rendered = prometheus.render();
        assert!(
            rendered.contains(r#"sluice_otlp_spans_dropped_total{reason="queue_full"} 3"#),
            "{rendered}"
        );
    }

    #[test]
    fn the_endpoint_comes_from_the_topology_first() {
        assert_eq!(
            endpoint(Some(" http://collector:4318 ")).as_deref(),
            Some("http://collector:4318")
        );
        assert!(matches!(
            start("collector:4318"),
            Err(OtlpError::Endpoint(_))
        ));
    }
}
