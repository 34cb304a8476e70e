//! Operating the broker: `sluice doctor` and the same checks at `serve` start-up (on this
//! machine, on tmpfs/ramfs data directories the test mounts, under a low RLIMIT_NOFILE, with
//! io_uring blocked by a seccomp filter like Docker's, and the epoll fallback really serving),
//! the log lines of notable events (text and JSON, `RUST_LOG` over `--log-level`), and the
//! files of `deploy/` (the systemd unit passes `systemd-analyze verify`, the Kubernetes YAML
//! parses, its embedded config is accepted by the broker).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sluice_bin;
use common::wire::{Conn, batch, values};
use sluice_proto::protocol::*;

/// Runs `sluice doctor --json` with `args`, after `setup` in the child.
fn doctor_json(
    args: &[&str],
    setup: Option<fn() -> std::io::Result<()>>,
) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("doctor").arg("--json").args(args);
    if let Some(setup) = setup {
        // SAFETY: the hooks only make async-signal-safe syscalls (setrlimit, prctl).
        unsafe {
            cmd.pre_exec(setup);
        }
    }
    let out = cmd.output().expect("run sluice doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), report)
}

/// The finding of `check` in a JSON report.
fn finding<'a>(report: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding in {report:#}"))
}

/// A broker started with its stderr captured.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Served {
    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    fn sighup(&self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP);
        }
    }

    /// Waits up to 10 s for a stderr line containing `text` and returns it.
    fn wait_for_line(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.stderr_lines().into_iter().find(|l| l.contains(text)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no line with {text:?} in {:#?}",
                self.stderr_lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; returns whether it exited 0 within 30 s, and all of stderr.
    fn terminate(mut self) -> (bool, Vec<String>) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let ok = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (ok, self.stderr_lines())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How a `serve` that did not start ended: exit code and stderr.
#[derive(Debug)]
struct Refused {
    code: Option<i32>,
    stderr: String,
}

/// Starts `sluice serve` on an ephemeral port over `data_dir`; `setup` runs in the child
/// before exec; `rust_log` sets `RUST_LOG` (None: unset).
// The child is waited for on every path: here when it exits early, else by `Served`'s drop.
#[allow(clippy::zombie_processes)]
fn serve(
    data_dir: &Path,
    extra: &[&str],
    setup: Option<fn() -> std::io::Result<()>>,
    rust_log: Option<&str>,
) -> Result<Served, Refused> {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(level) = rust_log {
        cmd.env("RUST_LOG", level);
    }
    if let Some(setup) = setup {
        // SAFETY: the hooks only make async-signal-safe syscalls (setrlimit, prctl).
        unsafe {
            cmd.pre_exec(setup);
        }
    }
    let mut child = cmd.spawn().expect("spawn sluice serve");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.stderr.take().expect("stderr");
    let sink = stderr.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().expect("lock").push(line);
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).expect("read stdout") == 0 {
            let status = child.wait().expect("wait");
            let _ = reader.join();
            return Err(Refused {
                code: status.code(),
                stderr: stderr.lock().expect("lock").join("\n"),
            });
        }
        if let Some(rest) = line.trim().strip_prefix("listening on ") {
            let addr = rest.parse().expect("address");
            return Ok(Served {
                child,
                addr,
                stderr,
                reader: Some(reader),
                _stdout: stdout,
            });
        }
    }
}

fn nofile_64() -> std::io::Result<()> {
    set_nofile(64)
}

fn nofile_1024() -> std::io::Result<()> {
    set_nofile(1024)
}

fn set_nofile(n: libc::rlim_t) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit with a valid struct, in the child before exec.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What Docker's default seccomp profile does to io_uring: `io_uring_setup` fails with EPERM.
/// A filter on this process only (no global sysctl is touched). The syscall number of
/// io_uring_setup is 425 on every architecture, so the filter does not check the arch.
fn block_io_uring() -> std::io::Result<()> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // A = seccomp_data.nr
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid filter program that outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A filesystem mounted on a temporary directory for the test, unmounted on drop.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    /// `mount -t KIND`; `None` (with the reason printed) where mounting is not permitted.
    fn new(kind: &str) -> Option<Mounted> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", kind, "-o", "size=64m", kind])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mounted { dir }),
            Ok(o) => {
                println!(
                    "SKIPPED {kind} part: mount -t {kind} not permitted here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("SKIPPED {kind} part: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn doctor_reports_this_machine_healthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf8");
    let started = Instant::now();
    let (code, report) = doctor_json(
        &["--data-dir", data_arg, "--shards", "1", "--probe-disk"],
        None,
    );
    let took = started.elapsed();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["io_driver"], "io_uring");
    assert_eq!(finding(&report, "io_uring")["severity"], "ok", "{report:#}");
    for check in [
        "kernel",
        "memlock",
        "nofile",
        "cpus",
        "filesystem",
        "o_direct",
        "disk_space",
        "fallocate",
        "disk_write",
        "fdatasync",
    ] {
        let f = finding(&report, check);
        assert!(f["detail"].as_str().is_some_and(|d| !d.is_empty()), "{f}");
    }
    let bandwidth = finding(&report, "disk_write")["detail"]
        .as_str()
        .expect("detail")
        .to_string();
    let latency = finding(&report, "fdatasync")["detail"]
        .as_str()
        .expect("detail")
        .to_string();
    println!("probe: {bandwidth}; {latency}; doctor took {took:?}");
    assert!(bandwidth.contains("MB/s"), "{bandwidth}");
    assert!(latency.contains("median"), "{latency}");
    assert!(
        took < Duration::from_secs(10),
        "doctor --probe-disk took {took:?}"
    );
    // The doctor leaves nothing behind, and does not create the data directory.
    assert!(!data.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The table: a header, one row per check, the summary.
    let out = Command::new(sluice_bin())
        .args(["doctor", "--data-dir", data_arg, "--shards", "1"])
        .output()
        .expect("doctor");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CHECK") && text.contains("STATUS"), "{text}");
    assert!(
        text.contains("io_uring") && text.contains("0 error(s)"),
        "{text}"
    );
    assert!(text.contains("I/O driver: io_uring"), "{text}");

    // More shards than CPUs: a warning naming the fix, still exit 0.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let many = (cpus * 2).to_string();
    let (code, report) = doctor_json(&["--data-dir", data_arg, "--shards", &many], None);
    assert_eq!(code, 0);
    let f = finding(&report, "cpus");
    assert_eq!(f["severity"], "warning", "{f}");
    assert!(
        f["fix"]
            .as_str()
            .expect("fix")
            .contains(&format!("--shards {cpus}"))
    );
}

#[test]
fn memory_filesystems_are_refused_with_the_fix() {
    if let Some(tmpfs) = Mounted::new("tmpfs") {
        let data = tmpfs.path().join("data");
        let data_arg = data.to_str().expect("utf8");
        let (code, report) = doctor_json(&["--data-dir", data_arg, "--shards", "1"], None);
        assert_eq!(code, 1, "{report:#}");
        let f = finding(&report, "filesystem");
        assert_eq!(f["severity"], "error", "{f}");
        assert!(
            f["detail"].as_str().expect("detail").contains("tmpfs"),
            "{f}"
        );
        assert!(
            f["fix"].as_str().expect("fix").contains("ext4 or xfs"),
            "{f}"
        );

        let refused = serve(&data, &["--shards", "1"], None, None)
            .err()
            .expect("serve must refuse a tmpfs data directory");
        assert_eq!(refused.code, Some(2), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("start-up check filesystem failed")
                && refused.stderr.contains("tmpfs")
                && refused
                    .stderr
                    .contains("Fix: put the data directory on a local ext4 or xfs"),
            "{}",
            refused.stderr
        );
    }
    // ramfs has no O_DIRECT at all (tmpfs emulates it since Linux 6.6).
    if let Some(ramfs) = Mounted::new("ramfs") {
        let data_arg = ramfs.path().to_str().expect("utf8");
        let (code, report) = doctor_json(&["--data-dir", data_arg, "--shards", "1"], None);
        assert_eq!(code, 1, "{report:#}");
        let f = finding(&report, "o_direct");
        assert_eq!(f["severity"], "error", "{f}");
        assert!(
            f["detail"].as_str().expect("detail").contains("EINVAL"),
            "{f}"
        );
        assert!(
            f["fix"].as_str().expect("fix").contains("ext4 or xfs"),
            "{f}"
        );
        // The probe file is gone even though O_DIRECT failed.
        assert_eq!(std::fs::read_dir(ramfs.path()).expect("ls").count(), 0);
    }
}

/// A loop-mounted ext4 image of `mib` MiB, unmounted on drop; `None` (reason printed) where
/// losetup/mount are not permitted.
struct LoopExt4 {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl LoopExt4 {
    fn new(mib: u64) -> Option<LoopExt4> {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image");
        let run = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    o.status
                        .success()
                        .then_some(())
                        .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
                })
        };
        let (img, at) = (image.to_str().expect("utf8"), mnt.to_str().expect("utf8"));
        if let Err(why) =
            run("mkfs.ext4", &["-q", img]).and_then(|()| run("mount", &["-o", "loop", img, at]))
        {
            println!("SKIPPED full-disk part: cannot loop-mount ext4: {why}");
            return None;
        }
        Some(LoopExt4 { dir, mnt })
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if !Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = &self.dir;
    }
}

