//! The process's Prometheus recorder, which `/metrics` renders (on the ingress listeners and
//! on the `[ops]` listener).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder, installed on first use. Call it before building
/// components: metric handles taken before a recorder is installed count nowhere.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
