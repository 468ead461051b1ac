//! Fault injection on real infrastructure: the `sluice` binary under load while the broker, a
//! shard or Sluice itself fails, then a check that every order answered 2xx is stored exactly
//! once.
//!
//! Faults on Kafka and MariaDB run against a private `scripts/infra` instance (its own ports
//! and state directory), never the shared one. Each fault happens at a random moment drawn
//! from a seed printed on its line; `SLUICE_CHAOS_SEED=<seed>` replays it and
//! `SLUICE_CHAOS_ONLY=broker-kill,shard-pause` picks faults (`SLUICE_CHAOS_RUST_LOG` sets the
//! processes' `RUST_LOG`, `warn` by default). The short run of every fault is
//! part of `cargo test`; `make chaos` runs the long one (more load, longer faults, more rounds).
//!
//! One line per fault: orders acknowledged (2xx), stored (under the acknowledged id), lost,
//! duplicated (extra rows for one request), stored although the last answer was a 503, the
//! time from the end of the fault until `/readyz` answers 200 and until every order
//! acknowledged before the end of the fault is stored, and the peak RSS of the Sluice process
//! (serving the ingress) during the fault, which must stay under `Settings::rss_bound_mib`,
//! and over the whole run.
//! The end of a fault is when the failed component is back (broker or shard answering,
//! process thawed, Sluice restarted).

mod diagnose;
mod embedded;
mod infra;
mod load;
mod lookup;
mod probe;
mod services;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::*;
use infra::{InfraAddress, PrivateInfra};
use load::{Load, LoadConfig, Shards, StoredRow};
use lookup::LookupProbe;
use probe::Probes;

/// The faults, in the order a suite runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The broker killed with `kill -9`, then started again on the same data.
    BrokerKill,
    /// The broker frozen with SIGSTOP, then thawed.
    BrokerPause,
    /// One shard frozen with SIGSTOP, then thawed.
    ShardPause,
    /// One shard killed with `kill -9`, then started again.
    ShardKill,
    /// One shard stopped (connections refused) for a while, then started again.
    ShardDown,
    /// The whole Sluice process killed with `kill -9` and started again.
    SluiceKill,
    /// SIGTERM under load: exit 0, lose nothing; started again.
    SluiceTerm,
    /// `--only ingress|processors|sinks` as three processes; each killed with `kill -9` in turn.
    SplitKill,
    /// The embedded log: Sluice killed with `kill -9` at random moments, several times.
    EmbeddedKill,
}

/// Every fault on Kafka and MariaDB.
pub const SERVICES_FAULTS: [Fault; 8] = [
    Fault::BrokerKill,
    Fault::BrokerPause,
    Fault::ShardPause,
    Fault::ShardKill,
    Fault::ShardDown,
    Fault::SluiceKill,
    Fault::SluiceTerm,
    Fault::SplitKill,
];

impl Fault {
    /// The name used in the table and in `SLUICE_CHAOS_ONLY`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::BrokerKill => "broker-kill",
            Fault::BrokerPause => "broker-pause",
            Fault::ShardPause => "shard-pause",
            Fault::ShardKill => "shard-kill",
            Fault::ShardDown => "shard-down",
            Fault::SluiceKill => "sluice-kill",
            Fault::SluiceTerm => "sluice-term",
            Fault::SplitKill => "split-kill",
            Fault::EmbeddedKill => "embedded-kill",
        }
    }

    fn backend(self) -> Backend {
        match self {
            Fault::EmbeddedKill => Backend::Embedded,
            _ => Backend::Services,
        }
    }
}

/// The bound on the RSS of the Sluice process while a fault lasts. The unoptimised build that
/// `cargo test` runs already holds about 420-470 MiB under the short run's load before any fault
/// (75 MiB idle), so it gets more room than a release build (`make chaos`).
const RSS_BOUND_MIB: u64 = if cfg!(debug_assertions) { 768 } else { 512 };

