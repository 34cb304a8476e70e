//! The individual start-up checks. Each returns one [`Finding`] with the numbers it compared
//! and, unless it is ok, the exact fix. Plain blocking syscalls: they run before any shard
//! runtime exists.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Finding, IoDriver};
use crate::limits::SHARD_CONNECTIONS_MAX;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Entries of the probe ring: what each shard's compio ring asks for (compio's default).
pub(crate) const RING_ENTRIES: u32 = 1024;
/// Locked memory one shard's ring needs where the kernel charges rings to RLIMIT_MEMLOCK
/// (before 5.12): 1024 SQEs × 64 B + 2048 CQEs × 16 B + the SQ array and ring headers,
/// rounded up.
pub(crate) const RING_MEMLOCK_BYTES: u64 = 128 * KIB;
/// File descriptors the process needs beside shards and segments (stdio, metadata, lock,
/// the blocking thread pool's files).
pub(crate) const FDS_BASE: u64 = 64;
/// File descriptors one shard needs beside connections and segments: its ring, its eventfd,
/// its two listeners, headroom.
pub(crate) const FDS_PER_SHARD: u64 = 8;
/// Below this much free space (or [`DISK_FREE_FRACTION_MIN_PERCENT`]) the doctor warns.
pub(crate) const DISK_FREE_BYTES_WARN: u64 = GIB;
/// Below this share of the filesystem free the doctor warns.
pub(crate) const DISK_FREE_FRACTION_MIN_PERCENT: u64 = 10;
/// The block size of direct I/O in the log (`sluice_storage` aligns to 4096).
const DIRECT_BLOCK_BYTES: usize = 4096;
/// Bytes the fallocate check allocates: one preallocation step of a segment.
const FALLOCATE_PROBE_BYTES: u64 = 16 * MIB;
/// The oldest kernel with io_uring at all.
const KERNEL_MIN: (u32, u32) = (5, 1);
/// The oldest kernel the broker is meant for (README: 5.11+).
const KERNEL_RECOMMENDED: (u32, u32) = (5, 11);
/// From this kernel on, io_uring rings are charged to the memory cgroup, not RLIMIT_MEMLOCK.
const KERNEL_RING_MEMCG: (u32, u32) = (5, 12);

/// The fix when io_uring cannot be used, for every cause.
const IO_URING_FIX: &str = "allow io_uring: in Docker run with --security-opt seccomp=unconfined \
     (or a seccomp profile that allows io_uring_setup, io_uring_enter and io_uring_register); \
     in Kubernetes set securityContext.seccompProfile.type: Unconfined (or a Localhost profile \
     allowing them); on the host set kernel.io_uring_disabled=0 (sysctl -w \
     kernel.io_uring_disabled=0 and in /etc/sysctl.d/); or start serve with \
     --allow-epoll-fallback to run on epoll (slower)";

/// `uname -r`, and the parsed (major, minor).
pub(crate) fn kernel_release() -> (String, Option<(u32, u32)>) {
    // SAFETY: uname fills a struct owned by this frame.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is valid for writes.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return ("unknown".into(), None);
    }
    // SAFETY: uname NUL-terminates the release.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let version = parse_kernel_version(&release);
    (release, version)
}

/// "6.18.44-fc" → (6, 18).
pub(crate) fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub(crate) fn kernel(release: &str, version: Option<(u32, u32)>) -> Finding {
    match version {
        Some(v) if v < KERNEL_MIN => Finding::error(
            "kernel",
            format!("{release}: io_uring needs Linux 5.1 or later"),
            "upgrade the kernel to 5.11 or later (6.x recommended)",
        ),
        Some(v) if v < KERNEL_RECOMMENDED => Finding::warning(
            "kernel",
            format!("{release}: older than 5.11; some io_uring operations fall back to threads"),
            "upgrade the kernel to 5.11 or later (6.x recommended)",
        ),
        Some(_) => Finding::ok("kernel", release.to_string()),
        None => Finding::warning(
            "kernel",
            format!("cannot parse the kernel release {release:?}"),
            "check that this is Linux 5.11 or later",
        ),
    }
}

/// The outcome of setting up a real io_uring ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RingSetup {
    /// The ring works; `missing` lists required opcodes the kernel lacks.
    Ok { missing: Vec<&'static str> },
    /// `io_uring_setup` failed with this errno.
    Failed { errno: i32 },
}

