//! Sluice HTTP ingress (warp).
//!
//! - `POST /login` checks a password against argon2id hashes, records a login event in the
//!   log, and returns a JWT signed with the configured signing key (HS256, EdDSA or RS256:
//!   see [`auth`]);
//! - `POST /order` charges the request to its client address's rate limit, authenticates the
//!   bearer token (a JWT, or a biscuit capability token when `biscuit_public_key_file` is set:
//!   see [`capability`] and [`principal`]), rate-limits per user,
//!   assigns a UUIDv7 order id (or, with an `Idempotency-Key`, an id derived from the user and
//!   the key: see [`idempotency`]), appends the order to the log keyed by user id, and answers
//!   `202` **only after the log acknowledged it** (503 if it cannot within the ack timeout);
//! - `GET /order/{id}` reports one of the caller's orders (JWT only): stored, rejected or
//!   pending;
//! - `/healthz` and `/readyz` for operations on both listeners, and `/metrics` too in
//!   development mode; in production mode `/readyz` answers without its reasons, and the
//!   metrics and the reasons are served on `[ops] listen` only.
//!
//! By default `/login` is served on one listener and `/order` on another; give both the same
//! address to serve everything on one port.

pub mod auth;
pub mod body;
pub mod capability;
pub mod config;
pub mod error;
pub mod forwarded;
pub mod generated_secret;
pub mod idempotency;
pub mod limits;
pub mod principal;
pub mod private_file;
pub mod prometheus;
pub mod routes;
pub mod security;
pub mod server;
pub mod toml_error;
pub mod users;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use sluice_core::log::Log;
use sluice_core::lookup::OrderLookup;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::auth::{Claims, TokenAuthority};
use crate::capability::{OrderRequestFacts, VerifiedCapability};
pub use crate::config::{AuthConfig, IngressConfig, Mode};
use crate::error::ApiError;
use crate::limits::KeyedLimit;
pub use crate::principal::Principal;
use crate::principal::{Authentication, AuthenticationError};
pub use crate::users::Users;

/// Any error, boxed (what a caller's loader may fail with).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The rate limits of the ingress.
pub struct Limits {
    /// Orders per authenticated user.
    pub orders_per_principal: KeyedLimit<String>,
    /// Orders per client address.
    pub orders_per_address: KeyedLimit<IpAddr>,
    /// Login attempts per client address, right or wrong (IPv6: per /64): bounds the password
    /// checks one address can ask for.
    pub logins_per_address: KeyedLimit<IpAddr>,
    /// Failed logins per user name and address and per address (refusals), and per user name
    /// from anywhere (a slow-down that never refuses).
    pub login_failures: limits::LoginLimits,
}

/// Reloads token keys, capability root keys, the revocation list and users without a
/// restart; in-flight requests are not disturbed.
#[derive(Clone)]
pub struct Reloader {
    state: Arc<State>,
}

impl Reloader {
    /// Re-reads the key files, the biscuit root keys and revocation list, and the users file,
    /// and the `[ingress.auth]` settings that `read_auth` reads again from the topology file
    /// (added or retired keys, the signing key; `None` keeps the current ones). On error the
    /// previous keys and users stay in force. The files are read and checked on a blocking
    /// thread; the same rules as at start apply to the demo users.
    pub async fn reload<F>(&self, read_auth: F) -> Result<(), IngressError>
    where
        F: FnOnce() -> Result<Option<AuthConfig>, BoxError> + Send + 'static,
    {
        let state = self.state.clone();
        blocking(move || {
            let auth = read_auth().map_err(IngressError::Topology)?;
            Self::reload_now(&state, auth)
        })
        .await?
    }

