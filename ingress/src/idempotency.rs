//! `Idempotency-Key` on `POST /order`: a retried request with the same key from the same user
//! gets the same `orderId`, and the shards store at most one order for it, whatever happens in
//! between (a 503, a restart of the ingress, a retry that reaches another ingress process, the
//! key being forgotten by this process).
//!
//! The guarantee does not rest on memory. The order id of a keyed order is *derived* from the
//! user and the key ([`order_id`]), so every process that ever sees the pair appends the same
//! id, and a shard's primary key on `order_id` absorbs the repeats (a repeat that differs from
//! the stored order never replaces its product or quantity: the first stored body wins).
//!
//! The per-process cache here only makes repeats cheap: while it remembers a key it answers a
//! retry with the first answer without appending again, lets concurrent requests with one key
//! wait for a single append, and refuses the key on a different body (422). Keys are remembered
//! per ingress process, bounded in number and in time; forgetting one costs an extra append of
//! the same order id, never a second order.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use uuid::Uuid;
use warp::http::HeaderMap;

/// Header carrying the client's idempotency key.
pub const HEADER: &str = "idempotency-key";

/// The namespace of derived order ids (see [`order_id`]). Fixed for every Sluice deployment:
/// ids only need to be unique within one deployment's shards, and changing it would let a retry
/// that spans an upgrade create a second order.
pub const ORDER_ID_NAMESPACE: Uuid = uuid::uuid!("50538a53-7661-4cc9-b39c-6b93c3883d9d");

/// The order id of the order that `user` names with Idempotency-Key `key`: a name-based
/// UUIDv8 (RFC 9562, section 5.8 and appendix B.2) with this layout:
///
/// - bytes 0–15 are the first 16 bytes of SHA-256 over [`ORDER_ID_NAMESPACE`] (16 bytes), then
///   `user` and then `key`, each as its length in bytes (u64, big-endian) followed by its UTF-8
///   bytes, so that no two different (user, key) pairs hash the same input (`("a", "bc")` and
///   `("ab", "c")` differ);
/// - then the version bits (byte 6, high nibble) are set to 8 and the variant bits (byte 8, two
///   high bits) to `10`.
///
/// That leaves 122 bits of SHA-256, so an id names one (user, key) pair for good: unlike the
/// UUIDv7 of an order without a key, it carries no time and is not time-ordered.
pub fn order_id(user: &str, key: &str) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(ORDER_ID_NAMESPACE.as_bytes());
    for part in [user, key] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Why a request's `Idempotency-Key` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyError {
    /// The key is empty, too long, or not visible ASCII.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidKey,
    /// This process remembers the key bound to a different body.
    #[error("this Idempotency-Key was already used for a different order; use a new key")]
    KeyReused,
}

/// What one key is bound to in this process.
pub struct Entry {
    /// The order id every request with this key uses ([`order_id`] of the user and the key).
    pub order_id: Uuid,
    /// When this process first saw the key (ms since the Unix epoch); its retries keep it.
    pub received_at_ms: i64,
    /// Hash of the body of the first request, to refuse the key on a different order.
    body_hash: u64,
    /// The answer, once the log acknowledged the order.
    pub answer: OnceCell<serde_json::Value>,
}

/// Remembered keys, per user.
pub struct IdempotencyKeys {
    keys: Cache<(String, String), Arc<Entry>>,
    /// When this process first saw each remembered keyed order, by order id: derived ids carry
    /// no time, so this is how `GET /order/{id}` tells a recent keyed order (`pending`) from an
    /// unknown one.
    received: Cache<Uuid, i64>,
}