/// How hard a suite pushes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Concurrent load clients.
    pub clients: usize,
    /// Users per shard (more users, more distinct request signatures).
    pub users_per_shard: usize,
    /// Load before the fault, ms (random within).
    pub warmup_ms: (u64, u64),
    /// How long the killed broker stays down before it is started again (plus its ~20 s start).
    pub broker_down_ms: (u64, u64),
    /// How long the broker stays frozen.
    pub broker_pause_ms: (u64, u64),
    /// How long a shard stays frozen.
    pub shard_pause_ms: (u64, u64),
    /// How long a stopped shard refuses connections.
    pub shard_down_ms: (u64, u64),
    /// Load after the end of the fault.
    pub after_fault: Duration,
    /// `kill -9`s of the embedded-log run.
    pub embedded_kills: usize,
    /// Times each fault runs.
    pub rounds: usize,
    /// The bound on the Sluice process's RSS during a fault.
    pub rss_bound_mib: u64,
    /// Longest wait for the pipeline to store everything after a fault.
    pub drain_limit: Duration,
}

impl Settings {
    /// The short run that is part of `cargo test` (`SLUICE_CHAOS_ROUNDS` repeats it).
    pub fn short() -> Self {
        Settings {
            clients: 6,
            users_per_shard: 4,
            warmup_ms: (2_000, 5_000),
            broker_down_ms: (1_000, 4_000),
            broker_pause_ms: (10_000, 11_000),
            shard_pause_ms: (10_000, 11_000),
            shard_down_ms: (5_000, 10_000),
            after_fault: Duration::from_secs(3),
            embedded_kills: 3,
            rounds: env_number("SLUICE_CHAOS_ROUNDS", 1),
            rss_bound_mib: RSS_BOUND_MIB,
            drain_limit: Duration::from_secs(120),
        }
    }

    /// The long run of `make chaos`; `SLUICE_CHAOS_CLIENTS` and `SLUICE_CHAOS_ROUNDS` override.
    pub fn long() -> Self {
        Settings {
            clients: env_number("SLUICE_CHAOS_CLIENTS", 16),
            users_per_shard: 8,
            warmup_ms: (3_000, 15_000),
            broker_down_ms: (2_000, 15_000),
            broker_pause_ms: (10_000, 30_000),
            shard_pause_ms: (20_000, 20_001),
            shard_down_ms: (10_000, 30_000),
            after_fault: Duration::from_secs(10),
            embedded_kills: 8,
            rounds: env_number("SLUICE_CHAOS_ROUNDS", 2),
            rss_bound_mib: RSS_BOUND_MIB,
            drain_limit: Duration::from_secs(300),
        }
    }
}

/// A number from the environment, or `default` when unset.
fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// The seed of the next fault: `SLUICE_CHAOS_SEED` (decimal or 0x-hex) or a random one.
fn next_seed() -> u64 {
    match std::env::var("SLUICE_CHAOS_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("SLUICE_CHAOS_SEED={text} is not a number"))
        }
        Err(_) => rand::rng().random(),
    }
}

/// Whether `SLUICE_CHAOS_ONLY` (a comma-separated list of names) selects `fault`.
fn selected(fault: Fault) -> bool {
    match std::env::var("SLUICE_CHAOS_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|n| n.trim() == fault.name()),
        _ => true,
    }
}

/// The outcome of one fault run: its table line and what went wrong.
struct FaultResult {
    line: String,
    failures: Vec<String>,
}

