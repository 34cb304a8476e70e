//! `ClientError`: every way a client call can fail, typed, with a message that reads like a
//! sentence ("broker not reachable at 127.0.0.1:9092: connection refused").
//!
//! The error is `Clone` because one failure (a lost connection, a rejected batch) is handed
//! to every record or waiter it affects; I/O errors are shared behind an `Arc` for that.

use std::fmt;
use std::io;
use std::sync::Arc;

use sluice_proto::protocol::{ErrorCode, FrameTooLarge, ProtocolError};
use sluice_proto::{BuildError, DecodeError};

/// Why a client call failed.
#[derive(thiserror::Error, Debug, Clone)]
pub enum ClientError {
    /// No TCP connection could be made to a broker address (refused, unresolvable, timed out).
    #[error("broker not reachable at {addr}: {}", IoReason(source))]
    BrokerUnreachable {
        /// The address dialled.
        addr: String,
        /// What the operating system reported.
        #[source]
        source: Arc<io::Error>,
    },
    /// An established connection failed; requests waiting on it get this error. The next
    /// request to that address dials again.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost {
        /// The broker address.
        addr: String,
        /// What happened (end of stream, I/O error, bad frame).
        reason: String,
    },
    /// The idempotent producer was fenced: another producer bumped the epoch of its producer
    /// id (or the broker refused its epoch). Fatal: every later send of this producer fails
    /// with this error; create a new producer.
    #[error("producer {producer_id} (epoch {epoch}) is fenced: {message}")]
    ProducerFenced {
        /// The producer id.
        producer_id: i64,
        /// The epoch that was refused.
        epoch: i16,
        /// The broker's explanation.
        message: String,
    },
    /// The broker saw a gap in the idempotent producer's sequence numbers for a partition
    /// (a batch before it failed for good, or the broker lost the producer's state). The
    /// batch was not written. The producer bumps its epoch and goes on (KIP-360): later
    /// sends work; this batch's records are failed, resend them if they must be written.
    #[error("out-of-order sequence for {topic}/{partition}: {message}")]
    OutOfOrderSequence {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The broker's explanation.
        message: String,
    },
    /// The batch was sent under an epoch the idempotent producer then had to abandon (an
    /// earlier batch timed out or failed after it was sent, so its sequence is unresolved),
    /// and it had not been acknowledged: it may or may not have been written. It is not
    /// resent under the new epoch (that could write it twice); resend it if duplicates are
    /// acceptable. The producer itself goes on with the bumped epoch.
    #[error(
        "batch to {topic}/{partition} abandoned by an epoch bump of producer {producer_id} \
         (epoch {epoch}); it may or may not have been written: {reason}"
    )]
    EpochBumped {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The producer id the batch was sent with.
        producer_id: i64,
        /// The abandoned epoch the batch was sent with.
        epoch: i16,
        /// Why the epoch was bumped, and this batch's last error if it had one.
        reason: String,
    },
    /// The topic does not exist.
    #[error("unknown topic '{topic}'")]
    UnknownTopic {
        /// The topic name.
        topic: String,
    },
    /// The topic exists but has no such partition.
    #[error("unknown partition {partition} of topic '{topic}' (it has {partitions})")]
    UnknownPartition {
        /// The topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// The broker refused the request with an error code.
    #[error("{}", BrokerText(code, message))]
    Broker {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// A record or batch is larger than a limit (the client's, or the topic's
    /// `max.message.bytes` as reported with `MESSAGE_TOO_LARGE`).
    #[error("{what} of {bytes} bytes is too large: {reason}")]
    TooLarge {
        /// "record" or "record batch".
        what: &'static str,
        /// Its size in bytes.
        bytes: usize,
        /// Which limit, in words (`MESSAGE_TOO_LARGE: ...` when the broker refused it).
        reason: String,
    },
    /// A fetch position is outside what the partition holds.
    #[error(
        "offset {offset} is out of range for partition {partition} of topic '{topic}' \
         (it holds offsets {start} to {end})"
    )]
    OffsetOutOfRange {
        /// The topic name.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// The partition's log start offset.
        start: u64,
        /// The partition's high watermark.
        end: u64,
    },
    /// The consumer was asked about a partition it is not assigned.
    #[error("partition {partition} of topic '{topic}' is not assigned to this consumer")]
    NotAssigned {
        /// The topic name.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// Something did not complete in time.
    #[error("{what} timed out after {after_ms} ms")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after_ms: u64,
    },
    /// The broker sent bytes that are not a valid response.
    #[error("invalid response from the broker: {0}")]
    Protocol(#[from] ProtocolError),
    /// The broker announced a response frame over the client's limit.
    #[error("response from the broker is too large: {0}")]
    FrameTooLarge(#[from] FrameTooLarge),
    /// A record batch fetched from the broker does not decode.
    #[error("invalid record batch from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A record batch could not be built (a limit of the format, or compression).
    #[error("cannot build a record batch: {0}")]
    Build(#[from] BuildError),
    /// The broker does not speak a needed API version.
    #[error("broker at {addr} does not support {api} version {version}")]
    Unsupported {
        /// The broker address.
        addr: String,
        /// The API's name.
        api: &'static str,
        /// The version this client speaks.
        version: u16,
    },
    /// A local I/O error (not on a broker connection).
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
    /// The producer or client was closed.
    #[error("the producer is closed")]
    Closed,
    /// A configuration value is not valid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The broker's disk holding the partition is full (`DISK_FULL`): the batch was not
    /// written. Not retried by the producer; appends are accepted again once the operator
    /// frees space.
    #[error("{message}")]
    DiskFull {
        /// The broker's explanation ("disk full on DIR: N bytes free").
        message: String,
    },
    /// The group is rebalancing; the member must rejoin (the consumer does so itself).
    #[error("group '{group}' is rebalancing")]
    RebalanceInProgress {
        /// The group id.
        group: String,
    },
    /// The member's generation is no longer the group's; it must rejoin.
    #[error("generation {generation} of group '{group}' is stale")]
    IllegalGeneration {
        /// The group id.
        group: String,
        /// The generation the member used.
        generation: i32,
    },
    /// The coordinator does not know the member (evicted after its session timeout, or the
    /// group was rebuilt); it must rejoin as a new member.
    #[error("group '{group}' does not know member '{member_id}'")]
    UnknownMember {
        /// The group id.
        group: String,
        /// The member id used.
        member_id: String,
    },
    /// The member's protocol type or assignors do not match the group's.
    #[error("group '{group}' uses a different protocol: {message}")]
    InconsistentGroupProtocol {
        /// The group id.
        group: String,
        /// The broker's explanation.
        message: String,
    },
    /// The group has active members, so it cannot be deleted or have its offsets reset.
    #[error("group '{group}' has active members: {message}")]
    NonEmptyGroup {
        /// The group id.
        group: String,
        /// The broker's explanation.
        message: String,
    },
    /// No such group.
    #[error("unknown group '{group}'")]
    GroupNotFound {
        /// The group id.
        group: String,
    },
    /// No coordinator answered for the group within the time allowed.
    #[error("no coordinator for group '{group}': {reason}")]
    CoordinatorNotAvailable {
        /// The group id.
        group: String,
        /// The last error seen.
        reason: String,
    },
}

impl ClientError {
    /// Whether a retry may succeed: retriable broker codes, timeouts and connection failures.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => code.is_retriable(),
            ClientError::BrokerUnreachable { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Whether the error means a connection or the routing may be stale, so metadata should
    /// be refreshed before a retry: the partition's leader moved or is being elected
    /// (`NOT_LEADER_OR_FOLLOWER`, `LEADER_NOT_AVAILABLE`, `FENCED_LEADER_EPOCH`,
    /// `UNKNOWN_LEADER_EPOCH`), or the connection to it failed.
    pub(crate) fn wants_metadata_refresh(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => [
                ErrorCode::NOT_LEADER_OR_FOLLOWER,
                ErrorCode::LEADER_NOT_AVAILABLE,
                ErrorCode::FENCED_LEADER_EPOCH,
                ErrorCode::UNKNOWN_LEADER_EPOCH,
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            ]
            .contains(code),
            _ => self.is_connection_failure(),
        }
    }

    /// Whether the broker could not be reached or stopped answering (the connection is then
    /// replaced).
    pub(crate) fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            ClientError::BrokerUnreachable { .. }
                | ClientError::ConnectionLost { .. }
                | ClientError::Timeout { .. }
        )
    }

    /// Whether the group's coordinator moved or is unreachable: find it again and retry.
    pub(crate) fn wants_new_coordinator(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => {
                *code == ErrorCode::NOT_COORDINATOR
                    || *code == ErrorCode::COORDINATOR_NOT_AVAILABLE
                    || *code == ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
            }
            _ => self.is_connection_failure(),
        }
    }

    /// A broker error code and message as the matching typed error.
    pub(crate) fn from_code(code: ErrorCode, message: &str, topic: &str) -> ClientError {
        if code == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION {
            return ClientError::UnknownTopic {
                topic: topic.to_owned(),
            };
        }
        if code == ErrorCode::DISK_FULL {
            return ClientError::DiskFull {
                message: if message.is_empty() {
                    "DISK_FULL: the broker's disk is full".to_owned()
                } else {
                    format!("DISK_FULL: {message}")
                },
            };
        }
        ClientError::Broker {
            code,
            message: message.to_owned(),
        }
    }
}

