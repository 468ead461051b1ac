//! `sluice check`: the topology file, and with `--connect` everything it names.
//!
//! Plain `sluice check` validates the file and reports every problem at once. `--connect` then
//! reaches what the topology names, all of it, and again reports every problem at once, each
//! with the setting or file to fix:
//! - the log: on Kafka, each declared topic must exist with the declared partitions, or be
//!   missing (then `sluice run` creates it); fewer partitions is an error, more a warning
//!   (`sluice run` applies the same rule when it starts,
//!   [`sluice_core::log::ensure_declared_topics`]). Before the topics, one probe connects to
//!   the cluster, so credentials the brokers refuse or a certificate that does not verify are
//!   said as such, within [`PROBE_LIMIT`], instead of as a metadata timeout. On the embedded
//!   log, its folder must be writable and have `[log.embedded] min_free_mib` free;
//! - every shard, within [`SHARD_LIMIT`], read-only: reachable, the credentials accepted, the
//!   database there (or creatable), the schema at the version this build expects, and the
//!   privileges `sluice run` needs;
//! - the users file and the token and capability key files of `[ingress.auth]`, with the
//!   ingress's own loaders;
//! - the production-mode checks of the ingress ([`sluice_ingress::security::weaknesses`]):
//!   errors in production mode, warnings in development mode.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde::Serialize;
use sluice_core::log::{compare_partitions, LogError, PartitionCount};
use sluice_core::topology::ShardConfig;
use sluice_ingress::generated_secret::SecretError;
use sluice_ingress::Mode;
use sluice_log_kafka::ConnectError;

use crate::topology::{LogBackend, Topology, TopologyError};

/// Why an embedded topology cannot be split across processes, said by `sluice check` and by
/// `sluice run --only`.
pub const EMBEDDED_SERVES_ONE_PROCESS: &str = "the embedded log is a file that serves one process: to run the parts in separate processes (`sluice run --only ingress|processors|sinks`), use Kafka ([log] backend = \"kafka\")";

/// Longest wait for the first answer of the cluster.
pub const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Longest the start of `sluice run` waits to learn whether the cluster refuses Sluice.
pub const START_PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Longest `sluice check --connect` waits for a shard's server to let it in.
pub const SHARD_LIMIT: Duration = Duration::from_secs(5);

/// Privileges the shard's user needs on its database: `sluice run` creates the database and
/// tables when missing (`CREATE … IF NOT EXISTS` on every start), upserts rows and positions,
/// and locks its claims with `SELECT … FOR UPDATE`.
pub const SHARD_PRIVILEGES: &[&str] = &["SELECT", "INSERT", "UPDATE", "CREATE"];

/// Whether the Kafka cluster of `topology` refuses Sluice for good: credentials refused, a
/// certificate that does not verify, a failed TLS handshake or settings librdkafka rejects.
/// `sluice run` then stops at once saying what to fix, instead of failing a minute later
/// with a timeout. A cluster that does not answer (yet) is not a refusal: the pipeline waits
/// for it as before. Blocking, at most [`START_PROBE_LIMIT`].
pub fn refusal(topology: &Topology) -> Option<ConnectError> {
    let (LogBackend::Kafka, Some(kafka)) = (topology.log.backend, &topology.log.kafka) else {
        return None;
    };
    match kafka.probe(START_PROBE_LIMIT) {
        Ok(()) | Err(ConnectError::Unreachable { .. }) => None,
        Err(error) => Some(error),
    }
}

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `sluice run` would fail or refuse to start: the check exits 1.
    Error,
    /// Works, but should change (development-mode weaknesses, more partitions than declared,
    /// a schema `sluice run` still has to migrate).
    Warning,
}

/// One thing to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// How serious it is.
    pub severity: Severity,
    /// What it concerns: `topology`, `kafka`, `log`, `shard:<name>`, `users`, `keys` or
    /// `security`.
    pub component: String,
    /// The setting or file to change, e.g. `shards[1].url` or `ingress.auth.users_file`.
    pub setting: String,
    /// What is wrong and how to fix it. Never holds a password.
    pub message: String,
}

