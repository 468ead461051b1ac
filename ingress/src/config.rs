//! `[ingress]`: the HTTP front door's settings, with their checks. Every field's `///`
//! comment is its user documentation.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::topology::{FlowNode, Issues, NodeKind, Wiring};

pub use crate::forwarded::IpNetwork;

/// `[ingress]`: the HTTP front door.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// `production` refuses to start with development secrets or default passwords;
    /// `development` starts anyway and warns.
    #[serde(default)]
    pub mode: Mode,
    /// Address serving `POST /login`, and `/healthz` and `/readyz` (in development mode also
    /// `/metrics`; in production mode `/readyz` answers without its reasons, and the metrics
    /// and the reasons are served on `[ops] listen` only).
    #[serde(default = "defaults::login_listen")]
    pub login_listen: SocketAddr,
    /// Address serving `POST /order` and `GET /order/{id}`; may equal `login_listen`.
    #[serde(default = "defaults::order_listen")]
    pub order_listen: SocketAddr,
    /// Topic that receives accepted orders, keyed by user id.
    pub orders_topic: String,
    /// Topic that receives a login event for every attempt.
    pub logins_topic: String,
    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// How long the ingress waits for the log to acknowledge an order before answering 503.
    #[serde(default = "defaults::ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long `GET /order/{id}` waits for the user's shard to answer before answering 503
    /// (a frozen or unreachable shard must not hold requests, and their connections, open).
    #[serde(default = "defaults::lookup_timeout_ms")]
    pub lookup_timeout_ms: u64,
    /// How many `Idempotency-Key`s the ingress remembers (oldest forgotten first).
    #[serde(default = "defaults::idempotency_keys")]
    pub idempotency_keys: u64,
    /// How long an `Idempotency-Key` is remembered, in seconds.
    #[serde(default = "defaults::idempotency_ttl_secs")]
    pub idempotency_ttl_secs: u64,
    /// Most client connections open at once per listener; more wait in the accept queue.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64); more are
    /// closed as soon as they are accepted, so one client cannot take every connection.
    /// Behind a load balancer or proxy, whose address every connection shares, raise it to
    /// `max_connections`.
    /// It counts TCP connections, so it keys on the proxy itself, not on the addresses in
    /// `X-Forwarded-For` (see `trusted_proxies`). At least 1.
    #[serde(default = "defaults::max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Reverse proxies or load balancers in front of the ingress, as IP addresses or CIDR
    /// networks (`["10.0.0.0/8", "192.0.2.7"]`; default none). A request whose TCP peer is
    /// one of them speaks for the right-most address of its `X-Forwarded-For` header that is
    /// not itself a trusted proxy, and the rate limits and login defences key on that address;
    /// `X-Forwarded-For` from any other peer is ignored, and a malformed one from a trusted
    /// proxy counts as the proxy's own request (and in
    /// `sluice_forwarded_for_malformed_total`). List only proxies that overwrite or append to
    /// the header, never a network clients can connect from. When set, the ingress is taken
    /// to be reachable from other machines: development mode disables the shipped demo users
    /// as it does for a non-loopback listener.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNetwork>,
    /// How long a request's headers may take to arrive before the connection is closed (this
    /// also closes keep-alive connections idle that long).
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Largest total size of a request's headers (at least 8192); larger gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// How long a request body may take to arrive before the answer is 408.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish before their connections
    /// are abandoned.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// On SIGTERM, how long the ingress keeps serving (and accepting) with `/readyz` already
    /// answering 503 on every listener, before it stops accepting and drains: the time a load
    /// balancer needs to see the 503 and send new clients elsewhere, or a process started on
    /// the same addresses (`scripts/restart`) to take over. Leave out for 5000 in production
    /// mode and 0 in development mode.
    #[serde(default)]
    pub drain_delay_ms: Option<u64>,
    /// How long after its creation an order that is neither stored nor rejected is reported
    /// as `pending`; after that `GET /order/{id}` answers 404.
    #[serde(default = "defaults::pending_window_secs")]
    pub pending_window_secs: u64,
    /// Authentication settings.
    pub auth: AuthConfig,
    /// Rate limits.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
}