#[test]
fn a_full_disk_is_a_warning_not_an_error() {
    let Some(fs) = LoopExt4::new(32) else { return };
    let data = fs.mnt.join("data");
    std::fs::create_dir(&data).expect("mkdir");
    // Fill the filesystem to the last block.
    let mut filler = std::fs::File::create(fs.mnt.join("filler")).expect("filler");
    let chunk = vec![0xffu8; 1 << 20];
    loop {
        use std::io::Write;
        if filler.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = filler.sync_all();
    let data_arg = data.to_str().expect("utf8");
    let (code, report) = doctor_json(&["--data-dir", data_arg, "--shards", "1"], None);
    assert_eq!(code, 0, "a full disk is not an error: {report:#}");
    assert_eq!(
        finding(&report, "filesystem")["detail"]
            .as_str()
            .map(|d| d.contains("ext4")),
        Some(true)
    );
    assert_eq!(
        finding(&report, "disk_space")["severity"],
        "warning",
        "{report:#}"
    );
    let full = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == "o_direct" || f["check"] == "fallocate")
        .filter(|f| f["severity"] == "warning")
        .map(|f| f["fix"].as_str().unwrap_or_default().to_string());
    assert!(
        report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| {
                (f["check"] == "o_direct" || f["check"] == "fallocate")
                    && f["severity"] == "warning"
                    && f["fix"].as_str().is_some_and(|x| x.contains("DISK_FULL"))
            }),
        "{full:?} {report:#}"
    );
    // Not checked here: `serve` on this full filesystem hung at start-up (in the consumer
    // offsets topic's creation, after the start-up checks passed; see the helper's report).
}

