//! Builds and runs the components of a topology: ingress, stage runners, shard sinks.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::log::{self, Log, LogError};
use sluice_core::retry::{Retry, Verdict};
use sluice_core::shutdown::Shutdown;

use crate::topology::{LogBackend, Topology};
use sluice_ingress::{Ingress, Reloader};
use sluice_processors::{run_chain, StageRunner};
use sluice_sinks::{open_shard, run_sink_worker, ShardLookup, ShardWriter, SinkWorker};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Which components this process runs (`sluice run --only …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The HTTP ingress.
    pub ingress: bool,
    /// The stage runners.
    pub processors: bool,
    /// The shard sink workers.
    pub sinks: bool,
}

impl Parts {
    /// Every component in one process.
    pub const ALL: Parts = Parts {
        ingress: true,
        processors: true,
        sinks: true,
    };
    /// The ingress alone.
    pub const INGRESS: Parts = Parts {
        ingress: true,
        processors: false,
        sinks: false,
    };
}

/// Listeners bound by the caller (tests bind port 0); `None` binds the topology's addresses.
pub struct Listeners {
    /// Serves `/login` (and everything when `order` is `None`).
    pub login: TcpListener,
    /// Serves `/order`.
    pub order: Option<TcpListener>,
}

/// Why the pipeline could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The log could not be opened or prepared.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// The ingress could not be set up.
    #[error(transparent)]
    Ingress(#[from] sluice_ingress::IngressError),
    /// A listener could not be bound.
    #[error(
        "cannot listen on {address}: {source}; is another process using the port? change {field}"
    )]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Which setting.
        field: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A shard could not be set up.
    #[error(transparent)]
    Shard(#[from] sluice_sinks::SinkError),
    /// Stages could not be built.
    #[error(transparent)]
    Stages(#[from] sluice_processors::BuildError),
    /// A component failed while running (see the logs).
    #[error("a component failed; see the log lines above")]
    ComponentFailed,
}

/// Opens one shard backend per `[[shards]]` entry, in topology order.
pub fn open_shards(topology: &Topology) -> Result<Vec<Arc<dyn ShardWriter>>, PipelineError> {
    topology
        .shards
        .iter()
        .map(|s| Ok(open_shard(&s.name, &s.url, &topology.base_dir)?))
        .collect()
}

impl From<crate::listeners::BindError> for PipelineError {
    fn from(error: crate::listeners::BindError) -> Self {
        PipelineError::Bind {
            address: error.address,
            field: error.field,
            source: error.source,
        }
    }
}

/// Every listener a process serves, obtained before the log is opened: so a process that
/// replaces a running one holds the addresses (and new connections wait in their accept
/// queues) while it waits for the embedded log.
pub struct Bound {
    ingress: Option<Listeners>,
    ops: Option<TcpListener>,
    offer: Option<crate::listeners::Offer>,
}

/// Takes over the listeners `parts` of `topology` serve from the process running on the same
/// addresses, or binds them (see [`crate::listeners`]): the ingress's `login_listen` and
/// `order_listen` when `parts` has the ingress, and `[ops] listen`.
pub async fn obtain_listeners(topology: &Topology, parts: Parts) -> Result<Bound, PipelineError> {
    let ingress = &topology.ingress;
    let mut wanted = Vec::new();
    if parts.ingress {
        wanted.push(("ingress.login_listen", ingress.login_listen));
        if ingress.order_listen != ingress.login_listen {
            wanted.push(("ingress.order_listen", ingress.order_listen));
        }
    }
    if let Some(address) = topology.ops.listen {
        wanted.push(("ops.listen", address));
    }
    let obtained = crate::listeners::obtain(&wanted).await?;
    let mut listeners = obtained.listeners.into_iter();
    let ingress = if parts.ingress {
        let login = listeners.next().expect("one listener per address");
        let order = (ingress.order_listen != ingress.login_listen)
            .then(|| listeners.next().expect("one listener per address"));
        Some(Listeners { login, order })
    } else {
        None
    };
    Ok(Bound {
        ingress,
        ops: listeners.next(),
        offer: Some(obtained.offer),
    })
}

/// Opens the log a topology names (call within a Tokio runtime). Installs the metrics
/// recorder first, so the log's metric handles count.
pub fn open_log(topology: &Topology) -> Result<Arc<dyn Log>, PipelineError> {
    sluice_ingress::prometheus::handle();
    Ok(topology.log.open(&topology.base_dir)?)
}

/// [`open_log`], waiting while another process holds the embedded log (the process this one
/// replaces, until it has drained): logs "waiting for the embedded log held by pid …" and
/// tries again every 100 ms, with no time limit.
pub async fn open_log_when_free(topology: &Topology) -> Result<Arc<dyn Log>, PipelineError> {
    if topology.log.backend != LogBackend::Embedded {
        return open_log(topology);
    }
    sluice_ingress::prometheus::handle();
    let log = topology
        .log
        .embedded
        .open_when_free(&topology.base_dir, Duration::from_millis(100))
        .await?;
    Ok(Arc::new(log))
}

/// Runs `parts` of `topology` over `log` until `shutdown` is triggered (or a component fails), then
/// drains: the ingress finishes in-flight requests, stages and sinks finish and commit
/// their batch, and the producer flushes.
pub async fn run(
    topology: Topology,
    log: Arc<dyn Log>,
    parts: Parts,
    listeners: Option<Listeners>,
    shutdown: Shutdown,
) -> Result<(), PipelineError> {
    let bound = match listeners {
        None => obtain_listeners(&topology, parts).await?,
        Some(listeners) => {
            let ops = match topology.ops.listen {
                Some(address) => crate::listeners::obtain(&[("ops.listen", address)])
                    .await?
                    .listeners
                    .pop(),
                None => None,
            };
            Bound {
                ingress: Some(listeners),
                ops,
                offer: None,
            }
        }
    };
    run_bound(topology, log, parts, bound, shutdown).await
}

/// [`run`] on listeners obtained beforehand ([`obtain_listeners`]); they are offered to a
/// process that replaces this one until `shutdown`.
pub async fn run_bound(
    topology: Topology,
    log: Arc<dyn Log>,
    parts: Parts,
    bound: Bound,
    shutdown: Shutdown,
) -> Result<(), PipelineError> {
    // Install the metrics recorder before anything counts.
    sluice_ingress::prometheus::handle();
    log::ensure_declared_topics(log.as_ref(), &topology.topics).await?;
    // Every append of this process (ingress and stages) is timed per topic.
    let log: Arc<dyn Log> = Arc::new(log::MeteredLog::new(log, topology.topics.keys().cloned()));
    let shards = open_shards(&topology)?;
    let shard_map = topology
        .shard_map()
        .ok_or(sluice_processors::BuildError::ShardMap)?;
    let mut tasks = JoinSet::new();
    let status = crate::status::StatusPage::new(&topology, parts);

    if let Some(listener) = bound.ops {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%address, "operations listener up");
        let (log, status, token) = (log.clone(), status.clone(), shutdown.token());
        // Probes see the drain as the ingress's clients do.
        let delay = if parts.ingress {
            topology.ingress.drain_delay()
        } else {
            Duration::ZERO
        };
        tasks.spawn(async move {
            crate::ops::serve(listener, log, status, token, delay).await;
            ("ops listener".to_string(), Ok(()))
        });
    }

    if parts.processors || parts.sinks {
        // The lag of this process's consumers, over every declared topic.
        let topics = topology.topics.keys().cloned().collect();
        let interval = Duration::from_millis(topology.ops.lag_interval_ms);
        let (log, token) = (log.clone(), shutdown.token());
        tasks.spawn(async move {
            sluice_core::lag::run_monitor(log, topics, interval, token).await;
            ("lag monitor".to_string(), Ok(()))
        });
    }
    {
        // The build and process figures.
        let token = shutdown.token();
        tasks.spawn(async move {
            crate::process_metrics::run(token).await;
            ("process metrics".to_string(), Ok(()))
        });
    }

    if topology.log.backend == LogBackend::Embedded {
        // The log file serves this process only: replays of it come here over a socket.
        let socket =
            crate::replay_socket::socket_path(&topology.resolve_path(&topology.log.embedded.path));
        let (topology, log, token) = (topology.clone(), log.clone(), shutdown.token());
        tasks.spawn(async move {
            if let Err(error) = crate::replay_socket::serve(socket.clone(), topology, log, token.clone()).await {
                tracing::warn!(socket = %socket.display(), %error, "no replay socket: `sluice replay` needs this process stopped");
                token.cancelled().await;
            }
            ("replay socket".to_string(), Ok(()))
        });
    }

    if parts.ingress
        && topology.ops.listen.is_none()
        && topology.ingress.mode == sluice_ingress::Mode::Production
    {
        tracing::warn!("production mode serves /metrics and the reasons of /readyz only on [ops] listen, which is not set: set it to a private address to scrape this process");
    }

    if parts.ingress {
        let lookup = Arc::new(ShardLookup::new(shard_map.clone(), shards.clone()));
        let ingress = Ingress::new(
            topology.ingress.clone(),
            &topology.base_dir,
            log.clone(),
            lookup,
        )
        .await?
        .with_ops_routes(status.routes());
        reload_on_hangup(
            ingress.reloader(),
            topology.source.clone(),
            shutdown.token(),
        );
        let Some(listeners) = bound.ingress else {
            unreachable!("listeners are obtained for the ingress when it runs")
        };
        tracing::info!(
            login = %listeners.login.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            order = %listeners.order.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_else(|| "same".into()),
            "ingress listening"
        );
        let token = shutdown.token();
        tasks.spawn(async move {
            ingress.serve(listeners.login, listeners.order, token).await;
            ("ingress".to_string(), Ok(()))
        });
    }

    if parts.processors {
        // Records stages left between them before they were fused, found and processed
        // beside the live tasks, so that nothing here holds up the start.
        let (leftovers, leftover_log, token) = (topology.clone(), log.clone(), shutdown.token());
        tasks.spawn(async move {
            let task = "leftover records".to_string();
            let result = process_leftovers(&leftovers, leftover_log, &token).await;
            if result.is_ok() {
                // Done: it waits for the shutdown like the live tasks.
                token.cancelled().await;
            }
            (task, result)
        });
        for chain in topology.chains()? {
            let runner =
                StageRunner::from_config(chain.head(), &topology.log.consumer_group_prefix);
            let (log, token) = (log.clone(), shutdown.token());
            let name = match chain.links().len() {
                1 => format!("stage {}", chain.describe()),
                _ => format!("stages {}", chain.describe()),
            };
            tasks.spawn(async move {
                let result = run_chain(log, Arc::new(chain), runner, token, None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                (name, result)
            });
        }
    }

    if parts.sinks {
        for (index, (config, shard)) in topology.shards.iter().zip(&shards).enumerate() {
            for worker in SinkWorker::live_workers(
                config,
                index,
                &topology.sink,
                &topology.log.consumer_group_prefix,
            ) {
                let (log, writer, map, token) = (
                    log.clone(),
                    shard.clone(),
                    shard_map.clone(),
                    shutdown.token(),
                );
                let name = match worker.rejections_topic {
                    Some(_) => format!("sink {} (rejections)", config.name),
                    None => format!("sink {}", config.name),
                };
                tasks.spawn(async move {
                    let result = run_sink_worker(log, writer, map, worker, token, None)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    (name, result)
                });
            }
        }
    }

    if let Some(offer) = bound.offer {
        // Until this process drains, a process started on the same addresses takes the
        // listeners over from it.
        tokio::spawn(offer.serve(shutdown.token()));
    }
    tracing::info!(pid = std::process::id(), "sluice is serving");

    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, Ok(()))) => {
                if !shutdown.is_triggered() {
                    shutdown.fail(&name, &"stopped unexpectedly");
                }
            }
            Ok((name, Err(error))) => shutdown.fail(&name, &error),
            Err(panic) => shutdown.fail("task", &panic),
        }
    }
    if let Err(error) = log.flush(Duration::from_secs(10)).await {
        tracing::warn!(%error, "producer flush incomplete");
    }
    for shard in shards {
        shard.close().await;
    }
    if shutdown.has_failed() {
        Err(PipelineError::ComponentFailed)
    } else {
        tracing::info!("pipeline drained; bye");
        Ok(())
    }
}

/// Finds the records stages left between them before they were fused (trying again while
/// the log is away) and takes them through the rest of their chains.
async fn process_leftovers(
    topology: &Topology,
    log: Arc<dyn Log>,
    token: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let drains = Retry::new(log::POLL_BACKOFF)
        .cancel_on(token)
        .run(
            || leftover_drains(topology, log.as_ref()),
            |_| Verdict::Retry,
            |error, _| {
                tracing::warn!(%error, "cannot look for records left between fused stages; retrying")
            },
        )
        .await;
    // Only a stop ends the retries.
    let Ok(drains) = drains else {
        return Ok(());
    };
    for (name, runner, chain) in drains {
        let records = run_chain(log.clone(), Arc::new(chain), runner, token.clone(), None)
            .await
            .map_err(|error| error.to_string())?;
        if !token.is_cancelled() {
            tracing::info!(
                stage = name,
                records,
                "records left by the stage's earlier runs are processed"
            );
        }
    }
    Ok(())
}

/// Bounded runs for the records a stage left in its input topic when it ran as a task of its
/// own, now that it runs fused behind the stage that feeds it (an upgrade, or `chain` turned
/// on): the fused stage no longer reads that topic, so from the position its consumer group
/// committed to the end the topic has now, those records go through the stage and the stages
/// after it in its chain, and the group's position moves on. Only for a feeder that does not
/// write the topic any more (`write_output = false`): anything there is left over.
async fn leftover_drains(
    topology: &Topology,
    log: &dyn Log,
) -> Result<Vec<(String, StageRunner, sluice_processors::Chain)>, PipelineError> {
    let prefix = &topology.log.consumer_group_prefix;
    let mut drains = Vec::new();
    for chain in topology.chain_plan() {
        for pair in chain.windows(2) {
            let (feeder, fused) = (&topology.stages[pair[0]], &topology.stages[pair[1]]);
            if feeder.write_output {
                continue;
            }
            let mut runner = StageRunner::from_config(fused, prefix);
            let mut consumer = log.consumer(&runner.group).await?;
            let mut bounds = Vec::new();
            for partition in 0..log.partition_count(&fused.input).await? as i32 {
                let committed = consumer.committed(&fused.input, partition).await?;
                let (low, end) = log.watermarks(&fused.input, partition).await?;
                bounds.push((partition, committed, low, end));
            }
            // A group that never committed never ran: a new deployment has nothing left over.
            // One that did reads a partition it never committed in from its beginning, as
            // the stage would have.
            let ran = bounds
                .iter()
                .any(|(_, committed, _, _)| committed.is_some());
            let mut assignments = Vec::new();
            let mut ends = std::collections::BTreeMap::new();
            for (partition, committed, low, end) in bounds {
                let start = committed.unwrap_or(low);
                if ran && start < end {
                    assignments.push(log::Assignment {
                        topic: fused.input.clone(),
                        partition,
                        start: log::StartFrom::Resume(start),
                    });
                    ends.insert(partition, end);
                }
            }
            consumer.close().await;
            if assignments.is_empty() {
                continue;
            }
            tracing::warn!(
                stage = fused.name,
                topic = fused.input,
                partitions = assignments.len(),
                "the stage now runs fused behind {:?}, and its input topic holds records it has not processed: processing them first",
                feeder.name
            );
            runner.assignments = Some(assignments);
            runner.stop_at = Some(ends);
            let rest = topology
                .chain_from(&fused.name)?
                .expect("the stage is in the topology's plan");
            drains.push((fused.name.clone(), runner, rest));
        }
    }
    Ok(drains)
}

/// Reloads token keys and users on SIGHUP, until `stop`.
fn reload_on_hangup(
    reloader: Reloader,
    topology: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; keys and users reload only on restart");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = hangups.recv() => {
                    // The `[ingress.auth]` settings are read again when the file is known.
                    let path = topology.clone();
                    let read_auth = move || -> Result<_, sluice_ingress::BoxError> {
                        if path.as_os_str().is_empty() {
                            return Ok(None);
                        }
                        Ok(Some(crate::topology::load(&path)?.ingress.auth))
                    };
                    if let Err(error) = reloader.reload(read_auth).await {
                        tracing::error!(%error, "reload failed; the previous keys and users stay in force");
                    }
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (reloader, topology, stop);
}
