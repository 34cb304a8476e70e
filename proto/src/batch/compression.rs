//! Compressing and decompressing a whole records section, with the decompressed size known
//! and checked against the limit before any allocation.
//!
//! lz4: a u32 LE decompressed length, then one lz4 block.
//! zstd: one zstd frame that declares its content size.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::attributes::Compression;
use crate::error::{BuildError, DecodeError};
use crate::limits::Limits;

/// zstd level used by the builder: zstd's default, a good speed/ratio balance for batches.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// Magic number opening a (non-legacy, non-skippable) zstd frame.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Bytes of the lz4 decompressed-length prefix.
const LZ4_LENGTH_BYTES: usize = size_of::<u32>();
/// Most bytes one lz4 block byte can produce. A sequence of `n` input bytes (token, offset,
/// length bytes worth 255 each, literals) yields at most `255 * n` bytes, so a block of `b`
/// bytes decompresses to at most `255 * b`: a larger declared size is a lie, rejected before
/// allocating for it.
const LZ4_EXPANSION_MAX: u64 = 255;

/// Decompresses `input` (a compressed records section) into a new buffer of exactly the
/// declared size, which must be within `limits.records_uncompressed_bytes_max`.
pub(crate) fn decompress(
    codec: Compression,
    input: &[u8],
    limits: &Limits,
) -> Result<Bytes, DecodeError> {
    let max = u64::from(limits.records_uncompressed_bytes_max);
    match codec {
        Compression::None => Ok(Bytes::copy_from_slice(input)),
        Compression::Lz4 => decompress_lz4(input, max),
        Compression::Zstd => decompress_zstd(input, max),
    }
}

fn decompress_lz4(input: &[u8], max: u64) -> Result<Bytes, DecodeError> {
    let Some((length, block)) = input.split_first_chunk::<LZ4_LENGTH_BYTES>() else {
        return Err(DecodeError::Truncated {
            at: 0,
            need: LZ4_LENGTH_BYTES,
            have: input.len(),
        });
    };
    let declared = u64::from(u32::from_le_bytes(*length));
    if declared > max {
        return Err(DecodeError::DecompressedTooLarge {
            size: declared,
            max,
        });
    }
    if declared > (block.len() as u64).saturating_mul(LZ4_EXPANSION_MAX) {
        return Err(DecodeError::Decompress {
            codec: Compression::Lz4,
            reason: "declared size is more than the block can produce".to_owned(),
        });
    }
    let size = to_usize(declared, max)?;
    let mut out = vec![0u8; size];
    let actual =
        lz4_flex::block::decompress_into(block, &mut out).map_err(|e| DecodeError::Decompress {
            codec: Compression::Lz4,
            reason: e.to_string(),
        })?;
    if actual != size {
        return Err(DecodeError::DecompressedSizeMismatch {
            declared,
            actual: actual as u64,
        });
    }
    Ok(Bytes::from(out))
}

fn decompress_zstd(input: &[u8], max: u64) -> Result<Bytes, DecodeError> {
    let fail = |reason: &str| DecodeError::Decompress {
        codec: Compression::Zstd,
        reason: reason.to_owned(),
    };
    // Only standard frames: no legacy formats, no skippable frames.
    if input.first_chunk::<4>() != Some(&ZSTD_MAGIC.to_le_bytes()) {
        return Err(fail("not a zstd frame"));
    }
    let declared = zstd::zstd_safe::get_frame_content_size(input)
        .map_err(|_| fail("invalid zstd frame header"))?
        .ok_or_else(|| fail("zstd frame does not declare its content size"))?;
    if declared > max {
        return Err(DecodeError::DecompressedTooLarge {
            size: declared,
            max,
        });
    }
    let frame_bytes = zstd::zstd_safe::find_frame_compressed_size(input)
        .map_err(|code| fail(zstd::zstd_safe::get_error_name(code)))?;
    if frame_bytes != input.len() {
        return Err(fail("bytes after the zstd frame"));
    }
    let size = to_usize(declared, max)?;
    let mut out = Vec::with_capacity(size);
    let actual = zstd::zstd_safe::decompress(&mut out, input)
        .map_err(|code| fail(zstd::zstd_safe::get_error_name(code)))?;
    if actual != size || out.len() != size {
        return Err(DecodeError::DecompressedSizeMismatch {
            declared,
            actual: actual as u64,
        });
    }
    Ok(Bytes::from(out))
}

fn to_usize(size: u64, max: u64) -> Result<usize, DecodeError> {
    usize::try_from(size).map_err(|_| DecodeError::DecompressedTooLarge { size, max })
}

