//! The status page's graph: the topology's flow (see [`Topology::flow`]) as nodes laid out in
//! columns by depth, each edge with the counter that measures it and each consumer with its
//! consumer groups.

use std::collections::HashMap;

use serde::Serialize;
use sluice_core::telemetry;
use sluice_core::topology::NodeKind;

use crate::pipeline::Parts;
use crate::topology::Topology;

/// What a node of the drawing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The HTTP ingress.
    Ingress,
    /// A processing stage.
    Stage,
    /// A topic of the log.
    Topic,
    /// A shard's sink workers.
    Sink,
    /// A shard's database.
    Shard,
}

/// A consumer group a node reads in, whose lag the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    /// What it reads, for the page: `orders` or `rejections`.
    pub what: &'static str,
    /// The consumer group.
    pub group: String,
}

/// A box of the drawing.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Unique id, e.g. `stage:validate`, `topic:orders.raw`.
    pub id: String,
    /// What it is.
    pub kind: Kind,
    /// Its full name (stage, topic or shard name).
    pub name: String,
    /// What the page writes in the box (topics without the prefix all topics share).
    pub label: String,
    /// Depth from the ingress: the longest path of edges from a node nothing feeds.
    pub column: usize,
    /// Place in its column, from the top.
    pub row: usize,
    /// Whether this process runs the component (topics: always true).
    pub here: bool,
    /// Whether this is a dead-letter topic.
    pub dead_letter: bool,
    /// For a stage fused behind another (one task, see `sluice graph`): that stage's name.
    pub fused_behind: Option<String>,
    /// The consumer groups it reads in.
    #[serde(skip)]
    pub consumers: Vec<Consumer>,
}

/// The counter whose sum measures an edge (records that went along it).
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    /// Metric name.
    pub metric: &'static str,
    /// Labels the samples must have (the others are summed over).
    pub labels: Vec<(&'static str, String)>,
}

impl Measure {
    fn new(metric: &'static str, labels: &[(&'static str, &str)]) -> Self {
        Measure {
            metric,
            labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }
}

/// An arrow of the drawing.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// Id of the node it leaves.
    pub from: String,
    /// Id of the node it enters.
    pub to: String,
    /// What flows: `orders`, `reads`, `writes`, `rejects`, `sinks`, `rejections`, `stores`.
    pub label: &'static str,
    /// Whether it carries dead letters (highlighted when its rate is not zero).
    pub dead_letter: bool,
    /// The counter that measures it, if any.
    #[serde(skip)]
    pub measure: Option<Measure>,
}

/// The drawing of a topology.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// Prefix every topic name shares (left out of their labels), e.g. `prod.`.
    pub topic_prefix: String,
    /// Number of columns.
    pub columns: usize,
    /// The boxes.
    pub nodes: Vec<Node>,
    /// The arrows.
    pub edges: Vec<Edge>,
}

