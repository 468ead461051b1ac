//! The data flow of a topology: which component reads and writes which topic. Validation
//! checks it (every required input is fed, stages do not cycle) and `sluice graph` draws it as
//! a Mermaid or Graphviz DOT flowchart.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::Issues;

/// What a node of the flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeKind {
    /// The HTTP ingress.
    Ingress,
    /// A processing stage.
    Stage,
    /// A shard's sink worker.
    Shard,
}

/// A topic a node reads.
#[derive(Debug, Clone)]
pub struct Input {
    /// The topic.
    pub topic: String,
    /// Edge label in the drawing, e.g. `reads`.
    pub label: &'static str,
    /// When some other node must write this topic: the field that names it (issues are
    /// reported at `<node location>.<field>`) and a hint on how to feed it.
    pub must_be_fed: Option<(&'static str, &'static str)>,
}

/// A topic a node writes.
#[derive(Debug, Clone)]
pub struct Output {
    /// The topic.
    pub topic: String,
    /// Edge label in the drawing, e.g. `writes`.
    pub label: &'static str,
    /// Whether this is the node's main output, which feeds the next stage (dead letters and
    /// login events are not: they never count as feeding an input, nor as a cycle).
    pub feeds: bool,
}

/// One component of the flow.
#[derive(Debug, Clone)]
pub struct FlowNode {
    /// What it is.
    pub kind: NodeKind,
    /// Its name (the stage or shard name).
    pub name: String,
    /// Where it is declared, e.g. `stages[1] "enrich"`.
    pub at: String,
    /// The topics it reads.
    pub reads: Vec<Input>,
    /// The topics it writes.
    pub writes: Vec<Output>,
}

impl FlowNode {
    /// A node with no edges yet.
    pub fn new(kind: NodeKind, name: impl Into<String>, at: impl Into<String>) -> Self {
        FlowNode {
            kind,
            name: name.into(),
            at: at.into(),
            reads: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// Adds a topic this node reads, which nothing needs to feed.
    pub fn reads(mut self, topic: &str, label: &'static str) -> Self {
        self.reads.push(Input {
            topic: topic.to_string(),
            label,
            must_be_fed: None,
        });
        self
    }

    /// Adds a topic this node reads, named by `field`, which another node must write;
    /// `hint` says how to feed it.
    pub fn reads_fed(
        mut self,
        topic: &str,
        label: &'static str,
        field: &'static str,
        hint: &'static str,
    ) -> Self {
        self.reads.push(Input {
            topic: topic.to_string(),
            label,
            must_be_fed: Some((field, hint)),
        });
        self
    }

    /// Adds a topic this node writes; `feeds` says whether it is a main output.
    pub fn writes(mut self, topic: &str, label: &'static str, feeds: bool) -> Self {
        self.writes.push(Output {
            topic: topic.to_string(),
            label,
            feeds,
        });
        self
    }

    fn id(&self) -> String {
        let prefix = match self.kind {
            NodeKind::Ingress => return "ingress".into(),
            NodeKind::Stage => "stage",
            NodeKind::Shard => "shard",
        };
        sanitize(&format!("{prefix}_{}", self.name))
    }

    fn label(&self) -> String {
        match self.kind {
            NodeKind::Ingress => "ingress".into(),
            NodeKind::Stage => format!("stage {}", self.name),
            NodeKind::Shard => format!("shard {}", self.name),
        }
    }
}

/// Output format of [`Flow::render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    /// Mermaid `flowchart LR`.
    Mermaid,
    /// Graphviz DOT `digraph`.
    Dot,
}

/// Every component of a topology and the topics between them.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// The components, in file order.
    pub nodes: Vec<FlowNode>,
}

impl Flow {
    /// Checks that every input that must be fed is written by some node, and that main
    /// outputs do not form a cycle.
    pub fn check(&self, issues: &mut Issues) {
        let fed: BTreeSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.writes.iter().filter(|w| w.feeds))
            .map(|w| w.topic.as_str())
            .collect();
        for node in &self.nodes {
            for input in &node.reads {
                if let Some((field, hint)) = input.must_be_fed {
                    if !fed.contains(input.topic.as_str()) {
                        issues.push(
                            format!("{}.{field}", node.at),
                            format!("nothing writes topic {:?}; {hint}", input.topic),
                        );
                    }
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            issues.push(
                "stages",
                format!("stages form a cycle: {}", cycle.join(" -> ")),
            );
        }
    }

    /// The names along a cycle of main outputs, if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        // Edge a -> b when node a's main output is a topic node b reads.
        let edges: Vec<Vec<usize>> = self
            .nodes
            .iter()
            .map(|node| {
                self.nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, next)| {
                        node.writes
                            .iter()
                            .filter(|w| w.feeds)
                            .any(|w| next.reads.iter().any(|r| r.topic == w.topic))
                    })
                    .map(|(j, _)| j)
                    .collect()
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        fn visit(
            node: usize,
            edges: &[Vec<usize>],
            marks: &mut [Mark],
            path: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            marks[node] = Mark::Active;
            path.push(node);
            for &next in &edges[node] {
                match marks[next] {
                    Mark::Active => {
                        let start = path.iter().position(|&n| n == next).unwrap_or(0);
                        let mut cycle = path[start..].to_vec();
                        cycle.push(next);
                        return Some(cycle);
                    }
                    Mark::New => {
                        if let Some(cycle) = visit(next, edges, marks, path) {
                            return Some(cycle);
                        }
                    }
                    Mark::Done => {}
                }
            }
            path.pop();
            marks[node] = Mark::Done;
            None
        }
        let mut marks = vec![Mark::New; edges.len()];
        for node in 0..edges.len() {
            if marks[node] == Mark::New {
                if let Some(cycle) = visit(node, &edges, &mut marks, &mut Vec::new()) {
                    return Some(
                        cycle
                            .into_iter()
                            .map(|i| self.nodes[i].name.clone())
                            .collect(),
                    );
                }
            }
        }
        None
    }

