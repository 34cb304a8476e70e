//! The `sluice` command-line client against a real `sluice serve`: topic admin, produce from
//! stdin with keys and headers, consume with templates and JSON, following, and the error
//! messages people see.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{Run, run_sluice};
use common::{Broker, sluice_bin};
use serde_json::Value;

/// Runs `sluice args...` with `stdin`, failing the test if it takes over 60 s.
fn sluice(args: &[&str], stdin: &str) -> Run {
    run_sluice(args, Some(stdin))
}

fn ok(args: &[&str], stdin: &str) -> String {
    let run = sluice(args, stdin);
    assert_eq!(run.code, 0, "sluice {args:?} failed: {}", run.stderr);
    run.stdout
}

#[test]
fn topic_create_list_describe_json_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let b = broker.addr_string();

    let out = ok(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
            "--brokers",
            &b,
        ],
        "",
    );
    assert!(out.contains("orders"), "{out}");
    ok(
        &[
            "topic",
            "create",
            "audit",
            "--partitions",
            "1",
            "--brokers",
            &b,
        ],
        "",
    );

    let list = ok(&["topic", "list", "--brokers", &b], "");
    // The internal topic of committed offsets is listed, as Kafka lists it.
    assert_eq!(list, "__consumer_offsets\t16\naudit\t1\norders\t3\n");

    let json = ok(
        &["topic", "describe", "orders", "--json", "--brokers", &b],
        "",
    );
    let v: Value = serde_json::from_str(json.trim()).expect("describe --json is JSON");
    assert_eq!(v["name"], "orders");
    assert_eq!(v["configs"]["retention.ms"], "3600000");
    assert!(
        v["configs"]["max.message.bytes"].is_string(),
        "defaults shown"
    );
    let partitions = v["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 3);
    for (i, p) in partitions.iter().enumerate() {
        assert_eq!(p["partition"], i as u64);
        assert_eq!(p["leader"], 0);
        assert_eq!(p["replicas"], serde_json::json!([0]));
        assert_eq!(p["isr"], serde_json::json!([0]));
        assert_eq!(p["start_offset"], 0);
        assert_eq!(p["end_offset"], 0);
    }

    let text = ok(&["topic", "describe", "orders", "--brokers", &b], "");
    assert!(text.contains("retention.ms=3600000"), "{text}");

    let dup = sluice(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "1",
            "--brokers",
            &b,
        ],
        "",
    );
    assert_eq!(dup.code, 1);
    assert!(dup.stderr.starts_with("error: "), "{}", dup.stderr);
    assert!(
        dup.stderr.contains("TOPIC_ALREADY_EXISTS"),
        "{}",
        dup.stderr
    );

    ok(&["topic", "delete", "orders", "--brokers", &b], "");
    assert_eq!(
        ok(&["topic", "list", "--brokers", &b], ""),
        "__consumer_offsets\t16\naudit\t1\n"
    );
    let gone = sluice(&["topic", "describe", "orders", "--brokers", &b], "");
    assert_eq!(gone.code, 1);
    assert_eq!(gone.stderr.trim(), "error: unknown topic 'orders'");
}

#[test]
fn produce_keys_and_headers_then_consume_with_format_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let b = broker.addr_string();
    ok(
        &[
            "topic",
            "create",
            "one",
            "--partitions",
            "1",
            "--brokers",
            &b,
        ],
        "",
    );
    ok(
        &[
            "topic",
            "create",
            "many",
            "--partitions",
            "4",
            "--brokers",
            &b,
        ],
        "",
    );

    let produced = sluice(
        &[
            "produce",
            "one",
            "--key-separator",
            ":",
            "--header",
            "src=cli",
            "--header",
            "n=1",
            "--brokers",
            &b,
        ],
        "k1:v1\nk2:v2:with colon\nno key here\n",
    );
    assert_eq!(produced.code, 0, "{}", produced.stderr);
    assert_eq!(produced.stdout, "", "produce prints nothing on success");

    let out = ok(
        &[
            "consume",
            "one",
            "--from-beginning",
            "--max-messages",
            "3",
            "--format",
            "{offset} {partition} {key}={value} [{headers}]",
            "--brokers",
            &b,
        ],
        "",
    );
    assert_eq!(
        out,
        "0 0 k1=v1 [src=cli,n=1]\n1 0 k2=v2:with colon [src=cli,n=1]\n2 0 null=no key here [src=cli,n=1]\n"
    );

    // --max-messages stops early; the default format is the value.
    let out = ok(
        &[
            "consume",
            "one",
            "--from-beginning",
            "--max-messages",
            "2",
            "--brokers",
            &b,
        ],
        "",
    );
    assert_eq!(out, "v1\nv2:with colon\n");

    // --offset and --no-follow: from offset 1 to the end seen at start.
    let out = ok(
        &[
            "consume",
            "one",
            "--offset",
            "1",
            "--no-follow",
            "--brokers",
            &b,
        ],
        "",
    );
    assert_eq!(out, "v2:with colon\nno key here\n");

    // --from-time in the future: nothing, and --no-follow returns.
    let out = ok(
        &[
            "consume",
            "one",
            "--from-time",
            "2999-01-01T00:00:00Z",
            "--no-follow",
            "--brokers",
            &b,
        ],
        "",
    );
    assert_eq!(out, "");
    // --from-time in the past (ms): everything.
    let out = ok(
        &[
            "consume",
            "one",
            "--from-time",
            "0",
            "--no-follow",
            "--brokers",
            &b,
        ],
        "",
    );
    assert_eq!(out.lines().count(), 3);

    // Many partitions, acks=1, JSON out: every line comes back once, keys where sent.
    let lines: Vec<String> = (0..200)
        .map(|i| format!("key{}|value {i}", i % 7))
        .collect();
    let produced = sluice(
        &[
            "produce",
            "many",
            "--key-separator",
            "|",
            "--acks",
            "1",
            "--header",
            "h=x",
            "--brokers",
            &b,
        ],
        &(lines.join("\n") + "\n"),
    );
    assert_eq!(produced.code, 0, "{}", produced.stderr);
    let out = ok(
        &[
            "consume",
            "many",
            "--from-beginning",
            "--max-messages",
            "200",
            "--json",
            "--brokers",
            &b,
        ],
        "",
    );
    let mut values: Vec<String> = Vec::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).expect("one JSON object per line");
        let value = v["value"].as_str().expect("value").to_owned();
        let i: usize = value
            .strip_prefix("value ")
            .expect("prefix")
            .parse()
            .expect("n");
        assert_eq!(v["key"], format!("key{}", i % 7));
        assert_eq!(v["topic"], "many");
        assert_eq!(v["headers"]["h"], "x");
        assert!(v["partition"].as_u64().expect("partition") < 4);
        assert!(v["offset"].is_u64() && v["timestamp"].is_i64());
        values.push(value);
    }
    values.sort();
    let mut expected: Vec<String> = (0..200).map(|i| format!("value {i}")).collect();
    expected.sort();
    assert_eq!(values, expected);

    // One partition only.
    let p0 = ok(
        &[
            "consume",
            "many",
            "--partition",
            "0",
            "--from-beginning",
            "--no-follow",
            "--json",
            "--brokers",
            &b,
        ],
        "",
    );
    for line in p0.lines() {
        let v: Value = serde_json::from_str(line).expect("json");
        assert_eq!(v["partition"], 0);
    }
}

