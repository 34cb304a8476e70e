//! Crash and shutdown: SIGKILL during acks=all production loses no acknowledged record;
//! SIGTERM exits 0 and keeps what acks=1 acknowledged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Broker;
use common::wire::{Conn, batch};
use sluice_proto::protocol::*;

const PARTITIONS: u32 = 3;

#[test]
fn sigkill_during_acks_all_keeps_every_acknowledged_record_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let mut admin = Conn::connect(broker.addr);
    assert_eq!(
        admin.create_topic("crash", PARTITIONS, &[]).error,
        ErrorCode::NONE
    );
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let addr = broker.addr;
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Conn::connect(addr);
                let mut acked = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let value = format!("{partition}:{n}");
                    let req = common::wire::produce_request(
                        "crash",
                        partition,
                        ACKS_ALL,
                        batch(&[value.as_bytes()], 1),
                    );
                    c.send(ApiKey::Produce, &req);
                    // The broker dies at some point: a missing answer is not an ack.
                    let Some(frame) = c.read_frame() else { break };
                    let mut r = Reader::new(frame);
                    let h = ResponseHeader::decode(&mut r).expect("header");
                    assert!(h.error.is_ok());
                    let body: ProduceResponse = decode_body(r).expect("body");
                    let p = &body.topics[0].partitions[0];
                    assert_eq!(p.error, ErrorCode::NONE, "{}", p.message);
                    acked.push((p.base_offset, value));
                    n += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Vec<(u64, String)>> = producers
        .into_iter()
        .map(|p| p.join().expect("producer"))
        .collect();

    let broker = Broker::start(dir.path(), 2);
    let mut c = Conn::connect(broker.addr);
    for (partition, acked) in acked.iter().enumerate() {
        assert!(
            acked.len() > 5,
            "partition {partition}: only {} acks",
            acked.len()
        );
        let got = c.read_all("crash", partition as u32, 0);
        // Every acknowledged record is there at its offset; the log holds no duplicates
        // (each value once) and is in production order.
        let values: Vec<String> = got
            .iter()
            .map(|(_, v)| String::from_utf8(v.clone()).expect("utf8"))
            .collect();
        for (i, (offset, value)) in acked.iter().enumerate() {
            assert_eq!(*offset, i as u64);
            assert_eq!(&values[i], value, "partition {partition} offset {i}");
        }
        for (i, v) in values.iter().enumerate() {
            assert_eq!(v, &format!("{partition}:{i}"), "order and uniqueness");
        }
    }
}

#[test]
fn sigterm_exits_zero_and_keeps_acks_1_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let mut c = Conn::connect(broker.addr);
    assert_eq!(
        c.create_topic("term", 2, &[("flush.ms", "60000")]).error,
        ErrorCode::NONE
    );
    for i in 0..50u32 {
        let r = c.produce(
            "term",
            i % 2,
            ACKS_LEADER,
            batch(&[format!("v{i}").as_bytes()], 1),
        );
        assert_eq!(r.error, ErrorCode::NONE);
    }
    assert!(
        broker.terminate(Duration::from_secs(30)),
        "SIGTERM must exit 0"
    );
    let broker = Broker::start(dir.path(), 2);
    let mut c = Conn::connect(broker.addr);
    for p in 0..2u32 {
        let got = c.read_all("term", p, 0);
        let want: Vec<Vec<u8>> = (0..50u32)
            .filter(|i| i % 2 == p)
            .map(|i| format!("v{i}").into_bytes())
            .collect();
        assert_eq!(got.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), want);
    }
}
