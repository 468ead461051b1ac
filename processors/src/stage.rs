//! The stage contract.

use std::sync::Arc;

use sluice_core::log::{header_value, OutRecord};
use sluice_core::order::{
    HEADER_DLQ_REASON, HEADER_DLQ_SOURCE_OFFSET, HEADER_DLQ_SOURCE_PARTITION,
    HEADER_DLQ_SOURCE_TOPIC, HEADER_DLQ_STAGE, HEADER_ORDER_ID,
};

use crate::item::Item;

/// What a stage decided about one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pass the item (as the stage left it) on to this topic: to the next stage of the chain
    /// when that stage reads it, else to the log.
    Forward(Arc<str>),
    /// Send the item, unchanged, to the stage's dead-letter topic with this reason.
    DeadLetter(String),
}

/// A synchronous transformation of one item. Stages do no I/O; the runner does.
pub trait Stage: Send + Sync {
    /// Decides what becomes of `item`. A stage changes the item only when it forwards it, so
    /// a dead letter carries the stage's input.
    fn process(&self, item: &mut Item) -> Outcome;
}

/// Where the record a chain read came from: the input position a dead letter names.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Topic read.
    pub topic: &'a str,
    /// Partition read.
    pub partition: i32,
    /// Offset read.
    pub offset: i64,
}

/// The dead-letter record for `input` rejected by `stage` for `reason`: its key and body,
/// with the reason, the stage, the position it was read from and its order id (when
/// it has one) in headers. For a stage fused behind others, the position is the one the
/// chain read.
pub fn dead_letter(stage: &str, mut input: Item, source: Source, reason: &str) -> OutRecord {
    let order_id = input
        .order_id()
        .or_else(|| header_value(&input.headers, HEADER_ORDER_ID).map(str::to_string));
    // The runner adds the hop's `traceparent`; the input's other headers stay behind.
    input.headers.clear();
    let mut out = input
        .into_out_record()
        .with_header(HEADER_DLQ_REASON, reason)
        .with_header(HEADER_DLQ_STAGE, stage)
        .with_header(HEADER_DLQ_SOURCE_TOPIC, source.topic)
        .with_header(HEADER_DLQ_SOURCE_PARTITION, source.partition.to_string())
        .with_header(HEADER_DLQ_SOURCE_OFFSET, source.offset.to_string());
    if let Some(order_id) = order_id {
        out = out.with_header(HEADER_ORDER_ID, order_id);
    }
    out
}