/// Everything a check found: the problems, what was fine, and how much was checked.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// The topology file checked.
    pub topology: String,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
    /// What was checked and found fine (or fine for `sluice run`, like a missing topic it
    /// creates), one line each.
    pub notes: Vec<String>,
    /// Counts of what was checked, by name (`topics`, `shards`, `users`, …).
    pub checked: BTreeMap<String, u64>,
}

/// The JSON document `sluice check --format json` prints.
#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    #[serde(flatten)]
    report: &'a CheckReport,
}

impl CheckReport {
    /// An empty report for the topology at `path`.
    pub fn new(path: &Path) -> Self {
        CheckReport {
            topology: path.display().to_string(),
            ..CheckReport::default()
        }
    }

    /// Whether no problem is an error (warnings alone keep the check successful).
    pub fn is_ok(&self) -> bool {
        !self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// Records a problem.
    pub fn push(
        &mut self,
        severity: Severity,
        component: impl Into<String>,
        setting: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity,
            component: component.into(),
            setting: setting.into(),
            message: message.into(),
        });
    }

    /// Records an error.
    pub fn error(
        &mut self,
        component: impl Into<String>,
        setting: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, component, setting, message);
    }

    /// Records a warning.
    pub fn warning(
        &mut self,
        component: impl Into<String>,
        setting: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Warning, component, setting, message);
    }

    /// Records that something was found fine.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Counts `n` more checked things of `kind`.
    pub fn count(&mut self, kind: &str, n: u64) {
        *self.checked.entry(kind.to_string()).or_default() += n;
    }

    /// Adds the findings of `other` to this report.
    pub fn merge(&mut self, other: CheckReport) {
        self.problems.extend(other.problems);
        self.notes.extend(other.notes);
        for (kind, n) in other.checked {
            self.count(&kind, n);
        }
    }

    /// The report as a person reads it: the notes, then each problem as
    /// `error: <message> [<component>: <setting>]` (or `warning: …`), then a summary line.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for note in &self.notes {
            let _ = writeln!(text, "{note}");
        }
        for problem in &self.problems {
            let severity = match problem.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let _ = write!(
                text,
                "{severity}: {} [{}",
                problem.message, problem.component
            );
            if !problem.setting.is_empty() {
                let _ = write!(text, ": {}", problem.setting);
            }
            let _ = writeln!(text, "]");
        }
        let errors = self
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        let warnings = self.problems.len() - errors;
        if !self.problems.is_empty() {
            let _ = writeln!(
                text,
                "{}: {errors} error(s), {warnings} warning(s)",
                self.topology
            );
        }
        text
    }

    /// The report as one JSON document: `{"ok", "topology", "problems": [{"severity",
    /// "component", "setting", "message"}], "notes", "checked": {…counts…}}`.
    pub fn json(&self) -> String {
        let document = JsonReport {
            ok: self.is_ok(),
            report: self,
        };
        serde_json::to_string_pretty(&document).unwrap_or_else(|error| {
            format!("{{\"ok\":false,\"problems\":[{{\"severity\":\"error\",\"component\":\"topology\",\"setting\":\"\",\"message\":\"cannot encode the report: {error}\"}}]}}")
        })
    }
}

/// The problems of a topology file that could not be loaded: one per validation issue (all
/// of them, as validation collects them), or the one reason it could not be read or parsed.
pub fn topology_problems(error: &TopologyError) -> Vec<Problem> {
    let problem = |setting: String, message: String| Problem {
        severity: Severity::Error,
        component: "topology".into(),
        setting,
        message,
    };
    match error {
        TopologyError::Invalid { issues, .. } => issues
            .iter()
            .map(|issue| problem(issue.at.clone(), issue.message.clone()))
            .collect(),
        TopologyError::MissingVariables { names, .. } => names
            .iter()
            .map(|name| {
                problem(
                    format!("${{{name}}}"),
                    format!("environment variable {name} is not set and has no `:-default`: set it, or give a default in the file"),
                )
            })
            .collect(),
        TopologyError::Read { path, .. } | TopologyError::Parse { path, .. } => {
            vec![problem(path.display().to_string(), error.to_string())]
        }
    }
}

