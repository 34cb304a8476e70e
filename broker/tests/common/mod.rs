//! Test harness: runs the real `sluice` binary as a child process.
//!
//! Contract with `sluice serve`: logs go to stderr; once every shard listens, it prints one
//! line `listening on HOST:PORT` (the shared address) to stdout, after `metrics on HOST:PORT`
//! when the metrics endpoint is on (tests put it on an ephemeral port unless they pass
//! `--metrics-listen` themselves).

#![allow(dead_code, unreachable_pub)]

pub mod cli;
pub mod cluster;
pub mod netns;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker child process, killed on drop.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    /// The metrics endpoint's address, if it is on.
    pub metrics_addr: Option<SocketAddr>,
    _stdout: BufReader<ChildStdout>,
}

/// The `sluice` binary built for these tests.
pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

impl Broker {
    /// Starts `sluice serve` on an ephemeral port with `shards` shards over `data_dir`.
    pub fn start(data_dir: &Path, shards: usize) -> Broker {
        Self::start_with(data_dir, shards, &[])
    }

    /// Like [`Broker::start`], with extra `serve` arguments.
    pub fn start_with(data_dir: &Path, shards: usize, extra: &[&str]) -> Broker {
        // Never the default port: tests run in parallel.
        let metrics: &[&str] = if extra.contains(&"--metrics-listen") {
            &[]
        } else {
            &["--metrics-listen", "127.0.0.1:0"]
        };
        let child = Command::new(sluice_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--shards")
            .arg(shards.to_string())
            .args(metrics)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice serve");
        Self::await_listening(child, data_dir, shards, "broker", Duration::from_secs(60))
    }

    /// Reads a just-spawned `sluice serve`'s stdout (piped) until its `listening on` line,
    /// noting its `metrics on` line, within `timeout`; `what` names it in failures.
    pub fn await_listening(
        mut child: Child,
        data_dir: &Path,
        shards: usize,
        what: &str,
        timeout: Duration,
    ) -> Broker {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let deadline = Instant::now() + timeout;
        let mut metrics_addr = None;
        let addr = loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).expect("read broker stdout");
            assert!(
                n > 0,
                "{what} exited before listening: {:?}",
                child.try_wait()
            );
            if let Some(rest) = line.trim().strip_prefix("metrics on ") {
                metrics_addr = Some(rest.parse().expect("metrics address"));
            }
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                break rest.parse().expect("listening address");
            }
            assert!(Instant::now() < deadline, "{what} did not start");
        };
        Broker {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            shards,
            metrics_addr,
            _stdout: stdout,
        }
    }

    /// `127.0.0.1:PORT` for `--brokers`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait broker") {
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill9();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}
