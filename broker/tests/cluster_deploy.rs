//! `deploy/local-cluster.sh` end to end: start a 3-node cluster, check `status` and
//! `brokers`, create a replicated topic and write and read through the CLI, `kill 1`
//! (SIGKILL: node 1 is gone, the other two still serve), `restart 1`, `stop` (every process
//! gone, no pid file left). The script runs the `sluice` binary under test (`SLUICE_BIN`) in
//! a temporary `SLUICE_CLUSTER_DIR`, on ports reserved like the harness's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{PORTS_PER_NODE, metadata_at, reserve_port_blocks, run_cli, wait_until};

const TOPIC: &str = "deployed";

struct Script {
    dir: PathBuf,
    base_port: u16,
}

impl Script {
    /// Runs `local-cluster.sh ARGS`: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .args(args)
            .env("SLUICE_BIN", common::sluice_bin())
            .env("SLUICE_CLUSTER_DIR", &self.dir)
            .env("SLUICE_CLUSTER_BASE_PORT", self.base_port.to_string())
            .env_remove("SLUICE_CLUSTER_SHARDS")
            .env_remove("SLUICE_SERVE_ARGS")
            .stdin(Stdio::null())
            .output()
            .expect("run local-cluster.sh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "local-cluster.sh {args:?} failed:\n{out}\n{err}");
        out
    }

    /// `status`: each node's pid, `None` when stopped; and the exit code.
    fn status(&self) -> (Vec<Option<u32>>, i32) {
        let (code, out, err) = self.run(&["status"]);
        let pids = (0..3)
            .map(|i| {
                let line = out
                    .lines()
                    .find(|l| l.starts_with(&format!("node {i} ")))
                    .unwrap_or_else(|| panic!("no status line for node {i}: {out}{err}"));
                let words: Vec<&str> = line.split_whitespace().collect();
                match words[2] {
                    "running" => {
                        assert_eq!(words[3], "pid", "{line}");
                        Some(words[4].parse().expect("pid"))
                    }
                    "stopped" => None,
                    other => panic!("status {other} in {line}"),
                }
            })
            .collect();
        (pids, code)
    }

