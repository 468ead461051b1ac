//! Pure validation of a parsed topology. It never connects to anything and reports every
//! problem at once, each with the place in the file to change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::model::{parse_price_minor, LogBackend, StageKind, Topology};

/// One problem in a topology: where it is and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where in the file, e.g. `stages[1] "enrich".input`.
    pub at: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

struct Issues(Vec<Issue>);

impl Issues {
    fn push(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            at: at.into(),
            message: message.into(),
        });
    }
}

/// Checks `topology` and returns every issue found (empty when it is valid).
pub fn validate(topology: &Topology) -> Vec<Issue> {
    let mut issues = Issues(Vec::new());
    check_log(topology, &mut issues);
    check_topics(topology, &mut issues);
    check_ingress(topology, &mut issues);
    check_stages(topology, &mut issues);
    check_catalog(topology, &mut issues);
    check_shards(topology, &mut issues);
    check_sink(topology, &mut issues);
    check_flow(topology, &mut issues);
    issues.0
}

fn declared(topology: &Topology, topic: &str, at: String, issues: &mut Issues) {
    if !topology.topics.contains_key(topic) {
        let known: Vec<_> = topology.topics.keys().map(String::as_str).collect();
        issues.push(
            at,
            format!(
                "topic {topic:?} is not declared; add [topics.\"{topic}\"] or use one of: {}",
                known.join(", ")
            ),
        );
    }
}

fn check_log(topology: &Topology, issues: &mut Issues) {
    match topology.log.backend {
        LogBackend::Kafka if topology.log.brokers.trim().is_empty() => issues.push(
            "log.brokers",
            "the Kafka backend needs bootstrap servers, e.g. \"127.0.0.1:9092\"",
        ),
        LogBackend::Embedded if topology.log.path.as_os_str().is_empty() => issues.push(
            "log.path",
            "the embedded backend needs a file, e.g. \"data/log.redb\"",
        ),
        _ => {}
    }
    if topology.log.retention_hours == Some(0) || topology.log.retention_records == Some(0) {
        issues.push(
            "log",
            "retention_hours and retention_records must be at least 1 (leave them out for no limit)",
        );
    }
    if topology.log.consumer_group_prefix.trim().is_empty() {
        issues.push("log.consumer_group_prefix", "must not be empty");
    }
}

fn check_topics(topology: &Topology, issues: &mut Issues) {
    for (name, topic) in &topology.topics {
        if topic.partitions == 0 {
            issues.push(
                format!("topics.\"{name}\".partitions"),
                "must be at least 1",
            );
        }
        if topic.replication == 0 {
            issues.push(
                format!("topics.\"{name}\".replication"),
                "must be at least 1",
            );
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            issues.push(
                format!("topics.\"{name}\""),
                "topic names may only use letters, digits, '.', '_' and '-'",
            );
        }
    }
}

fn check_ingress(topology: &Topology, issues: &mut Issues) {
    let ingress = &topology.ingress;
    declared(
        topology,
        &ingress.orders_topic,
        "ingress.orders_topic".into(),
        issues,
    );
    declared(
        topology,
        &ingress.logins_topic,
        "ingress.logins_topic".into(),
        issues,
    );
    check_keys(&ingress.auth, issues);
    if ingress.auth.token_ttl_secs == 0 {
        issues.push("ingress.auth.token_ttl_secs", "must be at least 1");
    }
    if ingress.max_body_bytes == 0 {
        issues.push("ingress.max_body_bytes", "must be at least 1");
    }
    if ingress.ack_timeout_ms == 0 {
        issues.push("ingress.ack_timeout_ms", "must be at least 1");
    }
    let limits = &ingress.rate_limits;
    for (name, quota) in [
        ("orders_per_principal", limits.orders_per_principal),
        ("orders_per_address", limits.orders_per_address),
        ("logins_per_address", limits.logins_per_address),
        ("logins_per_user", limits.logins_per_user),
    ] {
        if (quota.per_second == 0) == (quota.per_minute == 0) || quota.burst == 0 {
            issues.push(
                format!("ingress.rate_limits.{name}"),
                "give exactly one of per_second or per_minute, and a burst, all at least 1",
            );
        }
    }
}

