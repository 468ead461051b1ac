//! A small operations listener (`[ops] listen`): `/healthz`, `/readyz`, `/metrics` and the
//! live status page (`/status`, `/status.json`: see [`crate::status`]) for processes that run
//! no ingress (`sluice run --only processors|sinks`), so every part can be probed, scraped and
//! looked at.

use std::sync::Arc;

use sluice_core::log::Log;
use sluice_ingress::routes::health::{healthz, log_readiness, metrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::status::StatusPage;
use warp::Filter;

/// Serves the operations routes on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    log: Arc<dyn Log>,
    status: Arc<StatusPage>,
    shutdown: CancellationToken,
) {
    let healthz = warp::path!("healthz").and(warp::get()).map(healthz);
    let probe = Arc::new(Probe { log });
    let with_log = warp::any().map(move || probe.clone());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_log)
        .then(readiness);
    let metrics = warp::path!("metrics").and(warp::get()).map(metrics);
    let routes = healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(status.routes())
        .unify();
    warp::serve(routes)
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
}

/// What `/readyz` asks (a sized wrapper: warp's filters need one around a trait object).
struct Probe {
    log: Arc<dyn Log>,
}

async fn readiness(probe: Arc<Probe>) -> warp::reply::Response {
    log_readiness(probe.log.as_ref()).await
}
