//! Network namespaces for partition tests: a private Linux bridge with one namespace per node.
//!
//! [`Net::new`] creates, for one test, a bridge and `n` namespaces; namespace `i` has `lo` up and
//! a veth pair whose host end is a port of the bridge and whose other end is `eth0` in the
//! namespace, with the address [`Net::ip`] = `10.201.0.(i+1)/24` (IPv4 only: IPv6 address
//! generation is off on every link the harness creates). The bridge has no address, so the
//! subnet is private to it and parallel nets (each with its own bridge) do not collide.
//! Names carry the test process's pid and a per-process counter (`sluice-netns-<pid>c<k>-<i>`,
//! bridge `sn<pid>c<k>b`, host veth ends `sn<pid>c<k>v<i>`), so parallel tests never share one.
//!
//! Cuts are silent black holes for every IPv4 packet, TCP and UDP alike: [`Net::partition`]
//! gives each side a permanent neighbour entry that maps the other side's address to an
//! unused MAC ([`BLACKHOLE_MAC`]), so their frames are flooded by the bridge and dropped by every
//! receiver (no host owns that MAC). Nothing reports an error to the sender (no ICMP, no local
//! `EHOSTUNREACH`, no carrier change): connections simply stop hearing from the other side, as
//! behind a dead switch. Link state (`ip link set down`) cannot cut one pair while both still
//! reach a third node, and the kernel the tests run on has neither netem nor tc drop actions
//! (no modules), so neighbour entries are what cuts pairs. [`Net::heal`] deletes those entries and
//! ARP resolves the real addresses again on the next packet.
//!
//! Everything is removed on drop (also when the test panics): processes still in the
//! namespaces are SIGKILLed, then the veth pairs, namespaces and bridge are deleted.
//! [`Net::new`] first removes leftovers of earlier runs whose process is gone (a SIGKILLed test
//! cannot run its drop). Needs root, iproute2's `ip`, and a kernel with network namespaces, veth
//! and bridges; without them [`Net::new`] returns [`NetnsError::Unavailable`] and the test fails
//! with that message (it must not pass silently).

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Broker, sluice_bin};

/// Prefix of every namespace name the harness creates.
pub const NETNS_PREFIX: &str = "sluice-netns-";
/// Prefix of every host-side link name (bridge, veth ends) the harness creates; names are
/// `sn<pid>c<k>b` and `sn<pid>c<k>v<i>`, at most 15 bytes (IFNAMSIZ - 1).
const LINK_PREFIX: &str = "sn";
/// The first three octets of every net's /24 (private to each net's bridge).
pub const SUBNET: [u8; 3] = [10, 201, 0];
/// Most namespaces in one net (addresses `.1` to `.NODES_MAX`; one digit in link names).
pub const NODES_MAX: usize = 9;
/// A locally administered unicast MAC no interface has: frames sent to it reach nobody.
pub const BLACKHOLE_MAC: &str = "02:53:4c:00:00:00";
/// The interface name of each namespace's veth end.
pub const NS_IFACE: &str = "eth0";
/// Longest wait for a broker in a namespace to print its listening address.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Nets created by this process so far (the `k` of the names).
static NETS_CREATED: AtomicU32 = AtomicU32::new(0);

/// Why the harness could not do something.
#[derive(Debug)]
pub enum NetnsError {
    /// This machine or process cannot create network namespaces (not root, no `ip`, ...).
    Unavailable(String),
    /// An `ip` command failed.
    Command {
        /// The command line.
        command: String,
        /// Its exit status (or the spawn error).
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

impl fmt::Display for NetnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsError::Unavailable(why) => {
                write!(f, "network namespaces are unavailable: {why}")
            }
            NetnsError::Command {
                command,
                status,
                stderr,
            } => write!(f, "`{command}` failed ({status}): {}", stderr.trim()),
        }
    }
}

impl std::error::Error for NetnsError {}

/// Runs `ip ARGS`, returning its stdout, or a [`NetnsError::Command`] naming it.
pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            status: format!("spawn: {e}"),
            stderr: String::new(),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of all network namespaces (`ip netns list`).
pub fn netns_names() -> Result<Vec<String>, NetnsError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Names of all links of the calling thread's namespace (`ip -o link show`).
pub fn link_names() -> Result<Vec<String>, NetnsError> {
    Ok(ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect())
}

/// Checks that this process can create namespaces at all ([`Net::new`] does it first).
pub fn check_available() -> Result<(), NetnsError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(NetnsError::Unavailable(format!(
            "the test runs as uid {euid}; creating namespaces, veths and bridges needs root"
        )));
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Err(NetnsError::Unavailable(
            "the kernel has no network namespaces (/proc/self/ns/net is missing)".into(),
        ));
    }
    netns_names().map_err(|e| {
        NetnsError::Unavailable(format!(
            "`ip netns` does not work (is iproute2 installed?): {e}"
        ))
    })?;
    Ok(())
}