/// Opcodes the broker submits on its rings (besides fallocate, which falls back).
const REQUIRED_OPCODES: [(u8, &str); 7] = [
    (io_uring::opcode::Read::CODE, "READ"),
    (io_uring::opcode::Write::CODE, "WRITE"),
    (io_uring::opcode::Fsync::CODE, "FSYNC"),
    (io_uring::opcode::Accept::CODE, "ACCEPT"),
    (io_uring::opcode::Recv::CODE, "RECV"),
    (io_uring::opcode::Send::CODE, "SEND"),
    (io_uring::opcode::OpenAt::CODE, "OPENAT"),
];

/// Sets up a ring of [`RING_ENTRIES`] like a shard does and probes its opcodes.
pub(crate) fn ring_setup() -> RingSetup {
    match io_uring::IoUring::new(RING_ENTRIES) {
        Ok(ring) => {
            let mut probe = io_uring::Probe::new();
            let missing = match ring.submitter().register_probe(&mut probe) {
                Ok(()) => REQUIRED_OPCODES
                    .iter()
                    .filter(|(code, _)| !probe.is_supported(*code))
                    .map(|(_, name)| *name)
                    .collect(),
                // Kernels before 5.6 have no probe; the ring itself works.
                Err(_) => Vec::new(),
            };
            RingSetup::Ok { missing }
        }
        Err(e) => RingSetup::Failed {
            errno: e.raw_os_error().unwrap_or(0),
        },
    }
}

/// `/proc/sys/kernel/io_uring_disabled`: `None` when the kernel has no such knob (< 6.6).
pub(crate) fn io_uring_disabled_sysctl() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOSYS => "ENOSYS",
        libc::ENOMEM => "ENOMEM",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::EMFILE => "EMFILE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "errno",
    }
}

/// io_uring: the sysctl and a real ring. Decides the I/O driver the shards will run on.
pub(crate) fn io_uring_check(
    sysctl: Option<u8>,
    ring: &RingSetup,
    allow_epoll_fallback: bool,
) -> (Finding, IoDriver) {
    let knob = match sysctl {
        Some(v) => format!("kernel.io_uring_disabled = {v}"),
        None => "no kernel.io_uring_disabled knob".to_string(),
    };
    let problem = match ring {
        RingSetup::Ok { missing } if missing.is_empty() => {
            return (
                Finding::ok(
                    "io_uring",
                    format!("a {RING_ENTRIES}-entry ring set up ({knob})"),
                ),
                IoDriver::IoUring,
            );
        }
        RingSetup::Ok { missing } => format!(
            "the ring lacks opcodes the broker uses: {} ({knob}); upgrade the kernel to 5.11 or later",
            missing.join(", ")
        ),
        RingSetup::Failed { errno } => {
            let cause = match (*errno, sysctl) {
                (libc::EPERM, Some(2)) => "io_uring is disabled for every process by the sysctl",
                (libc::EPERM, Some(1)) => {
                    "io_uring is limited to kernel.io_uring_group by the sysctl, or blocked by seccomp"
                }
                (libc::EPERM, _) => {
                    "blocked by a seccomp profile (Docker's and containerd's default) or a security module"
                }
                (libc::ENOSYS, _) => {
                    "the kernel has no io_uring (CONFIG_IO_URING) or a seccomp filter hides it"
                }
                (libc::ENOMEM, _) => {
                    "not enough locked memory for the ring (RLIMIT_MEMLOCK; set LimitMEMLOCK=infinity)"
                }
                _ => "io_uring_setup failed",
            };
            format!(
                "io_uring_setup failed with {} ({}): {cause} ({knob})",
                errno_name(*errno),
                io::Error::from_raw_os_error(*errno)
            )
        }
    };
    if allow_epoll_fallback {
        (
            Finding::warning(
                "io_uring",
                format!(
                    "{problem}; RUNNING ON THE EPOLL FALLBACK (--allow-epoll-fallback): file I/O \
                     goes through a thread pool, expect lower throughput and higher latency"
                ),
                IO_URING_FIX,
            ),
            IoDriver::Polling,
        )
    } else {
        (
            Finding::error("io_uring", problem, IO_URING_FIX),
            IoDriver::IoUring,
        )
    }
}

/// (soft, hard) of a resource limit; `u64::MAX` is unlimited.
pub(crate) fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a struct owned by this frame.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return (0, 0);
    }
    (lim.rlim_cur, lim.rlim_max)
}

