//! The process's Prometheus recorder, which `/metrics` renders (on the ingress listeners and
//! on the `[ops]` listener).
//!
//! Every histogram is rendered as a Prometheus histogram with the explicit buckets of
//! [`sluice_core::telemetry::HISTOGRAM_BUCKETS`]; a histogram missing from that list gets the
//! request-latency buckets, so `/metrics` never holds summary (quantile) series.
//!
//! [`render`] appends the text of metrics kept outside the recorder ([`set_appended`]): the
//! process figures, whose `process_cpu_seconds_total` is a counter of fractional seconds, which
//! the metrics facade's counters (whole numbers) cannot hold.

use std::sync::{Mutex, OnceLock};

use metrics::Recorder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_core::telemetry::{HELP, HISTOGRAM_BUCKETS, REQUEST_SECONDS_BUCKETS};

/// The process-wide Prometheus recorder, installed on first use. Call it before building
/// components: metric handles taken before a recorder is installed count nowhere.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        keep_up(handle.clone());
        handle
    })
}

/// How often the recorder's pending histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the recorder's pending histogram samples into their buckets every
/// [`UPKEEP_INTERVAL`], on a thread of its own. The recorder queues every recorded sample
/// until something drains it; a render does, but a process nobody scrapes would otherwise
/// keep every sample it ever recorded (several per order: its memory would grow without
/// bound).
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread: histogram samples are folded only when /metrics is scraped");
    }
}

/// Text exposition appended to every [`render`], set by [`set_appended`].
static APPENDED: Mutex<String> = Mutex::new(String::new());

/// Replaces the text appended to every [`render`]: complete families (`# HELP`, `# TYPE` and
/// sample lines, each ending in a newline) of metrics the recorder does not hold.
pub fn set_appended(text: String) {
    *APPENDED.lock().unwrap_or_else(|p| p.into_inner()) = text;
}

/// The text exposition of every metric of the process: the recorder's, then the appended one.
pub fn render() -> String {
    let mut text = handle().render();
    text.push_str(&APPENDED.lock().unwrap_or_else(|p| p.into_inner()));
    text
}

/// The recorder's configuration: explicit buckets for every histogram Sluice records.
fn builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new()
        .set_buckets(REQUEST_SECONDS_BUCKETS)
        .expect("the default buckets are not empty");
    HISTOGRAM_BUCKETS
        .iter()
        .fold(builder, |builder, (name, buckets)| {
            builder
                .set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)
                .expect("every histogram's buckets are listed, not empty")
        })
}

/// Gives every Sluice metric its `# HELP` line.
fn describe(recorder: &impl Recorder) {
    for (name, help) in HELP {
        recorder.describe_counter(
            metrics::KeyName::from_const_str(name),
            None,
            metrics::SharedString::const_str(help),
        );
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::telemetry;

    use super::*;

    /// Without upkeep, a process nobody scrapes keeps every histogram sample it records.
    #[cfg(target_os = "linux")]
    #[test]
    fn installing_the_recorder_starts_the_upkeep_thread() {
        handle();
        let upkeep_runs = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(Result::ok)
                .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                .any(|name| name.trim_end() == "metrics-upkeep")
        };
        // A new thread names itself once it starts running, which on a busy machine can be
        // a while after `spawn` returned: wait for it, within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !upkeep_runs() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            upkeep_runs(),
            "no metrics-upkeep thread runs 10 s after the recorder is installed"
        );
    }

    #[test]
    fn histograms_render_with_their_buckets_and_no_quantiles() {
        let recorder = builder().build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let key = metrics::Key::from_parts(
            telemetry::STAGE_BATCH_RECORDS,
            vec![metrics::Label::new("stage", "validate")],
        );
        let metadata = metrics::Metadata::new("test", metrics::Level::INFO, None);
        recorder.register_histogram(&key, &metadata).record(7.0);
        let key = metrics::Key::from_name("sluice_unlisted_seconds");
        recorder.register_histogram(&key, &metadata).record(0.002);
        let text = handle.render();
        assert!(
            text.contains(r#"sluice_stage_batch_records_bucket{stage="validate",le="10"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_stage_batch_records_bucket{stage="validate",le="5"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_unlisted_seconds_bucket{le="0.0025"} 1"#),
            "{text}"
        );
        assert!(!text.contains("quantile"), "{text}");
        assert!(
            text.contains("# HELP sluice_stage_batch_records Records per stage batch."),
            "{text}"
        );
    }
}
