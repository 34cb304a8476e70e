//! SIGHUP reloads the `--config` file: `retention_check_ms` (and the shard budgets) apply at
//! once, settings that need a restart are logged as such and not applied, and a bad file is
//! logged and ignored while the broker keeps serving.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sluice_bin;
use common::wire::{Conn, batch};
use sluice_proto::protocol::{EARLIEST_TIMESTAMP, ErrorCode};

/// A broker whose stderr lines are collected.
struct Logged {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    fn start(data: &std::path::Path, config: &std::path::Path) -> Logged {
        let mut child = Command::new(sluice_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--shards", "2"])
            .args(["--metrics-listen", "off"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                sink.lock().expect("lines").push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let addr = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).expect("read") > 0,
                "broker exited"
            );
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                break rest.parse().expect("address");
            }
        };
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stdout.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        });
        Logged { child, addr, lines }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits (bounded) for a log line containing every one of `parts`.
    fn wait_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no log line with {parts:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_applies_retention_interval_and_ignores_a_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "retention_check_ms = 3600000\n").expect("write config");
    let broker = Logged::start(&dir.path().join("data"), &config);
    let mut c = Conn::connect(broker.addr);
    // Tiny segments whose records are all expired: only the retention pass keeps them.
    let created = c.create_topic("r", 1, &[("segment.bytes", "16384"), ("retention.ms", "1")]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let value = vec![b'x'; 6000];
    for _ in 0..12 {
        let r = c.produce("r", 0, -1, batch(&[&value], 1_000));
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let start = c.list_offset("r", 0, EARLIEST_TIMESTAMP);
    assert_eq!(
        start.offset, 0,
        "no retention pass yet with a one-hour interval"
    );

    // Reload: a short interval applies at once; a changed node id needs a restart.
    std::fs::write(
        &config,
        "retention_check_ms = 100\nnode_id = 7\nshard_request_bytes = 134217728\n",
    )
    .expect("rewrite config");
    broker.signal(libc::SIGHUP);
    let applied = broker.wait_line(&["SIGHUP", "reloaded and applied"]);
    assert!(
        applied.contains("retention_check_ms 3600000 -> 100"),
        "{applied}"
    );
    assert!(
        applied.contains("shard_request_bytes 67108864 -> 134217728"),
        "{applied}"
    );
    let restart = broker.wait_line(&["SIGHUP", "restart"]);
    assert!(restart.contains("node_id 0 -> 7"), "{restart}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let start = c.list_offset("r", 0, EARLIEST_TIMESTAMP);
        if start.offset > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not run after the reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A bad file: logged, ignored, the broker keeps serving with the previous settings.
    std::fs::write(&config, "retention_check_ms = \"soon\"\n").expect("rewrite config");
    broker.signal(libc::SIGHUP);
    let refused = broker.wait_line(&["SIGHUP", "not reloaded"]);
    assert!(refused.contains("invalid config"), "{refused}");
    let r = c.produce("r", 0, -1, batch(&[b"still serving"], 1_000));
    assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
    let mut broker = broker;
    assert!(
        broker.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    broker.signal(libc::SIGTERM);
    let status = broker.child.wait().expect("wait");
    assert!(status.success(), "clean exit after the reloads: {status:?}");
}
