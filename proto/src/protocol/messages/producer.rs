//! InitProducerId: a producer id and epoch for the idempotent producer.

use crate::protocol::error_code::ErrorCode;
use crate::protocol::wire::message;

/// `producer_id` asking for a new id.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producer_epoch` of a request asking for a new id.
pub const NO_PRODUCER_EPOCH: i16 = -1;

message! {
    /// InitProducerId request. `producer_id` -1 asks for a new id (epoch 0); an id the
    /// broker gave before, with its current epoch, asks for the next epoch of that id, which
    /// fences every producer still using an older one.
    pub struct InitProducerIdRequest {
        /// Transactions are not supported: must be null.
        pub transactional_id: Option<String>,
        /// An existing id to bump the epoch of, or [`NO_PRODUCER_ID`].
        pub producer_id: i64,
        /// The caller's current epoch of `producer_id`, or [`NO_PRODUCER_EPOCH`].
        pub producer_epoch: i16,
    }
}

message! {
    /// InitProducerId response.
    pub struct InitProducerIdResponse {
        /// `NONE` on success.
        pub error: ErrorCode,
        /// What went wrong, empty on success.
        pub message: String,
        /// The producer id, -1 on error.
        pub producer_id: i64,
        /// Its epoch, -1 on error.
        pub producer_epoch: i16,
    }
}
