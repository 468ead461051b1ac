//! The read contract behind `GET /order/{id}`.
//!
//! The ingress reports an order's fate without depending on the sinks crate: the binary hands
//! it an [`OrderLookup`] implemented by the shard backend.

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use crate::order::EnrichedOrder;

/// What the pipeline knows about one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OrderStatus {
    /// The order is stored in its shard; `order` is the stored row.
    Stored {
        /// The stored row.
        order: EnrichedOrder,
    },
    /// A stage rejected the order.
    Rejected {
        /// The stage that rejected it.
        stage: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Nothing is recorded yet: the order is still travelling, or was never accepted.
    Unknown,
}

/// Error from an order lookup, with the shard backend's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("order lookup failed: {0}")]
pub struct LookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Finds an order of one user in the shard that stores that user's orders.
#[async_trait]
pub trait OrderLookup: Send + Sync {
    /// The status of `order_id`, looked up among `user_id`'s orders only.
    async fn find(&self, user_id: &str, order_id: Uuid) -> Result<OrderStatus, LookupError>;
}
