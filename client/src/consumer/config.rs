//! `ConsumerConfig`: how fetches long-poll and how much they bring back.

use std::time::Duration;

use sluice_proto::protocol::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};

use crate::error::ClientError;

/// How a [`crate::Consumer`] fetches.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Longest the broker holds a fetch waiting for `fetch_min_bytes` (also capped by the
    /// `poll` timeout).
    pub fetch_max_wait: Duration,
    /// The broker answers as soon as this many bytes are available.
    pub fetch_min_bytes: u32,
    /// Most bytes in one fetch response (the broker caps it at `FETCH_BYTES_MAX`).
    pub fetch_max_bytes: u32,
    /// Most bytes per partition in one fetch response (the first batch comes whole anyway).
    pub partition_max_bytes: u32,
}

impl Default for ConsumerConfig {
    /// 500 ms long poll, 1 byte minimum, 50 MiB per response, 1 MiB per partition.
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: FETCH_BYTES_MAX as u32,
            partition_max_bytes: 1024 * 1024,
        }
    }
}

impl ConsumerConfig {
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.fetch_max_wait.as_millis() > u128::from(FETCH_WAIT_MS_MAX) {
            return Err(ClientError::InvalidConfig(format!(
                "fetch_max_wait of {} ms is over the protocol's {FETCH_WAIT_MS_MAX} ms",
                self.fetch_max_wait.as_millis()
            )));
        }
        if self.fetch_max_bytes == 0 || self.partition_max_bytes == 0 {
            return Err(ClientError::InvalidConfig(
                "fetch_max_bytes and partition_max_bytes must be above zero".into(),
            ));
        }
        Ok(())
    }
}
