//! The registry of peer frame kinds: the one byte after a frame's length that says what the
//! body is. The transport only checks that a kind is known; the users of the transport
//! (controller, replication) own the bodies. Add a kind here, with its number, before using it;
//! a number is never reused.

/// What a peer frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A raft-rs message between controller nodes (one-way).
    RaftMessage = 1,
    /// A broker's heartbeat to the controller.
    BrokerHeartbeatRequest = 2,
    /// The controller's answer to a heartbeat.
    BrokerHeartbeatResponse = 3,
    /// A follower's fetch from a partition leader.
    ReplicaFetchRequest = 4,
    /// The leader's answer to a replica fetch (up to 8 MiB of batches).
    ReplicaFetchResponse = 5,
    /// A controller command forwarded by a non-leader to the raft leader.
    ControllerForward = 6,
    /// The answer to a forwarded controller command.
    ControllerForwardResponse = 7,
    /// An error in place of a response: the body is an [`ErrorBody`](super::ErrorBody).
    Error = 8,
}

impl FrameKind {
    /// Every known kind, in number order.
    pub const ALL: [FrameKind; 8] = [
        FrameKind::RaftMessage,
        FrameKind::BrokerHeartbeatRequest,
        FrameKind::BrokerHeartbeatResponse,
        FrameKind::ReplicaFetchRequest,
        FrameKind::ReplicaFetchResponse,
        FrameKind::ControllerForward,
        FrameKind::ControllerForwardResponse,
        FrameKind::Error,
    ];

    /// The kind with wire number `byte`, if it is known.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == byte)
    }

    /// The wire number.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_ones_are_none() {
        for (i, kind) in FrameKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.as_u8() as usize, i + 1);
            assert_eq!(FrameKind::from_u8(kind.as_u8()), Some(kind));
        }
        assert_eq!(FrameKind::from_u8(0), None);
        assert_eq!(FrameKind::from_u8(9), None);
        assert_eq!(FrameKind::from_u8(255), None);
    }
}
