//! Producer ids, allocated by the controller (shard 0) for InitProducerId.
//!
//! Ids are handed out from blocks of [`PRODUCER_ID_BLOCK`]: before the first id of a block is
//! given, the end of the block is written to `meta/producer_ids` (temporary file, fsync,
//! rename, fsync of the directory). After a restart, even after SIGKILL, allocation resumes
//! at the persisted end, so no id is ever given twice; at most one block is skipped.
//!
//! Ids are unique across a cluster: an id is `(node_id << PRODUCER_ID_NODE_SHIFT) | counter`
//! (node id in the high bits, the persisted counter in the low 40), so two nodes never give
//! the same id. With the default node id 0 (a single broker) an id is the plain counter, as
//! before. The node id must be below 2^23 (so ids stay positive) and a node's counter below
//! 2^40; past either, InitProducerId fails with `STORAGE_ERROR` ("exhausted").
//!
//! Epoch bump (KIP-360): an idempotent producer that can no longer know whether a sequence
//! landed (a delivery timeout, a sequence gap) sends InitProducerId with its current id and
//! epoch; the answer is the same id with epoch + 1 (a fresh id at epoch 0 when the epoch
//! would overflow `i16::MAX`), and the producer restarts every partition at sequence 0
//! (the partitions accept a newer epoch from sequence 0, see `producer_state`).
//!
//! The controller remembers the latest epoch of recently initialised ids (at most
//! [`PRODUCER_EPOCHS_MAX`], in memory): asking with an older epoch than the controller knows
//! is refused with `INVALID_PRODUCER_EPOCH` (a stale producer; a client that gets it asks
//! for a fresh id). An epoch newer than the known one is trusted (another node of the
//! cluster may have bumped the id). Epochs are not persisted: after a restart, a re-init is
//! trusted to carry the latest epoch, and the partitions still refuse any batch with an
//! epoch older than the one they have seen (`PRODUCER_FENCED`): they are the real fence.
//! An id of this node's prefix above the persisted counter was never given:
//! `UNKNOWN_PRODUCER_ID`. An id of another node's prefix is bumped in cluster mode (that
//! node allocated it) and refused with `UNKNOWN_PRODUCER_ID` by a single broker.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_proto::protocol::{
    ErrorCode, InitProducerIdRequest, InitProducerIdResponse, NO_PRODUCER_ID,
};

use crate::metadata::meta_dir;

/// Ids reserved (persisted) at a time.
pub(crate) const PRODUCER_ID_BLOCK: i64 = 1000;
/// Most producer ids whose latest epoch the controller remembers (oldest forgotten first).
pub(crate) const PRODUCER_EPOCHS_MAX: usize = 100_000;
/// Bits of a producer id below the node id: a node hands out at most 2^40 ids.
pub(crate) const PRODUCER_ID_NODE_SHIFT: u32 = 40;
/// Largest node id that fits in a positive producer id (`i64` has 63 bits for it).
pub(crate) const PRODUCER_ID_NODE_MAX: u32 = (1 << (63 - PRODUCER_ID_NODE_SHIFT)) - 1;
/// Mask of the counter part of a producer id.
const COUNTER_MASK: i64 = (1 << PRODUCER_ID_NODE_SHIFT) - 1;
/// The file holding the end of the last reserved block, under `meta/`.
const FILE_NAME: &str = "producer_ids";

/// The controller's allocator.
#[derive(Debug)]
pub(crate) struct ProducerIds {
    path: PathBuf,
    /// This node's id: the high bits of every id it gives.
    node_id: u32,
    /// The next counter to give.
    next: i64,
    /// End (exclusive) of the persisted block of counters.
    block_end: i64,
    /// Latest epoch per recently initialised id.
    epochs: HashMap<i64, i16>,
    /// `epochs` keys, oldest first, to bound the map.
    order: VecDeque<i64>,
}

fn response(error: ErrorCode, message: String) -> InitProducerIdResponse {
    InitProducerIdResponse {
        error,
        message,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: -1,
    }
}

