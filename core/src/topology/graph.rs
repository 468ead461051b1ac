//! Renders a topology as a Mermaid or Graphviz DOT flowchart (`sluice graph`).

use std::fmt::Write;

use super::model::Topology;

/// Output format of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    /// Mermaid `flowchart LR`.
    Mermaid,
    /// Graphviz DOT `digraph`.
    Dot,
}

/// The edges of the flow: `(from, to, label)`, nodes named `topic:x`, `stage:x`, `shard:x`.
fn edges(topology: &Topology) -> Vec<(String, String, &'static str)> {
    let mut edges = vec![
        (
            "ingress".to_string(),
            format!("topic:{}", topology.ingress.orders_topic),
            "orders",
        ),
        (
            "ingress".to_string(),
            format!("topic:{}", topology.ingress.logins_topic),
            "logins",
        ),
    ];
    for stage in &topology.stages {
        let node = format!("stage:{}", stage.name);
        edges.push((format!("topic:{}", stage.input), node.clone(), "reads"));
        for output in topology.stage_outputs(stage) {
            edges.push((node.clone(), format!("topic:{output}"), "writes"));
        }
        edges.push((node, format!("topic:{}", stage.dead_letter), "rejects"));
    }
    for shard in &topology.shards {
        edges.push((
            format!("topic:{}", shard.topic),
            format!("shard:{}", shard.name),
            "sinks",
        ));
    }
    if let Some(rejections) = &topology.sink.rejections_topic {
        for shard in &topology.shards {
            edges.push((
                format!("topic:{rejections}"),
                format!("shard:{}", shard.name),
                "rejections",
            ));
        }
    }
    edges
}

fn id(node: &str) -> String {
    node.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn label(node: &str) -> String {
    match node.split_once(':') {
        Some(("topic", name)) => name.to_string(),
        Some(("stage", name)) => format!("stage {name}"),
        Some(("shard", name)) => format!("shard {name}"),
        _ => node.to_string(),
    }
}

/// Renders the flow of `topology` in `format`.
pub fn render(topology: &Topology, format: GraphFormat) -> String {
    let edges = edges(topology);
    let mut nodes: Vec<&String> = edges.iter().flat_map(|(a, b, _)| [a, b]).collect();
    nodes.sort();
    nodes.dedup();
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for node in &nodes {
                let shape = match node.split_once(':').map(|p| p.0) {
                    Some("topic") => ("[(", ")]"),
                    Some("shard") => ("[(", ")]"),
                    _ => ("[", "]"),
                };
                let _ = writeln!(
                    out,
                    "    {}{}\"{}\"{}",
                    id(node),
                    shape.0,
                    label(node),
                    shape.1
                );
            }
            for (from, to, what) in &edges {
                let _ = writeln!(out, "    {} -->|{what}| {}", id(from), id(to));
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph sluice {\n    rankdir=LR;\n");
            for node in &nodes {
                let shape = if node.starts_with("stage:") || node.as_str() == "ingress" {
                    "box"
                } else {
                    "cylinder"
                };
                let _ = writeln!(
                    out,
                    "    {} [label=\"{}\", shape={shape}];",
                    id(node),
                    label(node)
                );
            }
            for (from, to, what) in &edges {
                let _ = writeln!(out, "    {} -> {} [label=\"{what}\"];", id(from), id(to));
            }
            out.push_str("}\n");
        }
    }
    out
}
