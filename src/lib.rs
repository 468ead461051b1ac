//! The `sluice` binary's wiring, as a library so tests can start the pipeline in-process.
//!
//! [`pipeline::run`] builds every component a topology declares and runs them under one
//! shutdown tree; the binary (`src/main.rs`) only parses arguments and calls it.

pub mod capability_cli;
pub mod connect_check;
pub mod listeners;
pub mod open_files;
pub mod ops;
pub mod otlp;
pub mod pipeline;
pub mod process_metrics;
pub mod replay;
pub mod replay_socket;
pub mod status;
pub mod telemetry;
pub mod topology;
