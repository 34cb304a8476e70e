//! The command-line client: `topic`, `produce`, `consume` (stub, being written).

use std::process::ExitCode;

/// `sluice topic ...`.
#[derive(clap::Args)]
pub(crate) struct TopicArgs {}

/// `sluice produce ...`.
#[derive(clap::Args)]
pub(crate) struct ProduceArgs {}

/// `sluice consume ...`.
#[derive(clap::Args)]
pub(crate) struct ConsumeArgs {}

pub(crate) fn run_topic(_args: TopicArgs) -> ExitCode {
    ExitCode::FAILURE
}

pub(crate) fn run_produce(_args: ProduceArgs) -> ExitCode {
    ExitCode::FAILURE
}

pub(crate) fn run_consume(_args: ConsumeArgs) -> ExitCode {
    ExitCode::FAILURE
}
