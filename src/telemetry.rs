//! Logs on stderr: one ECS JSON object per line (for Filebeat → Elasticsearch), or a human
//! format on a terminal.
//!
//! # The ECS line
//!
//! Every line is one JSON object with Elastic Common Schema field names, written as flat
//! dotted keys (`"log.level":"info"`, which Elasticsearch and Filebeat's `expand_keys` read as
//! nested objects):
//!
//! - `@timestamp`: RFC 3339 in UTC with milliseconds (`2026-11-30T07:01:02.345Z`);
//! - `log.level` (`trace`, `debug`, `info`, `warn`, `error`), `log.logger` (the event's
//!   target, such as `sluice_processors::runner`), `message`;
//! - `service.name` (`sluice`), `service.version`, `process.pid`, `host.hostname`,
//!   `ecs.version`;
//! - `trace.id` and `span.id` when the event (or a span around it) knows them: lines about an
//!   order carry its trace;
//! - `error.message`: an event's `error` field;
//! - every other field of the event, and of the spans around it, under `sluice.<name>`
//!   (`sluice.stage`, `sluice.shard`, and `sluice.order_id` for the order an event is about:
//!   ECS has no order field). A field whose name has a dot already (`trace.id`, `http.…`) is
//!   an ECS name and is kept as it is.

use std::fmt::Write as _;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The ECS version the log lines follow.
pub const ECS_VERSION: &str = "8.11.0";

/// The prefix of a plain (undotted) event field's name in an ECS line.
pub const FIELD_PREFIX: &str = "sluice.";

/// How `sluice run` and `sluice replay` write their logs (`--log-format`, `SLUICE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human lines when stderr is a terminal, else ECS JSON.
    #[default]
    Auto,
    /// One ECS JSON object per line.
    Json,
    /// Human lines (with colours on a terminal).
    Pretty,
}

impl LogFormat {
    /// `Json` or `Pretty`: `Auto` decided by whether stderr is a terminal.
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Installs logging on stderr in `format`, filtered by `RUST_LOG` (default `info`). Safe to
/// call more than once; later calls do nothing.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(layer(format, crate::replay::LogWriter).with_filter(filter))
        .try_init();
}

/// The formatting layer for `format`, writing to `writer`.
pub fn layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format.resolve() {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .event_format(EcsFormat::new())
            .fmt_fields(JsonFields::new())
            .with_writer(writer)
            .boxed(),
    }
}

/// The ECS JSON line formatter (see the module documentation). Span fields must be recorded
/// with [`JsonFields`].
pub struct EcsFormat {
    /// The fields every line carries (`service.*`, `process.pid`, `host.hostname`,
    /// `ecs.version`), already serialized, each followed by a comma.
    fixed: String,
}

impl Default for EcsFormat {
    fn default() -> Self {
        Self::new()
    }
}

impl EcsFormat {
    /// A formatter for this process.
    pub fn new() -> Self {
        let mut fixed = String::new();
        for (key, value) in [
            ("service.name", Value::from("sluice")),
            ("service.version", Value::from(env!("CARGO_PKG_VERSION"))),
            ("process.pid", Value::from(std::process::id())),
            ("host.hostname", Value::from(hostname())),
            ("ecs.version", Value::from(ECS_VERSION)),
        ] {
            let _ = write!(fixed, "{}:{},", Value::from(key), value);
        }
        EcsFormat { fixed }
    }
}

/// The machine's host name (Linux's, else `$HOSTNAME`, else `unknown`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Keys the formatter writes itself; an event field of the same name is dropped.
const RESERVED: [&str; 10] = [
    "@timestamp",
    "log.level",
    "log.logger",
    "message",
    "service.name",
    "service.version",
    "process.pid",
    "host.hostname",
    "ecs.version",
    "",
];

/// The ECS key of a field named `name`: see the module documentation.
fn ecs_key(name: &str) -> std::borrow::Cow<'_, str> {
    match name {
        "message" => "message".into(),
        "error" => "error.message".into(),
        dotted if dotted.contains('.') => dotted.into(),
        plain => format!("{FIELD_PREFIX}{plain}").into(),
    }
}

