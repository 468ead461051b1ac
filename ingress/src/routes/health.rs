//! `/healthz` (the process answers), `/readyz` (the log answers), `/metrics` (Prometheus).

use serde_json::json;
use sluice_core::log::Log;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::State;

/// Liveness: always 200 while the process serves.
pub fn healthz() -> Response {
    warp::reply::json(&json!({ "status": "ok" })).into_response()
}

/// Readiness: 200 when the log answers and the ingress is not draining, else 503.
pub async fn readyz(state: &State) -> Response {
    if state.draining.is_cancelled() {
        return warp::reply::with_status(
            warp::reply::json(&json!({ "status": "draining" })),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response();
    }
    log_readiness(state.log.as_ref()).await
}

/// Readiness of a process without an ingress: 200 when the log answers, else 503 with the
/// reason.
pub async fn log_readiness(log: &dyn Log) -> Response {
    match log.check_ready().await {
        Ok(()) => warp::reply::json(&json!({ "status": "ready" })).into_response(),
        Err(error) => warp::reply::with_status(
            warp::reply::json(&json!({ "status": "not_ready", "reason": error.to_string() })),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response(),
    }
}

/// Prometheus text exposition of every metric of the process.
pub fn metrics() -> Response {
    let text = crate::prometheus::handle().render();
    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
}
