//! File operations on the shard's io_uring ring: direct-I/O open, positional reads and
//! writes of aligned buffers, fdatasync, and `fallocate`, which compio does not offer and is
//! implemented here as a compio-driver `OpCode` over io-uring's `Fallocate` opcode.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use compio::BufResult;
use compio::buf::IntoInner;
use compio::driver::op::TruncateFile;
use compio::driver::{Decision, IourOpCode, OpEntry, PollOpCode, SharedFd, ToSharedFd};
use compio::fs::{File, OpenOptions};
use compio::io::{AsyncReadAt, AsyncWriteAt};
use io_uring::{opcode, types::Fd};

use crate::aligned::{AlignedBuf, BLOCK_BYTES};

/// `fallocate(2)` submitted on the current runtime's ring.
struct Fallocate {
    fd: SharedFd<std::fs::File>,
    mode: i32,
    offset: u64,
    len: u64,
}

impl Fallocate {
    /// The blocking syscall: for rings that lack the opcode and for the polling driver.
    fn call(&self) -> io::Result<usize> {
        let (offset, len) = (self.offset as libc::off_t, self.len as libc::off_t);
        // SAFETY: plain syscall on an open fd.
        let rc = unsafe { libc::fallocate(self.fd.as_raw_fd(), self.mode, offset, len) };
        if rc == 0 {
            Ok(0)
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

// compio is built with its fusion driver (io_uring, or epoll when the broker runs with
// `--allow-epoll-fallback`), so an operation implements both drivers' traits.
// SAFETY: the entry refers only to the fd, which `SharedFd` keeps open until completion.
unsafe impl IourOpCode for Fallocate {
    type Control = ();

    fn create_entry(&mut self, _: &mut Self::Control) -> OpEntry {
        opcode::Fallocate::new(Fd(self.fd.as_raw_fd()), self.len)
            .offset(self.offset)
            .mode(self.mode)
            .build()
            .into()
    }

    fn call_blocking(&mut self, _: &mut Self::Control) -> io::Result<usize> {
        // Kernels whose ring lacks IORING_OP_FALLOCATE (< 5.6) take this path.
        self.call()
    }
}

// SAFETY: the operation only touches the fd, which `SharedFd` keeps open until completion;
// it runs on compio's blocking thread pool.
unsafe impl PollOpCode for Fallocate {
    type Control = ();

    fn pre_submit(&mut self, _: &mut Self::Control) -> io::Result<Decision> {
        Ok(Decision::Blocking)
    }

    fn operate(&mut self, _: &mut Self::Control) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(self.call())
    }
}

/// Test hooks that make the next N-th write or fdatasync fail, so tests can check that a
/// failed write or fsync stops the log for good. Shared across threads, cheap to check.
#[derive(Debug, Default)]
pub struct FaultInjector {
    writes_until_failure: AtomicU32,
    syncs_until_failure: AtomicU32,
    writes_until_no_space: AtomicU32,
}

impl FaultInjector {
    /// Makes the `n`-th write from now fail with EIO (`n` >= 1).
    pub fn fail_write_after(&self, n: u32) {
        self.writes_until_failure.store(n, Ordering::Relaxed);
    }

    /// Makes the `n`-th fdatasync from now fail with EIO (`n` >= 1).
    pub fn fail_sync_after(&self, n: u32) {
        self.syncs_until_failure.store(n, Ordering::Relaxed);
    }

    /// Makes the `n`-th write from now fail with ENOSPC (`n` >= 1), once.
    pub fn fail_write_no_space_after(&self, n: u32) {
        self.writes_until_no_space.store(n, Ordering::Relaxed);
    }

    fn trip(counter: &AtomicU32) -> io::Result<()> {
        Self::trip_with(counter, libc::EIO)
    }

    fn trip_with(counter: &AtomicU32, errno: i32) -> io::Result<()> {
        let fired = counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map(|previous| previous == 1)
            .unwrap_or(false);
        if fired {
            Err(io::Error::from_raw_os_error(errno))
        } else {
            Ok(())
        }
    }
}

/// One file of the log, opened for direct I/O, with the path kept for error messages.
#[derive(Debug)]
pub(crate) struct DirectFile {
    file: File,
    path: PathBuf,
    faults: Option<Arc<FaultInjector>>,
}

impl DirectFile {
    /// Opens (or creates) `path` for O_DIRECT reads and writes.
    pub(crate) async fn open(
        path: &Path,
        create: bool,
        lock_wait_ms: u64,
        faults: Option<Arc<FaultInjector>>,
    ) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
            .await?;
        lock_exclusive(&file, path, lock_wait_ms).await?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            faults,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Current size of the file in bytes.
    pub(crate) async fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }

    /// Allocates `[offset, offset + len)` (the file grows to cover it), so later direct
    /// writes do not extend the file: ext4 serialises size-extending O_DIRECT writes.
    pub(crate) async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let op = Fallocate {
            fd: self.file.to_shared_fd(),
            mode: 0,
            offset,
            len,
        };
        compio::runtime::submit(op).await.0.map(|_| ())
    }