    /// [`reload`](Self::reload), on the calling thread (it blocks). Linear in the size of the
    /// users file (parse and validation; no password is hashed); the new users replace the
    /// old ones by a pointer swap, and the old table is freed here, not on an async worker.
    fn reload_now(state: &State, mut auth: Option<AuthConfig>) -> Result<(), IngressError> {
        if let Some(auth) = &mut auth {
            generated_secret::settle(auth, state.config.mode, &state.base_dir)?;
        }
        // Everything is loaded and checked before anything is swapped. Production mode checks
        // the reloaded settings too.
        let mut config = state.config.clone();
        if let Some(auth) = &auth {
            config.auth = auth.clone();
        }
        let users = load_users(&config, &state.users_path)?;
        let capabilities =
            load_capabilities(auth.as_ref().unwrap_or(&state.config.auth), &state.base_dir)?;
        state.tokens.reload(auth.as_ref())?;
        let count = users.len();
        let revoked = capabilities.as_ref().map_or(0, |c| c.revoked_count());
        let old_users = std::mem::replace(
            &mut *state
                .users
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Arc::new(users),
        );
        *state
            .capabilities
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = capabilities;
        tracing::info!(
            users = count,
            revoked_capabilities = revoked,
            "token keys, capability keys and users reloaded"
        );
        free_here(old_users);
        Ok(())
    }
}

/// Drops `table` on this (blocking) thread: freeing a large users table takes milliseconds,
/// which must not land on an async worker. Requests that took the table before the swap
/// hold it at most for one password check; wait (up to a few seconds) for them to let go.
fn free_here(table: Arc<Users>) {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while Arc::strong_count(&table) > 1 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(table);
}

/// Loads the users file at `path` (blocking: call from a blocking thread) and applies
/// `config`'s rules for the shipped demo users (found by their password hashes, without
/// hashing anything). Production mode refuses them, and `config`'s weak token settings
/// ([`IngressError::Insecure`]). Development mode keeps them usable while only this machine
/// reaches the ingress ([`security::only_this_machine_reaches`]: loopback listeners, no
/// trusted proxies), warning that they are, and otherwise disables them: they are refused
/// as unknown users are, and one warning names them and the fix.
fn load_users(config: &IngressConfig, path: &std::path::Path) -> Result<Users, IngressError> {
    let mut users = Users::load(path)?;
    if config.mode == Mode::Production {
        let weaknesses = security::weaknesses(config, &users);
        if !weaknesses.is_empty() {
            return Err(IngressError::Insecure(weaknesses));
        }
        return Ok(users);
    }
    let demo = security::demo_users(&users);
    if demo.is_empty() {
        return Ok(users);
    }
    let names = demo.join(", ");
    let fix = format!(
        "give each a new password with `sluice users add <name>` or remove it with `sluice users remove <name>` (file {})",
        path.display()
    );
    if security::only_this_machine_reaches(config) {
        tracing::warn!(
            weakness = %format!("users {names} have the shipped demo passwords; they work only while every ingress listener is a loopback address and no trusted_proxies are set: {fix}"),
            "DEVELOPMENT MODE: not safe for production"
        );
    } else {
        users.disable(&demo);
        tracing::warn!(
            users = %names,
            "demo users disabled: they have the shipped demo passwords and an ingress listener (login_listen or order_listen) is not a loopback address, or trusted_proxies forward other machines' requests; {fix}"
        );
    }
    Ok(users)
}

/// Runs `work` (file reads and parsing) on a blocking thread, off the async workers. A panic
/// in `work` resumes here.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IngressError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(IngressError::ShuttingDown),
    }
}

/// Development mode starts whatever the token settings, so their weaknesses are warnings
/// only (cheap checks; no password is hashed).
fn warn_of_weaknesses(config: &IngressConfig) {
    for weakness in security::setting_weaknesses(config) {
        tracing::warn!(weakness, "DEVELOPMENT MODE: not safe for production");
    }
}

/// Loads the biscuit root key(s) and revocation list that `auth` names, if any.
fn load_capabilities(
    auth: &crate::config::AuthConfig,
    base_dir: &std::path::Path,
) -> Result<Option<Arc<capability::CapabilityAuthority>>, IngressError> {
    let Some(keys) = &auth.biscuit_public_key_file else {
        return Ok(None);
    };
    let resolve = |path| sluice_core::topology::resolve_relative(base_dir, path);
    let mut authority = capability::CapabilityAuthority::from_public_key_file(resolve(keys))
        .map_err(IngressError::Capability)?;
    if let Some(revoked) = &auth.biscuit_revocation_file {
        authority = authority
            .with_revocation_file(resolve(revoked))
            .map_err(IngressError::Revocation)?;
    }
    Ok(Some(Arc::new(authority)))
}

