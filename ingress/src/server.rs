//! The HTTP server loop: warp's routes on hyper, with the limits that keep slow or greedy
//! clients from holding the ingress hostage.
//!
//! - request headers must arrive within `header_read_timeout_ms` (slowloris), and may not
//!   exceed `max_header_bytes` in all (hyper answers 431);
//! - each request learns its client address, which the routes read as [`ClientAddr`]: its
//!   TCP peer, or, when the peer is one of `trusted_proxies`, the address the proxy names in
//!   `X-Forwarded-For` (see [`crate::forwarded`]);
//! - one TCP peer address (IPv6: one /64) holds at most `max_connections_per_address`
//!   connections; more are closed as soon as they are accepted, so a single client cannot
//!   take the slots everyone shares. This cap counts connections, so behind a proxy it keys
//!   on the proxy: raise it there;
//! - on shutdown the listener closes at once (connections still in its accept queue stay
//!   there for whoever else holds the socket: a process started to take over, see
//!   `scripts/restart`) and open connections finish: a connection that has not sent its first
//!   request yet is served it, a request in progress is answered with `Connection: close`, and
//!   idle keep-alive connections are closed.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::reply::Response;
use warp::Filter;

use crate::forwarded::{ClientSource, TrustedProxies};

/// The client address of a request: its connection's TCP peer, or the address a trusted
/// proxy forwarded it for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// A filter extracting the client address, when known (what every per-address limit keys on).
pub fn client_addr() -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<ClientAddr>().map(|client: Option<ClientAddr>| client.map(|c| c.0))
}

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once; further clients wait in the accept queue.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Time allowed for a request's headers to arrive.
    pub header_read_timeout: Duration,
    /// Largest total size of a request's headers, in bytes (at least 8192).
    pub max_header_bytes: usize,
}

/// Serves `service` on `listener` until `shutdown`, then drains open connections. Each
/// request's [`ClientAddr`] is found through `proxies`. `name` labels the listener's
/// `sluice_http_connections_open` gauge (`login`, `order`).
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    proxies: Arc<TrustedProxies>,
    shutdown: CancellationToken,
    name: &'static str,
) where
    S: Service<http::Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // HTTP/1.1 only: its header timer also runs while a connection waits for its first
    // request, so idle connections cannot pile up. hyper's own HTTP/1 connection rather than
    // hyper-util's auto one, which on shutdown drops a connection whose first bytes it has
    // not read yet (it is still sniffing for HTTP/2).
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    // Validation refuses 0; the bounds only keep a hand-built `ConnectionLimits` serving (and
    // let the drain below take every slot back at once).
    let max_connections = limits
        .max_connections
        .min(tokio::sync::Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize)
        .max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let per_address = crate::limits::PerAddressCap::new(limits.max_connections_per_address.max(1));
    let malformed = metrics::counter!(sluice_core::telemetry::FORWARDED_MALFORMED);
    let refused = metrics::counter!(
        sluice_core::telemetry::CONNECTIONS_REFUSED,
        "reason" => "per_address"
    );
    let open = metrics::gauge!(sluice_core::telemetry::HTTP_CONNECTIONS_OPEN, "listener" => name);
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, client) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(held) = per_address.take(client.ip()) else {
            // Closed at once: the client holds its share already.
            refused.increment(1);
            drop(stream);
            continue;
        };
        let counted = OpenConnection::count(&open);
        let service = service.clone();
        let (proxies, malformed) = (proxies.clone(), malformed.clone());
        // Whether a request has come on this connection yet (see `drain_connection`).
        let (requested, first_request) = tokio::sync::watch::channel(false);
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            requested.send_replace(true);
            let source = proxies.client(client.ip(), request.headers());
            if let ClientSource::Malformed(_) = source {
                malformed.increment(1);
            }
            request
                .extensions_mut()
                .insert(ClientAddr(source.address()));
            service.clone().call(request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = drain_connection(connection, first_request, shutdown).await {
                tracing::debug!(%client, %error, "connection ended with an error");
            }
            drop((permit, held, counted));
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: wait for all of them.
    let all = u32::try_from(max_connections).expect("bounded to u32 above");
    let _ = slots.acquire_many(all).await;
}

/// Serves `connection` until `shutdown`, then ends it gracefully: once its current request is
/// answered (with `Connection: close`), or at once if it is idle between requests. A
/// connection that has not sent its first request yet is served that request first: hyper
/// would close it unanswered (its graceful shutdown takes a connection it has read nothing
/// from for an idle one), and its client, accepted just before the drain, would see the
/// connection reset. It is given [`FIRST_REQUEST_GRACE`] to send it, not the whole header timeout.
async fn drain_connection<C>(
    connection: C,
    mut first_request: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<(), hyper::Error>
where
    C: GracefulConnection<Error = hyper::Error>,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return ended,
        _ = shutdown.cancelled() => {}
    }
    tokio::select! {
        ended = connection.as_mut() => return ended,
        _ = first_request.wait_for(|requested| *requested) => {}
        // A client that opened a connection ahead of need (a browser's preconnect, a pool
        // warming up) may never send on it: it must not hold the drain for the whole header
        // timeout. One that connected as the drain began sends within this grace.
        _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// How long a draining connection that has sent no request yet is given to send its first
/// one before it is closed (see [`drain_connection`]).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// One open connection in the `sluice_http_connections_open` gauge, until dropped.
struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    fn count(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
