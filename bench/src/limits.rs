//! `sluice-bench limits`: this machine's ceilings, measured with the standard tools so the
//! broker's figures can be read as fractions of them:
//!
//! - fio, sequential 1 MiB O_DIRECT writes (io_uring, queue depth 8) on the data directory's
//!   filesystem: the disk's direct sequential bandwidth;
//! - fio, 4 KiB writes each followed by fdatasync (queue depth 1): fdatasync latency p50/p99,
//!   what a durable acknowledgement waits for at least;
//! - iperf3 over loopback: TCP bandwidth through the kernel on this machine.
//!
//! Nothing is installed: a missing tool is reported with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::units::parse_bytes;

/// How the tools are installed on Debian and Ubuntu.
const INSTALL_HINT: &str = "apt-get install fio iperf3";
/// Seconds of iperf3 traffic.
const IPERF_SECONDS: u32 = 3;
/// Longest the fdatasync probe runs.
const FSYNC_RUNTIME_S: u32 = 10;

/// Arguments of `limits`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Args {
    /// Directory on the disk to measure (the broker's data dir); fio's file is created and
    /// removed there.
    #[arg(long, default_value = ".")]
    pub(crate) data_dir: PathBuf,
    /// Size of the sequential-write file.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub(crate) fio_size: u64,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The measured limits; a field is null when its tool is missing or failed.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Limits {
    /// fio sequential 1 MiB O_DIRECT write bandwidth, MB/s (10^6 bytes).
    pub(crate) disk_seq_write_mb_per_s: Option<f64>,
    /// fio 4 KiB write + fdatasync: fdatasync latency percentiles, µs.
    pub(crate) fdatasync_p50_us: Option<f64>,
    /// See `fdatasync_p50_us`.
    pub(crate) fdatasync_p99_us: Option<f64>,
    /// See `fdatasync_p50_us` (null in limits files written before it was measured).
    #[serde(default)]
    pub(crate) fdatasync_p999_us: Option<f64>,
    /// iperf3 loopback TCP bandwidth, MB/s.
    pub(crate) loopback_mb_per_s: Option<f64>,
    /// Tools not found on PATH.
    pub(crate) missing: Vec<String>,
    /// Failures of tools that were found.
    pub(crate) errors: Vec<String>,
    /// The directory measured.
    pub(crate) data_dir: String,
}

/// Whether `tool` is an executable on PATH.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(tool);
            p.is_file()
                && std::fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

/// Runs `limits` from the command line.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let limits = measure(&args.data_dir, args.fio_size);
    crate::report::print_result(args.json, &limits, print_text)?;
    if limits.disk_seq_write_mb_per_s.is_none() && limits.loopback_mb_per_s.is_none() {
        return Err("no limit could be measured (see above)".into());
    }
    Ok(())
}

fn print_text(l: &Limits) {
    let f =
        |v: Option<f64>, unit: &str| v.map_or("not measured".into(), |v| format!("{v:.0} {unit}"));
    println!("limits of this machine (data dir {})", l.data_dir);
    println!(
        "  disk sequential 1 MiB O_DIRECT write (fio): {}",
        f(l.disk_seq_write_mb_per_s, "MB/s")
    );
    println!(
        "  4 KiB write + fdatasync latency (fio):      p50 {}, p99 {}, p99.9 {}",
        f(l.fdatasync_p50_us, "µs"),
        f(l.fdatasync_p99_us, "µs"),
        f(l.fdatasync_p999_us, "µs")
    );
    println!(
        "  loopback TCP (iperf3):                      {}",
        f(l.loopback_mb_per_s, "MB/s")
    );
    for tool in &l.missing {
        println!("  MISSING: {tool} is not on PATH; install it with: {INSTALL_HINT}");
    }
    for e in &l.errors {
        println!("  ERROR: {e}");
    }
}

