use super::*;

fn shipped() -> Topology {
    let text =
        include_str!("../../topology.toml").replace("${SLUICE_LOG_BACKEND:-embedded}", "embedded");
    crate::topology::parse(&text, std::path::Path::new("topology.toml"), ".".into())
        .expect("the shipped topology is valid")
}

fn exposition(accepted: u64, dead: u64, lag: u64) -> String {
    exposition_aged(accepted, dead, lag, 2.5)
}

fn exposition_aged(accepted: u64, dead: u64, lag: u64, age: f64) -> String {
    format!(
        "# TYPE sluice_orders_accepted_total counter\n\
         sluice_orders_accepted_total {accepted}\n\
         sluice_stage_records_out_total{{stage=\"validate\",outcome=\"emitted\"}} {accepted}\n\
         sluice_stage_records_out_total{{stage=\"validate\",outcome=\"dead_letter\"}} {dead}\n\
         sluice_consumer_lag_records{{group=\"sluice.validate\",topic=\"orders.raw\",partition=\"0\"}} {lag}\n\
         sluice_consumer_lag_records{{group=\"sluice.validate\",topic=\"orders.raw\",partition=\"1\"}} 1\n\
         sluice_consumer_lag_seconds{{group=\"sluice.validate\",topic=\"orders.raw\",partition=\"0\"}} {age}\n\
         sluice_build_info{{version=\"0.1.0\",revision=\"abc123\",rustc=\"1.89\"}} 1\n"
    )
}

fn edge<'a>(status: &'a serde_json::Value, from: &str, to: &str) -> &'a serde_json::Value {
    status["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
        .unwrap_or_else(|| panic!("no edge {from} -> {to}"))
}

fn lag<'a>(status: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    let node = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .unwrap();
    &node["lag"][0]
}

#[test]
fn rates_come_from_successive_samples_and_absent_metrics_are_null() {
    let page = StatusPage::new(&shipped(), Parts::ALL);
    let mut sampler = Sampler::default();
    let start = Instant::now();
    let first: serde_json::Value =
        serde_json::from_str(&page.sample(&mut sampler, start, &exposition(100, 3, 5))).unwrap();
    assert_eq!(first["interval_seconds"], serde_json::Value::Null);
    let accepted = edge(&first, "ingress", "topic:orders.raw");
    assert_eq!(accepted["total"], 100.0);
    assert_eq!(accepted["rate"], serde_json::Value::Null);

    let later = start + Duration::from_secs(2);
    let second: serde_json::Value =
        serde_json::from_str(&page.sample(&mut sampler, later, &exposition(300, 7, 9))).unwrap();
    assert_eq!(second["interval_seconds"], 2.0);
    assert_eq!(edge(&second, "ingress", "topic:orders.raw")["rate"], 100.0);
    let dead = edge(&second, "stage:validate", "topic:orders.dlq");
    assert_eq!(dead["rate"], 2.0);
    assert_eq!(dead["dead_letter"], true);
    // Nothing measures enrich's input in this exposition: no total, no rate.
    let enrich = edge(&second, "topic:orders.valid", "stage:enrich");
    assert_eq!(enrich["total"], serde_json::Value::Null);
    assert_eq!(enrich["rate"], serde_json::Value::Null);
    // A counter that went down (a restart) gives no rate.
    let third: serde_json::Value = serde_json::from_str(&page.sample(
        &mut sampler,
        later + Duration::from_secs(1),
        &exposition(10, 7, 9),
    ))
    .unwrap();
    assert_eq!(
        edge(&third, "ingress", "topic:orders.raw")["rate"],
        serde_json::Value::Null
    );
    assert_eq!(third["revision"], "abc123");
    assert_eq!(third["parts"]["sinks"], true);
    assert_eq!(third["log_backend"], "embedded");
}

#[test]
fn lag_is_summed_over_partitions_and_marked_when_it_keeps_growing_and_ages() {
    let page = StatusPage::new(&shipped(), Parts::ALL);
    let (mut old, mut young) = (Sampler::default(), Sampler::default());
    let start = Instant::now();
    let mut status = serde_json::Value::Null;
    // The lag monitor updates every few seconds: repeated values are not changes.
    for (i, lag) in [5, 6, 8, 8, 7, 9, 12, 20].into_iter().enumerate() {
        let at = start + Duration::from_secs(i as u64);
        let text = exposition_aged(0, 0, lag, 6.0);
        status = serde_json::from_str(&page.sample(&mut old, at, &text)).unwrap();
        let enrich = lag_of(&status, "stage:validate");
        assert_eq!(enrich["records"], (lag + 1) as f64);
        assert_eq!(enrich["seconds"], 6.0);
        assert_eq!(enrich["group"], "sluice.validate");
        // Three rises in a row: 7→9→12→20 (8→8 was no change, 8→7 a fall).
        assert_eq!(enrich["growing"], i >= 7, "sample {i} (lag {lag})");
        // The same rises with young records are a consumer keeping up with a busier input.
        let text = exposition_aged(0, 0, lag, 1.0);
        let young: serde_json::Value =
            serde_json::from_str(&page.sample(&mut young, at, &text)).unwrap();
        assert_eq!(lag_of(&young, "stage:validate")["growing"], false);
    }
    assert_eq!(status["lag_reported"], true);
    // Groups the exposition does not mention show no lag.
    let sink = lag_of(&status, "sink:shard0");
    assert_eq!(sink["records"], serde_json::Value::Null);
    assert_eq!(sink["growing"], false);
    // A stage fused behind another reads no topic: it has no lag of its own.
    assert_eq!(lag_of(&status, "stage:route"), &serde_json::Value::Null);
}

fn lag_of<'a>(status: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    lag(status, node)
}

#[test]
fn without_lag_metrics_the_page_says_so() {
    let page = StatusPage::new(&shipped(), Parts::ALL);
    let mut sampler = Sampler::default();
    let text = page.sample(
        &mut sampler,
        Instant::now(),
        "sluice_orders_accepted_total 1\n",
    );
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["lag_reported"], false);
    assert_eq!(status["columns"], 10);
}

#[test]
fn the_page_is_self_contained() {
    assert!(PAGE.contains("<svg"));
    assert!(!PAGE.contains("/*STYLE*/") && !PAGE.contains("/*SCRIPT*/"));
    // The SVG namespace is a name, not an address anything is loaded from.
    let page = PAGE.replace("http://www.w3.org/2000/svg", "");
    for external in ["http://", "https://", "//cdn", "@import", "src=", "<link"] {
        assert!(
            !page.contains(external),
            "the page must load nothing from elsewhere ({external})"
        );
    }
    let lines = include_str!("index.html").lines().count()
        + include_str!("style.css").lines().count()
        + include_str!("app.js").lines().count();
    assert!(lines <= 420, "the page has {lines} lines");
}
