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
    stat_cpu_seconds("/proc/self/stat")
}

/// utime + stime of a `/proc/…/stat` file, in seconds.
fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
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

/// CPU seconds (user + system, all threads) process `pid` has used, from /proc/PID/stat.
pub(crate) fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// The whole machine's CPU time so far, from the first line of /proc/stat (clock ticks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MachineCpu {
    total: u64,
    idle: u64,
    steal: u64,
}

impl MachineCpu {
    pub(crate) fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(stat.lines().next()?)
    }

    /// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time
    /// is already counted in user and nice.
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let v: Vec<u64> = fields
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
            return None;
        };
        Some(Self {
            total: user + nice + system + idle + iowait + irq + softirq + steal,
            idle: idle + iowait,
            steal,
        })
    }

    /// Percentages of the machine's CPU time between `self` and `later`: busy (neither idle
    /// nor waiting for I/O, steal included) and stolen by the hypervisor.
    pub(crate) fn busy_and_steal_pct(self, later: Self) -> Option<(f64, f64)> {
        let total = later.total.checked_sub(self.total).filter(|&t| t > 0)? as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        Some((100.0 * (total - idle) / total, 100.0 * steal / total))
    }
}

/// Peak resident set size of process `pid` in bytes (`VmHWM` in /proc/PID/status).
pub(crate) fn pid_peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process listening on TCP `port` on this machine: the socket's inode from
/// /proc/net/tcp and tcp6 (state 0A = LISTEN), then the process holding that inode in
/// /proc/*/fd. Needs permission to read other processes' fds (same user or root).
pub(crate) fn find_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The percentile spectrum of a histogram for plots: `[percentile, µs]` pairs at
/// 0, 50, 68.4, 90, ... nines spaced 1/4 apart, up to the recorded count's resolution,
/// then the maximum at 100.
pub(crate) fn spectrum(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    /// Quarter-nines steps: 24 steps reach 99.9999%.
    const STEPS: i32 = 24;
    let mut points = Vec::new();
    if h.is_empty() {
        return points;
    }
    for step in 0..=STEPS {
        let q = 1.0 - 10f64.powf(-f64::from(step) / 4.0);
        // Beyond 1/count a percentile only repeats the maximum.
        if step > 0 && (1.0 - q) * (h.len() as f64) < 1.0 {
            break;
        }
        points.push([q * 100.0, h.value_at_quantile(q) as f64]);
    }
    points.push([100.0, h.max() as f64]);
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_cpu_parses_proc_stat_and_takes_shares() {
        let a = MachineCpu::parse("cpu  100 0 50 800 40 0 10 0 0 0").expect("parses");
        let b = MachineCpu::parse("cpu  250 0 90 900 60 0 30 70 5 0").expect("parses");
        // 400 ticks in all: 120 idle or waiting, 70 stolen.
        let (busy, steal) = a.busy_and_steal_pct(b).expect("time passed");
        assert!((busy - 70.0).abs() < 1e-9, "{busy}");
        assert!((steal - 17.5).abs() < 1e-9, "{steal}");
        assert!(a.busy_and_steal_pct(a).is_none(), "no time passed");
        assert!(MachineCpu::parse("cpu0 1 2 3 4 5 6 7 8").is_none());
        assert!(MachineCpu::parse("cpu 1 2 3").is_none());
        assert!(MachineCpu::now().is_some(), "this machine's /proc/stat");
    }
}
