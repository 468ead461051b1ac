//! Sluice core: what every component shares.
//!
//! - [`order`]: the order and login events that travel through the log;
//! - [`log`]: the partitioned, replayable [`log::Log`] abstraction and its Kafka backend;
//! - [`topology`]: the `topology.toml` model, its loading and its validation;
//! - [`sharding`]: the stable user-id → bucket → shard mapping;
//! - [`lookup`]: the read contract the ingress uses to report an order's status;
//! - [`shutdown`]: one cancellation tree for graceful drain;
//! - [`retry`]: retrying with exponential backoff, jitter and cancellation;
//! - [`telemetry`]: JSON logs and the Prometheus recorder.

pub mod log;
pub mod lookup;
pub mod order;
pub mod retry;
pub mod sharding;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