/// A group API's error code as the matching typed error (`Broker` for the others).
pub(crate) fn group_error(
    code: ErrorCode,
    message: &str,
    group: &str,
    member_id: &str,
    generation: i32,
) -> ClientError {
    let group = group.to_owned();
    match code {
        ErrorCode::REBALANCE_IN_PROGRESS => ClientError::RebalanceInProgress { group },
        ErrorCode::ILLEGAL_GENERATION => ClientError::IllegalGeneration { group, generation },
        ErrorCode::UNKNOWN_MEMBER_ID => ClientError::UnknownMember {
            group,
            member_id: member_id.to_owned(),
        },
        ErrorCode::INCONSISTENT_GROUP_PROTOCOL => ClientError::InconsistentGroupProtocol {
            group,
            message: message.to_owned(),
        },
        ErrorCode::NON_EMPTY_GROUP => ClientError::NonEmptyGroup {
            group,
            message: message.to_owned(),
        },
        ErrorCode::GROUP_ID_NOT_FOUND => ClientError::GroupNotFound { group },
        _ => ClientError::Broker {
            code,
            message: message.to_owned(),
        },
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

/// An I/O error as a short lower-case reason: "connection refused", not
/// "Connection refused (os error 111)".
struct IoReason<'a>(&'a io::Error);

impl fmt::Display for IoReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable => write!(f, "{}", self.0.kind()),
            _ => write!(f, "{}", self.0),
        }
    }
}

