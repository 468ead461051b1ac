//! `/healthz` (the process answers), `/readyz` (the log answers), `/metrics` (Prometheus).
//!
//! In production mode the public listeners answer `/healthz` and `/readyz` with a bare
//! status ([`public_readyz`]) and do not serve `/metrics`: the reasons and the metrics are
//! for operators, on `[ops] listen`.

use std::time::{Duration, Instant};

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

/// How long the public `/readyz` reuses the log's last answer.
pub const PUBLIC_READINESS_TTL: Duration = Duration::from_secs(1);

/// The log's readiness as the public listeners see it: asked at most once per
/// [`PUBLIC_READINESS_TTL`], however many clients ask (they wait for the one question in
/// flight), so a flood of `/readyz` cannot turn into a flood of broker round-trips.
#[derive(Default)]
pub struct PublicReadiness {
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl PublicReadiness {
    async fn ready(&self, log: &dyn Log) -> bool {
        let mut last = self.last.lock().await;
        if let Some((asked, ready)) = *last {
            if asked.elapsed() < PUBLIC_READINESS_TTL {
                return ready;
            }
        }
        let ready = log.check_ready().await.is_ok();
        *last = Some((Instant::now(), ready));
        ready
    }
}

/// Readiness for the public listeners of a production ingress: the status of [`readyz`]
/// (`ready`, or 503 `not_ready`) without the reason, which may name the backend; the log is
/// asked at most once a second ([`PublicReadiness`]).
pub async fn public_readyz(state: &State) -> Response {
    let ready =
        !state.draining.is_cancelled() && state.public_readiness.ready(state.log.as_ref()).await;
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
    let text = crate::prometheus::render();
    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
}