#[test]
fn low_nofile_limit_is_an_error_or_a_warning_with_the_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf8");

    let (code, report) = doctor_json(&["--data-dir", data_arg, "--shards", "1"], Some(nofile_64));
    assert_eq!(code, 1, "{report:#}");
    let f = finding(&report, "nofile");
    assert_eq!(f["severity"], "error", "{f}");
    let detail = f["detail"].as_str().expect("detail");
    assert!(
        detail.contains("soft 64, hard 64") && detail.contains("72 descriptors needed"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .expect("fix")
            .contains("LimitNOFILE=1048576"),
        "{f}"
    );

    let refused = serve(&data, &["--shards", "1"], Some(nofile_64), None)
        .err()
        .expect("serve must refuse 64 descriptors");
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("start-up check nofile failed")
            && refused.stderr.contains("LimitNOFILE=1048576"),
        "{}",
        refused.stderr
    );

    // 1024 is enough to start 2 shards but not for 2 × 4096 connections: a warning, and
    // serve starts and logs it.
    let (code, report) = doctor_json(
        &["--data-dir", data_arg, "--shards", "2"],
        Some(nofile_1024),
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(finding(&report, "nofile")["severity"], "warning");
    let broker = serve(&data, &["--shards", "2"], Some(nofile_1024), None).expect("serve starts");
    let (clean, stderr) = broker.terminate();
    assert!(clean);
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("WARN") && l.contains("nofile") && l.contains("8272")),
        "{stderr:#?}"
    );
}

