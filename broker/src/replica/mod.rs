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
