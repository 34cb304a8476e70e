//! Peer frames: `u32 big-endian length of the rest | u8 kind | body`, the length at most
//! [`PEER_FRAME_BYTES_MAX`]. One frame per bidirectional stream in each direction (a request
//! and its response); any number, in order, on a unidirectional stream.

use bytes::{BufMut, Bytes, BytesMut};
use compio_quic::{ReadError, RecvStream, SendStream, WriteError};

use super::kind::FrameKind;

/// Largest frame length (kind byte + body): a replica fetch response carries up to 8 MiB of
/// batches, plus 64 KiB for its own fields.
pub const PEER_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024 + 64 * 1024;

/// Bytes before the body: the u32 length and the kind byte.
pub const FRAME_HEADER_BYTES: usize = 5;

/// Largest message in an [`ErrorBody`]; longer messages are cut (at a char boundary).
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// Bytes reserved up front when reading a body; the rest grows as data arrives, so a peer
/// that announces 8 MiB and sends 10 bytes costs 64 KiB, not 8 MiB.
const BODY_RESERVE_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(PEER_FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(ERROR_MESSAGE_BYTES_MAX + 2 < PEER_FRAME_BYTES_MAX);

/// One peer frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body is.
    pub kind: FrameKind,
    /// The body.
    pub body: Bytes,
}

/// A frame that breaks the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field exceeds [`PEER_FRAME_BYTES_MAX`] (or a body to send would).
    #[error("frame length {len} exceeds the maximum {max}")]
    Oversized {
        /// The length (kind byte + body).
        len: u64,
        /// [`PEER_FRAME_BYTES_MAX`].
        max: usize,
    },
    /// The length field is 0: there is not even a kind byte.
    #[error("frame length 0 (a frame has at least its kind byte)")]
    Empty,
    /// The kind byte is not in the [`FrameKind`] registry.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The byte.
        kind: u8,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes the frame (header included) needs.
        need: u64,
        /// Bytes that arrived.
        have: u64,
    },
}

impl Frame {
    /// A frame; fails if the body is too large to send.
    pub fn new(kind: FrameKind, body: Bytes) -> Result<Self, FrameError> {
        check_len(body.len() as u64 + 1)?;
        Ok(Self { kind, body })
    }

    /// The 5 header bytes of a frame of `kind` with `body_len` body bytes (checked by the
    /// caller to fit).
    pub fn header(kind: FrameKind, body_len: usize) -> [u8; FRAME_HEADER_BYTES] {
        let len = u32::try_from(body_len + 1)
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        [len[0], len[1], len[2], len[3], kind.as_u8()]
    }

    /// The whole frame as bytes (header + body); for tests and tools.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES + self.body.len());
        out.put_slice(&Self::header(self.kind, self.body.len()));
        out.put_slice(&self.body);
        out.freeze()
    }
}

fn check_len(len: u64) -> Result<(), FrameError> {
    if len == 0 {
        Err(FrameError::Empty)
    } else if len > PEER_FRAME_BYTES_MAX as u64 {
        Err(FrameError::Oversized {
            len,
            max: PEER_FRAME_BYTES_MAX,
        })
    } else {
        Ok(())
    }
}

/// Decodes a header: the kind and the body length. The length is checked before the kind so
/// an oversized frame is named as such whatever its kind byte.
pub fn decode_header(header: [u8; FRAME_HEADER_BYTES]) -> Result<(FrameKind, usize), FrameError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    check_len(u64::from(len))?;
    let kind = FrameKind::from_u8(header[4]).ok_or(FrameError::UnknownKind { kind: header[4] })?;
    Ok((kind, len as usize - 1))
}

/// The body of a [`FrameKind::Error`] frame: `u16 big-endian code | UTF-8 message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong ([`ErrorBody::MALFORMED_FRAME`], or a code of the transport's user).
    pub code: u16,
    /// For people and logs.
    pub message: String,
}

impl ErrorBody {
    /// The request frame broke the frame format.
    pub const MALFORMED_FRAME: u16 = 1;
    /// The receiver has no handler for the request's kind.
    pub const UNSUPPORTED_KIND: u16 = 2;

    /// Encodes, cutting the message to [`ERROR_MESSAGE_BYTES_MAX`].
    pub fn encode(&self) -> Bytes {
        let mut end = self.message.len().min(ERROR_MESSAGE_BYTES_MAX);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = BytesMut::with_capacity(2 + end);
        out.put_u16(self.code);
        out.put_slice(&self.message.as_bytes()[..end]);
        out.freeze()
    }

