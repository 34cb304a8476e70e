//! Helpers shared by the storage integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use sluice_proto::{Offset, RecordBatch};

pub mod workload;

#[allow(unused_imports)]
pub(crate) use workload::{make_batch, value_for};

/// Runs a future on a fresh compio runtime (its own io_uring ring).
pub fn run<F: std::future::Future>(fut: F) -> F::Output {
    compio::runtime::Runtime::new()
        .expect("io_uring runtime")
        .block_on(fut)
}

/// Checks that `batch` is the one made by `make_batch(tag, ..)` and was stamped at `base`.
pub fn check_batch(batch: &RecordBatch, tag: u64, base: Offset) {
    assert_eq!(batch.base_offset(), base);
    for (i, record) in batch.records().expect("records").enumerate() {
        let record = record.expect("record");
        assert_eq!(record.offset(base), Offset(base.get() + i as u64));
        let value = record.value.expect("value");
        assert_eq!(&value[..], &value_for(tag, i, value.len())[..]);
    }
}

thread_local! {
    /// Wall time seen by logs whose `LogConfig::clock` is [`fake_clock_ms`]. The log runs on
    /// the compio runtime of the thread that calls [`run`], so a thread-local is enough.
    static FAKE_NOW_MS: std::cell::Cell<i64> = const { std::cell::Cell::new(1_700_000_000_000) };
}

/// A `LogConfig::clock` that returns the time set with [`set_fake_clock_ms`].
pub fn fake_clock_ms() -> i64 {
    FAKE_NOW_MS.with(std::cell::Cell::get)
}

/// Sets the time [`fake_clock_ms`] returns on this thread.
pub fn set_fake_clock_ms(now_ms: i64) {
    FAKE_NOW_MS.with(|c| c.set(now_ms));
}

/// Awaits `fut`, panicking with `what` if it takes longer than `secs` seconds: a hang or a
/// deadlock fails the test instead of stalling it.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match compio::time::timeout(std::time::Duration::from_secs(secs), fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no progress within {secs} s (hang or deadlock)"),
    }
}

/// Reads every batch from the log start to the log end.
pub async fn read_all(log: &sluice_storage::PartitionLog) -> Vec<RecordBatch> {
    let offsets = log.offsets();
    let mut out = Vec::new();
    let mut from = offsets.log_start;
    while from < offsets.log_end {
        let got = within(30, "read", log.read(from, 1 << 20))
            .await
            .expect("read");
        assert!(!got.is_empty(), "no batch at {from}");
        assert_eq!(got[0].base_offset(), from, "batches are contiguous");
        from = got.last().expect("non-empty").next_offset();
        out.extend(got);
    }
    out
}