/// Counts what the topology file declares, for the report's `checked`.
pub fn count_declared(report: &mut CheckReport, topology: &Topology) {
    report.count("topics", topology.topics.len() as u64);
    report.count("stages", topology.stages.len() as u64);
    report.count("shards", topology.shards.len() as u64);
    report.count("buckets", u64::from(topology.sharding.buckets));
}

/// `sluice check --connect`: the log (Kafka topics, or the embedded log's folder), every
/// shard, the users file, the key files and the production-mode checks, concurrently; every
/// problem is reported.
pub async fn connect(topology: &Topology) -> CheckReport {
    let mut report = CheckReport::new(&topology.source);
    let log = async {
        match topology.log.backend {
            LogBackend::Kafka => topics(topology).await,
            LogBackend::Embedded => embedded_log(topology).await,
        }
    };
    let shards = async {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..topology.shards.len() {
            let topology = topology.clone();
            tasks.spawn(async move {
                let report = check_shard(&topology, index, &topology.shards[index]).await;
                (index, report)
            });
        }
        let mut reports = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, report)) => {
                    reports.insert(index, report);
                }
                Err(error) => {
                    let mut report = CheckReport::default();
                    report.error("shard", "shards", format!("a shard check failed: {error}"));
                    reports.insert(usize::MAX - reports.len(), report);
                }
            }
        }
        reports.into_values().collect::<Vec<_>>()
    };
    let auth = {
        let topology = topology.clone();
        async move {
            tokio::task::spawn_blocking(move || auth(&topology))
                .await
                .unwrap_or_else(|error| {
                    let mut report = CheckReport::default();
                    report.error(
                        "keys",
                        "",
                        format!("the users and keys check failed: {error}"),
                    );
                    report
                })
        }
    };
    let (log, shards, auth) = tokio::join!(log, shards, auth);
    report.merge(log);
    for shard in shards {
        report.merge(shard);
    }
    report.merge(auth);
    report
}

/// Asks the Kafka cluster `topology` names about every declared topic, without creating any.
pub async fn topics(topology: &Topology) -> CheckReport {
    let mut report = CheckReport::default();
    if let (LogBackend::Kafka, Some(kafka)) = (topology.log.backend, &topology.log.kafka) {
        let kafka = kafka.clone();
        let probe = tokio::task::spawn_blocking(move || kafka.probe(PROBE_LIMIT)).await;
        match probe {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                report.error(
                    "kafka",
                    "log.kafka",
                    format!("cannot ask the brokers about the topics: {error}"),
                );
                return report;
            }
            Err(error) => {
                report.error(
                    "kafka",
                    "log.kafka",
                    format!("the connection probe failed: {error}"),
                );
                return report;
            }
        }
    }
    let log = match topology.log.open(&topology.base_dir) {
        Ok(log) => log,
        Err(error) => {
            report.error("kafka", "log", format!("cannot open the log: {error}"));
            return report;
        }
    };
    for (topic, config) in &topology.topics {
        let declared = config.partitions;
        let setting = format!("topics.{topic:?}.partitions");
        match log.partition_count(topic).await {
            Ok(actual) => match compare_partitions(topic, declared, actual) {
                PartitionCount::AsDeclared => {
                    report.count("kafka_topics", 1);
                    report.note(format!("topic {topic:?}: {actual} partitions, as declared"))
                }
                PartitionCount::More { declared, actual } => {
                    report.count("kafka_topics", 1);
                    report.warning("kafka", setting, format!(
                        "topic {topic:?} has {actual} partitions, more than the {declared} declared; every partition is read, but declare {actual} to say what runs"
                    ))
                }
                PartitionCount::Fewer(error) => {
                    report.count("kafka_topics", 1);
                    report.error("kafka", setting, error.to_string())
                }
            },
            Err(LogError::UnknownTopic(_)) => {
                report.count("kafka_topics", 1);
                report.note(format!(
                    "topic {topic:?}: missing; `sluice run` creates it with {declared} partitions"
                ))
            }
            Err(error) => {
                report.error("kafka", "log.kafka.brokers", format!(
                    "cannot ask the brokers about topic {topic:?}: {error}; check [log.kafka] brokers and that the cluster is up"
                ));
                break;
            }
        }
    }
    report
}