/// How strict the ingress is about its own settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Starts with weak settings, warning about each.
    #[default]
    Development,
    /// Refuses weak settings.
    Production,
}

/// `[ingress.auth]`: passwords and tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret of an HS256 key with key id `default` (a one-key shorthand for `[[keys]]`);
    /// use `${SLUICE_JWT_SECRET}` and at least 32 random bytes. Empty means not set: then
    /// development mode generates a secret into `generated_secret_file`, and production mode
    /// refuses to start unless `keys` has a key.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub jwt_secret: Option<String>,
    /// Where development mode keeps the secret it generates when no token key is configured
    /// (32 random bytes, owner-only), relative to the topology file; `sluice token` reads it
    /// too. Delete it to end every token signed with it.
    #[serde(default = "defaults::generated_secret_file")]
    pub generated_secret_file: PathBuf,
    /// Verification keys by key id (`kid`); tokens must name one, and are checked only with
    /// that key's algorithm. Rotate by adding a key, moving `signing_kid` to it, and removing
    /// the old one once its tokens have expired; `kill -HUP` reloads key files and users.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// Key id of the key that signs issued tokens (default: `default` when `jwt_secret` is
    /// set, else the first of `keys`).
    #[serde(default)]
    pub signing_kid: Option<String>,
    /// `iss` claim written into and required from tokens.
    #[serde(default = "defaults::issuer")]
    pub issuer: String,
    /// `aud` claim written into and, when set, required from tokens.
    #[serde(default)]
    pub audience: Option<String>,
    /// File holding the hex Ed25519 root public key(s) of biscuit capability tokens (made by
    /// `sluice biscuit keygen`; one per line); when set, `POST /order` also accepts such
    /// tokens.
    #[serde(default)]
    pub biscuit_public_key_file: Option<PathBuf>,
    /// File of revoked biscuit token ids (hex, one per line, as `sluice biscuit inspect`
    /// prints them); a token with any revoked block is refused. Reloaded on SIGHUP, like the
    /// public key file, which may list several root keys during a rotation.
    #[serde(default)]
    pub biscuit_revocation_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "defaults::leeway_secs")]
    pub leeway_secs: u64,
    /// Lifetime of an issued token, in seconds.
    #[serde(default = "defaults::token_ttl_secs")]
    pub token_ttl_secs: u64,
    /// File of users and their argon2id password hashes, relative to the topology file.
    pub users_file: PathBuf,
}

/// An optional string where empty means not set (what `${VAR:-}` gives when `VAR` is unset).
fn empty_as_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

/// A JWT signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// Ed25519 signatures (PEM key files).
    EdDSA,
    /// RSA PKCS#1 v1.5 with SHA-256 (PEM key files).
    RS256,
}

/// `[[ingress.auth.keys]]`: one JWT key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Key id, written in the `kid` header of the tokens this key signs.
    pub kid: String,
    /// The only algorithm accepted with this key.
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret (at least 32 bytes in production).
    #[serde(default)]
    pub secret: Option<String>,
    /// EdDSA/RS256: PEM private key file, needed only by the signing key.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// EdDSA/RS256: PEM public key file that verifies this key's tokens.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
}

