//! Reading request bodies: bounded in size, parsed as JSON whatever the `Content-Type`
//! (so `curl -d '{…}'`, which says form-urlencoded, works as written).

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::HeaderMap;

use crate::config::IngressConfig;

use crate::error::ApiError;

/// Reads at most `max_body_bytes` of `body` within `body_timeout_ms`: more is a 413 without
/// reading the rest, slower is a 408 (a stalled client cannot hold a request open).
pub async fn read_limited<S, B>(
    headers: &HeaderMap,
    body: S,
    config: &IngressConfig,
) -> Result<bytes::Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let timeout = std::time::Duration::from_millis(config.body_timeout_ms);
    tokio::time::timeout(timeout, read_bounded(headers, body, config.max_body_bytes))
        .await
        .map_err(|_| {
            ApiError::new(
                warp::http::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    config.body_timeout_ms
                ),
            )
        })?
}

async fn read_bounded<S, B>(
    headers: &HeaderMap,
    body: S,
    limit: u64,
) -> Result<bytes::Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk
            .map_err(|e| ApiError::invalid_json(format!("could not read the request body: {e}")))?;
        if collected.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(ApiError::too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

/// Deepest JSON nesting accepted; the order and login bodies need 1.
pub const MAX_JSON_DEPTH: usize = 8;

/// The deepest nesting of objects and arrays in `bytes`, outside strings (a cheap scan that
/// runs before the parser, so hostile nesting costs nothing).
pub fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses `bytes` as JSON into `T`: syntax errors are 400 `invalid_json`, shape and type
/// errors 422 `invalid_body`. A message says where (line, column) and which field, and what
/// was expected and what kind of value came instead, but never repeats a value the client sent:
/// any field may hold a secret, so what reaches an error body or a log is made of the schema's
/// names and fixed words only.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if nesting_depth(bytes) > MAX_JSON_DEPTH {
        return Err(ApiError::invalid_json(format!(
            "the request body nests deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_json(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::invalid_body(describe_data_error(&error, bytes)),
            // serde_json's syntax messages are fixed words with the position, no input.
            _ => ApiError::invalid_json(format!("the request body is not valid JSON: {error}")),
        }
    })
}

/// Longest field name an error message repeats (longer names, or names with other characters
/// than letters, digits, `_` and `-`, are not repeated).
const MAX_ECHOED_NAME: usize = 64;

/// Longest description of an expected type an error message repeats.
const MAX_EXPECTED_LEN: usize = 200;

/// A serde data error (wrong type, missing or unknown field…) described without the values
/// the client sent: serde's own messages quote them (`invalid type: integer `123``).
fn describe_data_error(error: &serde_json::Error, bytes: &[u8]) -> String {
    let (line, column) = (error.line(), error.column());
    let full = error.to_string();
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full);
    let at = format!("line {line}, column {column}");
    let field = field_at(bytes, line, column)
        .map(|path| format!(" for field `{path}`"))
        .unwrap_or_default();
    // "…, expected X": X describes the schema (`a string`, `i64`, `struct LoginRequest`),
    // never the input. What comes before it may quote the input, so it is searched from the
    // end.
    let expected = |rest: &str| {
        rest.rfind(", expected ")
            .map(|i| &rest[i + ", expected ".len()..])
            .filter(|expected| expected.len() <= MAX_EXPECTED_LEN)
            .map(|expected| format!(": expected {expected}"))
            .unwrap_or_default()
    };
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let found = kind_of_unexpected(rest);
        let expected = expected(rest);
        return format!("invalid type{field}{expected}, found {found} ({at})");
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        return format!("invalid value{field}{} ({at})", expected(rest));
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        return format!("invalid length{field}{} ({at})", expected(rest));
    }
    // Derived deserializers name only the schema's own fields as missing or duplicated.
    if message.starts_with("missing field `") || message.starts_with("duplicate field `") {
        return format!("{message} ({at})");
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // The last "`, expected " is serde's own: the client's name may contain the text too,
        // so the name is everything before it, repeated only when it is plain.
        let end = rest.rfind("`, expected ");
        let name = end
            .map(|i| &rest[..i])
            .filter(|name| echoable(name))
            .map(|name| format!(" `{name}`"))
            .unwrap_or_default();
        let allowed = end
            .map(|i| &rest[i + "`, ".len()..])
            .filter(|allowed| allowed.len() <= MAX_EXPECTED_LEN)
            .map(|allowed| format!(", {allowed}"))
            .unwrap_or_default();
        return format!("unknown field{name}{allowed} ({at})");
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return format!("unknown variant{field}{} ({at})", expected(rest));
    }
    format!("invalid value{field} ({at})")
}

/// The kind of value serde's `Unexpected` describes (`integer `123``, `string "x"`, `map`…),
/// without the value.
fn kind_of_unexpected(unexpected: &str) -> &'static str {
    const KINDS: [(&str, &str); 11] = [
        ("boolean", "a boolean"),
        ("integer", "an integer"),
        ("floating point", "a number"),
        ("string", "a string"),
        ("char", "a string"),
        ("null", "null"),
        ("unit", "null"),
        ("map", "an object"),
        ("sequence", "an array"),
        ("bytes", "bytes"),
        ("enum", "an enum"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| unexpected.starts_with(prefix))
        .map_or("a value of another type", |(_, kind)| kind)
}