/// The embedded log is a file on this machine: its folder must be writable (or creatable)
/// and have `[log.embedded] min_free_mib` free.
async fn embedded_log(topology: &Topology) -> CheckReport {
    let path = topology.resolve_path(&topology.log.embedded.path);
    let min_free_mib = topology.log.embedded.min_free_mib;
    blocking_check("log", "log.embedded.path", "the embedded log", move || {
        let mut report = CheckReport::default();
        report.note(EMBEDDED_SERVES_ONE_PROCESS);
        let folder = folder_of(&path);
        match writable_folder(&folder) {
            Ok(existing) if existing == folder => {
                report.note(format!("log folder {}: writable", folder.display()))
            }
            Ok(existing) => report.note(format!(
                "log folder {}: missing; `sluice run` creates it in {} (writable)",
                folder.display(),
                existing.display()
            )),
            Err(message) => report.error("log", "log.embedded.path", message),
        }
        if let Some(free) = free_bytes(&folder) {
            let free_mib = free >> 20;
            if free_mib < min_free_mib {
                report.error("log", "log.embedded.min_free_mib", format!(
                    "only {free_mib} MiB free for the embedded log in {}, below [log.embedded] min_free_mib = {min_free_mib}: new orders would be refused; free some space, move log.embedded.path to a larger disk, or lower min_free_mib",
                    folder.display()
                ));
            } else {
                report.note(format!(
                    "log disk: {free_mib} MiB free (min_free_mib = {min_free_mib})"
                ));
            }
        }
        report.count("log_files", 1);
        report
    })
    .await
}

/// Runs the blocking `check` of `what` on a blocking thread. If it fails (it panicked, or was
/// cancelled), its report is one error on `component`/`setting`, so the check is never
/// silently skipped and `sluice check --connect` exits 1.
async fn blocking_check(
    component: &str,
    setting: &str,
    what: &str,
    check: impl FnOnce() -> CheckReport + Send + 'static,
) -> CheckReport {
    tokio::task::spawn_blocking(check)
        .await
        .unwrap_or_else(|error| {
            let mut report = CheckReport::default();
            report.error(
                component,
                setting,
                format!("the check of {what} failed ({error}); nothing was concluded about it: run the check again, and report the failure if it persists"),
            );
            report
        })
}

/// The folder holding `file` (`.` for a bare name).
fn folder_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Whether files can be created in `folder`, or (when it does not exist yet) in its nearest
/// existing ancestor, where `sluice run` would create it: returns the folder tried. Tries by
/// creating and removing a probe file, which is what counts (permissions, read-only mounts,
/// ACLs).
fn writable_folder(folder: &Path) -> Result<PathBuf, String> {
    let existing = existing_ancestor(folder);
    if !existing.is_dir() {
        return Err(format!(
            "{} is not a folder: point the path at a file in a folder",
            existing.display()
        ));
    }
    // One name per probe: the checks of several shards in one folder run at once.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = existing.join(format!(
        ".sluice-check-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(existing)
        }
        Err(error) => Err(format!(
            "cannot create files in {}: {error}; give the user running sluice write access to it, or choose another path",
            existing.display()
        )),
    }
}

/// `folder`, or its nearest ancestor that exists (`.` for a relative path none of whose
/// ancestors exists).
fn existing_ancestor(folder: &Path) -> PathBuf {
    let mut existing = folder;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => return PathBuf::from("."),
        }
    }
    existing.to_path_buf()
}

