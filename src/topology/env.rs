//! `${VAR}` and `${VAR:-default}` substitution in the topology's string values, so secrets
//! and per-environment addresses come from the environment.
//!
//! Substitution happens in parsed string values, never in the raw text: a `"` or `\` in a
//! secret cannot break or inject TOML, and a `${X}` in a comment or a key is left alone. The
//! document is written back with its layout (comments, line numbers) kept, so parse errors
//! still point at the right line.

use toml_edit::visit_mut::{self, VisitMut};
use toml_edit::DocumentMut;

/// The topology text with every `${...}` in string values replaced, and the values that came
/// from the environment (to mask them in error messages).
#[derive(Debug)]
pub struct Substituted {
    /// The text, ready for the typed parser.
    pub text: String,
    /// Values taken from the environment.
    pub values: Vec<String>,
}

/// Replaces every `${NAME}` / `${NAME:-default}` in the string values of `text` using
/// `lookup`. Returns the names of variables that are unset and have no default, all at once.
/// Text that is not valid TOML comes back unchanged, so the parser reports the syntax error.
pub fn substitute_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Substituted, Vec<String>> {
    let Ok(mut document) = text.parse::<DocumentMut>() else {
        return Ok(Substituted {
            text: text.to_string(),
            values: Vec::new(),
        });
    };
    let mut visitor = Substitute {
        lookup: &lookup,
        values: Vec::new(),
        missing: Vec::new(),
    };
    visitor.visit_document_mut(&mut document);
    if visitor.missing.is_empty() {
        Ok(Substituted {
            text: document.to_string(),
            values: visitor.values,
        })
    } else {
        Err(visitor.missing)
    }
}

struct Substitute<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    values: Vec<String>,
    missing: Vec<String>,
}

impl VisitMut for Substitute<'_> {
    fn visit_value_mut(&mut self, node: &mut toml_edit::Value) {
        if let toml_edit::Value::String(string) = node {
            if string.value().contains("${") {
                let replaced = interpolate(string.value(), |name| {
                    let value = (self.lookup)(name);
                    if let Some(value) = &value {
                        self.values.push(value.clone());
                    }
                    value
                });
                match replaced {
                    Ok(text) => {
                        let decor = string.decor().clone();
                        *string = toml_edit::Formatted::new(text);
                        *string.decor_mut() = decor;
                    }
                    Err(names) => {
                        for name in names {
                            if !self.missing.contains(&name) {
                                self.missing.push(name);
                            }
                        }
                    }
                }
            }
        }
        visit_mut::visit_value_mut(self, node);
    }
}

/// Replaces every `${NAME}` / `${NAME:-default}` in one string using `lookup`. Returns the
/// names of variables that are unset and have no default, all at once.
pub fn interpolate(
    text: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
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
    use super::{interpolate, substitute_env};

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db1".into()),
            "EMPTY" => Some(String::new()),
            "NASTY" => Some("a\"b\\c\nkey = \"injected\"".into()),
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
        let missing = substitute_env("a = \"${A}\"\nb = \"${B} ${A}\"\n", env).unwrap_err();
        assert_eq!(missing, vec!["A".to_string(), "B".to_string()]);
    }

    #[test]
    fn quotes_and_backslashes_in_values_stay_inside_the_string() {
        let out = substitute_env("secret = \"${NASTY}\"\nother = 1\n", env).unwrap();
        let table: toml::Table = out.text.parse().unwrap();
        assert_eq!(
            table["secret"].as_str(),
            Some("a\"b\\c\nkey = \"injected\"")
        );
        assert!(table.get("key").is_none(), "{}", out.text);
        assert_eq!(table["other"].as_integer(), Some(1));
        assert_eq!(out.values, vec![env("NASTY").unwrap()]);
    }

    #[test]
    fn comments_and_keys_are_left_alone() {
        let text = "# set ${UNSET_IN_COMMENT} to override\n\"${KEY}\" = \"${HOST}\"\n";
        let out = substitute_env(text, env).unwrap();
        assert!(out.text.contains("# set ${UNSET_IN_COMMENT} to override"));
        let table: toml::Table = out.text.parse().unwrap();
        assert_eq!(table["${KEY}"].as_str(), Some("db1"));
    }

    #[test]
    fn line_numbers_survive_substitution() {
        let text = "a = \"${HOST}\"\n\n[b]\nc = 1\n";
        let out = substitute_env(text, env).unwrap();
        assert_eq!(out.text.lines().count(), text.lines().count());
    }
}
