//! The live status page: `GET /status` draws the topology (ingress → topics → stages → shard
//! topics → sinks → shards, and the dead-letter topic) with each edge's rate and each
//! consumer's lag, refreshing itself from `GET /status.json` every second or two.
//!
//! Served on `[ops] listen`, and in development mode on the ingress listeners too (where
//! `/metrics` is). The page is plain HTML, CSS and JavaScript built into the binary: it loads
//! nothing from elsewhere. Its figures come from this process's own metrics (the Prometheus
//! exposition `/metrics` renders), so a process that runs only some parts shows what those
//! parts see, and a metric that does not exist shows as "–".

pub mod exposition;
pub mod graph;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use warp::reply::Response;
use warp::{Filter, Reply};

use sluice_core::telemetry::{BUILD_INFO, CONSUMER_LAG_RECORDS, CONSUMER_LAG_SECONDS};

use self::exposition::Samples;
use self::graph::{Edge, Graph, Node};
use crate::pipeline::Parts;
use crate::topology::Topology;

/// Rates are computed over at least this long; requests in between get the last answer.
pub const MIN_INTERVAL: Duration = Duration::from_millis(900);
/// A consumer is marked as falling behind when its lag (records) rose at each of this many
/// successive changes (the lag monitor updates it every few seconds)…
pub const GROWING_CHANGES: usize = 3;
/// …and its oldest unread record is at least this many seconds old.
pub const GROWING_MIN_SECONDS: f64 = 5.0;

static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("index.html")
        .replace("/*STYLE*/", include_str!("style.css"))
        .replace("/*SCRIPT*/", include_str!("app.js"))
});

/// The page's graph and the samples that rates and lag trends are computed from.
pub struct StatusPage {
    graph: Graph,
    parts: Parts,
    log_backend: String,
    mode: String,
    started: Instant,
    sampler: Mutex<Sampler>,
}

#[derive(Default)]
struct Sampler {
    previous: Option<(Instant, Vec<Option<f64>>)>,
    cached: Option<(Instant, Arc<String>)>,
    lag_history: HashMap<String, VecDeque<f64>>,
}

/// What `/status.json` answers.
#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    revision: Option<String>,
    uptime_seconds: u64,
    parts: PartsRun,
    mode: &'a str,
    log_backend: &'a str,
    /// Seconds the rates are computed over (`null` on the first sample).
    interval_seconds: Option<f64>,
    /// Whether this process reports consumer lag at all.
    lag_reported: bool,
    topic_prefix: &'a str,
    columns: usize,
    nodes: Vec<NodeStatus<'a>>,
    edges: Vec<EdgeStatus<'a>>,
}

#[derive(Serialize)]
struct PartsRun {
    ingress: bool,
    processors: bool,
    sinks: bool,
}

#[derive(Serialize)]
struct NodeStatus<'a> {
    #[serde(flatten)]
    node: &'a Node,
    lag: Vec<Lag<'a>>,
}

#[derive(Serialize)]
struct Lag<'a> {
    what: &'static str,
    group: &'a str,
    records: Option<f64>,
    seconds: Option<f64>,
    growing: bool,
}

#[derive(Serialize)]
struct EdgeStatus<'a> {
    #[serde(flatten)]
    edge: &'a Edge,
    total: Option<f64>,
    rate: Option<f64>,
}

impl StatusPage {
    /// The status page of `topology` for a process running `parts`.
    pub fn new(topology: &Topology, parts: Parts) -> Arc<Self> {
        Arc::new(StatusPage {
            graph: Graph::new(topology, parts),
            parts,
            log_backend: format!("{:?}", topology.log.backend).to_lowercase(),
            mode: format!("{:?}", topology.ingress.mode).to_lowercase(),
            started: Instant::now(),
            sampler: Mutex::default(),
        })
    }

