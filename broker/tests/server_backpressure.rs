//! Backpressure: with a small request budget, many clients producing large requests at once
//! are all served (nobody is dropped), and the waits show up as `throttle_ms`.

mod common;

use std::time::Duration;

use common::Broker;
use common::wire::{Conn, batch, produce_request};
use sluice_proto::protocol::*;

#[test]
fn a_full_request_budget_throttles_instead_of_dropping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    // The smallest budget allowed: one largest frame.
    std::fs::write(
        &config,
        format!("shard_request_bytes = {REQUEST_FRAME_BYTES_MAX}\n"),
    )
    .expect("write");
    let broker = Broker::start_with(
        &dir.path().join("data"),
        1,
        &["--config", config.to_str().expect("utf8")],
    );
    let mut admin = Conn::connect(broker.addr);
    assert_eq!(
        admin
            .create_topic("bp", 1, &[("max.message.bytes", "16000000")])
            .error,
        ErrorCode::NONE
    );
    let big = vec![b'b'; 15_000_000];
    let request = produce_request("bp", 0, ACKS_ALL, batch(&[&big], 1));
    let clients = 6;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let addr = broker.addr;
            let request = request.clone();
            std::thread::spawn(move || {
                let mut c = Conn::connect(addr);
                c.stream
                    .set_read_timeout(Some(Duration::from_secs(120)))
                    .expect("timeout");
                let mut throttled = 0u32;
                for _ in 0..3 {
                    let resp: ProduceResponse = c.call(ApiKey::Produce, &request);
                    assert_eq!(resp.topics[0].partitions[0].error, ErrorCode::NONE);
                    throttled = throttled.max(resp.throttle_ms);
                }
                throttled
            })
        })
        .collect();
    let throttles: Vec<u32> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    // 18 requests of ~15 MB through a 64 MiB budget: some had to wait for it.
    assert!(throttles.iter().any(|&t| t > 0), "{throttles:?}");
    let latest = admin.list_offset("bp", 0, LATEST_TIMESTAMP).offset;
    assert_eq!(latest, 3 * clients as u64);
}
