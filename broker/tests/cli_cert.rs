//! `sluice cert`: the files it writes load as peer TLS material, keys are private, and
//! existing files are never overwritten without `--force`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::cli::run_sluice;
use sluice_replication::tls::PeerTls;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn cert_dev_writes_loadable_files_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("certs");
    let dir_arg = dir.to_str().expect("utf8 path");

    let run = run_sluice(&["cert", "dev", "--dir", dir_arg, "--nodes", "0,1,2"], None);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 8, "stdout: {}", run.stdout);
    for node in [0, 1, 2] {
        let tls = PeerTls::load(&dir, node).expect("load node");
        assert_eq!(tls.node_id(), node);
        assert_eq!(mode(&dir.join(format!("node-{node}.key"))), 0o600);
    }
    assert_eq!(mode(&dir.join("ca.key")), 0o600);

    // Again without --force: refused, naming the files, and nothing changes.
    let key_before = std::fs::read(dir.join("ca.key")).expect("read");
    let run = run_sluice(
        &["cert", "dev", "--dir", dir_arg, "--nodes", "0,1,2,3"],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("refusing to overwrite"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("ca.key"), "{}", run.stderr);
    assert!(!dir.join("node-3.pem").exists());
    assert_eq!(std::fs::read(dir.join("ca.key")).expect("read"), key_before);
    let run = run_sluice(&["cert", "ca", "--dir", dir_arg], None);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("refusing to overwrite"),
        "{}",
        run.stderr
    );

    // A new node from the existing CA chains to it.
    let run = run_sluice(&["cert", "node", "--dir", dir_arg, "--node-id", "7"], None);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(PeerTls::load(&dir, 7).expect("load node 7").node_id(), 7);
    let run = run_sluice(&["cert", "node", "--dir", dir_arg, "--node-id", "7"], None);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("node-7.pem"), "{}", run.stderr);

    // --force replaces everything: a new CA, and the old node 7 no longer chains to it.
    let run = run_sluice(
        &["cert", "dev", "--dir", dir_arg, "--nodes", "0,1", "--force"],
        None,
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_ne!(std::fs::read(dir.join("ca.key")).expect("read"), key_before);
    PeerTls::load(&dir, 1).expect("load node 1");
    assert!(PeerTls::load(&dir, 7).is_err());
}

#[test]
fn cert_node_without_a_ca_names_the_missing_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir_arg = tmp.path().to_str().expect("utf8 path");
    let run = run_sluice(&["cert", "node", "--dir", dir_arg, "--node-id", "1"], None);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("ca.pem: missing"), "{}", run.stderr);
    assert!(!tmp.path().join("node-1.pem").exists());
}
