//! The `topology.toml` model. Every field documented here is user documentation: the README's
//! reference is generated from the same words.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sharding::BucketRange;

/// A whole `topology.toml`: the log, its topics, the ingress, the stages, the catalog, the
/// shards and the sink settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Which log backend carries the topics, and how to reach it.
    pub log: LogConfig,
    /// Every topic the pipeline uses, by name.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    /// The HTTP ingress.
    pub ingress: IngressConfig,
    /// The processing stages, each reading one topic and writing the next.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Products that can be ordered: product code → price and currency.
    #[serde(default)]
    pub catalog: BTreeMap<String, CatalogEntry>,
    /// How user ids map to virtual buckets.
    #[serde(default)]
    pub sharding: ShardingConfig,
    /// The shards that store orders, each owning a range of buckets.
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Batching of the shard sink workers.
    #[serde(default)]
    pub sink: SinkConfig,
    /// The operations listener.
    #[serde(default)]
    pub ops: OpsConfig,
    /// Folder the topology was loaded from; relative paths in it resolve against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file the topology was loaded from (empty when parsed from memory).
    #[serde(skip)]
    pub source: PathBuf,
}

/// The log backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogBackend {
    /// Apache Kafka (or any Kafka-protocol broker), through librdkafka.
    Kafka,
    /// The embedded log: one local file, no services, one process.
    Embedded,
}

/// `[log]`: where the topics live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Backend: `"embedded"` (a local file, no services) or `"kafka"`.
    pub backend: LogBackend,
    /// Kafka bootstrap servers, comma-separated `host:port` (Kafka backend).
    #[serde(default)]
    pub brokers: String,
    /// File of the embedded log, relative to the topology file (embedded backend).
    #[serde(default = "defaults::log_path")]
    pub path: PathBuf,
    /// Embedded backend: records older than this many hours are deleted. Kafka topics keep
    /// the broker's retention settings.
    #[serde(default = "defaults::retention_hours")]
    pub retention_hours: Option<u64>,
    /// Embedded backend: at most this many records are kept per partition (oldest go first).
    #[serde(default)]
    pub retention_records: Option<u64>,
    /// Embedded backend: when less than this many MiB are free on the log's filesystem, the
    /// ingress refuses new orders (503, and `/readyz` answers 503 with the reason) while the
    /// stages go on writing their outputs, so the log can still commit what it holds and the
    /// pipeline drains before the disk is actually full; orders are taken again once free space
    /// is 1/16 of the watermark (at least 1 MiB) above it. `0` turns the check off.
    #[serde(default = "defaults::min_free_mib")]
    pub min_free_mib: u64,
    /// Embedded backend: most records waiting to be written at once. When the queue is full,
    /// new orders get 503 with `Retry-After` at once, and stage outputs wait for room, so
    /// memory stays bounded while the disk is slow.
    #[serde(default = "defaults::max_pending_appends")]
    pub max_pending_appends: usize,
    /// Prefix of every consumer group name; a stage's group is `<prefix>.<stage name>`.
    #[serde(default = "defaults::group_prefix")]
    pub consumer_group_prefix: String,
    /// Extra librdkafka properties for every client (e.g. `"security.protocol" = "SASL_SSL"`).
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
}

/// `[topics.<name>]`: one topic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions, created when the topic does not exist yet.
    pub partitions: u32,
    /// Replication factor used when creating the topic.
    #[serde(default = "defaults::replication")]
    pub replication: u32,
}

/// `[ingress]`: the HTTP front door.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// `production` refuses to start with development secrets or default passwords;
    /// `development` starts anyway and warns.
    #[serde(default)]
    pub mode: Mode,
    /// Address serving `POST /login` (and the health and metrics routes).
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
    /// How many `Idempotency-Key`s the ingress remembers (oldest forgotten first).
    #[serde(default = "defaults::idempotency_keys")]
    pub idempotency_keys: u64,
    /// How long an `Idempotency-Key` is remembered, in seconds.
    #[serde(default = "defaults::idempotency_ttl_secs")]
    pub idempotency_ttl_secs: u64,
    /// Most client connections open at once per listener; more wait in the accept queue.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
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
    /// use `${SLUICE_JWT_SECRET}` and at least 32 random bytes.
    #[serde(default)]
    pub jwt_secret: Option<String>,
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

