//! The `Wire` trait: how each field type is written and read, and the `message!` macro that
//! declares a message struct with its codec, fields in declaration order.

use super::codec::{ProtocolError, Reader, RecordSet, Writer};
use super::error_code::ErrorCode;
use super::limits::{
    ARRAY_LEN_MAX, OPAQUE_BYTES_MAX, REQUEST_FRAME_BYTES_MAX, RESPONSE_FRAME_BYTES_MAX,
};
use crate::Offset;
use bytes::{Bytes, BytesMut};

/// A type with a wire encoding.
pub trait Wire: Sized {
    /// The fewest bytes an encoded value takes (bounds array counts against the bytes left).
    const MIN_BYTES: usize;
    /// Writes the value.
    fn encode(&self, w: &mut Writer);
    /// Reads a value; `field` names it in errors.
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError>;
}

macro_rules! int_wire {
    ($($ty:ty => $m:ident, $n:expr;)*) => {
        $(impl Wire for $ty {
            const MIN_BYTES: usize = $n;
            fn encode(&self, w: &mut Writer) {
                w.$m(*self);
            }
            fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
                r.$m(field)
            }
        })*
    };
}

int_wire! {
    u8 => u8, 1;
    i8 => i8, 1;
    bool => bool, 1;
    u16 => u16, 2;
    i16 => i16, 2;
    u32 => u32, 4;
    i32 => i32, 4;
    u64 => u64, 8;
    i64 => i64, 8;
}

impl Wire for String {
    const MIN_BYTES: usize = 2;
    fn encode(&self, w: &mut Writer) {
        w.string(self);
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        r.string(field)
    }
}

impl Wire for Offset {
    const MIN_BYTES: usize = 8;
    fn encode(&self, w: &mut Writer) {
        w.u64(self.get());
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        r.u64(field).map(Offset)
    }
}

impl Wire for ErrorCode {
    const MIN_BYTES: usize = 2;
    fn encode(&self, w: &mut Writer) {
        w.i16(self.0);
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        r.i16(field).map(ErrorCode)
    }
}

/// Room to reserve for `count` decoded elements: the count, but never more memory than the
/// bytes left in the frame. A decoded element can be far larger than its encoding (an empty
/// string: 2 bytes on the wire, 24 in memory), so reserving `count` up front would let a
/// declared count alone claim memory for elements that are not there; past this, the `Vec`
/// grows only as elements really decode.
fn capacity_for<T>(count: usize, r: &Reader) -> usize {
    count.min(r.remaining() / size_of::<T>().max(1))
}

impl<T: Wire> Wire for Vec<T> {
    const MIN_BYTES: usize = 4;
    fn encode(&self, w: &mut Writer) {
        w.count(self.len());
        for item in self {
            item.encode(w);
        }
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        let n = r.count(field, ARRAY_LEN_MAX, T::MIN_BYTES)?;
        let mut out = Vec::with_capacity(capacity_for::<T>(n, r));
        for _ in 0..n {
            out.push(T::decode(r, field)?);
        }
        Ok(out)
    }
}

/// An optional array: absent is encoded as count `u32::MAX` ("all topics", for instance).
impl<T: Wire> Wire for Option<Vec<T>> {
    const MIN_BYTES: usize = 4;
    fn encode(&self, w: &mut Writer) {
        w.optional_count(self.as_ref().map(Vec::len));
        for item in self.iter().flatten() {
            item.encode(w);
        }
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        let Some(n) = r.optional_count(field, ARRAY_LEN_MAX, T::MIN_BYTES)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(capacity_for::<T>(n, r));
        for _ in 0..n {
            out.push(T::decode(r, field)?);
        }
        Ok(Some(out))
    }
}

/// Opaque bytes (group metadata, assignments): `u32` length, then the bytes, at most
/// [`OPAQUE_BYTES_MAX`].
impl Wire for Bytes {
    const MIN_BYTES: usize = 4;
    fn encode(&self, w: &mut Writer) {
        w.u32(self.len() as u32);
        w.chunk(self.clone());
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        let at = r.position();
        let len = r.u32(field)? as usize;
        if len > OPAQUE_BYTES_MAX {
            return Err(ProtocolError::TooLarge {
                at,
                field,
                size: len as u64,
                max: OPAQUE_BYTES_MAX as u64,
            });
        }
        r.bytes(field, len).map(BytesMut::freeze)
    }
}

impl Wire for RecordSet {
    const MIN_BYTES: usize = 4;
    fn encode(&self, w: &mut Writer) {
        w.records(self);
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        r.records(field, REQUEST_FRAME_BYTES_MAX.max(RESPONSE_FRAME_BYTES_MAX))
    }
}

/// Declares a message struct whose fields are encoded in order.
macro_rules! message {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* pub $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $crate::protocol::wire::Wire for $name {
            const MIN_BYTES: usize =
                0 $(+ <$ty as $crate::protocol::wire::Wire>::MIN_BYTES)*;

            #[allow(unused_variables)]
            fn encode(&self, w: &mut $crate::protocol::codec::Writer) {
                $($crate::protocol::wire::Wire::encode(&self.$field, w);)*
            }

            #[allow(unused_variables)]
            fn decode(
                r: &mut $crate::protocol::codec::Reader,
                _field: &'static str,
            ) -> Result<Self, $crate::protocol::codec::ProtocolError> {
                Ok(Self {
                    $($field: $crate::protocol::wire::Wire::decode(
                        r,
                        concat!(stringify!($name), ".", stringify!($field)),
                    )?,)*
                })
            }
        }
    };
}

pub(crate) use message;

impl Default for ErrorCode {
    fn default() -> Self {
        ErrorCode::NONE
    }
}

impl Default for RecordSet {
    fn default() -> Self {
        RecordSet::empty()
    }
}

/// A nullable string: absent is encoded as length `u16::MAX` (above
/// [`super::limits::STRING_BYTES_MAX`], so no present string has that length).
impl Wire for Option<String> {
    const MIN_BYTES: usize = 2;
    fn encode(&self, w: &mut Writer) {
        match self {
            Some(s) => w.string(s),
            None => w.u16(u16::MAX),
        }
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, ProtocolError> {
        r.optional_string(field)
    }
}