    /// Decodes; a body under 2 bytes is code 0, and bad UTF-8 is replaced.
    pub fn decode(body: &[u8]) -> Self {
        match body {
            [a, b, rest @ ..] => Self {
                code: u16::from_be_bytes([*a, *b]),
                message: String::from_utf8_lossy(&rest[..rest.len().min(ERROR_MESSAGE_BYTES_MAX)])
                    .into_owned(),
            },
            _ => Self {
                code: 0,
                message: String::new(),
            },
        }
    }
}

/// Reading a frame from a stream failed.
#[derive(Debug)]
pub(crate) enum ReadFrameError {
    /// The bytes break the format.
    Frame(FrameError),
    /// The stream failed (reset by the peer, connection lost).
    Stream(ReadError),
}

/// Reads the next frame from `recv`; `Ok(None)` if the stream ended cleanly before one.
pub(crate) async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, ReadFrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut have = 0;
    while have < FRAME_HEADER_BYTES {
        match recv.read_chunk(FRAME_HEADER_BYTES - have, true).await {
            Ok(Some(chunk)) => {
                header[have..have + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                have += chunk.bytes.len();
            }
            Ok(None) if have == 0 => return Ok(None),
            Ok(None) => {
                return Err(ReadFrameError::Frame(FrameError::Truncated {
                    need: FRAME_HEADER_BYTES as u64,
                    have: have as u64,
                }));
            }
            Err(e) => return Err(ReadFrameError::Stream(e)),
        }
    }
    let (kind, body_len) = decode_header(header).map_err(ReadFrameError::Frame)?;
    let mut body = BytesMut::with_capacity(body_len.min(BODY_RESERVE_BYTES_MAX));
    while body.len() < body_len {
        match recv.read_chunk(body_len - body.len(), true).await {
            Ok(Some(chunk)) if body.is_empty() && chunk.bytes.len() == body_len => {
                // The whole body in one chunk: keep it without a copy.
                return Ok(Some(Frame {
                    kind,
                    body: chunk.bytes,
                }));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(ReadFrameError::Frame(FrameError::Truncated {
                    need: (FRAME_HEADER_BYTES + body_len) as u64,
                    have: (FRAME_HEADER_BYTES + body.len()) as u64,
                }));
            }
            Err(e) => return Err(ReadFrameError::Stream(e)),
        }
    }
    Ok(Some(Frame {
        kind,
        body: body.freeze(),
    }))
}

/// Writes one frame to `send` (the body is checked to fit by the caller).
pub(crate) async fn write_frame(
    send: &mut SendStream,
    kind: FrameKind,
    body: &Bytes,
) -> Result<(), WriteError> {
    let header = Bytes::copy_from_slice(&Frame::header(kind, body.len()));
    send.write_all_chunks(&mut [header, body.clone()]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_named() {
        let frame =
            Frame::new(FrameKind::ReplicaFetchRequest, Bytes::from_static(b"abc")).expect("frame");
        let bytes = frame.to_bytes();
        assert_eq!(&bytes[..], &[0, 0, 0, 4, 4, b'a', b'b', b'c']);
        let header: [u8; 5] = bytes[..5].try_into().expect("5");
        assert_eq!(
            decode_header(header),
            Ok((FrameKind::ReplicaFetchRequest, 3))
        );
        assert_eq!(decode_header([0, 0, 0, 0, 1]), Err(FrameError::Empty));
        assert_eq!(
            decode_header([0xff, 0xff, 0xff, 0xff, 99]),
            Err(FrameError::Oversized {
                len: u64::from(u32::MAX),
                max: PEER_FRAME_BYTES_MAX
            })
        );
        assert_eq!(
            decode_header([0, 0, 0, 1, 0]),
            Err(FrameError::UnknownKind { kind: 0 })
        );
        let max = (PEER_FRAME_BYTES_MAX as u32).to_be_bytes();
        assert_eq!(
            decode_header([max[0], max[1], max[2], max[3], 5]),
            Ok((FrameKind::ReplicaFetchResponse, PEER_FRAME_BYTES_MAX - 1))
        );
        assert!(Frame::new(FrameKind::Error, Bytes::from(vec![0; PEER_FRAME_BYTES_MAX])).is_err());
    }

    #[test]
    fn error_bodies_round_trip_and_long_messages_are_cut() {
        let body = ErrorBody {
            code: ErrorBody::MALFORMED_FRAME,
            message: "bad".into(),
        };
        assert_eq!(ErrorBody::decode(&body.encode()), body);
        let long = ErrorBody {
            code: 7,
            message: "é".repeat(ERROR_MESSAGE_BYTES_MAX),
        };
        let decoded = ErrorBody::decode(&long.encode());
        assert!(decoded.message.len() <= ERROR_MESSAGE_BYTES_MAX);
        assert!(decoded.message.chars().all(|c| c == 'é'));
        assert_eq!(ErrorBody::decode(&[1]).code, 0);
    }
}
