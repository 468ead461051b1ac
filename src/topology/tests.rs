//! Topology validation: the shipped file is valid, and each mistake is named precisely.

use std::path::{Path, PathBuf};

use super::*;

const SHIPPED: &str = include_str!("../../topology.toml");

fn parse_text(text: &str) -> Result<Topology, TopologyError> {
    parse(text, Path::new("topology.toml"), PathBuf::from("."))
}

fn issues_of(text: &str) -> Vec<String> {
    match parse_text(text) {
        Err(TopologyError::Invalid { issues, .. }) => {
            issues.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected validation issues, got: {other}"),
        Ok(_) => panic!("expected validation issues, the topology was accepted"),
    }
}

fn assert_issue(issues: &[String], needle: &str) {
    assert!(
        issues.iter().any(|i| i.contains(needle)),
        "no issue containing {needle:?} in {issues:#?}"
    );
}

#[test]
fn shipped_topology_is_valid() {
    let topology = parse_text(SHIPPED).expect("the shipped topology.toml must be valid");
    assert_eq!(topology.stages.len(), 3);
    assert_eq!(topology.shards.len(), 4);
    assert!(topology.shard_map().is_some());
    assert_eq!(
        topology
            .stage_outputs(topology.stage("route").unwrap())
            .len(),
        4
    );
}

#[test]
fn unknown_field_is_a_parse_error_with_location() {
    let text = SHIPPED.replacen("max_rows = ", "max_rowz = ", 1);
    assert_ne!(text, SHIPPED, "the shipped topology sets max_rows");
    match parse_text(&text) {
        Err(TopologyError::Parse { message, .. }) => {
            assert!(message.contains("max_rowz"), "{message}");
            assert!(message.contains("line"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn a_broken_topology_is_not_quoted_in_the_error() {
    let secret = "literal-secret-written-in-the-topology-0123456789";
    // A literal secret with a syntax error on its line, unterminated, or of the wrong type.
    for broken in [
        format!("jwt_secret = \"{secret}\" oops"),
        format!("jwt_secret = \"{secret}"),
        format!("jwt_secret = [\"{secret}\"]"),
        format!("jwt_secret = {{ value = \"{secret}\" }}"),
    ] {
        let text = SHIPPED.replacen("jwt_secret = \"${SLUICE_JWT_SECRET:-}\"", &broken, 1);
        assert_ne!(text, SHIPPED, "the shipped topology sets jwt_secret");
        let message = parse_error(&text);
        assert!(message.contains("line "), "{message}");
        assert!(!message.contains(secret), "{message}");
        assert!(!message.contains("literal-secret"), "{message}");
    }
}

#[test]
fn missing_environment_variable_is_named() {
    let text = SHIPPED.replace(
        "${SLUICE_KAFKA_BROKERS:-127.0.0.1:19092}",
        "${SLUICE_TEST_SURELY_UNSET_VAR}",
    );
    let error = parse_text(&text).unwrap_err();
    assert!(
        error.to_string().contains("SLUICE_TEST_SURELY_UNSET_VAR"),
        "{error}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = SHIPPED
        .replace("input = \"orders.valid\"", "input = \"orders.vald\"")
        .replace("buckets = \"192-255\"", "buckets = \"192-250\"")
        .replace("price = \"24.50\"", "price = \"24.5.0\"")
        .replace("min_quantity = 1\n", "min_quantity = 5000\n");
    let issues = issues_of(&text);
    assert_issue(
        &issues,
        "stages[1] \"enrich\".input: topic \"orders.vald\" is not declared",
    );
    assert_issue(&issues, "nothing writes topic \"orders.vald\"");
    assert_issue(&issues, "buckets 251-255 belong to no shard");
    assert_issue(&issues, "catalog.\"gadget\".price");
    assert_issue(&issues, "min_quantity 5000 is above max_quantity 1000");
    assert!(issues.len() >= 5, "{issues:#?}");
}

#[test]
fn overlapping_and_out_of_range_buckets() {
    let text = SHIPPED
        .replace("buckets = \"64-127\"", "buckets = \"60-127\"")
        .replace("buckets = \"192-255\"", "buckets = \"192-300\"");
    let issues = issues_of(&text);
    assert_issue(&issues, "bucket 60 is also owned by shard \"shard0\"");
    assert_issue(&issues, "range 192-300 goes past the last bucket 255");
}

#[test]
fn cycles_are_found() {
    // route → (shard topics) ... make enrich read what validate writes and validate read enrich's output.
    let text = SHIPPED
        .replace("input = \"orders.raw\"", "input = \"orders.enriched\"")
        .replace(
            "name = \"route\"\nkind = \"route\"\ninput = \"orders.enriched\"",
            "name = \"route\"\nkind = \"route\"\ninput = \"orders.raw\"",
        );
    let issues = issues_of(&text);
    assert_issue(
        &issues,
        "stages form a cycle: validate -> enrich -> validate",
    );
}

#[test]
fn stage_shape_mistakes() {
    let text = SHIPPED
        .replace("name = \"enrich\"", "name = \"validate\"")
        .replace(
            "user_id_pattern = \"[A-Za-z0-9_.@-]{1,64}\"",
            "user_id_pattern = \"[unclosed\"",
        );
    let issues = issues_of(&text);
    assert_issue(
        &issues,
        "stages[1] \"validate\".name: another stage has the same name",
    );
    assert_issue(&issues, "user_id_pattern: not a valid regular expression");
}

#[test]
fn shard_mistakes() {
    let text = SHIPPED
        .replace(
            "url = \"${SLUICE_SHARD1_URL:-sqlite://data/shard1.db}\"",
            "url = \"postgres://x\"",
        )
        .replace("topic = \"orders.shard.3\"", "topic = \"orders.shard.2\"")
        .replace(
            "currency = \"EUR\"\n[catalog.gizmo]",
            "currency = \"euro\"\n[catalog.gizmo]",
        );
    let issues = issues_of(&text);
    assert_issue(&issues, "shards[1] \"shard1\".url: must be mysql://");
    assert_issue(
        &issues,
        "shards[3] \"shard3\".topic: another shard reads the same topic",
    );
    assert_issue(&issues, "\"euro\" is not a three-letter ISO 4217 code");
}

/// The chains `sluice run` would run for `text`, each as `a → b → c`.
fn chains_of(text: &str) -> Vec<String> {
    parse_text(text)
        .unwrap()
        .chains()
        .unwrap()
        .iter()
        .map(|chain| chain.describe())
        .collect()
}

#[test]
fn the_enrich_stages_price_cache_is_set_in_the_topology_and_checked() {
    let text = SHIPPED
        .replacen(
            "catalog_cache_entries = 100000",
            "catalog_cache_entries = 0",
            1,
        )
        .replacen(
            "catalog_cache_ttl_secs = 60",
            "catalog_cache_ttl_secs = 0",
            1,
        );
    assert_ne!(text, SHIPPED, "the shipped topology sets both");
    let issues = issues_of(&text);
    assert_issue(
        &issues,
        "stages[1] \"enrich\".catalog_cache_entries: must be at least 1",
    );
    assert_issue(
        &issues,
        "stages[1] \"enrich\".catalog_cache_ttl_secs: must be at least 1",
    );
}

#[test]
fn the_ingress_timeouts_are_set_in_the_topology_and_checked() {
    let text = SHIPPED
        .replacen("ack_timeout_ms = 5000", "ack_timeout_ms = 0", 1)
        .replacen("lookup_timeout_ms = 2000", "lookup_timeout_ms = 0", 1);
    assert_ne!(text, SHIPPED, "the shipped topology sets both");
    let issues = issues_of(&text);
    assert_issue(&issues, "ingress.ack_timeout_ms: must be at least 1");
    assert_issue(&issues, "ingress.lookup_timeout_ms: must be at least 1");
}

#[test]
fn the_shipped_stages_run_as_one_chain() {
    assert_eq!(chains_of(SHIPPED), ["validate → enrich → route"]);
    let topology = parse_text(SHIPPED).unwrap();
    assert_eq!(
        topology.fused_feeder("enrich").map(|s| s.name.as_str()),
        Some("validate")
    );
    assert_eq!(topology.fused_feeder("validate").map(|s| &s.name), None);
}

#[test]
fn chain_false_or_a_second_reader_of_the_topic_between_keeps_stages_apart() {
    let unchained = SHIPPED.replacen(
        "name = \"enrich\"\n",
        "name = \"enrich\"\nchain = false\n",
        1,
    );
    assert_eq!(chains_of(&unchained), ["validate", "enrich → route"]);

    // A second stage reading orders.valid: validate's output has two readers, so validate
    // writes the topic and both read it in their own groups.
    let audit = format!(
        "{SHIPPED}\n[[stages]]\nname = \"audit\"\nkind = \"route\"\ninput = \"orders.valid\"\ndead_letter = \"orders.dlq\"\n"
    );
    let chains = chains_of(&audit);
    assert!(chains.contains(&"validate".to_string()), "{chains:?}");
    assert!(chains.contains(&"enrich → route".to_string()), "{chains:?}");
}

#[test]
fn graph_draws_each_chain_as_one_task_and_skips_the_topics_it_does_not_write() {
    let topology = parse_text(SHIPPED).unwrap();
    let mermaid = topology.render(GraphFormat::Mermaid);
    assert!(
        mermaid.contains("subgraph chain_0[\"one task: validate → enrich → route\"]"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("stage_validate -->|fused| stage_enrich"),
        "{mermaid}"
    );
    assert!(!mermaid.contains("topic_orders_valid"), "{mermaid}");
    let dot = topology.render(GraphFormat::Dot);
    assert!(dot.contains("subgraph cluster_chain_0"), "{dot}");
    assert!(
        dot.contains("stage_enrich -> stage_route [label=\"fused\"]"),
        "{dot}"
    );

    // A stage that keeps writing its output: the topic stays in the drawing.
    let written = SHIPPED.replacen(
        "name = \"validate\"\n",
        "name = \"validate\"\nwrite_output = true\n",
        1,
    );
    let mermaid = parse_text(&written).unwrap().render(GraphFormat::Mermaid);
    assert!(
        mermaid.contains("stage_validate -->|writes| topic_orders_valid"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("stage_enrich -->|fused| stage_route"),
        "{mermaid}"
    );
}

#[test]
fn graph_renders_every_stage_and_shard() {
    let topology = parse_text(SHIPPED).unwrap();
    let mermaid = topology.render(GraphFormat::Mermaid);
    assert!(mermaid.starts_with("flowchart LR"));
    assert!(
        mermaid.contains("stage_route -->|writes| topic_orders_shard_0"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("topic_orders_shard_3 -->|sinks| shard_shard3"),
        "{mermaid}"
    );
    let dot = topology.render(GraphFormat::Dot);
    assert!(dot.contains("stage_route -> topic_orders_shard_0"), "{dot}");
}

#[test]
fn shipped_defaults_need_no_services_and_compose_file_uses_them() {
    let topology = parse_text(SHIPPED).unwrap();
    if std::env::var_os("SLUICE_LOG_BACKEND").is_none() {
        assert_eq!(topology.log.backend, LogBackend::Embedded);
    }
    let compose = include_str!("../../compose/topology.toml");
    let compose = parse(
        compose,
        Path::new("compose/topology.toml"),
        PathBuf::from("compose"),
    )
    .unwrap();
    assert_eq!(compose.log.backend, LogBackend::Kafka);
    assert!(compose.shards.iter().all(|s| s.url.starts_with("mysql://")));
    assert_eq!(compose.stages.len(), topology.stages.len());
}

#[test]
fn embedded_backend_needs_no_brokers_but_kafka_does() {
    let text = SHIPPED.replace("${SLUICE_KAFKA_BROKERS:-127.0.0.1:19092}", "");
    let embedded = text.replace("${SLUICE_LOG_BACKEND:-embedded}", "embedded");
    assert!(parse_text(&embedded).is_ok());
    let kafka = text.replace("${SLUICE_LOG_BACKEND:-embedded}", "kafka");
    assert_issue(
        &issues_of(&kafka),
        "log.kafka.brokers: the Kafka backend needs bootstrap servers",
    );
}

#[test]
fn kafka_security_mistakes_are_reported_with_the_other_issues_and_never_the_password() {
    std::env::set_var("SLUICE_TEST_KAFKA_SECURITY_PASSWORD", "p4ss-from-the-env");
    let text = SHIPPED
        .replace("${SLUICE_LOG_BACKEND:-embedded}", "kafka")
        .replace(
            "[log.kafka]\nbrokers = \"${SLUICE_KAFKA_BROKERS:-127.0.0.1:19092}\"\n",
            "[log.kafka]\nbrokers = \"b:9096\"\n[log.kafka.properties]\n\
             \"security.protocol\" = \"SASL_SSL\"\n\
             \"sasl.mechanism\" = \"GSSAPI\"\n\
             \"sasl.password\" = \"${SLUICE_TEST_KAFKA_SECURITY_PASSWORD}\"\n\
             \"ssl.ca.location\" = \"/nonexistent/sluice-ca.pem\"\n",
        )
        .replace(
            "partitions = 4\n[topics.\"orders.valid\"]",
            "partitions = 0\n[topics.\"orders.valid\"]",
        );
    let issues = issues_of(&text);
    assert_issue(
        &issues,
        "log.kafka.properties.\"sasl.mechanism\": Kerberos (GSSAPI) is not built into Sluice",
    );
    assert_issue(
        &issues,
        "log.kafka.properties.\"ssl.ca.location\": no file at \"/nonexistent/sluice-ca.pem\"",
    );
    assert_issue(&issues, "orders.raw");
    assert!(
        issues
            .iter()
            .all(|issue| !issue.contains("p4ss-from-the-env")),
        "{issues:#?}"
    );
}

#[test]
fn settings_that_moved_to_a_backend_table_say_where_they_go() {
    let text = SHIPPED.replace(
        "consumer_group_prefix = \"sluice\"\n",
        "consumer_group_prefix = \"sluice\"\npath = \"old/log.redb\"\nbrokers = \"b:9092\"\nfoo = 1\n",
    );
    let issues = issues_of(&text);
    assert_issue(&issues, "log.path: this setting belongs to the backend's own table now: move it under [log.embedded]");
    assert_issue(&issues, "log.brokers: this setting belongs to the backend's own table now: move it under [log.kafka]");
    assert_issue(&issues, "log.foo: unknown setting");
}

fn parse_error(text: &str) -> String {
    match parse_text(text) {
        Err(TopologyError::Parse { message, .. }) => message,
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn a_field_of_another_stage_kind_cannot_be_written() {
    let route_with_output = SHIPPED.replace(
        "kind = \"route\"\ninput = \"orders.enriched\"",
        "kind = \"route\"\ninput = \"orders.enriched\"\noutput = \"orders.dlq\"",
    );
    let message = parse_error(&route_with_output);
    assert!(message.contains("stage \"route\""), "{message}");
    assert!(message.contains("unknown field `output`"), "{message}");

    let enrich_without_output = SHIPPED.replace(
        "kind = \"enrich\"\ninput = \"orders.valid\"\noutput = \"orders.enriched\"",
        "kind = \"enrich\"\ninput = \"orders.valid\"",
    );
    let message = parse_error(&enrich_without_output);
    assert!(message.contains("stage \"enrich\""), "{message}");
    assert!(message.contains("missing field `output`"), "{message}");

    let unknown_kind = SHIPPED.replace("kind = \"enrich\"", "kind = \"enrichh\"");
    let message = parse_error(&unknown_kind);
    assert!(message.contains("unknown variant `enrichh`"), "{message}");
    assert!(
        message.contains("`validate`, `enrich`, `route`"),
        "{message}"
    );
}

#[test]
fn a_rate_limit_takes_exactly_one_rate() {
    for quota in [
        "{ per_second = 5, per_minute = 10, burst = 20 }",
        "{ burst = 20 }",
        "{ per_second = 0, burst = 20 }",
        "{ per_second = 5, burst = 0 }",
    ] {
        let text = SHIPPED.replace(
            "logins_per_address = { per_second = 5, burst = 20 }",
            &format!("logins_per_address = {quota}"),
        );
        let message = parse_error(&text);
        assert!(
            message.contains("exactly one of per_second or per_minute"),
            "{quota}: {message}"
        );
    }
}

#[test]
fn environment_values_are_substituted_into_strings_only() {
    // A secret with a quote and a backslash stays the secret; it cannot end the string.
    std::env::set_var(
        "SLUICE_TEST_NASTY_SECRET",
        "0123456789abcdef0123456789\"\\abcdef",
    );
    let text = SHIPPED
        .replace("${SLUICE_JWT_SECRET:-}", "${SLUICE_TEST_NASTY_SECRET}")
        .replace("[log]\n", "# ${SLUICE_TEST_ONLY_IN_A_COMMENT}\n[log]\n");
    let topology = parse_text(&text).expect("a comment's ${X} is not a variable");
    assert_eq!(
        topology.ingress.auth.jwt_secret.as_deref(),
        Some("0123456789abcdef0123456789\"\\abcdef")
    );
}

mod fuzz {
    //! Property tests: the parser and validator never panic, whatever the file holds.
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn mutated_topologies_never_panic(edits in proptest::collection::vec((0usize..10_000, any::<u8>(), 0u8..3), 1..8)) {
            let mut bytes = SHIPPED.as_bytes().to_vec();
            for (position, byte, kind) in edits {
                let at = position % (bytes.len() + 1);
                match kind {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            // Ok or an error with a message, never a panic.
            if let Err(error) = parse_text(&text) {
                prop_assert!(!error.to_string().is_empty());
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse_text(&text);
        }
    }
}

#[test]
fn the_lag_interval_defaults_to_two_seconds_and_refuses_less_than_100_ms() {
    let topology = parse_text(SHIPPED).unwrap();
    assert_eq!(topology.ops.lag_interval_ms, 2000);
    let set = |ms: u64| format!("{SHIPPED}\n[ops]\nlag_interval_ms = {ms}\n");
    assert_eq!(parse_text(&set(500)).unwrap().ops.lag_interval_ms, 500);
    assert_issue(&issues_of(&set(50)), "ops.lag_interval_ms");
}
