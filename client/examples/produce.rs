//! Produces records to a topic and prints where each landed.
//!
//! ```text
//! cargo run -p sluice-client --example produce -- 127.0.0.1:9092 my-topic 10
//! ```
//! Arguments: brokers (`host:port[,host:port]`), topic (created with 4 partitions if it does
//! not exist), number of records (default 10).

use std::process::ExitCode;

use sluice_client::{Client, ClientConfig, ClientError, Producer, ProducerConfig, ProducerRecord};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let brokers = args.first().map_or("127.0.0.1:9092", String::as_str);
    let topic = args.get(1).map_or("example", String::as_str);
    let count: u32 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10);
    match run(brokers, topic, count).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(brokers: &str, topic: &str, count: u32) -> Result<(), ClientError> {
    let client = Client::connect(ClientConfig::new(brokers)).await?;
    if let Err(ClientError::UnknownTopic { .. }) = client.partition_count(topic).await {
        client.create_topic(topic, 4, &[]).await?;
    }
    let producer = Producer::new(client, ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..count {
        let record = ProducerRecord::new(topic, format!("hello {i}"))
            .key(format!("key-{}", i % 3))
            .header("source", "example");
        deliveries.push(producer.send(record).await?);
    }
    for delivery in deliveries {
        let meta = delivery.await?;
        println!("{}-{} @ {}", meta.topic, meta.partition, meta.offset);
    }
    producer.close().await
}