/// Measures every limit whose tool is present (never fails: gaps are listed in the result).
pub(crate) fn measure(data_dir: &Path, fio_size: u64) -> Limits {
    let mut limits = Limits {
        disk_seq_write_mb_per_s: None,
        fdatasync_p50_us: None,
        fdatasync_p99_us: None,
        fdatasync_p999_us: None,
        loopback_mb_per_s: None,
        missing: Vec::new(),
        errors: Vec::new(),
        data_dir: data_dir.display().to_string(),
    };
    if on_path("fio") {
        match fio_seq_write(data_dir, fio_size) {
            Ok(mb) => limits.disk_seq_write_mb_per_s = Some(mb),
            Err(e) => limits.errors.push(e),
        }
        match fio_fdatasync(data_dir) {
            Ok([p50, p99, p999]) => {
                limits.fdatasync_p50_us = Some(p50);
                limits.fdatasync_p99_us = Some(p99);
                limits.fdatasync_p999_us = Some(p999);
            }
            Err(e) => limits.errors.push(e),
        }
    } else {
        limits.missing.push("fio".into());
        eprintln!("sluice-bench: fio is missing: disk limits not measured ({INSTALL_HINT})");
    }
    if on_path("iperf3") {
        match iperf_loopback() {
            Ok(mb) => limits.loopback_mb_per_s = Some(mb),
            Err(e) => limits.errors.push(e),
        }
    } else {
        limits.missing.push("iperf3".into());
        eprintln!("sluice-bench: iperf3 is missing: loopback limit not measured ({INSTALL_HINT})");
    }
    limits
}

/// Runs fio with `extra` on a scratch file in `dir` and returns its first job's JSON.
fn fio(dir: &Path, name: &str, extra: &[String]) -> Result<Value, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join(format!("sluice-limits-{}.fio", std::process::id()));
    let output = Command::new("fio")
        .arg(format!("--name={name}"))
        .arg(format!("--filename={}", file.display()))
        .arg("--output-format=json")
        .args(extra)
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&file);
    let output = output.map_err(|e| format!("fio: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "fio {name} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // fio may print notes before the JSON object.
    let json = &text[text.find('{').ok_or("fio printed no JSON")?..];
    let v: Value = serde_json::from_str(json).map_err(|e| format!("fio JSON: {e}"))?;
    v.get("jobs")
        .and_then(|j| j.get(0))
        .cloned()
        .ok_or_else(|| "fio JSON has no job".to_string())
}

fn fio_seq_write(dir: &Path, size: u64) -> Result<f64, String> {
    let job = fio(
        dir,
        "seq-write",
        &[
            "--rw=write".into(),
            "--bs=1M".into(),
            "--direct=1".into(),
            "--ioengine=io_uring".into(),
            "--iodepth=8".into(),
            format!("--size={size}"),
            "--fallocate=native".into(),
        ],
    )?;
    job.pointer("/write/bw_bytes")
        .and_then(Value::as_f64)
        .map(|b| b / 1e6)
        .ok_or_else(|| "fio: no write bandwidth in its output".into())
}

/// fdatasync latency p50, p99 and p99.9 in µs.
fn fio_fdatasync(dir: &Path) -> Result<[f64; 3], String> {
    let job = fio(
        dir,
        "fdatasync",
        &[
            "--rw=write".into(),
            "--bs=4k".into(),
            "--ioengine=sync".into(),
            "--fdatasync=1".into(),
            "--size=8M".into(),
            format!("--runtime={FSYNC_RUNTIME_S}"),
        ],
    )?;
    let pct = |p: &str| {
        job.pointer(&format!("/sync/lat_ns/percentile/{p}"))
            .and_then(Value::as_f64)
            .map(|ns| ns / 1000.0)
    };
    match (pct("50.000000"), pct("99.000000"), pct("99.900000")) {
        (Some(p50), Some(p99), Some(p999)) => Ok([p50, p99, p999]),
        _ => Err("fio: no fdatasync latency percentiles in its output".into()),
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn iperf_loopback() -> Result<f64, String> {
    let port = free_port()?.to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 server: {e}"))?;
    let mut result = Err("iperf3 client did not run".to_string());
    // The server needs a moment to listen; retry the client a few times.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let output = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port, "-J", "-t"])
            .arg(IPERF_SECONDS.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("iperf3 client: {e}"))?;
        let v: Value = match serde_json::from_slice(&output.stdout) {
            Ok(v) => v,
            Err(e) => {
                result = Err(format!("iperf3 JSON: {e}"));
                continue;
            }
        };
        if let Some(bps) = v
            .pointer("/end/sum_received/bits_per_second")
            .and_then(Value::as_f64)
        {
            result = Ok(bps / 8e6);
            break;
        }
        result = Err(format!(
            "iperf3: {}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("no result")
        ));
    }
    let _ = server.kill();
    let _ = server.wait();
    result
}