/// `[ingress.rate_limits]`: token buckets per principal and per client address, and the
/// defences of `POST /login`.
///
/// A login is refused (429) only where its own address has been guessing: failed logins are
/// counted per user name and address and per address (an attempt counts as a failure from its
/// admission until its password proves right, so concurrent guesses cannot overrun the burst).
/// Failures for a user name from anywhere only slow that name's logins down
/// ([`login_failure_delay`]), so nobody can lock a user out from elsewhere.
///
/// [`login_failure_delay`]: RateLimitsConfig::login_failure_delay
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Orders per authenticated user.
    #[serde(default = "defaults::orders_per_principal")]
    pub orders_per_principal: Quota,
    /// Orders per client address.
    #[serde(default = "defaults::orders_per_address")]
    pub orders_per_address: Quota,
    /// Login attempts per client address, right or wrong (IPv6 addresses count per /64): bounds
    /// the password checks one address can ask for. Taken before the body is parsed.
    #[serde(default = "defaults::logins_per_address")]
    pub logins_per_address: Quota,
    /// Failed logins per user name and client address (IPv6: per /64). Past the burst, that
    /// address gets 429 for that name, even with the right password, until the bucket refills;
    /// other addresses are not affected. A successful login forgets the address's failures for
    /// the name.
    #[serde(default = "defaults::login_failures_per_user_address")]
    pub login_failures_per_user_address: Quota,
    /// Failed logins per client address (IPv6: per /64), whatever the user names (one address
    /// trying a password on many names). Past the burst, that address gets 429 on `/login`.
    #[serde(default = "defaults::login_failures_per_address")]
    pub login_failures_per_address: Quota,
    /// Failed logins per user name, from any address, before its logins slow down: once a
    /// name has as many recent failures as the burst (they drain at the rate), every attempt
    /// for it waits [`login_failure_delay`](Self::login_failure_delay). Never refuses.
    #[serde(default = "defaults::login_failures_per_user")]
    pub login_failures_per_user: Quota,
    /// The slow-down of a user name with too many recent failures: its `k`-th failure past
    /// `login_failures_per_user`'s burst makes each further attempt wait `base_ms × 2^k`
    /// milliseconds, at most `max_ms`, before its password is checked.
    #[serde(default = "defaults::login_failure_delay")]
    pub login_failure_delay: Backoff,
    /// How many password checks (argon2id: ~19 MiB and one core for tens of milliseconds
    /// each) run at once, and how many logins may wait for one and for how long; a login
    /// beyond that gets 503 with `Retry-After`. A client that disconnects does not free its
    /// check's slot before the check ends.
    #[serde(default)]
    pub password_checks: PasswordChecksConfig,
    /// How many ingress processes share these limits. Every limit is kept in its process's
    /// memory, so N replicas behind a load balancer would allow N times each limit; with
    /// `replicas = N` each process enforces its 1/N share of every rate and burst (rounded
    /// up), so together they allow about the configured limits. The share is exact when the
    /// load balancer spreads each client evenly (round robin); with sticky sessions a client
    /// gets only its process's share.
    #[serde(default = "defaults::replicas")]
    pub replicas: NonZeroU32,
}

impl RateLimitsConfig {
    /// The limits one of [`replicas`](Self::replicas) processes enforces: every quota's rate
    /// and burst divided by `replicas`, rounded up (the slow-down and the password-check
    /// bounds are per process already, and stay as they are).
    pub fn per_process(&self) -> RateLimitsConfig {
        let share = |quota: Quota| quota.share(self.replicas);
        RateLimitsConfig {
            orders_per_principal: share(self.orders_per_principal),
            orders_per_address: share(self.orders_per_address),
            logins_per_address: share(self.logins_per_address),
            login_failures_per_user_address: share(self.login_failures_per_user_address),
            login_failures_per_address: share(self.login_failures_per_address),
            login_failures_per_user: share(self.login_failures_per_user),
            login_failure_delay: self.login_failure_delay,
            password_checks: self.password_checks,
            replicas: NonZeroU32::MIN,
        }
    }

    /// Checks `[ingress.rate_limits]` beyond what its types ensure.
    pub fn validate(&self, issues: &mut Issues) {
        let delay = self.login_failure_delay;
        if delay.max_ms < delay.base_ms {
            issues.push(
                "ingress.rate_limits.login_failure_delay",
                "max_ms must be at least base_ms",
            );
        }
        let checks = &self.password_checks;
        if checks.waiting > MAX_PASSWORD_CHECKS_WAITING {
            issues.push(
                "ingress.rate_limits.password_checks.waiting",
                format!("must be at most {MAX_PASSWORD_CHECKS_WAITING}"),
            );
        }
        if checks
            .at_once
            .is_some_and(|n| n.get() > MAX_PASSWORD_CHECKS_AT_ONCE)
        {
            issues.push(
                "ingress.rate_limits.password_checks.at_once",
                format!("must be at most {MAX_PASSWORD_CHECKS_AT_ONCE} (each check has a thread)"),
            );
        }
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            orders_per_principal: defaults::orders_per_principal(),
            orders_per_address: defaults::orders_per_address(),
            logins_per_address: defaults::logins_per_address(),
            login_failures_per_user_address: defaults::login_failures_per_user_address(),
            login_failures_per_address: defaults::login_failures_per_address(),
            login_failures_per_user: defaults::login_failures_per_user(),
            login_failure_delay: defaults::login_failure_delay(),
            password_checks: PasswordChecksConfig::default(),
            replicas: defaults::replicas(),
        }
    }
}

