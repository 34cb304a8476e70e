//! `Records`: the iterator over the records section of one batch, checking as it goes that
//! the section holds exactly the declared records.

use std::iter::FusedIterator;

use bytes::Bytes;

use crate::batch::record::{Record, decode_record};
use crate::error::DecodeError;
use crate::limits::Limits;

/// Iterator over the records of a batch, from [`crate::RecordBatch::records`].
///
/// Each record is checked (offset delta equals its index, lengths consistent, limits). The
/// iterator errors if the section ends before `record_count` records
/// ([`DecodeError::RecordCountMismatch`]) or has bytes after the last one
/// ([`DecodeError::TrailingBytes`]). After an error it yields `None`.
#[derive(Debug, Clone)]
pub struct Records {
    section: Bytes,
    pos: usize,
    index: u32,
    count: u32,
    base_timestamp: i64,
    limits: Limits,
    done: bool,
}

impl Records {
    /// Records of `section` (uncompressed) for a batch declaring `count` records.
    pub(crate) fn new(section: Bytes, count: u32, base_timestamp: i64, limits: Limits) -> Self {
        Records {
            section,
            pos: 0,
            index: 0,
            count,
            base_timestamp,
            limits,
            done: false,
        }
    }

    /// The (decompressed) records section being iterated.
    pub fn section(&self) -> &Bytes {
        &self.section
    }

    fn fail(&mut self, e: DecodeError) -> Option<Result<Record, DecodeError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl Iterator for Records {
    type Item = Result<Record, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.count {
            self.done = true;
            let count = self.section.len().saturating_sub(self.pos);
            if count != 0 {
                return self.fail(DecodeError::TrailingBytes {
                    at: self.pos,
                    count,
                });
            }
            return None;
        }
        if self.pos >= self.section.len() {
            return self.fail(DecodeError::RecordCountMismatch {
                declared: self.count,
                found: self.index,
            });
        }
        match decode_record(
            &self.section,
            &mut self.pos,
            self.index,
            self.base_timestamp,
            &self.limits,
        ) {
            Ok(record) => {
                self.index += 1;
                Some(Ok(record))
            }
            Err(e) => self.fail(e),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        // The remaining records, plus possibly one error.
        let left = (self.count - self.index) as usize;
        (0, Some(left.saturating_add(1)))
    }
}

impl FusedIterator for Records {}
