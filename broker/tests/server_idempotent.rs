//! The idempotent producer on the raw wire against the real broker: InitProducerId, a
//! retried batch answered with its original offset and not written again (also after a
//! SIGKILL and restart, from state rebuilt out of the log), producer ids never reused after
//! a SIGKILL, and the typed refusals (sequence gap, fenced epoch) leaving the partition
//! usable.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::Broker;
use common::wire::{Conn, produce_request, values};
use sluice_proto::protocol::*;
use sluice_proto::{BatchBuilder, Compression, Limits};

/// A batch of `values` stamped with a producer id, epoch and base sequence.
fn idem_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None, Limits::DEFAULT)
        .producer(pid, epoch, seq)
        .base_timestamp(1_700_000_000_000);
    for v in values {
        b.push(1_700_000_000_000, None, Some(v.as_bytes()), &[])
            .expect("push");
    }
    b.build().expect("build").freeze()
}

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

/// Produces with acks=all, returning the partition result whatever its error.
fn produce(conn: &mut Conn, topic: &str, partition: u32, batch: Bytes) -> ProducePartitionResult {
    let resp: ProduceResponse = conn.call(
        ApiKey::Produce,
        &produce_request(topic, partition, ACKS_ALL, batch),
    );
    resp.topics[0].partitions[0].clone()
}

fn ok(r: &ProducePartitionResult) -> u64 {
    assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    r.base_offset
}

fn end_offset(conn: &mut Conn, topic: &str, partition: u32) -> u64 {
    conn.list_offset(topic, partition, LATEST_TIMESTAMP).offset
}

fn all_values(conn: &mut Conn, topic: &str, partition: u32) -> Vec<(u64, String)> {
    conn.read_all(topic, partition, 0)
        .into_iter()
        .map(|(o, v)| (o, String::from_utf8(v).expect("utf8")))
        .collect()
}

#[test]
fn retried_batches_are_not_written_twice_even_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    let created = conn.create_topic("idem", 2, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);

    let first = init(&mut conn, NO_PRODUCER_ID, NO_PRODUCER_EPOCH);
    assert_eq!(first.error, ErrorCode::NONE, "{}", first.message);
    assert_eq!(first.producer_epoch, 0);
    let mut given: HashSet<i64> = HashSet::from([first.producer_id]);
    for _ in 0..3 {
        let r = init(&mut conn, NO_PRODUCER_ID, NO_PRODUCER_EPOCH);
        assert!(
            given.insert(r.producer_id),
            "id {} given twice",
            r.producer_id
        );
    }
    let pid = first.producer_id;

    // Non-idempotent data around the producer's, on both partitions.
    for p in 0..2 {
        ok(&conn.produce("idem", p, ACKS_ALL, common::wire::batch(&[b"plain"], 1)));
    }
    let a = idem_batch(pid, 0, 0, &["a0", "a1", "a2"]);
    let b = idem_batch(pid, 0, 3, &["b0", "b1"]);
    let c = idem_batch(pid, 0, 0, &["c0"]);
    let a_at = ok(&produce(&mut conn, "idem", 0, a.clone()));
    let b_at = ok(&produce(&mut conn, "idem", 0, b.clone()));
    // The same producer on another partition has its own sequence.
    let c_at = ok(&produce(&mut conn, "idem", 1, c.clone()));
    assert_eq!((a_at, b_at, c_at), (1, 4, 1));
    let end0 = end_offset(&mut conn, "idem", 0);
    assert_eq!(end0, 6);

    // Retries (same bytes) answer the original offsets and write nothing.
    assert_eq!(ok(&produce(&mut conn, "idem", 0, b.clone())), b_at);
    assert_eq!(ok(&produce(&mut conn, "idem", 0, a.clone())), a_at);
    assert_eq!(ok(&produce(&mut conn, "idem", 1, c.clone())), c_at);
    assert_eq!(end_offset(&mut conn, "idem", 0), end0);

    // SIGKILL after the acknowledgements; the state comes back from the log.
    broker.kill9();
    let mut broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    assert_eq!(ok(&produce(&mut conn, "idem", 0, b.clone())), b_at);
    assert_eq!(ok(&produce(&mut conn, "idem", 0, a.clone())), a_at);
    assert_eq!(ok(&produce(&mut conn, "idem", 1, c.clone())), c_at);
    assert_eq!(end_offset(&mut conn, "idem", 0), end0);
    // The producer continues where it was; a gap is still seen after the restart.
    let gap = produce(&mut conn, "idem", 0, idem_batch(pid, 0, 9, &["x"]));
    assert_eq!(
        gap.error,
        ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
        "{}",
        gap.message
    );
    let d_at = ok(&produce(
        &mut conn,
        "idem",
        0,
        idem_batch(pid, 0, 5, &["d0"]),
    ));
    assert_eq!(d_at, end0);
    assert_eq!(
        all_values(&mut conn, "idem", 0),
        vec![
            (0, "plain".to_string()),
            (1, "a0".into()),
            (2, "a1".into()),
            (3, "a2".into()),
            (4, "b0".into()),
            (5, "b1".into()),
            (6, "d0".into()),
        ]
    );
    // No id given before the kill is given again.
    for _ in 0..3 {
        let r = init(&mut conn, NO_PRODUCER_ID, NO_PRODUCER_EPOCH);
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
        assert!(
            given.insert(r.producer_id),
            "id {} reused after restart",
            r.producer_id
        );
    }
    // A second kill right after allocations: still no reuse.
    broker.kill9();
    let broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    let r = init(&mut conn, NO_PRODUCER_ID, NO_PRODUCER_EPOCH);
    assert!(
        given.insert(r.producer_id),
        "id {} reused after restart",
        r.producer_id
    );
}

