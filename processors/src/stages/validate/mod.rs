//! `validate`: rejects orders that break the configured rules.

mod config;

pub use config::{ValidateConfig, ValidateRules};

use std::collections::HashSet;

use regex::Regex;
use sluice_core::log::{OutRecord, Record};
use sluice_core::order::RawOrder;

use crate::stage::{Emission, Outcome, Stage};

/// Checks shape, product and quantity of raw orders.
pub struct Validate {
    output: String,
    min_quantity: i64,
    max_quantity: i64,
    user_id: Regex,
    known_products: Option<HashSet<String>>,
}

impl Validate {
    /// A validate stage writing to `output` with `rules`; `catalog` lists sold products.
    pub fn new(
        output: String,
        rules: &ValidateRules,
        catalog: HashSet<String>,
    ) -> Result<Self, regex::Error> {
        Ok(Validate {
            output,
            min_quantity: rules.min_quantity,
            max_quantity: rules.max_quantity,
            user_id: Regex::new(&format!("^(?:{})$", rules.user_id_pattern))?,
            known_products: rules.require_known_product.then_some(catalog),
        })
    }

    fn check(&self, record: &Record) -> Result<(), String> {
        let order: RawOrder = serde_json::from_slice(&record.payload)
            .map_err(|e| format!("not a valid order record: {e}"))?;
        if !self.user_id.is_match(&order.user_id) {
            return Err(format!(
                "userId {:?} does not match the required pattern {}",
                order.user_id, self.user_id
            ));
        }
        if record.key != order.user_id.as_bytes() {
            return Err(format!(
                "record key {:?} differs from userId {:?}",
                record.key_str(),
                order.user_id
            ));
        }
        if let Some(known) = &self.known_products {
            if !known.contains(&order.product) {
                return Err(format!("product {:?} is not in the catalog", order.product));
            }
        }
        if order.quantity < self.min_quantity || order.quantity > self.max_quantity {
            return Err(format!(
                "quantity {} is outside {}..={}",
                order.quantity, self.min_quantity, self.max_quantity
            ));
        }
        Ok(())
    }
}

impl Stage for Validate {
    fn process(&self, record: &Record) -> Outcome {
        match self.check(record) {
            Ok(()) => Outcome::Emit(vec![Emission {
                topic: self.output.clone(),
                record: OutRecord {
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    headers: record.headers.clone(),
                },
            }]),
            Err(reason) => Outcome::DeadLetter(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::test_support::record;

    fn stage() -> Validate {
        Validate::new(
            "valid".into(),
            &ValidateRules::default(),
            ["widget".to_string()].into(),
        )
        .unwrap()
    }

    fn order(user: &str, product: &str, quantity: i64) -> String {
        format!(
            r#"{{"orderId":"0190f7a4-0000-7000-8000-000000000001","userId":"{user}","product":"{product}","quantity":{quantity},"receivedAtMs":1}}"#
        )
    }

    fn reason(outcome: Outcome) -> String {
        match outcome {
            Outcome::DeadLetter(reason) => reason,
            Outcome::Emit(_) => panic!("expected a rejection"),
        }
    }

    #[test]
    fn good_order_passes_unchanged() {
        let payload = order("alice", "widget", 3);
        match stage().process(&record("raw", "alice", &payload)) {
            Outcome::Emit(out) => {
                assert_eq!(out.len(), 1);
                assert_eq!(out[0].topic, "valid");
                assert_eq!(out[0].record.payload, payload.as_bytes());
                assert_eq!(out[0].record.key, b"alice");
            }
            other => panic!("rejected: {other:?}"),
        }
    }

    #[test]
    fn each_rule_names_its_reason() {
        let s = stage();
        assert_eq!(
            reason(s.process(&record("raw", "alice", &order("alice", "widget", 0)))),
            "quantity 0 is outside 1..=1000"
        );
        assert_eq!(
            reason(s.process(&record("raw", "alice", &order("alice", "widget", 1001)))),
            "quantity 1001 is outside 1..=1000"
        );
        assert_eq!(
            reason(s.process(&record("raw", "alice", &order("alice", "boat", 1)))),
            "product \"boat\" is not in the catalog"
        );
        assert!(
            reason(s.process(&record("raw", "a b", &order("a b", "widget", 1))))
                .starts_with("userId \"a b\" does not match")
        );
        assert_eq!(
            reason(s.process(&record("raw", "bob", &order("alice", "widget", 1)))),
            "record key \"bob\" differs from userId \"alice\""
        );
        assert!(reason(s.process(&record("raw", "alice", "{not json")))
            .starts_with("not a valid order record"));
    }
}