fn show_limit(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

pub(crate) fn memlock(
    (soft, _hard): (u64, u64),
    shards: usize,
    kernel: Option<(u32, u32)>,
    driver: IoDriver,
) -> Finding {
    let need = shards as u64 * RING_MEMLOCK_BYTES;
    let have = if soft == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{} KiB", soft / KIB)
    };
    let charged = kernel.is_some_and(|v| v < KERNEL_RING_MEMCG);
    if driver == IoDriver::Polling || !charged {
        return Finding::ok(
            "memlock",
            format!(
                "RLIMIT_MEMLOCK {have}; io_uring rings are charged to the memory cgroup on \
                 kernel 5.12+, not to this limit (would need {} KiB for {shards} shards)",
                need / KIB
            ),
        );
    }
    if soft < need {
        Finding::error(
            "memlock",
            format!(
                "RLIMIT_MEMLOCK {have} < {} KiB needed for {shards} io_uring rings of {RING_ENTRIES} \
                 entries ({} KiB each) on a kernel older than 5.12",
                need / KIB,
                RING_MEMLOCK_BYTES / KIB
            ),
            "LimitMEMLOCK=infinity in the systemd unit, `ulimit -l unlimited`, or docker \
             --ulimit memlock=-1:-1",
        )
    } else {
        Finding::ok(
            "memlock",
            format!(
                "RLIMIT_MEMLOCK {have} >= {} KiB for {shards} rings",
                need / KIB
            ),
        )
    }
}

/// What `serve` will have: it raises the soft limit to the hard one at start-up.
pub(crate) fn nofile((soft, hard): (u64, u64), shards: usize, segment_files: u64) -> Finding {
    let usable = hard.max(soft);
    let start = FDS_BASE + shards as u64 * FDS_PER_SHARD + segment_files;
    let full = start + shards as u64 * SHARD_CONNECTIONS_MAX as u64;
    let have = format!(
        "RLIMIT_NOFILE soft {}, hard {} (serve raises soft to hard)",
        show_limit(soft),
        show_limit(hard)
    );
    let fix = "LimitNOFILE=1048576 in the systemd unit, `ulimit -n 1048576` before starting, or \
               docker --ulimit nofile=1048576:1048576";
    if usable < start {
        Finding::error(
            "nofile",
            format!(
                "{have} < {start} descriptors needed to start: {FDS_BASE} base + {shards} shards × \
                 {FDS_PER_SHARD} + {segment_files} segment files"
            ),
            fix,
        )
    } else if usable < full {
        Finding::warning(
            "nofile",
            format!(
                "{have} < {full} descriptors for full load: {start} to start + {shards} shards × \
                 {SHARD_CONNECTIONS_MAX} connections; connections beyond the limit fail with EMFILE"
            ),
            fix,
        )
    } else {
        Finding::ok("nofile", format!("{have} >= {full} for full load"))
    }
}

/// Counts `*.log` segment files under `data_dir/topics/*/*/` (one descriptor each when open)
/// and the partition directories.
pub(crate) fn count_segments(data_dir: &Path) -> (u64, u64) {
    let (mut segments, mut partitions) = (0, 0);
    let Ok(topics) = std::fs::read_dir(data_dir.join("topics")) else {
        return (0, 0);
    };
    for topic in topics.flatten() {
        let Ok(parts) = std::fs::read_dir(topic.path()) else {
            continue;
        };
        for part in parts.flatten() {
            partitions += 1;
            if let Ok(files) = std::fs::read_dir(part.path()) {
                segments += files
                    .flatten()
                    .filter(|f| f.path().extension().is_some_and(|e| e == "log"))
                    .count() as u64;
            }
        }
    }
    (segments, partitions)
}

pub(crate) fn cpus(shards: usize, available: usize) -> Finding {
    if shards > available {
        Finding::warning(
            "cpus",
            format!(
                "{shards} shards on {available} usable CPUs: shards share cores and the \
                 thread-per-core model loses its point"
            ),
            format!("run with --shards {available} (or shards = {available} in the config)"),
        )
    } else {
        Finding::ok(
            "cpus",
            format!("{shards} shards on {available} usable CPUs"),
        )
    }
}

