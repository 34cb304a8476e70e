//! The Sluice broker: thread-per-core shards serving the native protocol.
//!
//! `serve` starts it; `shard` is one core's world (its partitions, connections, budgets);
//! `net` reads and writes frames; `handlers` split requests per owning shard and merge the
//! answers; the controller (shard 0) owns topic metadata. See `docs/ARCHITECTURE.md`,
//! "Broker: shards and the data path".

mod budget;
mod cluster;
mod config;
mod doctor;
mod group;
mod handlers;
mod limits;
mod logging;
mod metadata;
mod metrics;
mod net;
mod placement;
mod replica;
mod serve;
mod shard;
mod ticket;
mod topic_config;

pub use config::{LogFormat, ServeArgs};
pub use doctor::{DoctorArgs, doctor_main};
pub use serve::serve_main;
