//! Latency histograms and the result line/JSON every benchmark prints.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency recorder in microseconds, 1 µs to 1 hour, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// CPU seconds this process used since `before`, a [`process_cpu_seconds`] reading.
pub(crate) fn cpu_seconds_since(before: Option<f64>) -> Option<f64> {
    process_cpu_seconds()
        .zip(before)
        .map(|(after, before)| after - before)
}

/// Prints a benchmark's result: one JSON object with `json`, else the human lines `text`.
pub(crate) fn print_result<T: Serialize>(
    json: bool,
    out: &T,
    text: impl FnOnce(&T),
) -> Result<(), String> {
    if json {
        println!("{}", serde_json::to_string(out).map_err(|e| e.to_string())?);
    } else {
        text(out);
    }
    Ok(())
}
