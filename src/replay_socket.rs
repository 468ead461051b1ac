//! Replays handed to the running process, for the embedded log.
//!
//! The embedded log is a file that one process holds, so a second `sluice replay` process
//! cannot open it while `sluice run` is up. Instead the running process listens on a Unix
//! socket beside the log file (`<log file>.replay.sock`, mode 0600, and every connection's
//! peer must be the user running sluice) and runs the replays handed to it there, under their
//! own positions as always, one at a time per name and target. `sluice replay` connects to the socket when it finds one, and prints
//! the progress streamed back. Closing the connection (Ctrl-C on the command) cancels the
//! replay, which the same command resumes later.
//!
//! The protocol is one JSON [`Request`] line from the client, tagged with what it asks for:
//! `{"replay": <ReplaySpec>}` or `{"plan": <ReplaySpec>}` (`--dry-run`). The tag is what makes
//! it safe across versions: a process from an older build expects a bare [`ReplaySpec`] and
//! refuses a tagged line (its `from`, `target` and `name` are missing), so it can never take a
//! dry run for a replay or drop `rate`; and [`ReplaySpec`] refuses fields it does not know.
//! The process answers with [`Reply::Accepted`], echoing the options it took, then [`Reply`]
//! lines: progress and at last the outcome or the error; for a plan, the plan
//! ([`Reply::Planned`]) or the error. The client drops the connection (which cancels
//! anything started) on any reply it does not expect, and says the pipeline is older.
//!
//! A bare [`ReplaySpec`] line (from a `sluice replay` of an older build) is still served as a
//! replay, with that build's replies (no [`Reply::Accepted`]); with unknown fields (an older
//! build's `dry_run`) it is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::topology::Topology;
use serde::{Deserialize, Serialize};
use sluice_core::log::Log;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::replay::{
    plan_replay, replay, ProgressFn, ReplayError, ReplayOutcome, ReplayPlan, ReplaySpec,
    ShardPositions,
};

/// Longest request line accepted on the socket.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How long a client has to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket of the process that holds the embedded log at `log_file`.
pub fn socket_path(log_file: &Path) -> PathBuf {
    let mut name = log_file.as_os_str().to_owned();
    name.push(".replay.sock");
    PathBuf::from(name)
}

/// The one line from the replay command to the running process, tagged with what it asks
/// for (see the module's documentation for why it is not a bare [`ReplaySpec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run the replay.
    Replay(ReplaySpec),
    /// Only compute and return the plan ([`plan_replay`], `--dry-run`): nothing is read or
    /// written.
    Plan(ReplaySpec),
}

impl Request {
    /// The options the process takes with this request, as [`Reply::Accepted`] echoes them.
    pub fn accepted(&self) -> Accepted {
        match self {
            Request::Replay(spec) => Accepted {
                dry_run: false,
                rate: spec.rate,
            },
            Request::Plan(spec) => Accepted {
                dry_run: true,
                rate: spec.rate,
            },
        }
    }
}

/// The options the process took, echoed before it starts ([`Reply::Accepted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    /// Whether only the plan is computed.
    pub dry_run: bool,
    /// The pace of the reads, in records per second (none: unpaced).
    pub rate: Option<std::num::NonZeroU32>,
}

/// A request line as the process reads it: a tagged [`Request`], or the bare [`ReplaySpec`]
/// of an older `sluice replay` (a replay; refused if it has fields this build does not know).
fn parse_request(line: &str) -> Result<(Request, bool), serde_json::Error> {
    match serde_json::from_str::<Request>(line) {
        Ok(request) => Ok((request, false)),
        Err(error) => match serde_json::from_str::<ReplaySpec>(line) {
            Ok(spec) => Ok((Request::Replay(spec), true)),
            Err(_) => Err(error),
        },
    }
}

/// One line from the running process to the replay command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request was understood, with these options; the work starts.
    Accepted(Accepted),
    /// Records done so far, of the records to do.
    Progress {
        /// Records delivered to the target.
        done: u64,
        /// Records the replay has to cover.
        total: u64,
    },
    /// The replay ended (complete, or cancelled because the connection closed).
    Finished(ReplayOutcome),
    /// The plan of a dry run.
    Planned(ReplayPlan),
    /// The replay could not run.
    Failed {
        /// What went wrong, for the user.
        error: String,
    },
}

