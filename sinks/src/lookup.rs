//! [`OrderLookup`] over the shards: finds the user's shard from the shard map and asks it.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_core::lookup::{LookupError, OrderLookup, OrderStatus};
use sluice_core::sharding::ShardMap;
use uuid::Uuid;

use crate::writer::ShardWriter;

/// Answers `GET /order/{id}` from the shard that stores the user's orders.
pub struct ShardLookup {
    map: ShardMap,
    shards: Vec<Arc<dyn ShardWriter>>,
}

impl ShardLookup {
    /// `shards` in topology order, matching `map`'s shard indexes.
    pub fn new(map: ShardMap, shards: Vec<Arc<dyn ShardWriter>>) -> Self {
        ShardLookup { map, shards }
    }
}

#[async_trait]
impl OrderLookup for ShardLookup {
    async fn find(&self, user_id: &str, order_id: Uuid) -> Result<OrderStatus, LookupError> {
        let shard = &self.shards[self.map.shard_for_user(user_id)];
        shard
            .find(user_id, order_id)
            .await
            .map_err(|e| LookupError(e.into()))
    }
}
