//! Crash safety of the controller's durable raft storage: a child process commits commands
//! while the test SIGKILLs it at random moments; damaged files refuse to open or are cut
//! back to their checked prefix.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Entry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_replication::controller::{Command, Controller, ControllerConfig, ControllerError};

const CHILD: &str = env!("CARGO_BIN_EXE_sluice-controller-crash-child");
const ROUNDS: usize = 8;

fn config() -> ControllerConfig {
    ControllerConfig {
        snapshot_entries: 25,
        ..ControllerConfig::default()
    }
}

/// Opens the one-voter controller and lets it lead and apply everything it holds.
fn reopen(dir: &Path) -> Controller {
    let mut c = Controller::open(dir, 0, &[0], config()).expect("reopen never fails");
    for _ in 0..10_000 {
        c.ready().expect("ready");
        if c.is_leader() {
            break;
        }
        c.tick();
    }
    assert!(c.is_leader());
    // A proposal of this term commits everything before it.
    let probe = Command::DeleteTopic {
        name: "no-such-topic".into(),
    };
    let index = c.propose(&probe).expect("propose");
    for _ in 0..100 {
        c.ready().expect("ready");
        if c.applied_index() >= index {
            break;
        }
    }
    assert!(c.applied_index() >= index);
    c
}

/// The topic tags in the state: must be exactly `0..n` (a prefix of what was proposed).
fn tags(c: &Controller) -> u64 {
    let mut tags: Vec<u64> = c
        .state()
        .topics
        .keys()
        .map(|k| k[1..].parse().expect("t<tag>"))
        .collect();
    tags.sort_unstable();
    for (i, t) in tags.iter().enumerate() {
        assert_eq!(
            *t, i as u64,
            "topics are not a prefix of the proposals: {tags:?}"
        );
    }
    tags.len() as u64
}

#[test]
fn sigkill_at_random_moments_loses_no_reported_command_and_never_breaks_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().join("controller");
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut next_tag = 0u64;
    let mut reported_total = 0u64;
    for round in 0..ROUNDS {
        let mut child = Process::new(CHILD)
            .arg(&dir)
            .arg(next_tag.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        // Wait for "ready" by polling for it through the kill delay window: the child needs
        // a moment to open; kill somewhere in 100..600 ms after start.
        let delay = Duration::from_millis(rng.random_range(100..600));
        std::thread::sleep(delay);
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0);
        let status = child.wait().expect("wait");
        assert!(!status.success());
        let lines = reader.join().expect("reader");
        let reported: Vec<u64> = lines
            .iter()
            .filter(|l| *l != "ready")
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect();
        let c = reopen(&dir);
        let n = tags(&c);
        for t in &reported {
            assert!(
                *t < n,
                "round {round}: tag {t} was reported persisted but is lost (have {n})"
            );
        }
        eprintln!(
            "round {round}: killed after {delay:?}, {} commands reported, {n} recovered, \
             snapshot at {}",
            reported.len(),
            c.snapshot_index()
        );
        assert!(
            c.log_entries() <= 25 + 5,
            "log of {} entries",
            c.log_entries()
        );
        reported_total += reported.len() as u64;
        next_tag = n;
        drop(c);
    }
    assert!(
        reported_total >= ROUNDS as u64,
        "the child reported only {reported_total} commands in {ROUNDS} rounds"
    );
    // And it all survives a last restart.
    let c = reopen(&dir);
    assert_eq!(tags(&c), next_tag);
    assert!(
        c.snapshot_index() > 0,
        "snapshots were taken during the runs"
    );
}

/// Builds a controller directory with a few committed topics (no snapshot yet).
fn populated(dir: &Path, topics: u64) -> u64 {
    let cfg = ControllerConfig {
        snapshot_entries: 1000,
        ..ControllerConfig::default()
    };
    let mut c = Controller::open(dir, 0, &[0], cfg).expect("open");
    for _ in 0..1000 {
        c.ready().expect("ready");
        if c.is_leader() {
            break;
        }
        c.tick();
    }
    for t in 0..topics {
        let i = c
            .propose(&Command::DeleteTopic {
                name: format!("x{t}"),
            })
            .expect("propose");
        while c.applied_index() < i {
            c.ready().expect("ready");
        }
    }
    c.applied_index()
}