/// Serves replay requests on `path` for the pipeline running `topology` over `log`, until
/// `stop`; replays still running then are cancelled (and resume when run again).
pub async fn serve(
    path: PathBuf,
    topology: Topology,
    log: Arc<dyn Log>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // This process holds the log file, so a socket left here belongs to a process that died.
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    let owner = restrict_to_owner(&path)?;
    tracing::info!(socket = %path.display(), "replay socket up");
    let topology = Arc::new(topology);
    let running = Arc::new(Mutex::new(HashSet::new()));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (topology, log, stop, running) =
                        (topology.clone(), log.clone(), stop.clone(), running.clone());
                    connections.spawn(async move {
                        if let Err(error) = handle(stream, owner, &topology, log, stop, &running).await {
                            tracing::warn!(%error, "replay connection failed");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "replay socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Replays in progress were cancelled with `stop`: let them store their positions and
    // tell their clients how far they got.
    while connections.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Makes the socket the owner's only and returns the owner's uid. The mode is set just after
/// the socket is created, so connections are also checked against the uid (see [`handle`]).
fn restrict_to_owner(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(std::fs::metadata(path)?.uid())
}

/// Marks a replay as running for as long as it lives.
struct RunningReplay<'a> {
    running: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for RunningReplay<'_> {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Runs the one replay a connection asks for, streaming its progress back. Only the socket
/// owner's processes are served, and one replay of a given name and target at a time.
async fn handle(
    stream: UnixStream,
    owner: u32,
    topology: &Topology,
    log: Arc<dyn Log>,
    stop: CancellationToken,
    running: &Mutex<HashSet<String>>,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if peer != owner {
        let error =
            format!("replays are for the user running sluice (uid {owner}), not uid {peer}");
        return send(&mut write, &Reply::Failed { error }).await;
    }
    let mut read = BufReader::new(read.take(MAX_REQUEST_BYTES));
    let mut request = String::new();
    let received = tokio::time::timeout(REQUEST_TIMEOUT, read.read_line(&mut request)).await;
    if !matches!(received, Ok(Ok(_))) || !request.ends_with('\n') {
        let error = format!(
            "send the replay as one JSON line ending in a newline, of at most {MAX_REQUEST_BYTES} bytes, within {REQUEST_TIMEOUT:?}"
        );
        return send(&mut write, &Reply::Failed { error }).await;
    }
    let (request, legacy) = match parse_request(&request) {
        Ok(parsed) => parsed,
        Err(error) => {
            let reply = Reply::Failed {
                error: format!("not a replay request: {error}"),
            };
            return send(&mut write, &reply).await;
        }
    };
    let accepted = request.accepted();
    let spec = match request {
        Request::Replay(spec) => spec,
        Request::Plan(spec) => {
            send(&mut write, &Reply::Accepted(accepted)).await?;
            let reply = match plan_replay(topology, log, &spec, ShardPositions::Read).await {
                Ok(plan) => Reply::Planned(plan),
                Err(error) => Reply::Failed {
                    error: error.to_string(),
                },
            };
            return send(&mut write, &reply).await;
        }
    };
    let key = format!("{:?} {}", spec.target, spec.name);
    if !running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.clone())
    {
        let error = format!(
            "replay {:?} into {:?} is already running; wait for it, or stop it first",
            spec.name, spec.target
        );
        return send(&mut write, &Reply::Failed { error }).await;
    }
    let running_guard = RunningReplay { running, key };
    // An older client knows no `accepted` reply: it gets only what its build knows.
    if !legacy {
        send(&mut write, &Reply::Accepted(accepted)).await?;
    }
    tracing::info!(name = spec.name, target = ?spec.target, rate = ?spec.rate, "replay requested over the socket");
    let cancel = stop.child_token();
    // The client sends nothing more: the end of its stream means it went away.
    let mut rest = read.into_inner().into_inner();
    let watch = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut sink = [0u8; 64];
            while matches!(rest.read(&mut sink).await, Ok(n) if n > 0) {}
            cancel.cancel();
        })
    };
    // Only the latest progress matters: a slow client skips updates instead of queueing them.
    let (progress_tx, mut progress_rx) = watch::channel((0, 0));
    let progress: ProgressFn = Arc::new(move |done, total| {
        progress_tx.send_replace((done, total));
    });
    let run = replay(topology, log, &spec, cancel.clone(), Some(progress));
    tokio::pin!(run);
    let mut sent = (0, 0);
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            Ok(()) = progress_rx.changed() => {
                sent = *progress_rx.borrow_and_update();
                let (done, total) = sent;
                if send(&mut write, &Reply::Progress { done, total }).await.is_err() {
                    cancel.cancel(); // the client is gone; the replay stops and can resume
                }
            }
        }
    };
    // The last update may have come with the end of the run: the client still sees it.
    let latest = *progress_rx.borrow();
    if latest != sent {
        let (done, total) = latest;
        let _ = send(&mut write, &Reply::Progress { done, total }).await;
    }
    watch.abort();
    // No longer running once the client learns the outcome, so it may start the next one.
    drop(running_guard);
    let reply = match result {
        Ok(outcome) => Reply::Finished(outcome),
        Err(error) => Reply::Failed {
            error: error.to_string(),
        },
    };
    send(&mut write, &reply).await
}

