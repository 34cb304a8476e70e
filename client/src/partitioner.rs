//! Choosing a partition for a record, like Kafka's default partitioner: an explicit
//! partition wins; else a key is hashed with murmur2 (so keys land where a Kafka client would
//! put them); else records without a key stick to one partition until its batch is sent.

/// Kafka's murmur2 (32-bit, seed `0x9747b28c`), as in `org.apache.kafka.common.utils.Utils`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    // Kafka hashes an `int` length: keys are far below 2 GiB (KEY_BYTES_MAX).
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub fn to_positive(hash: i32) -> u32 {
    (hash & 0x7fff_ffff) as u32
}

/// The partition of a keyed record: `toPositive(murmur2(key)) % partitions`.
///
/// # Panics
/// If `partitions` is zero (a topic has at least one partition).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    to_positive(murmur2(key)) % partitions
}

/// A partition for a keyless record to stick to, other than `previous` when there is a
/// choice, so load spreads as batches complete.
pub(crate) fn pick_sticky(partitions: u32, previous: Option<u32>) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    if partitions == 1 {
        return 0;
    }
    let pick = rand::random_range(0..partitions);
    match previous {
        Some(prev) if prev == pick => (pick + 1) % partitions,
        _ => pick,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn key_partition_is_positive_hash_modulo() {
        // toPositive(-973932308) = 1173551340; 1173551340 % 16 = 12.
        assert_eq!(to_positive(-973_932_308), 1_173_551_340);
        assert_eq!(partition_for_key(b"21", 16), 1_173_551_340 % 16);
        assert_eq!(to_positive(i32::MIN), 0);
        for p in 1..40 {
            assert!(partition_for_key(b"some key", p) < p);
        }
    }

    #[test]
    fn sticky_moves_on_when_it_can() {
        assert_eq!(pick_sticky(1, Some(0)), 0);
        for _ in 0..200 {
            let p = pick_sticky(3, Some(1));
            assert!(p < 3);
            assert_ne!(p, 1);
        }
    }
}
