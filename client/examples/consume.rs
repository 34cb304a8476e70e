//! Reads a topic from the beginning and prints each record, until a poll comes back empty.
//!
//! ```text
//! cargo run -p sluice-client --example consume -- 127.0.0.1:9092 my-topic
//! ```

use std::process::ExitCode;
use std::time::Duration;

use sluice_client::{Client, ClientConfig, ClientError, Consumer, ConsumerConfig, TopicPartition};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let brokers = args.first().map_or("127.0.0.1:9092", String::as_str);
    let topic = args.get(1).map_or("example", String::as_str);
    match run(brokers, topic).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(brokers: &str, topic: &str) -> Result<(), ClientError> {
    let client = Client::connect(ClientConfig::new(brokers)).await?;
    let partitions = client.partition_count(topic).await?;
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    // Unset positions start at the earliest offset.
    consumer.assign(
        (0..partitions)
            .map(|p| TopicPartition::new(topic, p))
            .collect(),
    );
    loop {
        let records = consumer.poll(Duration::from_secs(1)).await?;
        if records.is_empty() {
            return Ok(());
        }
        for r in records {
            let value = r.value.as_deref().map(String::from_utf8_lossy);
            println!(
                "{}-{} @ {}: {}",
                r.topic,
                r.partition,
                r.offset,
                value.as_deref().unwrap_or("null")
            );
        }
    }
}
