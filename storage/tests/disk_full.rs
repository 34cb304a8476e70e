//! A write that fails with ENOSPC does not stop the log: appends are refused with
//! `LogError::DiskFull` while the write is retried, reads keep working, nothing is
//! acknowledged before it is on disk, and appends resume once the write lands. Also checks
//! the I/O counters (`io_stats`). The broker test `server_disk_full` covers a real full
//! filesystem (fallocate ENOSPC).
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{check_batch, make_batch, run, within};
use sluice_proto::Offset;
use sluice_storage::{FaultInjector, LogConfig, LogError, PartitionLog};

#[test]
fn write_enospc_refuses_appends_then_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultInjector::default());
    let config = LogConfig {
        faults: Some(faults.clone()),
        ..LogConfig::default()
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone())
            .await
            .expect("open");
        let first = log
            .append(make_batch(0, 3, 1000, 1_000))
            .await
            .expect("append");
        within(30, "durable", first.durable).await.expect("durable");
        let stats = log.io_stats();
        assert!(stats.fsync.count >= 1, "an fdatasync was timed: {stats:?}");

        faults.fail_write_no_space_after(1);
        let second = log
            .append(make_batch(1, 2, 1000, 1_000))
            .await
            .expect("append");
        // The write fails with ENOSPC: the next append is refused with a typed error that
        // names the directory, and is not a stop.
        let refused = within(30, "refusal", async {
            loop {
                match log.append(make_batch(99, 1, 10, 1_000)).await {
                    Err(e) => break e,
                    Ok(accepted) => {
                        // Accepted before the failed write completed: it must still be
                        // acknowledged once the retry lands, like the second batch.
                        drop(accepted);
                        compio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        })
        .await;
        match &refused {
            LogError::DiskFull { path, .. } => assert_eq!(path, dir.path()),
            other => panic!("expected DiskFull, got {other}"),
        }
        assert!(
            refused.to_string().starts_with("disk full on "),
            "{refused}"
        );
        // Reads work while the disk is full.
        let read = log.read(Offset(0), 1 << 20).await.expect("read");
        check_batch(&read[0], 0, Offset(0));
        // The retried write lands (the injector fails only once): the batch is acknowledged
        // and appends are accepted again.
        within(30, "durable after retry", second.durable)
            .await
            .expect("acknowledged after the retry");
        let third = within(30, "append after retry", async {
            loop {
                match log.append(make_batch(2, 1, 1000, 1_000)).await {
                    Ok(a) => break a,
                    Err(LogError::DiskFull { .. }) => {
                        compio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        })
        .await;
        within(30, "durable", third.durable).await.expect("durable");
        assert!(log.io_stats().disk_full_refusals >= 1);
        let end = log.offsets().durable_end;
        log.close().await.expect("close");

        // Every acknowledged batch is there after a reopen.
        let log = PartitionLog::open(dir.path(), config)
            .await
            .expect("reopen");
        assert_eq!(log.offsets().log_end, end);
        let read = log.read(Offset(3), 1 << 20).await.expect("read");
        check_batch(&read[0], 1, Offset(3));
        let stats = log.io_stats();
        assert_eq!(
            stats.cache_misses, 1,
            "a fresh log reads from disk: {stats:?}"
        );
        log.close().await.expect("close");
    });
}