impl Graph {
    /// The graph of `topology`, marking the components `parts` runs in this process.
    pub fn new(topology: &Topology, parts: Parts) -> Self {
        let flow = topology.flow();
        let prefix = &topology.log.consumer_group_prefix;
        let dead_letters: Vec<&str> = flow
            .nodes
            .iter()
            .flat_map(|n| n.writes.iter().filter(|w| w.label == "rejects"))
            .map(|w| w.topic.as_str())
            .chain(topology.sink.rejections_topic.as_deref())
            .collect();
        let mut graph = Builder::default();
        for node in &flow.nodes {
            let (id, kind, here) = match node.kind {
                NodeKind::Ingress => ("ingress".to_string(), Kind::Ingress, parts.ingress),
                NodeKind::Stage => (
                    format!("stage:{}", node.name),
                    Kind::Stage,
                    parts.processors,
                ),
                NodeKind::Shard => (format!("sink:{}", node.name), Kind::Sink, parts.sinks),
            };
            let consumers = match node.kind {
                NodeKind::Ingress => vec![],
                // A stage fused behind another reads no topic: its chain's first stage does.
                NodeKind::Stage if topology.fused_feeder(&node.name).is_some() => vec![],
                NodeKind::Stage => vec![Consumer {
                    what: "orders",
                    group: format!("{prefix}.{}", node.name),
                }],
                NodeKind::Shard => node
                    .reads
                    .iter()
                    .map(|input| match input.label {
                        "rejections" => Consumer {
                            what: "rejections",
                            group: format!("{prefix}.sink.{}.sink.rejections", node.name),
                        },
                        _ => Consumer {
                            what: "orders",
                            group: format!("{prefix}.sink.{}.sink", node.name),
                        },
                    })
                    .collect(),
            };
            graph.node(&id, kind, &node.name, here, false, consumers);
            if node.kind == NodeKind::Stage {
                if let Some(feeder) = topology.fused_feeder(&node.name) {
                    let index = graph.index[&id];
                    graph.nodes[index].fused_behind = Some(feeder.name.clone());
                }
            }
            let main_outputs = node.writes.iter().filter(|w| w.feeds).count();
            for output in &node.writes {
                let topic =
                    graph.topic(&output.topic, dead_letters.contains(&output.topic.as_str()));
                let measure = match (node.kind, output.label) {
                    (NodeKind::Ingress, "orders") => Measure::new(telemetry::ORDERS_ACCEPTED, &[]),
                    (NodeKind::Ingress, _) => Measure::new(telemetry::LOGINS, &[]),
                    (NodeKind::Stage, "rejects") => Measure::new(
                        telemetry::STAGE_RECORDS_OUT,
                        &[("stage", &node.name), ("outcome", "dead_letter")],
                    ),
                    (NodeKind::Stage, _) if main_outputs == 1 => Measure::new(
                        telemetry::STAGE_RECORDS_OUT,
                        &[("stage", &node.name), ("outcome", "emitted")],
                    ),
                    // A stage that writes several topics (route): each topic's growth.
                    _ => Measure::new(telemetry::TOPIC_END_OFFSET, &[("topic", &output.topic)]),
                };
                graph.edge(
                    &id,
                    &topic,
                    output.label,
                    dead_letters.contains(&output.topic.as_str()),
                    Some(measure),
                );
            }
            for input in &node.reads {
                let topic = graph.topic(&input.topic, dead_letters.contains(&input.topic.as_str()));
                let measure = match node.kind {
                    NodeKind::Stage => {
                        Measure::new(telemetry::STAGE_RECORDS_IN, &[("stage", &node.name)])
                    }
                    _ => {
                        let table = match input.label {
                            "rejections" => "rejected_orders",
                            _ => "orders",
                        };
                        Measure::new(
                            telemetry::SINK_ROWS,
                            &[("shard", &node.name), ("table", table)],
                        )
                    }
                };
                let dead_letter = dead_letters.contains(&input.topic.as_str());
                graph.edge(&topic, &id, input.label, dead_letter, Some(measure));
            }
            if node.kind == NodeKind::Shard {
                let shard = format!("shard:{}", node.name);
                graph.node(&shard, Kind::Shard, &node.name, parts.sinks, false, vec![]);
                let measure = Measure::new(telemetry::SINK_ROWS, &[("shard", &node.name)]);
                graph.edge(&id, &shard, "stores", false, Some(measure));
            }
        }
        graph.finish()
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    edges: Vec<Edge>,
}

impl Builder {
    fn node(
        &mut self,
        id: &str,
        kind: Kind,
        name: &str,
        here: bool,
        dead_letter: bool,
        consumers: Vec<Consumer>,
    ) {
        if self.index.contains_key(id) {
            return;
        }
        self.index.insert(id.to_string(), self.nodes.len());
        self.nodes.push(Node {
            id: id.to_string(),
            kind,
            name: name.to_string(),
            label: name.to_string(),
            column: 0,
            row: 0,
            here,
            dead_letter,
            fused_behind: None,
            consumers,
        });
    }

