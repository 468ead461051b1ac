//! Sluice HTTP ingress (warp).
//!
//! - `POST /login` checks a password against argon2id hashes, records a login event in the
//!   log, and returns an HS256 JWT;
//! - `POST /order` authenticates the JWT, rate-limits per user and per client address,
//!   assigns a UUIDv7 order id, appends the order to the log keyed by user id, and answers
//!   `202` **only after the log acknowledged it** (503 if it cannot within the ack timeout);
//! - `GET /order/{id}` reports one of the caller's orders: stored, rejected or pending;
//! - `/healthz`, `/readyz`, `/metrics` for operations.
//!
//! By default `/login` is served on one listener and `/order` on another; give both the same
//! address to serve everything on one port.

pub mod auth;
pub mod body;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod routes;
pub mod users;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use sluice_core::log::Log;
use sluice_core::lookup::OrderLookup;
use sluice_core::telemetry;
use sluice_core::topology::IngressConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::auth::TokenAuthority;
use crate::error::ApiError;
use crate::limits::KeyedLimit;
pub use crate::users::Users;

/// The rate limits of the ingress.
pub struct Limits {
    /// Orders per authenticated user.
    pub orders_per_principal: KeyedLimit<String>,
    /// Orders per client address.
    pub orders_per_address: KeyedLimit<IpAddr>,
    /// Login attempts per client address.
    pub logins_per_address: KeyedLimit<IpAddr>,
}

/// Shared state of the request handlers.
pub struct State {
    /// The `[ingress]` settings.
    pub config: IngressConfig,
    /// Where orders and login events go.
    pub log: Arc<dyn Log>,
    /// Where order statuses come from.
    pub lookup: Arc<dyn OrderLookup>,
    /// Known users.
    pub users: Users,
    /// Token issuing and verification.
    pub tokens: TokenAuthority,
    /// Rate limits.
    pub limits: Limits,
    /// Cancelled when the ingress starts draining (readiness turns 503).
    pub draining: CancellationToken,
    /// Remembered `Idempotency-Key`s.
    pub idempotency: idempotency::IdempotencyKeys,
    /// Bounds concurrent password checks (argon2id takes ~19 MiB each).
    pub password_checks: tokio::sync::Semaphore,
}

/// A configured ingress, ready to serve.
pub struct Ingress {
    state: Arc<State>,
}

impl Ingress {
    /// Builds the ingress. Call within a Tokio runtime (rate-limit sweepers are spawned).
    pub fn new(
        config: IngressConfig,
        users: Users,
        log: Arc<dyn Log>,
        lookup: Arc<dyn OrderLookup>,
    ) -> Self {
        let tokens = TokenAuthority::new(
            &config.auth.jwt_secret,
            &config.auth.issuer,
            config.auth.token_ttl_secs,
        );
        let rates = &config.rate_limits;
        let limits = Limits {
            orders_per_principal: KeyedLimit::new("per user on /order", rates.orders_per_principal),
            orders_per_address: KeyedLimit::new(
                "per client address on /order",
                rates.orders_per_address,
            ),
            logins_per_address: KeyedLimit::new(
                "per client address on /login",
                rates.logins_per_address,
            ),
        };
        let idempotency = idempotency::IdempotencyKeys::new(
            config.idempotency_keys,
            std::time::Duration::from_secs(config.idempotency_ttl_secs),
        );
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let state = State {
            config,
            log,
            lookup,
            users,
            tokens,
            limits,
            draining: CancellationToken::new(),
            idempotency,
            password_checks: tokio::sync::Semaphore::new(2 * cores),
        };
        Ingress {
            state: Arc::new(state),
        }
    }

    /// The shared state (for tests and tools).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Serves until `shutdown` fires, then stops accepting and drains in-flight requests.
    /// With `order_listener` `None`, `login_listener` serves every route.
    pub async fn serve(
        self,
        login_listener: TcpListener,
        order_listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) {
        let draining = self.state.draining.clone();
        let signal = {
            let shutdown = shutdown.clone();
            move || {
                let shutdown = shutdown.clone();
                let draining = draining.clone();
                async move {
                    shutdown.cancelled().await;
                    draining.cancel();
                }
            }
        };
        let drain = std::time::Duration::from_millis(self.state.config.drain_timeout_ms);
        let deadline = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        };
        let servers = async move {
            match order_listener {
                None => {
                    let routes = login_route(&self.state)
                        .or(order_routes(&self.state))
                        .unify()
                        .or(ops_routes(&self.state))
                        .unify();
                    warp::serve(routes.recover(error::recover))
                        .incoming(login_listener)
                        .graceful(signal())
                        .run()
                        .await;
                }
                Some(order_listener) => {
                    let login = login_route(&self.state).or(ops_routes(&self.state)).unify();
                    let orders = order_routes(&self.state)
                        .or(ops_routes(&self.state))
                        .unify();
                    let login = warp::serve(login.recover(error::recover))
                        .incoming(login_listener)
                        .graceful(signal())
                        .run();
                    let orders = warp::serve(orders.recover(error::recover))
                        .incoming(order_listener)
                        .graceful(signal())
                        .run();
                    tokio::join!(login, orders);
                }
            }
        };
        tokio::select! {
            _ = servers => tracing::info!("ingress drained"),
            _ = deadline => tracing::warn!(?drain, "drain deadline passed; abandoning the connections still open"),
        }
    }
}

/// Runs a handler, turns its error into the JSON error model, and records metrics.
async fn respond(
    route: &'static str,
    handler: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = Instant::now();
    let response = handler.await.unwrap_or_else(Reply::into_response);
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => response.status().as_u16().to_string()).increment(1);
    metrics::histogram!(telemetry::HTTP_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn with_state(
    state: &Arc<State>,
) -> impl Filter<Extract = (Arc<State>,), Error = std::convert::Infallible> + Clone {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

fn login_route(state: &Arc<State>) -> BoxedFilter<(Response,)> {
    warp::path!("login")
        .and(warp::post())
        .and(with_state(state))
        .and(warp::addr::remote())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |state: Arc<State>, client: Option<SocketAddr>, headers: HeaderMap, body| async move {
                respond("login", async {
                    let body = body::read_limited(&headers, body, &state.config).await?;
                    routes::login::handle(&state, client, &body).await
                })
                .await
            },
        )
        .boxed()
}

fn order_routes(state: &Arc<State>) -> BoxedFilter<(Response,)> {
    let create = warp::path!("order")
        .and(warp::post())
        .and(with_state(state))
        .and(warp::addr::remote())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |state: Arc<State>, client: Option<SocketAddr>, headers: HeaderMap, body| async move {
                respond("order", async {
                    // Authenticate before reading the body: strangers cannot make us buffer it.
                    state.tokens.authenticate(&headers)?;
                    let body = body::read_limited(&headers, body, &state.config).await?;
                    routes::order::create(&state, &headers, client, &body).await
                })
                .await
            },
        );
    let status = warp::path!("order" / String)
        .and(warp::get())
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .then(
            |id: String, state: Arc<State>, headers: HeaderMap| async move {
                respond("order_status", routes::order::status(&state, &headers, &id)).await
            },
        );
    create.or(status).unify().boxed()
}

fn ops_routes(state: &Arc<State>) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(routes::health::healthz);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: Arc<State>| async move { routes::health::readyz(&state).await });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(routes::health::metrics);
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}
