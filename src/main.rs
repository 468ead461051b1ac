//! `sluice`: the order-ingestion pipeline's one binary.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice::pipeline::{self, Parts};
use sluice::topology::{self, LogBackend};
use sluice_core::shutdown::Shutdown;
use sluice_core::topology::GraphFormat;

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
    },
    /// Validate a topology file and print every problem at once.
    Check {
        /// The topology file.
        #[arg(default_value = "topology.toml")]
        topology: PathBuf,
        /// Also ask the Kafka brokers the file names whether each declared topic exists and
        /// has the declared partitions (fewer is an error, more a warning).
        #[arg(long)]
        connect: bool,
    },
    /// Print the topology's flow as a Mermaid or DOT graph.
    Graph {
        /// The topology file.
        #[arg(default_value = "topology.toml")]
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

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Mermaid,
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| Command::Run {
        topology: std::env::var_os("SLUICE_TOPOLOGY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("topology.toml")),
        only: Vec::new(),
    });
    match command {
        Command::Check { topology, connect } => check(&topology, connect),
        Command::Graph { topology, format } => graph(&topology, format),
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
        Command::Run { topology, only } => run(&topology, &only),
        Command::Replay {
            topology,
            stage,
            shard,
            topic,
            from,
            to,
            name,
        } => {
            let target = match (stage, shard) {
                (Some(stage), _) => sluice::replay::Target::Stage(stage),
                (None, Some(shard)) => sluice::replay::Target::Shard(shard),
                (None, None) => unreachable!("clap requires --stage or --shard"),
            };
            replay(
                &topology,
                sluice::replay::ReplaySpec {
                    topic,
                    from,
                    to,
                    target,
                    name,
                },
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

fn check(path: &std::path::Path, connect: bool) -> ExitCode {
    let topology = match topology::load(path) {
        Ok(topology) => topology,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    out(&format!(
        "{}: ok ({} topics, {} stages, {} shards over {} buckets)\n",
        path.display(),
        topology.topics.len(),
        topology.stages.len(),
        topology.shards.len(),
        topology.sharding.buckets
    ));
    if topology.log.backend == LogBackend::Embedded {
        out(sluice::connect_check::EMBEDDED_SERVES_ONE_PROCESS);
        out("\n");
        if connect {
            out("--connect: the embedded log is a file on this machine; there is nothing to connect to\n");
        }
        return ExitCode::SUCCESS;
    }
    if !connect {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(sluice::connect_check::topics(&topology));
    out(&report.text());
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
fn prepare(
    path: &std::path::Path,
) -> Result<(topology::Topology, tokio::runtime::Runtime), ExitCode> {
    sluice::telemetry::init_logging();
    let fail = |message: String| {
        eprintln!("{message}");
        ExitCode::FAILURE
    };
    let topology = topology::load(path).map_err(|e| fail(e.to_string()))?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
    Ok((topology, runtime))
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

fn replay(path: &std::path::Path, spec: sluice::replay::ReplaySpec) -> ExitCode {
    let (topology, runtime) = match prepare(path) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    let label = match &spec.target {
        sluice::replay::Target::Stage(name) => format!("replay {} -> stage {name}", spec.name),
        sluice::replay::Target::Shard(name) => format!("replay {} -> shard {name}", spec.name),
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        let progress = sluice::replay::progress_printer(label, std::time::Duration::from_secs(2));
        if topology.log.backend == LogBackend::Embedded {
            // A running `sluice run` holds the embedded log: hand it the replay.
            let log_file = topology.resolve_path(&topology.log.embedded.path);
            if let Some(stream) = sluice::replay_socket::connect(&log_file).await {
                eprintln!("the pipeline is running: the replay runs inside it");
                return sluice::replay_socket::request(
                    stream,
                    &spec,
                    Some(progress),
                    shutdown.token(),
                )
                .await
                .map_err(|e| e.to_string());
            }
        }
        let log = pipeline::open_log(&topology).map_err(|e| e.to_string())?;
        sluice::replay::replay(&topology, log, &spec, shutdown.token(), Some(progress))
            .await
            .map_err(|e| e.to_string())
    });
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

fn run(path: &std::path::Path, only: &[Part]) -> ExitCode {
    let (topology, runtime) = match prepare(path) {
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "sluice stopped with an error");
            eprintln!("sluice: {error}");
            ExitCode::FAILURE
        }
    }
}