impl ProducerIds {
    /// Loads the allocator state of `data_dir` (a fresh one if the file is missing) for node
    /// `node_id`.
    pub(crate) fn load(data_dir: &Path, node_id: u32) -> Result<Self, String> {
        if node_id > PRODUCER_ID_NODE_MAX {
            return Err(format!(
                "node id {node_id} is over {PRODUCER_ID_NODE_MAX}: it does not fit in the \
                 high bits of a producer id"
            ));
        }
        let path = meta_dir(data_dir).join(FILE_NAME);
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("{}: not a producer id: {text:?}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Self {
            path,
            node_id,
            next,
            block_end: next,
            epochs: HashMap::new(),
            order: VecDeque::new(),
        })
    }

    /// Every counter below this may have been given out.
    pub(crate) fn high_mark(&self) -> i64 {
        self.block_end
    }

    /// The id of `counter` on this node.
    fn id_of(&self, counter: i64) -> i64 {
        (i64::from(self.node_id) << PRODUCER_ID_NODE_SHIFT) | counter
    }

    fn persist(&self, end: i64) -> std::io::Result<()> {
        let dir = self.path.parent().expect("the file is under meta/");
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(format!("{end}\n").as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    fn remember(&mut self, id: i64, epoch: i16) {
        if self.epochs.insert(id, epoch).is_none() {
            self.order.push_back(id);
            while self.order.len() > PRODUCER_EPOCHS_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.epochs.remove(&old);
                }
            }
        }
    }

    fn allocate(&mut self) -> Result<i64, String> {
        if self.next >= self.block_end {
            let end = self
                .next
                .checked_add(PRODUCER_ID_BLOCK)
                .filter(|end| *end <= COUNTER_MASK + 1)
                .ok_or("producer ids of this node exhausted (2^40 given)")?;
            self.persist(end)
                .map_err(|e| format!("cannot persist {}: {e}", self.path.display()))?;
            self.block_end = end;
        }
        let id = self.id_of(self.next);
        self.next += 1;
        Ok(id)
    }

    /// Answers an InitProducerId request: a fresh id, or an epoch bump (see the module
    /// docs). `cluster`: the broker runs in a cluster, so ids of other nodes are bumped.
    pub(crate) fn init(
        &mut self,
        request: &InitProducerIdRequest,
        cluster: bool,
    ) -> InitProducerIdResponse {
        if let Some(id) = &request.transactional_id {
            return response(
                ErrorCode::INVALID_REQUEST,
                format!("transactions are not supported (transactional_id {id:?}); send null"),
            );
        }
        let fresh = |this: &mut Self| match this.allocate() {
            Ok(id) => {
                this.remember(id, 0);
                tracing::debug!(producer_id = id, "producer id allocated");
                InitProducerIdResponse {
                    error: ErrorCode::NONE,
                    message: String::new(),
                    producer_id: id,
                    producer_epoch: 0,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot allocate a producer id");
                response(ErrorCode::STORAGE_ERROR, e)
            }
        };
        let (id, epoch) = (request.producer_id, request.producer_epoch);
        if id == NO_PRODUCER_ID {
            if epoch != -1 {
                return response(
                    ErrorCode::INVALID_REQUEST,
                    format!("producer_epoch must be -1 without a producer id, not {epoch}"),
                );
            }
            return fresh(self);
        }
        let node = id >> PRODUCER_ID_NODE_SHIFT;
        let ours = node == i64::from(self.node_id);
        if id < 0 || (ours && (id & COUNTER_MASK) >= self.block_end) || (!ours && !cluster) {
            return response(
                ErrorCode::UNKNOWN_PRODUCER_ID,
                format!("producer id {id} was never given by this broker"),
            );
        }
        if epoch < 0 {
            return response(
                ErrorCode::INVALID_PRODUCER_EPOCH,
                format!("producer epoch {epoch} of producer {id} is not valid"),
            );
        }
        if let Some(&known) = self.epochs.get(&id)
            && known > epoch
        {
            tracing::info!(
                producer_id = id,
                epoch,
                known,
                "InitProducerId with a stale epoch refused"
            );
            return response(
                ErrorCode::INVALID_PRODUCER_EPOCH,
                format!("producer {id} is at epoch {known}, not {epoch}: stale epoch"),
            );
        }
        if epoch == i16::MAX {
            // Epochs exhausted: a new id (Kafka does the same).
            return fresh(self);
        }
        self.remember(id, epoch + 1);
        tracing::info!(producer_id = id, epoch = epoch + 1, "producer epoch bumped");
        InitProducerIdResponse {
            error: ErrorCode::NONE,
            message: String::new(),
            producer_id: id,
            producer_epoch: epoch + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_id() -> InitProducerIdRequest {
        InitProducerIdRequest {
            transactional_id: None,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: -1,
        }
    }

    fn bump(id: i64, epoch: i16) -> InitProducerIdRequest {
        InitProducerIdRequest {
            producer_id: id,
            producer_epoch: epoch,
            ..new_id()
        }
    }

    #[test]
    fn ids_survive_a_reload_and_epochs_bump() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ids = ProducerIds::load(dir.path(), 0).expect("load");
        let a = ids.init(&new_id(), false);
        let b = ids.init(&new_id(), false);
        assert_eq!((a.producer_id, b.producer_id), (0, 1));
        let bumped = ids.init(&bump(0, 0), false);
        assert_eq!(
            (bumped.error, bumped.producer_id, bumped.producer_epoch),
            (ErrorCode::NONE, 0, 1)
        );
        let again = ids.init(&bump(0, 1), false);
        assert_eq!((again.error, again.producer_epoch), (ErrorCode::NONE, 2));
        // A stale epoch (a zombie, or a bump whose answer was lost) is refused.
        let stale = ids.init(&bump(0, 1), false);
        assert_eq!(stale.error, ErrorCode::INVALID_PRODUCER_EPOCH);
        assert!(stale.message.contains("epoch 2"), "{}", stale.message);
        // A newer epoch than known is trusted (bumped elsewhere, or known before a restart).
        let newer = ids.init(&bump(0, 7), false);
        assert_eq!((newer.error, newer.producer_epoch), (ErrorCode::NONE, 8));
        // The epoch would overflow: a fresh id instead.
        let overflow = ids.init(&bump(1, i16::MAX), false);
        assert_eq!(
            (
                overflow.error,
                overflow.producer_id,
                overflow.producer_epoch
            ),
            (ErrorCode::NONE, 2, 0)
        );
        let negative = ids.init(&bump(1, -3), false);
        assert_eq!(negative.error, ErrorCode::INVALID_PRODUCER_EPOCH);
        let unknown = ids.init(&bump(5000, 0), false);
        assert_eq!(unknown.error, ErrorCode::UNKNOWN_PRODUCER_ID);
        let txn = ids.init(
            &InitProducerIdRequest {
                transactional_id: Some("t".into()),
                ..new_id()
            },
            false,
        );
        assert_eq!(txn.error, ErrorCode::INVALID_REQUEST);
        // A restart resumes past the persisted block.
        let mut again = ProducerIds::load(dir.path(), 0).expect("reload");
        assert_eq!(again.init(&new_id(), false).producer_id, PRODUCER_ID_BLOCK);
        std::fs::write(meta_dir(dir.path()).join(FILE_NAME), "x").expect("write");
        assert!(ProducerIds::load(dir.path(), 0).is_err());
    }

    #[test]
    fn ids_carry_the_node_id_and_are_unique_across_nodes() {
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut allocators: Vec<ProducerIds> = dirs
            .iter()
            .zip([0u32, 1, 2])
            .map(|(d, node)| ProducerIds::load(d.path(), node).expect("load"))
            .collect();
        for (node, ids) in allocators.iter_mut().enumerate() {
            for n in 0..5 {
                let r = ids.init(&new_id(), true);
                assert_eq!(r.error, ErrorCode::NONE);
                assert_eq!(r.producer_id, ((node as i64) << 40) | n);
                assert!(seen.insert(r.producer_id), "ids are unique");
            }
        }
        let node1_id = 1i64 << 40;
        // Node 2 bumps an id node 1 gave (cluster mode), then node 1 sees the newer epoch.
        let r = allocators[2].init(&bump(node1_id, 0), true);
        assert_eq!(
            (r.error, r.producer_id, r.producer_epoch),
            (ErrorCode::NONE, node1_id, 1)
        );
        let r = allocators[1].init(&bump(node1_id, 1), true);
        assert_eq!((r.error, r.producer_epoch), (ErrorCode::NONE, 2));
        // A single broker does not know other nodes' ids.
        let r = allocators[2].init(&bump(node1_id, 2), false);
        assert_eq!(r.error, ErrorCode::UNKNOWN_PRODUCER_ID);
        // An id of node 1's prefix above its counter was never given.
        let r = allocators[1].init(&bump(node1_id | 4000, 0), true);
        assert_eq!(r.error, ErrorCode::UNKNOWN_PRODUCER_ID);
        // Node ids that do not fit are refused at load.
        let err = ProducerIds::load(dirs[0].path(), PRODUCER_ID_NODE_MAX + 1).expect_err("big");
        assert!(err.contains("does not fit"), "{err}");
        let top = ProducerIds::load(dirs[0].path(), PRODUCER_ID_NODE_MAX)
            .expect("largest node id")
            .id_of(COUNTER_MASK);
        assert_eq!(top, i64::MAX, "the largest id is still positive");
    }
}
