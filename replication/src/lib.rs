//! The cluster layer of Sluice: how brokers talk to each other.
//!
//! - the peer transport: QUIC (quinn-proto via compio-quic) with mutual TLS, one endpoint per
//!   shard, framed request/response streams;
//! - the controller: cluster metadata replicated with raft-rs;
//! - partition replication: followers fetch from leaders batch by batch.
//!
//! Everything here runs on a shard's compio runtime (`!Send` state, no locks).

pub mod cert;
pub mod controller;
pub mod replica;
pub mod tls;
pub mod transport;

/// A broker's node id in the cluster (`sluice serve --node-id`).
pub type NodeId = u32;
