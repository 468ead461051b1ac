//! A record on its way through a chain of stages.
//!
//! The body is decoded at most once in a process: the first stage that needs the order
//! decodes it, the stages after it in the same chain get the decoded order, and the body is
//! encoded again only where it is written to a topic. A stage that passes the order on
//! unchanged (validate, route) keeps the bytes it was read as, so what it writes is exactly
//! what it read.

use sluice_core::log::{OutRecord, Record};
use sluice_core::order::{from_json, EnrichedOrder, RawOrder};

/// One record handed from stage to stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Partitioning key.
    pub key: Vec<u8>,
    /// Named metadata, as read (the runner sets `traceparent` on what it writes).
    pub headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

/// The body in whichever forms are at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// Bytes nobody decoded yet.
    Encoded(Vec<u8>),
    /// An order as the ingress wrote it, with the bytes it was read as while it is unchanged.
    Raw(RawOrder, Option<Vec<u8>>),
    /// An enriched order, with its bytes once encoded.
    Enriched(EnrichedOrder, Option<Vec<u8>>),
}

impl Item {
    /// An item with `payload` as its body, not decoded yet.
    pub fn new(key: Vec<u8>, payload: Vec<u8>, headers: Vec<(String, Vec<u8>)>) -> Self {
        Item {
            key,
            headers,
            body: Body::Encoded(payload),
        }
    }

    /// The body as an order placed at the ingress, decoded on first use.
    pub fn raw_order(&mut self) -> Result<&RawOrder, serde_json::Error> {
        if !matches!(self.body, Body::Raw(..)) {
            let bytes = self.take_encoded();
            match from_json(&bytes) {
                Ok(order) => self.body = Body::Raw(order, Some(bytes)),
                Err(error) => {
                    self.body = Body::Encoded(bytes);
                    return Err(error);
                }
            }
        }
        match &self.body {
            Body::Raw(order, _) => Ok(order),
            _ => unreachable!("decoded just above"),
        }
    }

    /// The body as an enriched order, decoded on first use.
    pub fn enriched_order(&mut self) -> Result<&EnrichedOrder, serde_json::Error> {
        if !matches!(self.body, Body::Enriched(..)) {
            let bytes = self.take_encoded();
            match from_json(&bytes) {
                Ok(order) => self.body = Body::Enriched(order, Some(bytes)),
                Err(error) => {
                    self.body = Body::Encoded(bytes);
                    return Err(error);
                }
            }
        }
        match &self.body {
            Body::Enriched(order, _) => Ok(order),
            _ => unreachable!("decoded just above"),
        }
    }

    /// Replaces a body decoded by [`Item::raw_order`] with `enrich`'s result (encoded only
    /// when it is written). Does nothing to a body that is not a decoded order.
    pub fn enrich_raw_order(&mut self, enrich: impl FnOnce(RawOrder) -> EnrichedOrder) {
        if let Body::Raw(..) = self.body {
            let Body::Raw(order, _) = std::mem::replace(&mut self.body, Body::Encoded(Vec::new()))
            else {
                unreachable!("matched just above")
            };
            self.body = Body::Enriched(enrich(order), None);
        }
    }

    /// The body's bytes, encoding it first if it changed.
    pub fn payload(&mut self) -> &[u8] {
        let bytes = self.take_encoded();
        self.body = match std::mem::replace(&mut self.body, Body::Encoded(Vec::new())) {
            Body::Raw(order, _) => Body::Raw(order, Some(bytes)),
            Body::Enriched(order, _) => Body::Enriched(order, Some(bytes)),
            Body::Encoded(_) => Body::Encoded(bytes),
        };
        match &self.body {
            Body::Encoded(bytes) | Body::Raw(_, Some(bytes)) | Body::Enriched(_, Some(bytes)) => {
                bytes
            }
            _ => unreachable!("encoded just above"),
        }
    }

    /// The order id, when the body is an order (for log lines, spans and dead letters).
    pub fn order_id(&self) -> Option<String> {
        match &self.body {
            Body::Raw(order, _) => Some(order.order_id.to_string()),
            Body::Enriched(order, _) => Some(order.order_id.to_string()),
            Body::Encoded(bytes) => order_id_of(bytes),
        }
    }

