//! A reader for the Prometheus text exposition format, enough for the status page: the
//! samples of the metrics it asks for, with their labels and values. Comment lines (`# HELP`,
//! `# TYPE`) and lines it cannot read are skipped, so the page shows whatever metrics exist.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with its `_total`, `_bucket`… suffix).
    pub name: String,
    /// The labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// The value (`NaN`, `+Inf` and `-Inf` are read too).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Whether the sample is of metric `name` and has every label of `wanted`.
    pub fn matches(&self, name: &str, wanted: &[(&str, &str)]) -> bool {
        self.name == name && wanted.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// The samples of an exposition whose metric name `keep` accepts.
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| parse_line(line, &keep))
        .collect()
}

/// Parsed samples, with the sums and maxima the status page takes of them.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The sum over the samples of `name` with the labels of `wanted`; `None` when there is
    /// no such sample.
    pub fn sum(&self, name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, wanted).reduce(|a, b| a + b)
    }

    /// The largest value of the samples of `name` with the labels of `wanted`.
    pub fn max(&self, name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, wanted).reduce(f64::max)
    }

    /// The first sample of metric `name`.
    pub fn first(&self, name: &str) -> Option<&Sample> {
        self.0.iter().find(|s| s.name == name)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        wanted: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.0
            .iter()
            .filter(move |s| s.matches(name, wanted))
            .map(|s| s.value)
    }
}

fn parse_line(line: &str, keep: &impl Fn(&str) -> bool) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() || !keep(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remainder) = parse_labels(after)?;
        labels = parsed;
        rest = remainder;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads `key="value",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start().trim_start_matches(',').trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_string();
        text = text[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        text = &text[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP sluice_orders_accepted_total Orders.
# TYPE sluice_orders_accepted_total counter
sluice_orders_accepted_total 1027
sluice_stage_records_out_total{stage="validate",outcome="emitted"} 1000
sluice_stage_records_out_total{stage="validate",outcome="dead_letter"} 27
sluice_stage_records_out_total{stage="enrich",outcome="emitted"} 990 1700000000000
sluice_consumer_lag_seconds{group="p.sink.shard0.sink",topic="o.shard.0",partition="0"} 0.25
sluice_consumer_lag_seconds{group="p.sink.shard0.sink",topic="o.shard.0",partition="1"} 1.5
sluice_odd{path="a \"quoted\" \\ value, with } and =",x="y"} +Inf
sluice_broken{stage="validate" 3
sluice_not_a_number 12abc
"#;

    fn all() -> Samples {
        Samples(parse(TEXT, |_| true))
    }

    #[test]
    fn reads_names_labels_and_values_and_skips_comments() {
        let samples = all();
        assert_eq!(
            samples.sum("sluice_orders_accepted_total", &[]),
            Some(1027.0)
        );
        assert_eq!(
            samples.sum(
                "sluice_stage_records_out_total",
                &[("stage", "validate"), ("outcome", "dead_letter")]
            ),
            Some(27.0)
        );
        assert_eq!(
            samples.sum("sluice_stage_records_out_total", &[("stage", "validate")]),
            Some(1027.0),
            "the labels asked for select; the others are summed over"
        );
        // A timestamp after the value is ignored.
        assert_eq!(
            samples.sum("sluice_stage_records_out_total", &[("stage", "enrich")]),
            Some(990.0)
        );
    }

    #[test]
    fn sums_and_maxima_over_partitions_and_none_when_absent() {
        let samples = all();
        let group = [("group", "p.sink.shard0.sink")];
        assert_eq!(
            samples.max("sluice_consumer_lag_seconds", &group),
            Some(1.5)
        );
        assert_eq!(
            samples.sum("sluice_consumer_lag_seconds", &group),
            Some(1.75)
        );
        assert_eq!(samples.sum("sluice_consumer_lag_records", &group), None);
        assert_eq!(
            samples.sum("sluice_stage_records_in_total", &[("stage", "x")]),
            None
        );
    }

    #[test]
    fn unescapes_label_values_and_skips_lines_it_cannot_read() {
        let samples = all();
        let odd = samples.first("sluice_odd").unwrap();
        assert_eq!(
            odd.label("path"),
            Some(r#"a "quoted" \ value, with } and ="#)
        );
        assert_eq!(odd.label("x"), Some("y"));
        assert_eq!(odd.value, f64::INFINITY);
        assert!(samples.first("sluice_broken").is_none());
        assert!(samples.first("sluice_not_a_number").is_none());
        assert_eq!(samples.0.len(), 7);
    }

    #[test]
    fn keeps_only_the_names_asked_for() {
        let samples = parse(TEXT, |name| name.starts_with("sluice_consumer_lag"));
        assert_eq!(samples.len(), 2);
    }
}