/// An exponential delay: `base_ms × 2^k` milliseconds, at most `max_ms`. Written
/// `{ base_ms = 250, max_ms = 4000 }`; used as a [`sluice_core::retry::Backoff`] without
/// jitter (see its [`nominal`](sluice_core::retry::Backoff::nominal)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first delay, in milliseconds.
    pub base_ms: NonZeroU64,
    /// The longest delay, in milliseconds (at least `base_ms`).
    pub max_ms: NonZeroU64,
}

impl From<Backoff> for sluice_core::retry::Backoff {
    fn from(backoff: Backoff) -> Self {
        sluice_core::retry::Backoff::new(
            Duration::from_millis(backoff.base_ms.get()),
            Duration::from_millis(backoff.max_ms.get()),
        )
        .with_jitter(0.0)
    }
}

/// `[ingress.rate_limits.password_checks]`: the bound on concurrent argon2id password checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChecksConfig {
    /// Password checks running at once, on as many threads kept for them (default: half the
    /// cores, at least one, so that orders keep a core while logins are busy; at most 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_once: Option<NonZeroUsize>,
    /// Logins that may wait for a check to start (at most 1000000); one more gets 503 at once.
    #[serde(default = "defaults::password_checks_waiting")]
    pub waiting: usize,
    /// Longest wait for a check to start, in milliseconds; then 503.
    #[serde(default = "defaults::password_checks_wait_ms")]
    pub wait_ms: NonZeroU64,
    /// Logins from one client address (IPv6: one /64) that may wait for or run a check at
    /// once; one more gets 429 with `Retry-After`, so a few addresses cannot fill the queue
    /// everyone shares.
    #[serde(default = "defaults::password_checks_per_address")]
    pub per_address: NonZeroUsize,
}

/// Most password checks `at_once` that validation accepts (each runs on a thread of its own).
pub const MAX_PASSWORD_CHECKS_AT_ONCE: usize = 1_024;

/// Most logins `waiting` for a password check that validation accepts.
pub const MAX_PASSWORD_CHECKS_WAITING: usize = 1_000_000;

impl Default for PasswordChecksConfig {
    fn default() -> Self {
        PasswordChecksConfig {
            at_once: None,
            waiting: defaults::password_checks_waiting(),
            wait_ms: defaults::password_checks_wait_ms(),
            per_address: defaults::password_checks_per_address(),
        }
    }
}

impl PasswordChecksConfig {
    /// [`at_once`](Self::at_once), or its default for a machine with `cores` cores.
    pub fn at_once_on(&self, cores: usize) -> usize {
        self.at_once.map_or((cores / 2).max(1), NonZeroUsize::get)
    }
}

/// A token bucket: refilled at a sustained [`Rate`], up to `burst` requests at once. Written
/// `{ per_second = 200, burst = 400 }` or `{ per_minute = 10, burst = 5 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "QuotaFields", into = "QuotaFields")]
pub struct Quota {
    /// Sustained requests.
    pub rate: Rate,
    /// Requests allowed at once after a quiet period.
    pub burst: NonZeroU32,
}

/// How fast a [`Quota`] refills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// This many requests per second.
    PerSecond(NonZeroU32),
    /// This many requests per minute, for slow limits such as failed logins per user name.
    PerMinute(NonZeroU32),
}

impl Quota {
    /// `per_second` requests a second, `burst` at once.
    pub fn per_second(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Quota {
            rate: Rate::PerSecond(per_second),
            burst,
        }
    }

