//! `GET /order/{id}` while a shard is frozen: answered 503 within the ingress's lookup timeout
//! rather than held open, and answered again once the shard is back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::TestTopology;

/// Looks up orders of one user per shard, as that user.
pub struct LookupProbe {
    client: reqwest::Client,
    order_base: String,
    /// A token of a user whose orders shard `index` stores, by index.
    tokens_by_shard: Vec<Option<String>>,
    /// The ingress's `lookup_timeout_ms`.
    limit: Duration,
}

impl LookupProbe {
    /// A probe of the ingress at `order_base`, with the `tokens` (by user) of `test`'s users.
    pub fn new(order_base: String, test: &TestTopology, tokens: &HashMap<String, String>) -> Self {
        let topology = test.topology();
        let map = topology
            .shard_map()
            .expect("the test topology has a shard map");
        let tokens_by_shard = (0..topology.shards.len())
            .map(|index| {
                tokens
                    .iter()
                    .find(|(user, _)| map.shard_for_user(user) == index)
                    .map(|(_, token)| token.clone())
            })
            .collect();
        LookupProbe {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            order_base,
            tokens_by_shard,
            limit: Duration::from_millis(topology.ingress.lookup_timeout_ms),
        }
    }

    /// Looks up a new order id of shard `index`'s user: the status (`None`: no answer) and how
    /// long the answer took.
    async fn lookup(&self, index: usize) -> Result<(Option<u16>, Duration), String> {
        let token = self.tokens_by_shard[index]
            .as_ref()
            .ok_or_else(|| format!("no test user's orders are on shard {index}"))?;
        let started = Instant::now();
        let response = self
            .client
            .get(format!(
                "{}/order/{}",
                self.order_base,
                uuid::Uuid::now_v7()
            ))
            .bearer_auth(token)
            .send()
            .await;
        Ok((
            response.ok().map(|r| r.status().as_u16()),
            started.elapsed(),
        ))
    }

    /// While shard `index` is frozen: a lookup of its user's order answers 503 at the lookup
    /// timeout (within a margin for a busy machine).
    pub async fn while_frozen(&self, index: usize) -> Result<(), String> {
        let (status, took) = self.lookup(index).await?;
        // At the timeout, not before: a quicker 503 would be another refusal.
        if status == Some(503) && took >= self.limit && took < self.limit + Duration::from_secs(3) {
            return Ok(());
        }
        Err(format!(
            "GET /order on frozen shard {index}: {} after {took:?}, expected 503 at the {:?} lookup timeout",
            status.map_or("no answer".to_string(), |s| s.to_string()),
            self.limit
        ))
    }

    /// Once shard `index` is back: a lookup of its user's order is answered from the shard
    /// again within 20 s (200: a new order id that nothing stored yet reads as pending).
    pub async fn after_thaw(&self, index: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        while Instant::now() < deadline {
            let (status, _) = self.lookup(index).await?;
            if status == Some(200) {
                return Ok(());
            }
            last = status;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!(
            "GET /order on shard {index} still answers {last:?} 20 s after it was thawed"
        ))
    }
}
