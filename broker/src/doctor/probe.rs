//! `sluice doctor --probe-disk`: a quick (under 2 s) measure of the data directory's disk:
//! sequential O_DIRECT write bandwidth into preallocated space (what the log does), and the
//! latency of a 4 KiB write followed by fdatasync (what every acks=all produce waits for).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::Finding;
use super::checks::{Aligned, ProbeFile, fdatasync, pwrite_all};

const MIB: u64 = 1024 * 1024;
/// Chunk of the bandwidth probe: the log's write chunk.
const PROBE_CHUNK_BYTES: usize = 1024 * 1024;
/// Most bytes the bandwidth probe writes.
const PROBE_WRITE_BYTES_MAX: u64 = 256 * MIB;
/// Longest the bandwidth probe writes.
const PROBE_WRITE_MS_MAX: u64 = 1000;
/// Most write+fdatasync rounds of the latency probe.
const PROBE_SYNCS_MAX: usize = 200;
/// Longest the latency probe runs.
const PROBE_SYNC_MS_MAX: u64 = 700;
/// Below this sequential bandwidth the doctor warns.
const WRITE_MB_S_WARN: f64 = 200.0;
/// Above this median write+fdatasync latency the doctor warns.
const FDATASYNC_MS_WARN: f64 = 10.0;

/// Runs both probes on `file` (an O_DIRECT file in the data directory). `free` bounds the
/// bytes written to a quarter of the free space.
pub(crate) fn probe_disk(file: &ProbeFile, free: u64) -> Vec<Finding> {
    vec![bandwidth(file, free), sync_latency(file)]
}

fn bandwidth(file: &ProbeFile, free: u64) -> Finding {
    let total =
        PROBE_WRITE_BYTES_MAX.min(free / 4) / PROBE_CHUNK_BYTES as u64 * PROBE_CHUNK_BYTES as u64;
    if total == 0 {
        return Finding::warning(
            "disk_write",
            "not measured: too little free space",
            "free space on the data directory's filesystem",
        );
    }
    // SAFETY: plain syscall on an owned fd.
    let rc = unsafe { libc::fallocate(file.fd.as_raw_fd(), 0, 0, total as libc::off_t) };
    if rc != 0 {
        return Finding::warning(
            "disk_write",
            format!(
                "not measured: fallocate failed ({})",
                std::io::Error::last_os_error()
            ),
            "see the fallocate check",
        );
    }
    let chunk = Aligned::new(PROBE_CHUNK_BYTES, 0xa5);
    let deadline = Duration::from_millis(PROBE_WRITE_MS_MAX);
    let start = Instant::now();
    let mut written = 0u64;
    while written < total && start.elapsed() < deadline {
        if let Err(e) = pwrite_all(file, chunk.bytes(), written) {
            return Finding::error(
                "disk_write",
                format!("a direct write failed after {written} bytes: {e}"),
                "check the disk (dmesg) and the filesystem",
            );
        }
        written += PROBE_CHUNK_BYTES as u64;
    }
    if let Err(e) = fdatasync(file) {
        return Finding::error(
            "disk_write",
            format!("fdatasync failed: {e}"),
            "check the disk (dmesg) and the filesystem",
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let mb_s = written as f64 / 1e6 / secs;
    let detail = format!(
        "{mb_s:.0} MB/s sequential direct writes of 1 MiB ({} MiB in {:.0} ms, then fdatasync)",
        written / MIB,
        secs * 1000.0
    );
    if mb_s < WRITE_MB_S_WARN {
        Finding::warning(
            "disk_write",
            format!("{detail}: below {WRITE_MB_S_WARN:.0} MB/s"),
            "use a local NVMe/SSD for the data directory; on cloud disks provision more \
             throughput; check the scheduler (none or mq-deadline, deploy/TUNING.md)",
        )
    } else {
        Finding::ok("disk_write", detail)
    }
}

fn sync_latency(file: &ProbeFile) -> Finding {
    let block = Aligned::new(4096, 0x3c);
    let deadline = Duration::from_millis(PROBE_SYNC_MS_MAX);
    let start = Instant::now();
    let mut samples = Vec::with_capacity(PROBE_SYNCS_MAX);
    while samples.len() < PROBE_SYNCS_MAX && start.elapsed() < deadline {
        let t = Instant::now();
        let pos = samples.len() as u64 * 4096;
        if let Err(e) = pwrite_all(file, block.bytes(), pos).and_then(|()| fdatasync(file)) {
            return Finding::error(
                "fdatasync",
                format!("write + fdatasync failed: {e}"),
                "check the disk (dmesg) and the filesystem",
            );
        }
        samples.push(t.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(samples[samples.len() / 2]);
    let p99 = ms(samples[(samples.len() * 99 / 100).min(samples.len() - 1)]);
    let detail = format!(
        "4 KiB write + fdatasync: median {median:.2} ms, p99 {p99:.2} ms over {} rounds",
        samples.len()
    );
    if median > FDATASYNC_MS_WARN {
        Finding::warning(
            "fdatasync",
            format!("{detail}: above {FDATASYNC_MS_WARN:.0} ms"),
            "every acks=all produce waits for one fdatasync (group commit shares it): use a disk \
             with power-loss-protected write cache (local NVMe), or on cloud disks a \
             provisioned-IOPS volume; topics that accept it can set flush.ms (deploy/TUNING.md)",
        )
    } else {
        Finding::ok("fdatasync", detail)
    }
}
