//! The `Offset` newtype: the position of a record in a partition log.

use std::fmt;

/// The position of a record in a partition log: the first record ever appended has offset 0
/// and each record after it has the next one. Offsets are dense within a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl Offset {
    /// The first offset of every log.
    pub const ZERO: Offset = Offset(0);

    /// The raw offset value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The offset right after this one.
    ///
    /// # Panics
    /// If this is `u64::MAX`: no log gets there, so reaching it is a programmer error.
    /// Offsets taken from untrusted headers are checked against overflow when parsed.
    pub const fn next(self) -> Offset {
        match self.0.checked_add(1) {
            Some(next) => Offset(next),
            None => panic!("offset space exhausted"),
        }
    }

    /// `self + delta`, or `None` on overflow.
    pub const fn checked_add(self, delta: u64) -> Option<Offset> {
        match self.0.checked_add(delta) {
            Some(sum) => Some(Offset(sum)),
            None => None,
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Offset {
    fn from(value: u64) -> Self {
        Offset(value)
    }
}

impl From<Offset> for u64 {
    fn from(value: Offset) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_and_order() {
        assert_eq!(Offset::ZERO.next(), Offset(1));
        assert!(Offset(1) < Offset(2));
        assert_eq!(Offset(7).get(), 7);
        assert_eq!(Offset(41).to_string(), "41");
        assert_eq!(Offset(u64::MAX).checked_add(1), None);
        assert_eq!(Offset(1).checked_add(2), Some(Offset(3)));
    }

    #[test]
    #[should_panic(expected = "offset space exhausted")]
    fn next_overflow_panics() {
        let _ = Offset(u64::MAX).next();
    }
}