/// Collects an event's fields into ECS keys.
struct Fields<'a> {
    map: &'a mut Map<String, Value>,
    /// The `log` crate's target, for events bridged from it (their tracing target is `log`).
    log_target: Option<String>,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            // Bridged `log` records: the target names the logger; file and line are noise.
            "log.target" => {
                self.log_target = value.as_str().map(str::to_string);
            }
            "log.module_path" | "log.file" | "log.line" => {}
            name => {
                self.map.insert(ecs_key(name).into_owned(), value);
            }
        }
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for EcsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Map::new();
        // The spans' fields (outermost first), then the event's, which win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(recorded) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(recorded) {
                    for (name, value) in map {
                        fields.insert(ecs_key(&name).into_owned(), value);
                    }
                }
            }
        }
        let mut visitor = Fields {
            map: &mut fields,
            log_target: None,
        };
        event.record(&mut visitor);
        let logger = visitor
            .log_target
            .take()
            .unwrap_or_else(|| event.metadata().target().to_string());
        let message = fields.remove("message").unwrap_or(Value::from(""));
        let level = event.metadata().level().as_str().to_ascii_lowercase();

        let mut line = String::with_capacity(256);
        line.push('{');
        let _ = write!(
            line,
            "\"@timestamp\":\"{}\",\"log.level\":\"{level}\",\"log.logger\":{},\"message\":{},",
            rfc3339_millis(std::time::SystemTime::now()),
            Value::from(logger),
            message,
        );
        line.push_str(&self.fixed);
        for (key, value) in &fields {
            if RESERVED.contains(&key.as_str()) {
                continue;
            }
            let _ = write!(line, "{}:{},", Value::from(key.as_str()), value);
        }
        line.pop(); // the last comma
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-11-30T07:01:02.345Z`.
pub fn rfc3339_millis(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The Gregorian date of `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|line| {
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"))
                })
                .collect()
        }
    }

    fn capture(format: LogFormat, emit: impl FnOnce()) -> Captured {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(layer(format, captured.clone()).with_filter(EnvFilter::new("debug")));
        tracing::subscriber::with_default(subscriber, emit);
        captured
    }

    #[test]
    fn every_line_is_an_ecs_object() {
        let captured = capture(LogFormat::Json, || {
            let error = std::io::Error::other("disk on fire");
            tracing::warn!(
                stage = "validate",
                records = 3u64,
                ratio = 0.5,
                in_group = true,
                %error,
                "send failed; will retry"
            );
            tracing::debug!(
                trace.id = "4bf92f3577b34da6a3ce929d0e0e4736",
                span.id = "00f067aa0ba902b7",
                order_id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "record processed"
            );
            tracing::trace!("below the filter");
        });
        let lines = captured.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let warn = &lines[0];
        let timestamp = warn["@timestamp"].as_str().unwrap();
        assert_eq!(
            timestamp.len(),
            "2026-11-30T07:01:02.345Z".len(),
            "{timestamp}"
        );
        assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[19] == b'.');
        assert_eq!(warn["log.level"], "warn");
        assert_eq!(warn["log.logger"], module_path!());
        assert_eq!(warn["message"], "send failed; will retry");
        assert_eq!(warn["service.name"], "sluice");
        assert_eq!(warn["service.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(warn["process.pid"], std::process::id());
        assert!(!warn["host.hostname"].as_str().unwrap().is_empty());
        assert_eq!(warn["ecs.version"], ECS_VERSION);
        assert_eq!(warn["error.message"], "disk on fire");
        assert_eq!(warn["sluice.stage"], "validate");
        assert_eq!(warn["sluice.records"], 3);
        assert_eq!(warn["sluice.ratio"], 0.5);
        assert_eq!(warn["sluice.in_group"], true);
        assert!(warn.get("trace.id").is_none());
        let debug = &lines[1];
        assert_eq!(debug["log.level"], "debug");
        assert_eq!(debug["trace.id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(debug["span.id"], "00f067aa0ba902b7");
        assert_eq!(
            debug["sluice.order_id"],
            "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        );
    }

    #[test]
    fn span_fields_reach_the_events_inside() {
        let captured = capture(LogFormat::Json, || {
            let span = tracing::info_span!("order", trace.id = "abc", order_id = "o-1");
            let _entered = span.enter();
            tracing::info!(stage = "enrich", "inside");
        });
        let lines = captured.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["trace.id"], "abc");
        assert_eq!(lines[0]["sluice.order_id"], "o-1");
        assert_eq!(lines[0]["sluice.stage"], "enrich");
    }

    #[test]
    fn messages_and_values_are_escaped() {
        let captured = capture(LogFormat::Json, || {
            tracing::info!(path = "a\"b\\c\nd", "quote \" and newline \n inside");
        });
        let lines = captured.lines();
        assert_eq!(lines[0]["message"], "quote \" and newline \n inside");
        assert_eq!(lines[0]["sluice.path"], "a\"b\\c\nd");
    }

    #[test]
    fn pretty_is_not_json() {
        let captured = capture(LogFormat::Pretty, || tracing::info!(stage = "x", "hello"));
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("hello") && text.contains("stage"), "{text}");
        assert!(serde_json::from_str::<Value>(text.trim()).is_err());
    }

    #[test]
    fn the_shipped_kibana_data_view_matches_the_lines() {
        let ndjson = include_str!("../compose/kibana/data-view.ndjson");
        let objects: Vec<Value> = ndjson
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let view = objects
            .iter()
            .find(|o| o["type"] == "index-pattern")
            .expect("a data view");
        assert_eq!(view["attributes"]["title"], "sluice-*");
        assert_eq!(view["attributes"]["timeFieldName"], "@timestamp");
        let filebeat = include_str!("../compose/filebeat/filebeat.yml");
        assert!(filebeat.contains(r#"index: "sluice-logs-%{+yyyy.MM.dd}""#));
        assert!(
            !filebeat.contains("- timestamp:"),
            "Filebeat parses @timestamp once, when it decodes the line"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339_millis(leap_day), "2024-02-29T12:34:56.789Z");
        let end_of_year = UNIX_EPOCH + Duration::from_millis(4_102_444_799_999);
        assert_eq!(rfc3339_millis(end_of_year), "2099-12-31T23:59:59.999Z");
    }
}
