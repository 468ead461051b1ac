//! `[log.kafka]`: the Kafka backend's settings, their checks, and a probe that says why a
//! connection to the cluster fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use serde::{Deserialize, Serialize};
use sluice_core::topology::Issues;

/// `[log.kafka]`: Apache Kafka (or any Kafka-protocol broker), through librdkafka.
/// Its `Debug` masks passwords, secrets and private keys.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaLogConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Extra librdkafka properties for every client, e.g.
    /// `"security.protocol" = "SASL_SSL"`, or `"queue.buffering.max.messages"` to change the
    /// producer's bound (100 000 records and 64 MiB by default).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long a consumer group waits for a silent member (a process killed, frozen or cut
    /// off from the brokers) before its partitions move to the group's other members, in
    /// milliseconds. Lower fails over sooner; too low, and a long pause (a full disk, a
    /// stalled VM) moves partitions needlessly. The brokers accept
    /// `group.min.session.timeout.ms` (6 s) to `group.max.session.timeout.ms` (30 min) by
    /// default. Default 10 000.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How much a shard sink's reader fetches ahead per partition, in MiB, to hand records out
    /// in time order while it catches up on a backlog (rows in key order cost InnoDB half the
    /// work): half waits in the partition's own librdkafka queue (its
    /// `queued.max.messages.kbytes`, unless `[log.kafka.properties]` sets that), half in the
    /// reader's lane, where records are merged by timestamp. A partition whose lane is full is
    /// not read until it is down to half, and librdkafka stops fetching it once its queue is
    /// full too. Larger keeps more of every partition fetched ahead (up to this much memory,
    /// plus one fetch, per partition a sink reads); smaller fetches more often. Default 8.
    #[serde(default = "default_time_order_lane_mib")]
    pub time_order_lane_mib: u64,
}

/// The default `session_timeout_ms`: 10 s.
fn default_session_timeout_ms() -> u64 {
    10_000
}

/// The default `time_order_lane_mib`.
fn default_time_order_lane_mib() -> u64 {
    (crate::time_order::DEFAULT_LANE_BYTES >> 20) as u64
}

/// librdkafka properties Sluice sets itself on its consumers, and what to use instead.
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("group.id", "consumer groups are named `<[log] consumer_group_prefix>.<stage>`, `<prefix>.sink.<shard>.sink` and `<prefix>.sink.<shard>.sink.rejections`; set `[log] consumer_group_prefix`"),
    ("group.protocol", "Sluice's consumers use the classic group protocol with cooperative-sticky assignment"),
    ("session.timeout.ms", "set `session_timeout_ms` in [log.kafka]"),
    ("partition.assignment.strategy", "Sluice's consumers use cooperative-sticky assignment, which rebalances without stopping the other members"),
    ("enable.auto.commit", "Sluice commits positions itself, only after the work is done"),
    ("enable.auto.offset.store", "Sluice commits positions itself, only after the work is done"),
];

impl std::fmt::Debug for KafkaLogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let secret = key.contains("password")
                    || key.contains("secret")
                    || key == "ssl.key.pem"
                    || key == "sasl.oauthbearer.config";
                (key.as_str(), if secret { "***" } else { value.as_str() })
            })
            .collect();
        f.debug_struct("KafkaLogConfig")
            .field("brokers", &self.brokers)
            .field("properties", &properties)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .finish()
    }
}

/// The values librdkafka takes for `security.protocol`.
const PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
/// The SASL mechanisms Sluice supports. GSSAPI would need libsasl2; OAUTHBEARER needs a
/// token provider (a callback, or OIDC through libcurl) that Sluice does not have.
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
/// Properties that name a file librdkafka reads when it creates a client.
const FILE_PROPERTIES: [&str; 5] = [
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
];