fn check_keys(auth: &super::model::AuthConfig, issues: &mut Issues) {
    use super::model::JwtAlgorithm;
    let mut kids = BTreeSet::new();
    if let Some(secret) = &auth.jwt_secret {
        kids.insert("default");
        if secret.is_empty() {
            issues.push(
                "ingress.auth.jwt_secret",
                "must not be empty; set it or SLUICE_JWT_SECRET",
            );
        }
    }
    for (index, key) in auth.keys.iter().enumerate() {
        let at = format!("ingress.auth.keys[{index}] {:?}", key.kid);
        if key.kid.is_empty() || !kids.insert(key.kid.as_str()) {
            issues.push(
                format!("{at}.kid"),
                "key ids must be unique and not empty (jwt_secret is kid \"default\")",
            );
        }
        match key.algorithm {
            JwtAlgorithm::HS256 => {
                if key.secret.as_deref().unwrap_or_default().is_empty() {
                    issues.push(format!("{at}.secret"), "an HS256 key needs a secret");
                }
                if key.public_key_file.is_some() || key.private_key_file.is_some() {
                    issues.push(at.clone(), "an HS256 key takes a secret, not key files");
                }
            }
            JwtAlgorithm::EdDSA | JwtAlgorithm::RS256 => {
                if key.public_key_file.is_none() {
                    issues.push(
                        format!("{at}.public_key_file"),
                        "EdDSA and RS256 keys need a PEM public key file",
                    );
                }
                if key.secret.is_some() {
                    issues.push(
                        format!("{at}.secret"),
                        "EdDSA and RS256 keys use key files, not a secret",
                    );
                }
            }
        }
    }
    if kids.is_empty() {
        issues.push(
            "ingress.auth",
            "configure a token key: jwt_secret, or at least one [[ingress.auth.keys]]",
        );
    }
    if let Some(kid) = &auth.signing_kid {
        match auth.keys.iter().find(|k| &k.kid == kid) {
            None if kid == "default" && auth.jwt_secret.is_some() => {}
            None => issues.push(
                "ingress.auth.signing_kid",
                format!("no key has kid {kid:?}"),
            ),
            Some(key) if key.algorithm != JwtAlgorithm::HS256 && key.private_key_file.is_none() => {
                issues.push(
                    "ingress.auth.signing_kid",
                    format!("key {kid:?} has no private_key_file, so it cannot sign"),
                )
            }
            Some(_) => {}
        }
    }
}

fn check_stages(topology: &Topology, issues: &mut Issues) {
    let mut names = BTreeSet::new();
    for (index, stage) in topology.stages.iter().enumerate() {
        let at = format!("stages[{index}] {:?}", stage.name);
        if stage.name.trim().is_empty() {
            issues.push(format!("stages[{index}].name"), "must not be empty");
        } else if !names.insert(stage.name.as_str()) {
            issues.push(
                format!("{at}.name"),
                "another stage has the same name; stage names must be unique",
            );
        }
        declared(topology, &stage.input, format!("{at}.input"), issues);
        declared(
            topology,
            &stage.dead_letter,
            format!("{at}.dead_letter"),
            issues,
        );
        match (stage.kind, &stage.output) {
            (StageKind::Route, Some(_)) => issues.push(
                format!("{at}.output"),
                "a route stage writes to the shards' topics; remove `output`",
            ),
            (StageKind::Route, None) => {}
            (_, None) => issues.push(
                format!("{at}.output"),
                "this stage kind needs an `output` topic",
            ),
            (_, Some(output)) => {
                declared(topology, output, format!("{at}.output"), issues);
                if output == &stage.input {
                    issues.push(
                        format!("{at}.output"),
                        "a stage cannot write to the topic it reads",
                    );
                }
            }
        }
        if stage.dead_letter == stage.input {
            issues.push(
                format!("{at}.dead_letter"),
                "a stage cannot dead-letter into the topic it reads",
            );
        }
        if stage.batch_size == 0 {
            issues.push(format!("{at}.batch_size"), "must be at least 1");
        }
        match (&stage.rules, stage.kind) {
            (Some(_), kind) if kind != StageKind::Validate => issues.push(
                format!("{at}.rules"),
                "only validate stages take rules; remove [stages.rules]",
            ),
            (Some(rules), _) => {
                if rules.min_quantity > rules.max_quantity {
                    issues.push(
                        format!("{at}.rules"),
                        format!(
                            "min_quantity {} is above max_quantity {}",
                            rules.min_quantity, rules.max_quantity
                        ),
                    );
                }
                if let Err(error) = regex::Regex::new(&rules.user_id_pattern) {
                    issues.push(
                        format!("{at}.rules.user_id_pattern"),
                        format!("not a valid regular expression: {error}"),
                    );
                }
            }
            _ => {}
        }
    }
}

fn check_catalog(topology: &Topology, issues: &mut Issues) {
    let enriches = topology.stages.iter().any(|s| s.kind == StageKind::Enrich);
    if enriches && topology.catalog.is_empty() {
        issues.push(
            "catalog",
            "an enrich stage needs at least one product under [catalog]",
        );
    }
    for (product, entry) in &topology.catalog {
        if let Err(message) = parse_price_minor(&entry.price) {
            issues.push(format!("catalog.\"{product}\".price"), message);
        }
        if entry.currency.len() != 3 || !entry.currency.chars().all(|c| c.is_ascii_uppercase()) {
            issues.push(
                format!("catalog.\"{product}\".currency"),
                format!(
                    "{:?} is not a three-letter ISO 4217 code such as \"EUR\"",
                    entry.currency
                ),
            );
        }
    }
}