    fn topic(&mut self, topic: &str, dead_letter: bool) -> String {
        let id = format!("topic:{topic}");
        self.node(&id, Kind::Topic, topic, true, dead_letter, vec![]);
        id
    }

    fn edge(
        &mut self,
        from: &str,
        to: &str,
        label: &'static str,
        dead_letter: bool,
        measure: Option<Measure>,
    ) {
        self.edges.push(Edge {
            from: from.to_string(),
            to: to.to_string(),
            label,
            dead_letter,
            measure,
        });
    }

    fn finish(mut self) -> Graph {
        // Longest path from a node nothing feeds; a valid flow has no cycle, and the bound on
        // the rounds keeps an invalid one from looping.
        let mut column = vec![0usize; self.nodes.len()];
        for _ in 0..self.nodes.len() {
            let mut changed = false;
            for edge in &self.edges {
                let (from, to) = (self.index[&edge.from], self.index[&edge.to]);
                if column[to] < column[from] + 1 {
                    column[to] = column[from] + 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let columns = column.iter().max().map_or(0, |c| c + 1);
        // Rows in declaration order, dead-letter topics at the bottom of their column.
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|&i| (column[i], self.nodes[i].dead_letter, i));
        let mut rows = vec![0usize; columns];
        for i in order {
            let node = &mut self.nodes[i];
            node.column = column[i];
            node.row = rows[column[i]];
            rows[column[i]] += 1;
        }
        let topic_prefix = common_prefix(
            self.nodes
                .iter()
                .filter(|n| n.kind == Kind::Topic)
                .map(|n| n.name.as_str()),
        );
        for node in &mut self.nodes {
            if node.kind == Kind::Topic {
                node.label = node.name[topic_prefix.len()..].to_string();
            }
        }
        Graph {
            topic_prefix,
            columns,
            nodes: self.nodes,
            edges: self.edges,
        }
    }
}

/// The longest prefix up to a `.` that every name shares and none is equal to.
fn common_prefix<'a>(mut names: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = names.next() else {
        return String::new();
    };
    let mut prefix = first;
    for name in names {
        while !name.starts_with(prefix) {
            let last = prefix.char_indices().last().map_or(0, |(i, _)| i);
            prefix = &prefix[..last];
        }
    }
    match prefix.rfind('.') {
        Some(dot) => prefix[..=dot].to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Topology {
        let text = include_str!("../../topology.toml")
            .replace("${SLUICE_LOG_BACKEND:-embedded}", "embedded");
        crate::topology::parse(&text, std::path::Path::new("topology.toml"), ".".into())
            .expect("the shipped topology is valid")
    }

    fn node<'a>(graph: &'a Graph, id: &str) -> &'a Node {
        graph
            .nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    #[test]
    fn lays_the_shipped_flow_out_in_columns_by_depth() {
        let graph = Graph::new(&shipped(), Parts::ALL);
        let column = |id: &str| node(&graph, id).column;
        assert_eq!(column("ingress"), 0);
        assert_eq!(column("topic:orders.raw"), 1);
        assert_eq!(column("topic:auth.logins"), 1);
        assert_eq!(column("stage:validate"), 2);
        assert_eq!(column("stage:enrich"), 4);
        assert_eq!(column("stage:route"), 6);
        assert_eq!(column("topic:orders.shard.0"), 7);
        // The dead-letter topic sits with the topics of the deepest stage that writes it,
        // below them.
        assert_eq!(column("topic:orders.dlq"), 7);
        assert_eq!(node(&graph, "topic:orders.dlq").row, 4);
        assert!(node(&graph, "topic:orders.dlq").dead_letter);
        assert_eq!(column("sink:shard3"), 8);
        assert_eq!(column("shard:shard3"), 9);
        assert_eq!(graph.columns, 10);
        assert_eq!(graph.topic_prefix, "");
        // Rows are unique within a column.
        let mut places: Vec<_> = graph.nodes.iter().map(|n| (n.column, n.row)).collect();
        places.sort();
        places.dedup();
        assert_eq!(places.len(), graph.nodes.len());
    }

