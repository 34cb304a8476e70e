//! A fake broker over a real socket answers an idempotent producer's batch with
//! DUPLICATE_SEQUENCE_NUMBER: the partition has the batch already (a retry whose first answer
//! was lost, after later batches landed), so its records are delivered, at offset -1, as
//! Kafka's producer reports them. Any other refusal still fails them.

use std::time::Duration;

mod fake_broker;

use fake_broker::{answer, read_request};
use sluice_client::{Acks, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use sluice_proto::protocol::{
    ApiKey, ApiVersionsResponse, BrokerMetadata, ErrorCode, InitProducerIdResponse,
    MetadataResponse, PartitionMetadata, ProducePartitionResult, ProduceResponse,
    ProduceTopicResult, ShardAddress, TopicMetadata, api_version_ranges,
};
use tokio::net::TcpListener;

const TOPIC: &str = "dup";

/// One node, one shard, topic `dup` with one partition; every Produce is answered `code`
/// for partition 0 (base offset 41 when that is NONE).
async fn serve(listener: TcpListener, code: ErrorCode) {
    let port = listener.local_addr().expect("addr").port();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            while let Some(header) = read_request(&mut stream).await {
                let id = header.correlation_id;
                match header.api_key {
                    k if k == ApiKey::ApiVersions as u16 => {
                        let body = ApiVersionsResponse {
                            apis: api_version_ranges(),
                            node_id: 0,
                            shard: 0,
                            shard_count: 1,
                        };
                        answer(&mut stream, id, &body).await;
                    }
                    k if k == ApiKey::Metadata as u16 => {
                        let body = MetadataResponse {
                            brokers: vec![BrokerMetadata {
                                node_id: 0,
                                host: "127.0.0.1".into(),
                                port,
                                shards: vec![ShardAddress {
                                    shard: 0,
                                    host: "127.0.0.1".into(),
                                    port,
                                }],
                            }],
                            topics: vec![TopicMetadata {
                                name: TOPIC.into(),
                                error: ErrorCode::NONE,
                                message: String::new(),
                                partitions: vec![PartitionMetadata {
                                    partition: 0,
                                    error: ErrorCode::NONE,
                                    leader: 0,
                                    leader_shard: 0,
                                    leader_epoch: 0,
                                    replicas: vec![0],
                                    isr: vec![0],
                                }],
                            }],
                        };
                        answer(&mut stream, id, &body).await;
                    }
                    k if k == ApiKey::InitProducerId as u16 => {
                        let body = InitProducerIdResponse {
                            error: ErrorCode::NONE,
                            message: String::new(),
                            producer_id: 7,
                            producer_epoch: 0,
                        };
                        answer(&mut stream, id, &body).await;
                    }
                    k if k == ApiKey::Produce as u16 => {
                        let body = ProduceResponse {
                            throttle_ms: 0,
                            topics: vec![ProduceTopicResult {
                                name: TOPIC.into(),
                                partitions: vec![ProducePartitionResult {
                                    partition: 0,
                                    error: code,
                                    message: format!("{code}"),
                                    base_offset: 41,
                                    log_start_offset: 0,
                                }],
                            }],
                        };
                        answer(&mut stream, id, &body).await;
                    }
                    other => panic!("unexpected request {other}"),
                }
            }
        });
    }
}

/// Sends one record with an idempotent (or plain) acks=all producer to a fake broker that
/// answers `code`; the delivery's offset, or its error.
async fn deliver(code: ErrorCode, idempotence: bool) -> Result<i64, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(serve(listener, code));
    let client = Client::connect(ClientConfig::new(&addr))
        .await
        .expect("connect");
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            idempotence: Some(idempotence),
            retries: 0,
            delivery_timeout: Duration::from_secs(10),
            ..ProducerConfig::default()
        },
    );
    let record = ProducerRecord::new(TOPIC, bytes::Bytes::from_static(b"v")).partition(0);
    let delivery = producer.send(record).await.expect("send");
    let outcome = tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("settled within the delivery timeout");
    outcome.map(|m| m.offset).map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_idempotent_batch_the_partition_already_has_is_delivered_at_an_unknown_offset() {
    assert_eq!(deliver(ErrorCode::NONE, true).await, Ok(41));
    assert_eq!(
        deliver(ErrorCode::DUPLICATE_SEQUENCE_NUMBER, true).await,
        Ok(-1)
    );
    // A batch without a sequence cannot be a duplicate: the code is an error for it.
    let plain = deliver(ErrorCode::DUPLICATE_SEQUENCE_NUMBER, false).await;
    assert!(plain.is_err(), "{plain:?}");
    // Other refusals of an idempotent batch still fail it.
    let refused = deliver(ErrorCode::INVALID_PRODUCER_EPOCH, true).await;
    assert!(refused.is_err(), "{refused:?}");
}
