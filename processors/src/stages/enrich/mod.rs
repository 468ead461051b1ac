//! `enrich`: adds price, line total, currency, timestamps, bucket and shard.

mod config;

pub use config::EnrichConfig;

use sluice_core::log::{OutRecord, Record};
use sluice_core::order::{now_ms, EnrichedOrder, RawOrder};
use sluice_core::sharding::ShardMap;

use crate::catalog::CachedCatalog;
use crate::stage::{Emission, Outcome, Stage};

/// Turns raw orders into priced, bucketed orders.
pub struct Enrich {
    output: String,
    catalog: CachedCatalog,
    shard_map: ShardMap,
    shard_names: Vec<String>,
}

impl Enrich {
    /// An enrich stage writing to `output`, pricing from `catalog`.
    pub fn new(
        output: String,
        catalog: CachedCatalog,
        shard_map: ShardMap,
        shard_names: Vec<String>,
    ) -> Self {
        Enrich {
            output,
            catalog,
            shard_map,
            shard_names,
        }
    }

    /// The enriched form of `order`, priced now.
    pub fn enrich(&self, order: RawOrder) -> Result<EnrichedOrder, String> {
        let price = self
            .catalog
            .price(&order.product)
            .ok_or_else(|| format!("product {:?} is not in the catalog", order.product))?;
        let line_total_minor = price
            .unit_minor
            .checked_mul(order.quantity)
            .ok_or_else(|| {
                format!(
                    "line total of {} x {} overflows",
                    order.quantity, price.unit_minor
                )
            })?;
        let bucket = self.shard_map.bucket(&order.user_id);
        Ok(EnrichedOrder {
            order_id: order.order_id,
            shard: self.shard_names[self.shard_map.shard_index(bucket)].clone(),
            user_id: order.user_id,
            product: order.product,
            quantity: order.quantity,
            unit_price_minor: price.unit_minor,
            line_total_minor,
            currency: price.currency,
            received_at_ms: order.received_at_ms,
            enriched_at_ms: now_ms(),
            bucket,
        })
    }
}

impl Stage for Enrich {
    fn process(&self, record: &Record) -> Outcome {
        let order: RawOrder = match serde_json::from_slice(&record.payload) {
            Ok(order) => order,
            Err(e) => return Outcome::DeadLetter(format!("not a valid order record: {e}")),
        };
        match self.enrich(order) {
            Ok(enriched) => match serde_json::to_vec(&enriched) {
                Ok(payload) => Outcome::Emit(vec![Emission {
                    topic: self.output.clone(),
                    record: OutRecord {
                        key: record.key.clone(),
                        payload,
                        headers: record.headers.clone(),
                    },
                }]),
                Err(e) => Outcome::DeadLetter(format!("cannot encode enriched order: {e}")),
            },
            Err(reason) => Outcome::DeadLetter(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use sluice_core::sharding::BucketRange;

    use super::*;
    use crate::catalog::{CatalogEntry, TopologyCatalog};
    use crate::stages::test_support::record;

    fn stage() -> Enrich {
        let mut entries = BTreeMap::new();
        entries.insert(
            "gadget".to_string(),
            CatalogEntry {
                price: "24.50".into(),
                currency: "EUR".into(),
            },
        );
        let ranges = vec![
            ("s0".to_string(), BucketRange { first: 0, last: 7 }),
            ("s1".to_string(), BucketRange { first: 8, last: 15 }),
        ];
        let map = ShardMap::new(16, &ranges).unwrap();
        Enrich::new(
            "enriched".into(),
            CachedCatalog::new(Arc::new(TopologyCatalog::new(&entries))),
            map,
            vec!["s0".into(), "s1".into()],
        )
    }

    #[test]
    fn prices_and_places_an_order() {
        let payload = r#"{"orderId":"0190f7a4-0000-7000-8000-000000000001","userId":"carol","product":"gadget","quantity":3,"receivedAtMs":1700000000000}"#;
        let Outcome::Emit(out) = stage().process(&record("valid", "carol", payload)) else {
            panic!("rejected")
        };
        assert_eq!(out[0].topic, "enriched");
        let enriched: EnrichedOrder = serde_json::from_slice(&out[0].record.payload).unwrap();
        assert_eq!(enriched.unit_price_minor, 2450);
        assert_eq!(enriched.line_total_minor, 7350);
        assert_eq!(enriched.currency, "EUR");
        assert_eq!(enriched.received_at_ms, 1_700_000_000_000);
        assert!(enriched.enriched_at_ms >= enriched.received_at_ms);
        let bucket = sluice_core::sharding::bucket_of("carol", 16);
        assert_eq!(enriched.bucket, bucket);
        assert_eq!(enriched.shard, if bucket < 8 { "s0" } else { "s1" });
    }

    #[test]
    fn unknown_product_and_overflow_are_dead_lettered() {
        let unknown = r#"{"orderId":"0190f7a4-0000-7000-8000-000000000001","userId":"carol","product":"boat","quantity":3,"receivedAtMs":1}"#;
        assert_eq!(
            stage().process(&record("valid", "carol", unknown)),
            Outcome::DeadLetter("product \"boat\" is not in the catalog".into())
        );
        let huge = format!(
            r#"{{"orderId":"0190f7a4-0000-7000-8000-000000000001","userId":"carol","product":"gadget","quantity":{},"receivedAtMs":1}}"#,
            i64::MAX
        );
        let Outcome::DeadLetter(reason) = stage().process(&record("valid", "carol", &huge)) else {
            panic!("accepted")
        };
        assert!(reason.contains("overflows"), "{reason}");
    }
}
