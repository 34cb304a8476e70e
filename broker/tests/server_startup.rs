//! Start-up: a bad config or an unusable data directory is one clear error and exit code 2;
//! a TOML config file is read and flags override it; retention runs on its interval.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::wire::{Conn, batch};
use common::{Broker, sluice_bin};
use sluice_proto::protocol::*;

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(sluice_bin())
        .arg("serve")
        .args(args)
        .output()
        .expect("run sluice serve")
}

#[test]
fn bad_config_and_data_dir_exit_2_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "shards = \"many\"\n").expect("write");
    let out = serve(&[
        "--config",
        config.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid config"), "{stderr}");

    let out = serve(&["--config", "/nonexistent/sluice.toml"]);
    assert_eq!(out.status.code(), Some(2));

    // The data directory is a file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").expect("write");
    let out = serve(&[
        "--data-dir",
        file.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot use data directory"));

    // Corrupt metadata.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("meta")).expect("mkdir");
    std::fs::write(data.join("meta/topics.json"), "{not json").expect("write");
    let out = serve(&[
        "--data-dir",
        data.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid metadata"));

    let out = serve(&["--shards", "0", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_file_and_retention_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    // The file says 3 shards; the harness's --shards 1 overrides it.
    std::fs::write(
        &config,
        "shards = 3\nretention_check_ms = 100\nnode_id = 7\n",
    )
    .expect("write");
    let data = dir.path().join("data");
    let broker = Broker::start_with(&data, 1, &["--config", config.to_str().expect("utf8")]);
    let mut c = Conn::connect(broker.addr);
    let v: ApiVersionsResponse = c.call(ApiKey::ApiVersions, &ApiVersionsRequest {});
    assert_eq!(v.shard_count, 1);
    assert_eq!(v.node_id, 7);
    // Tiny segments and 1 ms retention: closed segments disappear on the next pass.
    let created = c.create_topic(
        "ret",
        1,
        &[("segment.bytes", "16384"), ("retention.ms", "1")],
    );
    assert_eq!(created.error, ErrorCode::NONE, "{}", created.message);
    let value = vec![b'r'; 3000];
    for _ in 0..30 {
        let r = c.produce("ret", 0, ACKS_ALL, batch(&[&value], 1));
        assert_eq!(r.error, ErrorCode::NONE);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let start = c.list_offset("ret", 0, EARLIEST_TIMESTAMP).offset;
        if start > 0 {
            // Fetching below the new start is out of range.
            assert_eq!(
                c.fetch("ret", 0, 0, 0, 0).error,
                ErrorCode::OFFSET_OUT_OF_RANGE
            );
            break;
        }
        assert!(Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}
