//! `/healthz` (the process answers), `/readyz` (the log answers), `/metrics` (Prometheus).
//!
//! In production mode the public listeners answer `/healthz` and `/readyz` with a bare
//! status ([`public_readyz`]) and do not serve `/metrics`: the reasons and the metrics are
//! for operators, on `[ops] listen`.

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

/// Readiness for the public listeners of a production ingress: the status of [`readyz`]
/// (`ready`, or 503 `not_ready`) without the reason, which may name the backend.
pub async fn public_readyz(state: &State) -> Response {
    let ready = !state.draining.is_cancelled() && state.log.check_ready().await.is_ok();
    if ready {
        warp::reply::json(&json!({ "status": "ready" })).into_response()
    } else {
        warp::reply::with_status(
            warp::reply::json(&json!({ "status": "not_ready" })),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response()
    }
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
