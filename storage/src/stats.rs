//! Counters a log keeps about its own I/O, for the broker's metrics: fdatasync latency (a
//! fixed-bucket histogram) and tail-cache hits and misses. Plain numbers, owned by the log
//! (single-threaded); [`crate::PartitionLog::io_stats`] copies them out.

use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in microseconds (the last bucket,
/// `+Inf`, is implicit). Prometheus-style: a sample counts in the first bucket whose bound
/// is at least its value.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Buckets of a [`LatencyHistogram`], including the implicit `+Inf` one.
pub const LATENCY_BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

const _: () = {
    let mut i = 1;
    while i < LATENCY_BUCKETS_US.len() {
        assert!(LATENCY_BUCKETS_US[i - 1] < LATENCY_BUCKETS_US[i]);
        i += 1;
    }
};

/// A latency histogram with the fixed buckets of [`LATENCY_BUCKETS_US`]. Counts are per
/// bucket (not cumulative); the exposition format's cumulative counts are summed at render.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Samples per bucket; the last entry is the `+Inf` bucket.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Sum of all samples, in microseconds.
    pub sum_us: u64,
    /// Number of samples.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// Adds `other`'s samples to this histogram.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine += theirs;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.count += other.count;
    }
}

/// I/O counters of one log since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogIoStats {
    /// Latency of every fdatasync/fsync the log issued (group commits and segment seals).
    pub fsync: LatencyHistogram,
    /// Reads served from the tail cache.
    pub cache_hits: u64,
    /// Reads that went to the disk.
    pub cache_misses: u64,
    /// Of those, reads served by bytes read ahead for a sequential reader.
    pub read_ahead_hits: u64,
    /// Appends refused because the disk was full.
    pub disk_full_refusals: u64,
}

impl LogIoStats {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &LogIoStats) {
        self.fsync.merge(&other.fsync);
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.read_ahead_hits += other.read_ahead_hits;
        self.disk_full_refusals += other.disk_full_refusals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_at_or_above_them() {
        let mut h = LatencyHistogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(51));
        h.record(Duration::from_secs(100));
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS - 1], 1);
        assert_eq!(h.count, 3);
        assert_eq!(h.sum_us, 50 + 51 + 100_000_000);
        let mut m = LatencyHistogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count, 6);
        assert_eq!(m.buckets[1], 2);
    }
}