    /// One of `replicas` equal shares of this quota: its rate and burst divided by
    /// `replicas`, rounded up (never below one).
    pub fn share(self, replicas: NonZeroU32) -> Quota {
        let divide = |n: NonZeroU32| {
            n.get()
                .div_ceil(replicas.get())
                .try_into()
                .unwrap_or(NonZeroU32::MIN)
        };
        Quota {
            rate: match self.rate {
                Rate::PerSecond(n) => Rate::PerSecond(divide(n)),
                Rate::PerMinute(n) => Rate::PerMinute(divide(n)),
            },
            burst: divide(self.burst),
        }
    }

    /// `per_minute` requests a minute, `burst` at once.
    pub fn per_minute(per_minute: NonZeroU32, burst: NonZeroU32) -> Self {
        Quota {
            rate: Rate::PerMinute(per_minute),
            burst,
        }
    }

    /// How long one spent request takes to come back.
    pub fn interval(&self) -> Duration {
        match self.rate {
            Rate::PerSecond(n) => Duration::from_secs(1) / n.get(),
            Rate::PerMinute(n) => Duration::from_secs(60) / n.get(),
        }
    }
}

/// A [`Quota`] as written in the file.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct QuotaFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_minute: Option<u32>,
    burst: u32,
}

impl TryFrom<QuotaFields> for Quota {
    type Error = String;

    fn try_from(fields: QuotaFields) -> Result<Self, String> {
        let invalid = || {
            "a rate limit needs exactly one of per_second or per_minute, and a burst, all at least 1, \
             e.g. { per_second = 200, burst = 400 }"
                .to_string()
        };
        let burst = NonZeroU32::new(fields.burst).ok_or_else(invalid)?;
        let rate = match (fields.per_second, fields.per_minute) {
            (Some(n), None) => Rate::PerSecond(NonZeroU32::new(n).ok_or_else(invalid)?),
            (None, Some(n)) => Rate::PerMinute(NonZeroU32::new(n).ok_or_else(invalid)?),
            _ => return Err(invalid()),
        };
        Ok(Quota { rate, burst })
    }
}

impl From<Quota> for QuotaFields {
    fn from(quota: Quota) -> Self {
        let (per_second, per_minute) = match quota.rate {
            Rate::PerSecond(n) => (Some(n.get()), None),
            Rate::PerMinute(n) => (None, Some(n.get())),
        };
        QuotaFields {
            per_second,
            per_minute,
            burst: quota.burst.get(),
        }
    }
}

impl IngressConfig {
    /// The drain delay in force: `drain_delay_ms`, or its mode's default (5 s in production,
    /// none in development).
    pub fn drain_delay(&self) -> std::time::Duration {
        let default = match self.mode {
            Mode::Production => defaults::PRODUCTION_DRAIN_DELAY_MS,
            Mode::Development => 0,
        };
        std::time::Duration::from_millis(self.drain_delay_ms.unwrap_or(default))
    }

    /// Checks `[ingress]`: every problem, each with where to fix it.
    pub fn validate(&self, wiring: &Wiring, issues: &mut Issues) {
        let ingress = self;
        wiring.check_topic(&ingress.orders_topic, "ingress.orders_topic", issues);
        wiring.check_topic(&ingress.logins_topic, "ingress.logins_topic", issues);
        check_keys(&ingress.auth, ingress.mode, issues);
        if ingress.auth.token_ttl_secs == 0 {
            issues.push("ingress.auth.token_ttl_secs", "must be at least 1");
        }
        if ingress.max_body_bytes == 0 {
            issues.push("ingress.max_body_bytes", "must be at least 1");
        }
        if ingress.ack_timeout_ms == 0 {
            issues.push("ingress.ack_timeout_ms", "must be at least 1");
        }
        if ingress.lookup_timeout_ms == 0 {
            issues.push("ingress.lookup_timeout_ms", "must be at least 1");
        }
        if ingress.max_connections_per_address == 0 {
            issues.push(
                "ingress.max_connections_per_address",
                "must be at least 1 (behind a proxy, raise it to max_connections)",
            );
        }
        for network in &ingress.trusted_proxies {
            if network.prefix() == 0 {
                issues.push(
                    "ingress.trusted_proxies",
                    format!("{network} trusts every address, so any client could forge X-Forwarded-For; list only your proxies' addresses or networks"),
                );
            } else if network.has_host_bits() {
                issues.push(
                    "ingress.trusted_proxies",
                    format!("{network} has bits set past its prefix length; write the network's first address (e.g. 10.0.0.0/8) or a single address"),
                );
            }
        }
        ingress.rate_limits.validate(issues);
    }