#[test]
fn the_last_batch_is_recognised_after_a_restart_when_a_segment_rolled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(dir.path(), 1);
    let mut conn = Conn::connect(broker.addr);
    // Tiny segments: every batch rolls the log, so the producer's batches span segments.
    let created = conn.create_topic("roll", 1, &[("segment.bytes", "16384")]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let pid = init(&mut conn, NO_PRODUCER_ID, NO_PRODUCER_EPOCH).producer_id;
    let big = "v".repeat(9000);
    let mut batches = Vec::new();
    for seq in 0..4 {
        let batch = idem_batch(pid, 0, seq, &[&big]);
        let at = ok(&produce(&mut conn, "roll", 0, batch.clone()));
        batches.push((batch, at));
    }
    broker.kill9();
    let broker = Broker::start(dir.path(), 1);
    let mut conn = Conn::connect(broker.addr);
    let (last, at) = batches.last().expect("batches").clone();
    assert_eq!(ok(&produce(&mut conn, "roll", 0, last)), at);
    assert_eq!(end_offset(&mut conn, "roll", 0), 4);
    drop(broker);
}

#[test]
fn gaps_and_fenced_epochs_are_refused_and_the_partition_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let mut conn = Conn::connect(broker.addr);
    let created = conn.create_topic("bad", 1, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let first = init(&mut conn, NO_PRODUCER_ID, NO_PRODUCER_EPOCH);
    let pid = first.producer_id;
    ok(&produce(&mut conn, "bad", 0, idem_batch(pid, 0, 0, &["a"])));

    // A gap.
    let gap = produce(&mut conn, "bad", 0, idem_batch(pid, 0, 5, &["gap"]));
    assert_eq!(gap.error, ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert!(gap.message.contains("expected 1"), "{}", gap.message);
    // An older sequence that is not a remembered batch.
    let skewed = produce(&mut conn, "bad", 0, idem_batch(pid, 0, 0, &["a", "extra"]));
    assert_eq!(
        skewed.error,
        ErrorCode::DUPLICATE_SEQUENCE_NUMBER,
        "{}",
        skewed.message
    );
    ok(&produce(&mut conn, "bad", 0, idem_batch(pid, 0, 1, &["b"])));

    // A new epoch fences the old one; it must start at sequence 0.
    let bumped = init(&mut conn, pid, 0);
    assert_eq!(
        (bumped.error, bumped.producer_id, bumped.producer_epoch),
        (ErrorCode::NONE, pid, 1)
    );
    let stale_init = init(&mut conn, pid, 0);
    assert_eq!(
        stale_init.error,
        ErrorCode::INVALID_PRODUCER_EPOCH,
        "{}",
        stale_init.message
    );
    let not_zero = produce(&mut conn, "bad", 0, idem_batch(pid, 1, 2, &["x"]));
    assert_eq!(
        not_zero.error,
        ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
        "{}",
        not_zero.message
    );
    ok(&produce(&mut conn, "bad", 0, idem_batch(pid, 1, 0, &["c"])));
    let fenced = produce(&mut conn, "bad", 0, idem_batch(pid, 0, 2, &["old"]));
    assert_eq!(
        fenced.error,
        ErrorCode::PRODUCER_FENCED,
        "{}",
        fenced.message
    );
    let bad_epoch = produce(&mut conn, "bad", 0, idem_batch(pid, -3, 0, &["neg"]));
    assert_eq!(
        bad_epoch.error,
        ErrorCode::INVALID_PRODUCER_EPOCH,
        "{}",
        bad_epoch.message
    );

    // InitProducerId refusals.
    let unknown = init(&mut conn, 1 << 40, 0);
    assert_eq!(
        unknown.error,
        ErrorCode::UNKNOWN_PRODUCER_ID,
        "{}",
        unknown.message
    );
    let txn: InitProducerIdResponse = conn.call(
        ApiKey::InitProducerId,
        &InitProducerIdRequest {
            transactional_id: Some("txn".into()),
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
        },
    );
    assert_eq!(txn.error, ErrorCode::INVALID_REQUEST);
    assert!(txn.message.contains("not supported"), "{}", txn.message);

    // A multi-batch set with a bad batch is refused whole.
    let mut set = idem_batch(pid, 1, 1, &["d"]).to_vec();
    set.extend_from_slice(&idem_batch(pid, 1, 7, &["e"]));
    let whole = produce(&mut conn, "bad", 0, Bytes::from(set));
    assert_eq!(whole.error, ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER);

    // The partition still works, for this producer and for others.
    ok(&produce(&mut conn, "bad", 0, idem_batch(pid, 1, 1, &["d"])));
    ok(&conn.produce("bad", 0, ACKS_ALL, common::wire::batch(&[b"plain"], 1)));
    let got: Vec<String> = values(conn.fetch("bad", 0, 0, 0, 0).records)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).expect("utf8"))
        .collect();
    assert_eq!(got, ["a", "b", "c", "d", "plain"]);
}