/// Appends `input` compressed with `codec` to `out`.
pub(crate) fn compress_into(
    codec: Compression,
    input: &[u8],
    out: &mut BytesMut,
) -> Result<(), BuildError> {
    let fail = |reason: String| BuildError::Compress { codec, reason };
    match codec {
        Compression::None => out.put_slice(input),
        Compression::Lz4 => {
            let declared = u32::try_from(input.len())
                .map_err(|_| fail("input longer than a u32 length".to_owned()))?;
            out.put_u32_le(declared);
            let start = out.len();
            out.resize(
                start + lz4_flex::block::get_maximum_output_size(input.len()),
                0,
            );
            let written = lz4_flex::block::compress_into(input, &mut out[start..])
                .map_err(|e| fail(e.to_string()))?;
            out.truncate(start + written);
        }
        Compression::Zstd => {
            let mut compressor =
                zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| fail(e.to_string()))?;
            // The decoder sizes its buffer from the frame's content size: always write it.
            // One-shot compression knows the whole input, so the size is exact.
            compressor
                .set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
                .map_err(|e| fail(e.to_string()))?;
            let start = out.len();
            out.resize(start + zstd::zstd_safe::compress_bound(input.len()), 0);
            let written = compressor
                .compress_to_buffer(input, &mut out[start..])
                .map_err(|e| fail(e.to_string()))?;
            out.truncate(start + written);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(codec: Compression, input: &[u8]) -> Result<Bytes, DecodeError> {
        let mut out = BytesMut::new();
        compress_into(codec, input, &mut out).map_err(|e| DecodeError::Decompress {
            codec,
            reason: e.to_string(),
        })?;
        decompress(codec, &out, &Limits::DEFAULT)
    }

    #[test]
    fn roundtrips() {
        let input: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            assert_eq!(roundtrip(codec, &input).as_deref(), Ok(&input[..]));
        }
    }

    #[test]
    fn highly_compressible_input_roundtrips() {
        // Zeros compress close to lz4's largest ratio, which the decoder's bound must allow.
        let input = vec![0u8; 8 << 20];
        for codec in [Compression::Lz4, Compression::Zstd] {
            assert_eq!(roundtrip(codec, &input).as_deref(), Ok(&input[..]));
        }
    }

    #[test]
    fn lz4_declared_size_beyond_the_expansion_bound() {
        let mut out = BytesMut::new();
        assert_eq!(
            compress_into(Compression::Lz4, &[5u8; 10], &mut out),
            Ok(())
        );
        let block = (out.len() - LZ4_LENGTH_BYTES) as u32;
        out[..4].copy_from_slice(&(block * 255 + 1).to_le_bytes());
        assert!(matches!(
            decompress(Compression::Lz4, &out, &Limits::DEFAULT),
            Err(DecodeError::Decompress { .. })
        ));
    }

    #[test]
    fn zstd_frame_declares_its_size() {
        let mut out = BytesMut::new();
        let input = [7u8; 1000];
        assert_eq!(compress_into(Compression::Zstd, &input, &mut out), Ok(()));
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&out).ok(),
            Some(Some(1000))
        );
    }

    #[test]
    fn zstd_rejects_frames_without_content_size_and_trailing_bytes() {
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("compressor");
        compressor
            .set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
            .expect("parameter");
        let frame = compressor.compress(&[1u8; 100]).expect("compress");
        assert!(matches!(
            decompress(Compression::Zstd, &frame, &Limits::DEFAULT),
            Err(DecodeError::Decompress { .. })
        ));
        let mut out = BytesMut::new();
        assert_eq!(
            compress_into(Compression::Zstd, &[1u8; 100], &mut out),
            Ok(())
        );
        out.put_u8(0);
        assert!(matches!(
            decompress(Compression::Zstd, &out, &Limits::DEFAULT),
            Err(DecodeError::Decompress { .. })
        ));
    }

    #[test]
    fn lz4_size_mismatch() {
        let mut out = BytesMut::new();
        assert_eq!(
            compress_into(Compression::Lz4, &[9u8; 100], &mut out),
            Ok(())
        );
        // Declare more than the block holds.
        out[..4].copy_from_slice(&101u32.to_le_bytes());
        assert_eq!(
            decompress(Compression::Lz4, &out, &Limits::DEFAULT),
            Err(DecodeError::DecompressedSizeMismatch {
                declared: 101,
                actual: 100
            })
        );
        // Declare less: the block overruns the buffer.
        out[..4].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            decompress(Compression::Lz4, &out, &Limits::DEFAULT),
            Err(DecodeError::Decompress { .. })
        ));
    }
}