    /// Sets the file size to `len` bytes.
    pub(crate) async fn set_len(&self, len: u64) -> io::Result<()> {
        let op = TruncateFile::new(self.file.to_shared_fd(), len);
        compio::runtime::submit(op).await.0.map(|_| ())
    }

    /// Writes the whole aligned buffer at `pos` (a block multiple), looping on short writes.
    pub(crate) async fn write_all_at(
        &self,
        buf: AlignedBuf,
        pos: u64,
    ) -> (io::Result<()>, AlignedBuf) {
        debug_assert_eq!(pos % BLOCK_BYTES as u64, 0);
        debug_assert_eq!(buf.len() % BLOCK_BYTES, 0);
        if let Some(faults) = &self.faults
            && let Err(err) = FaultInjector::trip(&faults.writes_until_failure).and_then(|()| {
                FaultInjector::trip_with(&faults.writes_until_no_space, libc::ENOSPC)
            })
        {
            return (Err(err), buf);
        }
        let total = buf.len();
        let mut written = 0usize;
        let mut buf = buf;
        while written < total {
            // Short writes of O_DIRECT regular files are rare (disk full part-way); resubmit the
            // rest, which stays block-aligned because the kernel writes whole blocks.
            let slice = compio::buf::IoBuf::slice(buf, written..);
            let mut file = &self.file;
            let BufResult(res, slice) = file.write_at(slice, pos + written as u64).await;
            buf = slice.into_inner();
            match res {
                Ok(0) => return (Err(io::Error::from(io::ErrorKind::WriteZero)), buf),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return (Err(err), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Reads up to `len` bytes (rounded up to blocks) at the block-aligned `pos` into a new
    /// buffer. The result may be shorter at the end of the file.
    pub(crate) async fn read_at(&self, pos: u64, len: usize) -> io::Result<AlignedBuf> {
        debug_assert_eq!(pos % BLOCK_BYTES as u64, 0);
        let buf = AlignedBuf::with_capacity(len.max(1));
        let BufResult(res, buf) = self.file.read_at(buf, pos).await;
        res?;
        Ok(buf)
    }

    /// fdatasync: makes every completed write durable.
    pub(crate) async fn sync_data(&self) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            FaultInjector::trip(&faults.syncs_until_failure)?;
        }
        self.file.sync_data().await
    }

    /// fsync: data and metadata (the file size after a truncation).
    pub(crate) async fn sync_all(&self) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            FaultInjector::trip(&faults.syncs_until_failure)?;
        }
        self.file.sync_all().await
    }
}

/// Takes an exclusive `flock` on a segment file, waiting up to `wait_ms` for another holder.
///
/// Two things hold it: another process (or log) that has the segment open, and the writes of
/// a log that died with writes in flight. An io_uring request keeps a reference to its file,
/// and a flock lasts until the last reference is gone, so after a crash the lock is released
/// only once the dead process's last write has reached the file. Recovery must not read the
/// tail and rewrite its last block before then: a late write of the old process would land on
/// top of the new one.
async fn lock_exclusive(file: &File, path: &Path, wait_ms: u64) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    loop {
        // SAFETY: plain syscall on an open fd.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err);
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is locked by another process or log instance (is another broker using this data directory?)",
                    path.display()
                ),
            ));
        }
        compio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Whether an I/O error means the filesystem is out of space (or quota).
pub(crate) fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Bytes available to unprivileged writers on the filesystem holding `path` (0 if unknown).
pub(crate) fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs fills a struct owned by this frame from a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut st) != 0 {
            return 0;
        }
        (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
    }
}

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let file = File::open(dir).await?;
    file.sync_all().await
}
