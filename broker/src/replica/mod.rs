//! Partition replication between brokers (cluster mode only).

use std::rc::Rc;
use std::sync::Arc;

use crate::cluster::ClusterView;
use crate::shard::Shard;

/// Applies the partition roles `view` gives this shard's partitions (leader or follower,
/// epochs, ISR). Integration seam: the replication work fills it in.
pub(crate) async fn apply_view(shard: &Rc<Shard>, view: &Arc<ClusterView>) {
    let _ = (shard, view);
}

/// Waits until the records below `end` are committed, at most until `deadline`: durable
/// here when the broker runs alone; in cluster mode also below the partition's high
/// watermark (held by the in-sync replicas). What acks=all producers and the group
/// coordinator's writes wait for.
#[allow(dead_code)] // Used by produce and the group coordinator once cluster mode lands.
pub(crate) async fn wait_committed(
    p: &crate::shard::partition::Partition,
    end: sluice_proto::Offset,
    deadline: std::time::Instant,
) -> Result<(), (sluice_proto::protocol::ErrorCode, String)> {
    let remaining = deadline.saturating_duration_since(std::time::Instant::now());
    compio::time::timeout(remaining, p.log.durable_at(end))
        .await
        .map_err(|_| {
            (
                sluice_proto::protocol::ErrorCode::REQUEST_TIMED_OUT,
                "not acknowledged within the request timeout".to_string(),
            )
        })?
        .map_err(|e| crate::shard::partition::log_error(&p.topic, p.index, &e))
}