impl State {
    /// Authenticates the bearer token: a JWT (verified inline), or (when configured) a biscuit
    /// capability token, verified without evaluating it on a blocking thread through the
    /// [`capability_gate`](Self::capability_gate). A JWT has three dot-separated parts; a
    /// biscuit has none. The routes call this once per request, through
    /// [`principal::authenticated`].
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Principal, AuthenticationError> {
        let token = principal::bearer(headers)?;
        let principal = match self.capabilities() {
            Some(capabilities) if !token.contains('.') => {
                let token = token.to_string();
                let verified = self
                    .capability_gate
                    .run(move || capabilities.verify(&token, SystemTime::now()))
                    .await??;
                Principal::Capability(Arc::new(verified))
            }
            _ => Principal::Jwt(self.tokens.verify(token)?),
        };
        // Removing a user (and reloading) revokes their tokens at once; changing their
        // password revokes the tokens bound to the old one.
        let users = self.users();
        let Some(password_hash) = users.hash_of(principal.user()) else {
            return Err(AuthenticationError::UnknownUser);
        };
        if let Principal::Jwt(Claims {
            cred: Some(cred), ..
        }) = &principal
        {
            if *cred != auth::credential_version(password_hash) {
                return Err(AuthenticationError::PasswordChanged);
            }
        }
        Ok(principal)
    }

    /// Authorizes an order request with a verified capability token: its one Datalog
    /// evaluation, on a blocking thread through the [`capability_gate`](Self::capability_gate).
    pub async fn authorize_capability(
        &self,
        capability: &Arc<VerifiedCapability>,
        request: OrderRequestFacts,
    ) -> Result<(), AuthenticationError> {
        let capability = capability.clone();
        self.capability_gate
            .run(move || capability.authorize(&request, SystemTime::now()))
            .await??;
        Ok(())
    }

