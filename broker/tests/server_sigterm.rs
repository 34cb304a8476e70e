//! SIGTERM with acks=all produce requests in flight: every request the broker answers is
//! either acknowledged or refused with a clear code (`SHUTTING_DOWN`), the process exits 0,
//! and after a restart every acknowledged record is at its offset.

mod common;

use std::io::Write;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::Broker;
use common::wire::{Conn, batch, produce_request};
use sluice_proto::protocol::{
    ACKS_ALL, ApiKey, ErrorCode, ProduceResponse, Reader, ResponseHeader, decode_body,
    encode_request,
};

/// Requests each connection keeps in flight.
const DEPTH: usize = 4;
const CONNECTIONS: u32 = 4;

/// What one connection saw: acknowledged `(partition, offset, value)` and refusal codes.
struct Seen {
    acked: Vec<(u32, u64, Vec<u8>)>,
    refused: Vec<ErrorCode>,
}

fn producer(addr: std::net::SocketAddr, id: u32, start: Arc<Barrier>) -> Seen {
    let mut c = Conn::connect(addr);
    let partition = id % 2;
    let mut seen = Seen {
        acked: Vec::new(),
        refused: Vec::new(),
    };
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0u32;
    start.wait();
    loop {
        while in_flight.len() < DEPTH {
            let value = format!("c{id}-{next}").into_bytes();
            next += 1;
            let request = produce_request("term", partition, ACKS_ALL, batch(&[&value], 1));
            let chunks = encode_request(ApiKey::Produce, 0, next, "sigterm", &request);
            // Once the broker has stopped reading, a write may fail: nothing more is sent.
            if chunks
                .iter()
                .any(|chunk| c.stream.write_all(chunk).is_err())
            {
                return seen;
            }
            in_flight.push_back(value);
        }
        let Some(frame) = c.read_frame() else {
            // Closed: the requests still in flight got no answer, so none was acknowledged.
            return seen;
        };
        let value = in_flight.pop_front().expect("an answer to a request sent");
        let mut r = Reader::new(frame);
        let header = ResponseHeader::decode(&mut r).expect("header");
        if !header.error.is_ok() {
            seen.refused.push(header.error);
            continue;
        }
        let body: ProduceResponse = decode_body(r).expect("body");
        let result = &body.topics[0].partitions[0];
        if result.error.is_ok() {
            seen.acked.push((partition, result.base_offset, value));
        } else {
            seen.refused.push(result.error);
        }
    }
}

#[test]
fn sigterm_with_acks_all_in_flight_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let mut c = Conn::connect(broker.addr);
    assert_eq!(c.create_topic("term", 2, &[]).error, ErrorCode::NONE);
    drop(c);
    let start = Arc::new(Barrier::new(CONNECTIONS as usize + 1));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|id| {
            let start = start.clone();
            let addr = broker.addr;
            thread::spawn(move || producer(addr, id, start))
        })
        .collect();
    start.wait();
    thread::sleep(Duration::from_millis(500));
    assert!(
        broker.terminate(Duration::from_secs(30)),
        "SIGTERM must exit 0 with requests in flight"
    );
    let seen: Vec<Seen> = handles
        .into_iter()
        .map(|h| h.join().expect("producer thread"))
        .collect();
    let acked: Vec<_> = seen.iter().flat_map(|s| s.acked.iter().cloned()).collect();
    assert!(
        acked.len() > 10,
        "production was under way: {}",
        acked.len()
    );
    for s in &seen {
        for code in &s.refused {
            assert_eq!(
                *code,
                ErrorCode::SHUTTING_DOWN,
                "a clear refusal, not {code:?}"
            );
        }
    }

    let broker = Broker::start(dir.path(), 2);
    let mut c = Conn::connect(broker.addr);
    let logs: Vec<Vec<(u64, Vec<u8>)>> = (0..2).map(|p| c.read_all("term", p, 0)).collect();
    for (partition, offset, value) in &acked {
        let log = &logs[*partition as usize];
        let at = log.iter().find(|(o, _)| o == offset);
        assert_eq!(
            at.map(|(_, v)| v),
            Some(value),
            "acknowledged record at {partition}/{offset} after the restart"
        );
    }
}