/// Whether a field name may be repeated in an error message.
fn echoable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ECHOED_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The path of object keys (`a.b`, `items[].quantity`) leading to the value at `line` and
/// `column` (as serde_json reports them: 1-based lines, bytes into the line), if every key on
/// it may be repeated.
fn field_at(bytes: &[u8], line: usize, column: usize) -> Option<String> {
    let line_start = if line <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(line - 2)
            .map(|(i, _)| i + 1)?
    };
    let end = (line_start + column).min(bytes.len());
    enum Frame {
        Object {
            expecting_key: bool,
            key: Option<(usize, usize)>,
        },
        Array,
    }
    let mut frames: Vec<Frame> = Vec::new();
    let (mut in_string, mut escaped, mut string_start, mut string_is_key) =
        (false, false, 0, false);
    for (i, &b) in bytes[..end].iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    if string_is_key {
                        if let Some(Frame::Object { key, .. }) = frames.last_mut() {
                            *key = Some((string_start, i));
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
                string_is_key = matches!(
                    frames.last(),
                    Some(Frame::Object {
                        expecting_key: true,
                        ..
                    })
                );
            }
            b'{' => frames.push(Frame::Object {
                expecting_key: true,
                key: None,
            }),
            b'[' => frames.push(Frame::Array),
            b'}' | b']' => {
                frames.pop();
            }
            b':' => {
                if let Some(Frame::Object { expecting_key, .. }) = frames.last_mut() {
                    *expecting_key = false;
                }
            }
            b',' => {
                if let Some(Frame::Object { expecting_key, .. }) = frames.last_mut() {
                    *expecting_key = true;
                }
            }
            _ => {}
        }
    }
    let mut path = String::new();
    for frame in &frames {
        match frame {
            Frame::Object {
                key: Some((from, to)),
                ..
            } => {
                let name = std::str::from_utf8(&bytes[*from..*to]).ok()?;
                if !echoable(name) {
                    return None;
                }
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array => path.push_str("[]"),
        }
    }
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Login {
        username: String,
        password: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        quantity: u8,
    }

    fn message_for<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> (u16, String) {
        let error = parse_json::<T>(body.as_bytes()).unwrap_err();
        (error.status.as_u16(), error.message)
    }

    #[test]
    fn wrong_types_name_the_field_and_the_kinds_but_never_the_value() {
        for (password, found) in [
            ("918273645501", "an integer"),
            ("-918273.645501", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
            (r#"{"secret":"sw0rdfish"}"#, "an object"),
            (r#"["sw0rdfish"]"#, "an array"),
        ] {
            let body = format!(r#"{{"username":"alice","password":{password}}}"#);
            let (status, message) = message_for::<Login>(&body);
            assert_eq!(status, 422);
            assert_eq!(
                message,
                format!(
                    "invalid type for field `password`: expected a string, found {found} \
                     (line 1, column {})",
                    message
                        .rsplit("column ")
                        .next()
                        .unwrap()
                        .trim_end_matches(')')
                )
            );
            for secret in ["918273", "645501", "sw0rdfish"] {
                assert!(!message.contains(secret), "{message}");
            }
        }
    }

    #[test]
    fn positions_and_nested_fields_are_reported() {
        let (status, message) =
            message_for::<Login>("{\n  \"username\": \"alice\",\n  \"password\": 7\n}");
        assert_eq!(status, 422);
        assert_eq!(
            message,
            "invalid type for field `password`: expected a string, found an integer (line 3, column 15)"
        );
        let (_, message) =
            message_for::<Outer>(r#"{"items":[{"quantity":1},{"quantity":"sw0rdfish"}]}"#);
        assert!(
            message.starts_with(
                "invalid type for field `items[].quantity`: expected u8, found a string"
            ),
            "{message}"
        );
        let (_, message) = message_for::<Outer>(r#"{"items":[{"quantity":4096}]}"#);
        assert!(
            message.starts_with("invalid value for field `items[].quantity`: expected u8 ("),
            "{message}"
        );
        assert!(!message.contains("4096"), "{message}");
    }

    #[test]
    fn field_names_are_repeated_only_when_plain() {
        let (_, message) = message_for::<Login>(r#"{"username":"a","password":"b","price":0}"#);
        assert!(
            message.starts_with("unknown field `price`, expected `username` or `password`"),
            "{message}"
        );
        let hostile = format!(r#"{{"username":"a","{}":0}}"#, "sw0rdfish ".repeat(10));
        let (_, message) = message_for::<Login>(&hostile);
        assert!(message.starts_with("unknown field, expected"), "{message}");
        assert!(!message.contains("sw0rdfish"), "{message}");
        // A name that imitates serde's message cannot smuggle text into the answer.
        let smuggled = r#"{"username":"a","x`, expected hunter2-secret\n":0}"#;
        let (_, message) = message_for::<Login>(smuggled);
        assert!(
            message.starts_with("unknown field, expected `username` or `password`"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let (_, message) = message_for::<Login>(r#"{"username":"a"}"#);
        assert!(
            message.starts_with("missing field `password` (line 1"),
            "{message}"
        );
        let (_, message) = message_for::<Login>(r#"{"username":"a","username":"b"}"#);
        assert!(
            message.starts_with("duplicate field `username`"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_stay_400_and_do_not_repeat_the_body() {
        let (status, message) =
            message_for::<Login>(r#"{"username":"alice","password":sw0rdfish}"#);
        assert_eq!(status, 400);
        assert!(
            message.contains("line 1, column") || message.contains("line 1 column"),
            "{message}"
        );
        assert!(!message.contains("sw0rdfish"), "{message}");
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{"a":1}"#), 1);
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{{{\"]]]"}"#), 1);
        assert_eq!(nesting_depth(br#"[[[[]]]]"#), 4);
        let hostile = "[".repeat(100_000);
        let error = parse_json::<serde_json::Value>(hostile.as_bytes()).unwrap_err();
        assert!(
            error.message.contains("nests deeper than 8"),
            "{}",
            error.message
        );
    }
}
