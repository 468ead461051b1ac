//! Sluice's integration tests: the `sluice` binary and its libraries against a real broker,
//! real MariaDB shards and real HTTP clients (and the same tests on the embedded log with
//! SQLite shards).
//!
//! All suites live in this one test binary so the workspace links it once instead of once per
//! file; run a single suite with `cargo test --test integration end_to_end::`.

mod common;

mod alerts;
mod attacks;
mod capability;
mod chaining;
mod check_cli;
mod consumer_groups;
mod dashboard;
mod disk_full;
mod embedded_disk;
mod end_to_end;
mod faults;
mod idempotency;
mod ingress_errors;
mod kafka_security;
mod log_conformance;
mod metrics;
mod partitions;
mod process_kill;
mod replay;
mod restart;
mod scale_out;
mod sink_crash;
mod sink_refusal;
mod status_page;
mod traces;