async fn send(write: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Connects to the process holding the embedded log at `log_file`, if one is listening.
pub async fn connect(log_file: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(log_file)).await.ok()
}

/// Sends `request` on `write` as one line.
async fn send_request(
    write: &mut (impl AsyncWriteExt + Unpin),
    request: &Request,
) -> Result<(), ReplayError> {
    let mut line = serde_json::to_vec(request).map_err(ReplayError::Protocol)?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(ReplayError::Connection)
}

/// The first reply to `request`, which must be [`Reply::Accepted`] with the options sent.
/// Anything else comes from an older process (or a broken one): [`ReplayError::OlderPipeline`]
/// (the caller then drops the connection, which cancels whatever that process started), except
/// a [`Reply::Failed`] refusal that is not about the request's shape (say, the wrong user),
/// which is [`ReplayError::Remote`].
fn check_accepted(request: &Request, line: Option<String>) -> Result<(), ReplayError> {
    let action = match request {
        Request::Replay(_) => "replay",
        Request::Plan(_) => "dry-run",
    };
    let older = ReplayError::OlderPipeline { action };
    let line = line.ok_or(ReplayError::Closed)?;
    match serde_json::from_str::<Reply>(&line) {
        Ok(Reply::Accepted(accepted)) if accepted == request.accepted() => Ok(()),
        Ok(Reply::Failed { error }) if !error.starts_with("not a replay request") => {
            Err(ReplayError::Remote(error))
        }
        _ => Err(older),
    }
}

/// Hands `spec` to the running process on `stream` and follows it to its end, reporting
/// progress. When `interrupt` fires, the connection's sending side closes, which cancels the
/// replay in the process; its outcome (not complete) still comes back.
pub async fn request(
    stream: UnixStream,
    spec: &ReplaySpec,
    progress: Option<ProgressFn>,
    interrupt: CancellationToken,
) -> Result<ReplayOutcome, ReplayError> {
    let lost = ReplayError::Connection;
    let (read, mut write) = stream.into_split();
    let request = Request::Replay(spec.clone());
    send_request(&mut write, &request).await?;
    let mut lines = BufReader::new(read).lines();
    // Returning drops the connection, which cancels whatever the process started.
    check_accepted(&request, lines.next_line().await.map_err(lost)?)?;
    let mut write = Some(write);
    loop {
        let next = tokio::select! {
            next = lines.next_line() => next.map_err(lost)?,
            _ = interrupt.cancelled(), if write.is_some() => {
                if let Some(mut write) = write.take() {
                    let _ = write.shutdown().await;
                }
                continue;
            }
        };
        let Some(next) = next else {
            return Err(ReplayError::Closed);
        };
        match serde_json::from_str::<Reply>(&next) {
            Ok(Reply::Progress { done, total }) => {
                if let Some(progress) = &progress {
                    progress(done, total);
                }
            }
            Ok(Reply::Finished(outcome)) => return Ok(outcome),
            Ok(Reply::Failed { error }) => return Err(ReplayError::Remote(error)),
            Ok(Reply::Planned(_) | Reply::Accepted(_)) => {
                return Err(ReplayError::OlderPipeline { action: "replay" })
            }
            Err(error) => return Err(ReplayError::Protocol(error)),
        }
    }
}

