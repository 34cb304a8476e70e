//! `sluice cluster decommission NODE`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_client::ClientError;

use super::{DEFAULT_BROKERS, connect, run};

/// How often `decommission` asks for progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// `sluice cluster ...`.
#[derive(clap::Args)]
pub(crate) struct ClusterArgs {
    /// Broker addresses, `host:port[,host:port]`.
    #[arg(long, global = true, default_value = DEFAULT_BROKERS)]
    brokers: String,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Move every partition replica off a broker so that it can leave the cluster: the
    /// controller adds a replica on another broker, waits until it is in sync, then drops the
    /// old one (and moves leadership first if needed). The broker gets no new replicas from
    /// then on. Waits until it holds none, printing the progress.
    Decommission {
        /// The broker's node id (as in `--node-id`).
        node: i32,
        /// Start the decommission and return at once (ask again to see the progress).
        #[arg(long)]
        no_wait: bool,
        /// Longest to wait for the replicas to move, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

pub(crate) fn run_cluster(args: ClusterArgs) -> ExitCode {
    run(cluster(args))
}

async fn cluster(args: ClusterArgs) -> Result<(), ClientError> {
    let client = connect(&args.brokers).await?;
    match args.command {
        ClusterCommand::Decommission {
            node,
            no_wait,
            timeout_secs,
        } => {
            let deadline = Instant::now() + Duration::from_secs(timeout_secs);
            let mut last = None;
            loop {
                let remaining = client.decommission_broker(node).await?;
                if last != Some(remaining) {
                    println!("broker {node}: {remaining} partition replicas left to move");
                    last = Some(remaining);
                }
                if remaining == 0 {
                    println!(
                        "broker {node} holds no partition replicas: it can be stopped (it \
                         stays a controller voter)"
                    );
                    return Ok(());
                }
                if no_wait {
                    return Ok(());
                }
                if Instant::now() + PROGRESS_INTERVAL > deadline {
                    return Err(ClientError::Timeout {
                        what: format!(
                            "decommission of broker {node} ({remaining} replicas still to \
                             move; it goes on in the background)"
                        ),
                        after_ms: timeout_secs.saturating_mul(1000),
                    });
                }
                tokio::time::sleep(PROGRESS_INTERVAL).await;
            }
        }
    }
}
