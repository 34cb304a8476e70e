//! `sluice-bench`: Sluice's bundled load generator and micro-benchmarks.
//!
//! Speed is measured here, never in timed tests. Every subcommand prints a human-readable
//! table, or one JSON object with `--json` (stable keys) for scripts and `docs/BENCHMARKS.md`.

mod group;
mod limits;
mod load;
mod log_append;
mod plot;
mod report;
mod spawn;
mod suite;
mod units;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Sluice load generator and micro-benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append to a fresh partition log on this machine's disk (no broker, no network).
    LogAppend(log_append::Args),
    /// Produce through the native client: throughput and produce-to-ack latency.
    Produce(load::LoadArgs),
    /// Consume from the beginning (catching up; an empty topic is filled first): throughput.
    Consume(load::LoadArgs),
    /// Produce with consumers tailing: produce-to-ack and end-to-end latency.
    E2e(load::LoadArgs),
    /// Draw a percentile-spectrum chart and a throughput bar chart of several runs' JSON.
    Plot(plot::Args),
    /// Measure this machine's ceilings: disk (fio) and loopback TCP (iperf3).
    Limits(limits::Args),
    /// The standard suite of docs/BENCHMARKS.md: limits, then every standard run; JSON,
    /// a Markdown table with ratios to the limits, and the plot.
    Suite(suite::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::LogAppend(args) => log_append::run(args),
        Command::Produce(args) => load::run_cli(load::Mode::Produce, args),
        Command::Consume(args) => load::run_cli(load::Mode::Consume, args),
        Command::E2e(args) => load::run_cli(load::Mode::E2e, args),
        Command::Plot(args) => plot::run(args),
        Command::Limits(args) => limits::run(args),
        Command::Suite(args) => suite::run(args),
    };
    if let Err(err) = result {
        eprintln!("sluice-bench: {err}");
        std::process::exit(1);
    }
}
