//! Sluice core: the contracts every component shares, and nothing else.
//!
//! - [`order`]: the order and login events that travel through the log;
//! - [`log`]: the partitioned, replayable [`log::Log`] contract and [`log::LogConsumer`],
//!   which no backend can make skip a record (the backends are the `sluice-log-kafka` and
//!   `sluice-log-embedded` crates);
//! - [`topology`]: the sections of `topology.toml` every component refers to (topics,
//!   shards) and the tools components use to check their own sections;
//! - [`sharding`]: the stable user-id → bucket → shard mapping;
//! - [`lookup`]: the read contract the ingress uses to report an order's status;
//! - [`shutdown`]: one cancellation tree for graceful drain;
//! - [`retry`]: retrying with exponential backoff, jitter and cancellation;
//! - [`telemetry`]: the name of every metric Sluice emits;
//! - [`trace`]: W3C trace context and the span export hook.

pub mod lag;
pub mod log;
pub mod lookup;
pub mod order;
pub mod retry;
pub mod sharding;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod trace;