fn check_shards(topology: &Topology, issues: &mut Issues) {
    let buckets = topology.sharding.buckets;
    if buckets == 0 {
        issues.push("sharding.buckets", "must be at least 1");
        return;
    }
    if topology.shards.is_empty() {
        issues.push("shards", "declare at least one [[shards]] entry");
        return;
    }
    let mut names = BTreeSet::new();
    let mut topics = BTreeSet::new();
    let mut owner: Vec<Option<&str>> = vec![None; buckets as usize];
    for (index, shard) in topology.shards.iter().enumerate() {
        let at = format!("shards[{index}] {:?}", shard.name);
        if !names.insert(shard.name.as_str()) {
            issues.push(
                format!("{at}.name"),
                "another shard has the same name; shard names must be unique",
            );
        }
        if !topics.insert(shard.topic.as_str()) {
            issues.push(
                format!("{at}.topic"),
                "another shard reads the same topic; each shard needs its own",
            );
        }
        declared(topology, &shard.topic, format!("{at}.topic"), issues);
        if !shard.url.starts_with("mysql://") && !shard.url.starts_with("sqlite://") {
            issues.push(
                format!("{at}.url"),
                "must be mysql://user:password@host:3306/database or sqlite://path/to/shard.db",
            );
        }
        if shard.buckets.last >= buckets {
            issues.push(
                format!("{at}.buckets"),
                format!(
                    "range {} goes past the last bucket {} (sharding.buckets = {buckets})",
                    shard.buckets,
                    buckets - 1
                ),
            );
            continue;
        }
        for bucket in shard.buckets.first..=shard.buckets.last {
            if let Some(other) = owner[bucket as usize] {
                issues.push(
                    format!("{at}.buckets"),
                    format!("bucket {bucket} is also owned by shard {other:?}"),
                );
                break;
            }
            owner[bucket as usize] = Some(shard.name.as_str());
        }
    }
    for (first, last) in uncovered_runs(&owner) {
        issues.push(
            "shards",
            format!(
                "buckets {first}-{last} belong to no shard; extend a range so that 0-{} is covered",
                buckets - 1
            ),
        );
    }
}

fn uncovered_runs(owner: &[Option<&str>]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (bucket, slot) in owner.iter().enumerate() {
        match (slot, start) {
            (None, None) => start = Some(bucket),
            (Some(_), Some(first)) => {
                runs.push((first, bucket - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        runs.push((first, owner.len() - 1));
    }
    runs
}

fn check_sink(topology: &Topology, issues: &mut Issues) {
    if topology.sink.max_rows == 0 {
        issues.push("sink.max_rows", "must be at least 1");
    }
    if topology.sink.max_wait_ms == 0 {
        issues.push("sink.max_wait_ms", "must be at least 1");
    }
    if let Some(topic) = &topology.sink.rejections_topic {
        declared(topology, topic, "sink.rejections_topic".into(), issues);
    }
}

/// The data flow: every stage input and shard topic must be fed, and stages must not cycle.
fn check_flow(topology: &Topology, issues: &mut Issues) {
    let mut producers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    producers
        .entry(&topology.ingress.orders_topic)
        .or_default()
        .push("the ingress".into());
    let outputs: Vec<(usize, Vec<String>)> = topology
        .stages
        .iter()
        .enumerate()
        .map(|(i, stage)| (i, topology.stage_outputs(stage)))
        .collect();
    for (index, topics) in &outputs {
        for topic in topics {
            producers
                .entry(topic.as_str())
                .or_default()
                .push(format!("stage {:?}", topology.stages[*index].name));
        }
    }
    for (index, stage) in topology.stages.iter().enumerate() {
        if !producers.contains_key(stage.input.as_str()) {
            issues.push(
                format!("stages[{index}] {:?}.input", stage.name),
                format!("nothing writes topic {:?}; point it at the ingress orders topic or another stage's output", stage.input),
            );
        }
    }
    for (index, shard) in topology.shards.iter().enumerate() {
        if !topology.stages.iter().any(|s| s.kind == StageKind::Route) {
            issues.push(
                format!("shards[{index}] {:?}.topic", shard.name),
                "no route stage writes the shard topics; add a stage with kind = \"route\"",
            );
            break;
        }
    }
    if let Some(cycle) = find_cycle(topology, &outputs) {
        issues.push(
            "stages",
            format!("stages form a cycle: {}", cycle.join(" -> ")),
        );
    }
}

fn find_cycle(topology: &Topology, outputs: &[(usize, Vec<String>)]) -> Option<Vec<String>> {
    // Edge a -> b when stage a writes the topic stage b reads.
    let edges: Vec<Vec<usize>> = outputs
        .iter()
        .map(|(_, topics)| {
            topology
                .stages
                .iter()
                .enumerate()
                .filter(|(_, next)| topics.contains(&next.input))
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
                        .map(|i| topology.stages[i].name.clone())
                        .collect(),
                );
            }
        }
    }
    None
}
