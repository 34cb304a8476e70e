//! Cluster mode (`sluice serve --cluster ...`): the controller quorum member on shard 0, the
//! broker's heartbeats, and the cluster view every shard installs. Without `--cluster` the
//! broker runs alone and none of this exists (`Shard::view` stays `None`).

use sluice_replication::NodeId;
use sluice_replication::controller::ClusterState;

/// What a shard knows of the cluster: the controller's applied state as this node has it.
/// Shard 0 builds one after every applied change and sends it to every shard
/// (`ShardMsg::ClusterView`); a shard installs it, then applies the partition roles it
/// implies (`crate::replica::apply_view`) and the group coordinators it implies
/// (`crate::group::on_view`).
#[derive(Debug, Clone)]
#[allow(dead_code)] // Built by the cluster-mode wiring (in progress).
pub(crate) struct ClusterView {
    /// This node.
    pub(crate) me: NodeId,
    /// The raft index this view was built at.
    pub(crate) applied_index: u64,
    /// Brokers, topics, assignments, leaders, ISRs and epochs.
    pub(crate) state: ClusterState,
}