/// The pid in a harness name after its prefix (`<pid>c...`), if the name is one of ours.
fn owner_pid(rest: &str) -> Option<u32> {
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('c') {
        return None;
    }
    digits.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILLs every process in namespace `ns` (never this test process).
fn kill_processes_in(ns: &str) {
    let Ok(pids) = ip(&["netns", "pids", ns]) else {
        return;
    };
    let me = std::process::id();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if pid == me {
            continue;
        }
        // SAFETY: sending a signal; the pid was in a namespace this harness created.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    // Wait (bounded) for them to be gone, so the namespace dies with its veth end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match ip(&["netns", "pids", ns]) {
            Ok(left) if left.lines().any(|l| l.trim().parse::<u32>() != Ok(me)) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break,
        }
    }
}

/// Removes namespaces and links of earlier runs whose test process is gone. Failures are
/// reported on stderr, not returned: another test may be cleaning the same leftovers.
pub fn cleanup_stale() {
    if let Ok(names) = netns_names() {
        for ns in names {
            let Some(pid) = ns.strip_prefix(NETNS_PREFIX).and_then(owner_pid) else {
                continue;
            };
            if process_alive(pid) {
                continue;
            }
            kill_processes_in(&ns);
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                eprintln!("netns harness: removing stale namespace {ns}: {e}");
            }
        }
    }
    if let Ok(links) = link_names() {
        for link in links {
            let Some(pid) = link.strip_prefix(LINK_PREFIX).and_then(owner_pid) else {
                continue;
            };
            if process_alive(pid) {
                continue;
            }
            if let Err(e) = ip(&["link", "delete", &link]) {
                eprintln!("netns harness: removing stale link {link}: {e}");
            }
        }
    }
}

/// One namespace of a [`Net`].
#[derive(Debug)]
struct Node {
    ns: String,
    host_veth: String,
    ip: Ipv4Addr,
}

/// A bridge and its namespaces; see the module doc. Removed on drop.
///
/// [`Net::new`] and drop act on the calling thread's namespace (the host side), so call them
/// from a thread that did not [`Net::enter`] a namespace. Cuts and heals name their namespaces
/// explicitly (`ip -n`) and work from any thread.
#[derive(Debug)]
pub struct Net {
    id: String,
    bridge: String,
    /// Whether the bridge was created (so drop deletes it).
    bridge_created: bool,
    nodes: Vec<Node>,
    /// Pairs `(a, b)`, `a < b`, that are cut now.
    cut: Mutex<BTreeSet<(usize, usize)>>,
}

