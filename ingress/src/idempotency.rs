//! `Idempotency-Key` on `POST /order`: a retried request with the same key (from the same
//! user, with the same body) gets the same answer and the same `orderId`, and produces no
//! second order.
//!
//! The first request with a key fixes the order id. If its append is not acknowledged (503),
//! the retry appends the *same* order id again, so even when the first append landed after all,
//! the shards store the order once (rows are idempotent by order id). Keys are remembered per
//! ingress process, bounded in number and in time.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use tokio::sync::OnceCell;
use uuid::Uuid;
use warp::http::{HeaderMap, StatusCode};

use crate::error::ApiError;

/// Header carrying the client's idempotency key.
pub const HEADER: &str = "idempotency-key";

/// What one key is bound to.
pub struct Entry {
    /// The order id every request with this key uses.
    pub order_id: Uuid,
    /// When the first request arrived (ms since the Unix epoch); retries keep it.
    pub received_at_ms: i64,
    /// Hash of the body of the first request, to refuse the key on a different order.
    body_hash: u64,
    /// The answer, once the log acknowledged the order.
    pub answer: OnceCell<serde_json::Value>,
}

/// Remembered keys, per user.
pub struct IdempotencyKeys {
    keys: Cache<(String, String), Arc<Entry>>,
}

impl IdempotencyKeys {
    /// Remembers up to `capacity` keys, each for `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        IdempotencyKeys {
            // Least-recently-used eviction: a new key is always admitted (the default admission
            // policy may refuse one when the cache is full, silently dropping the guarantee).
            keys: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
        }
    }

    /// The entry for the request's key, or `None` when it carries no key. A key reused with a
    /// different body is refused (422), a malformed key is refused (400).
    pub async fn entry(
        &self,
        user: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        let body_hash = xxhash_rust::xxh3::xxh3_64(body);
        let entry = self
            .keys
            .get_with((user.to_string(), key.to_string()), async move {
                Arc::new(Entry {
                    order_id: Uuid::now_v7(),
                    received_at_ms: now_ms,
                    body_hash,
                    answer: OnceCell::new(),
                })
            })
            .await;
        if entry.body_hash != body_hash {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different order; use a new key",
            ));
        }
        Ok(Some(entry))
    }

    /// Number of keys remembered now (approximate).
    pub fn len(&self) -> u64 {
        self.keys.entry_count()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
