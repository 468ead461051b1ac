//! `route`: sends each enriched order to the topic of the shard that owns its user's bucket.

mod config;

pub use config::RouteConfig;

use sluice_core::log::{OutRecord, Record};
use sluice_core::order::EnrichedOrder;
use sluice_core::sharding::ShardMap;

use crate::stage::{Emission, Outcome, Stage};

/// Routes enriched orders to one stream per shard.
pub struct Route {
    shard_map: ShardMap,
    shard_topics: Vec<String>,
}

impl Route {
    /// A route stage over `shard_topics` (in topology shard order).
    pub fn new(shard_map: ShardMap, shard_topics: Vec<String>) -> Self {
        Route {
            shard_map,
            shard_topics,
        }
    }
}

impl Stage for Route {
    fn process(&self, record: &Record) -> Outcome {
        let order: EnrichedOrder = match serde_json::from_slice(&record.payload) {
            Ok(order) => order,
            Err(e) => return Outcome::DeadLetter(format!("not a valid enriched order: {e}")),
        };
        // The bucket is recomputed rather than trusted, so a stale record cannot land on the
        // wrong shard after the map changed.
        let shard = self.shard_map.shard_for_user(&order.user_id);
        Outcome::Emit(vec![Emission {
            topic: self.shard_topics[shard].clone(),
            record: OutRecord {
                key: record.key.clone(),
                payload: record.payload.clone(),
                headers: record.headers.clone(),
            },
        }])
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::sharding::{bucket_of, BucketRange};

    use super::*;
    use crate::stages::test_support::record;

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
            let Outcome::Emit(out) = route.process(&record("enriched", &user, &payload)) else {
                panic!("rejected")
            };
            let expected = (bucket_of(&user, 256) / 64) as usize;
            assert_eq!(out[0].topic, format!("shard.{expected}"));
            seen[expected] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        assert!(matches!(
            route.process(&record("enriched", "x", "[]")),
            Outcome::DeadLetter(_)
        ));
    }
}
