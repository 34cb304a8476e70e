//! `sluice cert ca|node|dev`: the CA and node certificates of the peer transport's mutual TLS
//! (files `ca.pem`, `ca.key`, `node-<id>.pem`, `node-<id>.key`; keys mode 0600). Existing
//! files are never overwritten without `--force`.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_replication::NodeId;
use sluice_replication::cert::{self, DevCa};

/// `sluice cert ...`.
#[derive(clap::Args)]
pub(crate) struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(clap::Subcommand)]
enum CertCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key.
    Ca {
        /// The cert directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate from DIR/ca.pem and DIR/ca.key: DIR/node-N.pem and
    /// DIR/node-N.key (names node-N.sluice.internal, localhost, 127.0.0.1).
    Node {
        /// The cert directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The node id (`sluice serve --node-id`).
        #[arg(long)]
        node_id: NodeId,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// A development cluster in one go: a new CA and the certificates of the given nodes.
    Dev {
        /// The cert directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node ids, comma-separated (e.g. `0,1,2`).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<NodeId>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn run_cert(args: CertArgs) -> ExitCode {
    let written = match args.command {
        CertCommand::Ca { dir, force } => cert::write_ca(&dir, force).map(|(_, files)| files),
        CertCommand::Node {
            dir,
            node_id,
            force,
        } => DevCa::load(&dir).and_then(|ca| cert::write_nodes(&dir, &ca, &[node_id], force)),
        CertCommand::Dev { dir, nodes, force } => cert::write_dev(&dir, &dedup(&nodes), force),
    };
    match written {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The node ids without repeats, in the given order.
fn dedup(nodes: &[NodeId]) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = Vec::with_capacity(nodes.len());
    for &n in nodes {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}
