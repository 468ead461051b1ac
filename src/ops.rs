//! A small operations listener (`[ops] listen`): `/healthz`, `/readyz` and `/metrics` for
//! processes that run no ingress (`sluice run --only processors|sinks`), so every part can be
//! probed and scraped.

use std::sync::Arc;

use serde_json::json;
use sluice_core::log::Log;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Reply};

/// Serves the operations routes on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, log: Arc<dyn Log>, shutdown: CancellationToken) {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({ "status": "ok" })).into_response());
    let probe = Arc::new(Probe { log });
    let with_log = warp::any().map(move || probe.clone());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_log)
        .then(readiness);
    let metrics = warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            sluice_core::telemetry::metrics_handle().render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    let routes = healthz.or(readyz).unify().or(metrics).unify();
    warp::serve(routes)
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
}

/// What `/readyz` asks.
struct Probe {
    log: Arc<dyn Log>,
}

async fn readiness(probe: Arc<Probe>) -> warp::reply::Response {
    match probe.log.check_ready().await {
        Ok(()) => warp::reply::json(&json!({ "status": "ready" })).into_response(),
        Err(error) => warp::reply::with_status(
            warp::reply::json(&json!({ "status": "not_ready", "reason": error.to_string() })),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response(),
    }
}
