//! `sluice`: the broker (`sluice serve`), its checks (`sluice doctor`) and the command-line
//! client (`topic`, `produce`, `consume`, `group`), and `cert` for the peer certificates.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sluice: a thread-per-core event-streaming broker.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    Serve(sluice_broker::ServeArgs),
    /// Create, list, describe and delete topics.
    Topic(cli::TopicArgs),
    /// Produce records read from stdin, one per line.
    Produce(cli::ProduceArgs),
    /// Consume records and print them.
    Consume(cli::ConsumeArgs),
    /// Consumer groups: list, describe (lag), reset offsets, delete.
    Group(cli::GroupArgs),
    /// Cluster administration: decommission a broker.
    Cluster(cli::ClusterArgs),
    /// Check this machine and the data directory before running a broker.
    Doctor(sluice_broker::DoctorArgs),
    /// Make the CA and node certificates for the peer transport (mutual TLS).
    Cert(cli::CertArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => sluice_broker::serve_main(args),
        Command::Topic(args) => cli::run_topic(args),
        Command::Produce(args) => cli::run_produce(args),
        Command::Consume(args) => cli::run_consume(args),
        Command::Group(args) => cli::run_group(args),
        Command::Cluster(args) => cli::run_cluster(args),
        Command::Doctor(args) => sluice_broker::doctor_main(args),
        Command::Cert(args) => cli::run_cert(args),
    }
}