    fn log_tails(&self) -> String {
        (0..3)
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.join(format!("node-{i}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "----- node {i} -----\n{}",
                    lines[lines.len().saturating_sub(40)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        // Never leave the cluster running: stop it, and SIGKILL whatever a pid file names.
        let _ = self.run(&["stop"]);
        for i in 0..3 {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("node-{i}.pid")))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                // SAFETY: sending a signal to a broker this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not reaped yet) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn cli(brokers: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut all = args.to_vec();
    all.extend(["--brokers", brokers]);
    match stdin {
        None => {
            let (code, out, err) = run_cli(None, &all);
            assert_eq!(code, 0, "sluice {all:?}: {out}{err}");
            out
        }
        Some(input) => {
            let run = common::cli::run_sluice(&all, Some(input));
            assert_eq!(run.code, 0, "sluice {all:?}: {}{}", run.stdout, run.stderr);
            run.stdout
        }
    }
}

#[test]
fn local_cluster_script_starts_kills_restarts_and_stops_three_nodes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = Script {
        dir: tmp.path().join("cluster"),
        base_port: reserve_port_blocks(3),
    };
    let expected: Vec<String> = (0..3u16)
        .map(|i| format!("127.0.0.1:{}", script.base_port + i * PORTS_PER_NODE))
        .collect();
    let brokers = expected.join(",");

    let out = script.ok(&["start"]);
    assert!(out.contains(&format!("brokers: {brokers}")), "{out}");
    let (pids, code) = script.status();
    assert_eq!(code, 0, "status with every node up");
    let pids: Vec<u32> = pids
        .into_iter()
        .map(|p| p.expect("every node runs"))
        .collect();
    assert!(pids.iter().all(|&p| process_alive(p)));
    assert_eq!(script.ok(&["brokers"]).trim(), brokers);
    for name in [
        "certs/ca.pem",
        "node-0.log",
        "node-1.log",
        "node-2.log",
        "node-0",
    ] {
        assert!(script.dir.join(name).exists(), "{name} in the cluster dir");
    }
    // Every node answers and knows all three brokers.
    for addr in &expected {
        wait_until(
            &format!("{addr} lists three brokers"),
            Duration::from_secs(60),
            || {
                let md = metadata_at(addr.parse().ok()?, None, Duration::from_secs(2)).ok()?;
                (md.brokers.len() == 3).then_some(())
            },
        );
    }
    cli(
        &brokers,
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "2",
            "--replication-factor",
            "3",
        ],
        None,
    );
    let first: String = (0..10).map(|i| format!("first-{i}\n")).collect();
    cli(&brokers, &["produce", TOPIC], Some(&first));

    let out = script.ok(&["kill", "1"]);
    assert!(out.contains("node 1 killed"), "{out}");
    assert!(!process_alive(pids[1]), "node 1's process is gone");
    let (after_kill, code) = script.status();
    assert_eq!(code, 1, "status says a node is down");
    assert_eq!(after_kill, vec![Some(pids[0]), None, Some(pids[2])]);
    // Two of three still serve: through the live nodes' addresses.
    let live = format!("{},{}", expected[0], expected[2]);
    let second: String = (0..10).map(|i| format!("second-{i}\n")).collect();
    cli(&live, &["produce", TOPIC], Some(&second));

    let out = script.ok(&["restart", "1"]);
    assert!(out.contains("node 1 started"), "{out}");
    let (after_restart, code) = script.status();
    assert_eq!(code, 0, "status with every node up again");
    assert_eq!(after_restart[0], Some(pids[0]));
    assert_eq!(after_restart[2], Some(pids[2]));
    let restarted = after_restart[1].expect("node 1 runs");
    assert_ne!(restarted, pids[1], "a new process");
    let read = cli(
        &brokers,
        &["consume", TOPIC, "--from-beginning", "--max-messages", "20"],
        None,
    );
    let mut values: Vec<&str> = read.lines().collect();
    values.sort_unstable();
    let mut expected_values: Vec<String> = first
        .lines()
        .chain(second.lines())
        .map(String::from)
        .collect();
    expected_values.sort_unstable();
    assert_eq!(values, expected_values);

    script.ok(&["stop"]);
    let (stopped, code) = script.status();
    assert_eq!(code, 1);
    assert_eq!(stopped, vec![None, None, None]);
    for pid in [pids[0], restarted, pids[2]] {
        assert!(!process_alive(pid), "pid {pid} still runs after stop");
    }
    for i in 0..3 {
        assert!(
            !script.dir.join(format!("node-{i}.pid")).exists(),
            "node {i}'s pid file is left"
        );
    }
    // Idempotent: a second stop is fine.
    script.ok(&["stop"]);
}

/// The parts that need no cluster: usage errors and the address list.
#[test]
fn local_cluster_script_refuses_bad_arguments_and_prints_the_brokers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = Script {
        dir: tmp.path().join("cluster"),
        base_port: 21_000,
    };
    assert_eq!(
        script.ok(&["brokers"]).trim(),
        "127.0.0.1:21000,127.0.0.1:21020,127.0.0.1:21040"
    );
    for bad in [
        &["bogus"][..],
        &["kill"],
        &["kill", "3"],
        &["kill", "x"],
        &["restart"],
    ] {
        let (code, _, err) = script.run(bad);
        assert_eq!(code, 2, "{bad:?} is refused: {err}");
    }
    // Nothing runs yet.
    let (pids, code) = script.status();
    assert_eq!((pids, code), (vec![None, None, None], 1));
    let (code, _, err) = script.run(&["kill", "1"]);
    assert_eq!(code, 2, "killing a stopped node is an error");
    assert!(err.contains("node 1 is not running"), "{err}");
}
