//! Test harness: unique topologies on the real infrastructure started by `scripts/infra up`
//! (`make test` does that), an in-process pipeline, and shard queries.
#![allow(dead_code, missing_docs)]

mod tmpfs;

// Not every user of this module (the benches) mounts anything.
#[allow(unused_imports)]
pub use tmpfs::Mount;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use sluice::pipeline::{self, Listeners, Parts};
use sluice::topology::{self, LogBackend, Topology};
use sluice_core::log::Log;
use sluice_core::shutdown::Shutdown;
use sluice_ingress::config::Quota;
use sluice_log_kafka::KafkaLogConfig;
use sluice_processors::KindConfig;
use tokio::net::TcpListener;

pub const SHIPPED: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/topology.toml"));
pub const PASSWORD: &str = "correct horse battery staple";

/// Addresses of the test infrastructure.
pub struct Infra {
    pub brokers: String,
    pub mysql_servers: Vec<String>,
}

pub fn infra() -> Infra {
    let missing = "the integration tests need real Kafka and MariaDB: run `make test` (or `bash scripts/infra up && eval \"$(bash scripts/infra env)\"`)";
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS").expect(missing);
    let servers = std::env::var("SLUICE_MYSQL_SHARDS").expect(missing);
    let mysql_servers: Vec<String> = servers
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .collect();
    assert_eq!(
        mysql_servers.len(),
        4,
        "SLUICE_MYSQL_SHARDS must list four servers"
    );
    Infra {
        brokers,
        mysql_servers,
    }
}

/// A name unique to this test run, usable as topic prefix and database name.
pub fn unique(name: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("t_{name}_{}", &id[id.len() - 10..])
}

/// A topology private to one test: its own topics, consumer groups, databases and users.
/// Which backends a test topology uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Real Kafka and MariaDB from `scripts/infra`.
    Services,
    /// The embedded log and SQLite shards in the test's own folder.
    Embedded,
}

pub struct TestTopology {
    pub backend: Backend,
    pub id: String,
    pub dir: tempfile::TempDir,
    /// Where the topology is written, for `sluice` processes the test starts.
    pub path: PathBuf,
    topology: Topology,
}

impl TestTopology {
    /// The test's topology.
    pub fn topology(&self) -> Topology {
        self.topology.clone()
    }

    /// The database URL of shard `index`.
    pub fn shard_url(&self, index: usize) -> String {
        self.topology.shards[index].url.clone()
    }

    /// Changes the topology and writes it again (a process started afterwards, or a SIGHUP,
    /// reads the change). The result must be valid.
    pub fn edit(&mut self, change: impl FnOnce(&mut Topology)) {
        change(&mut self.topology);
        self.save();
    }

    /// Writes a copy of the topology changed by `change` beside it, as `<name>.toml`, for a
    /// process that needs its own settings (say, its own `[ops] listen`), and returns its path.
    pub fn variant(&self, name: &str, change: impl FnOnce(&mut Topology)) -> PathBuf {
        let mut topology = self.topology.clone();
        change(&mut topology);
        let topology = sluice::topology::check(topology)
            .unwrap_or_else(|error| panic!("test topology must be valid: {error}"));
        let path = self.path.with_file_name(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&topology).unwrap()).unwrap();
        path
    }

    fn save(&self) {
        let topology = sluice::topology::check(self.topology.clone())
            .unwrap_or_else(|error| panic!("test topology must be valid: {error}"));
        let text = toml::to_string(&topology).expect("a topology serializes");
        std::fs::write(&self.path, text).unwrap();
    }
}

