//! `validate`: rejects orders that break the configured rules.

mod config;

pub use config::{ValidateConfig, ValidateRules};

use std::collections::HashSet;
use std::sync::Arc;

use regex::Regex;

use crate::item::Item;
use crate::stage::{Outcome, Stage};

/// Checks shape, product and quantity of raw orders.
pub struct Validate {
    output: Arc<str>,
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
            output: output.into(),
            min_quantity: rules.min_quantity,
            max_quantity: rules.max_quantity,
            user_id: Regex::new(&format!("^(?:{})$", rules.user_id_pattern))?,
            known_products: rules.require_known_product.then_some(catalog),
        })
    }

    fn check(&self, item: &mut Item) -> Result<(), String> {
        let key = std::mem::take(&mut item.key);
        let checked = self.check_order(item, &key);
        item.key = key;
        checked
    }

    fn check_order(&self, item: &mut Item, key: &[u8]) -> Result<(), String> {
        let order = item
            .raw_order()
            .map_err(|e| format!("not a valid order record: {e}"))?;
        if !self.user_id.is_match(&order.user_id) {
            return Err(format!(
                "userId {:?} does not match the required pattern {}",
                order.user_id, self.user_id
            ));
        }
        if key != order.user_id.as_bytes() {
            return Err(format!(
                "record key {:?} differs from userId {:?}",
                String::from_utf8_lossy(key),
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
    fn process(&self, item: &mut Item) -> Outcome {
        match self.check(item) {
            Ok(()) => Outcome::Forward(self.output.clone()),
            Err(reason) => Outcome::DeadLetter(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::test_support::item;

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
            Outcome::Forward(_) => panic!("expected a rejection"),
        }
    }

    #[test]
    fn good_order_passes_unchanged() {
        let payload = order("alice", "widget", 3);
        let mut input = item("alice", &payload);
        assert_eq!(
            stage().process(&mut input),
            Outcome::Forward("valid".into())
        );
        let out = input.into_out_record();
        assert_eq!(out.payload, payload.as_bytes());
        assert_eq!(out.key, b"alice");
    }

    #[test]
    fn each_rule_names_its_reason() {
        let s = stage();
        assert_eq!(
            reason(s.process(&mut item("alice", &order("alice", "widget", 0)))),
            "quantity 0 is outside 1..=1000"
        );
        assert_eq!(
            reason(s.process(&mut item("alice", &order("alice", "widget", 1001)))),
            "quantity 1001 is outside 1..=1000"
        );
        assert_eq!(
            reason(s.process(&mut item("alice", &order("alice", "boat", 1)))),
            "product \"boat\" is not in the catalog"
        );
        assert!(
            reason(s.process(&mut item("a b", &order("a b", "widget", 1))))
                .starts_with("userId \"a b\" does not match")
        );
        assert_eq!(
            reason(s.process(&mut item("bob", &order("alice", "widget", 1)))),
            "record key \"bob\" differs from userId \"alice\""
        );
        assert!(reason(s.process(&mut item("alice", "{not json")))
            .starts_with("not a valid order record"));
    }
}
