//! The batch `attributes` field: compression codec, timestamp type, transactional and
//! control flags.

use std::fmt;

use crate::error::DecodeError;

/// How the records section of a batch is compressed (as a whole).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// A u32 LE decompressed length followed by one lz4 block.
    Lz4,
    /// One zstd frame that declares its content size.
    Zstd,
}

impl Compression {
    /// The codec number in the attribute bits.
    pub const fn codec(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The compression for codec bits; 1 (gzip), 2 (snappy) and 5..=7 are not supported.
    pub fn from_codec(codec: u8) -> Result<Compression, DecodeError> {
        match codec {
            0 => Ok(Compression::None),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            _ => Err(DecodeError::UnsupportedCompression { codec }),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

/// What the record timestamps mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// Set by the producer when it created the record.
    #[default]
    CreateTime,
    /// Set by the broker when it appended the batch.
    LogAppendTime,
}

/// The raw attributes field. [`crate::BatchHeader::parse`] rejects unknown bits and
/// unsupported codecs, so the attributes of a parsed header always pass [`Attributes::check`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Attributes(pub u16);

impl Attributes {
    /// Bits 0..=2: the compression codec.
    pub const CODEC_MASK: u16 = 0b111;
    /// Bit 3: set for log-append time.
    pub const TIMESTAMP_TYPE_BIT: u16 = 1 << 3;
    /// Bit 4: the batch belongs to a transaction.
    pub const TRANSACTIONAL_BIT: u16 = 1 << 4;
    /// Bit 5: a control batch (transaction markers).
    pub const CONTROL_BIT: u16 = 1 << 5;
    /// Every bit this format defines; the rest must be zero.
    pub const KNOWN_MASK: u16 =
        Self::CODEC_MASK | Self::TIMESTAMP_TYPE_BIT | Self::TRANSACTIONAL_BIT | Self::CONTROL_BIT;

    /// Attributes with the given fields.
    pub const fn new(
        compression: Compression,
        timestamp_type: TimestampType,
        transactional: bool,
        control: bool,
    ) -> Attributes {
        let mut bits = compression.codec() as u16;
        if matches!(timestamp_type, TimestampType::LogAppendTime) {
            bits |= Self::TIMESTAMP_TYPE_BIT;
        }
        if transactional {
            bits |= Self::TRANSACTIONAL_BIT;
        }
        if control {
            bits |= Self::CONTROL_BIT;
        }
        Attributes(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// The compression codec, or an error for an unsupported one.
    pub fn compression(self) -> Result<Compression, DecodeError> {
        // The mask keeps three bits, so the value fits a u8.
        Compression::from_codec((self.0 & Self::CODEC_MASK) as u8)
    }

    /// The timestamp type.
    pub const fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Whether the batch belongs to a transaction.
    pub const fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL_BIT != 0
    }

    /// Whether this is a control batch.
    pub const fn is_control(self) -> bool {
        self.0 & Self::CONTROL_BIT != 0
    }

    /// Rejects unknown bits and unsupported codecs.
    pub fn check(self) -> Result<(), DecodeError> {
        if self.0 & !Self::KNOWN_MASK != 0 {
            return Err(DecodeError::UnknownAttributes { attributes: self.0 });
        }
        self.compression().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_combination() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            for timestamp_type in [TimestampType::CreateTime, TimestampType::LogAppendTime] {
                for transactional in [false, true] {
                    for control in [false, true] {
                        let a =
                            Attributes::new(compression, timestamp_type, transactional, control);
                        assert_eq!(a.check(), Ok(()));
                        assert_eq!(a.compression(), Ok(compression));
                        assert_eq!(a.timestamp_type(), timestamp_type);
                        assert_eq!(a.is_transactional(), transactional);
                        assert_eq!(a.is_control(), control);
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_unsupported_codecs_and_unknown_bits() {
        for codec in [1u8, 2, 5, 6, 7] {
            assert_eq!(
                Attributes(u16::from(codec)).check(),
                Err(DecodeError::UnsupportedCompression { codec })
            );
        }
        for bit in 6..16 {
            let attributes = 1u16 << bit;
            assert_eq!(
                Attributes(attributes).check(),
                Err(DecodeError::UnknownAttributes { attributes })
            );
        }
    }
}
