//! The Sluice broker (stub, being written).

use std::process::ExitCode;

/// `sluice serve` arguments.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Runs `sluice serve`.
pub fn serve_main(_args: ServeArgs) -> ExitCode {
    ExitCode::FAILURE
}
