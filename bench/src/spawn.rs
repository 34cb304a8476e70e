//! `--spawn`: a `sluice serve` started for one benchmark run, in a temporary data directory,
//! stopped and cleaned up when the run ends (also on an error or Ctrl-C: [`Drop`]).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the broker may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd broker may take to drain before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the broker's stderr kept to explain a failed start.
const LOG_TAIL_LINES_MAX: usize = 40;

/// Where the `sluice` binary is: `explicit`, else next to this executable.
pub(crate) fn sluice_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let sibling = exe.with_file_name("sluice");
    if sibling.is_file() {
        Ok(sibling)
    } else {
        Err(format!(
            "no `sluice` binary next to {} (build it: cargo build --release -p sluice-broker), \
             or pass --sluice-bin",
            exe.display()
        ))
    }
}

/// A running `sluice serve` owned by this process.
pub(crate) struct BrokerProcess {
    child: Child,
    /// The shared address from its `listening on` line.
    pub(crate) addr: String,
    dir: PathBuf,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

impl BrokerProcess {
    /// Starts `bin serve` with a fresh data directory under `parent` (default: the system's
    /// temporary directory) on an ephemeral loopback port, and waits for it to listen.
    pub(crate) fn start(
        bin: &Path,
        parent: Option<&Path>,
        shards: Option<usize>,
    ) -> Result<BrokerProcess, String> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!("sluice-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            // No metrics endpoint: its fixed default port would clash between brokers.
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(shards) = shards {
            command.arg("--shards").arg(shards.to_string());
        }
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing. The broker gets
        // SIGTERM if this process dies without running Drop (SIGKILL), so none is left behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot start {}: {e}", bin.display()));
            }
        };
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&log_tail);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut tail) = tail.lock() {
                        if tail.len() == LOG_TAIL_LINES_MAX {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            // Reads the address, then keeps draining stdout so the broker never blocks on it.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = line.trim().strip_prefix("listening on ") {
                        let _ = tx.send(addr.to_string());
                    }
                }
            });
        }
        let mut broker = BrokerProcess {
            child,
            addr: String::new(),
            dir,
            log_tail,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => {
                    broker.addr = addr;
                    return Ok(broker);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = broker.child.try_wait() {
                        return Err(format!(
                            "the broker exited ({status}) before listening:\n{}",
                            broker.log_tail()
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Its stdout closed: it exited (or is exiting) without listening.
                    let status = broker
                        .child
                        .wait()
                        .map_or("unknown".into(), |s| s.to_string());
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(format!(
                        "the broker exited ({status}) before listening:\n{}",
                        broker.log_tail()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "the broker did not print `listening on` within {} s:\n{}",
                        START_TIMEOUT.as_secs(),
                        broker.log_tail()
                    ));
                }
            }
        }
    }

    /// The broker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        self.log_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("sluice-bench: cannot remove {}: {e}", self.dir.display());
        }
    }
}
