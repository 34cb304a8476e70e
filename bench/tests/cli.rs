//! `sluice-bench` as a user runs it: real processes (the bench starts a real `sluice serve`
//! with `--spawn`), real sockets, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_sluice-bench");

/// The `sluice` binary next to the bench (same profile), built (or found up to date) once
/// per test run: `cargo test --workspace` builds it anyway, `-p sluice-bench` does not, and
/// a stale one would not speak the client's current protocol.
fn ensure_sluice() -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let sluice = Path::new(BENCH).with_file_name("sluice");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let release = Path::new(BENCH)
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "release");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "sluice-broker", "--bin", "sluice"]);
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build");
        assert!(status.success(), "cargo build of sluice failed");
    }
    *built = true;
    assert!(sluice.is_file(), "no sluice binary at {}", sluice.display());
    sluice
}

fn bench(args: &[&str]) -> Output {
    Command::new(BENCH)
        .args(args)
        .output()
        .expect("run sluice-bench")
}

fn json_of(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sluice-bench failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "--json prints one object: {stdout}");
    serde_json::from_str(lines[0]).expect("valid JSON")
}

fn u(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer `{key}` in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

#[test]
fn produce_spawn_prints_one_json_object_with_sane_figures_and_cleans_up() {
    let sluice = ensure_sluice();
    let dir = tempfile::tempdir().expect("tempdir");
    let hdr = dir.path().join("ack.hdr");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let out = bench(&[
        "produce",
        "--spawn",
        "--sluice-bin",
        sluice.to_str().expect("utf-8 path"),
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--partitions",
        "2",
        "--record-bytes",
        "512",
        "--batch-records",
        "64",
        "--total-bytes",
        "1MiB",
        "--keys",
        "zipf:1.1",
        "--json",
        "--quiet",
        "--hdr-out",
        hdr.to_str().expect("utf-8 path"),
    ]);
    let v = json_of(&out);
    for key in [
        "mb_per_s",
        "records_per_s",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "p9999_us",
        "max_us",
        "bench_cpu_s",
        "broker_cpu_s",
        "broker_peak_rss_bytes",
        "spectrum",
    ] {
        assert!(v.get(key).is_some(), "missing key {key}: {v}");
    }
    assert_eq!(v["bench"], "produce");
    assert_eq!(u(&v, "records"), 2048, "1 MiB of 512-byte records");
    assert_eq!(u(&v, "errors"), 0);
    assert_eq!(u(&v, "partitions"), 2);
    // One producer: one worker thread by default.
    assert_eq!(u(&v, "bench_threads"), 1, "{v}");
    assert!(f(&v, "records_per_s") > 0.0);
    assert!(f(&v, "mb_per_s") > 0.0);
    let (p50, p99, max) = (u(&v, "p50_us"), u(&v, "p99_us"), u(&v, "max_us"));
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}");
    assert!(u(&v, "p999_us") <= max && u(&v, "p99_us") <= u(&v, "p999_us"));
    assert!(u(&v, "broker_peak_rss_bytes") > 1 << 20, "the broker's RSS");
    // A closed loop has no intended send times apart from the sends themselves.
    assert!(v["send_delay_p999_us"].is_null(), "{v}");
    assert_eq!(v["broker_pid_source"], "spawn");
    // The serialized histogram (HdrHistogram V2) holds every measured record.
    let bytes = std::fs::read(&hdr).expect("hdr file written");
    let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .expect("a V2 histogram");
    assert_eq!(h.len(), 2048);
    assert_eq!(h.max(), max);
    // --spawn removed its temporary data directory.
    let left: Vec<_> = std::fs::read_dir(&data).expect("read dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn open_loop_reaches_a_low_rate_and_e2e_measures_consumers() {
    let sluice = ensure_sluice();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench(&[
        "e2e",
        "--spawn",
        "--sluice-bin",
        sluice.to_str().expect("utf-8 path"),
        "--data-dir",
        dir.path().to_str().expect("utf-8 path"),
        "--rate",
        "400",
        "--duration",
        "3",
        "--warmup",
        "0.5",
        "--acks",
        "1",
        "--record-bytes",
        "100",
        "--threads",
        "3",
        "--json",
        "--quiet",
    ]);
    let v = json_of(&out);
    assert_eq!(v["loop_mode"], "open");
    assert_eq!(u(&v, "bench_threads"), 3, "{v}");
    assert_eq!(v["rate_reached"], true, "{v}");
    let rate = f(&v, "records_per_s");
    assert!((360.0..=440.0).contains(&rate), "400/s ± 10%: {rate}");
    // 3 s measured at 400/s (the warm-up's records are not counted).
    let records = u(&v, "records");
    assert!((1140..=1200).contains(&records), "{records}");
    // Every measured record reached the tailing consumer, with a latency.
    assert_eq!(u(&v, "consumed_records"), records);
    let (p50, max) = (u(&v, "e2e_p50_us"), u(&v, "e2e_max_us"));
    assert!(0 < p50 && p50 <= u(&v, "e2e_p99_us") && u(&v, "e2e_p99_us") <= max);
    // The load generator's own delay is measured and is part of produce-to-ack.
    let (d50, d999, dmax) = (
        u(&v, "send_delay_p50_us"),
        u(&v, "send_delay_p999_us"),
        u(&v, "send_delay_max_us"),
    );
    assert!(
        0 < d50 && d50 <= d999 && d999 <= dmax,
        "{d50} {d999} {dmax}"
    );
    assert!(dmax <= u(&v, "max_us"), "{dmax} > {}", u(&v, "max_us"));
}

/// `--group`: two members of one consumer group, one replaced every 1.5 s while the
/// producer runs. Every produced record reaches the group; with commits before every
/// revocation and on close, a clean leave/join re-delivers nothing (Kafka's at-least-once
/// allows duplicates only after a crash, past the last commit), and nothing is skipped.
#[test]
fn e2e_group_with_churn_gets_every_record_once() {
    let sluice = ensure_sluice();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench(&[
        "e2e",
        "--spawn",
        "--sluice-bin",
        sluice.to_str().expect("utf-8 path"),
        "--data-dir",
        dir.path().to_str().expect("utf-8 path"),
        "--partitions",
        "4",
        "--consumers",
        "2",
        "--group",
        "bench-churn",
        "--churn-every",
        "1.5",
        "--rate",
        "2000",
        "--duration",
        "6",
        "--batch-records",
        "50",
        "--record-bytes",
        "100",
        "--json",
        "--quiet",
    ]);
    let v = json_of(&out);
    assert_eq!(v["group"], "bench-churn");
    let records = u(&v, "records");
    assert!(
        (11_000..=12_000).contains(&records),
        "6 s at 2000/s: {records}"
    );
    assert_eq!(u(&v, "errors"), 0);
    assert_eq!(u(&v, "duplicates"), 0, "{v}");
    assert_eq!(u(&v, "gaps"), 0, "{v}");
    assert_eq!(u(&v, "missing"), 0, "{v}");
    assert_eq!(u(&v, "received"), records, "every record exactly once: {v}");
    assert_eq!(u(&v, "consumed_records"), records);
    // Two initial members, then one more per churn (every 1.5 s, once the previous member
    // has left: at least two in 6 s).
    assert!(u(&v, "members_started") >= 4, "{v}");
    assert!(f(&v, "group_formed_ms") > 0.0, "{v}");
    // The churns rebalance the group (a leave and a join may share one generation, and
    // churns closer than a heartbeat interval too); each rebalance is timed.
    let rebalances = u(&v, "rebalances");
    let times = v["rebalance_times"].as_array().expect("rebalance_times");
    assert!(rebalances >= 1, "{v}");
    assert_eq!(times.len() as u64, rebalances);
    let max = f(&v, "rebalance_ms_max");
    assert!(max > 0.0 && f(&v, "rebalance_ms_p50") <= max, "{v}");
    for t in times {
        assert!(f(t, "ms") <= max && u(t, "generation") >= 2, "{t}");
        assert!(f(t, "ms") > 0.0, "{t}");
    }
    let (p50, p99) = (u(&v, "e2e_p50_us"), u(&v, "e2e_p99_us"));
    assert!(0 < p50 && p50 <= p99, "{v}");

    // consume --group: two members catch up on a filled topic, and the group gets every
    // record once.
    let out = bench(&[
        "consume",
        "--spawn",
        "--sluice-bin",
        sluice.to_str().expect("utf-8 path"),
        "--data-dir",
        dir.path().to_str().expect("utf-8 path"),
        "--partitions",
        "4",
        "--consumers",
        "2",
        "--group",
        "bench-catchup",
        "--assignor",
        "range",
        "--record-bytes",
        "512",
        "--total-bytes",
        "4MiB",
        "--json",
        "--quiet",
    ]);
    let v = json_of(&out);
    assert_eq!(v["assignor"], "range");
    assert_eq!(u(&v, "records"), 8192, "4 MiB of 512-byte records");
    assert_eq!(u(&v, "received"), 8192, "{v}");
    assert_eq!(
        (u(&v, "duplicates"), u(&v, "gaps"), u(&v, "missing")),
        (0, 0, 0),
        "{v}"
    );
}

#[test]
fn plot_writes_a_png() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inputs = Vec::new();
    for (i, scale) in [1.0f64, 3.0].iter().enumerate() {
        let spectrum: Vec<[f64; 2]> = (0..=12)
            .map(|k| {
                let p = 100.0 * (1.0 - 10f64.powf(-f64::from(k) / 4.0));
                [p, scale * 100.0 * (1.0 + f64::from(k))]
            })
            .chain([[100.0, scale * 5000.0]])
            .collect();
        let run = serde_json::json!({
            "label": format!("run {i}"),
            "mb_per_s": 100.0 * scale,
            "spectrum": spectrum,
            "e2e_spectrum": if i == 0 { spectrum.clone() } else { Vec::new() },
        });
        let path = dir.path().join(format!("run{i}.json"));
        std::fs::write(&path, run.to_string()).expect("write json");
        inputs.push(path);
    }
    let png = dir.path().join("latency.png");
    let out = Command::new(BENCH)
        .arg("plot")
        .args(&inputs)
        .arg("-o")
        .arg(&png)
        .output()
        .expect("run plot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("png written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert_eq!((width, height), (1600, 720));
    assert!(
        bytes.len() > 10_000,
        "a drawn chart, not a blank: {}",
        bytes.len()
    );

    // A file that is not a run's JSON is a clear error.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"label\": \"x\"}").expect("write");
    let out = Command::new(BENCH)
        .arg("plot")
        .arg(&bad)
        .arg("-o")
        .arg(dir.path().join("x.png"))
        .output()
        .expect("run plot");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mb_per_s"));
}

#[test]
fn limits_without_fio_on_path_says_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).expect("mkdir");
    let out = Command::new(BENCH)
        .args(["limits", "--json", "--data-dir"])
        .arg(dir.path())
        .env("PATH", &empty_path)
        .output()
        .expect("run limits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let missing: Vec<&str> = v["missing"]
        .as_array()
        .expect("missing list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(missing, ["fio", "iperf3"]);
    assert!(v["disk_seq_write_mb_per_s"].is_null());
    assert!(stderr.contains("fio is missing"), "{stderr}");
    assert!(stderr.contains("apt-get install fio iperf3"), "{stderr}");
    // Nothing measured at all: a non-zero exit that says so.
    assert!(!out.status.success());
    assert!(stderr.contains("no limit could be measured"), "{stderr}");
}
