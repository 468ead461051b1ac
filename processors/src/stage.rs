//! The stage contract.

use sluice_core::log::{OutRecord, Record};
use sluice_core::order::{
    HEADER_DLQ_REASON, HEADER_DLQ_SOURCE_OFFSET, HEADER_DLQ_SOURCE_PARTITION,
    HEADER_DLQ_SOURCE_TOPIC, HEADER_DLQ_STAGE, HEADER_ORDER_ID,
};

/// One record a stage wants written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emission {
    /// Destination topic.
    pub topic: String,
    /// The record.
    pub record: OutRecord,
}

/// What a stage decided about one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Write these records (possibly none: the input is dropped on purpose).
    Emit(Vec<Emission>),
    /// Send the input to the stage's dead-letter topic with this reason.
    DeadLetter(String),
}

/// A synchronous transformation of one record. Stages do no I/O; the runner does.
pub trait Stage: Send + Sync {
    /// Decides what becomes of `record`.
    fn process(&self, record: &Record) -> Outcome;
}

/// The dead-letter record for `input` rejected by `stage` for `reason`: the original key and
/// payload, with the reason and the source position in headers.
pub fn dead_letter(stage: &str, input: &Record, reason: &str) -> OutRecord {
    let mut out = OutRecord::new(input.key.clone(), input.payload.clone())
        .with_header(HEADER_DLQ_REASON, reason)
        .with_header(HEADER_DLQ_STAGE, stage)
        .with_header(HEADER_DLQ_SOURCE_TOPIC, input.topic.as_str())
        .with_header(HEADER_DLQ_SOURCE_PARTITION, input.partition.to_string())
        .with_header(HEADER_DLQ_SOURCE_OFFSET, input.offset.to_string());
    let order_id = serde_json::from_slice::<serde_json::Value>(&input.payload)
        .ok()
        .and_then(|v| {
            v.get("orderId")
                .and_then(|id| id.as_str())
                .map(str::to_string)
        });
    if let Some(order_id) = order_id.or_else(|| input.header(HEADER_ORDER_ID).map(str::to_string)) {
        out = out.with_header(HEADER_ORDER_ID, order_id);
    }
    out
}