impl KafkaLogConfig {
    /// Settings for the brokers `brokers` (comma-separated `host:port`), with every other
    /// setting at its default.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaLogConfig {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
            session_timeout_ms: default_session_timeout_ms(),
            time_order_lane_mib: default_time_order_lane_mib(),
        }
    }

    /// What a time-ordered reader fetches ahead per partition.
    pub(crate) fn time_order_lane_bytes(&self) -> usize {
        usize::try_from(self.time_order_lane_mib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1 << 20)
    }

    /// Checks the settings; `at` is where the table is, e.g. `log.kafka`. Messages name the
    /// property and what to write, and never repeat a password.
    pub fn validate(&self, at: &str, issues: &mut Issues) {
        if self.brokers.trim().is_empty() {
            issues.push(
                format!("{at}.brokers"),
                "the Kafka backend needs bootstrap servers, e.g. \"127.0.0.1:9092\"",
            );
        }
        self.validate_group_settings(at, issues);
        self.validate_security(at, issues);
        if !(1..=1024).contains(&self.time_order_lane_mib) {
            issues.push(
                format!("{at}.time_order_lane_mib"),
                format!(
                    "{} MiB is out of range: use 1 to 1024 (8 by default)",
                    self.time_order_lane_mib
                ),
            );
        }
    }

    /// Checks the consumer-group settings: properties Sluice manages itself are refused, and
    /// the session timeout must be one a broker can accept.
    fn validate_group_settings(&self, at: &str, issues: &mut Issues) {
        for (name, instead) in MANAGED_PROPERTIES {
            if self.properties.contains_key(*name) {
                issues.push(
                    format!("{at}.properties.{name}"),
                    format!("Sluice sets {name:?} itself: remove it ({instead})"),
                );
            }
        }
        if !(1_000..=1_800_000).contains(&self.session_timeout_ms) {
            issues.push(
                format!("{at}.session_timeout_ms"),
                format!(
                    "{} ms is out of range: use 1000 to 1800000 (brokers accept 6000 to 1800000 by default)",
                    self.session_timeout_ms
                ),
            );
        }
    }

    /// `[log.kafka.properties]`: `security.protocol`, the SASL mechanism and credentials,
    /// and the files the TLS settings name.
    fn validate_security(&self, at: &str, issues: &mut Issues) {
        let property = |key: &str| format!("{at}.properties.\"{key}\"");
        let protocol = match self.property("security.protocol") {
            None => "PLAINTEXT".to_string(),
            Some(value) => {
                let upper = value.trim().to_ascii_uppercase();
                if !PROTOCOLS.contains(&upper.as_str()) {
                    issues.push(
                        property("security.protocol"),
                        format!(
                            "{value:?} is not a security protocol; use one of {} (SASL_SSL for a managed cluster)",
                            PROTOCOLS.join(", ")
                        ),
                    );
                    return;
                }
                upper
            }
        };
        let sasl = protocol.starts_with("SASL_");
        let tls = protocol.ends_with("SSL");
        if sasl {
            self.validate_sasl(&protocol, &property, issues);
        } else if let Some(key) = self.properties.keys().find(|k| k.starts_with("sasl.")) {
            issues.push(
                property(key),
                format!(
                    "SASL settings take effect only with security.protocol = \"SASL_SSL\" (or \"SASL_PLAINTEXT\"), but it is {protocol}: set \"security.protocol\" = \"SASL_SSL\", or remove the sasl.* settings"
                ),
            );
        }
        if !tls {
            if let Some(key) = self.properties.keys().find(|k| k.starts_with("ssl.")) {
                issues.push(
                    property(key),
                    format!(
                        "TLS settings take effect only with security.protocol = \"SSL\" or \"SASL_SSL\", but it is {protocol}: the connection would not be encrypted"
                    ),
                );
            }
        }
        for key in FILE_PROPERTIES {
            let Some(value) = self.property(key) else {
                continue;
            };
            // `probe` asks librdkafka to search the system's usual CA bundle locations.
            if key == "ssl.ca.location" && value.trim() == "probe" {
                continue;
            }
            if value.trim().is_empty() {
                issues.push(property(key), "is empty; name a PEM file, or remove it");
            } else if !Path::new(value).exists() {
                issues.push(
                    property(key),
                    format!(
                        "no file at {value:?} (a relative path is taken from the directory Sluice runs in)"
                    ),
                );
            }
        }
    }

    /// The SASL mechanism and its credentials, under a `SASL_*` protocol.
    fn validate_sasl(
        &self,
        protocol: &str,
        property: &dyn Fn(&str) -> String,
        issues: &mut Issues,
    ) {
        let singular = self.property("sasl.mechanism");
        let plural = self.property("sasl.mechanisms");
        let (key, mechanism) = match (singular, plural) {
            (Some(one), Some(other)) if one.trim() != other.trim() => {
                issues.push(
                    property("sasl.mechanisms"),
                    format!(
                        "names {other:?} but sasl.mechanism names {one:?}; keep one of the two"
                    ),
                );
                return;
            }
            (Some(one), _) => ("sasl.mechanism", one.trim()),
            (None, Some(other)) => ("sasl.mechanisms", other.trim()),
            (None, None) => {
                issues.push(
                    property("sasl.mechanism"),
                    format!(
                        "security.protocol {protocol} needs a SASL mechanism: set \"sasl.mechanism\" to SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN (whichever the cluster uses; librdkafka's default, GSSAPI, is not built into Sluice)"
                    ),
                );
                return;
            }
        };
        if mechanism.eq_ignore_ascii_case("GSSAPI") {
            issues.push(
                property(key),
                "Kerberos (GSSAPI) is not built into Sluice (it needs the system's libsasl2); use SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN",
            );
            return;
        }
        if mechanism.eq_ignore_ascii_case("OAUTHBEARER") {
            issues.push(
                property(key),
                "OAUTHBEARER is not supported: Sluice has no OAuth token provider; use SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN",
            );
            return;
        }
        if !MECHANISMS.contains(&mechanism) {
            let hint = match MECHANISMS
                .iter()
                .find(|known| known.eq_ignore_ascii_case(mechanism))
            {
                Some(known) => format!("write it as {known:?}"),
                None => format!("use one of {}", MECHANISMS.join(", ")),
            };
            issues.push(
                property(key),
                format!("{mechanism:?} is not a SASL mechanism Sluice supports; {hint}"),
            );
            return;
        }
        for (needed, example) in [
            ("sasl.username", "\"sasl.username\" = \"sluice\""),
            (
                "sasl.password",
                "\"sasl.password\" = \"${SLUICE_KAFKA_PASSWORD}\" (from the environment)",
            ),
        ] {
            if self.property(needed).is_none_or(|v| v.is_empty()) {
                issues.push(
                    property(needed),
                    format!("SASL mechanism {mechanism} needs {needed}, e.g. {example}"),
                );
            }
        }
        if protocol == "SASL_PLAINTEXT" && mechanism == "PLAIN" {
            issues.push(
                property("security.protocol"),
                "SASL_PLAINTEXT with PLAIN sends the password unencrypted; use \"SASL_SSL\"",
            );
        }
    }

    /// The value of a librdkafka property, if set.
    fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// The librdkafka settings every client of this cluster starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Connects to the cluster once and asks for its metadata, waiting at most `limit`.
    /// Blocking. On failure says why in words that tell what to change: the credentials
    /// refused, the broker's certificate not verified, or no broker answering (at once when
    /// librdkafka reports every broker down, e.g. connections refused).
    pub fn probe(&self, limit: Duration) -> Result<(), ConnectError> {
        let context = ProbeContext::default();
        // A producer hands librdkafka's error events, with their reasons, to the context
        // when polled (a consumer would keep only the error code).
        let producer: BaseProducer<ProbeContext> = self
            .client_config()
            .set_log_level(RDKafkaLogLevel::Emerg)
            .create_with_context(context)
            .map_err(|error| ConnectError::Settings(self.redact(&error.to_string())))?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(Duration::from_millis(500));
            let result = producer.client().fetch_metadata(None, attempt);
            if result.is_ok() {
                return Ok(());
            }
            producer.poll(Duration::ZERO);
            let seen = producer.context().seen();
            if let Some(error) = self.diagnose(&seen) {
                return Err(error);
            }
            let all_down = seen
                .iter()
                .any(|(code, _)| *code == RDKafkaErrorCode::AllBrokersDown);
            if all_down || Instant::now() >= deadline {
                let detail = seen
                    .iter()
                    .rev()
                    .find(|(code, _)| *code != RDKafkaErrorCode::AllBrokersDown)
                    .or(seen.last())
                    .map(|(_, reason)| self.redact(reason))
                    .or_else(|| result.err().map(|e| e.to_string()));
                return Err(ConnectError::Unreachable {
                    secs: limit.as_secs().max(1),
                    detail: detail.unwrap_or_else(|| "no answer".into()),
                });
            }
        }
    }

    /// The first failure among librdkafka's reported errors that retrying cannot fix.
    fn diagnose(&self, seen: &[(RDKafkaErrorCode, String)]) -> Option<ConnectError> {
        for (code, reason) in seen {
            let detail = self.redact(reason);
            if *code == RDKafkaErrorCode::Authentication
                || reason.contains("SASL authentication error")
            {
                return Some(ConnectError::Authentication {
                    mechanism: self
                        .property("sasl.mechanism")
                        .or(self.property("sasl.mechanisms"))
                        .unwrap_or("GSSAPI")
                        .to_string(),
                    user: self.property("sasl.username").unwrap_or("").to_string(),
                    detail,
                });
            }
            if reason.contains("certificate verify failed") {
                return Some(ConnectError::Certificate {
                    ca: self.property("ssl.ca.location").map_or_else(
                        || "not set: the system's CA store".into(),
                        |ca| format!("{ca:?}"),
                    ),
                    detail,
                });
            }
            if *code == RDKafkaErrorCode::SSL || reason.contains("SSL handshake failed") {
                return Some(ConnectError::Tls { detail });
            }
        }
        None
    }

    /// `text` with the SASL password, if any, masked.
    fn redact(&self, text: &str) -> String {
        match self.property("sasl.password") {
            Some(password) if password.len() >= 3 => text.replace(password, "***"),
            _ => text.to_string(),
        }
    }
}