#[test]
fn consume_follows_new_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let b = broker.addr_string();
    ok(
        &[
            "topic",
            "create",
            "tail",
            "--partitions",
            "2",
            "--brokers",
            &b,
        ],
        "",
    );
    ok(&["produce", "tail", "--brokers", &b], "old record\n");

    // Default start is the end: only records produced from now on.
    let mut follower = Command::new(sluice_bin())
        .args(["consume", "tail", "--brokers", &b])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn consume");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    // Give it time to seek to the end before producing.
    std::thread::sleep(Duration::from_millis(1_000));
    ok(&["produce", "tail", "--brokers", &b], "new one\nnew two\n");
    let mut got = vec![
        lines.next().expect("a line").expect("read"),
        lines.next().expect("a line").expect("read"),
    ];
    got.sort();
    assert_eq!(got, vec!["new one".to_string(), "new two".to_string()]);
    // Still following.
    assert!(
        follower.try_wait().expect("wait").is_none(),
        "consume keeps following"
    );
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn errors_read_like_sentences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 1);
    let b = broker.addr_string();

    let run = sluice(&["produce", "nope", "--brokers", &b], "x\n");
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.trim(), "error: unknown topic 'nope'");

    let run = sluice(
        &["consume", "nope", "--from-beginning", "--brokers", &b],
        "",
    );
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.trim(), "error: unknown topic 'nope'");

    ok(
        &["topic", "create", "t", "--partitions", "2", "--brokers", &b],
        "",
    );
    let run = sluice(
        &["produce", "t", "--partition", "5", "--brokers", &b],
        "x\n",
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unknown partition 5"), "{}", run.stderr);

    let run = sluice(
        &["consume", "t", "--format", "{bogus}", "--brokers", &b],
        "",
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unknown field '{bogus}'"),
        "{}",
        run.stderr
    );

    // Nobody listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dead = format!("127.0.0.1:{port}");
    for args in [
        vec!["topic", "list", "--brokers", &dead],
        vec!["produce", "t", "--brokers", &dead],
        vec!["consume", "t", "--brokers", &dead],
    ] {
        let run = sluice(&args, "x\n");
        assert_eq!(run.code, 1, "{args:?}");
        assert_eq!(
            run.stderr.trim(),
            format!("error: broker not reachable at {dead} (connection refused)"),
            "{args:?}"
        );
    }
}

#[test]
fn consume_max_messages_waits_for_them_then_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), 2);
    let b = broker.addr_string();
    ok(
        &[
            "topic",
            "create",
            "wait",
            "--partitions",
            "3",
            "--brokers",
            &b,
        ],
        "",
    );
    // The topic is empty: like Kafka's console consumer, --max-messages waits for the records.
    let mut consumer = Command::new(sluice_bin())
        .args([
            "consume",
            "wait",
            "--from-beginning",
            "--max-messages",
            "2",
            "--brokers",
            &b,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn consume");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        consumer.try_wait().expect("wait").is_none(),
        "consume --max-messages returned before any record arrived"
    );
    ok(
        &["produce", "wait", "--brokers", &b],
        "first\nsecond\nthird\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = consumer.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "consume did not stop after 2 records"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut out = String::new();
    consumer
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in lines {
        assert!(["first", "second", "third"].contains(&line), "{line}");
    }
}
