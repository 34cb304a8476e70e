//! `sluice-bench suite`: the standard suite of docs/BENCHMARKS.md in one command.
//!
//! Each round measures the limits (fio, iperf3), then runs every standard configuration
//! against a broker of its own (`--spawn`, data under `--data-dir`):
//!
//! | name | what |
//! |---|---|
//! | p1-acks1 | 1 producer, 1 partition, 1 KiB records, 1000 per batch, acks=1, closed loop |
//! | p1-acksall | the same with acks=all (durable: acknowledged after group commit's fdatasync) |
//! | p16 | 4 producers, 16 partitions, 100 records per batch, acks=all |
//! | p1000 | the same over 1000 partitions |
//! | open50 | p1-acksall's shape, open loop at 50% of this round's p1-acksall records/s |
//! | tail50 | e2e: open50's load with a consumer tailing the partition |
//! | catchup | consume: a 1-partition topic filled first, read from the beginning |
//!
//! Rounds are interleaved so that every figure sees the same (shared, noisy) machine; the
//! result of each configuration is its median round (by records/s; by p99.9 for open loop).
//! Writes every run's JSON, `limits.json`, `table.md` (figures with their ratios to the
//! limits) and `latency.png`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::limits::{self, Limits};
use crate::load::{self, LoadArgs, LoadOutput, Mode};

/// Default bytes of values per closed-loop run (`SUITE_TOTAL`).
const TOTAL_DEFAULT: &str = "1GiB";
/// Default rounds (`SUITE_ROUNDS`).
const ROUNDS_DEFAULT: usize = 3;
/// Default seconds of each open-loop run after its warm-up (`SUITE_OPEN_SECS`).
const OPEN_SECS_DEFAULT: u64 = 20;
/// Warm-up of open-loop runs, seconds.
const OPEN_WARMUP_S: u64 = 2;
/// Default linger of the open-loop runs (`SUITE_OPEN_LINGER_MS`): 2 ms, the bench's default.
/// Linger 0 (a batch goes as soon as its partition has an in-flight slot, and keeps filling
/// while it has none) sends about ten times as many requests at 200k records/s; where the
/// load generator shares the broker's two cores that CPU cost made the tail worse, and a
/// tailing consumer fall seconds behind, in the runs of 2026-12-01.
const OPEN_LINGER_MS_DEFAULT: u64 = 2;
/// Most rounds.
const ROUNDS_MAX: usize = 20;

/// Arguments of `suite`. Sizes come from the environment: `SUITE_TOTAL` (bytes per
/// closed-loop run, default 1GiB), `SUITE_ROUNDS` (3), `SUITE_OPEN_SECS` (20),
/// `SUITE_FIO_SIZE` (1GiB), `SUITE_SHARDS` (the broker's default), `SUITE_OPEN_LINGER_MS` (2).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Args {
    /// Where results go.
    #[arg(long, default_value = "target/bench/suite")]
    out: PathBuf,
    /// The disk to measure: brokers' data directories and fio's file go here.
    #[arg(long, default_value = "bench-data")]
    data_dir: PathBuf,
    /// The `sluice` binary (default: next to this one).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
}

