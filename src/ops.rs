//! A small operations listener (`[ops] listen`): `/healthz`, `/readyz`, `/metrics` and the
//! live status page (`/status`, `/status.json`: see [`crate::status`]) for processes that run
//! no ingress (`sluice run --only processors|sinks`), so every part can be probed, scraped and
//! looked at.
//!
//! On shutdown `/readyz` answers 503 at once (`draining`), like the ingress's own, and the
//! listener goes on serving for the same drain delay as the ingress before it closes.

use std::sync::Arc;
use std::time::Duration;

use crate::status::StatusPage;
use serde_json::json;
use sluice_core::log::Log;
use sluice_ingress::forwarded::TrustedProxies;
use sluice_ingress::routes::health::{healthz, log_readiness, metrics};
use sluice_ingress::server::{self, ConnectionLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Reply};

/// The connection limits of the operations listener: probes and scrapers only.
const LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 256,
    max_connections_per_address: 64,
    header_read_timeout: Duration::from_secs(10),
    max_header_bytes: 16 * 1024,
};

/// Serves the operations routes on `listener` until `shutdown` fires, then for `drain_delay`
/// more with `/readyz` answering 503, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    log: Arc<dyn Log>,
    status: Arc<StatusPage>,
    shutdown: CancellationToken,
    drain_delay: Duration,
) {
    let healthz = warp::path!("healthz").and(warp::get()).map(healthz);
    let probe = Arc::new(Probe {
        log,
        draining: shutdown.clone(),
    });
    let with_probe = warp::any().map(move || probe.clone());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_probe)
        .then(readiness);
    let metrics = warp::path!("metrics").and(warp::get()).map(metrics);
    let routes = healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(status.routes())
        .unify();
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_delay).await;
            stop.cancel();
        });
    }
    let proxies = Arc::new(TrustedProxies::new(&[]));
    server::serve(
        listener,
        warp::service(routes),
        LIMITS,
        proxies,
        stop,
        "ops",
    )
    .await;
}

/// What `/readyz` asks (a sized wrapper: warp's filters need one around a trait object).
struct Probe {
    log: Arc<dyn Log>,
    /// Cancelled when the process starts draining.
    draining: CancellationToken,
}

async fn readiness(probe: Arc<Probe>) -> warp::reply::Response {
    if probe.draining.is_cancelled() {
        return warp::reply::with_status(
            warp::reply::json(&json!({ "status": "draining" })),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response();
    }
    log_readiness(probe.log.as_ref()).await
}
