//! Test helper for `replication/tests/controller_crash.rs`, not a tool: drives a one-voter
//! controller that commits one topic per tag as fast as it can until the parent SIGKILLs it.
//!
//! Usage: `sluice-controller-crash-child <dir> <first-tag>`
//!
//! Opens the controller in `<dir>` (node 0, voters `[0]`, a snapshot every
//! [`SNAPSHOT_ENTRIES`] entries so that snapshots and log rewrites happen during a run), ticks
//! until it leads, makes sure broker 0 is registered and unfenced, prints `ready`, then for
//! each tag from `<first-tag>` on proposes `CreateTopic t<tag>` (one replica, on broker 0)
//! and runs `ready` until it is applied; only then it prints `<tag> <index>`. So every
//! complete line the parent reads names a command that was fsynced and committed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_replication::controller::{
    BrokerHeartbeat, BrokerRegistration, Command, Controller, ControllerConfig,
};

/// Applied entries between snapshots: small, so kills land in snapshot writes too.
const SNAPSHOT_ENTRIES: u64 = 25;
/// A run the parent never kills ends with an error after this long.
const RUN_MS_MAX: u64 = 30_000;
/// Ticks and ready rounds allowed to reach a state (leadership, an applied command).
const ROUNDS_MAX: usize = 10_000;

fn fail(msg: &str) -> ! {
    eprintln!("sluice-controller-crash-child: {msg}");
    std::process::exit(2);
}

fn print_line(line: &str) {
    // One write per line: a line is in the pipe whole or, if the kill lands inside the
    // write, unterminated (the parent ignores it).
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
    {
        fail(&format!("stdout: {e}"));
    }
}

fn settle(c: &mut Controller, mut done: impl FnMut(&Controller) -> bool) {
    for _ in 0..ROUNDS_MAX {
        if let Err(e) = c.ready() {
            fail(&format!("ready: {e}"));
        }
        if done(c) {
            return;
        }
        c.tick();
    }
    fail("the one-voter controller did not settle");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(first_tag)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: sluice-controller-crash-child <dir> <first-tag>");
        return ExitCode::from(64);
    };
    let Ok(first_tag) = first_tag.parse::<u64>() else {
        eprintln!("first tag must be a number, got {first_tag:?}");
        return ExitCode::from(64);
    };
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let config = ControllerConfig {
        snapshot_entries: SNAPSHOT_ENTRIES,
        ..ControllerConfig::default()
    };
    let mut c = match Controller::open(&PathBuf::from(dir), 0, &[0], config) {
        Ok(c) => c,
        Err(e) => fail(&format!("open: {e}")),
    };
    settle(&mut c, |c| c.is_leader());
    let hb = BrokerHeartbeat {
        registration: BrokerRegistration {
            id: 0,
            incarnation: 1,
            client_host: "127.0.0.1".into(),
            client_port: 9092,
            shards: 1,
            shard_ports: Vec::new(),
            peer_host: "127.0.0.1".into(),
            peer_port: 19092,
        },
        want_unfence: true,
    };
    for _ in 0..ROUNDS_MAX {
        if c.state().is_live(0) {
            break;
        }
        if let Err(e) = c.broker_heartbeat(&hb, Instant::now()) {
            fail(&format!("heartbeat: {e}"));
        }
        settle(&mut c, |_| true);
    }
    if !c.state().is_live(0) {
        fail("broker 0 did not come up");
    }
    print_line("ready");
    let deadline = Instant::now() + Duration::from_millis(RUN_MS_MAX);
    let mut tag = first_tag;
    while Instant::now() < deadline {
        let command = Command::CreateTopic {
            name: format!("t{tag}"),
            id: 1,
            configs: BTreeMap::new(),
            assignment: vec![vec![0]],
        };
        let index = match c.propose(&command) {
            Ok(i) => i,
            Err(e) => fail(&format!("propose t{tag}: {e}")),
        };
        settle(&mut c, |c| c.applied_index() >= index);
        if !c.state().topics.contains_key(&format!("t{tag}")) {
            fail(&format!("t{tag} applied at {index} but not in the state"));
        }
        print_line(&format!("{tag} {index}"));
        tag += 1;
    }
    fail("never killed");
}