/// `net.core.rmem_max`, which caps the replication endpoints' UDP receive buffers.
pub(crate) fn rmem_max_sysctl() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the kernel lets the replication endpoints have the receive buffer they ask for.
pub(crate) fn udp_recv_buffer(rmem_max: Option<usize>) -> Finding {
    const WANTED: usize = sluice_replication::transport::PEER_SOCKET_RECV_BUFFER_BYTES;
    match rmem_max {
        None => Finding::warning(
            "udp_recv_buffer",
            "cannot read net.core.rmem_max",
            "check /proc/sys/net/core/rmem_max is readable",
        ),
        Some(max) if max < WANTED => Finding::warning(
            "udp_recv_buffer",
            format!(
                "net.core.rmem_max is {max} bytes: replication (QUIC over UDP) gets that much \
                 receive buffer instead of {WANTED}, and drops datagrams (each one halves the \
                 flow's congestion window) whenever a shard reads its socket late"
            ),
            format!("sysctl -w net.core.rmem_max={WANTED} (and in /etc/sysctl.d/ to keep it)"),
        ),
        Some(max) => Finding::ok(
            "udp_recv_buffer",
            format!("net.core.rmem_max is {max} bytes (replication asks for {WANTED})"),
        ),
    }
}

/// The directory the filesystem checks look at: `data_dir`, or its nearest existing
/// ancestor when it does not exist yet (serve creates it).
pub(crate) fn existing_dir(data_dir: &Path) -> Result<PathBuf, Finding> {
    let mut dir = data_dir.to_path_buf();
    loop {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => return Ok(dir),
            Ok(_) => {
                return Err(Finding::error(
                    "data_dir",
                    format!("{} is not a directory", dir.display()),
                    "point --data-dir (or data_dir in the config) at a directory",
                ));
            }
            Err(_) => {
                if !dir.pop() || dir.as_os_str().is_empty() {
                    return Ok(PathBuf::from("."));
                }
            }
        }
    }
}