/// Asks the running process on `stream` for the plan of `spec` (`--dry-run`): nothing is
/// read or written. Any reply but [`Reply::Accepted`] (as a dry run) and then the plan or an
/// error drops the connection at once, so a process that took the request for a replay
/// cancels it, and fails with [`ReplayError::OlderPipeline`].
pub async fn plan_request(
    stream: UnixStream,
    spec: &ReplaySpec,
) -> Result<ReplayPlan, ReplayError> {
    let (read, mut write) = stream.into_split();
    let request = Request::Plan(spec.clone());
    send_request(&mut write, &request).await?;
    let mut lines = BufReader::new(read).lines();
    let next = lines.next_line().await.map_err(ReplayError::Connection)?;
    check_accepted(&request, next)?;
    let next = lines
        .next_line()
        .await
        .map_err(ReplayError::Connection)?
        .ok_or(ReplayError::Closed)?;
    match serde_json::from_str::<Reply>(&next) {
        Ok(Reply::Planned(plan)) => Ok(plan),
        Ok(Reply::Failed { error }) => Err(ReplayError::Remote(error)),
        _ => Err(ReplayError::OlderPipeline { action: "dry-run" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{Bound, Target};

    /// The request of a process from before `--rate` and `--dry-run`: a bare spec, without
    /// `deny_unknown_fields`.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct BareSpec {
        topic: Option<String>,
        from: Bound,
        to: Option<Bound>,
        target: Target,
        name: String,
    }

    /// The request of the build that first took `rate` and `dry_run`: both as extra fields
    /// next to the flattened spec.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct FlatRequest {
        #[serde(flatten)]
        spec: BareSpec,
        #[serde(default)]
        rate: Option<std::num::NonZeroU32>,
        #[serde(default)]
        dry_run: bool,
    }

    fn spec(rate: Option<u32>) -> ReplaySpec {
        ReplaySpec {
            topic: None,
            from: Bound::Offset(3),
            to: Some(Bound::Time(1_000)),
            target: Target::Shard("s0".into()),
            name: "backfill".into(),
            rate: rate.and_then(std::num::NonZeroU32::new),
        }
    }

    fn line(request: &Request) -> String {
        serde_json::to_string(request).unwrap()
    }

    #[test]
    fn older_processes_refuse_dry_runs_and_paced_replays() {
        for request in [
            Request::Plan(spec(None)),
            Request::Plan(spec(Some(50))),
            Request::Replay(spec(Some(50))),
            Request::Replay(spec(None)),
        ] {
            let line = line(&request);
            let bare = serde_json::from_str::<BareSpec>(&line);
            assert!(bare.is_err(), "an old process would take {line}: {bare:?}");
            let flat = serde_json::from_str::<FlatRequest>(&line);
            assert!(flat.is_err(), "an old process would take {line}: {flat:?}");
        }
    }

    #[test]
    fn requests_round_trip_and_are_tagged() {
        let plan = Request::Plan(spec(Some(7)));
        let text = line(&plan);
        assert!(text.starts_with(r#"{"plan":{"#), "{text}");
        assert_eq!(parse_request(&text).unwrap(), (plan.clone(), false));
        assert_eq!(
            plan.accepted(),
            Accepted {
                dry_run: true,
                rate: std::num::NonZeroU32::new(7)
            }
        );
        let replay = Request::Replay(spec(None));
        assert!(line(&replay).starts_with(r#"{"replay":{"#));
        assert_eq!(parse_request(&line(&replay)).unwrap(), (replay, false));
    }

    #[test]
    fn unknown_fields_are_refused_and_bare_specs_are_replays() {
        // An older client's bare spec is a replay (served with its build's replies).
        let bare =
            r#"{"topic":null,"from":"beginning","to":null,"target":{"shard":"s0"},"name":"b"}"#;
        let (request, legacy) = parse_request(bare).unwrap();
        assert!(legacy);
        assert!(matches!(request, Request::Replay(ref s) if s.rate.is_none()));
        // The previous build's dry run (an extra `dry_run` field) is refused, never run.
        let flat = r#"{"topic":null,"from":"beginning","to":null,"target":{"shard":"s0"},"name":"b","rate":5,"dry_run":true}"#;
        assert!(parse_request(flat).is_err());
        // So is any option this build does not know, in a tagged request or next to it.
        let unknown = r#"{"plan":{"topic":null,"from":"beginning","to":null,"target":{"shard":"s0"},"name":"b","burst":9}}"#;
        assert!(parse_request(unknown).is_err());
        let beside = r#"{"plan":{"topic":null,"from":"beginning","to":null,"target":{"shard":"s0"},"name":"b"},"dry_run":false}"#;
        assert!(parse_request(beside).is_err());
    }

    #[test]
    fn only_the_echo_of_the_options_sent_lets_the_client_go_on() {
        let plan = Request::Plan(spec(Some(5)));
        let reply = |reply: Reply| Some(serde_json::to_string(&reply).unwrap());
        assert!(check_accepted(&plan, reply(Reply::Accepted(plan.accepted()))).is_ok());
        let older = |result: Result<(), ReplayError>| {
            matches!(
                result,
                Err(ReplayError::OlderPipeline { action: "dry-run" })
            )
        };
        // A process that took the plan for a replay, or dropped the rate.
        assert!(older(check_accepted(
            &plan,
            reply(Reply::Progress { done: 0, total: 9 })
        )));
        assert!(older(check_accepted(
            &plan,
            reply(Reply::Finished(ReplayOutcome {
                records: 9,
                total: 9,
                complete: true
            }))
        )));
        assert!(older(check_accepted(
            &plan,
            reply(Reply::Accepted(Accepted {
                dry_run: false,
                rate: std::num::NonZeroU32::new(5)
            }))
        )));
        assert!(older(check_accepted(
            &plan,
            reply(Reply::Accepted(Accepted {
                dry_run: true,
                rate: None
            }))
        )));
        // An older process refusing the tagged line, or answering something unknown.
        assert!(older(check_accepted(
            &plan,
            reply(Reply::Failed {
                error: "not a replay request: missing field `from` at line 1 column 90".into()
            })
        )));
        assert!(older(check_accepted(
            &plan,
            Some(r#"{"planned2":1}"#.into())
        )));
        // A refusal that is not about the request's shape is the process's own error.
        assert!(matches!(
            check_accepted(
                &plan,
                reply(Reply::Failed {
                    error: "replays are for the user running sluice (uid 1), not uid 2".into()
                })
            ),
            Err(ReplayError::Remote(_))
        ));
        let message = ReplayError::OlderPipeline { action: "dry-run" }.to_string();
        assert_eq!(
            message,
            "the running pipeline is an older Sluice; restart it or stop it to dry-run"
        );
    }

    /// A process that runs whatever it is sent as a replay (as an older build did with a
    /// dry run): the dry-run client drops the connection at its first progress line, so the
    /// process sees the end of the stream (and cancels) instead of running to the end.
    #[tokio::test]
    async fn a_dry_run_hangs_up_on_a_process_that_starts_a_replay() {
        let (client, server) = UnixStream::pair().unwrap();
        let old_process = tokio::spawn(async move {
            let (read, mut write) = server.into_split();
            let mut read = BufReader::new(read);
            let mut request = String::new();
            read.read_line(&mut request).await.unwrap();
            for done in 0..1000u64 {
                let reply = Reply::Progress { done, total: 1000 };
                if send(&mut write, &reply).await.is_err() {
                    return Some(done);
                }
                // The client's end of the stream is the cancel signal.
                let mut rest = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(5), read.read(&mut rest)).await
                {
                    return Some(done);
                }
            }
            None
        });
        let error = plan_request(client, &spec(None)).await.unwrap_err();
        assert!(
            matches!(error, ReplayError::OlderPipeline { action: "dry-run" }),
            "{error}"
        );
        let cancelled_at = old_process.await.unwrap();
        assert!(
            matches!(cancelled_at, Some(done) if done < 10),
            "the client kept the connection open: {cancelled_at:?}"
        );
    }
}
