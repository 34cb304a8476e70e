//! Framing. Every message is a frame: a `u32` little-endian length, then that many bytes.
//!
//! - Request payload: `api_key u16, api_version u16, correlation_id u32, client_id string`,
//!   then the request body.
//! - Response payload: `correlation_id u32, error i16, message string`, then the response
//!   body only when `error` is `NONE`. A request-level failure (unsupported API or version,
//!   malformed body, frame too large) is reported this way for any API.
//!
//! Requests on one connection may be pipelined; responses come back in request order.

use bytes::Bytes;

use super::api::ApiKey;
use super::codec::{ProtocolError, Reader, Writer};
use super::error_code::ErrorCode;
use super::wire::Wire;

/// Bytes of the length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Why a frame's length prefix is refused.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("frame of {size} bytes is over the limit of {max}")]
pub struct FrameTooLarge {
    /// The declared size.
    pub size: u64,
    /// The limit.
    pub max: u64,
}

/// Reads a frame's length prefix and checks it against `max`.
pub fn frame_length(prefix: [u8; FRAME_PREFIX_BYTES], max: usize) -> Result<usize, FrameTooLarge> {
    let size = u32::from_le_bytes(prefix) as usize;
    if size > max {
        return Err(FrameTooLarge {
            size: size as u64,
            max: max as u64,
        });
    }
    Ok(size)
}

/// The fixed part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// Raw API key (may be unknown to this build).
    pub api_key: u16,
    /// API version.
    pub api_version: u16,
    /// Echoed in the response.
    pub correlation_id: u32,
    /// Free-form client name for logs.
    pub client_id: String,
}

impl RequestHeader {
    /// Reads the header from the start of a request payload.
    pub fn decode(r: &mut Reader) -> Result<RequestHeader, ProtocolError> {
        Ok(RequestHeader {
            api_key: r.u16("RequestHeader.api_key")?,
            api_version: r.u16("RequestHeader.api_version")?,
            correlation_id: r.u32("RequestHeader.correlation_id")?,
            client_id: r.string("RequestHeader.client_id")?,
        })
    }
}

/// The fixed part of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request's correlation id.
    pub correlation_id: u32,
    /// `NONE`, or why the whole request failed.
    pub error: ErrorCode,
    /// What went wrong, empty on success.
    pub message: String,
}

impl ResponseHeader {
    /// Reads the header from the start of a response payload.
    pub fn decode(r: &mut Reader) -> Result<ResponseHeader, ProtocolError> {
        Ok(ResponseHeader {
            correlation_id: r.u32("ResponseHeader.correlation_id")?,
            error: ErrorCode(r.i16("ResponseHeader.error")?),
            message: r.string("ResponseHeader.message")?,
        })
    }
}

/// Encodes a whole request frame (length prefix included) as chunks for one vectored write.
pub fn encode_request<T: Wire>(
    api: ApiKey,
    api_version: u16,
    correlation_id: u32,
    client_id: &str,
    body: &T,
) -> Vec<Bytes> {
    let mut w = Writer::frame();
    w.u16(api as u16);
    w.u16(api_version);
    w.u32(correlation_id);
    w.string(client_id);
    body.encode(&mut w);
    w.into_frame()
}

/// Encodes a successful response frame.
pub fn encode_response<T: Wire>(correlation_id: u32, body: &T) -> Vec<Bytes> {
    let mut w = Writer::frame();
    w.u32(correlation_id);
    w.i16(ErrorCode::NONE.0);
    w.string("");
    body.encode(&mut w);
    w.into_frame()
}

/// Encodes a response frame for a request that failed as a whole.
pub fn encode_error_response(correlation_id: u32, error: ErrorCode, message: &str) -> Vec<Bytes> {
    let mut w = Writer::frame();
    w.u32(correlation_id);
    w.i16(error.0);
    w.string(message);
    w.into_frame()
}

/// Decodes a whole message body and checks nothing is left over.
pub fn decode_body<T: Wire>(mut r: Reader) -> Result<T, ProtocolError> {
    let body = T::decode(&mut r, "body")?;
    r.finish()?;
    Ok(body)
}
