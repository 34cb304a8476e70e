//! The controller's error type.

use std::path::PathBuf;

use super::NodeId;
use super::state::{CodecError, Rejection};

/// What can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// This node is not the Raft leader; `leader_hint` is the leader it knows of, if any.
    /// Kafka's NOT_CONTROLLER (41).
    #[error("not the active controller (leader hint {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
    },
    /// A raft message could not be decoded.
    #[error("undecodable raft message from node {from}: {reason}")]
    BadMessage {
        /// The sending node (as the transport verified it).
        from: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// A raft message came from (or claims to come from) a node that is not a voter, or is
    /// addressed to another node.
    #[error("raft message from node {from} rejected: {reason}")]
    ForeignMessage {
        /// The sending node (as the transport verified it).
        from: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// The request is invalid before it reaches Raft.
    #[error("invalid request: {0}")]
    Invalid(#[from] Rejection),
    /// The active controller has not applied its own term's first entry yet (its state may
    /// miss what earlier leaders committed), or a decision is still in flight; retry.
    #[error("the active controller is catching up; retry")]
    Busy,
    /// The controller configuration is not usable.
    #[error("invalid controller config: {0}")]
    Config(String),
    /// The voter set is not usable.
    #[error("invalid voter set: {0}")]
    Voters(String),
    /// The on-disk state refuses to open.
    #[error("controller state in {path} is unusable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Reading or writing the controller directory failed. A failed write or fsync is fatal:
    /// the controller refuses all further work (the broker must stop).
    #[error("controller I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An earlier write failed; the controller is unusable.
    #[error("the controller stopped after a storage failure")]
    Poisoned,
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A command or snapshot could not be decoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

impl ControllerError {
    /// Kafka's error code for this error, where one fits.
    pub fn kafka_code(&self) -> i16 {
        match self {
            ControllerError::NotLeader { .. } => 41,
            ControllerError::Invalid(r) => r.kafka_code(),
            // A new active controller still replaying: the client retries like NOT_CONTROLLER.
            ControllerError::Busy => 41,
            _ => -1,
        }
    }
}

/// Result with [`ControllerError`].
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;
