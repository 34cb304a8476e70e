//! A full disk, for real: the broker's data directory is on a small loop-mounted ext4
//! filesystem the test creates. A filler file takes the free space; produce (acks=all) runs
//! until the broker answers `DISK_FULL` with "disk full on DIR: N bytes free" (the client
//! library surfaces it as `ClientError::DiskFull`); fetch still returns every acknowledged
//! record; once the filler is deleted, produce succeeds again; after a clean restart every
//! acknowledged record is there, at its offset.
//!
//! Needs root (losetup/mount): without it the test prints why and passes without running.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Broker;
use common::wire::{Conn, batch};
use sluice_client::{Client, ClientConfig, ClientError, Producer, ProducerConfig, ProducerRecord};
use sluice_proto::protocol::ErrorCode;

/// Size of the filesystem image: room for the broker's internal topics (every partition
/// preallocates 16 MiB) and a few segments of the test topic.
const IMAGE_BYTES: u64 = 768 << 20;

/// A loop-mounted ext4 filesystem, unmounted and deleted on drop.
struct LoopMount {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopMount {
    fn new() -> Result<LoopMount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .map_err(|e| e.to_string())?;
        let image = image.to_str().expect("utf-8 path").to_string();
        run("mkfs.ext4", &["-q", &image])?;
        run(
            "mount",
            &["-o", "loop", &image, mnt.to_str().expect("utf-8 path")],
        )?;
        Ok(LoopMount { _dir: dir, mnt })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().expect("utf-8 path");
        if run("umount", &[mnt]).is_err() {
            // Still busy (a broker that is being killed): detach lazily.
            let _ = run("umount", &["-l", mnt]);
        }
    }
}

/// Fills the filesystem of `dir` with a file of zeros until the write fails with ENOSPC.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filler write: {e}"),
        }
    }
    let _ = f.sync_all();
    written
}

fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: statvfs fills a struct owned by this frame.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        st.f_bfree as u64 * st.f_frsize as u64
    }
}

/// Reads every record value of `full`/0 from offset 0, in order.
fn read_everything(c: &mut Conn) -> Vec<(u64, Vec<u8>)> {
    c.read_all("full", 0, 0)
}

#[test]
fn produce_fails_cleanly_on_a_full_disk_and_resumes_when_space_frees() {
    let mount = match LoopMount::new() {
        Ok(m) => m,
        Err(why) => {
            println!("skipped: cannot create a loop-mounted filesystem ({why})");
            return;
        }
    };
    let data = mount.mnt.join("data");
    let mut broker = Broker::start(&data, 1);
    let mut c = Conn::connect(broker.addr);
    let created = c.create_topic("full", 1, &[]);
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);

    let filler = mount.mnt.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);

    // Produce 64 KiB batches with acks=all until the disk is full.
    // Incompressible, so a client that compresses sends as many bytes.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let value: Vec<u8> = (0..16 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut refusal = None;
    for i in 0..2_000u32 {
        let tag = format!("{i:08}");
        let values: Vec<Vec<u8>> = (0..4)
            .map(|r| [tag.as_bytes(), &[b'-', b'0' + r], &value[..]].concat())
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let r = c.produce("full", 0, -1, batch(&refs, 1_000));
        if r.error == ErrorCode::DISK_FULL {
            refusal = Some(r.message);
            break;
        }
        assert_eq!(r.error, ErrorCode::NONE, "produce {i}: {}", r.message);
        for (k, v) in values.into_iter().enumerate() {
            acked.push((r.base_offset + k as u64, v));
        }
    }
    let message = refusal.expect("the disk filled up before 2000 batches");
    assert!(
        message.starts_with("disk full on ") && message.ends_with(" bytes free"),
        "{message}"
    );
    assert!(message.contains(data.to_str().expect("utf-8")), "{message}");
    assert!(
        !acked.is_empty(),
        "some batches fit before the disk was full"
    );

    // Still full: refused again (a batch as large as the refused one: a few KiB may still
    // be free), typed, through the client library too.
    let again = [
        b"again".as_slice(),
        &value[..],
        &value[..],
        &value[..],
        &value[..],
    ]
    .concat();
    let r = c.produce("full", 0, -1, batch(&[&again], 1_000));
    assert_eq!(r.error, ErrorCode::DISK_FULL, "{}", r.message);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let addr = broker.addr_string();
    let client_error = rt.block_on(async {
        let client = Client::connect(ClientConfig::new(&addr))
            .await
            .expect("connect");
        // Not idempotent: an idempotent producer first asks for a producer id, which the
        // broker cannot persist on a full disk (STORAGE_ERROR before any record is sent).
        let config = ProducerConfig {
            idempotence: Some(false),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client, config);
        let delivery = producer
            .send(ProducerRecord::new("full", again.clone()).partition(0))
            .await
            .expect("queued");
        delivery.await.expect_err("a full disk refuses the record")
    });
    assert!(
        matches!(client_error, ClientError::DiskFull { .. }),
        "{client_error:?}"
    );
    assert!(
        client_error.to_string().contains("disk full on"),
        "{client_error}"
    );

    // Fetch keeps working while the disk is full: every acknowledged record, in place.
    assert_eq!(read_everything(&mut c), acked);

    // A broker killed and restarted while the disk is still full starts (its logs open
    // without allocating ahead) and serves every acknowledged record.
    drop(c);
    broker.kill9();
    let mut broker = Broker::start(&data, 1);
    let mut c = Conn::connect(broker.addr);
    assert_eq!(read_everything(&mut c), acked);
    let r = c.produce("full", 0, -1, batch(&[&again], 1_000));
    assert_eq!(r.error, ErrorCode::DISK_FULL, "{}", r.message);

    // Free the space: production resumes (the broker retries its allocation).
    std::fs::remove_file(&filler).expect("delete filler");
    assert!(free_bytes(&mount.mnt) > 16 << 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        let v = b"after".to_vec();
        let r = c.produce("full", 0, -1, batch(&[&v], 1_000));
        if r.error == ErrorCode::NONE {
            break (r.base_offset, v);
        }
        assert_eq!(r.error, ErrorCode::DISK_FULL, "{}", r.message);
        assert!(Instant::now() < deadline, "produce did not resume");
        std::thread::sleep(Duration::from_millis(50));
    };
    acked.push(resumed);
    for i in 0..20u32 {
        let v = format!("more-{i}").into_bytes();
        let r = c.produce("full", 0, -1, batch(&[&v], 1_000));
        assert_eq!(r.error, ErrorCode::NONE, "{}", r.message);
        acked.push((r.base_offset, v));
    }

    // Every acknowledged record survives a restart.
    drop(c);
    assert!(broker.terminate(Duration::from_secs(30)), "clean exit");
    let broker = Broker::start(&data, 1);
    let mut c = Conn::connect(broker.addr);
    assert_eq!(read_everything(&mut c), acked);
    drop(c);
    drop(broker);
    drop(mount);
}