#[test]
fn io_uring_blocked_by_seccomp_refuses_or_runs_on_the_epoll_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf8");

    let (code, report) = doctor_json(
        &["--data-dir", data_arg, "--shards", "1"],
        Some(block_io_uring),
    );
    assert_eq!(code, 1, "{report:#}");
    let f = finding(&report, "io_uring");
    assert_eq!(f["severity"], "error", "{f}");
    assert!(
        f["detail"].as_str().expect("detail").contains("EPERM"),
        "{f}"
    );
    let fix = f["fix"].as_str().expect("fix");
    assert!(fix.contains("--security-opt seccomp=unconfined"), "{fix}");
    assert!(fix.contains("kernel.io_uring_disabled=0"), "{fix}");

    let (code, report) = doctor_json(
        &[
            "--data-dir",
            data_arg,
            "--shards",
            "1",
            "--allow-epoll-fallback",
        ],
        Some(block_io_uring),
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["io_driver"], "polling");
    assert_eq!(finding(&report, "io_uring")["severity"], "warning");

    let refused = serve(&data, &["--shards", "2"], Some(block_io_uring), None)
        .err()
        .expect("serve must refuse without io_uring");
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("start-up check io_uring failed")
            && refused.stderr.contains("EPERM")
            && refused.stderr.contains("--allow-epoll-fallback"),
        "{}",
        refused.stderr
    );

    // With the fallback the broker really serves on epoll: acks=all produce, fetch, clean stop.
    let broker = serve(
        &data,
        &["--shards", "2", "--allow-epoll-fallback"],
        Some(block_io_uring),
        None,
    )
    .expect("serve starts on the fallback");
    let mut c = Conn::connect(broker.addr);
    let created = c.create_topic("fallback", 2, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let mut sent = Vec::new();
    for i in 0..20u32 {
        let value = format!("epoll-{i}").into_bytes();
        let r = c.produce("fallback", i % 2, ACKS_ALL, batch(&[&value], 1));
        assert_eq!(r.error, ErrorCode::NONE);
        sent.push(value);
    }
    let (clean, stderr) = broker.terminate();
    assert!(clean, "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("WARN") && l.contains("EPOLL FALLBACK")),
        "{stderr:#?}"
    );
    assert!(
        stderr.iter().any(|l| l.contains("io_driver=Polling")),
        "{stderr:#?}"
    );

    // Restarted on io_uring, the broker reads back what the fallback wrote.
    let broker = serve(&data, &["--shards", "2"], None, None).expect("serve on io_uring");
    let mut c = Conn::connect(broker.addr);
    let mut got = Vec::new();
    for p in 0..2 {
        let r = c.fetch("fallback", p, 0, 0, 0);
        assert_eq!(r.error, ErrorCode::NONE);
        got.extend(values(r.records).into_iter().map(|(_, v)| v));
    }
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    let (clean, stderr) = broker.terminate();
    assert!(clean);
    assert!(
        stderr.iter().any(|l| l.contains("io_driver=IoUring")),
        "{stderr:#?}"
    );
}

