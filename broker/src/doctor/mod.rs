//! `sluice doctor` and the start-up checks of `sluice serve`: kernel, io_uring, resource
//! limits, the data directory's filesystem (O_DIRECT, fallocate, free space), CPUs versus
//! shards, and with `--probe-disk` a quick disk measure. Every finding is ok, warning or
//! error, and names the exact fix. `serve` runs the same checks (without the probe) before it
//! starts a shard: errors refuse to start, warnings are logged.
//!
//! The checks also pick the I/O driver: io_uring, or compio's polling (epoll) driver when
//! io_uring is unusable and the operator allowed the fallback.

mod checks;
mod probe;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{BrokerConfig, ServeArgs};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// Nothing to do.
    Ok,
    /// The broker runs, but worse than it could, or will run into trouble later.
    Warning,
    /// The broker refuses to start.
    Error,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    /// Short name of the check (`io_uring`, `nofile`, ...).
    pub(crate) check: &'static str,
    /// How bad it is.
    pub(crate) severity: Severity,
    /// What was found, with the numbers compared.
    pub(crate) detail: String,
    /// The exact fix; empty when ok.
    pub(crate) fix: String,
}

impl Finding {
    pub(crate) fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            severity: Severity::Ok,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    pub(crate) fn warning(
        check: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            severity: Severity::Warning,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    pub(crate) fn error(
        check: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            severity: Severity::Error,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// The I/O driver the shards' compio runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IoDriver {
    /// io_uring: the one the broker is built for.
    #[default]
    IoUring,
    /// compio's polling driver (epoll; file I/O on a thread pool): only with
    /// `--allow-epoll-fallback` when io_uring cannot be used.
    Polling,
}

/// Builds a shard's compio runtime on `driver`, explicitly: compio's fusion driver would
/// otherwise fall back to epoll silently when io_uring is unavailable.
pub(crate) fn build_runtime(driver: IoDriver) -> std::io::Result<compio::runtime::Runtime> {
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor.driver_type(match driver {
        IoDriver::IoUring => compio::driver::DriverType::IoUring,
        IoDriver::Polling => compio::driver::DriverType::Poll,
    });
    compio::runtime::RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()
}

/// What the checks look at.
#[derive(Debug, Clone)]
pub(crate) struct CheckInput<'a> {
    /// The data directory (it may not exist yet).
    pub(crate) data_dir: &'a Path,
    /// Configured shards.
    pub(crate) shards: usize,
    /// Whether epoll may replace an unusable io_uring.
    pub(crate) allow_epoll_fallback: bool,
    /// Run the disk probe (doctor only).
    pub(crate) probe_disk: bool,
    /// Whether the broker is configured as a cluster node (replication over QUIC).
    pub(crate) cluster: bool,
}

/// Every finding, and the I/O driver the broker would run on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// In check order.
    pub(crate) findings: Vec<Finding>,
    /// io_uring, or polling with the fallback.
    pub(crate) io_driver: IoDriver,
}

impl Report {
    /// The findings of `severity`.
    pub(crate) fn with(&self, severity: Severity) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.severity == severity)
    }
}

/// Runs every check.
pub(crate) fn run_checks(input: &CheckInput<'_>) -> Report {
    let mut findings = Vec::new();
    let (release, version) = checks::kernel_release();
    findings.push(checks::kernel(&release, version));
    let (finding, io_driver) = checks::io_uring_check(
        checks::io_uring_disabled_sysctl(),
        &checks::ring_setup(),
        input.allow_epoll_fallback,
    );
    findings.push(finding);
    findings.push(checks::memlock(
        checks::rlimit(libc::RLIMIT_MEMLOCK),
        input.shards,
        version,
        io_driver,
    ));
    let (segments, _partitions) = checks::count_segments(input.data_dir);
    findings.push(checks::nofile(
        checks::rlimit(libc::RLIMIT_NOFILE),
        input.shards,
        segments,
    ));
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    findings.push(checks::cpus(input.shards, available));
    if input.cluster {
        findings.push(checks::udp_recv_buffer(checks::rmem_max_sysctl()));
    }
    findings.extend(filesystem_checks(input));
    Report {
        findings,
        io_driver,
    }
}

