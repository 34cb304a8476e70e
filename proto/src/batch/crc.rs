//! The batch checksum: CRC32C over every byte after the CRC field.

use crate::batch::layout::{BATCH_HEADER_BYTES, CRC_AT, CRC_COVERED_FROM};
use crate::error::DecodeError;

/// CRC32C of `batch[CRC_COVERED_FROM..]`, the bytes the header's `crc` covers. `batch` must be
/// exactly one batch; a slice shorter than [`CRC_COVERED_FROM`] gives the CRC of nothing.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(CRC_COVERED_FROM..).unwrap_or_default())
}

/// Checks the CRC stored in `batch`'s header against its bytes. `batch` must be exactly one
/// batch (its length is not checked against the header here); a slice shorter than a header
/// is `Truncated`.
pub fn verify_crc(batch: &[u8]) -> Result<(), DecodeError> {
    let truncated = DecodeError::Truncated {
        at: 0,
        need: BATCH_HEADER_BYTES,
        have: batch.len(),
    };
    if batch.len() < BATCH_HEADER_BYTES {
        return Err(truncated);
    }
    let Some(&[a, b, c, d]) = batch.get(CRC_AT..CRC_COVERED_FROM) else {
        return Err(truncated);
    };
    let stored = u32::from_le_bytes([a, b, c, d]);
    let computed = compute_crc(batch);
    if stored != computed {
        return Err(DecodeError::CrcMismatch { stored, computed });
    }
    Ok(())
}