/// Filesystem magic numbers (statfs `f_type`) and names.
const FS_TYPES: [(i64, &str); 12] = [
    (0xEF53, "ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58F6, "ramfs"),
    (0x794C_7630, "overlayfs"),
    (0x6969, "nfs"),
    (0x6573_5546, "fuse"),
    (0x2FC1_2FC1, "zfs"),
    (0xFF53_4D42, "cifs"),
    (0x0102_1997, "9p"),
    (0xF2F5_2010, "f2fs"),
];

/// The filesystem type of `dir` by name (or its magic number).
pub(crate) fn fs_type(dir: &Path) -> io::Result<String> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs fills a struct owned by this frame from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` valid for writes.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let magic = st.f_type as i64;
    Ok(FS_TYPES
        .iter()
        .find(|(m, _)| *m == magic)
        .map_or_else(|| format!("0x{magic:x}"), |(_, name)| (*name).to_string()))
}

const FS_FIX: &str = "put the data directory on a local ext4 or xfs filesystem (xfs: mount with \
                      defaults,noatime; ext4: defaults,noatime), see deploy/TUNING.md";

pub(crate) fn filesystem(dir: &Path, fs: &str) -> Finding {
    let shown = dir.display();
    match fs {
        "ext4" | "xfs" => Finding::ok("filesystem", format!("{shown} is on {fs}")),
        "tmpfs" | "ramfs" => Finding::error(
            "filesystem",
            format!(
                "{shown} is on {fs}: memory, not a disk; every record is lost at reboot and \
                 fdatasync guarantees nothing"
            ),
            FS_FIX,
        ),
        other => Finding::warning(
            "filesystem",
            format!("{shown} is on {other}; the broker is tested on ext4 and xfs"),
            FS_FIX,
        ),
    }
}

/// A temporary file for the write checks, removed on drop.
pub(crate) struct ProbeFile {
    pub(crate) fd: OwnedFd,
    path: PathBuf,
}

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates `dir/.sluice-doctor-<pid>.tmp` with O_DIRECT.
pub(crate) fn open_direct(dir: &Path) -> io::Result<ProbeFile> {
    let path = dir.join(format!(".sluice-doctor-{}.tmp", std::process::id()));
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open with a NUL-terminated path; the fd is owned right after.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_DIRECT | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        // O_CREAT may have created the file before O_DIRECT was refused.
        let _ = std::fs::remove_file(&path);
        return Err(err);
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(ProbeFile { fd, path })
}

/// A zeroed buffer of `len` bytes aligned to the direct-I/O block.
pub(crate) struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub(crate) fn new(len: usize, fill: u8) -> Aligned {
        let storage = vec![fill; len + DIRECT_BLOCK_BYTES];
        let start = storage.as_ptr().align_offset(DIRECT_BLOCK_BYTES);
        Aligned {
            storage,
            start,
            len,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// pwrite of the whole buffer at `pos`.
pub(crate) fn pwrite_all(file: &ProbeFile, buf: &[u8], pos: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: writes from a live slice to an owned fd.
        let n = unsafe {
            libc::pwrite(
                file.fd.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                (pos + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += n as usize;
    }
    Ok(())
}

pub(crate) fn fdatasync(file: &ProbeFile) -> io::Result<()> {
    // SAFETY: plain syscall on an owned fd.
    if unsafe { libc::fdatasync(file.fd.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// O_DIRECT: open a file with it and write one aligned block. Returns the file for the next
/// checks when it worked.
pub(crate) fn direct_io(dir: &Path, fs: &str) -> (Finding, Option<ProbeFile>) {
    let fix = format!(
        "the filesystem ({fs}) does not take direct I/O: put the data directory on ext4 or xfs \
         (not tmpfs, ramfs, some FUSE or network filesystems)"
    );
    let file = match open_direct(dir) {
        Ok(f) => f,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            return (
                Finding::error(
                    "o_direct",
                    format!(
                        "open(O_DIRECT) in {} failed with {} ({e})",
                        dir.display(),
                        errno_name(errno)
                    ),
                    fix,
                ),
                None,
            );
        }
    };
    let block = Aligned::new(DIRECT_BLOCK_BYTES, 0x5a);
    match pwrite_all(&file, block.bytes(), 0) {
        Ok(()) => (
            Finding::ok(
                "o_direct",
                format!("an aligned {DIRECT_BLOCK_BYTES}-byte direct write succeeded"),
            ),
            Some(file),
        ),
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => (
            Finding::warning(
                "o_direct",
                format!("O_DIRECT open worked, but the test write found the disk full ({e})"),
                FULL_FIX,
            ),
            None,
        ),
        Err(e) => (
            Finding::error(
                "o_direct",
                format!(
                    "an aligned {DIRECT_BLOCK_BYTES}-byte O_DIRECT write failed with {} ({e})",
                    errno_name(e.raw_os_error().unwrap_or(0))
                ),
                fix,
            ),
            None,
        ),
    }
}

pub(crate) fn fallocate(file: &ProbeFile, fs: &str) -> Finding {
    // SAFETY: plain syscall on an owned fd.
    let rc = unsafe {
        libc::fallocate(
            file.fd.as_raw_fd(),
            0,
            0,
            FALLOCATE_PROBE_BYTES as libc::off_t,
        )
    };
    if rc == 0 {
        return Finding::ok(
            "fallocate",
            format!("allocated {} MiB ahead", FALLOCATE_PROBE_BYTES / MIB),
        );
    }
    let e = io::Error::last_os_error();
    let errno = e.raw_os_error().unwrap_or(0);
    if errno == libc::ENOSPC {
        // Not an error: a broker on a full disk still serves fetches.
        return Finding::warning(
            "fallocate",
            format!(
                "cannot allocate {} MiB: the filesystem is full ({e})",
                FALLOCATE_PROBE_BYTES / MIB
            ),
            FULL_FIX,
        );
    }
    Finding::error(
        "fallocate",
        format!("fallocate failed with {} ({e})", errno_name(errno)),
        format!(
            "the filesystem ({fs}) does not support fallocate, which segments need: use ext4 or xfs"
        ),
    )
}

/// (free bytes for unprivileged users, total bytes) of the filesystem holding `dir`.
pub(crate) fn disk_space(dir: &Path) -> io::Result<(u64, u64)> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs fills a struct owned by this frame from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` valid for writes.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize;
    Ok((st.f_bavail * unit, st.f_blocks * unit))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// The fix for a full filesystem.
const FULL_FIX: &str = "produce fails with DISK_FULL (fetch goes on) until space frees: free \
                        space, lower retention on large topics, or move the data directory to a \
                        larger filesystem";

/// Free space: a warning, never an error, because a broker on a full disk still serves
/// fetches (produce fails with a clear error until space frees).
pub(crate) fn free_space(free: u64, total: u64) -> Finding {
    let percent = (free * 100).checked_div(total).unwrap_or(0);
    let detail = format!("{} free of {} ({percent}%)", gib(free), gib(total));
    if free < DISK_FREE_BYTES_WARN || percent < DISK_FREE_FRACTION_MIN_PERCENT {
        Finding::warning(
            "disk_space",
            format!(
                "{detail}: below {} or {DISK_FREE_FRACTION_MIN_PERCENT}%; produce fails once the \
                 disk is full",
                gib(DISK_FREE_BYTES_WARN)
            ),
            "free space, lower retention.ms/retention.bytes on large topics, or move the data \
             directory to a larger filesystem",
        )
    } else {
        Finding::ok("disk_space", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Severity;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert_eq!(kernel("4.19.0", Some((4, 19))).severity, Severity::Error);
        assert_eq!(kernel("5.4.0", Some((5, 4))).severity, Severity::Warning);
        assert_eq!(kernel("6.1.0", Some((6, 1))).severity, Severity::Ok);
    }

    #[test]
    fn io_uring_blocked_is_an_error_unless_fallback_is_allowed() {
        let blocked = RingSetup::Failed { errno: libc::EPERM };
        let (f, driver) = io_uring_check(Some(0), &blocked, false);
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(driver, IoDriver::IoUring);
        assert!(f.detail.contains("EPERM"), "{}", f.detail);
        assert!(f.fix.contains("seccomp=unconfined"), "{}", f.fix);
        assert!(f.fix.contains("kernel.io_uring_disabled=0"), "{}", f.fix);

        let (f, driver) = io_uring_check(Some(2), &blocked, true);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(driver, IoDriver::Polling);
        assert!(
            f.detail.contains("disabled for every process"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("EPOLL FALLBACK"), "{}", f.detail);

        let missing = RingSetup::Ok {
            missing: vec!["ACCEPT"],
        };
        let (f, _) = io_uring_check(None, &missing, false);
        assert_eq!(f.severity, Severity::Error);
        assert!(f.detail.contains("ACCEPT"));

        let fine = RingSetup::Ok { missing: vec![] };
        let (f, driver) = io_uring_check(Some(0), &fine, false);
        assert_eq!(f.severity, Severity::Ok);
        assert_eq!(driver, IoDriver::IoUring);
    }

    #[test]
    fn memlock_matters_only_before_5_12() {
        let small = (64 * KIB, 64 * KIB);
        assert_eq!(
            memlock((256 * KIB, 256 * KIB), 2, Some((5, 10)), IoDriver::IoUring).severity,
            Severity::Ok
        );
        let f = memlock(small, 4, Some((5, 10)), IoDriver::IoUring);
        assert_eq!(f.severity, Severity::Error);
        assert!(f.detail.contains("512 KiB"), "{}", f.detail);
        assert!(f.fix.contains("LimitMEMLOCK=infinity"));
        assert_eq!(
            memlock(small, 4, Some((6, 1)), IoDriver::IoUring).severity,
            Severity::Ok
        );
    }

    #[test]
    fn nofile_thresholds_name_the_numbers() {
        let f = nofile((64, 64), 1, 0);
        assert_eq!(f.severity, Severity::Error);
        assert!(
            f.detail.contains("72 descriptors needed to start"),
            "{}",
            f.detail
        );
        assert!(f.fix.contains("LimitNOFILE=1048576"));
        let f = nofile((1024, 1024), 2, 10);
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.detail.contains("8282"), "{}", f.detail);
        // The hard limit counts: serve raises the soft one.
        assert_eq!(nofile((1024, 1 << 20), 2, 10).severity, Severity::Ok);
    }

    #[test]
    fn cpus_and_space() {
        assert_eq!(cpus(2, 2).severity, Severity::Ok);
        let f = cpus(4, 2);
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.fix.contains("--shards 2"));
        assert_eq!(free_space(100 * GIB, 200 * GIB).severity, Severity::Ok);
        assert_eq!(free_space(GIB / 2, 200 * GIB).severity, Severity::Warning);
        assert_eq!(free_space(5 * GIB, 100 * GIB).severity, Severity::Warning);
    }

    #[test]
    fn a_small_rmem_max_is_a_warning_naming_the_sysctl() {
        let wanted = sluice_replication::transport::PEER_SOCKET_RECV_BUFFER_BYTES;
        let small = udp_recv_buffer(Some(212_992));
        assert_eq!(small.severity, Severity::Warning);
        assert!(
            small.fix.contains(&format!("net.core.rmem_max={wanted}")),
            "{}",
            small.fix
        );
        assert_eq!(udp_recv_buffer(Some(wanted)).severity, Severity::Ok);
        assert_eq!(udp_recv_buffer(None).severity, Severity::Warning);
    }

    #[test]
    fn memory_filesystems_are_errors() {
        let dir = Path::new("/x");
        assert_eq!(filesystem(dir, "tmpfs").severity, Severity::Error);
        assert_eq!(filesystem(dir, "ext4").severity, Severity::Ok);
        assert_eq!(filesystem(dir, "nfs").severity, Severity::Warning);
    }
}
