//! `kill -9` of Sluice at random moments on the embedded log and SQLite shards, short run:
//! part of `cargo test`.

use super::{run_suite, Fault, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_embedded_log_kill_9_at_random_moments_loses_and_duplicates_no_acknowledged_order() {
    run_suite("faults-embedded", &[Fault::EmbeddedKill], Settings::short()).await;
}