/// "MESSAGE_TOO_LARGE: batch of 2000 bytes ..." or just the code when there is no message.
struct BrokerText<'a>(&'a ErrorCode, &'a String);

impl fmt::Display for BrokerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1.is_empty() {
            write!(f, "the broker answered {}", self.0)
        } else {
            write!(f, "the broker answered {}: {}", self.0, self.1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_reads_like_a_sentence() {
        let e = ClientError::BrokerUnreachable {
            addr: "127.0.0.1:9092".into(),
            source: Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            e.to_string(),
            "broker not reachable at 127.0.0.1:9092: connection refused"
        );
        assert!(e.is_retriable());
    }

    #[test]
    fn unknown_topic_code_becomes_typed() {
        let e = ClientError::from_code(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, "", "foo");
        assert_eq!(e.to_string(), "unknown topic 'foo'");
        let e = ClientError::from_code(ErrorCode::TOPIC_ALREADY_EXISTS, "topic 'x' exists", "x");
        assert_eq!(
            e.to_string(),
            "the broker answered TOPIC_ALREADY_EXISTS: topic 'x' exists"
        );
    }

    #[test]
    fn leader_moves_and_dead_connections_ask_for_a_refresh() {
        for code in [
            ErrorCode::NOT_LEADER_OR_FOLLOWER,
            ErrorCode::LEADER_NOT_AVAILABLE,
            ErrorCode::FENCED_LEADER_EPOCH,
            ErrorCode::UNKNOWN_LEADER_EPOCH,
        ] {
            let e = ClientError::Broker {
                code,
                message: String::new(),
            };
            assert!(e.wants_metadata_refresh(), "{code}");
            assert!(e.is_retriable(), "{code}");
            assert!(!e.wants_new_coordinator(), "{code}");
        }
        let lost = ClientError::ConnectionLost {
            addr: "a:1".into(),
            reason: "reset".into(),
        };
        assert!(lost.wants_metadata_refresh() && lost.wants_new_coordinator());
        for code in [
            ErrorCode::NOT_COORDINATOR,
            ErrorCode::COORDINATOR_NOT_AVAILABLE,
        ] {
            let e = ClientError::Broker {
                code,
                message: String::new(),
            };
            assert!(e.wants_new_coordinator(), "{code}");
            assert!(!e.wants_metadata_refresh(), "{code}");
        }
        let full = ClientError::Broker {
            code: ErrorCode::NOT_ENOUGH_REPLICAS,
            message: String::new(),
        };
        assert!(full.is_retriable() && !full.wants_metadata_refresh());
    }

    #[test]
    fn disk_full_code_becomes_typed() {
        let e = ClientError::from_code(ErrorCode::DISK_FULL, "disk full on /d: 0 bytes free", "t");
        assert!(matches!(e, ClientError::DiskFull { .. }));
        assert_eq!(e.to_string(), "DISK_FULL: disk full on /d: 0 bytes free");
        assert!(!e.is_retriable());
    }
}