impl Drop for TestTopology {
    /// Removes what the test created on the shared servers (its shard databases and its
    /// topics), so repeated `make test` runs do not fill the disk. A failed test keeps them
    /// for inspection.
    fn drop(&mut self) {
        if self.backend != Backend::Services || std::thread::panicking() {
            return;
        }
        let topology = self.topology.clone();
        // Drop may run inside a test's runtime, which cannot be blocked on: use a thread.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let removal = remove_from_services(&topology);
                if tokio::time::timeout(Duration::from_secs(20), removal)
                    .await
                    .is_err()
                {
                    eprintln!("test clean-up timed out; its databases and topics stay");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Drops a test topology's shard databases and deletes its topics.
async fn remove_from_services(topology: &Topology) {
    for shard in &topology.shards {
        let Ok(opts) = mysql_async::Opts::from_url(&shard.url) else {
            continue;
        };
        let Some(database) = opts.db_name().map(str::to_string) else {
            continue;
        };
        let server = mysql_async::OptsBuilder::from_opts(opts).db_name(None::<String>);
        if let Ok(mut conn) = mysql_async::Conn::new(server).await {
            let _ = conn
                .query_drop(format!("DROP DATABASE IF EXISTS `{database}`"))
                .await;
            let _ = conn.disconnect().await;
        }
    }
    let brokers = infra().brokers;
    let admin: Result<AdminClient<DefaultClientContext>, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create();
    if let Ok(admin) = admin {
        let topics: Vec<&str> = topology.topics.keys().map(String::as_str).collect();
        let _ = admin.delete_topics(&topics, &AdminOptions::new()).await;
    }
}

/// Builds a private copy of the shipped topology; `tweak` may change it further.
pub fn test_topology(
    name: &str,
    users: &[&str],
    tweak: impl FnOnce(&mut Topology),
) -> TestTopology {
    test_topology_on(Backend::Services, name, users, tweak)
}

/// The shipped topology, with the defaults it takes when no `SLUICE_*` variable is set.
pub fn shipped() -> Topology {
    let text = SHIPPED
        .replace("${SLUICE_LOG_BACKEND:-embedded}", "embedded")
        .replace("${SLUICE_JWT_SECRET:-", "${SLUICE_TEST_UNSET_JWT_SECRET:-");
    topology::parse(
        &text,
        std::path::Path::new("topology.toml"),
        PathBuf::from("."),
    )
    .expect("the shipped topology is valid")
}

fn n(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap()
}

/// Builds a private copy of the shipped topology on `backend`: its own topics, consumer
/// groups, shard databases, users file and ports; `tweak` may change it further.
pub fn test_topology_on(
    backend: Backend,
    name: &str,
    users: &[&str],
    tweak: impl FnOnce(&mut Topology),
) -> TestTopology {
    let id = unique(name);
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.toml");
    for user in users {
        sluice_ingress::users::upsert_user(
            &users_file,
            user,
            PASSWORD,
            sluice_ingress::users::PasswordPolicy::RefuseWeak,
        )
        .unwrap();
    }
    if users.is_empty() {
        std::fs::write(&users_file, "users = []\n").unwrap();
    }
    let mut t = shipped();
    let private = |topic: &str| format!("{id}.{topic}");
    t.topics = t
        .topics
        .into_iter()
        .map(|(name, config)| (private(&name), config))
        .collect();
    t.ingress.orders_topic = private(&t.ingress.orders_topic);
    t.ingress.logins_topic = private(&t.ingress.logins_topic);
    for stage in &mut t.stages {
        stage.input = private(&stage.input);
        stage.dead_letter = private(&stage.dead_letter);
        match &mut stage.kind {
            KindConfig::Validate(config) => config.output = private(&config.output),
            KindConfig::Enrich(config) => config.output = private(&config.output),
            KindConfig::Route(_) => {}
        }
    }
    for shard in &mut t.shards {
        shard.topic = private(&shard.topic);
    }
    t.sink.rejections_topic = t.sink.rejections_topic.as_deref().map(private);
    t.log.consumer_group_prefix = format!("sluice.{id}");
    t.log.embedded.path = dir.path().join("log.redb");
    t.ingress.auth.users_file = users_file;
    t.ingress.login_listen = "127.0.0.1:0".parse().unwrap();
    t.ingress.order_listen = "127.0.0.1:0".parse().unwrap();
    let limits = &mut t.ingress.rate_limits;
    limits.orders_per_principal = Quota::per_second(n(100_000), n(100_000));
    limits.orders_per_address = Quota::per_second(n(100_000), n(100_000));
    limits.logins_per_address = Quota::per_second(n(1_000), n(1_000));
    match backend {
        Backend::Services => {
            let infra = infra();
            t.log.backend = LogBackend::Kafka;
            t.log.kafka = Some(KafkaLogConfig::new(infra.brokers.clone()));
            for (index, shard) in t.shards.iter_mut().enumerate() {
                shard.url = format!("{}/{id}_s{index}", infra.mysql_servers[index]);
            }
        }
        Backend::Embedded => {
            t.log.backend = LogBackend::Embedded;
            for (index, shard) in t.shards.iter_mut().enumerate() {
                let file = dir.path().join(format!("shard{index}.db"));
                shard.url = format!("sqlite://{}", file.display());
            }
        }
    }
    tweak(&mut t);
    let path = dir.path().join("topology.toml");
    t.base_dir = dir.path().to_path_buf();
    t.source = path.clone();
    let test = TestTopology {
        id,
        dir,
        path,
        backend,
        topology: t,
    };
    test.save();
    test
}

/// A pipeline running in this process.
pub struct RunningPipeline {
    pub base_login: String,
    pub base_order: String,
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<Result<(), pipeline::PipelineError>>,
    pub log: Arc<dyn Log>,
}

impl RunningPipeline {
    pub async fn start(test: &TestTopology, parts: Parts) -> Self {
        let topology = test.topology();
        let login = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let order = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_login = format!("http://{}", login.local_addr().unwrap());
        let base_order = format!("http://{}", order.local_addr().unwrap());
        let log = pipeline::open_log(&topology).unwrap();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(pipeline::run(
            topology,
            log.clone(),
            parts,
            Some(Listeners {
                login,
                order: Some(order),
            }),
            shutdown.clone(),
        ));
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(format!("{base_order}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                !handle.is_finished(),
                "the pipeline stopped during start-up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        RunningPipeline {
            base_login,
            base_order,
            shutdown,
            handle,
            log,
        }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("pipeline did not drain in 30 s");
        result.unwrap().expect("pipeline stopped with an error");
    }
}

/// Logs in over HTTP and returns the bearer token.
pub async fn login(client: &reqwest::Client, base: &str, user: &str) -> String {
    let response = client
        .post(format!("{base}/login"))
        .body(format!(
            r#"{{"username":"{user}","password":"{PASSWORD}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "login of {user} failed");
    let body: serde_json::Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

/// Users whose buckets spread over all four shards: `per_shard` each.
pub fn users_covering_shards(per_shard: usize) -> Vec<String> {
    let topology = shipped();
    let map = topology.shard_map().unwrap();
    let mut chosen: HashMap<usize, Vec<String>> = HashMap::new();
    let mut n = 0;
    while chosen.values().map(Vec::len).sum::<usize>() < per_shard * topology.shards.len() {
        let user = format!("user{n}");
        let shard = map.shard_for_user(&user);
        let list = chosen.entry(shard).or_default();
        if list.len() < per_shard {
            list.push(user);
        }
        n += 1;
    }
    let mut users: Vec<String> = chosen.into_values().flatten().collect();
    users.sort();
    users
}

/// The Prometheus text of the process serving `base` (`GET {base}/metrics`).
pub async fn scrape_metrics(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Total records in `topic` (sum of high watermarks; topics start at offset 0).
/// Every record of `topic` from the beginning, read under consumer group `group` (a poll
/// that brings nothing for 300 ms ends it).
pub async fn read_topic(log: &dyn Log, topic: &str, group: &str) -> Vec<sluice_core::log::Record> {
    use sluice_core::log::{assign_all, StartFrom};
    let mut consumer = log.consumer(group).await.unwrap();
    consumer
        .assign(
            assign_all(log, &[topic.to_string()], StartFrom::Beginning)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    let mut records = Vec::new();
    loop {
        let batch = consumer
            .poll(1000, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

pub async fn topic_records(log: &dyn Log, topic: &str) -> i64 {
    let mut total = 0;
    for partition in 0..log.partition_count(topic).await.unwrap() as i32 {
        total += log.watermarks(topic, partition).await.unwrap().1;
    }
    total
}

/// A connection to MariaDB shard `index` of `test` (services backend only).
pub async fn shard_conn(test: &TestTopology, index: usize) -> mysql_async::Conn {
    assert_eq!(
        test.backend,
        Backend::Services,
        "shard_conn is for MariaDB shards"
    );
    mysql_async::Conn::new(mysql_async::Opts::from_url(&test.shard_url(index)).unwrap())
        .await
        .unwrap()
}

fn sqlite_path(test: &TestTopology, index: usize) -> PathBuf {
    PathBuf::from(test.shard_url(index).strip_prefix("sqlite://").unwrap())
}

/// Runs one query returning strings on shard `index`, whatever its backend.
/// Missing tables or databases read as no rows.
pub async fn query_strings(test: &TestTopology, index: usize, sql: &str) -> Vec<String> {
    match test.backend {
        Backend::Services => {
            let Ok(mut conn) = mysql_async::Conn::new(
                mysql_async::Opts::from_url(&test.shard_url(index)).unwrap(),
            )
            .await
            else {
                return Vec::new();
            };
            let rows: Vec<String> = conn.query(sql).await.unwrap_or_default();
            let _ = conn.disconnect().await;
            rows
        }
        Backend::Embedded => {
            let path = sqlite_path(test, index);
            let sql = sql.to_string();
            tokio::task::spawn_blocking(move || {
                let Ok(conn) = rusqlite::Connection::open(&path) else {
                    return Vec::new();
                };
                let Ok(mut statement) = conn.prepare(&sql) else {
                    return Vec::new();
                };
                statement
                    .query_map([], |row| row.get::<_, String>(0))
                    .map(|rows| rows.filter_map(Result::ok).collect())
                    .unwrap_or_default()
            })
            .await
            .unwrap()
        }
    }
}

/// A product name of 300 characters: longer than a shard stores (`product VARCHAR(255)` on
/// MariaDB; see [`shard_refuses_long_products`] for SQLite). Tests that want an order the shard
/// refuses for good put it in their catalog, so validate and enrich let it through.
pub fn too_long_product() -> String {
    "x".repeat(300)
}

/// Makes the shard of `user` refuse orders whose product is longer than 255 characters, and
/// returns the reason the shard gives. MariaDB's column does that already (strict mode);
/// SQLite limits no text, so its shard gets the same limit as a trigger that aborts the insert,
/// which SQLite reports as a broken constraint. Call it before the pipeline starts.
pub async fn shard_refuses_long_products(test: &TestTopology, user: &str) -> &'static str {
    match test.backend {
        Backend::Services => "Data too long for column 'product'",
        Backend::Embedded => {
            let topology = test.topology();
            let index = topology.shard_map().unwrap().shard_for_user(user);
            let shard = &topology.shards[index];
            let writer =
                sluice_sinks::open_shard(&shard.name, &shard.url, &topology.base_dir).unwrap();
            writer.migrate().await.unwrap();
            writer.close().await;
            execute(
                test,
                index,
                "CREATE TRIGGER product_fits BEFORE INSERT ON orders \
                 WHEN length(NEW.product) > 255 \
                 BEGIN SELECT RAISE(ABORT, 'product longer than 255 characters'); END;",
            )
            .await;
            "product longer than 255 characters"
        }
    }
}

/// Runs a statement on shard `index`, whatever its backend.
pub async fn execute(test: &TestTopology, index: usize, sql: &str) {
    match test.backend {
        Backend::Services => {
            let mut conn = shard_conn(test, index).await;
            conn.query_drop(sql).await.unwrap();
            conn.disconnect().await.unwrap();
        }
        Backend::Embedded => {
            let path = sqlite_path(test, index);
            let sql = sql.to_string();
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(&sql).unwrap();
            })
            .await
            .unwrap()
        }
    }
}

/// `SELECT COUNT(*) FROM table` on shard `index` (0 while the table does not exist yet).
pub async fn count_rows(test: &TestTopology, index: usize, table: &str) -> i64 {
    let sql = match test.backend {
        Backend::Services => format!("SELECT CAST(COUNT(*) AS CHAR) FROM {table}"),
        Backend::Embedded => format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"),
    };
    query_strings(test, index, &sql)
        .await
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The positions `consumer` has stored in shard `index`: `(topic, partition)` to the next
/// offset to read (empty while the shard has no positions table yet).
pub async fn stored_positions(
    test: &TestTopology,
    index: usize,
    consumer: &str,
) -> HashMap<(String, i32), i64> {
    let line = match test.backend {
        Backend::Services => "CONCAT_WS('|', topic, partition_id, next_offset)",
        Backend::Embedded => "topic || '|' || partition_id || '|' || next_offset",
    };
    let sql = format!("SELECT {line} FROM sluice_offsets WHERE consumer = '{consumer}'");
    query_strings(test, index, &sql)
        .await
        .iter()
        .map(|line| {
            let mut fields = line.rsplitn(3, '|');
            let offset = fields.next().unwrap().parse().unwrap();
            let partition = fields.next().unwrap().parse().unwrap();
            ((fields.next().unwrap().to_string(), partition), offset)
        })
        .collect()
}

/// Whether every shard's live sink has stored, as its positions, the end of every partition
/// of its shard topic: everything routed so far is in the shards.
pub async fn sinks_caught_up(test: &TestTopology, log: &dyn Log) -> bool {
    for (index, shard) in test.topology().shards.iter().enumerate() {
        let positions = stored_positions(test, index, "sink").await;
        for partition in 0..log.partition_count(&shard.topic).await.unwrap() as i32 {
            let end = log.watermarks(&shard.topic, partition).await.unwrap().1;
            let stored = positions
                .get(&(shard.topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            if stored < end {
                return false;
            }
        }
    }
    true
}

/// Every stored order of shard `index` as one comparable line (all columns but `stored_at_ms`),
/// sorted; the order id is lower-case hex.
pub async fn order_lines(test: &TestTopology, index: usize) -> Vec<String> {
    let columns = "LOWER(HEX(order_id)), user_id, product, quantity, unit_price_minor, line_total_minor, currency, \
                   received_at_ms, enriched_at_ms, bucket, shard";
    let sql = match test.backend {
        Backend::Services => format!("SELECT CONCAT_WS('|', {columns}) FROM orders"),
        Backend::Embedded => format!(
            "SELECT {} FROM orders",
            columns.split(", ").collect::<Vec<_>>().join(" || '|' || ")
        ),
    };
    let mut lines = query_strings(test, index, &sql).await;
    lines.sort();
    lines
}

/// Polls `condition` every 200 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Unpadded base64url of `bytes`, so tests can forge tokens by hand.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `sluice run --topology <topology>` as a user would, stderr into `log`. The process
/// is killed when the returned guard is dropped, so a test that fails half-way leaves none
/// behind; [`terminate`] stops it cleanly.
pub fn start_sluice(
    topology: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> SluiceProcess {
    start_sluice_with(topology, log, env, &[])
}

/// Starts `sluice run --topology <topology> <args>` (e.g. `--only processors`), like
/// [`start_sluice`].
pub fn start_sluice_with(
    topology: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> SluiceProcess {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--topology"])
        .arg(topology)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start sluice");
    STDERR_LOGS
        .lock()
        .unwrap()
        .insert(child.id(), log.to_path_buf());
    SluiceProcess(Some(child))
}

/// Where each process started by [`start_sluice_with`] writes its stderr, by pid, so that
/// [`wait_ready`] can show why a process exited during start-up.
static STDERR_LOGS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<u32, std::path::PathBuf>>,
> = std::sync::LazyLock::new(Default::default);

/// The last lines `child` wrote to stderr, when [`start_sluice_with`] started it.
fn stderr_tail(child: &std::process::Child) -> String {
    let Some(path) = STDERR_LOGS.lock().unwrap().get(&child.id()).cloned() else {
        return "(stderr not captured)".into();
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Sends orders with 16 in flight until `stop` is set, spread over the users of `tokens`
/// (user → JWT); records the ids that got a 2xx.
pub fn spawn_order_load(
    client: reqwest::Client,
    base: String,
    tokens: std::sync::Arc<std::collections::HashMap<String, String>>,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let users: Vec<String> = tokens.keys().cloned().collect();
        let mut workers = Vec::new();
        for w in 0..16 {
            let (client, base, tokens, accepted, stop, users) = (
                client.clone(),
                base.clone(),
                tokens.clone(),
                accepted.clone(),
                stop.clone(),
                users.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut n = w;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let user = &users[n % users.len()];
                    n += 16;
                    let sent = client
                        .post(format!("{base}/order"))
                        .bearer_auth(&tokens[user])
                        .json(&serde_json::json!({ "userId": user, "product": "gadget", "quantity": 2 }))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            let body: serde_json::Value = response.json().await.unwrap();
                            accepted.lock().unwrap().push(body["orderId"].as_str().unwrap().to_string());
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        for worker in workers {
            let _ = worker.await;
        }
    })
}

/// Waits up to `limit` until every order id of `accepted` (as answered, with dashes) is stored
/// in the shards, then asserts that none is missing and no order is stored twice. Returns
/// every stored order id with its count (orders whose 2xx never arrived may be stored too).
pub async fn assert_stored_exactly_once<'a>(
    test: &TestTopology,
    accepted: impl IntoIterator<Item = &'a String>,
    limit: Duration,
) -> std::collections::HashMap<String, usize> {
    let accepted: Vec<String> = accepted.into_iter().map(|id| id.replace('-', "")).collect();
    let deadline = tokio::time::Instant::now() + limit;
    let stored = loop {
        let stored = stored_order_ids(test).await;
        if accepted.iter().all(|id| stored.contains_key(id))
            || tokio::time::Instant::now() > deadline
        {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let missing = accepted
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged orders were not stored within {limit:?}",
        accepted.len()
    );
    let twice = stored.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "{twice} orders are stored more than once");
    stored
}

/// Every stored order id (hex, no dashes) across the four shards, with how often it occurs.
pub async fn stored_order_ids(test: &TestTopology) -> std::collections::HashMap<String, usize> {
    let mut stored = std::collections::HashMap::new();
    for shard in 0..4 {
        for line in order_lines(test, shard).await {
            let id = line.split('|').next().unwrap().to_string();
            *stored.entry(id).or_default() += 1;
        }
    }
    stored
}

/// A `sluice` process a test started: killed and reaped when dropped unless it was handed
/// over (`Child::from`) or stopped with [`terminate`]. Derefs to its [`std::process::Child`].
pub struct SluiceProcess(Option<std::process::Child>);

impl std::ops::Deref for SluiceProcess {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the process was handed over")
    }
}

impl std::ops::DerefMut for SluiceProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("the process was handed over")
    }
}

impl From<SluiceProcess> for std::process::Child {
    fn from(mut process: SluiceProcess) -> Self {
        process.0.take().expect("the process was handed over")
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the process serving `base` is ready; fails if it exits first.
pub async fn wait_ready(base: &str, child: &mut std::process::Child) {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sluice exited during start-up ({status}); its stderr ends with:\n{}",
                stderr_tail(child)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sluice did not become ready");
}

/// Sends SIGTERM and waits for the exit status.
pub fn terminate(child: impl Into<std::process::Child>) -> std::process::ExitStatus {
    let mut child = child.into();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

/// The status, `error.code` and `error.message` of an error response (error bodies are JSON).
pub async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("error bodies are JSON");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"))
        .to_string();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message in {body}"))
        .to_string();
    (status, code, message)
}

/// Fixed listener ports for a topology run by the `sluice` binary (whose own listeners cannot
/// be handed over like an in-process pipeline's).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub login: u16,
    pub order: u16,
}

impl Ports {
    /// Two free ports.
    pub fn free() -> Self {
        Ports {
            login: free_port(),
            order: free_port(),
        }
    }

    /// Makes `topology`'s ingress listen on these ports.
    pub fn apply(&self, topology: &mut Topology) {
        topology.ingress.login_listen = ([127, 0, 0, 1], self.login).into();
        topology.ingress.order_listen = ([127, 0, 0, 1], self.order).into();
    }

    /// Base URL of the login listener.
    pub fn login_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.login)
    }

    /// Base URL of the order listener.
    pub fn order_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.order)
    }
}

/// The path of a Prometheus tool (`prometheus`, `promtool`): on `PATH`, else `/usr/bin`.
/// Missing, it fails the test when `CI` is set (a CI machine must run every check) and
/// otherwise returns `None` after saying how to install it, so the caller can skip.
pub fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    let found = on_path.or_else(|| {
        let fallback = PathBuf::from("/usr/bin").join(name);
        fallback.is_file().then_some(fallback)
    });
    if found.is_none() {
        let how = format!(
            "{name} is missing: install Debian's prometheus package (`bash scripts/infra up` does, or `apt-get install prometheus`)"
        );
        assert!(std::env::var_os("CI").is_none(), "{how}");
        eprintln!("skipped: {how}");
    }
    found
}

/// `compose/prometheus` in this checkout: the shipped Prometheus configuration and alert rules.
pub fn compose_prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compose/prometheus")
}