/// `[ingress.rate_limits]`: token buckets per principal and per client address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Orders per authenticated user.
    #[serde(default = "defaults::orders_per_principal")]
    pub orders_per_principal: Quota,
    /// Orders per client address.
    #[serde(default = "defaults::orders_per_address")]
    pub orders_per_address: Quota,
    /// Login attempts per client address (IPv6 addresses count per /64).
    #[serde(default = "defaults::logins_per_address")]
    pub logins_per_address: Quota,
    /// Login attempts per user name, from any address (against distributed guessing).
    #[serde(default = "defaults::logins_per_user")]
    pub logins_per_user: Quota,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            orders_per_principal: defaults::orders_per_principal(),
            orders_per_address: defaults::orders_per_address(),
            logins_per_address: defaults::logins_per_address(),
            logins_per_user: defaults::logins_per_user(),
        }
    }
}

/// A token bucket: refilled at `per_second` (or `per_minute`) requests, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Sustained requests per second (give this or `per_minute`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_second: u32,
    /// Sustained requests per minute, for slow limits such as logins per user name.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_minute: u32,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Checks each order against `rules`; failures go to the dead-letter topic.
    Validate,
    /// Adds price, line total, currency, timestamps, bucket and shard from the catalog.
    Enrich,
    /// Sends each enriched order to the topic of the shard that owns its bucket.
    Route,
}

/// `[[stages]]`: one processing stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique name; also names the stage's consumer group.
    pub name: String,
    /// What the stage does.
    pub kind: StageKind,
    /// Topic the stage reads.
    pub input: String,
    /// Topic the stage writes (`validate`, `enrich`); a `route` stage writes the shard topics.
    #[serde(default)]
    pub output: Option<String>,
    /// Topic for records the stage rejects, with the reason in headers.
    pub dead_letter: String,
    /// Rules of a `validate` stage.
    #[serde(default)]
    pub rules: Option<ValidateRules>,
    /// Largest number of records handled per batch (read → write → commit).
    #[serde(default = "defaults::stage_batch")]
    pub batch_size: usize,
}

/// `[stages.rules]`: the checks of a `validate` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRules {
    /// Smallest accepted quantity.
    #[serde(default = "defaults::min_quantity")]
    pub min_quantity: i64,
    /// Largest accepted quantity.
    #[serde(default = "defaults::max_quantity")]
    pub max_quantity: i64,
    /// Regular expression a user id must match in full.
    #[serde(default = "defaults::user_id_pattern")]
    pub user_id_pattern: String,
    /// Whether the product must be in `[catalog]`.
    #[serde(default = "defaults::yes")]
    pub require_known_product: bool,
}

impl Default for ValidateRules {
    fn default() -> Self {
        ValidateRules {
            min_quantity: defaults::min_quantity(),
            max_quantity: defaults::max_quantity(),
            user_id_pattern: defaults::user_id_pattern(),
            require_known_product: true,
        }
    }
}

/// `[catalog.<product>]`: one product.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Unit price as a decimal string with at most two decimals, e.g. `"19.99"`.
    pub price: String,
    /// ISO 4217 currency code, e.g. `"EUR"`.
    pub currency: String,
}

/// `[sharding]`: user id → bucket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    /// Number of virtual buckets. Fixed for the life of the data: shards own bucket ranges.
    #[serde(default = "defaults::buckets")]
    pub buckets: u32,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        ShardingConfig {
            buckets: defaults::buckets(),
        }
    }
}

/// `[[shards]]`: one database that stores the orders of a bucket range.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Unique shard name, stored in each row's `shard` column.
    pub name: String,
    /// Database URL, e.g. `mysql://user:password@host:3306/database`; the database is
    /// created when missing. Use `${VAR}` to keep passwords out of the file.
    pub url: String,
    /// Inclusive bucket range this shard owns, e.g. `"0-63"`.
    pub buckets: BucketRange,
    /// Topic the route stage writes this shard's orders to, and its sink worker reads.
    pub topic: String,
}

