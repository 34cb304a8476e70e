//! A consumer group member: reads its share of a topic's partitions, prints each record, and
//! commits automatically; Ctrl-C leaves the group cleanly (committing first).
//!
//! ```text
//! cargo run -p sluice-client --example group_consume -- 127.0.0.1:9092 my-topic my-group
//! ```
//!
//! Run it two or three times with the same group: the partitions are shared, and each
//! rebalance is printed.

use std::process::ExitCode;
use std::time::Duration;

use sluice_client::{
    Client, ClientConfig, ClientError, Consumer, ConsumerConfig, RebalanceListener, TopicPartition,
};

struct Print;

impl RebalanceListener for Print {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        eprintln!("assigned {partitions:?}");
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        eprintln!("revoked {partitions:?}");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let brokers = args.first().map_or("127.0.0.1:9092", String::as_str);
    let topic = args.get(1).map_or("example", String::as_str);
    let group = args.get(2).map_or("example-group", String::as_str);
    match run(brokers, topic, group).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(brokers: &str, topic: &str, group: &str) -> Result<(), ClientError> {
    let client = Client::connect(ClientConfig::new(brokers)).await?;
    let config = ConsumerConfig {
        group_id: Some(group.to_owned()),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config);
    consumer.subscribe(vec![topic.to_owned()], Print)?;
    loop {
        tokio::select! {
            records = consumer.poll(Duration::from_secs(1)) => {
                for r in records? {
                    let value = r.value.as_deref().map(String::from_utf8_lossy);
                    println!("{}-{} @ {}: {}", r.topic, r.partition, r.offset,
                        value.as_deref().unwrap_or("null"));
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    consumer.close().await
}
