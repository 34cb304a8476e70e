//! Zigzag LEB128 varints as in Kafka's record format: varint (i32, at most 5 bytes) and
//! varlong (i64, at most 10 bytes). Decoding lives in `cursor.rs`; this file encodes.

use bytes::BufMut;

/// Widest varint: 32 bits in 7-bit groups.
pub(crate) const VARINT_BYTES_MAX: usize = 5;
/// Widest varlong: 64 bits in 7-bit groups.
pub(crate) const VARLONG_BYTES_MAX: usize = 10;

const _: () = {
    assert!(VARINT_BYTES_MAX * 7 >= 32 && (VARINT_BYTES_MAX - 1) * 7 < 32);
    assert!(VARLONG_BYTES_MAX * 7 >= 64 && (VARLONG_BYTES_MAX - 1) * 7 < 64);
};

pub(crate) const fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

pub(crate) const fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) const fn unzigzag32(n: u32) -> i32 {
    ((n >> 1) as i32) ^ -((n & 1) as i32)
}

pub(crate) const fn unzigzag64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Encoded size of `v` as a varint.
pub(crate) const fn varint_len(v: i32) -> usize {
    unsigned_len(zigzag32(v) as u64)
}

/// Encoded size of `v` as a varlong.
pub(crate) const fn varlong_len(v: i64) -> usize {
    unsigned_len(zigzag64(v))
}

const fn unsigned_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

pub(crate) fn put_varint(out: &mut impl BufMut, v: i32) {
    put_unsigned(out, u64::from(zigzag32(v)));
}

pub(crate) fn put_varlong(out: &mut impl BufMut, v: i64) {
    put_unsigned(out, zigzag64(v));
}

fn put_unsigned(out: &mut impl BufMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_matches_kafka() {
        assert_eq!(zigzag32(0), 0);
        assert_eq!(zigzag32(-1), 1);
        assert_eq!(zigzag32(1), 2);
        assert_eq!(zigzag32(i32::MIN), u32::MAX);
        assert_eq!(zigzag64(i64::MAX), u64::MAX - 1);
        for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            assert_eq!(unzigzag32(zigzag32(v)), v);
        }
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag64(zigzag64(v)), v);
        }
    }

    #[test]
    fn encoded_lengths() {
        let mut out = Vec::new();
        put_varint(&mut out, -1);
        assert_eq!(out, [0x01]);
        out.clear();
        put_varint(&mut out, 64);
        assert_eq!(out, [0x80, 0x01]);
        assert_eq!(varint_len(64), 2);
        assert_eq!(varint_len(i32::MIN), VARINT_BYTES_MAX);
        assert_eq!(varlong_len(i64::MIN), VARLONG_BYTES_MAX);
        out.clear();
        put_varlong(&mut out, i64::MIN);
        assert_eq!(out.len(), VARLONG_BYTES_MAX);
    }
}
