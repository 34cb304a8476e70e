//! The command-line client: `sluice topic`, `sluice produce`, `sluice consume`, `sluice
//! group`, `sluice cluster`. Each runs the client library on a small tokio runtime; errors go to stderr as one
//! sentence and the exit code is 1. `sluice cert` makes the peer transport's certificates.

mod cert;
mod cluster;
mod consume;
mod format;
mod group;
mod produce;
mod time;
mod topic;

use std::process::ExitCode;

use sluice_client::{Client, ClientConfig, ClientError};

pub(crate) use cert::{CertArgs, run_cert};
pub(crate) use cluster::{ClusterArgs, run_cluster};
pub(crate) use consume::{ConsumeArgs, run_consume};
pub(crate) use group::{GroupArgs, run_group};
pub(crate) use produce::{ProduceArgs, run_produce};
pub(crate) use topic::{TopicArgs, run_topic};

/// The default `--brokers`.
const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// Runs `work` on a current-thread tokio runtime and turns its outcome into an exit code.
fn run<F>(work: F) -> ExitCode
where
    F: Future<Output = Result<(), ClientError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// A client error as one line for a person.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::BrokerUnreachable { addr, source } => {
            let reason = match source.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable => source.kind().to_string(),
                _ => source.to_string(),
            };
            format!("broker not reachable at {addr} ({reason})")
        }
        other => other.to_string(),
    }
}

/// Connects to `brokers` ("h:p[,h:p]").
async fn connect(brokers: &str) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(brokers);
    config.client_id = "sluice-cli".to_owned();
    Client::connect(config).await
}

/// Parses `k=v`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn unreachable_message_names_address_and_reason() {
        let e = ClientError::BrokerUnreachable {
            addr: "127.0.0.1:9092".into(),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            describe(&e),
            "broker not reachable at 127.0.0.1:9092 (connection refused)"
        );
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("retention.ms=1000"),
            Ok(("retention.ms".to_string(), "1000".to_string()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }
}
