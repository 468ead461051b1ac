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
/// errors 422 `invalid_body`, each with serde's explanation (field, line and column).
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
            Category::Data => ApiError::invalid_body(error.to_string()),
            _ => ApiError::invalid_json(format!("the request body is not valid JSON: {error}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