struct Config {
    name: &'static str,
    mode: Mode,
    flags: Vec<String>,
    open: bool,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

/// Runs the suite.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let total = env_or("SUITE_TOTAL", TOTAL_DEFAULT);
    let rounds: usize = env_or("SUITE_ROUNDS", &ROUNDS_DEFAULT.to_string())
        .parse()
        .map_err(|_| "SUITE_ROUNDS must be a number")?;
    if !(1..=ROUNDS_MAX).contains(&rounds) {
        return Err(format!("SUITE_ROUNDS must be 1..={ROUNDS_MAX}"));
    }
    let open_secs: u64 = env_or("SUITE_OPEN_SECS", &OPEN_SECS_DEFAULT.to_string())
        .parse()
        .map_err(|_| "SUITE_OPEN_SECS must be a number of seconds")?;
    let open_linger: u64 = env_or("SUITE_OPEN_LINGER_MS", &OPEN_LINGER_MS_DEFAULT.to_string())
        .parse()
        .map_err(|_| "SUITE_OPEN_LINGER_MS must be a number of milliseconds")?;
    let fio_size = crate::units::parse_bytes(&env_or("SUITE_FIO_SIZE", "1GiB"))?;
    let shards = std::env::var("SUITE_SHARDS").ok();
    std::fs::create_dir_all(&args.out)
        .and_then(|()| std::fs::create_dir_all(&args.data_dir))
        .map_err(|e| format!("cannot create output or data dir: {e}"))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.data_dir.display()))?;

    let mut spawn = vec![
        "--spawn".to_string(),
        "--quiet".into(),
        "--json".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    if let Some(bin) = &args.sluice_bin {
        spawn.extend(["--sluice-bin".into(), bin.display().to_string()]);
    }
    if let Some(shards) = &shards {
        spawn.extend(["--shards".into(), shards.clone()]);
    }
    let one = flags(&[
        "--partitions",
        "1",
        "--producers",
        "1",
        "--record-bytes",
        "1KiB",
        "--batch-records",
        "1000",
        // 1000 records of 1 KiB and their framing exceed the default 1 MiB batch limit.
        "--config",
        "max.message.bytes=2097152",
    ]);
    let many = |partitions: &str| {
        flags(&[
            "--partitions",
            partitions,
            "--producers",
            "4",
            "--record-bytes",
            "1KiB",
            "--batch-records",
            "100",
            "--acks",
            "all",
            "--total-bytes",
            &total,
        ])
    };
    let closed: Vec<Config> = vec![
        Config {
            name: "p1-acks1",
            mode: Mode::Produce,
            flags: [
                one.clone(),
                flags(&["--acks", "1", "--total-bytes", &total]),
            ]
            .concat(),
            open: false,
        },
        Config {
            name: "p1-acksall",
            mode: Mode::Produce,
            flags: [
                one.clone(),
                flags(&["--acks", "all", "--total-bytes", &total]),
            ]
            .concat(),
            open: false,
        },
        Config {
            name: "p16",
            mode: Mode::Produce,
            flags: many("16"),
            open: false,
        },
        Config {
            name: "p1000",
            mode: Mode::Produce,
            flags: many("1000"),
            open: false,
        },
        Config {
            name: "catchup",
            mode: Mode::Consume,
            flags: [
                one.clone(),
                flags(&["--acks", "1", "--total-bytes", &total]),
            ]
            .concat(),
            open: false,
        },
    ];

    let mut all_limits: Vec<Limits> = Vec::new();
    // results[name] = one output per round.
    let mut results: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |name: &'static str, v: Value| match results.iter_mut().find(|r| r.0 == name) {
        Some(r) => r.1.push(v),
        None => results.push((name, vec![v])),
    };
    for round in 1..=rounds {
        let dir = args.out.join(format!("round-{round}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        eprintln!("== round {round}/{rounds}: limits");
        let l = limits::measure(&data_dir, fio_size);
        write_json(&dir.join("limits.json"), &l)?;
        all_limits.push(l);
        let mut p1_all_rate = None;
        for config in &closed {
            let out = run_one(config, &spawn, &dir)?;
            if config.name == "p1-acksall" {
                p1_all_rate = Some(out.records_per_s);
            }
            push(
                config.name,
                serde_json::to_value(&out).map_err(|e| e.to_string())?,
            );
        }
        let rate = p1_all_rate.unwrap_or(1000.0) * 0.5;
        let rate_s = format!("{rate:.0}");
        let duration = open_secs.to_string();
        let warmup = OPEN_WARMUP_S.to_string();
        let linger = open_linger.to_string();
        let open_flags = [
            one.clone(),
            flags(&[
                "--linger-ms",
                &linger,
                "--acks",
                "all",
                "--rate",
                &rate_s,
                "--duration",
                &duration,
                "--warmup",
                &warmup,
            ]),
        ]
        .concat();
        for config in [
            Config {
                name: "open50",
                mode: Mode::Produce,
                flags: open_flags.clone(),
                open: true,
            },
            Config {
                name: "tail50",
                mode: Mode::E2e,
                flags: open_flags.clone(),
                open: true,
            },
        ] {
            let out = run_one(&config, &spawn, &dir)?;
            push(
                config.name,
                serde_json::to_value(&out).map_err(|e| e.to_string())?,
            );
        }
    }

    // Medians.
    let limits = median_limits(&all_limits);
    write_json(&args.out.join("limits.json"), &limits)?;
    let mut medians: Vec<(&'static str, Value)> = Vec::new();
    for (name, runs) in &results {
        let open = name.ends_with("50");
        let key = if open { "p999_us" } else { "records_per_s" };
        let mut sorted = runs.clone();
        sorted.sort_by(|a, b| {
            let f = |v: &Value| v.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            f(a).total_cmp(&f(b))
        });
        let median = sorted[sorted.len() / 2].clone();
        write_json(&args.out.join(format!("{name}.json")), &median)?;
        medians.push((name, median));
    }
    let table = table(&limits, &medians, &results, rounds, &total, open_secs);
    std::fs::write(args.out.join("table.md"), &table).map_err(|e| e.to_string())?;
    // Every run gets a bar; catchup has no latency line (it measures no acknowledgements).
    let plotted: Vec<PathBuf> = medians
        .iter()
        .map(|(n, _)| args.out.join(format!("{n}.json")))
        .collect();
    crate::plot::plot_files(
        &plotted,
        &args.out.join("latency.png"),
        "sluice-bench suite (median rounds)",
    )?;
    println!("{table}");
    eprintln!(
        "wrote {}/{{*.json, table.md, latency.png}}",
        args.out.display()
    );
    Ok(())
}

fn run_one(config: &Config, spawn: &[String], dir: &Path) -> Result<LoadOutput, String> {
    let mut f = config.flags.clone();
    f.extend(spawn.iter().cloned());
    f.extend([
        "--label".to_string(),
        config.name.to_string(),
        "--topic".into(),
        format!("suite-{}", config.name),
    ]);
    let args = LoadArgs::from_flags(f)?;
    let out = load::run(config.mode, &args).map_err(|e| format!("{}: {e}", config.name))?;
    eprintln!(
        "   {:<11} {:>8.1} MB/s {:>9.0} records/s  p50 {:>7} µs  p99.9 {:>7} µs  p99.99 {:>7} µs  steal {}%{}{}",
        config.name,
        out.mb_per_s,
        out.records_per_s,
        out.p50_us.map_or("-".into(), |v| v.to_string()),
        out.p999_us.map_or("-".into(), |v| v.to_string()),
        out.p9999_us.map_or("-".into(), |v| v.to_string()),
        out.machine_cpu_steal_pct
            .map_or("-".into(), |v| format!("{v:.1}")),
        out.e2e_p999_us
            .map_or(String::new(), |v| format!("  e2e p99.9 {v} µs")),
        match out.rate_reached {
            Some(false) if config.open => "  (target rate NOT reached)",
            _ => "",
        }
    );
    if out.errors > 0 {
        return Err(format!("{}: {} records failed", config.name, out.errors));
    }
    write_json(&dir.join(format!("{}.json", config.name)), &out)?;
    Ok(out)
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), String> {
    let text = serde_json::to_string(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn median_limits(all: &[Limits]) -> Limits {
    let m = |f: fn(&Limits) -> Option<f64>| median(all.iter().filter_map(f).collect());
    Limits {
        disk_seq_write_mb_per_s: m(|l| l.disk_seq_write_mb_per_s),
        fdatasync_p50_us: m(|l| l.fdatasync_p50_us),
        fdatasync_p99_us: m(|l| l.fdatasync_p99_us),
        fdatasync_p999_us: m(|l| l.fdatasync_p999_us),
        loopback_mb_per_s: m(|l| l.loopback_mb_per_s),
        missing: all.first().map(|l| l.missing.clone()).unwrap_or_default(),
        errors: all.iter().flat_map(|l| l.errors.clone()).collect(),
        data_dir: all.first().map(|l| l.data_dir.clone()).unwrap_or_default(),
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => String::new(),
    }
}

fn table(
    limits: &Limits,
    medians: &[(&'static str, Value)],
    results: &[(&'static str, Vec<Value>)],
    rounds: usize,
    total: &str,
    open_secs: u64,
) -> String {
    let mut t = String::new();
    let disk = limits.disk_seq_write_mb_per_s;
    let net = limits.loopback_mb_per_s;
    let fsync = limits.fdatasync_p50_us;
    t += &format!(
        "Median of {rounds} interleaved rounds; {total} of 1 KiB values per closed-loop run, \
         {open_secs} s (+{OPEN_WARMUP_S} s warm-up) per open-loop run; MB = 10^6 bytes of values; \
         latency in µs.\n\n"
    );
    t += &format!(
        "Limits in the same run (medians): fio 1 MiB O_DIRECT sequential write **{} MB/s**, \
         4 KiB write + fdatasync p50 **{} µs** / p99 **{} µs** / p99.9 **{} µs**, iperf3 loopback **{} MB/s**.{}\n\n",
        cell(disk, 0),
        cell(fsync, 0),
        cell(limits.fdatasync_p99_us, 0),
        cell(limits.fdatasync_p999_us, 0),
        cell(net, 0),
        if limits.missing.is_empty() {
            String::new()
        } else {
            format!(" Missing tools: {}.", limits.missing.join(", "))
        }
    );
    t += "| run | partitions | acks | loop | MB/s | records/s | p50 | p99 | p99.9 | p99.99 | max | \
          e2e p99.9 | bench CPU s/GB | broker CPU s/GB | broker peak RSS MiB | machine busy / stolen % | ÷ disk | ÷ loopback | \
          p99.9 ÷ fdatasync p50 |\n";
    t += "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (name, v) in medians {
        let loop_mode = match v.get("loop_mode").and_then(Value::as_str) {
            Some("open") => format!(
                "open {} /s{}",
                cell(num(v, "target_rate"), 0),
                if v.get("rate_reached") == Some(&Value::Bool(false)) {
                    " (NOT reached)"
                } else {
                    ""
                }
            ),
            _ => "closed".into(),
        };
        let bench_kind = v.get("bench").and_then(Value::as_str).unwrap_or("");
        let acks = if bench_kind == "consume" {
            String::new()
        } else {
            v.get("acks")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        t += &format!(
            "| {name} ({bench_kind}) | {} | {acks} | {loop_mode} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
            cell(num(v, "partitions"), 0),
            cell(num(v, "mb_per_s"), 0),
            cell(num(v, "records_per_s"), 0),
            cell(num(v, "p50_us"), 0),
            cell(num(v, "p99_us"), 0),
            cell(num(v, "p999_us"), 0),
            cell(num(v, "p9999_us"), 0),
            cell(num(v, "max_us"), 0),
            cell(num(v, "e2e_p999_us"), 0),
            cell(num(v, "bench_cpu_s_per_gb"), 1),
            cell(num(v, "broker_cpu_s_per_gb"), 1),
            cell(num(v, "broker_peak_rss_bytes").map(|b| b / 1_048_576.0), 0),
            cell(num(v, "machine_cpu_busy_pct"), 0),
            cell(num(v, "machine_cpu_steal_pct"), 1),
            ratio(num(v, "mb_per_s"), disk),
            ratio(num(v, "mb_per_s"), net),
            ratio(num(v, "p999_us"), fsync),
        );
    }
    let get = |name: &str, key: &str| {
        medians
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| num(v, key))
    };
    t += "\nTargets of issue 4:\n\n| target | figure | verdict |\n|---|---|---|\n";
    let durable = get("p1-acksall", "mb_per_s");
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
    let r = durable.zip(disk).map(|(a, b)| a / b);
    t += &format!(
        "| durable produce (acks=all) ≥ 0.8x disk sequential bandwidth | {} MB/s ÷ {} MB/s = {}x | {} |\n",
        cell(durable, 0),
        cell(disk, 0),
        cell(r, 2),
        verdict(r.map(|r| r >= 0.8))
    );
    let p999 = get("open50", "p999_us");
    let r = p999.zip(fsync).map(|(a, b)| a / b);
    t += &format!(
        "| open loop at 50%: p99.9 ≤ 2x fdatasync latency (p50) | p99.9 {} µs ÷ {} µs = {}x (p99.99 {} µs; the load generator's own send delay p99.9 {} µs; vs fdatasync p99 {} µs: {}x; vs fdatasync p99.9 {} µs: {}x) | {} |\n",
        cell(p999, 0),
        cell(fsync, 0),
        cell(r, 2),
        cell(get("open50", "p9999_us"), 0),
        cell(get("open50", "send_delay_p999_us"), 0),
        cell(limits.fdatasync_p99_us, 0),
        ratio(p999, limits.fdatasync_p99_us),
        cell(limits.fdatasync_p999_us, 0),
        ratio(p999, limits.fdatasync_p999_us),
        verdict(r.map(|r| r <= 2.0))
    );
    let (p16, p1000) = (get("p16", "mb_per_s"), get("p1000", "mb_per_s"));
    let r = p1000.zip(p16).map(|(a, b)| a / b);
    t += &format!(
        "| 1000 partitions ≥ 0.8x 16 partitions; broker RSS bounded | {} ÷ {} MB/s = {}x; peak RSS {} MiB (16: {} MiB) | {} |\n",
        cell(p1000, 0),
        cell(p16, 0),
        cell(r, 2),
        cell(
            get("p1000", "broker_peak_rss_bytes").map(|b| b / 1_048_576.0),
            0
        ),
        cell(
            get("p16", "broker_peak_rss_bytes").map(|b| b / 1_048_576.0),
            0
        ),
        verdict(r.map(|r| r >= 0.8))
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_per_gb = get("p1-acksall", "bench_cpu_s_per_gb")
        .zip(get("p1-acksall", "broker_cpu_s_per_gb"))
        .map(|(b, s)| b + s);
    t += &format!(
        "\nCPU ceiling of p1-acksall when the load generator shares the broker's machine: {cores} \
         cores ÷ {} CPU-s/GB (bench + broker) = {} MB/s if every core did nothing else; the \
         durable-produce target needs {} MB/s (0.8x the disk).\n",
        cell(cpu_per_gb, 2),
        cell(cpu_per_gb.map(|c| cores as f64 * 1000.0 / c), 0),
        cell(disk.map(|d| 0.8 * d), 0),
    );
    t += "\nPer-round values:\n\n";
    for (name, runs) in results {
        let mb: Vec<String> = runs.iter().map(|v| cell(num(v, "mb_per_s"), 0)).collect();
        let p999: Vec<String> = runs.iter().map(|v| cell(num(v, "p999_us"), 0)).collect();
        t += &format!(
            "- {name}: MB/s [{}], p99.9 µs [{}]\n",
            mb.join(", "),
            p999.join(", ")
        );
    }
    t
}