/// `[ops]`: a listener with `/healthz`, `/readyz` and `/metrics` for any set of parts.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Address of the operations listener; leave out to serve those routes only on the
    /// ingress listeners (which a `--only processors|sinks` process does not open).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// `[sink]`: batching of the shard sink workers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A batch is written once it holds this many rows...
    #[serde(default = "defaults::max_rows")]
    pub max_rows: usize,
    /// ...or once its first row has waited this long, whichever comes first.
    #[serde(default = "defaults::max_wait_ms")]
    pub max_wait_ms: u64,
    /// Dead-letter topic whose records each shard stores for its own users, so that
    /// `GET /order/{id}` can report rejections. Leave out to not record rejections.
    #[serde(default)]
    pub rejections_topic: Option<String>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            max_rows: defaults::max_rows(),
            max_wait_ms: defaults::max_wait_ms(),
            rejections_topic: None,
        }
    }
}

impl Topology {
    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageConfig> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    /// The shard named `name`.
    pub fn shard(&self, name: &str) -> Option<&ShardConfig> {
        self.shards.iter().find(|shard| shard.name == name)
    }

    /// The topics a stage writes: its output, or every shard topic for a route stage.
    pub fn stage_outputs(&self, stage: &StageConfig) -> Vec<String> {
        match stage.kind {
            StageKind::Route => self.shards.iter().map(|s| s.topic.clone()).collect(),
            _ => stage.output.iter().cloned().collect(),
        }
    }

    /// The shard map described by `[sharding]` and `[[shards]]` (valid topologies only).
    pub fn shard_map(&self) -> Option<crate::sharding::ShardMap> {
        let ranges: Vec<_> = self
            .shards
            .iter()
            .map(|s| (s.name.clone(), s.buckets))
            .collect();
        crate::sharding::ShardMap::new(self.sharding.buckets, &ranges)
    }

    /// Resolves a path from the topology against the topology's folder.
    pub fn resolve_path(&self, path: &std::path::Path) -> PathBuf {
        super::resolve_relative(&self.base_dir, path)
    }
}

/// Parses a decimal price such as `"19.99"` into minor units (`1999`).
pub fn parse_price_minor(price: &str) -> Result<i64, String> {
    let invalid =
        || format!("price {price:?} must be a decimal with at most two decimals, e.g. \"19.99\"");
    let (whole, fraction) = price.trim().split_once('.').unwrap_or((price.trim(), ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let whole: i64 = whole.parse().map_err(|_| invalid())?;
    let cents: i64 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(invalid)
}

mod defaults {
    use std::net::SocketAddr;

    use super::Quota;

    pub fn log_path() -> std::path::PathBuf {
        "data/log.redb".into()
    }
    pub fn retention_hours() -> Option<u64> {
        Some(168)
    }
    pub fn min_free_mib() -> u64 {
        64
    }
    pub fn max_pending_appends() -> usize {
        8192
    }
    pub fn group_prefix() -> String {
        "sluice".into()
    }
    pub fn replication() -> u32 {
        1
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
    pub fn idempotency_keys() -> u64 {
        1_000_000
    }
    pub fn idempotency_ttl_secs() -> u64 {
        86_400
    }
    pub fn max_connections() -> usize {
        10_000
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
    pub fn token_ttl_secs() -> u64 {
        3_600
    }
    pub fn orders_per_principal() -> Quota {
        Quota {
            per_second: 200,
            per_minute: 0,
            burst: 400,
        }
    }
    pub fn orders_per_address() -> Quota {
        Quota {
            per_second: 2_000,
            per_minute: 0,
            burst: 4_000,
        }
    }
    pub fn logins_per_address() -> Quota {
        Quota {
            per_second: 5,
            per_minute: 0,
            burst: 20,
        }
    }
    pub fn logins_per_user() -> Quota {
        Quota {
            per_second: 0,
            per_minute: 10,
            burst: 5,
        }
    }
    pub fn stage_batch() -> usize {
        500
    }
    pub fn min_quantity() -> i64 {
        1
    }
    pub fn max_quantity() -> i64 {
        1_000
    }
    pub fn user_id_pattern() -> String {
        "[A-Za-z0-9_.@-]{1,64}".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn buckets() -> u32 {
        256
    }
    pub fn max_rows() -> usize {
        500
    }
    pub fn max_wait_ms() -> u64 {
        200
    }
}

#[cfg(test)]
mod tests {
    use super::parse_price_minor;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_price_minor("19.99"), Ok(1999));
        assert_eq!(parse_price_minor("5"), Ok(500));
        assert_eq!(parse_price_minor("0.5"), Ok(50));
        assert!(parse_price_minor("1.999").is_err());
        assert!(parse_price_minor("-1").is_err());
        assert!(parse_price_minor("abc").is_err());
    }
}
