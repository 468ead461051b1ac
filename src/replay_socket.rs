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
//! The protocol is one JSON [`Request`] line from the client (a [`ReplaySpec`], its `rate`
//! included, and whether it is a dry run), then [`Reply`] lines from the process: progress,
//! and at last the outcome or the error; for a dry run, the plan ([`Reply::Planned`]) or the
//! error.

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

/// The one line from the replay command to the running process. A bare [`ReplaySpec`] is a
/// request too (`dry_run` defaults to false).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The replay.
    #[serde(flatten)]
    pub spec: ReplaySpec,
    /// Only compute and return the plan ([`plan_replay`]): nothing is read or written.
    #[serde(default)]
    pub dry_run: bool,
}

/// One line from the running process to the replay command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
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
    let Request { spec, dry_run } = match serde_json::from_str(&request) {
        Ok(request) => request,
        Err(error) => {
            let reply = Reply::Failed {
                error: format!("not a replay request: {error}"),
            };
            return send(&mut write, &reply).await;
        }
    };
    if dry_run {
        let reply = match plan_replay(topology, log, &spec).await {
            Ok(plan) => Reply::Planned(plan),
            Err(error) => Reply::Failed {
                error: error.to_string(),
            },
        };
        return send(&mut write, &reply).await;
    }
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
    let request = Request {
        spec: spec.clone(),
        dry_run: false,
    };
    let mut line = serde_json::to_vec(&request).map_err(ReplayError::Protocol)?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(lost)?;
    let mut lines = BufReader::new(read).lines();
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
            Ok(Reply::Planned(_)) => {
                return Err(ReplayError::Remote(
                    "the running sluice answered a plan to a replay".into(),
                ))
            }
            Err(error) => return Err(ReplayError::Protocol(error)),
        }
    }
}

/// Asks the running process on `stream` for the plan of `spec` (`--dry-run`): nothing is
/// read or written.
pub async fn plan_request(
    stream: UnixStream,
    spec: &ReplaySpec,
) -> Result<ReplayPlan, ReplayError> {
    let (read, mut write) = stream.into_split();
    let request = Request {
        spec: spec.clone(),
        dry_run: true,
    };
    let mut line = serde_json::to_vec(&request).map_err(ReplayError::Protocol)?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(ReplayError::Connection)?;
    let mut lines = BufReader::new(read).lines();
    loop {
        let next = lines
            .next_line()
            .await
            .map_err(ReplayError::Connection)?
            .ok_or(ReplayError::Closed)?;
        match serde_json::from_str::<Reply>(&next).map_err(ReplayError::Protocol)? {
            Reply::Planned(plan) => return Ok(plan),
            Reply::Failed { error } => return Err(ReplayError::Remote(error)),
            Reply::Progress { .. } | Reply::Finished(_) => {}
        }
    }
}