    /// `GET /status` (the page) and `GET /status.json` (its data).
    pub fn routes(self: &Arc<Self>) -> BoxedFilter<(Response,)> {
        let page = warp::path!("status").and(warp::get()).map(|| {
            let mut response = PAGE.as_str().into_response();
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, "text/html; charset=utf-8".parse().unwrap());
            // Everything is inline; nothing may be loaded from elsewhere.
            headers.insert(
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:"
                    .parse()
                    .unwrap(),
            );
            response
        });
        let status = self.clone();
        let json = warp::path!("status.json").and(warp::get()).map(move || {
            let mut response = String::clone(&status.json()).into_response();
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
            headers.insert(CACHE_CONTROL, "no-store".parse().unwrap());
            response
        });
        page.or(json).unify().boxed()
    }

    /// The `/status.json` text now, from this process's metrics.
    pub fn json(&self) -> Arc<String> {
        let now = Instant::now();
        let mut sampler = self.sampler.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, text)) = &sampler.cached {
            if now.duration_since(*at) < MIN_INTERVAL {
                return text.clone();
            }
        }
        let exposition = sluice_ingress::prometheus::handle().render();
        let text = Arc::new(self.sample(&mut sampler, now, &exposition));
        sampler.cached = Some((now, text.clone()));
        text
    }

    /// Reads `exposition` taken at `now`: totals, rates since the previous sample, lags.
    fn sample(&self, sampler: &mut Sampler, now: Instant, exposition: &str) -> String {
        let wanted: Vec<&str> = self
            .graph
            .edges
            .iter()
            .filter_map(|e| e.measure.as_ref().map(|m| m.metric))
            .chain([CONSUMER_LAG_RECORDS, CONSUMER_LAG_SECONDS, BUILD_INFO])
            .collect();
        let samples = Samples(exposition::parse(exposition, |name| wanted.contains(&name)));
        let totals: Vec<Option<f64>> = self
            .graph
            .edges
            .iter()
            .map(|edge| {
                let measure = edge.measure.as_ref()?;
                let labels: Vec<(&str, &str)> = measure
                    .labels
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                samples.sum(measure.metric, &labels)
            })
            .collect();
        let (interval, rates) = match &sampler.previous {
            Some((at, previous)) => {
                let seconds = now.duration_since(*at).as_secs_f64();
                let rates = totals
                    .iter()
                    .zip(previous)
                    .map(|(now, before)| match (now, before) {
                        // A counter that went down restarted: no rate this time.
                        (Some(now), Some(before)) if now >= before && seconds > 0.0 => {
                            Some((now - before) / seconds)
                        }
                        _ => None,
                    })
                    .collect();
                (Some(seconds), rates)
            }
            None => (None, vec![None; totals.len()]),
        };
        let mut lag_reported = false;
        let nodes = self
            .graph
            .nodes
            .iter()
            .map(|node| NodeStatus {
                node,
                lag: node
                    .consumers
                    .iter()
                    .map(|consumer| {
                        let group = [("group", consumer.group.as_str())];
                        let records = samples.sum(CONSUMER_LAG_RECORDS, &group);
                        let seconds = samples.max(CONSUMER_LAG_SECONDS, &group);
                        lag_reported |= records.is_some() || seconds.is_some();
                        let history = sampler
                            .lag_history
                            .entry(consumer.group.clone())
                            .or_default();
                        match records {
                            Some(records) if history.back() != Some(&records) => {
                                history.push_back(records)
                            }
                            Some(_) => {}
                            None => history.clear(),
                        }
                        while history.len() > GROWING_CHANGES + 1 {
                            history.pop_front();
                        }
                        let growing = history.len() > GROWING_CHANGES
                            && history
                                .iter()
                                .zip(history.iter().skip(1))
                                .all(|(a, b)| b > a)
                            && seconds.is_some_and(|s| s >= GROWING_MIN_SECONDS);
                        Lag {
                            what: consumer.what,
                            group: &consumer.group,
                            records,
                            seconds,
                            growing,
                        }
                    })
                    .collect(),
            })
            .collect();
        let edges = self
            .graph
            .edges
            .iter()
            .zip(&totals)
            .zip(rates)
            .map(|((edge, total), rate)| EdgeStatus {
                edge,
                total: *total,
                rate,
            })
            .collect();
        let status = Status {
            version: env!("CARGO_PKG_VERSION"),
            revision: samples
                .first(BUILD_INFO)
                .and_then(|s| s.label("revision"))
                .map(str::to_string),
            uptime_seconds: now.duration_since(self.started).as_secs(),
            parts: PartsRun {
                ingress: self.parts.ingress,
                processors: self.parts.processors,
                sinks: self.parts.sinks,
            },
            mode: &self.mode,
            log_backend: &self.log_backend,
            interval_seconds: interval,
            lag_reported,
            topic_prefix: &self.graph.topic_prefix,
            columns: self.graph.columns,
            nodes,
            edges,
        };
        let text =
            serde_json::to_string(&status).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        sampler.previous = Some((now, totals));
        text
    }
}

#[cfg(test)]
mod tests;
