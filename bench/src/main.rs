//! `sluice-bench`: Sluice's bundled load generator and micro-benchmarks.
//!
//! Speed is measured here, never in timed tests. Every subcommand prints a human-readable
//! table, or one JSON object with `--json` (stable keys) for scripts and `docs/BENCHMARKS.md`.

mod e2e;
mod log_append;
mod report;
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
    /// Produce to a running broker through the native client; throughput and ack latency.
    Produce(e2e::ProduceArgs),
    /// Consume a topic from the beginning through the native client; throughput.
    Consume(e2e::ConsumeArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::LogAppend(args) => log_append::run(args),
        Command::Produce(args) => e2e::run_produce(args),
        Command::Consume(args) => e2e::run_consume(args),
    };
    if let Err(err) = result {
        eprintln!("sluice-bench: {err}");
        std::process::exit(1);
    }
}
