//! Append, read back from cache and from disk, reopen.
mod common;

use common::{check_batch, make_batch, run};
use sluice_proto::Offset;
use sluice_storage::{LogConfig, PartitionLog};

#[test]
fn append_read_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        tail_cache_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone())
            .await
            .expect("open");
        let mut acks = Vec::new();
        for tag in 0..200u64 {
            let a = log
                .append(make_batch(tag, 3, 500, 1000 + tag as i64))
                .await
                .expect("append");
            assert_eq!(a.base_offset, Offset(tag * 3));
            acks.push(a.durable);
        }
        for d in acks {
            d.await.expect("durable");
        }
        assert_eq!(log.offsets().log_end, Offset(600));
        assert!(log.stats().segments > 1, "{:?}", log.stats());
        for tag in 0..200u64 {
            let batches = log.read(Offset(tag * 3 + 1), 1).await.expect("read");
            assert_eq!(batches.len(), 1);
            check_batch(&batches[0], tag, Offset(tag * 3));
        }
        assert_eq!(
            log.offset_for_timestamp(1050).await.expect("ts"),
            Some(Offset(146))
        );
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config.clone())
            .await
            .expect("reopen");
        assert_eq!(log.offsets().log_end, Offset(600));
        let all = log.read(Offset(0), 10 << 20).await.expect("read all");
        let mut next = Offset(0);
        for b in &all {
            assert_eq!(b.base_offset(), next);
            next = b.next_offset();
        }
        for tag in 0..200u64 {
            let batches = log.read(Offset(tag * 3), 1).await.expect("read");
            check_batch(&batches[0], tag, Offset(tag * 3));
        }
        let a = log
            .append(make_batch(999, 1, 10, 5000))
            .await
            .expect("append after reopen");
        assert_eq!(a.base_offset, Offset(600));
        a.durable.await.expect("durable");
        drop(log);
    });
    run(async {
        let log = PartitionLog::open(dir.path(), config)
            .await
            .expect("reopen after drop");
        assert_eq!(log.offsets().log_end, Offset(601));
    });
}

/// A second log instance cannot open a directory another one is using: every segment file is
/// locked by the log that has it open, and the lock goes with that log.
#[test]
fn a_log_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        lock_wait_ms: 200,
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone())
            .await
            .expect("open");
        log.append(make_batch(1, 1, 10, 0))
            .await
            .expect("append")
            .durable
            .await
            .expect("durable");
        let second = PartitionLog::open(dir.path(), config.clone()).await;
        match second {
            Err(sluice_storage::LogError::Io { source, .. }) => {
                assert!(source.to_string().contains("locked"), "{source}");
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("opened a log that is in use"),
        }
        log.close().await.expect("close");
        let again = PartitionLog::open(dir.path(), config)
            .await
            .expect("open after close");
        assert_eq!(again.offsets().log_end, Offset(1));
    });
}