fn filesystem_checks(input: &CheckInput<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let dir = match checks::existing_dir(input.data_dir) {
        Ok(dir) => dir,
        Err(f) => return vec![f],
    };
    if dir != input.data_dir {
        findings.push(Finding::ok(
            "data_dir",
            format!(
                "{} does not exist yet (serve creates it); checked {}",
                input.data_dir.display(),
                dir.display()
            ),
        ));
    }
    let fs = match checks::fs_type(&dir) {
        Ok(fs) => fs,
        Err(e) => {
            findings.push(Finding::error(
                "filesystem",
                format!("cannot statfs {}: {e}", dir.display()),
                "make the data directory readable by the broker's user",
            ));
            return findings;
        }
    };
    findings.push(checks::filesystem(&dir, &fs));
    let (direct, file) = checks::direct_io(&dir, &fs);
    findings.push(direct);
    let space = checks::disk_space(&dir);
    match &space {
        Ok((free, total)) => findings.push(checks::free_space(*free, *total)),
        Err(e) => findings.push(Finding::error(
            "disk_space",
            format!("cannot statvfs {}: {e}", dir.display()),
            "make the data directory readable by the broker's user",
        )),
    }
    if let Some(file) = file {
        findings.push(checks::fallocate(&file, &fs));
        if input.probe_disk {
            let free = space.as_ref().map_or(0, |(free, _)| *free);
            findings.extend(probe::probe_disk(&file, free));
        }
    }
    findings
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (capped by `fs.nr_open`), as servers
/// that hold many sockets do. Returns (before, after) when it changed.
pub(crate) fn raise_nofile_limit() -> Option<(u64, u64)> {
    let (soft, hard) = checks::rlimit(libc::RLIMIT_NOFILE);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let target = hard.min(nr_open);
    if target <= soft {
        return None;
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit with a valid struct; raising soft up to hard needs no privilege.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0).then_some((soft, target))
}

/// `sluice doctor` arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DoctorArgs {
    /// The broker's TOML config file (the data directory and shards are read from it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The data directory to check [default: ./sluice-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Shards the broker will run [default: one per core].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Also measure the disk: write bandwidth and fdatasync latency (under 2 s).
    #[arg(long)]
    pub probe_disk: bool,
    /// Report as JSON (for tools) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Report an unusable io_uring as a warning, as `serve --allow-epoll-fallback` runs.
    #[arg(long)]
    pub allow_epoll_fallback: bool,
}

/// Runs `sluice doctor`: exit code 0 without errors, 1 with any (or an unusable config).
pub fn doctor_main(args: DoctorArgs) -> ExitCode {
    let serve_args = ServeArgs {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        shards: args.shards,
        allow_epoll_fallback: args.allow_epoll_fallback,
        ..ServeArgs::default()
    };
    let config = match BrokerConfig::resolve(&serve_args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice doctor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = run_checks(&CheckInput {
        data_dir: &config.data_dir,
        shards: config.shards,
        allow_epoll_fallback: config.allow_epoll_fallback,
        probe_disk: args.probe_disk,
        cluster: config.cluster.is_some(),
    });
    let text = if args.json {
        let errors = report.with(Severity::Error).count();
        let warnings = report.with(Severity::Warning).count();
        let value = serde_json::json!({
            "data_dir": config.data_dir,
            "shards": config.shards,
            "io_driver": report.io_driver,
            "errors": errors,
            "warnings": warnings,
            "findings": report.findings,
        });
        format!("{value:#}\n")
    } else {
        render_table(&report, &config)
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    if report.with(Severity::Error).next().is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The findings as an aligned table; each non-ok finding is followed by its fix.
fn render_table(report: &Report, config: &BrokerConfig) -> String {
    let mut s = format!(
        "sluice doctor: data dir {}, {} shards\n\n",
        config.data_dir.display(),
        config.shards
    );
    let width = report
        .findings
        .iter()
        .map(|f| f.check.len())
        .max()
        .unwrap_or(0)
        .max("CHECK".len());
    s.push_str(&format!("{:width$}  {:7}  DETAIL\n", "CHECK", "STATUS"));
    for f in &report.findings {
        s.push_str(&format!(
            "{:width$}  {:7}  {}\n",
            f.check,
            f.severity.label(),
            f.detail
        ));
        if !f.fix.is_empty() {
            s.push_str(&format!("{:width$}  {:7}  fix: {}\n", "", "", f.fix));
        }
    }
    let errors = report.with(Severity::Error).count();
    let warnings = report.with(Severity::Warning).count();
    s.push_str(&format!(
        "\n{errors} error(s), {warnings} warning(s); I/O driver: {}\n",
        match report.io_driver {
            IoDriver::IoUring => "io_uring",
            IoDriver::Polling => "polling (epoll fallback)",
        }
    ));
    s
}

/// The start-up checks of `serve`: warnings are logged; errors come back as one line each
/// (check, what was found, the fix) for the caller to print before it exits.
pub(crate) fn startup_checks(config: &BrokerConfig) -> Result<IoDriver, Vec<String>> {
    let report = run_checks(&CheckInput {
        data_dir: &config.data_dir,
        shards: config.shards,
        allow_epoll_fallback: config.allow_epoll_fallback,
        probe_disk: false,
        cluster: config.cluster.is_some(),
    });
    let errors: Vec<String> = report
        .with(Severity::Error)
        .map(|f| {
            format!(
                "start-up check {} failed: {}. Fix: {}",
                f.check, f.detail, f.fix
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    for f in report.with(Severity::Warning) {
        tracing::warn!(check = f.check, fix = %f.fix, "start-up check: {}", f.detail);
    }
    if report.io_driver == IoDriver::Polling {
        tracing::warn!(
            "io_uring is unavailable: RUNNING ON THE EPOLL FALLBACK (compio polling driver, file \
             I/O on a thread pool) because --allow-epoll-fallback is set; expect lower throughput"
        );
    }
    Ok(report.io_driver)
}