    /// The ingress in the topology's data flow.
    pub fn flow_node(&self) -> FlowNode {
        FlowNode::new(NodeKind::Ingress, "ingress", "ingress")
            .writes(&self.orders_topic, "orders", true)
            .writes(&self.logins_topic, "logins", false)
    }
}

fn check_keys(auth: &AuthConfig, mode: Mode, issues: &mut Issues) {
    let mut kids = BTreeSet::new();
    // An empty `jwt_secret` reads as none (see `empty_as_none`).
    if auth.jwt_secret.is_some() {
        kids.insert("default");
    }
    for (index, key) in auth.keys.iter().enumerate() {
        let at = format!("ingress.auth.keys[{index}] {:?}", key.kid);
        if key.kid.is_empty() || !kids.insert(key.kid.as_str()) {
            issues.push(
                format!("{at}.kid"),
                "key ids must be unique and not empty (jwt_secret is kid \"default\")",
            );
        }
        match key.algorithm {
            JwtAlgorithm::HS256 => {
                if key.secret.as_deref().unwrap_or_default().is_empty() {
                    issues.push(format!("{at}.secret"), "an HS256 key needs a secret");
                }
                if key.public_key_file.is_some() || key.private_key_file.is_some() {
                    issues.push(at.clone(), "an HS256 key takes a secret, not key files");
                }
            }
            JwtAlgorithm::EdDSA | JwtAlgorithm::RS256 => {
                if key.public_key_file.is_none() {
                    issues.push(
                        format!("{at}.public_key_file"),
                        "EdDSA and RS256 keys need a PEM public key file",
                    );
                }
                if key.secret.is_some() {
                    issues.push(
                        format!("{at}.secret"),
                        "EdDSA and RS256 keys use key files, not a secret",
                    );
                }
            }
        }
    }
    if kids.is_empty() && mode == Mode::Production {
        issues.push(
            "ingress.auth",
            "production mode needs a token key: set jwt_secret (SLUICE_JWT_SECRET), or add [[ingress.auth.keys]] (development mode generates a secret into generated_secret_file)",
        );
    }
    if kids.is_empty() && auth.generated_secret_file.as_os_str().is_empty() {
        issues.push(
            "ingress.auth.generated_secret_file",
            "must not be empty when no token key is configured",
        );
    }
    if let Some(kid) = &auth.signing_kid {
        match auth.keys.iter().find(|k| &k.kid == kid) {
            None if kid == "default" && auth.jwt_secret.is_some() => {}
            None => issues.push(
                "ingress.auth.signing_kid",
                format!("no key has kid {kid:?}"),
            ),
            Some(key) if key.algorithm != JwtAlgorithm::HS256 && key.private_key_file.is_none() => {
                issues.push(
                    "ingress.auth.signing_kid",
                    format!("key {kid:?} has no private_key_file, so it cannot sign"),
                )
            }
            Some(_) => {}
        }
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::num::{NonZeroU32, NonZeroU64};

    use super::{Backoff, Quota};

    fn n(value: u32) -> NonZeroU32 {
        NonZeroU32::new(value).expect("default quotas are not zero")
    }
    pub fn login_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 3000))
    }
    pub fn order_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 3001))
    }
    pub fn max_body_bytes() -> u64 {
        16 * 1024
    }
    pub fn ack_timeout_ms() -> u64 {
        5_000
    }
    pub fn lookup_timeout_ms() -> u64 {
        2_000
    }
    pub fn idempotency_keys() -> u64 {
        1_000_000
    }
    pub fn idempotency_ttl_secs() -> u64 {
        86_400
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn max_connections_per_address() -> usize {
        512
    }
    pub fn header_read_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub fn body_timeout_ms() -> u64 {
        10_000
    }
    /// `drain_delay_ms` in production mode when left out.
    pub const PRODUCTION_DRAIN_DELAY_MS: u64 = 5_000;
    pub fn drain_timeout_ms() -> u64 {
        10_000
    }
    pub fn pending_window_secs() -> u64 {
        3_600
    }
    pub fn issuer() -> String {
        "sluice".into()
    }
    pub fn leeway_secs() -> u64 {
        30
    }
    pub fn replicas() -> NonZeroU32 {
        NonZeroU32::MIN
    }
    pub fn generated_secret_file() -> std::path::PathBuf {
        std::path::PathBuf::from("data/jwt-secret")
    }
    pub fn token_ttl_secs() -> u64 {
        3_600
    }
    pub fn orders_per_principal() -> Quota {
        Quota::per_second(n(200), n(400))
    }
    pub fn orders_per_address() -> Quota {
        Quota::per_second(n(2_000), n(4_000))
    }
    pub fn logins_per_address() -> Quota {
        Quota::per_second(n(5), n(20))
    }
    pub fn login_failures_per_user_address() -> Quota {
        Quota::per_minute(n(5), n(10))
    }
    pub fn login_failures_per_address() -> Quota {
        Quota::per_minute(n(30), n(30))
    }
    pub fn login_failures_per_user() -> Quota {
        Quota::per_minute(n(10), n(10))
    }
    pub fn login_failure_delay() -> Backoff {
        Backoff {
            base_ms: NonZeroU64::new(250).expect("not zero"),
            max_ms: NonZeroU64::new(4_000).expect("not zero"),
        }
    }
    pub fn password_checks_waiting() -> usize {
        64
    }
    pub fn password_checks_wait_ms() -> NonZeroU64 {
        NonZeroU64::new(2_000).expect("not zero")
    }
    pub fn password_checks_per_address() -> std::num::NonZeroUsize {
        std::num::NonZeroUsize::new(4).expect("not zero")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_share_every_quota_rounding_up() {
        let limits: RateLimitsConfig = toml::from_str(
            "replicas = 3\n\
             orders_per_principal = { per_second = 200, burst = 400 }\n\
             login_failures_per_user_address = { per_minute = 5, burst = 10 }\n\
             logins_per_address = { per_second = 1, burst = 1 }\n",
        )
        .unwrap();
        let share = limits.per_process();
        let n = |n: u32| NonZeroU32::new(n).unwrap();
        assert_eq!(share.orders_per_principal, Quota::per_second(n(67), n(134)));
        assert_eq!(
            share.login_failures_per_user_address,
            Quota::per_minute(n(2), n(4))
        );
        // Never below one request.
        assert_eq!(share.logins_per_address, Quota::per_second(n(1), n(1)));
        assert_eq!(share.replicas, NonZeroU32::MIN);
        assert_eq!(share.password_checks, limits.password_checks);
        // One process keeps the limits as written.
        let one = RateLimitsConfig::default();
        assert_eq!(one.per_process().orders_per_address, one.orders_per_address);
    }

    #[test]
    fn login_limits_parse_with_defaults_and_refuse_the_old_per_user_limit() {
        let limits: RateLimitsConfig = toml::from_str(
            "login_failures_per_user_address = { per_minute = 5, burst = 10 }\n\
             login_failure_delay = { base_ms = 100, max_ms = 2000 }\n\
             password_checks = { at_once = 3, wait_ms = 500 }\n",
        )
        .unwrap();
        assert_eq!(
            limits.login_failures_per_user_address,
            Quota::per_minute(NonZeroU32::new(5).unwrap(), NonZeroU32::new(10).unwrap())
        );
        assert_eq!(
            limits.login_failures_per_user,
            defaults::login_failures_per_user()
        );
        let delay = sluice_core::retry::Backoff::from(limits.login_failure_delay);
        assert_eq!(delay.nominal(10), Duration::from_secs(2));
        assert_eq!(delay.pause(10), Duration::from_secs(2), "no jitter");
        assert_eq!(limits.password_checks.at_once_on(64), 3);
        assert_eq!(limits.password_checks.waiting, 64);
        assert_eq!(limits.password_checks.wait_ms.get(), 500);
        // A slow-down per user name replaced the limit that let anyone lock a user out.
        let old =
            toml::from_str::<RateLimitsConfig>("logins_per_user = { per_minute = 10, burst = 5 }")
                .unwrap_err();
        assert!(
            old.to_string().contains("unknown field `logins_per_user`"),
            "{old}"
        );
    }

    fn ingress(extra: &str) -> Result<IngressConfig, toml::de::Error> {
        toml::from_str(&format!(
            "orders_topic = \"o\"\nlogins_topic = \"l\"\n{extra}\n[auth]\nusers_file = \"users.toml\"\n"
        ))
    }

    fn ingress_issues(config: &IngressConfig) -> Vec<String> {
        let mut issues = Issues::new();
        let topics = std::collections::BTreeMap::new();
        let sharding = sluice_core::topology::ShardingConfig { buckets: 256 };
        let wiring = Wiring {
            topics: &topics,
            sharding: &sharding,
            shards: &[],
        };
        config.validate(&wiring, &mut issues);
        issues
            .into_vec()
            .into_iter()
            .filter(|issue| !issue.at.ends_with("_topic"))
            .map(|issue| format!("{}: {}", issue.at, issue.message))
            .collect()
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks_and_never_everyone() {
        let config =
            ingress(r#"trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "fd00::/8"]"#).unwrap();
        assert_eq!(config.trusted_proxies.len(), 3);
        assert!(
            ingress_issues(&config).is_empty(),
            "{:?}",
            ingress_issues(&config)
        );
        assert!(ingress("").unwrap().trusted_proxies.is_empty());
        let bad = ingress(r#"trusted_proxies = ["10.0.0.0/33"]"#).unwrap_err();
        assert!(
            bad.to_string()
                .contains("\"10.0.0.0/33\" has a prefix length"),
            "{bad}"
        );
        let bad = ingress(r#"trusted_proxies = ["proxy.example"]"#).unwrap_err();
        assert!(
            bad.to_string()
                .contains("is not an IP address or CIDR network"),
            "{bad}"
        );
        let everyone = ingress(r#"trusted_proxies = ["0.0.0.0/0"]"#).unwrap();
        let issues = ingress_issues(&everyone);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].starts_with("ingress.trusted_proxies: 0.0.0.0/0 trusts every address"));
        let typo = ingress(r#"trusted_proxies = ["10.0.0.1/8"]"#).unwrap();
        let issues = ingress_issues(&typo);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].contains("10.0.0.1/8 has bits set past its prefix length"));
    }

    #[test]
    fn no_connection_per_address_is_refused() {
        let config = ingress("max_connections_per_address = 0").unwrap();
        let issues = ingress_issues(&config);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].starts_with("ingress.max_connections_per_address: must be at least 1"));
    }

    #[test]
    fn a_delay_must_not_shrink() {
        let mut limits = RateLimitsConfig::default();
        let mut issues = Issues::new();
        limits.validate(&mut issues);
        assert!(issues.is_empty());
        limits.login_failure_delay.max_ms = NonZeroU64::new(10).unwrap();
        limits.validate(&mut issues);
        let issues = issues.into_vec();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].at, "ingress.rate_limits.login_failure_delay");
    }

    #[test]
    fn password_check_queues_are_bounded() {
        let limits: RateLimitsConfig = toml::from_str(
            "password_checks = { waiting = 18446744073709551615, at_once = 100000 }",
        )
        .unwrap();
        let mut issues = Issues::new();
        limits.validate(&mut issues);
        let at: Vec<String> = issues.into_vec().into_iter().map(|i| i.at).collect();
        assert_eq!(
            at,
            [
                "ingress.rate_limits.password_checks.waiting",
                "ingress.rate_limits.password_checks.at_once"
            ]
        );
        assert_eq!(limits.password_checks.per_address.get(), 4);
        let zero = toml::from_str::<RateLimitsConfig>("password_checks = { per_address = 0 }");
        assert!(zero.is_err());
    }
}