/// Why Sluice could not talk to the Kafka cluster, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The brokers refused the SASL credentials.
    #[error(
        "SASL authentication failed ({mechanism} as user {user:?}): the brokers refused the credentials; check sasl.username and sasl.password in [log.kafka.properties] (and that the user has {mechanism} credentials on the cluster). librdkafka: {detail}"
    )]
    Authentication {
        /// The SASL mechanism in use.
        mechanism: String,
        /// The user name tried.
        user: String,
        /// librdkafka's own words (without the password).
        detail: String,
    },
    /// The broker's TLS certificate was not verified.
    #[error(
        "TLS certificate verification failed: the broker's certificate is not signed by a CA in ssl.ca.location ({ca}), or does not name the broker's host; point \"ssl.ca.location\" in [log.kafka.properties] at the cluster's CA bundle (PEM). librdkafka: {detail}"
    )]
    Certificate {
        /// What `ssl.ca.location` says.
        ca: String,
        /// librdkafka's own words.
        detail: String,
    },
    /// The TLS handshake failed for another reason.
    #[error(
        "TLS handshake failed: check that security.protocol matches the listener (SSL or SASL_SSL for a TLS port) and the ssl.* settings in [log.kafka.properties]. librdkafka: {detail}"
    )]
    Tls {
        /// librdkafka's own words.
        detail: String,
    },
    /// No broker answered (all refused or went away, or none answered in time).
    #[error(
        "no broker answered (waited at most {secs} s): check [log.kafka] brokers, that security.protocol matches the listener, and that the cluster is up. Last error: {detail}"
    )]
    Unreachable {
        /// The longest Sluice would have waited.
        secs: u64,
        /// The last error librdkafka reported.
        detail: String,
    },
    /// librdkafka refused the settings themselves.
    #[error("librdkafka refused the [log.kafka] settings: {0}")]
    Settings(String),
}