impl Net {
    /// Creates a bridge and `n` namespaces (1..=[`NODES_MAX`]), after removing leftovers of
    /// dead earlier runs.
    pub fn new(n: usize) -> Result<Net, NetnsError> {
        assert!((1..=NODES_MAX).contains(&n), "1..={NODES_MAX} namespaces");
        check_available()?;
        cleanup_stale();
        let k = NETS_CREATED.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}c{k}", std::process::id());
        let mut net = Net {
            bridge: format!("{LINK_PREFIX}{id}b"),
            id,
            bridge_created: false,
            nodes: Vec::with_capacity(n),
            cut: Mutex::new(BTreeSet::new()),
        };
        // On an error below, dropping `net` removes what was created so far.
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        net.bridge_created = true;
        ip(&["link", "set", &net.bridge, "addrgenmode", "none"])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..n {
            let node = Node {
                ns: format!("{NETNS_PREFIX}{}-{i}", net.id),
                host_veth: format!("{LINK_PREFIX}{}v{i}", net.id),
                ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1),
            };
            ip(&["netns", "add", &node.ns])?;
            let ns = node.ns.clone();
            let host_veth = node.host_veth.clone();
            let addr = format!("{}/24", node.ip);
            net.nodes.push(node);
            ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", NS_IFACE, "netns", &ns,
            ])?;
            ip(&["link", "set", &host_veth, "addrgenmode", "none"])?;
            ip(&["link", "set", &host_veth, "master", &net.bridge, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", NS_IFACE, "addrgenmode", "none"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", NS_IFACE])?;
            ip(&["-n", &ns, "link", "set", NS_IFACE, "up"])?;
        }
        Ok(net)
    }

    /// How many namespaces.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Namespace `i`'s name.
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i].ns
    }

    /// Namespace `i`'s address on the bridge.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.nodes[i].ip
    }

    /// Every namespace and host link name this net created (to check they are gone).
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.bridge.clone()];
        for n in &self.nodes {
            names.push(n.ns.clone());
            names.push(n.host_veth.clone());
        }
        names
    }

    /// A command that runs `program` inside namespace `i` (`ip netns exec NS program`; `ip`
    /// execs the program, so the child's pid is the program's).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(i), program]);
        c
    }

    /// Moves the calling thread into namespace `i` (sockets it creates afterwards, and threads
    /// it spawns, live there).
    pub fn enter(&self, i: usize) -> Result<(), NetnsError> {
        let path = format!("/run/netns/{}", self.ns(i));
        let file = std::fs::File::open(&path).map_err(|e| NetnsError::Command {
            command: format!("open {path}"),
            status: e.to_string(),
            stderr: String::new(),
        })?;
        // SAFETY: `file` is an open namespace file; setns only changes this thread's netns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(NetnsError::Command {
                command: format!("setns({path}, CLONE_NEWNET)"),
                status: std::io::Error::last_os_error().to_string(),
                stderr: String::new(),
            });
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside namespace `i` and returns its result (a panic in `f`
    /// is resumed here).
    pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                self.enter(i)
                    .unwrap_or_else(|e| panic!("entering namespace {i}: {e}"));
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `sluice serve` in namespace `i`, listening on [`Net::ip`]`(i)` (ephemeral
    /// port, advertised under that address), metrics on the namespace's loopback.
    pub fn start_broker(&self, i: usize, data_dir: &Path, shards: usize, extra: &[&str]) -> Broker {
        let listen = format!("{}:0", self.ip(i));
        let child = self
            .command(i, sluice_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(&listen)
            .arg("--shards")
            .arg(shards.to_string())
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ip netns exec sluice serve");
        Broker::await_listening(
            child,
            data_dir,
            shards,
            &format!("broker in {}", self.ns(i)),
            BROKER_START_TIMEOUT,
        )
    }

    /// Points `from`'s neighbour entry for `to`'s address at [`BLACKHOLE_MAC`].
    fn blackhole(&self, from: usize, to: usize) -> Result<(), NetnsError> {
        let to_ip = self.ip(to).to_string();
        ip(&[
            "-n",
            self.ns(from),
            "neigh",
            "replace",
            &to_ip,
            "lladdr",
            BLACKHOLE_MAC,
            "dev",
            NS_IFACE,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Cuts namespaces `a` and `b` apart, both ways (both still reach the others).
    pub fn partition(&self, a: usize, b: usize) -> Result<(), NetnsError> {
        assert!(
            a != b && a < self.len() && b < self.len(),
            "two distinct nodes"
        );
        let mut cut = self.cut.lock().expect("cut set");
        // Recorded first, so a heal after a failure below removes whatever was set.
        cut.insert((a.min(b), a.max(b)));
        self.blackhole(a, b)?;
        self.blackhole(b, a)
    }

    /// Cuts namespace `a` from every other namespace.
    pub fn isolate(&self, a: usize) -> Result<(), NetnsError> {
        for b in (0..self.len()).filter(|&b| b != a) {
            self.partition(a, b)?;
        }
        Ok(())
    }

    /// Restores every cut link.
    pub fn heal(&self) -> Result<(), NetnsError> {
        let mut cut = self.cut.lock().expect("cut set");
        while let Some(&(a, b)) = cut.iter().next() {
            for (from, to) in [(a, b), (b, a)] {
                let to_ip = self.ip(to).to_string();
                // The entry is absent if the partition failed half-way.
                let present = ip(&[
                    "-n",
                    self.ns(from),
                    "neigh",
                    "show",
                    &to_ip,
                    "dev",
                    NS_IFACE,
                ])?;
                if !present.trim().is_empty() {
                    ip(&[
                        "-n",
                        self.ns(from),
                        "neigh",
                        "delete",
                        &to_ip,
                        "dev",
                        NS_IFACE,
                    ])?;
                }
            }
            cut.remove(&(a, b));
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in &self.nodes {
            kill_processes_in(&node.ns);
            // Deleting one veth end deletes both, at once (a namespace dies asynchronously).
            if link_names().is_ok_and(|l| l.contains(&node.host_veth))
                && let Err(e) = ip(&["link", "delete", &node.host_veth])
            {
                eprintln!("netns harness: {e}");
            }
            if let Err(e) = ip(&["netns", "delete", &node.ns]) {
                eprintln!("netns harness: {e}");
            }
        }
        if self.bridge_created
            && let Err(e) = ip(&["link", "delete", &self.bridge])
        {
            eprintln!("netns harness: {e}");
        }
    }
}
