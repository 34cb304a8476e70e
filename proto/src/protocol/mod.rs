//! The native protocol: framing, the field codec, error codes, the API table and one file
//! per request. No I/O: the broker and the client move the bytes. See `docs/PROTOCOL.md`.

pub mod api;
pub mod codec;
pub mod config;
pub mod error_code;
pub mod frame;
pub mod limits;
pub mod messages;
pub(crate) mod wire;

pub use api::{APIS, ApiKey, ApiSpec, api_version_ranges};
pub use codec::{ProtocolError, Reader, RecordSet, Writer};
pub use error_code::ErrorCode;
pub use frame::{
    FRAME_PREFIX_BYTES, FrameTooLarge, RequestHeader, ResponseHeader, decode_body,
    encode_error_response, encode_request, encode_response, frame_length,
};
pub use limits::*;
pub use messages::*;
pub use wire::Wire;
