//! TOML parse errors worded without the file's content.
//!
//! The TOML parser's own `Display` quotes the offending source line, and the files Sluice
//! parses hold secrets (argon2 hashes in the users file, a `jwt_secret` written literally in
//! the topology): an error must never carry them into logs or stderr. [`describe`] keeps
//! the parser's explanation and points at the line and column instead.

/// Shortest value masked from a parser's explanation: shorter ones are not secrets worth
/// hiding, and masking them would garble the words around them.
const MIN_MASKED_LEN: usize = 4;

/// `error` as "line L, column C: explanation", with the position computed from the error's
/// span in `text`, and never any of `text`'s lines. The explanation is the parser's own
/// (`message()`), except that a type or value error (which quotes the value it refused) has
/// the value at the span masked with `***`. Names of unknown keys and variants are kept: they
/// are what the reader must fix.
pub fn describe(error: &toml::de::Error, text: &str) -> String {
    let mut message = error.message().trim_end().to_string();
    let Some(span) = error.span() else {
        return message;
    };
    let start = floor_char_boundary(text, span.start);
    let end = floor_char_boundary(text, span.end.max(start));
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before, |newline| &before[newline + 1..])
        .chars()
        .count()
        + 1;
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        let value = text[start..end].trim();
        let unquoted = value.trim_matches(|c| c == '"' || c == '\'');
        for masked in [value, unquoted] {
            if masked.len() >= MIN_MASKED_LEN {
                message = message.replace(masked, "***");
            }
        }
    }
    format!("line {line}, column {column}: {message}")
}

/// The largest char boundary of `text` at or before `index` (clamped to its length).
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        count: Option<u32>,
    }

    fn error(text: &str) -> String {
        let error = toml::from_str::<Doc>(text).unwrap_err();
        describe(&error, text)
    }

    #[test]
    fn errors_point_at_the_line_and_never_quote_it() {
        let secret = "$argon2id$v=19$m=19456,t=2,p=1$c2VjcmV0c2FsdA$aGFzaA";
        // A syntax error on a line that holds a secret (an unterminated string).
        let text = format!("# users\nname = \"alice\"\ncount = 1 \"{secret}\n");
        let message = error(&text);
        assert!(message.starts_with("line 3, column "), "{message}");
        assert!(!message.contains("argon2id"), "{message}");
        assert!(!message.contains(secret), "{message}");
        // A type error quoting the refused value.
        let text = "name = \"alice\"\ncount = \"hunter2-is-my-password\"\n";
        let message = error(text);
        assert!(message.starts_with("line 2, column 9:"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        // A duplicate key: the explanation is kept.
        let message = error("name = \"alice\"\ncount = 1\ncount = 2\n");
        assert!(message.starts_with("line 3, column 1:"), "{message}");
        assert!(message.contains("duplicate key"), "{message}");
    }

    #[test]
    fn multibyte_text_and_spans_at_the_end_are_handled() {
        let message = error("name = \"é\u{1F600}\"\ncount = \"ü");
        assert!(message.starts_with("line 2, column "), "{message}");
        assert!(!message.contains('ü'), "{message}");
    }
}