/// Records the errors librdkafka reports while the probe runs.
#[derive(Default)]
struct ProbeContext {
    seen: Mutex<Vec<(RDKafkaErrorCode, String)>>,
}

impl ProbeContext {
    fn seen(&self) -> Vec<(RDKafkaErrorCode, String)> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }
}

impl ClientContext for ProbeContext {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _log_message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error
            .rdkafka_error_code()
            .unwrap_or(RDKafkaErrorCode::Unknown);
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() < 64 {
                seen.push((code, reason.to_string()));
            }
        }
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _result: &DeliveryResult<'_>, _opaque: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(properties: &[(&str, &str)]) -> KafkaLogConfig {
        let mut config = KafkaLogConfig::new("127.0.0.1:9093");
        config.properties = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config
    }

    fn issues(config: &KafkaLogConfig) -> Vec<String> {
        let mut issues = Issues::new();
        config.validate("log.kafka", &mut issues);
        issues.into_vec().iter().map(ToString::to_string).collect()
    }

    fn ca_file() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn group_settings_sluice_manages_are_refused_with_what_to_use_instead() {
        let config = kafka(&[
            ("group.id", "mine"),
            ("session.timeout.ms", "30000"),
            ("partition.assignment.strategy", "range"),
            ("enable.auto.commit", "true"),
        ]);
        let found = issues(&config);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found.iter().any(|i| i.contains("session_timeout_ms")),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|i| i.contains("cooperative-sticky")),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|i| i.contains("consumer_group_prefix")),
            "{found:#?}"
        );
    }

    #[test]
    fn the_session_timeout_must_be_one_a_broker_can_take() {
        for (timeout, accepted) in [
            (999, false),
            (1_000, true),
            (10_000, true),
            (1_800_001, false),
        ] {
            let mut config = kafka(&[]);
            config.session_timeout_ms = timeout;
            let found = issues(&config);
            assert_eq!(found.is_empty(), accepted, "{timeout}: {found:#?}");
            if !accepted {
                assert!(
                    found[0].contains("log.kafka.session_timeout_ms"),
                    "{found:#?}"
                );
            }
        }
    }

    #[test]
    fn the_time_order_lane_is_between_one_mib_and_a_gib() {
        for (mib, accepted) in [
            (0, false),
            (1, true),
            (8, true),
            (1_024, true),
            (1_025, false),
        ] {
            let mut config = kafka(&[]);
            config.time_order_lane_mib = mib;
            let found = issues(&config);
            assert_eq!(found.is_empty(), accepted, "{mib}: {found:#?}");
            if !accepted {
                assert!(
                    found[0].contains("log.kafka.time_order_lane_mib")
                        && found[0].contains("1 to 1024"),
                    "{found:#?}"
                );
            }
        }
        assert_eq!(kafka(&[]).time_order_lane_bytes(), 8 << 20);
    }

    #[test]
    fn a_managed_cluster_with_scram_or_plain_is_accepted() {
        let ca = ca_file();
        let ca = ca.path().to_str().unwrap();
        for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
            let config = kafka(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "sluice"),
                ("sasl.password", "s3cret-value"),
                ("ssl.ca.location", ca),
            ]);
            assert_eq!(issues(&config), Vec::<String>::new(), "{mechanism}");
        }
        let probe = kafka(&[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "sluice"),
            ("sasl.password", "s3cret-value"),
            ("ssl.ca.location", "probe"),
        ]);
        assert_eq!(issues(&probe), Vec::<String>::new());
        assert_eq!(issues(&kafka(&[])), Vec::<String>::new());
    }

    #[test]
    fn an_unknown_security_protocol_lists_the_valid_ones() {
        let found = issues(&kafka(&[("security.protocol", "TLS")]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("security.protocol"), "{found:?}");
        assert!(
            found[0].contains("SASL_SSL") && found[0].contains("\"TLS\""),
            "{found:?}"
        );
    }

    #[test]
    fn sasl_without_a_mechanism_or_with_gssapi_says_what_to_use() {
        let none = issues(&kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]));
        assert_eq!(none.len(), 1, "{none:?}");
        assert!(
            none[0].contains("sasl.mechanism") && none[0].contains("SCRAM-SHA-512"),
            "{none:?}"
        );
        let gssapi = issues(&kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "GSSAPI"),
        ]));
        assert_eq!(gssapi.len(), 1, "{gssapi:?}");
        assert!(gssapi[0].contains("not built into Sluice"), "{gssapi:?}");
        let oauth = issues(&kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "OAUTHBEARER"),
        ]));
        assert_eq!(oauth.len(), 1, "{oauth:?}");
        assert!(oauth[0].contains("not supported"), "{oauth:?}");
        let lower = issues(&kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "scram-sha-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]));
        assert_eq!(lower.len(), 1, "{lower:?}");
        assert!(
            lower[0].contains("write it as \"SCRAM-SHA-512\""),
            "{lower:?}"
        );
        let both = issues(&kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.mechanisms", "SCRAM-SHA-256"),
        ]));
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].contains("keep one"), "{both:?}");
    }

    #[test]
    fn a_mechanism_without_credentials_names_both_and_never_a_password() {
        let missing = issues(&kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
        ]));
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("sasl.username"), "{missing:?}");
        assert!(
            missing[1].contains("sasl.password") && missing[1].contains("${"),
            "{missing:?}"
        );
        // An empty password (an unset variable with an empty default) counts as missing.
        let empty = issues(&kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", ""),
        ]));
        assert_eq!(empty.len(), 1, "{empty:?}");
        // No message ever repeats a password, whatever else is wrong.
        let password = "hunter2-not-printed";
        let wrong = issues(&kafka(&[
            ("security.protocol", "PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", password),
            ("ssl.ca.location", "/nonexistent/ca.pem"),
        ]));
        assert!(!wrong.is_empty());
        assert!(wrong.iter().all(|m| !m.contains(password)), "{wrong:?}");
    }

    #[test]
    fn settings_that_would_do_nothing_are_reported() {
        let sasl = issues(&kafka(&[("sasl.username", "u"), ("sasl.password", "p")]));
        assert_eq!(sasl.len(), 1, "{sasl:?}");
        assert!(sasl[0].contains("SASL_SSL"), "{sasl:?}");
        let ca = ca_file();
        let tls = issues(&kafka(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
            ("ssl.ca.location", ca.path().to_str().unwrap()),
        ]));
        assert_eq!(tls.len(), 1, "{tls:?}");
        assert!(tls[0].contains("not be encrypted"), "{tls:?}");
        let plain = issues(&kafka(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]));
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert!(plain[0].contains("unencrypted"), "{plain:?}");
    }

    #[test]
    fn debug_output_masks_the_password() {
        let config = kafka(&[
            ("sasl.username", "sluice"),
            ("sasl.password", "hunter2-secret"),
        ]);
        let shown = format!("{config:?}");
        assert!(
            shown.contains("sluice") && !shown.contains("hunter2-secret"),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let found = issues(&kafka(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", "/nonexistent/cluster-ca.pem"),
        ]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("ssl.ca.location")
                && found[0].contains("/nonexistent/cluster-ca.pem"),
            "{found:?}"
        );
    }

    #[test]
    fn errors_are_classified_and_the_password_masked() {
        let config = kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "sluice"),
            ("sasl.password", "hunter2-secret"),
        ]);
        let auth = config
            .diagnose(&[(
                RDKafkaErrorCode::Authentication,
                "SASL authentication error: bad hunter2-secret".into(),
            )])
            .unwrap()
            .to_string();
        assert!(auth.starts_with("SASL authentication failed"), "{auth}");
        assert!(!auth.contains("hunter2-secret"), "{auth}");
        let certificate = config
            .diagnose(&[(
                RDKafkaErrorCode::SSL,
                "SSL handshake failed: certificate verify failed".into(),
            )])
            .unwrap()
            .to_string();
        assert!(
            certificate.starts_with("TLS certificate verification failed"),
            "{certificate}"
        );
        assert!(config
            .diagnose(&[(
                RDKafkaErrorCode::BrokerTransportFailure,
                "Connection refused".into()
            )])
            .is_none());
    }
}
