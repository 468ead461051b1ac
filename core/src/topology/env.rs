//! `${VAR}` and `${VAR:-default}` substitution in the topology text, so secrets and
//! per-environment addresses come from the environment.

/// Replaces every `${NAME}` / `${NAME:-default}` in `text` using `lookup`.
/// Returns the names of variables that are unset and have no default, all at once.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        match lookup(name).filter(|value| !value.is_empty()) {
            Some(value) => out.push_str(&value),
            None => match default {
                Some(default) => out.push_str(default),
                None => {
                    if !missing.iter().any(|m| m == name) {
                        missing.push(name.to_string());
                    }
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::interpolate;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_values_and_defaults() {
        assert_eq!(interpolate("a ${HOST} b", env).unwrap(), "a db1 b");
        assert_eq!(interpolate("${NOPE:-x:1}", env).unwrap(), "x:1");
        assert_eq!(interpolate("${EMPTY:-fallback}", env).unwrap(), "fallback");
        assert_eq!(interpolate("${HOST:-unused}", env).unwrap(), "db1");
    }

    #[test]
    fn reports_every_missing_variable_once() {
        let missing = interpolate("${A} ${B} ${A}", env).unwrap_err();
        assert_eq!(missing, vec!["A".to_string(), "B".to_string()]);
    }
}
