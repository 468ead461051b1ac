//! Every fault on Kafka and MariaDB (a private instance), short run: part of `cargo test`.

use super::{run_suite, Settings, SERVICES_FAULTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_and_mariadb_every_fault_loses_and_duplicates_no_acknowledged_order() {
    run_suite("faults-services", &SERVICES_FAULTS, Settings::short()).await;
}