impl IdempotencyKeys {
    /// Remembers up to `capacity` keys, each for `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        IdempotencyKeys {
            keys: lru(capacity, ttl),
            received: lru(capacity, ttl),
        }
    }

    /// The entry for the request's key, or `None` when it carries no key. A key reused with a
    /// different body while this process remembers it is refused, and so is a malformed key.
    pub async fn entry(
        &self,
        user: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<Arc<Entry>>, IdempotencyError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(IdempotencyError::InvalidKey)?;
        let body_hash = xxhash_rust::xxh3::xxh3_64(body);
        let entry = self
            .keys
            .get_with((user.to_string(), key.to_string()), async move {
                let order_id = order_id(user, key);
                self.received.insert(order_id, now_ms).await;
                Arc::new(Entry {
                    order_id,
                    received_at_ms: now_ms,
                    body_hash,
                    answer: OnceCell::new(),
                })
            })
            .await;
        if entry.body_hash != body_hash {
            return Err(IdempotencyError::KeyReused);
        }
        Ok(Some(entry))
    }

    /// When this process first saw the keyed order `order_id` (ms since the Unix epoch), while
    /// it remembers the key.
    pub async fn received_at_ms(&self, order_id: Uuid) -> Option<i64> {
        self.received.get(&order_id).await
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

/// A cache of up to `capacity` entries, each for `ttl`, with least-recently-used eviction: a new
/// entry is always admitted (the default admission policy may refuse one when the cache is full,
/// which would lose the cheap replay).
fn lru<K, V>(capacity: u64, ttl: Duration) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_user_and_key_give_the_same_id_in_any_process() {
        assert_eq!(order_id("alice", "7f3a-01"), order_id("alice", "7f3a-01"));
        // Pinned: the id must not change between releases, or a retry spanning an upgrade
        // would create a second order.
        assert_eq!(
            order_id("alice", "7f3a-01").to_string(),
            PINNED_ALICE_7F3A_01
        );
    }

    /// Computed independently of this code (Python's `hashlib` and `uuid`, following the layout
    /// documented on [`order_id`]).
    const PINNED_ALICE_7F3A_01: &str = "dd667b84-7540-8e19-b9ed-6fe53e1e0865";

    #[test]
    fn different_users_or_keys_give_different_ids() {
        let ids = [
            order_id("alice", "k1"),
            order_id("alice", "k2"),
            order_id("bob", "k1"),
            order_id("bob", "k2"),
            order_id("k1", "alice"),
        ];
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn the_encoding_of_user_and_key_is_unambiguous() {
        assert_ne!(order_id("a", "bc"), order_id("ab", "c"));
        assert_ne!(order_id("", "abc"), order_id("abc", ""));
        assert_ne!(order_id("a\0", "b"), order_id("a", "\0b"));
        // A length prefix that looks like content cannot shift the boundary either.
        let prefix = 1u64
            .to_be_bytes()
            .map(char::from)
            .iter()
            .collect::<String>();
        assert_ne!(
            order_id("a", &format!("{prefix}b")),
            order_id(&format!("a{prefix}"), "b")
        );
    }

    #[test]
    fn derived_ids_are_version_8_rfc_variant_and_carry_no_time() {
        let id = order_id("alice", "7f3a-01");
        assert_eq!(id.get_version(), Some(uuid::Version::Custom));
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert!(id.get_timestamp().is_none());
        // Different from a time-ordered id, and from the namespace itself.
        assert_ne!(id, ORDER_ID_NAMESPACE);
    }

    #[tokio::test]
    async fn entries_use_the_derived_id_and_refuse_a_different_body() {
        let keys = IdempotencyKeys::new(10, Duration::from_secs(60));
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, "k-1".parse().unwrap());
        let first = keys
            .entry("alice", &headers, b"body", 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.order_id, order_id("alice", "k-1"));
        assert_eq!(keys.received_at_ms(first.order_id).await, Some(5));
        let again = keys
            .entry("alice", &headers, b"body", 9)
            .await
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.received_at_ms, 5);
        let refused = keys
            .entry("alice", &headers, b"other", 9)
            .await
            .err()
            .unwrap();
        assert_eq!(refused, IdempotencyError::KeyReused);
        // Another user's identical key is another order.
        let bob = keys
            .entry("bob", &headers, b"other", 9)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(bob.order_id, first.order_id);
        // A forgotten key (a new process) still gives the same id.
        let fresh = IdempotencyKeys::new(10, Duration::from_secs(60));
        let later = fresh
            .entry("alice", &headers, b"other", 20)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(later.order_id, first.order_id);
        assert!(keys
            .entry("alice", &HeaderMap::new(), b"body", 1)
            .await
            .unwrap()
            .is_none());
        headers.insert(HEADER, "two words".parse().unwrap());
        assert_eq!(
            keys.entry("alice", &headers, b"body", 1).await.err(),
            Some(IdempotencyError::InvalidKey)
        );
    }
}