    /// Draws the flow in `format`: components as boxes or cylinders, topics as cylinders.
    pub fn render(&self, format: GraphFormat) -> String {
        self.render_chains(format, &[])
    }

    /// Draws the flow like [`Flow::render`], with each chain of fused stages in a box of its
    /// own and the topics its stages hand over without writing drawn as direct edges.
    pub fn render_chains(&self, format: GraphFormat, chains: &[ChainDrawing]) -> String {
        // (from id, to id, label), and id → (label, is a box).
        let mut edges = Vec::new();
        let mut nodes = std::collections::BTreeMap::new();
        for node in &self.nodes {
            let id = node.id();
            nodes.insert(id.clone(), (node.label(), node.kind != NodeKind::Shard));
            for input in &node.reads {
                let topic = topic_id(&input.topic);
                nodes.insert(topic.clone(), (input.topic.clone(), false));
                edges.push((topic, id.clone(), input.label));
            }
            for output in &node.writes {
                let topic = topic_id(&output.topic);
                nodes.insert(topic.clone(), (output.topic.clone(), false));
                edges.push((id.clone(), topic, output.label));
            }
        }
        let chains: Vec<&ChainDrawing> = chains.iter().filter(|c| c.stages.len() > 1).collect();
        for chain in &chains {
            for pair in chain.stages.windows(2) {
                let (from, to) = (stage_id(&pair[0]), stage_id(&pair[1]));
                let topic = edges
                    .iter()
                    .find(|(f, t, _)| *f == from && edges.iter().any(|e| e.0 == *t && e.1 == to))
                    .map(|(_, t, _)| t.clone());
                let Some(topic) = topic else { continue };
                let name = nodes.get(&topic).map(|(label, _)| label.clone());
                if name.is_some_and(|name| chain.skipped.contains(&name)) {
                    edges.retain(|(f, t, _)| *f != topic && *t != topic);
                    nodes.remove(&topic);
                    edges.push((from, to, "fused"));
                }
            }
        }
        let mut out = String::new();
        match format {
            GraphFormat::Mermaid => {
                out.push_str("flowchart LR\n");
                for (id, (label, is_box)) in &nodes {
                    let (open, close) = if *is_box { ("[", "]") } else { ("[(", ")]") };
                    let _ = writeln!(out, "    {id}{open}\"{label}\"{close}");
                }
                for (index, chain) in chains.iter().enumerate() {
                    let _ = writeln!(out, "    subgraph chain_{index}[\"{}\"]", chain.label());
                    for stage in &chain.stages {
                        let _ = writeln!(out, "        {}", stage_id(stage));
                    }
                    out.push_str("    end\n");
                }
                for (from, to, what) in &edges {
                    let _ = writeln!(out, "    {from} -->|{what}| {to}");
                }
            }
            GraphFormat::Dot => {
                out.push_str("digraph sluice {\n    rankdir=LR;\n");
                for (id, (label, is_box)) in &nodes {
                    let shape = if *is_box { "box" } else { "cylinder" };
                    let _ = writeln!(out, "    {id} [label=\"{label}\", shape={shape}];");
                }
                for (index, chain) in chains.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "    subgraph cluster_chain_{index} {{\n        label=\"{}\";\n        style=dashed;",
                        chain.label()
                    );
                    for stage in &chain.stages {
                        let _ = writeln!(out, "        {};", stage_id(stage));
                    }
                    out.push_str("    }\n");
                }
                for (from, to, what) in &edges {
                    let _ = writeln!(out, "    {from} -> {to} [label=\"{what}\"];");
                }
                out.push_str("}\n");
            }
        }
        out
    }
}

/// Stages fused into one task, for [`Flow::render_chains`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDrawing {
    /// The stages' names, first to last.
    pub stages: Vec<String>,
    /// The topics between its stages that are handed over without being written.
    pub skipped: Vec<String>,
}

impl ChainDrawing {
    /// The box's title: `one task: validate → enrich → route`.
    fn label(&self) -> String {
        format!("one task: {}", self.stages.join(" → "))
    }
}

fn stage_id(stage: &str) -> String {
    sanitize(&format!("stage_{stage}"))
}

fn topic_id(topic: &str) -> String {
    sanitize(&format!("topic_{topic}"))
}

fn sanitize(node: &str) -> String {
    node.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