    /// The record to write: this item's key, body and headers.
    pub fn to_out_record(&mut self) -> OutRecord {
        OutRecord {
            key: self.key.clone(),
            payload: self.payload().to_vec(),
            headers: self.headers.clone(),
        }
    }

    /// The record to write, consuming the item (nothing is copied).
    pub fn into_out_record(mut self) -> OutRecord {
        self.payload();
        let payload = self.take_encoded();
        OutRecord {
            key: self.key,
            payload,
            headers: self.headers,
        }
    }

    /// Takes the body's bytes out (encoding a decoded order that has none), leaving an empty
    /// encoded body behind: the caller puts a body back.
    fn take_encoded(&mut self) -> Vec<u8> {
        match std::mem::replace(&mut self.body, Body::Encoded(Vec::new())) {
            Body::Encoded(bytes) | Body::Raw(_, Some(bytes)) | Body::Enriched(_, Some(bytes)) => {
                bytes
            }
            // Both order types are strings, integers and a UUID: encoding them cannot fail.
            Body::Raw(order, None) => serde_json::to_vec(&order).expect("an order encodes as JSON"),
            Body::Enriched(order, None) => {
                serde_json::to_vec(&order).expect("an order encodes as JSON")
            }
        }
    }
}

/// The `orderId` of a JSON order body, if it has one (for log lines, spans and dead letters).
pub fn order_id_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct OrderId {
        #[serde(rename = "orderId")]
        order_id: String,
    }
    from_json::<OrderId>(payload).ok().map(|id| id.order_id)
}

impl From<Record> for Item {
    fn from(record: Record) -> Self {
        Item::new(record.key, record.payload, record.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"{"orderId":"0190f7a4-0000-7000-8000-000000000001","userId":"carol","product":"gadget","quantity":3,"receivedAtMs":1, "extra": true}"#;

    #[test]
    fn an_unchanged_order_is_written_as_the_bytes_it_was_read_as() {
        let mut item = Item::new(
            b"carol".to_vec(),
            RAW.into(),
            vec![("h".into(), b"v".to_vec())],
        );
        assert_eq!(item.raw_order().unwrap().quantity, 3);
        assert_eq!(
            item.order_id().as_deref(),
            Some("0190f7a4-0000-7000-8000-000000000001")
        );
        let out = item.into_out_record();
        assert_eq!(
            out.payload,
            RAW.as_bytes(),
            "the unknown field and spacing survive"
        );
        assert_eq!(out.key, b"carol");
        assert_eq!(out.headers, vec![("h".to_string(), b"v".to_vec())]);
    }

    #[test]
    fn a_changed_order_is_encoded_where_it_is_written() {
        let mut item = Item::new(b"carol".to_vec(), RAW.into(), Vec::new());
        item.raw_order().unwrap();
        let enrich = |raw: RawOrder| EnrichedOrder {
            order_id: raw.order_id,
            user_id: raw.user_id,
            product: raw.product,
            quantity: raw.quantity,
            unit_price_minor: 2450,
            line_total_minor: 7350,
            currency: "EUR".into(),
            received_at_ms: 1,
            enriched_at_ms: 2,
            bucket: 7,
            shard: "s0".into(),
        };
        let enriched = enrich(item.clone().raw_order().unwrap().clone());
        item.enrich_raw_order(enrich);
        assert_eq!(item.enriched_order().unwrap(), &enriched);
        let written = item.to_out_record();
        assert_eq!(
            serde_json::from_slice::<EnrichedOrder>(&written.payload).unwrap(),
            enriched
        );
        // Asked for as another type, the body goes through its bytes, as across a topic.
        assert_eq!(item.raw_order().unwrap().quantity, 3);
        assert_eq!(item.into_out_record().payload, written.payload);
    }

    #[test]
    fn a_body_that_is_no_order_fails_to_decode_and_keeps_its_bytes() {
        let mut item = Item::new(Vec::new(), b"{not json".to_vec(), Vec::new());
        assert!(item.raw_order().is_err());
        assert_eq!(item.order_id(), None);
        // The failed decode consumed the bytes it was given; the item must still hold them.
        assert_eq!(item.payload(), b"{not json");
    }
}
