//! `sluice`: the order-ingestion pipeline's one binary.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use sluice::otlp::Exporter;
use sluice::pipeline::{self, Parts};
use sluice::telemetry::LogFormat;
use sluice::topology::{self, LogBackend};
use sluice_core::shutdown::Shutdown;
use sluice_core::topology::GraphFormat;

/// mimalloc: per-thread free lists, no global lock; under load it allocates for a fraction of
/// what glibc's malloc cost the process (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: HTTP ingress → stream processors → sharded MySQL, over Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// What to do; without a subcommand, `run` with the default topology.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline (everything, or only some parts) until SIGTERM / Ctrl-C.
    Run {
        /// The topology file.
        #[arg(short, long, env = "SLUICE_TOPOLOGY", default_value = "topology.toml")]
        topology: PathBuf,
        /// Run only these parts (repeatable); default: all.
        #[arg(long, value_enum)]
        only: Vec<Part>,
        /// Log format: `auto` (human lines on a terminal, else ECS JSON), `json` or `pretty`.
        #[arg(long, value_enum, env = "SLUICE_LOG_FORMAT", default_value = "auto")]
        log_format: LogFormat,
    },
    /// Validate a topology file and print every problem at once; with --connect, also reach
    /// everything it names (the log, every shard, the users and key files) and apply the
    /// production-mode checks.
    ///
    /// Exits 1 when any problem is an error (warnings alone exit 0).
    Check {
        /// The topology file (the same as --topology, which it overrides; kept for scripts
        /// that give the path alone).
        #[arg(value_name = "TOPOLOGY")]
        path: Option<PathBuf>,
        /// The topology file.
        #[arg(short, long, env = "SLUICE_TOPOLOGY", default_value = "topology.toml")]
        topology: PathBuf,
        /// Also reach what the topology names, within a few seconds each, and report every
        /// problem with the setting or file to fix: the Kafka topics and their partitions (or
        /// the embedded log's folder and free space), every shard (reachable, credentials,
        /// database, schema version, privileges; read-only), the users file, the token and
        /// biscuit key files, and the production-mode checks (warnings in development mode).
        #[arg(long)]
        connect: bool,
        /// Output: text for people, json for machines (one document:
        /// `{"ok", "topology", "problems": [{"severity", "component", "setting", "message"}],
        /// "notes", "checked"}`).
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
    },
    /// Print the topology's flow as a Mermaid or DOT graph.
    Graph {
        /// The topology file (the same as --topology, which it overrides; kept for
        /// compatibility).
        #[arg(value_name = "TOPOLOGY")]
        path: Option<PathBuf>,
        /// The topology file.
        #[arg(short, long, env = "SLUICE_TOPOLOGY", default_value = "topology.toml")]
        topology: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: Format,
    },
    /// Re-read a topic from an offset or a time and feed a stage or a shard (backfill).
    ///
    /// The replay keeps its own position (named by --name): the live pipeline is untouched,
    /// and running the same command again after an interruption resumes where it stopped.
    Replay {
        /// The topology file.
        #[arg(short, long, env = "SLUICE_TOPOLOGY", default_value = "topology.toml")]
        topology: PathBuf,
        /// Feed this stage (its outputs go to its live output topics).
        #[arg(long, conflicts_with = "shard", required_unless_present = "shard")]
        stage: Option<String>,
        /// Rebuild this shard (rows are written idempotently by order id).
        #[arg(long)]
        shard: Option<String>,
        /// Topic to read; default: the stage's input or the shard's own topic.
        #[arg(long)]
        topic: Option<String>,
        /// Start: `beginning`, an offset (in every partition), `@<epoch ms>` or an RFC 3339 time
        /// (`2026-11-25T10:00:00Z`, `2026-11-25T12:00:00+02:00`).
        #[arg(long, default_value = "beginning", value_parser = sluice::replay::parse_bound)]
        from: sluice::replay::Bound,
        /// Stop before this bound (same forms as --from); default: the end when the replay starts.
        #[arg(long, value_parser = sluice::replay::parse_bound)]
        to: Option<sluice::replay::Bound>,
        /// Name of this replay's position; reuse it to resume.
        #[arg(long, default_value = "backfill")]
        name: String,
        /// Read at most this many records per second, to leave a live shard room for its
        /// live sink. Also applies when the replay runs inside the running embedded pipeline.
        #[arg(long, value_name = "RECORDS_PER_SECOND")]
        rate: Option<std::num::NonZeroU32>,
        /// Print the plan (per partition: topic, partition, start offset, stop offset,
        /// records; and the total) and exit without reading or writing a record. Nothing is
        /// opened for writing: the embedded log is opened read-only (and must exist), and no
        /// shard is opened, so a shard replay's plan starts at --from (the replay itself
        /// resumes from its stored position). With the embedded pipeline running, that
        /// pipeline computes the plan, stored position included.
        #[arg(long)]
        dry_run: bool,
        /// Serve /metrics on this address while the replay runs
        /// (`sluice_replay_records_total`, `sluice_replay_remaining_records`). Without it no
        /// metrics are served (the topology's [ops] listen stays free for `sluice run`); a
        /// replay handed to the running embedded pipeline also shows on that pipeline's
        /// /metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Log format: `auto` (human lines on a terminal, else ECS JSON), `json` or `pretty`.
        #[arg(long, value_enum, env = "SLUICE_LOG_FORMAT", default_value = "auto")]
        log_format: LogFormat,
    },
    /// Mint a JWT for a script or service, signed with the topology's signing key.
    Token {
        /// The topology file (its [ingress.auth] keys sign the token).
        #[arg(short, long, env = "SLUICE_TOPOLOGY", default_value = "topology.toml")]
        topology: PathBuf,
        /// The subject: the user the token speaks for.
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (default: the topology's token_ttl_secs).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// Capability tokens (biscuit): keygen, mint, attenuate, inspect.
    Biscuit {
        #[command(subcommand)]
        command: sluice::capability_cli::BiscuitCommand,
    },
    /// Manage the users file (argon2id hashes).
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Add a user or change their password; the password is read from standard input.
    ///
    /// Refuses a weak password: fewer than 10 characters, a well-known one, or one containing
    /// the user name. Only an argon2id hash of the password is written.
    Add {
        /// User name (also their userId for orders).
        name: String,
        /// The users file.
        #[arg(long, default_value = "users.toml")]
        file: PathBuf,
        /// Accept a weak password anyway, with a warning (for demos only).
        #[arg(long)]
        allow_weak: bool,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
        /// The users file.
        #[arg(long, default_value = "users.toml")]
        file: PathBuf,
    },
    /// List the user names.
    List {
        /// The users file.
        #[arg(long, default_value = "users.toml")]
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Part {
    Ingress,
    Processors,
    Sinks,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Mermaid,
    Dot,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // `check` and `graph` take the topology as a path (as they always did) or as
    // -t/--topology: not both on one command line.
    for name in ["check", "graph"] {
        if let Some(sub) = matches.subcommand_matches(name) {
            if sub.contains_id("path")
                && sub.value_source("path") == Some(ValueSource::CommandLine)
                && sub.value_source("topology") == Some(ValueSource::CommandLine)
            {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("sluice {name}: give the topology file either as a path or with --topology, not both"),
                    )
                    .exit();
            }
        }
    }
    let command = cli.command.unwrap_or_else(|| Command::Run {
        topology: std::env::var_os("SLUICE_TOPOLOGY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("topology.toml")),
        only: Vec::new(),
        log_format: std::env::var("SLUICE_LOG_FORMAT")
            .ok()
            .and_then(|format| LogFormat::from_str(&format, true).ok())
            .unwrap_or_default(),
    });
    match command {
        Command::Check {
            path,
            topology,
            connect,
            format,
        } => check(&path.unwrap_or(topology), connect, format),
        Command::Graph {
            path,
            topology,
            format,
        } => graph(&path.unwrap_or(topology), format),
        Command::Users {
            action:
                UsersAction::Add {
                    name,
                    file,
                    allow_weak,
                },
        } => add_user(&name, &file, allow_weak),
        Command::Users {
            action: UsersAction::Remove { name, file },
        } => report(
            sluice_ingress::users::remove_user(&file, &name).map(|existed| {
                if existed {
                    format!("user {name} removed from {}\n", file.display())
                } else {
                    format!("no user {name} in {}\n", file.display())
                }
            }),
        ),
        Command::Users {
            action: UsersAction::List { file },
        } => report(
            sluice_ingress::users::list_users(&file)
                .map(|names| names.iter().map(|n| format!("{n}\n")).collect()),
        ),
        Command::Biscuit { command } => report(sluice::capability_cli::run(command)),
        Command::Token {
            topology,
            user,
            ttl_secs,
        } => mint_token(&topology, &user, ttl_secs),
        Command::Run {
            topology,
            only,
            log_format,
        } => run(&topology, &only, log_format),
        Command::Replay {
            topology,
            stage,
            shard,
            topic,
            from,
            to,
            name,
            rate,
            dry_run,
            metrics_listen,
            log_format,
        } => {
            let target = match (stage, shard) {
                (Some(stage), _) => sluice::replay::Target::Stage(stage),
                (None, Some(shard)) => sluice::replay::Target::Shard(shard),
                (None, None) => unreachable!("clap requires --stage or --shard"),
            };
            replay(
                &topology,
                log_format,
                sluice::replay::ReplaySpec {
                    topic,
                    from,
                    to,
                    target,
                    name,
                    rate,
                },
                dry_run,
                metrics_listen,
            )
        }
    }
}

fn out(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Prints `result` (stdout) or its error (stderr) and turns it into an exit code.
fn report<E: std::fmt::Display>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn mint_token(path: &std::path::Path, user: &str, ttl_secs: Option<u64>) -> ExitCode {
    report(
        topology::load(path)
            .map_err(|e| e.to_string())
            .and_then(|topology| {
                let mut auth = topology.ingress.auth.clone();
                sluice_ingress::generated_secret::settle_read_only(
                    &mut auth,
                    topology.ingress.mode,
                    &topology.base_dir,
                )
                .map_err(|e| e.to_string())?;
                let auth = &auth;
                let tokens =
                    sluice_ingress::auth::TokenAuthority::from_config(auth, &topology.base_dir)
                        .map_err(|e| e.to_string())?;
                // Bound to the user's password like a login's token, so changing the
                // password ends it too.
                let users_file = topology.resolve_path(&auth.users_file);
                let users = sluice_ingress::users::read_entries(&users_file)
                    .map_err(|e| e.to_string())?;
                let password_hash = users
                    .iter()
                    .find(|entry| entry.name == user)
                    .map(|entry| entry.password_hash.as_str())
                    .ok_or_else(|| {
                        format!(
                            "user {user:?} is not in {}; add them first with `sluice users add {user}` (the ingress refuses tokens of unknown users)",
                            users_file.display()
                        )
                    })?;
                tokens
                    .issue_for(
                        user,
                        password_hash,
                        ttl_secs.unwrap_or(auth.token_ttl_secs),
                    )
                    .map(|token| format!("{token}\n"))
                    .map_err(|e| e.to_string())
            }),
    )
}

fn check(path: &std::path::Path, connect: bool, format: CheckFormat) -> ExitCode {
    use sluice::connect_check::{self, CheckReport};
    let mut report = CheckReport::new(path);
    let loaded = topology::load(path);
    let topology = match loaded {
        Ok(topology) => topology,
        Err(error) => {
            report.problems = connect_check::topology_problems(&error);
            match format {
                // As it always was: the loader's own message, every problem in it.
                CheckFormat::Text => eprintln!("{error}"),
                CheckFormat::Json => out(&format!("{}\n", report.json())),
            }
            return ExitCode::FAILURE;
        }
    };
    connect_check::count_declared(&mut report, &topology);
    let summary = format!(
        "{}: ok ({} topics, {} stages, {} shards over {} buckets)",
        path.display(),
        topology.topics.len(),
        topology.stages.len(),
        topology.shards.len(),
        topology.sharding.buckets
    );
    report.note(summary);
    if topology.log.backend == LogBackend::Embedded && !connect {
        report.note(connect_check::EMBEDDED_SERVES_ONE_PROCESS);
    }
    if connect {
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("cannot start the async runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
        report.merge(runtime.block_on(connect_check::connect(&topology)));
    }
    match format {
        CheckFormat::Text => out(&report.text()),
        CheckFormat::Json => out(&format!("{}\n", report.json())),
    }
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn graph(path: &std::path::Path, format: Format) -> ExitCode {
    let format = match format {
        Format::Mermaid => GraphFormat::Mermaid,
        Format::Dot => GraphFormat::Dot,
    };
    report(topology::load(path).map(|topology| topology.render(format)))
}

/// Loads the topology and starts the async runtime for `run` and `replay`, or prints why not.
/// Also starts span export when an OTLP endpoint is configured.
fn prepare(
    path: &std::path::Path,
    log_format: LogFormat,
) -> Result<
    (
        topology::Topology,
        tokio::runtime::Runtime,
        Option<Exporter>,
    ),
    ExitCode,
> {
    sluice::telemetry::init_logging(log_format);
    let fail = |message: String| {
        eprintln!("{message}");
        ExitCode::FAILURE
    };
    let topology = topology::load(path).map_err(|e| fail(e.to_string()))?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
    let exporter = match sluice::otlp::endpoint(topology.ops.otlp_endpoint.as_deref()) {
        Some(endpoint) => {
            let _entered = runtime.enter();
            sluice::otlp::start(&endpoint).map_err(|e| fail(e.to_string()))?
        }
        None => None,
    };
    Ok((topology, runtime, exporter))
}

/// Sends the spans still queued for export before the process exits.
fn flush_spans(runtime: &tokio::runtime::Runtime, exporter: Option<Exporter>) {
    if let Some(exporter) = exporter {
        runtime.block_on(exporter.flush(std::time::Duration::from_secs(5)));
    }
}

fn add_user(name: &str, file: &std::path::Path, allow_weak: bool) -> ExitCode {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("password for {name} (then Enter):");
    }
    let mut password = String::new();
    if std::io::stdin().lock().read_line(&mut password).is_err()
        || password.trim_end_matches(['\r', '\n']).is_empty()
    {
        eprintln!("no password given on standard input");
        return ExitCode::FAILURE;
    }
    let policy = if allow_weak {
        sluice_ingress::users::PasswordPolicy::AllowWeak
    } else {
        sluice_ingress::users::PasswordPolicy::RefuseWeak
    };
    let password = password.trim_end_matches(['\r', '\n']);
    report(
        sluice_ingress::users::upsert_user(file, name, password, policy).map(|weakness| {
            if let Some(weakness) = weakness {
                eprintln!("warning: {weakness}; accepted because of --allow-weak: use it for demos only, never for an account reachable from a network");
            }
            format!("user {name} saved in {}\n", file.display())
        }),
    )
}

fn replay(
    path: &std::path::Path,
    log_format: LogFormat,
    spec: sluice::replay::ReplaySpec,
    dry_run: bool,
    metrics_listen: Option<std::net::SocketAddr>,
) -> ExitCode {
    let (topology, runtime, exporter) = match prepare(path, log_format) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    if dry_run {
        return dry_run_replay(&topology, &runtime, &spec);
    }
    let label = match &spec.target {
        sluice::replay::Target::Stage(name) => format!("replay {} -> stage {name}", spec.name),
        sluice::replay::Target::Shard(name) => format!("replay {} -> shard {name}", spec.name),
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        // Stops the metrics listener when the replay ends, however it ends.
        let metrics_stop = tokio_util::sync::CancellationToken::new();
        let _stop_metrics = metrics_stop.clone().drop_guard();
        let mut stream = None;
        if topology.log.backend == LogBackend::Embedded {
            // A running `sluice run` holds the embedded log: hand it the replay.
            let log_file = topology.resolve_path(&topology.log.embedded.path);
            stream = sluice::replay_socket::connect(&log_file).await;
        }
        // Metrics only on --metrics-listen: [ops] listen belongs to `sluice run`, which may
        // start or restart on this host while the replay runs (a running embedded pipeline
        // counts the replay on its own /metrics).
        sluice_ingress::prometheus::handle();
        if let Some(address) = metrics_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| {
                    format!("cannot serve metrics on --metrics-listen {address}: {error}")
                })?;
            sluice::replay::eprint_line(&format!("replay metrics on http://{address}/metrics"));
            tokio::spawn(sluice::replay::serve_metrics(
                listener,
                metrics_stop.clone(),
            ));
        }
        let progress = sluice::replay::progress_printer(label, std::time::Duration::from_secs(2));
        if let Some(stream) = stream {
            eprintln!("the pipeline is running: the replay runs inside it");
            // This process's /metrics (--metrics-listen) follows the remote replay too.
            let progress = sluice::replay::with_metrics(&spec.target, progress);
            return sluice::replay_socket::request(stream, &spec, Some(progress), shutdown.token())
                .await
                .map_err(|e| e.to_string());
        }
        let log = pipeline::open_log(&topology).map_err(|e| e.to_string())?;
        sluice::replay::replay(&topology, log, &spec, shutdown.token(), Some(progress))
            .await
            .map_err(|e| e.to_string())
    });
    sluice::replay::finish_progress();
    flush_spans(&runtime, exporter);
    match result {
        Ok(outcome) if outcome.complete => {
            out(&format!(
                "replay {} complete: {} records\n",
                spec.name, outcome.records
            ));
            ExitCode::SUCCESS
        }
        Ok(outcome) => {
            eprintln!(
                "replay {} interrupted after {} of {} records; run the same command again to resume",
                spec.name, outcome.records, outcome.total
            );
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("sluice replay: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice replay --dry-run`: the plan, asked of the running embedded pipeline when there is
/// one (it holds the log), else computed here with nothing opened for writing: the embedded
/// log read-only, no shard at all.
fn dry_run_replay(
    topology: &topology::Topology,
    runtime: &tokio::runtime::Runtime,
    spec: &sluice::replay::ReplaySpec,
) -> ExitCode {
    let result = runtime.block_on(async {
        if topology.log.backend == LogBackend::Embedded {
            let log_file = topology.resolve_path(&topology.log.embedded.path);
            if let Some(stream) = sluice::replay_socket::connect(&log_file).await {
                return sluice::replay_socket::plan_request(stream, spec)
                    .await
                    .map_err(|e| e.to_string());
            }
        }
        let log: std::sync::Arc<dyn sluice_core::log::Log> =
            if topology.log.backend == LogBackend::Embedded {
                let log_file = topology.resolve_path(&topology.log.embedded.path);
                if !log_file.exists() {
                    return Err(format!(
                        "no log at {}: nothing to replay",
                        log_file.display()
                    ));
                }
                std::sync::Arc::new(
                    sluice_log_embedded::ReadOnlyEmbeddedLog::open(&log_file)
                        .map_err(|e| e.to_string())?,
                )
            } else {
                pipeline::open_log(topology).map_err(|e| e.to_string())?
            };
        sluice::replay::plan_replay(topology, log, spec, sluice::replay::ShardPositions::Skip)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(plan) => {
            out(&plan.text());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sluice replay --dry-run: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, only: &[Part], log_format: LogFormat) -> ExitCode {
    let (topology, runtime, exporter) = match prepare(path, log_format) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    if !only.is_empty() && topology.log.backend == LogBackend::Embedded {
        eprintln!(
            "sluice: {}; run every part in one process (`sluice run` without --only)",
            sluice::connect_check::EMBEDDED_SERVES_ONE_PROCESS
        );
        return ExitCode::FAILURE;
    }
    if let Some(error) = sluice::connect_check::refusal(&topology) {
        tracing::error!(%error, "the Kafka cluster refuses Sluice");
        eprintln!("sluice: cannot connect to the Kafka cluster: {error}");
        return ExitCode::FAILURE;
    }
    sluice::open_files::raise_to_hard_limit();
    let parts = if only.is_empty() {
        Parts::ALL
    } else {
        Parts {
            ingress: only.iter().any(|p| matches!(p, Part::Ingress)),
            processors: only.iter().any(|p| matches!(p, Part::Processors)),
            sinks: only.iter().any(|p| matches!(p, Part::Sinks)),
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        // Listeners first (taken over from a process running on the same addresses, if any),
        // then the log: on the embedded log that process holds it until it has drained, and
        // new connections wait in the accept queues meanwhile.
        let bound = pipeline::obtain_listeners(&topology, parts).await?;
        let stop = shutdown.token();
        let log = tokio::select! {
            log = pipeline::open_log_when_free(&topology) => log?,
            _ = stop.cancelled() => {
                tracing::info!("stopped while waiting for the log");
                return Ok(());
            }
        };
        pipeline::run_bound(topology, log, parts, bound, shutdown).await
    });
    flush_spans(&runtime, exporter);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "sluice stopped with an error");
            eprintln!("sluice: {error}");
            ExitCode::FAILURE
        }
    }
}
