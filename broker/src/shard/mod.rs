//! A shard: one pinned thread with its own compio runtime (its own io_uring ring), owning
//! the partitions that map to it, its connections and its budgets. Nothing here is shared
//! with other threads except the inboxes: shards talk only through bounded channels.

pub(crate) mod controller;
pub(crate) mod msg;
pub(crate) mod partition;
pub(crate) mod producer_ids;
pub(crate) mod producer_state;
pub(crate) mod run;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use compio::runtime::JoinHandle;
use sluice_proto::protocol::ShardAddress;

use crate::budget::Budget;
use crate::config::BrokerConfig;
use crate::metadata::Metadata;
use crate::placement::{ShardId, shard_for};
use crate::ticket::Admission;
use msg::ShardMsg;
use partition::Partition;

/// What every shard knows about the others (immutable, shared by all threads).
pub(crate) struct Cluster {
    /// The resolved configuration.
    pub(crate) config: BrokerConfig,
    /// Each shard's inbox.
    pub(crate) inboxes: Vec<flume::Sender<ShardMsg>>,
    /// Port of the shared address.
    pub(crate) shared_port: u16,
    /// Each shard's own address.
    pub(crate) shard_addresses: Vec<ShardAddress>,
}

/// One shard's state; lives on its thread only.
pub(crate) struct Shard {
    /// This shard's index.
    pub(crate) id: ShardId,
    /// The other shards.
    pub(crate) cluster: Arc<Cluster>,
    /// The latest metadata snapshot from the controller.
    pub(crate) metadata: RefCell<Arc<Metadata>>,
    /// The latest cluster view (cluster mode only; `None` when the broker runs alone).
    pub(crate) view: RefCell<Option<Arc<crate::cluster::ClusterView>>>,
    /// This node's controller quorum member (cluster mode, shard 0 only).
    pub(crate) controller: RefCell<Option<Rc<sluice_replication::controller::ControllerDriver>>>,
    /// Partitions this shard owns, by topic and index.
    pub(crate) partitions: RefCell<HashMap<(String, u32), Rc<Partition>>>,
    /// Request bytes in flight.
    pub(crate) request_budget: Budget,
    /// Fetched bytes not yet written.
    pub(crate) fetch_budget: Budget,
    /// Write-buffer chunks mapped by the shard's partition logs.
    pub(crate) write_budget: sluice_storage::WriteBudget,
    /// The shard's tail cache budget, shared by its logs.
    pub(crate) tail_cache: sluice_storage::TailCacheBudget,
    /// Open connections.
    pub(crate) connections: Cell<usize>,
    /// Accept loops, cancelled when draining.
    pub(crate) acceptors: RefCell<Vec<JoinHandle<()>>>,
    /// Background tasks (retention), cancelled when stopping.
    pub(crate) background: RefCell<Vec<JoinHandle<()>>>,
    /// Reader tasks of open connections, cancelled when draining.
    pub(crate) readers: RefCell<HashMap<u64, JoinHandle<()>>>,
    /// Next connection id.
    pub(crate) next_connection: Cell<u64>,
    /// Set once draining starts.
    pub(crate) draining: Cell<bool>,
    /// Dropped when draining starts: long polls waiting on `drained` end at once.
    pub(crate) drain_signal: RefCell<Option<flume::Sender<()>>>,
    /// Disconnects when draining starts.
    pub(crate) drained: flume::Receiver<()>,
    /// Serializes admin changes on the controller (shard 0).
    pub(crate) admin: Admission,
    /// The controller's producer-id allocator (shard 0 only; loaded at the first
    /// InitProducerId).
    pub(crate) producer_ids: RefCell<Option<producer_ids::ProducerIds>>,
    /// The consumer groups this shard coordinates.
    pub(crate) groups: RefCell<crate::group::Coordinator>,
    /// Replication: endpoint, fetchers, ISR checks (cluster mode).
    pub(crate) replication: crate::replica::ShardReplication,
}

impl Shard {
    /// The shard that owns `partition` of `topic`.
    pub(crate) fn owner(&self, topic: &str, partition: u32) -> ShardId {
        shard_for(topic, partition, self.cluster.config.shards)
    }

    /// The current metadata snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Metadata> {
        self.metadata.borrow().clone()
    }

    /// A partition this shard owns.
    pub(crate) fn partition(&self, topic: &str, partition: u32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Delivers `msg` to shard `target`: handled here at once if it is this shard, else
    /// queued in its inbox (waiting while the inbox is full). Messages from one task to one
    /// shard are handled in the order sent.
    pub(crate) async fn send(self: &Rc<Self>, target: ShardId, msg: ShardMsg) {
        if target == self.id {
            self.clone().handle(msg);
            return;
        }
        if self.cluster.inboxes[target].send_async(msg).await.is_err() {
            // Only during shutdown: the reply sender is dropped with the message, so the
            // requester sees a disconnected reply channel.
            tracing::debug!(shard = self.id, target, "inbox closed");
        }
    }
}
