//! Clients against a real three-node cluster (issue 6, round 2, "client"):
//! - producer ids are unique across the nodes (`(node_id << 40) | counter`), and any node
//!   bumps the epoch of an id another node gave (the client asks whichever broker it talks
//!   to), refusing a stale epoch with `INVALID_PRODUCER_EPOCH`;
//! - topic admin calls survive the SIGKILL of the broker the client talks to (and, when it
//!   is the one, of the controller leader): the client goes on to another broker of its
//!   list and retries through `NOT_CONTROLLER` / timeouts until a controller answers;
//! - an idempotent producer created after that writes every record once.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{Cluster, ClusterOptions};
use common::wire::Conn;
use sluice_client::{Acks, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use sluice_proto::protocol::{
    ApiKey, ErrorCode, InitProducerIdRequest, InitProducerIdResponse, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
};

fn init(conn: &mut Conn, producer_id: i64, producer_epoch: i16) -> InitProducerIdResponse {
    conn.call(
        ApiKey::InitProducerId,
        &InitProducerIdRequest {
            transactional_id: None,
            producer_id,
            producer_epoch,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_are_cluster_unique_and_admin_survives_a_dead_broker() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    cluster.wait_for_brokers(Duration::from_secs(60));

    // Each node gives ids of its own prefix.
    let mut ids = Vec::new();
    for node in 0..3u32 {
        let mut conn = Conn::connect(cluster.nodes[node as usize].client_addr());
        for _ in 0..2 {
            let r = init(&mut conn, NO_PRODUCER_ID, NO_PRODUCER_EPOCH);
            assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
            assert_eq!(r.producer_id >> 40, i64::from(node), "id {}", r.producer_id);
            assert_eq!(r.producer_epoch, 0);
            ids.push(r.producer_id);
        }
    }
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids are unique: {ids:?}");

    // Node 1 bumps an id node 0 gave; node 0 then accepts the newer epoch and refuses the
    // stale one.
    let id = ids[0];
    let mut at1 = Conn::connect(cluster.nodes[1].client_addr());
    let r = init(&mut at1, id, 0);
    assert_eq!(
        (r.error, r.producer_id, r.producer_epoch),
        (ErrorCode::NONE, id, 1),
        "{}",
        r.message
    );
    let mut at0 = Conn::connect(cluster.nodes[0].client_addr());
    let r = init(&mut at0, id, 1);
    assert_eq!(
        (r.error, r.producer_epoch),
        (ErrorCode::NONE, 2),
        "{}",
        r.message
    );
    let r = init(&mut at0, id, 1);
    assert_eq!(r.error, ErrorCode::INVALID_PRODUCER_EPOCH, "{}", r.message);

    // Admin through the first broker of the list, then that broker dies.
    let mut config = ClientConfig::new(&cluster.brokers());
    config.client_id = "cluster-admin".into();
    config.retry_backoff = Duration::from_millis(100);
    config.request_timeout = Duration::from_secs(5);
    config.admin_timeout = Duration::from_secs(60);
    let client = Client::connect(config).await.expect("connect");
    client
        .create_topic_replicated("before", 1, Some(3), &[])
        .await
        .expect("create before");
    cluster.kill(0);
    let started = Instant::now();
    client
        .create_topic_replicated("after", 2, Some(2), &[])
        .await
        .expect("create after the current broker died");
    let create_took = started.elapsed();
    let described = client.describe_topic("after").await.expect("describe");
    assert_eq!(described.partitions.len(), 2);
    client.delete_topic("before").await.expect("delete");

    // An idempotent producer writes through the survivors.
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(2),
            delivery_timeout: Duration::from_secs(60),
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for n in 0..200u32 {
        let record = ProducerRecord::new("after", Bytes::from(format!("{n:04}"))).partition(n % 2);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    let mut offsets = [Vec::new(), Vec::new()];
    for d in deliveries {
        let meta = d.await.expect("acknowledged");
        offsets[meta.partition as usize].push(meta.offset);
    }
    producer.close().await.expect("close");
    for (p, got) in offsets.iter().enumerate() {
        let expected: Vec<i64> = (0..100).collect();
        assert_eq!(got, &expected, "partition {p}: each record once, in order");
    }
    eprintln!(
        "cluster client: ids {ids:?}; create after the SIGKILL of node 0 took {create_took:?}"
    );
}
