//! Cluster administration: decommissioning a broker.

use crate::protocol::error_code::ErrorCode;
use crate::protocol::wire::message;

message! {
    /// DecommissionBroker request: move every replica off a broker so that it can leave.
    /// Idempotent: asking again reports the progress.
    pub struct DecommissionBrokerRequest {
        /// The broker's node id.
        pub broker: i32,
    }
}

message! {
    /// DecommissionBroker response.
    pub struct DecommissionBrokerResponse {
        /// `NONE` once the broker is being decommissioned (or is done).
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// Partition replicas the broker still holds, in the answering broker's metadata
        /// (0: it can be stopped).
        pub remaining_replicas: u32,
    }
}