/// Free bytes (for unprivileged users) on the filesystem holding `folder` (or its nearest
/// existing ancestor).
fn free_bytes(folder: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(existing_ancestor(folder)).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Checks one shard: a MySQL/MariaDB server or a SQLite file.
async fn check_shard(topology: &Topology, index: usize, shard: &ShardConfig) -> CheckReport {
    let mut report = CheckReport::default();
    let component = format!("shard:{}", shard.name);
    let setting = format!("shards[{index}].url");
    report.count("shards_checked", 1);
    if let Some(path) = shard.url.strip_prefix("sqlite://") {
        let path = sluice_core::topology::resolve_relative(&topology.base_dir, Path::new(path));
        let name = shard.name.clone();
        let found = {
            let (component, setting) = (component.clone(), setting.clone());
            move || sqlite_shard(&name, &path, &component, &setting)
        };
        let found = blocking_check(&component, &setting, "the SQLite shard", found).await;
        report.merge(found);
        return report;
    }
    if !shard.url.starts_with("mysql://") {
        report.error(
            component,
            setting,
            "use a mysql://user:password@host:port/database or sqlite://path URL",
        );
        return report;
    }
    match tokio::time::timeout(SHARD_LIMIT, mysql_shard(&shard.name, &shard.url)).await {
        Ok(Ok(notes)) => {
            report.count("shards_reachable", 1);
            for (severity, message) in notes {
                match severity {
                    Some(severity) => report.push(severity, &component, &setting, message),
                    None => report.note(message),
                }
            }
        }
        Ok(Err(message)) => report.error(&component, &setting, message),
        Err(_) => report.error(&component, &setting, format!(
            "shard {:?} at {} did not answer within {SHARD_LIMIT:?}: check that its server is up and reachable from here, and the host and port of {setting}",
            shard.name,
            server_of(&shard.url)
        )),
    }
    report
}

/// `host:port/database` of a MySQL URL, without the user and password.
fn server_of(url: &str) -> String {
    let rest = url.strip_prefix("mysql://").unwrap_or(url);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split('?').next().unwrap_or(rest).to_string()
}

/// A finding: `None` for a note, else a problem's severity; and its message.
type Finding = (Option<Severity>, String);

/// Checks a MySQL/MariaDB shard read-only: connects to the server, then asks whether the
/// database and schema are there and at which version, and which privileges the user has.
/// `Err` is the one problem that stopped the check (unreachable, credentials refused).
async fn mysql_shard(name: &str, url: &str) -> Result<Vec<Finding>, String> {
    let where_ = server_of(url);
    let opts = mysql_async::Opts::from_url(url).map_err(|error| {
        format!("shard {name:?}: not a valid URL ({error}); write it as mysql://user:password@host:port/database")
    })?;
    let Some(database) = opts.db_name().map(str::to_string) else {
        return Err(format!(
            "shard {name:?}: the URL names no database; end it with /<database>, e.g. …/sluice"
        ));
    };
    let user = opts.user().unwrap_or_default().to_string();
    let server = mysql_async::OptsBuilder::from_opts(opts).db_name(None::<String>);
    let mut conn = mysql_async::Conn::new(server).await.map_err(|error| match &error {
        mysql_async::Error::Server(server) if server.code == 1045 => format!(
            "shard {name:?} at {where_}: authentication refused for user {user:?} (the server said: {}); fix the user or password in the URL (or its SLUICE_SHARD*_URL variable)",
            server.message
        ),
        mysql_async::Error::Server(server) => format!(
            "shard {name:?} at {where_}: the server refused the connection: {} (error {})",
            server.message, server.code
        ),
        mysql_async::Error::Io(io) => format!(
            "shard {name:?} at {where_} is unreachable: {io}; check that its server is up and the host and port in the URL"
        ),
        other => format!("shard {name:?} at {where_}: cannot connect: {other}"),
    })?;
    let result = mysql_findings(&mut conn, name, &where_, &database).await;
    let _ = conn.disconnect().await;
    result.map_err(|error| format!("shard {name:?} at {where_}: {error}"))
}

/// The checks of [`mysql_shard`] once connected.
async fn mysql_findings(
    conn: &mut mysql_async::Conn,
    name: &str,
    where_: &str,
    database: &str,
) -> Result<Vec<Finding>, mysql_async::Error> {
    let mut findings = Vec::new();
    let current: String = conn
        .query_first("SELECT CURRENT_USER()")
        .await?
        .unwrap_or_default();
    let (user, host) = current.rsplit_once('@').unwrap_or((current.as_str(), "%"));
    let grantee = format!("'{user}'@'{host}'");
    let privileges: BTreeSet<String> = conn
        .exec::<String, _, _>(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ? \
             UNION SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES \
             WHERE GRANTEE = ? AND ? LIKE TABLE_SCHEMA",
            (&grantee, &grantee, database),
        )
        .await?
        .into_iter()
        .collect();
    let missing: Vec<&str> = SHARD_PRIVILEGES
        .iter()
        .copied()
        .filter(|p| !privileges.contains(*p))
        .collect();
    if !missing.is_empty() {
        findings.push((Some(Severity::Error), format!(
            "user {grantee} lacks {} on database `{database}` (privileges granted through roles are not seen); `sluice run` needs {}: GRANT {} ON `{database}`.* TO {grantee}",
            missing.join(", "),
            SHARD_PRIVILEGES.join(", "),
            SHARD_PRIVILEGES.join(", ")
        )));
    }
    let exists: Option<String> = conn
        .exec_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (database,),
        )
        .await?;
    let expected = sluice_sinks::migrations::latest_version();
    if exists.is_none() {
        let severity = if missing.contains(&"CREATE") {
            Severity::Error
        } else {
            Severity::Warning
        };
        findings.push((Some(severity), format!(
            "shard {name:?}: database `{database}` does not exist at {where_}; `sluice run` creates it (with the CREATE privilege), or create it: CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
        )));
        return Ok(findings);
    }
    let version: Result<Option<Option<i64>>, mysql_async::Error> = conn
        .query_first(format!(
            "SELECT MAX(version) FROM `{database}`.sluice_schema"
        ))
        .await;
    match version {
        Ok(version) => {
            let version = version.flatten().unwrap_or(0).max(0) as u32;
            if version == expected {
                findings.push((
                    None,
                    format!("shard {name:?} at {where_}: schema at version {version}, as this build expects; user {grantee}"),
                ));
            } else if version < expected {
                findings.push((Some(Severity::Warning), format!(
                    "shard {name:?}: schema at version {version}, this build expects {expected}; `sluice run` migrates it when it starts"
                )));
            } else {
                findings.push((Some(Severity::Error), format!(
                    "shard {name:?}: schema at version {version}, newer than the {expected} this build knows (a newer Sluice migrated it); run that newer Sluice, or restore a matching backup"
                )));
            }
        }
        Err(mysql_async::Error::Server(error)) if error.code == 1146 => {
            findings.push((Some(Severity::Warning), format!(
                "shard {name:?}: database `{database}` has no Sluice schema yet; `sluice run` creates it (version {expected})"
            )));
        }
        Err(mysql_async::Error::Server(error)) if error.code == 1142 || error.code == 1044 => {
            findings.push((Some(Severity::Error), format!(
                "shard {name:?}: user {grantee} may not read `{database}` ({}); GRANT {} ON `{database}`.* TO {grantee}",
                error.message,
                SHARD_PRIVILEGES.join(", ")
            )));
        }
        Err(error) => return Err(error),
    }
    Ok(findings)
}