#[test]
fn notable_events_are_logged_once_and_the_hot_path_is_quiet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let broker = serve(
        &data,
        &[
            "--shards",
            "1",
            "--retention-check-ms",
            "100",
            "--log-format",
            "json",
        ],
        None,
        None,
    )
    .expect("serve");
    let mut c = Conn::connect(broker.addr);
    let created = c.create_topic(
        "ops",
        1,
        &[("segment.bytes", "16384"), ("retention.ms", "1")],
    );
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let created = c.create_topic("quiet", 1, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    std::thread::sleep(Duration::from_millis(200));
    let before = broker.stderr_lines().len();
    // 300 small produce requests and fetches: no log line at info.
    for i in 0..300u32 {
        let r = c.produce(
            "quiet",
            0,
            ACKS_ALL,
            batch(&[format!("q{i}").as_bytes()], 1),
        );
        assert_eq!(r.error, ErrorCode::NONE);
    }
    let r = c.fetch("quiet", 0, 0, 0, 0);
    assert_eq!(r.error, ErrorCode::NONE);
    std::thread::sleep(Duration::from_millis(200));
    let during = broker.stderr_lines()[before..].to_vec();
    assert!(
        during.is_empty(),
        "the hot path logged at info: {during:#?}"
    );

    // Tiny segments and 1 ms retention: rolls, then deletions on the next pass.
    let value = vec![b'r'; 3000];
    for _ in 0..30 {
        let r = c.produce("ops", 0, ACKS_ALL, batch(&[&value], 1));
        assert_eq!(r.error, ErrorCode::NONE);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.list_offset("ops", 0, EARLIEST_TIMESTAMP).offset == 0 {
        assert!(Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (clean, lines) = broker.terminate();
    assert!(clean);
    // Every line is one JSON object with a level and a message.
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages = |text: &str| {
        events
            .iter()
            .filter(|e| {
                e["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
            })
            .collect::<Vec<_>>()
    };
    let created = messages("topic created");
    assert_eq!(created.len(), 2, "{lines:#?}");
    let rolls = messages("rolled to a new segment");
    let deletions = messages("retention deleted segment");
    assert!(!rolls.is_empty() && !deletions.is_empty(), "{lines:#?}");
    for e in rolls.iter().chain(&deletions) {
        assert_eq!(e["level"], "INFO");
        assert!(
            e["fields"]["dir"]
                .as_str()
                .is_some_and(|d| d.contains("ops")),
            "names the partition: {e}"
        );
    }
    // 30 batches of 3000 bytes into 16 KiB segments: at most one roll per 5 batches.
    assert!(rolls.len() <= 7, "{} rolls", rolls.len());
    assert!(
        !messages("broker started").is_empty() && !messages("broker stopped cleanly").is_empty()
    );
}

#[test]
fn rust_log_wins_over_log_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // --log-level warn: no info lines.
    let broker =
        serve(&data, &["--shards", "1", "--log-level", "warn"], None, None).expect("serve");
    let (_, lines) = broker.terminate();
    assert!(
        !lines.iter().any(|l| l.contains("broker started")),
        "{lines:#?}"
    );
    // RUST_LOG=info over --log-level warn.
    let broker = serve(
        &data,
        &["--shards", "1", "--log-level", "warn"],
        None,
        Some("info"),
    )
    .expect("serve");
    let (_, lines) = broker.terminate();
    assert!(
        lines.iter().any(|l| l.contains("broker started")),
        "{lines:#?}"
    );
    // A bad level is a config error.
    let refused = serve(
        &data,
        &["--shards", "1", "--log-level", "info,=["],
        None,
        None,
    )
    .err()
    .expect("bad level refused");
    assert_eq!(refused.code, Some(2));
    assert!(
        refused.stderr.contains("invalid log_level"),
        "{}",
        refused.stderr
    );
}

#[test]
fn sighup_changes_the_log_level_unless_rust_log_is_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "log_level = \"warn\"\n").expect("write");
    let config_arg = config.to_str().expect("utf8");
    let broker = serve(
        &data,
        &["--shards", "1", "--config", config_arg],
        None,
        None,
    )
    .expect("serve");
    let mut c = Conn::connect(broker.addr);
    assert_eq!(c.create_topic("before", 1, &[]).error, ErrorCode::NONE);
    std::fs::write(&config, "log_level = \"info\"\n").expect("write");
    broker.sighup();
    let changed = broker.wait_for_line("log_level warn -> info");
    assert!(changed.contains("SIGHUP"), "{changed}");
    assert_eq!(c.create_topic("after", 1, &[]).error, ErrorCode::NONE);
    broker.wait_for_line("topic=after");
    let (clean, lines) = broker.terminate();
    assert!(clean);
    assert!(
        !lines.iter().any(|l| l.contains("topic=before")),
        "{lines:#?}"
    );

    // RUST_LOG governs: SIGHUP says so and changes nothing.
    std::fs::write(&config, "log_level = \"warn\"\n").expect("write");
    let broker = serve(
        &data,
        &["--shards", "1", "--config", config_arg],
        None,
        Some("info"),
    )
    .expect("serve");
    std::fs::write(&config, "log_level = \"error\"\n").expect("write");
    broker.sighup();
    broker.wait_for_line("RUST_LOG is set and wins");
    let mut c = Conn::connect(broker.addr);
    assert_eq!(c.create_topic("still-info", 1, &[]).error, ErrorCode::NONE);
    broker.wait_for_line("topic=still-info");
    assert!(broker.terminate().0);
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/sluice.service")).expect("unit");
    for key in [
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CPUAffinity",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    let has_tool = Command::new("systemd-analyze").arg("--version").output();
    if !has_tool.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    // verify insists that ExecStart's binary exists: point it at the one under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sluice", sluice_bin())).expect("write");
    let out: Output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // systemd-analyze exits 0 even for unknown keys and unparsable values ("..., ignoring"):
    // any message about the unit counts as a failure.
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("sluice.service"), "{stderr}");
}

#[test]
fn kubernetes_statefulset_parses_and_its_config_is_accepted() {
    use serde::Deserialize;
    let text =
        std::fs::read_to_string(deploy_dir().join("k8s/statefulset.yaml")).expect("statefulset");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("YAML document"))
        .filter(|d| !d.is_null())
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let service = kind("Service");
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless"
    );
    let set = kind("StatefulSet");
    assert_eq!(set["spec"]["replicas"].as_u64(), Some(3));
    assert_eq!(set["spec"]["serviceName"].as_str(), Some("sluice"));
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("Unconfined")
    );
    assert!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            .is_string()
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["volumeMounts"][0]["mountPath"].as_str(),
        Some("/var/lib/sluice")
    );

    // The ConfigMap's sluice.toml, as the pod's command fills it in, is accepted by the
    // broker's own loader (which rejects unknown keys).
    let template = kind("ConfigMap")["data"]["sluice.toml"]
        .as_str()
        .expect("sluice.toml");
    let filled = template
        .replace("@NODE_ID@", "1")
        .replace("@HOST@", "sluice-1.sluice.default.svc.cluster.local");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, filled).expect("write");
    let data = dir.path().join("data");
    let out = Command::new(sluice_bin())
        .args(["doctor", "--json", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("doctor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("config"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["shards"], 4, "the config's shards were read");
}

/// A cluster node's doctor looks at `net.core.rmem_max` (the cap on the replication
/// sockets' receive buffers); a broker running alone has no replication socket to size.
#[test]
fn a_cluster_node_checks_the_udp_receive_buffer_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\ncluster = \"127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194\"\n\
             node_id = 0\ncert_dir = \"{}\"\n",
            data.display(),
            dir.path().join("certs").display()
        ),
    )
    .expect("write config");
    let (code, report) = doctor_json(&["--config", config.to_str().expect("utf8")], None);
    assert_eq!(code, 0, "{report:#}");
    let rmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("read rmem_max")
        .trim()
        .parse()
        .expect("a number");
    let f = finding(&report, "udp_recv_buffer");
    let wanted = sluice_replication::transport::PEER_SOCKET_RECV_BUFFER_BYTES as u64;
    let expected = if rmem_max >= wanted { "ok" } else { "warning" };
    assert_eq!(f["severity"], expected, "rmem_max {rmem_max}: {f}");
    assert!(
        f["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&rmem_max.to_string())),
        "{f}"
    );

    let alone = tempfile::tempdir().expect("tempdir");
    let (_, report) = doctor_json(&["--data-dir", alone.path().to_str().expect("utf8")], None);
    assert!(
        report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["check"] != "udp_recv_buffer"),
        "{report:#}"
    );
}