/// Runs `faults` (those `SLUICE_CHAOS_ONLY` selects) `settings.rounds` times each, prints the
/// table, and fails with every problem found. Faults on services share one private instance.
pub async fn run_suite(suite: &str, faults: &[Fault], settings: Settings) {
    let faults: Vec<Fault> = faults.iter().copied().filter(|f| selected(*f)).collect();
    if faults.is_empty() {
        eprintln!("{suite}: no fault selected by SLUICE_CHAOS_ONLY");
        return;
    }
    let started = Instant::now();
    let mut private = if faults.iter().any(|f| f.backend() == Backend::Services) {
        Some(
            tokio::task::spawn_blocking(PrivateInfra::up)
                .await
                .expect("starting the private infrastructure panicked"),
        )
    } else {
        None
    };
    let address = private.as_ref().map(|p| p.address.clone());
    let log_root = match &address {
        Some(address) => address.log_dir(),
        None => {
            let dir = std::env::temp_dir().join(format!("sluice-faults-{}", unique(suite)));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        }
    };
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for round in 0..settings.rounds {
        for fault in &faults {
            let seed = next_seed();
            let run = tokio::spawn(run_fault(
                address.clone(),
                log_root.clone(),
                *fault,
                seed,
                settings.clone(),
                round,
            ));
            let result = match run.await {
                Ok(result) => result,
                Err(panic) => FaultResult {
                    line: format!("{:<14} seed={seed:#018x} harness failed", fault.name()),
                    failures: vec![format!("the harness panicked: {panic}")],
                },
            };
            eprintln!("{}", result.line);
            lines.push(result.line);
            failures.extend(
                result
                    .failures
                    .into_iter()
                    .map(|f| format!("{} (seed {seed:#018x}): {f}", fault.name())),
            );
        }
    }
    let table = format!(
        "{suite}: {} fault run(s) in {:.0?}; times count from the end of the fault\n{}\n",
        lines.len(),
        started.elapsed(),
        lines.join("\n")
    );
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{suite}.txt"));
    let _ = std::fs::write(&file, &table);
    eprintln!("{table}(also in {})", file.display());
    if failures.is_empty() {
        if address.is_none() {
            let _ = std::fs::remove_dir_all(&log_root);
        }
        return;
    }
    if let Some(private) = private.as_mut() {
        private.keep_for_inspection();
    }
    drop(private);
    panic!(
        "{} problem(s); Sluice logs in {}:\n{}",
        failures.len(),
        log_root.display(),
        failures.join("\n")
    );
}

/// One `sluice run` process (or `--only PART`).
struct Proc {
    only: Option<&'static str>,
    child: Option<Child>,
}

/// The Sluice processes of one fault run, started from the binary as an operator would.
struct Deployment {
    /// Always `Some` until dropped; taken out to keep a failed run's databases.
    test: Option<TestTopology>,
    /// Keep the topology's databases and files (a failed run).
    keep: bool,
    ports: Ports,
    procs: Vec<Proc>,
    /// Pid of the process that serves the ingress (for RSS samples).
    pid: Arc<AtomicU32>,
    log_dir: PathBuf,
    tag: String,
    starts: usize,
}

