//! The Kafka backend's errors keep librdkafka's own error as their source, so callers can
//! inspect it, and still say in their message what failed.

use std::error::Error;

use sluice_log_kafka::{KafkaLog, KafkaLogConfig};

#[test]
fn a_kafka_client_that_cannot_be_created_reports_librdkafkas_error_as_the_source() {
    let mut config = KafkaLogConfig::new("127.0.0.1:1");
    config
        .properties
        .insert("no.such.property".to_string(), "1".to_string());
    let error = match KafkaLog::new(&config, "sluice") {
        Ok(_) => panic!("an unknown librdkafka property must be refused"),
        Err(error) => error,
    };
    let source = error.source().expect("librdkafka's error is kept");
    assert!(
        matches!(
            source.downcast_ref::<rdkafka::error::KafkaError>(),
            Some(rdkafka::error::KafkaError::ClientConfig(..))
        ),
        "source is {source:?}"
    );
    assert!(
        error.to_string().contains("no.such.property"),
        "the message names the property: {error}"
    );
}