#[test]
fn a_torn_or_corrupt_log_tail_is_cut_off_on_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("c");
    let applied = populated(&dir, 5);
    let log = dir.join("log");
    let len = std::fs::metadata(&log).expect("log").len();
    // A torn record: half a header and some bytes appended past the last whole record.
    {
        let mut f = OpenOptions::new().append(true).open(&log).expect("log");
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9])
            .expect("append");
    }
    let c = Controller::open(&dir, 0, &[0], ControllerConfig::default()).expect("open");
    assert_eq!(
        std::fs::metadata(&log).expect("log").len(),
        len,
        "torn tail cut"
    );
    assert_eq!(c.applied_index(), applied);
    let entries = c.log_entries();
    let term = c.term();
    drop(c);
    // A whole record after the commit index whose body no longer matches its CRC: cut off,
    // and open succeeds (nothing committed is lost).
    let entry = Entry {
        index: applied + 1,
        term,
        data: Command::DeleteTopic {
            name: "uncommitted".into(),
        }
        .encode()
        .into(),
        ..Default::default()
    };
    let body = entry.write_to_bytes().expect("encode");
    let mut record = Vec::new();
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    record.extend_from_slice(&body);
    let last = record.len() - 1;
    record[last] ^= 0x40;
    {
        let mut f = OpenOptions::new().append(true).open(&log).expect("log");
        f.write_all(&record).expect("append");
    }
    let c = Controller::open(&dir, 0, &[0], ControllerConfig::default()).expect("open");
    assert_eq!(
        std::fs::metadata(&log).expect("log").len(),
        len,
        "bad record cut"
    );
    assert_eq!(c.log_entries(), entries);
    assert_eq!(c.applied_index(), applied);
    drop(c);
    // A flipped byte inside the last record: that record goes, the rest stays.
    let len = std::fs::metadata(&log).expect("log").len();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .expect("log");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, len - 2).expect("read");
    f.write_all_at(&[b[0] ^ 0x5a], len - 2).expect("write");
    drop(f);
    // Every entry here is committed (a one-voter controller records the commit right after
    // the append), so cutting the damaged record would lose a committed entry: open refuses.
    match Controller::open(&dir, 0, &[0], ControllerConfig::default()) {
        Err(ControllerError::Corrupt { reason, .. }) => {
            assert!(reason.contains("commit index"), "{reason}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a damaged committed entry must not open"),
    }
}

#[test]
fn corrupt_hardstate_or_snapshot_refuses_to_open() {
    let root = tempfile::tempdir().expect("tempdir");
    // HardState: a flipped byte.
    let dir = root.path().join("hs");
    populated(&dir, 3);
    let path = dir.join("raft-state");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[6] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let err = Controller::open(&dir, 0, &[0], ControllerConfig::default())
        .err()
        .expect("corrupt hardstate must refuse");
    assert!(matches!(err, ControllerError::Corrupt { .. }), "{err}");
    // HardState missing while the log exists: refuse rather than start at term 0.
    std::fs::remove_file(&path).expect("remove");
    let err = Controller::open(&dir, 0, &[0], ControllerConfig::default())
        .err()
        .expect("missing hardstate must refuse");
    assert!(matches!(err, ControllerError::Corrupt { .. }), "{err}");

    // Snapshot: take one, then damage it.
    let dir = root.path().join("snap");
    {
        let cfg = ControllerConfig {
            snapshot_entries: 2,
            ..ControllerConfig::default()
        };
        let mut c = Controller::open(&dir, 0, &[0], cfg).expect("open");
        for _ in 0..1000 {
            c.ready().expect("ready");
            if c.is_leader() {
                break;
            }
            c.tick();
        }
        for t in 0..4 {
            let i = c
                .propose(&Command::DeleteTopic {
                    name: format!("x{t}"),
                })
                .expect("propose");
            while c.applied_index() < i {
                c.ready().expect("ready");
            }
        }
        assert!(c.snapshot_index() > 0);
    }
    let path = dir.join("snapshot");
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let err = Controller::open(&dir, 0, &[0], ControllerConfig::default())
        .err()
        .expect("corrupt snapshot must refuse");
    assert!(matches!(err, ControllerError::Corrupt { .. }), "{err}");
    // Truncated snapshot too.
    std::fs::write(&path, &bytes[..mid]).expect("write");
    let err = Controller::open(&dir, 0, &[0], ControllerConfig::default())
        .err()
        .expect("truncated snapshot must refuse");
    assert!(matches!(err, ControllerError::Corrupt { .. }), "{err}");
}

#[test]
fn a_different_voter_set_refuses_to_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("v");
    populated(&dir, 1);
    let err = Controller::open(&dir, 0, &[0, 1, 2], ControllerConfig::default())
        .err()
        .expect("voters changed");
    assert!(matches!(err, ControllerError::Voters(_)), "{err}");
    let err = Controller::open(&dir, 3, &[0], ControllerConfig::default())
        .err()
        .expect("not a voter");
    assert!(matches!(err, ControllerError::Voters(_)), "{err}");
    let bad = ControllerConfig {
        heartbeat_ticks: 10,
        election_ticks: 10,
        ..ControllerConfig::default()
    };
    let err = Controller::open(&dir, 0, &[0], bad)
        .err()
        .expect("heartbeat not below election");
    assert!(matches!(err, ControllerError::Config(_)), "{err}");
}