    #[test]
    fn measures_each_edge_with_the_counter_of_its_records() {
        let graph = Graph::new(&shipped(), Parts::ALL);
        let measure = |from: &str, to: &str| {
            graph
                .edges
                .iter()
                .find(|e| e.from == from && e.to == to)
                .unwrap_or_else(|| panic!("no edge {from} -> {to}"))
                .measure
                .clone()
                .unwrap()
        };
        let m = measure("ingress", "topic:orders.raw");
        assert_eq!(m.metric, "sluice_orders_accepted_total");
        let m = measure("stage:validate", "topic:orders.dlq");
        assert_eq!(m.metric, "sluice_stage_records_out_total");
        assert!(m.labels.contains(&("outcome", "dead_letter".into())));
        let logins = graph
            .edges
            .iter()
            .find(|e| e.to == "topic:auth.logins")
            .unwrap();
        assert!(!logins.dead_letter, "login events are no dead letters");
        let m = measure("stage:route", "topic:orders.shard.2");
        assert_eq!(m.metric, telemetry::TOPIC_END_OFFSET);
        let m = measure("topic:orders.enriched", "stage:route");
        assert_eq!(m.metric, "sluice_stage_records_in_total");
        let m = measure("topic:orders.dlq", "sink:shard1");
        assert_eq!(
            m.labels,
            vec![
                ("shard", "shard1".into()),
                ("table", "rejected_orders".into())
            ]
        );
        let m = measure("sink:shard1", "shard:shard1");
        assert_eq!(m.labels, vec![("shard", "shard1".into())]);
        let groups: Vec<_> = node(&graph, "sink:shard1")
            .consumers
            .iter()
            .map(|c| c.group.as_str())
            .collect();
        assert_eq!(
            groups,
            [
                "sluice.sink.shard1.sink",
                "sluice.sink.shard1.sink.rejections"
            ]
        );
        assert_eq!(
            node(&graph, "stage:validate").consumers[0].group,
            "sluice.validate"
        );
        assert!(
            node(&graph, "stage:enrich").consumers.is_empty(),
            "enrich runs fused behind validate and reads no topic"
        );
        assert_eq!(
            node(&graph, "stage:enrich").fused_behind.as_deref(),
            Some("validate")
        );
        assert_eq!(node(&graph, "stage:validate").fused_behind, None);
    }

    #[test]
    fn marks_what_this_process_runs_and_strips_the_shared_topic_prefix() {
        let mut topology = shipped();
        let private = |t: &str| format!("t_x1.{t}");
        topology.topics = std::mem::take(&mut topology.topics)
            .into_iter()
            .map(|(name, config)| (private(&name), config))
            .collect();
        topology.ingress.orders_topic = private(&topology.ingress.orders_topic);
        topology.ingress.logins_topic = private(&topology.ingress.logins_topic);
        for stage in &mut topology.stages {
            stage.input = private(&stage.input);
            stage.dead_letter = private(&stage.dead_letter);
        }
        let graph = Graph::new(
            &topology,
            Parts {
                ingress: false,
                processors: true,
                sinks: false,
            },
        );
        assert!(!node(&graph, "ingress").here);
        assert!(node(&graph, "stage:enrich").here);
        assert!(!node(&graph, "sink:shard0").here);
        // The shard topics keep their names, so no prefix is shared.
        assert_eq!(graph.topic_prefix, "");
        assert_eq!(
            node(&graph, "topic:t_x1.orders.raw").label,
            "t_x1.orders.raw"
        );
        assert_eq!(common_prefix(["a.b.c", "a.b.d", "a.bx"].into_iter()), "a.");
        assert_eq!(common_prefix(["p.x", "p.y"].into_iter()), "p.");
        assert_eq!(common_prefix(["x"].into_iter()), "");
        assert_eq!(common_prefix(["é.a", "é.b", "éx"].into_iter()), "");
    }
}