impl Deployment {
    fn new(test: TestTopology, ports: Ports, split: bool, log_dir: PathBuf, tag: String) -> Self {
        let parts: Vec<Option<&'static str>> = if split {
            vec![Some("ingress"), Some("processors"), Some("sinks")]
        } else {
            vec![None]
        };
        Deployment {
            test: Some(test),
            keep: false,
            ports,
            procs: parts
                .into_iter()
                .map(|only| Proc { only, child: None })
                .collect(),
            pid: Arc::new(AtomicU32::new(0)),
            log_dir,
            tag,
            starts: 0,
        }
    }

    fn test(&self) -> &TestTopology {
        self.test.as_ref().expect("the deployment's topology")
    }

    /// Starts process `index`.
    fn spawn(&mut self, index: usize) {
        self.starts += 1;
        let only = self.procs[index].only;
        let part = only.unwrap_or("all");
        let log = self
            .log_dir
            .join(format!("{}-{part}-{}.log", self.tag, self.starts));
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.arg("run");
        if let Some(only) = only {
            command.args(["--only", only]);
        }
        let child = command
            .arg("--topology")
            .arg(&self.test().path)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_CHAOS_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sluice");
        if index == 0 {
            self.pid.store(child.id(), Ordering::SeqCst);
        }
        self.procs[index].child = Some(child);
    }

    fn start_all(&mut self) {
        for index in 0..self.procs.len() {
            self.spawn(index);
        }
    }

    /// Waits until the ingress answers `/readyz` 200; fails if a process exits meanwhile.
    async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(4))
            .build()
            .unwrap();
        let deadline = Instant::now() + limit;
        loop {
            let ready = client
                .get(format!("{}/readyz", self.ports.order_base()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            for proc in &mut self.procs {
                if let Some(child) = proc.child.as_mut() {
                    if let Some(status) = child.try_wait().unwrap() {
                        return Err(format!(
                            "sluice ({}) exited with {status} before it was ready",
                            proc.only.unwrap_or("all parts")
                        ));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("sluice was not ready within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` of process `index`.
    fn kill9(&mut self, index: usize) {
        if let Some(mut child) = self.procs[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to process `index`; its exit status (bounded wait).
    async fn terminate(&mut self, index: usize, limit: Duration) -> Result<ExitStatus, String> {
        let Some(mut child) = self.procs[index].child.take() else {
            return Err("the process is not running".into());
        };
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no exit within {limit:?} of SIGTERM; killed"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to every process; the problems (a non-zero exit, no exit).
    async fn stop_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for index in 0..self.procs.len() {
            let part = self.procs[index].only.unwrap_or("all parts");
            match self.terminate(index, Duration::from_secs(60)).await {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    problems.push(format!("sluice ({part}) exited with {status} on SIGTERM"))
                }
                Err(error) => problems.push(format!("sluice ({part}): {error}")),
            }
        }
        problems
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for index in 0..self.procs.len() {
            self.kill9(index);
        }
        if self.keep {
            // No clean-up: the shard databases and the topology stay for inspection.
            std::mem::forget(self.test.take());
        }
    }
}

/// When a fault happened: `start`..`end`, and for a broker fault the span without a broker.
struct Window {
    start: Instant,
    end: Instant,
    outage: Option<(Instant, Instant)>,
}

fn pick(rng: &mut StdRng, (low, high): (u64, u64)) -> Duration {
    Duration::from_millis(rng.random_range(low..=high.max(low)))
}

/// Injects `fault` into the running deployment.
async fn inject(
    fault: Fault,
    deployment: &mut Deployment,
    infra: Option<&InfraAddress>,
    rng: &mut StdRng,
    settings: &Settings,
    lookups: &LookupProbe,
    failures: &mut Vec<String>,
) -> Result<Window, String> {
    let index = rng.random_range(0..4usize);
    let shard = index.to_string();
    let start = Instant::now();
    let mut outage = None;
    // Checks made once the fault is over, outside its window (see the shard pause).
    let mut after_the_fault = None;
    let infra = || infra.ok_or_else(|| "this fault needs the private infrastructure".to_string());
    match fault {
        Fault::BrokerKill => {
            let address = infra()?;
            address.exec(&["kafka-kill"]).await?;
            tokio::time::sleep(pick(rng, settings.broker_down_ms)).await;
            // The broker is away until its port accepts connections again, well into the
            // restart (the JVM takes seconds to listen).
            let port = address.kafka_port;
            let listening = tokio::spawn(async move {
                loop {
                    let at = Instant::now();
                    if tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                    {
                        return at;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let restarted = address.exec(&["kafka-start"]).await;
            let back = if listening.is_finished() {
                listening.await.unwrap_or_else(|_| Instant::now())
            } else {
                listening.abort();
                Instant::now()
            };
            outage = Some((start, back));
            restarted?;
        }
        Fault::BrokerPause => {
            infra()?.exec(&["kafka-pause"]).await?;
            tokio::time::sleep(pick(rng, settings.broker_pause_ms)).await;
            outage = Some((start, Instant::now()));
            infra()?.exec(&["kafka-resume"]).await?;
        }
        Fault::ShardPause => {
            infra()?.exec(&["shard-pause", &shard]).await?;
            let pause = pick(rng, settings.shard_pause_ms);
            // Order lookups on the frozen shard are answered (503) rather than held open.
            let (frozen, ()) = tokio::join!(lookups.while_frozen(index), tokio::time::sleep(pause));
            failures.extend(frozen.err());
            infra()?.exec(&["shard-resume", &shard]).await?;
            after_the_fault = Some(index);
        }
        Fault::ShardKill => {
            infra()?.exec(&["shard-kill", &shard]).await?;
            tokio::time::sleep(pick(rng, (500, 3_000))).await;
            infra()?.exec(&["shard-start", &shard]).await?;
        }
        Fault::ShardDown => {
            infra()?.exec(&["shard-stop", &shard]).await?;
            tokio::time::sleep(pick(rng, settings.shard_down_ms)).await;
            infra()?.exec(&["shard-start", &shard]).await?;
        }
        Fault::SluiceKill => {
            deployment.kill9(0);
            tokio::time::sleep(pick(rng, (0, 1_000))).await;
            deployment.spawn(0);
        }
        Fault::SluiceTerm => {
            match deployment.terminate(0, Duration::from_secs(60)).await {
                Ok(status) if status.success() => {}
                Ok(status) => failures.push(format!("SIGTERM under load: exit {status}, not 0")),
                Err(error) => failures.push(format!("SIGTERM under load: {error}")),
            }
            deployment.spawn(0);
        }
        Fault::SplitKill => {
            for index in 0..deployment.procs.len() {
                deployment.kill9(index);
                tokio::time::sleep(pick(rng, (200, 1_000))).await;
                deployment.spawn(index);
                if index + 1 < deployment.procs.len() {
                    tokio::time::sleep(pick(rng, (1_000, 3_000))).await;
                }
            }
        }
        Fault::EmbeddedKill => {
            for kill in 0..settings.embedded_kills {
                deployment.kill9(0);
                tokio::time::sleep(pick(rng, (0, 500))).await;
                deployment.spawn(0);
                if kill + 1 < settings.embedded_kills {
                    deployment.wait_ready(Duration::from_secs(60)).await?;
                    tokio::time::sleep(pick(rng, settings.warmup_ms)).await;
                }
            }
        }
    }
    let end = Instant::now();
    if let Some(index) = after_the_fault {
        // And answered from the shard again once it is back.
        failures.extend(lookups.after_thaw(index).await.err());
    }
    Ok(Window { start, end, outage })
}

/// Polls the shards until every id in `ids` is stored; the time that took, or `None` after
/// `limit`.
async fn time_until_stored(
    shards: &Shards,
    ids: Vec<String>,
    from: Instant,
    limit: Duration,
) -> Option<Duration> {
    let deadline = from + limit;
    loop {
        if let Ok(rows) = load::stored_rows(shards, Duration::from_secs(3)).await {
            let stored: std::collections::HashSet<&str> =
                rows.iter().map(|r| r.id.as_str()).collect();
            if ids.iter().all(|id| stored.contains(id.as_str())) {
                return Some(from.elapsed());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How long the shards may store nothing while acknowledged orders are missing before the
/// pipeline counts as stalled.
const STALL: Duration = Duration::from_secs(60);

/// Waits until every acknowledged order is stored and the row count has not changed for 3 s
/// (so late orders answered 503 are in too), at most `limit` (or until nothing was stored for
/// `STALL` while orders are missing); the rows found last.
async fn settled_rows(
    shards: &Shards,
    acknowledged: &[String],
    limit: Duration,
) -> Result<Vec<StoredRow>, String> {
    let deadline = Instant::now() + limit;
    let mut last: Option<(usize, Instant)> = None;
    let mut rows = Vec::new();
    let mut error = String::new();
    loop {
        match load::stored_rows(shards, Duration::from_secs(5)).await {
            Ok(found) => {
                let complete = {
                    let stored: std::collections::HashSet<&str> =
                        found.iter().map(|r| r.id.as_str()).collect();
                    acknowledged.iter().all(|id| stored.contains(id.as_str()))
                };
                let count = found.len();
                rows = found;
                match last {
                    Some((n, since)) if n == count => {
                        if complete && since.elapsed() >= Duration::from_secs(3) {
                            return Ok(rows);
                        }
                        // Orders missing and nothing stored for a long while: a stall, not a
                        // slow catch-up. Report it rather than wait out the whole limit.
                        if !complete && since.elapsed() >= STALL {
                            return Ok(rows);
                        }
                    }
                    _ => last = Some((count, Instant::now())),
                }
            }
            Err(e) => error = e,
        }
        if Instant::now() >= deadline {
            if rows.is_empty() && !error.is_empty() {
                return Err(error);
            }
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1}s", d.as_secs_f64()))
        .unwrap_or_else(|| "never".into())
}

/// Runs one fault on a fresh topology (its own topics and databases) and reports it.
async fn run_fault(
    infra: Option<InfraAddress>,
    log_root: PathBuf,
    fault: Fault,
    seed: u64,
    settings: Settings,
    round: usize,
) -> FaultResult {
    let mut failures = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let users = users_covering_shards(settings.users_per_shard);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ports = Ports::free();
    let test = test_topology_on(
        fault.backend(),
        &fault.name().replace('-', "_"),
        &user_refs,
        |t| {
            ports.apply(t);
            match &infra {
                Some(infra) if fault.backend() == Backend::Services => infra.retarget(t),
                _ => {}
            }
        },
    );
    let ack_timeout = Duration::from_millis(test.topology().ingress.ack_timeout_ms);
    let tag = format!(
        "{}-r{round}-{}",
        fault.name(),
        &test.id[test.id.len() - 6..]
    );
    let mut deployment = Deployment::new(
        test,
        ports,
        fault == Fault::SplitKill,
        log_root,
        tag.clone(),
    );
    deployment.start_all();
    if let Err(error) = deployment.wait_ready(Duration::from_secs(90)).await {
        return FaultResult {
            line: format!("{:<14} seed={seed:#018x} did not start", fault.name()),
            failures: vec![error],
        };
    }
    let client = reqwest::Client::new();
    let mut tokens = HashMap::new();
    for user in &users {
        tokens.insert(
            user.clone(),
            login(&client, &ports.login_base(), user).await,
        );
    }
    let lookups = LookupProbe::new(ports.order_base(), deployment.test(), &tokens);
    let load = Load::start(
        LoadConfig {
            clients: settings.clients,
            seed,
            tag: tag.clone(),
            order_base: ports.order_base(),
            request_timeout: ack_timeout + Duration::from_secs(15),
        },
        users.clone(),
        tokens,
    );
    let probes = Probes::start(ports.order_base(), deployment.pid.clone());
    let run_started = Instant::now();

    let mut window = None;
    match load
        .wait_for_more(50, Duration::from_secs(60), "before the fault")
        .await
    {
        Err(error) => failures.push(error),
        Ok(()) => {
            tokio::time::sleep(pick(&mut rng, settings.warmup_ms)).await;
            match inject(
                fault,
                &mut deployment,
                infra.as_ref(),
                &mut rng,
                &settings,
                &lookups,
                &mut failures,
            )
            .await
            {
                Ok(w) => window = Some(w),
                Err(error) => failures.push(format!("injecting the fault failed: {error}")),
            }
        }
    }
    let fault_end = window.as_ref().map_or_else(Instant::now, |w| w.end);
    let acknowledged_before_end = load.acknowledged_ids();
    let shards = Shards::of(deployment.test());
    let mut drain_watch = {
        let (shards, limit) = (shards.clone(), settings.drain_limit);
        tokio::spawn(async move {
            time_until_stored(&shards, acknowledged_before_end, fault_end, limit).await
        })
    };
    if let Err(error) = deployment.wait_ready(Duration::from_secs(120)).await {
        failures.push(format!("after the fault: {error}"));
    }
    if let Err(error) = load
        .wait_for_more(
            20,
            Duration::from_secs(120),
            "after the fault: recovery without a restart",
        )
        .await
    {
        failures.push(error);
    }
    tokio::time::sleep(settings.after_fault).await;
    let ledger = load.finish(Duration::from_secs(30)).await;
    let acknowledged: Vec<String> = ledger
        .keys
        .values()
        .filter_map(|k| k.ids.first())
        .map(|id| id.replace('-', ""))
        .collect();
    let rows = match settled_rows(&shards, &acknowledged, settings.drain_limit).await {
        Ok(rows) => rows,
        Err(error) => {
            failures.push(format!("the shards could not be read: {error}"));
            Vec::new()
        }
    };
    // The shards have settled: the watch has its answer by now, or never will.
    let drained = match tokio::time::timeout(Duration::from_secs(5), &mut drain_watch).await {
        Ok(result) => result.ok().flatten(),
        Err(_) => {
            drain_watch.abort();
            None
        }
    };
    let tally = load::tally(&ledger, &rows, &users);
    let ready_after = probes.ready_after(fault_end);
    // The bound holds while the fault lasts; the catch-up afterwards is reported beside it.
    let rss_peak = window
        .as_ref()
        .map_or(0, |w| probes.rss_peak_mib(w.start, w.end));
    let rss_run_peak = probes.rss_peak_mib(run_started, Instant::now());

    // Checks.
    if !tally.lost.is_empty() {
        let mut message = format!("{} acknowledged orders were not stored", tally.lost.len());
        if deployment.test().backend == Backend::Services {
            if let Some(infra) = &infra {
                message.push('\n');
                message
                    .push_str(&diagnose::lost_orders(infra, deployment.test(), &tally.lost).await);
            }
        } else {
            for lost in tally.lost.iter().take(20) {
                message.push_str(&format!(
                    "\n  order {} (orders.raw partition/offset {:?}) stored as {:?}",
                    lost.id, lost.raw, lost.stored_as
                ));
            }
        }
        failures.push(message);
    }
    if tally.duplicated > 0 {
        failures.push(format!(
            "{} extra rows: a request was stored more than once",
            tally.duplicated
        ));
    }
    if tally.conflicting_ids > 0 {
        failures.push(format!(
            "{} keys were answered with two different order ids",
            tally.conflicting_ids
        ));
    }
    if tally.foreign_rows > 0 {
        failures.push(format!(
            "{} stored rows match no request that was sent",
            tally.foreign_rows
        ));
    }
    if !tally.unexpected.is_empty() {
        failures.push(format!("unexpected answers: {:?}", tally.unexpected));
    }
    if drained.is_none() {
        failures.push(format!(
            "the orders acknowledged before the end of the fault were not all stored within {:?}",
            settings.drain_limit
        ));
    }
    if ready_after.is_none() {
        failures.push(format!(
            "/readyz never answered 200 after the fault; last answer: {}",
            probes
                .last_not_ready
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| "none".into())
        ));
    }
    if rss_peak > settings.rss_bound_mib {
        failures.push(format!(
            "RSS peaked at {rss_peak} MiB during the fault, above the {} MiB bound",
            settings.rss_bound_mib
        ));
    }
    if let Some((from, to)) = window.as_ref().and_then(|w| w.outage) {
        // librdkafka notices a dead or frozen broker within a few seconds.
        let grace = Duration::from_secs(6);
        let wrong: Vec<String> = probes
            .ready_between(from + grace, to)
            .iter()
            .filter(|(_, _, status)| *status != Some(503))
            .map(|(at, _, status)| format!("{status:?} at +{:.1}s", (*at - from).as_secs_f64()))
            .collect();
        if !wrong.is_empty() {
            failures.push(format!(
                "/readyz did not answer 503 while no broker was reachable: {}",
                wrong.join(", ")
            ));
        }
        let bound = ack_timeout + Duration::from_secs(3);
        let slow: Vec<&load::Attempt> = ledger
            .attempts
            .iter()
            .filter(|a| a.started >= from && a.started <= to)
            .filter(|a| !a.outcome.answered() || a.elapsed > bound)
            .collect();
        if !slow.is_empty() {
            failures.push(format!(
                "{} orders sent while no broker was reachable got no answer within {bound:?} \
                 (first: key {} {:?} after {:?})",
                slow.len(),
                slow[0].key,
                slow[0].outcome,
                slow[0].elapsed
            ));
        }
    }
    failures.extend(deployment.stop_all().await);
    deployment.keep = !failures.is_empty();
    if deployment.keep {
        failures.push(format!(
            "its topology, shard databases and log are kept ({})",
            deployment.test().dir.path().display()
        ));
    }

    let line = format!(
        "{:<14} seed={seed:#018x} acknowledged={:<6} stored={:<6} lost={:<3} duplicated={:<3} \
         final-503={} (stored {}) unanswered={} (stored {}) ready-after={} drained-after={} \
         rss-peak={} (run {}MiB){}",
        fault.name(),
        tally.acknowledged,
        tally.stored,
        tally.lost.len(),
        tally.duplicated,
        tally.final_503,
        tally.stored_despite_503,
        tally.unanswered,
        tally.stored_unanswered,
        secs(ready_after),
        secs(drained),
        if rss_peak == 0 {
            "-".to_string() // no sample: the fault was over within one sampling period
        } else {
            format!("{rss_peak}MiB")
        },
        rss_run_peak,
        if failures.is_empty() { "" } else { "  FAILED" },
    );
    FaultResult { line, failures }
}

/// The long run (`make chaos`): every fault, more load, longer and randomly timed faults,
/// `SLUICE_CHAOS_ROUNDS` rounds. Build in release; see the Makefile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with `make chaos`"]
async fn chaos() {
    let mut faults = SERVICES_FAULTS.to_vec();
    faults.push(Fault::EmbeddedKill);
    run_suite("faults-chaos", &faults, Settings::long()).await;
}