    /// The current biscuit authority, when capability tokens are configured.
    pub fn capabilities(&self) -> Option<Arc<capability::CapabilityAuthority>> {
        self.capabilities
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The current users.
    pub fn users(&self) -> Arc<Users> {
        self.users
            .read()
            .map(|u| u.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// Shared state of the request handlers.
pub struct State {
    /// The `[ingress]` settings.
    pub config: IngressConfig,
    /// Where orders and login events go.
    pub log: Arc<dyn Log>,
    /// Where order statuses come from.
    pub lookup: Arc<dyn OrderLookup>,
    /// Known users (replaced as a whole on reload).
    pub users: std::sync::RwLock<Arc<Users>>,
    /// Where the users come from.
    pub users_path: std::path::PathBuf,
    /// Token issuing and verification.
    pub tokens: TokenAuthority,
    /// Biscuit capability tokens, when `biscuit_public_key_file` is configured (replaced as a
    /// whole on reload).
    pub capabilities: std::sync::RwLock<Option<Arc<capability::CapabilityAuthority>>>,
    /// The topology file's folder, against which reloaded file paths resolve.
    pub base_dir: std::path::PathBuf,
    /// Rate limits.
    pub limits: Limits,
    /// Cancelled when the ingress starts draining (readiness turns 503).
    pub draining: CancellationToken,
    /// Remembered `Idempotency-Key`s.
    pub idempotency: idempotency::IdempotencyKeys,
    /// Bounds concurrent password checks (argon2id takes ~19 MiB and a core each) and the
    /// logins waiting for one, whatever clients do.
    pub password_checks: limits::PasswordChecks,
    /// Runs capability-token verification and authorization off the async workers, a few at
    /// a time and within a time limit.
    pub capability_gate: principal::CapabilityGate,
    /// The log's readiness as the public `/readyz` of production mode reports it.
    pub public_readiness: routes::health::PublicReadiness,
}

/// A configured ingress, ready to serve.
pub struct Ingress {
    state: Arc<State>,
    more_ops_routes: Option<BoxedFilter<(Response,)>>,
}

/// Why the ingress could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The users file is missing or invalid.
    #[error(transparent)]
    Users(#[from] users::UsersError),
    /// A token key could not be loaded.
    #[error(transparent)]
    Keys(#[from] auth::AuthError),
    /// The biscuit root public key could not be loaded.
    #[error("ingress.auth.biscuit_public_key_file: {0}")]
    Capability(#[source] capability::CapabilityError),
    /// The biscuit revocation list could not be loaded.
    #[error("ingress.auth.biscuit_revocation_file: {0}")]
    Revocation(#[source] capability::CapabilityError),
    /// The topology could not be read again.
    #[error("cannot reload the topology: {0}")]
    Topology(#[source] BoxError),
    /// The runtime shut down before the files were read.
    #[error("the ingress could not load its users and keys: the runtime is shutting down")]
    ShuttingDown,
    /// The token secret is published, missing in production, or its generated file is
    /// unusable.
    #[error(transparent)]
    Secret(#[from] generated_secret::SecretError),
    /// The threads that check passwords could not be started.
    #[error("cannot start the password-check threads: {0}")]
    PasswordCheckThreads(#[source] std::io::Error),
    /// Production mode found settings that must change first.
    #[error("production mode refuses to start:\n{}", .0.iter().map(|w| format!("  - {w}")).collect::<Vec<_>>().join("\n"))]
    Insecure(Vec<String>),
}

impl Ingress {
    /// Builds the ingress: reads the users file and the token and capability keys (paths
    /// resolve against `base_dir`, the topology file's folder) on a blocking thread; no
    /// password is hashed, so this costs the same whatever the number of users (bar reading
    /// the file). In production mode weak token settings or the shipped demo users refuse the
    /// build ([`IngressError::Insecure`]); in development mode weak settings are warned of,
    /// and the demo users are disabled unless every listener is a loopback address.
    pub async fn new(
        config: IngressConfig,
        base_dir: &std::path::Path,
        log: Arc<dyn Log>,
        lookup: Arc<dyn OrderLookup>,
    ) -> Result<Self, IngressError> {
        let (users_path, users, tokens, capabilities) = {
            let (mut config, base_dir) = (config.clone(), base_dir.to_path_buf());
            blocking(move || {
                generated_secret::settle(&mut config.auth, config.mode, &base_dir)?;
                let users_path =
                    sluice_core::topology::resolve_relative(&base_dir, &config.auth.users_file);
                if config.mode == Mode::Development {
                    warn_of_weaknesses(&config);
                }
                let users = load_users(&config, &users_path)?;
                let tokens = TokenAuthority::from_config(&config.auth, &base_dir)?;
                let capabilities = load_capabilities(&config.auth, &base_dir)?;
                Ok::<_, IngressError>((users_path, users, tokens, capabilities))
            })
            .await??
        };
        if users.is_empty() {
            tracing::warn!(file = %users_path.display(), "the users file has no users; add one with `sluice users add <name>`");
        }
        routes::order::accepted_counter();
        // Each of `replicas` processes keeps its share of every limit.
        let rates = &config.rate_limits.per_process();
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
            login_failures: limits::LoginLimits::new(rates),
        };
        let idempotency = idempotency::IdempotencyKeys::new(
            config.idempotency_keys,
            std::time::Duration::from_secs(config.idempotency_ttl_secs),
        );
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let password_checks =
            limits::PasswordChecks::new(&config.rate_limits.password_checks, cores)
                .map_err(IngressError::PasswordCheckThreads)?;
        let state = State {
            config,
            log,
            lookup,
            users: std::sync::RwLock::new(Arc::new(users)),
            users_path,
            tokens,
            capabilities: std::sync::RwLock::new(capabilities),
            base_dir: base_dir.to_path_buf(),
            limits,
            draining: CancellationToken::new(),
            idempotency,
            password_checks,
            capability_gate: principal::CapabilityGate::for_this_machine(),
            public_readiness: Default::default(),
        };
        Ok(Ingress {
            state: Arc::new(state),
            more_ops_routes: None,
        })
    }

    /// Serves `routes` beside `/metrics` on the ingress listeners in development mode (the
    /// binary's status page); production mode serves them on `[ops] listen` only.
    pub fn with_ops_routes(mut self, routes: BoxedFilter<(Response,)>) -> Self {
        self.more_ops_routes = Some(routes);
        self
    }

    /// A handle that reloads the keys and the users file (the binary calls it on SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
        }
    }

    /// The shared state (for tests and tools).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Serves until `shutdown` fires; then `/readyz` answers 503 at once, the listeners keep
    /// accepting for the drain delay ([`IngressConfig::drain_delay`]), and then they stop
    /// accepting and in-flight requests finish (within `drain_timeout_ms`), keep-alive
    /// connections being closed after their current request. With `order_listener` `None`,
    /// `login_listener` serves every route.
    pub async fn serve(
        self,
        login_listener: TcpListener,
        order_listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) {
        let delay = self.state.config.drain_delay();
        let stop = CancellationToken::new();
        {
            let (draining, stop) = (self.state.draining.clone(), stop.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                draining.cancel();
                if !delay.is_zero() {
                    tracing::info!(
                        ?delay,
                        "draining: /readyz answers 503; serving on until the drain delay ends"
                    );
                    tokio::time::sleep(delay).await;
                }
                tracing::info!("drain delay over: no longer accepting connections");
                stop.cancel();
            });
        }
        let shutdown = stop;
        let config = &self.state.config;
        let limits = server::ConnectionLimits {
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            header_read_timeout: std::time::Duration::from_millis(config.header_read_timeout_ms),
            max_header_bytes: config.max_header_bytes,
        };
        let proxies = Arc::new(forwarded::TrustedProxies::new(&config.trusted_proxies));
        let drain = std::time::Duration::from_millis(config.drain_timeout_ms);
        let deadline = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(drain).await;
            }
        };
        let state = &self.state;
        let more = &self.more_ops_routes;
        let servers = async move {
            match order_listener {
                None => {
                    let routes = login_route(state)
                        .or(order_routes(state))
                        .unify()
                        .or(ops_routes(state, more))
                        .unify();
                    let service = warp::service(routes.recover(error::recover));
                    server::serve(login_listener, service, limits, proxies, shutdown, "login")
                        .await;
                }
                Some(order_listener) => {
                    let login = warp::service(
                        login_route(state)
                            .or(ops_routes(state, more))
                            .unify()
                            .recover(error::recover),
                    );
                    let orders = warp::service(
                        order_routes(state)
                            .or(ops_routes(state, more))
                            .unify()
                            .recover(error::recover),
                    );
                    tokio::join!(
                        server::serve(
                            login_listener,
                            login,
                            limits,
                            proxies.clone(),
                            shutdown.clone(),
                            "login"
                        ),
                        server::serve(order_listener, orders, limits, proxies, shutdown, "order"),
                    );
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
    let handles = http_metrics::route(route).status(response.status());
    handles.requests.increment(1);
    handles.duration.record(started.elapsed().as_secs_f64());
    response
}

/// The HTTP metric handles of each route and status, built once: the first response of a
/// route with a status registers them, every later one only looks them up (no lock, no
/// label allocation).
mod http_metrics {
    use std::sync::{OnceLock, RwLock};

    use sluice_core::telemetry;
    use warp::http::StatusCode;

    /// The handles of one route and status.
    pub(super) struct StatusMetrics {
        /// `sluice_http_requests_total{route,status}`.
        pub(super) requests: metrics::Counter,
        /// `sluice_http_request_duration_seconds{route,status}`.
        pub(super) duration: metrics::Histogram,
    }

    /// Status codes are 100 to 999.
    const STATUSES: usize = 900;

    /// The handles of one route, one slot per status code.
    pub(super) struct RouteMetrics {
        route: &'static str,
        by_status: [OnceLock<StatusMetrics>; STATUSES],
    }

    impl RouteMetrics {
        const fn new(route: &'static str) -> Self {
            RouteMetrics {
                route,
                by_status: [const { OnceLock::new() }; STATUSES],
            }
        }

        /// The handles for `status`, registered on its first use.
        pub(super) fn status(&self, status: StatusCode) -> &StatusMetrics {
            let code = status.as_u16();
            self.by_status[usize::from(code - 100).min(STATUSES - 1)].get_or_init(|| {
                let (route, status) = (self.route, code.to_string());
                StatusMetrics {
                    requests: metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => status.clone()),
                    duration: metrics::histogram!(telemetry::HTTP_DURATION, "route" => route, "status" => status),
                }
            })
        }
    }

    static LOGIN: RouteMetrics = RouteMetrics::new("login");
    static ORDER: RouteMetrics = RouteMetrics::new("order");
    static ORDER_STATUS: RouteMetrics = RouteMetrics::new("order_status");

    /// The handles of `route`. The ingress's own routes have static tables; another route
    /// name gets a table on its first request (kept for the process's life).
    pub(super) fn route(route: &'static str) -> &'static RouteMetrics {
        match route {
            "login" => &LOGIN,
            "order" => &ORDER,
            "order_status" => &ORDER_STATUS,
            other => other_route(other),
        }
    }

    fn other_route(route: &'static str) -> &'static RouteMetrics {
        static OTHERS: RwLock<Vec<&'static RouteMetrics>> = RwLock::new(Vec::new());
        let find =
            |tables: &[&'static RouteMetrics]| tables.iter().copied().find(|t| t.route == route);
        if let Some(table) = find(&OTHERS.read().unwrap_or_else(|e| e.into_inner())) {
            return table;
        }
        let mut tables = OTHERS.write().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = find(&tables) {
            return table;
        }
        let table: &'static RouteMetrics = Box::leak(Box::new(RouteMetrics::new(route)));
        tables.push(table);
        table
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn each_route_and_status_has_its_own_handles_built_once() {
            let ok = route("login").status(StatusCode::OK) as *const StatusMetrics;
            assert_eq!(ok, route("login").status(StatusCode::OK) as *const _);
            assert_ne!(ok, route("order").status(StatusCode::OK) as *const _);
            assert_ne!(
                ok,
                route("login").status(StatusCode::TOO_MANY_REQUESTS) as *const _
            );
            let other = route("elsewhere") as *const RouteMetrics;
            assert_eq!(other, route("elsewhere") as *const _);
            assert_eq!(route("elsewhere").route, "elsewhere");
        }
    }
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
        .and(server::client_addr())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |state: Arc<State>, client: Option<IpAddr>, headers: HeaderMap, body| async move {
                respond("login", async {
                    // Charged before the body is read, as `/order` is.
                    routes::login::charge(&state, client)?;
                    let body = body::read_limited(&headers, body, &state.config).await?;
                    routes::login::handle(&state, client, &body).await
                })
                .await
            },
        )
        .boxed()
}

fn order_routes(state: &Arc<State>) -> BoxedFilter<(Response,)> {
    // `authenticated` charges the client address's limit, then verifies the credential.
    let create = warp::path!("order")
        .and(warp::post())
        .and(with_state(state))
        .and(principal::authenticated(state))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |state: Arc<State>, principal: Authentication, headers: HeaderMap, body| async move {
                respond("order", async {
                    // Refused before the body is read: strangers cannot make us buffer it.
                    let principal = principal?;
                    let body = body::read_limited(&headers, body, &state.config).await?;
                    routes::order::create(&state, &principal, &headers, &body).await
                })
                .await
            },
        );
    let status = warp::path!("order" / String)
        .and(warp::get())
        .and(with_state(state))
        .and(principal::authenticated(state))
        .then(
            |id: String, state: Arc<State>, principal: Authentication| async move {
                respond("order_status", async {
                    routes::order::status(&state, &principal?, &id).await
                })
                .await
            },
        );
    create.or(status).unify().boxed()
}

/// The operations routes of the public listeners: `/healthz`, `/readyz`, `/metrics` and
/// `more` (the binary's status page) in development mode; in production mode only `/healthz` and a bare `/readyz` (the reasons and
/// the metrics are served on `[ops] listen`).
fn ops_routes(
    state: &Arc<State>,
    more: &Option<BoxedFilter<(Response,)>>,
) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(routes::health::healthz);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state));
    if state.config.mode == crate::config::Mode::Production {
        let readyz = readyz
            .then(|state: Arc<State>| async move { routes::health::public_readyz(&state).await });
        return healthz.or(readyz).unify().boxed();
    }
    let readyz =
        readyz.then(|state: Arc<State>| async move { routes::health::readyz(&state).await });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(routes::health::metrics);
    let routes = healthz.or(readyz).unify().or(metrics).unify();
    match more {
        Some(more) => routes.or(more.clone()).unify().boxed(),
        None => routes.boxed(),
    }
}
