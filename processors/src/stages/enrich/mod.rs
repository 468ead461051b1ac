//! `enrich`: adds price, line total, currency, timestamps, bucket and shard.

mod config;

pub use config::EnrichConfig;

use std::sync::Arc;

use sluice_core::order::{now_ms, EnrichedOrder, RawOrder};
use sluice_core::sharding::ShardMap;

use crate::catalog::CachedCatalog;
use crate::item::Item;
use crate::stage::{Outcome, Stage};

/// Turns raw orders into priced, bucketed orders.
pub struct Enrich {
    output: Arc<str>,
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
            output: output.into(),
            catalog,
            shard_map,
            shard_names,
        }
    }

    /// The enriched form of `order`, priced now.
    pub fn enrich(&self, order: RawOrder) -> Result<EnrichedOrder, String> {
        Ok(self.quote(&order)?.apply(order))
    }

    /// What enriching `order` adds to it, or why it cannot be enriched.
    fn quote(&self, order: &RawOrder) -> Result<Quote, String> {
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
        Ok(Quote {
            unit_price_minor: price.unit_minor,
            line_total_minor,
            currency: price.currency,
            bucket,
            shard: self.shard_names[self.shard_map.shard_index(bucket)].clone(),
        })
    }
}

/// The fields enriching an order adds.
struct Quote {
    unit_price_minor: i64,
    line_total_minor: i64,
    currency: String,
    bucket: u32,
    shard: String,
}

impl Quote {
    /// `order` with these fields, enriched now.
    fn apply(self, order: RawOrder) -> EnrichedOrder {
        EnrichedOrder {
            order_id: order.order_id,
            user_id: order.user_id,
            product: order.product,
            quantity: order.quantity,
            unit_price_minor: self.unit_price_minor,
            line_total_minor: self.line_total_minor,
            currency: self.currency,
            received_at_ms: order.received_at_ms,
            enriched_at_ms: now_ms(),
            bucket: self.bucket,
            shard: self.shard,
        }
    }
}

impl Stage for Enrich {
    fn process(&self, item: &mut Item) -> Outcome {
        let quote = match item.raw_order() {
            Ok(order) => self.quote(order),
            Err(e) => return Outcome::DeadLetter(format!("not a valid order record: {e}")),
        };
        match quote {
            Ok(quote) => {
                item.enrich_raw_order(|order| quote.apply(order));
                Outcome::Forward(self.output.clone())
            }
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
    use crate::stages::test_support::item;

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
        let mut input = item("carol", payload);
        assert_eq!(
            stage().process(&mut input),
            Outcome::Forward("enriched".into())
        );
        let enriched: EnrichedOrder =
            serde_json::from_slice(&input.into_out_record().payload).unwrap();
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
        let mut input = item("carol", unknown);
        assert_eq!(
            stage().process(&mut input),
            Outcome::DeadLetter("product \"boat\" is not in the catalog".into())
        );
        assert_eq!(
            input.into_out_record().payload,
            unknown.as_bytes(),
            "a rejected order is left as it came"
        );
        let huge = format!(
            r#"{{"orderId":"0190f7a4-0000-7000-8000-000000000001","userId":"carol","product":"gadget","quantity":{},"receivedAtMs":1}}"#,
            i64::MAX
        );
        let Outcome::DeadLetter(reason) = stage().process(&mut item("carol", &huge)) else {
            panic!("accepted")
        };
        assert!(reason.contains("overflows"), "{reason}");
    }
}
