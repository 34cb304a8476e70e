//! `ClientConfig`: where the brokers are and how long to wait for them.

use std::time::Duration;

use crate::error::ClientError;

/// How a [`crate::Client`] reaches the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bootstrap addresses, `host:port`: tried in turn until one answers. After that the
    /// cluster's Metadata names the brokers, and any live one of them serves metadata and
    /// admin requests (the bootstrap list stays the last resort).
    pub brokers: Vec<String>,
    /// Sent in every request header, for the broker's logs.
    pub client_id: String,
    /// Longest wait for one response (a fetch may add its long-poll wait on top).
    pub request_timeout: Duration,
    /// Longest wait for a TCP connection and its handshake.
    pub connect_timeout: Duration,
    /// Send each partition's requests to the shard that owns it (`true`), or everything to
    /// the bootstrap address and let the broker forward (`false`).
    pub shard_aware: bool,
    /// Kafka's `retry.backoff.ms`: the least time between two metadata refreshes (at most
    /// one is in flight per client), and the pause between attempts of the client's own
    /// retry loops (list offsets, group coordinator calls).
    pub retry_backoff: Duration,
    /// Kafka's `metadata.max.age.ms`: the metadata is refreshed at least this often even
    /// without errors, so leader moves are seen by an idle client too.
    pub metadata_max_age: Duration,
    /// Kafka's `default.api.timeout.ms`: the longest a topic admin call (create, delete,
    /// describe, list) takes in all, retries included (each attempt still waits at most
    /// `request_timeout`).
    pub admin_timeout: Duration,
}

impl ClientConfig {
    /// A config for `brokers` given as `"host:port[,host:port]..."`, with defaults: client id
    /// `sluice-client`, 30 s request timeout, 10 s connect timeout, shard aware, 100 ms retry
    /// backoff, metadata refreshed at least every 300 s, 60 s for an admin call with its
    /// retries (Kafka's defaults).
    pub fn new(brokers: &str) -> Self {
        ClientConfig {
            brokers: brokers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            client_id: "sluice-client".to_owned(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            shard_aware: true,
            retry_backoff: Duration::from_millis(100),
            metadata_max_age: Duration::from_secs(300),
            admin_timeout: Duration::from_secs(60),
        }
    }

    /// Checks the values make sense.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.brokers.is_empty() {
            return Err(ClientError::InvalidConfig(
                "no broker address given (expected host:port[,host:port])".into(),
            ));
        }
        if let Some(bad) = self.brokers.iter().find(|b| !b.contains(':')) {
            return Err(ClientError::InvalidConfig(format!(
                "broker address '{bad}' is not host:port"
            )));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ClientError::InvalidConfig(
                "request_timeout and connect_timeout must be above zero".into(),
            ));
        }
        if self.metadata_max_age.is_zero() || self.admin_timeout.is_zero() {
            return Err(ClientError::InvalidConfig(
                "metadata_max_age and admin_timeout must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// Milliseconds of a duration for a `u32` wire field, saturating.
pub(crate) fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Milliseconds of a duration as `u64`, saturating.
pub(crate) fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_list() {
        let c = ClientConfig::new("a:1, b:2,,");
        assert_eq!(c.brokers, vec!["a:1".to_string(), "b:2".to_string()]);
        assert!(c.validate().is_ok());
        assert!(ClientConfig::new("").validate().is_err());
        assert!(ClientConfig::new("nohost").validate().is_err());
        assert_eq!(c.retry_backoff, Duration::from_millis(100));
        assert_eq!(c.metadata_max_age, Duration::from_secs(300));
        let mut zero = c.clone();
        zero.metadata_max_age = Duration::ZERO;
        assert!(zero.validate().is_err());
    }
}
