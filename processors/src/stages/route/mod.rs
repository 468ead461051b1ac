//! `route`: sends each enriched order to the topic of the shard that owns its user's bucket.

mod config;

pub use config::RouteConfig;

use std::sync::Arc;

use sluice_core::sharding::ShardMap;

use crate::item::Item;
use crate::stage::{Outcome, Stage};

/// Routes enriched orders to one stream per shard.
pub struct Route {
    shard_map: ShardMap,
    shard_topics: Vec<Arc<str>>,
}

impl Route {
    /// A route stage over `shard_topics` (in topology shard order).
    pub fn new(shard_map: ShardMap, shard_topics: Vec<String>) -> Self {
        Route {
            shard_map,
            shard_topics: shard_topics.into_iter().map(Arc::from).collect(),
        }
    }
}

impl Stage for Route {
    fn process(&self, item: &mut Item) -> Outcome {
        match item.enriched_order() {
            Ok(order) => Outcome::Forward(
                self.shard_topics[self.shard_map.shard_for_user(&order.user_id)].clone(),
            ),
            Err(e) => Outcome::DeadLetter(format!("not a valid enriched order: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::sharding::{bucket_of, BucketRange};

    use super::*;
    use crate::stages::test_support::item;

    #[test]
    fn every_user_goes_to_the_shard_owning_its_bucket() {
        let ranges: Vec<_> = (0..4)
            .map(|i| {
                (
                    format!("s{i}"),
                    BucketRange {
                        first: i * 64,
                        last: i * 64 + 63,
                    },
                )
            })
            .collect();
        let route = Route::new(
            ShardMap::new(256, &ranges).unwrap(),
            (0..4).map(|i| format!("shard.{i}")).collect(),
        );
        let mut seen = [0; 4];
        for n in 0..200 {
            let user = format!("user{n}");
            let payload = format!(
                r#"{{"orderId":"0190f7a4-0000-7000-8000-000000000001","userId":"{user}","product":"p","quantity":1,"unitPriceMinor":1,"lineTotalMinor":1,"currency":"EUR","receivedAtMs":1,"enrichedAtMs":2,"bucket":0,"shard":"s0"}}"#
            );
            let mut input = item(&user, &payload);
            let Outcome::Forward(topic) = route.process(&mut input) else {
                panic!("rejected")
            };
            let expected = (bucket_of(&user, 256) / 64) as usize;
            assert_eq!(&*topic, format!("shard.{expected}"));
            assert_eq!(input.into_out_record().payload, payload.as_bytes());
            seen[expected] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        assert!(matches!(
            route.process(&mut item("x", "[]")),
            Outcome::DeadLetter(_)
        ));
    }
}