/// Checks a SQLite shard read-only: the file (or, when missing, its folder) writable, and
/// the schema version.
fn sqlite_shard(name: &str, path: &Path, component: &str, setting: &str) -> CheckReport {
    let mut report = CheckReport::default();
    let expected = sluice_sinks::migrations::latest_version();
    if !path.exists() {
        match writable_folder(&folder_of(path)) {
            Ok(_) => report.note(format!(
                "shard {name:?}: {} does not exist yet; `sluice run` creates it",
                path.display()
            )),
            Err(message) => report.error(component, setting, message),
        }
        return report;
    }
    if let Err(error) = std::fs::OpenOptions::new().append(true).open(path) {
        report.error(component, setting, format!(
            "shard {name:?}: cannot write {}: {error}; give the user running sluice write access to it",
            path.display()
        ));
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let version = rusqlite::Connection::open_with_flags(path, flags).and_then(|conn| {
        conn.query_row("SELECT MAX(version) FROM sluice_schema", [], |row| {
            row.get::<_, Option<i64>>(0)
        })
    });
    match version {
        Ok(version) => {
            let version = version.unwrap_or(0).max(0) as u32;
            if version == expected {
                report.note(format!(
                    "shard {name:?}: {} at schema version {version}, as this build expects",
                    path.display()
                ));
            } else if version < expected {
                report.warning(component, setting, format!(
                    "shard {name:?}: schema at version {version}, this build expects {expected}; `sluice run` migrates it when it starts"
                ));
            } else {
                report.error(component, setting, format!(
                    "shard {name:?}: schema at version {version}, newer than the {expected} this build knows (a newer Sluice migrated it); run that newer Sluice, or restore a matching backup"
                ));
            }
        }
        Err(rusqlite::Error::SqliteFailure(_, Some(message))) if message.contains("no such table") => {
            report.warning(component, setting, format!(
                "shard {name:?}: {} has no Sluice schema yet; `sluice run` creates it (version {expected})",
                path.display()
            ));
        }
        Err(error) => report.error(component, setting, format!(
            "shard {name:?}: cannot read {} as a SQLite database: {error}; point {setting} at a Sluice shard file",
            path.display()
        )),
    }
    report
}

/// The users file, the token and capability key files, and the production-mode checks.
/// Blocking (file reads).
fn auth(topology: &Topology) -> CheckReport {
    let mut report = CheckReport::default();
    let mode = topology.ingress.mode;
    let base_dir = &topology.base_dir;
    let mut config = topology.ingress.clone();

    // Token keys: the secret (published? generated?), then the key files.
    let mut keys_settled = true;
    match sluice_ingress::generated_secret::settle_read_only(&mut config.auth, mode, base_dir) {
        Ok(Some(path)) => report.note(format!("token secret: generated, in {}", path.display())),
        Ok(None) => {}
        Err(SecretError::NotGenerated { path }) => {
            keys_settled = false;
            report.note(format!(
                "token secret: not generated yet; `sluice run` generates it into {}",
                path.display()
            ));
        }
        Err(error) => {
            keys_settled = false;
            report.error("keys", "ingress.auth.jwt_secret", error.to_string());
        }
    }
    if keys_settled {
        match sluice_ingress::auth::TokenAuthority::from_config(&config.auth, base_dir) {
            Ok(_) => {
                let keys = config.auth.keys.len() + usize::from(config.auth.jwt_secret.is_some());
                report.count("token_keys", keys as u64);
                report.note(format!("token keys: {keys} loaded"));
            }
            Err(error) => report.error("keys", "ingress.auth.keys", error.to_string()),
        }
    }
    if let Some(file) = &config.auth.biscuit_public_key_file {
        let file = sluice_core::topology::resolve_relative(base_dir, file);
        match sluice_ingress::capability::CapabilityAuthority::from_public_key_file(&file) {
            Ok(authority) => {
                report.count("capability_keys", 1);
                report.note(format!("biscuit public key(s): {} loaded", file.display()));
                if let Some(revoked) = &config.auth.biscuit_revocation_file {
                    let revoked = sluice_core::topology::resolve_relative(base_dir, revoked);
                    match authority.with_revocation_file(&revoked) {
                        Ok(authority) => report.note(format!(
                            "biscuit revocation list: {} revoked id(s) in {}",
                            authority.revoked_count(),
                            revoked.display()
                        )),
                        Err(error) => report.error(
                            "keys",
                            "ingress.auth.biscuit_revocation_file",
                            format!("{}: {error}", revoked.display()),
                        ),
                    }
                }
            }
            Err(error) => report.error(
                "keys",
                "ingress.auth.biscuit_public_key_file",
                format!("{}: {error}", file.display()),
            ),
        }
    }

    // Users.
    let users_file = sluice_core::topology::resolve_relative(base_dir, &config.auth.users_file);
    let users = match sluice_ingress::Users::load(&users_file) {
        Ok(users) => {
            report.count("users", users.len() as u64);
            report.note(format!(
                "users: {} in {}",
                users.len(),
                users_file.display()
            ));
            if users.is_empty() {
                report.warning(
                    "users",
                    "ingress.auth.users_file",
                    format!(
                    "{} has no users: nobody can log in; add one with `sluice users add <name>`",
                    users_file.display()
                ),
                );
            }
            Some(users)
        }
        Err(error) => {
            report.error("users", "ingress.auth.users_file", error.to_string());
            None
        }
    };

    // Production-mode checks: what production refuses, as warnings in development.
    let weaknesses = match &users {
        Some(users) => sluice_ingress::security::weaknesses(&config, users),
        None => sluice_ingress::security::setting_weaknesses(&config),
    };
    let severity = match mode {
        Mode::Production => Severity::Error,
        Mode::Development => Severity::Warning,
    };
    for weakness in weaknesses {
        let setting = weakness_setting(&weakness);
        let message = match mode {
            Mode::Production => weakness,
            Mode::Development => {
                format!("{weakness} (production mode refuses this; development mode allows it)")
            }
        };
        report.push(severity, "security", setting, message);
    }
    report
}

/// The setting a production-mode weakness names.
fn weakness_setting(weakness: &str) -> String {
    if weakness.starts_with("user ") {
        "ingress.auth.users_file".into()
    } else if weakness.starts_with("ingress.auth.keys") {
        "ingress.auth.keys".into()
    } else if weakness.starts_with("ingress.auth.jwt_secret") {
        "ingress.auth.jwt_secret".into()
    } else {
        "ingress".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_of_never_shows_the_password() {
        assert_eq!(
            server_of("mysql://u:p@ss@db0:3306/sluice?ssl=true"),
            "db0:3306/sluice"
        );
        assert_eq!(server_of("mysql://db0/sluice"), "db0/sluice");
    }

    #[tokio::test]
    async fn a_check_that_panics_is_an_error_not_an_empty_report() {
        let report = blocking_check("shard:s0", "shards[0].url", "the SQLite shard", || {
            panic!("the check broke")
        })
        .await;
        assert!(!report.is_ok(), "{report:?}");
        assert_eq!(report.problems.len(), 1);
        let problem = &report.problems[0];
        assert_eq!(
            (problem.component.as_str(), problem.setting.as_str()),
            ("shard:s0", "shards[0].url")
        );
        assert!(
            problem
                .message
                .contains("the check of the SQLite shard failed")
                && problem.message.contains("panicked"),
            "{}",
            problem.message
        );
        // A check that works passes its report through.
        let report = blocking_check("log", "log.embedded.path", "the embedded log", || {
            let mut report = CheckReport::default();
            report.note("fine");
            report
        })
        .await;
        assert!(report.is_ok() && report.notes == ["fine"]);
    }

    #[test]
    fn the_report_lists_every_problem_and_fails_on_errors_only() {
        let mut report = CheckReport::new(Path::new("t.toml"));
        report.warning("kafka", "topics.\"a\".partitions", "more partitions");
        assert!(report.is_ok());
        report.error("users", "ingress.auth.users_file", "bad line 3");
        assert!(!report.is_ok());
        let text = report.text();
        assert!(text.contains("warning: more partitions [kafka: topics.\"a\".partitions]"));
        assert!(text.contains("error: bad line 3 [users: ingress.auth.users_file]"));
        assert!(text.contains("1 error(s), 1 warning(s)"));
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["topology"], "t.toml");
        assert_eq!(json["problems"][1]["severity"], "error");
        assert_eq!(json["problems"][1]["component"], "users");
    }
}
