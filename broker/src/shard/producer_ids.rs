//! Producer ids, allocated by the controller (shard 0) for InitProducerId.
//!
//! Ids are handed out from blocks of [`PRODUCER_ID_BLOCK`]: before the first id of a block is
//! given, the end of the block is written to `meta/producer_ids` (temporary file, fsync,
//! rename, fsync of the directory). After a restart, even after SIGKILL, allocation resumes
//! at the persisted end, so no id is ever given twice; at most one block is skipped.
//!
//! The controller also remembers the latest epoch of recently initialised ids (at most
//! [`PRODUCER_EPOCHS_MAX`], in memory): re-initialising an id with its current epoch bumps
//! it (the new epoch fences the old producer at every partition it writes to); asking with
//! an older epoch than the controller knows is refused with `PRODUCER_FENCED`. Epochs are
//! not persisted: after a restart, a re-init is trusted to carry the latest epoch, and the
//! partitions still refuse any batch with an epoch older than the one they have seen.

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
/// The file holding the end of the last reserved block, under `meta/`.
const FILE_NAME: &str = "producer_ids";

/// The controller's allocator.
#[derive(Debug)]
pub(crate) struct ProducerIds {
    path: PathBuf,
    /// The next id to give.
    next: i64,
    /// End (exclusive) of the persisted block.
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
    /// Loads the allocator state of `data_dir` (a fresh one if the file is missing).
    pub(crate) fn load(data_dir: &Path) -> Result<Self, String> {
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
            next,
            block_end: next,
            epochs: HashMap::new(),
            order: VecDeque::new(),
        })
    }

    /// Every id below this may have been given out.
    pub(crate) fn high_mark(&self) -> i64 {
        self.block_end
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
                .ok_or("producer ids exhausted")?;
            self.persist(end)
                .map_err(|e| format!("cannot persist {}: {e}", self.path.display()))?;
            self.block_end = end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }

    /// Answers an InitProducerId request.
    pub(crate) fn init(&mut self, request: &InitProducerIdRequest) -> InitProducerIdResponse {
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
        if id < 0 || id >= self.block_end {
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
            && known != epoch
        {
            return response(
                ErrorCode::PRODUCER_FENCED,
                format!("producer {id} is at epoch {known}, not {epoch}: fenced"),
            );
        }
        if epoch == i16::MAX {
            // Epochs exhausted: a new id (Kafka does the same).
            return fresh(self);
        }
        self.remember(id, epoch + 1);
        tracing::debug!(producer_id = id, epoch = epoch + 1, "producer epoch bumped");
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

    #[test]
    fn ids_survive_a_reload_and_epochs_bump() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ids = ProducerIds::load(dir.path()).expect("load");
        let a = ids.init(&new_id());
        let b = ids.init(&new_id());
        assert_eq!((a.producer_id, b.producer_id), (0, 1));
        let bumped = ids.init(&InitProducerIdRequest {
            producer_id: 0,
            producer_epoch: 0,
            ..new_id()
        });
        assert_eq!((bumped.error, bumped.producer_epoch), (ErrorCode::NONE, 1));
        let stale = ids.init(&InitProducerIdRequest {
            producer_id: 0,
            producer_epoch: 0,
            ..new_id()
        });
        assert_eq!(stale.error, ErrorCode::PRODUCER_FENCED);
        let unknown = ids.init(&InitProducerIdRequest {
            producer_id: 5000,
            producer_epoch: 0,
            ..new_id()
        });
        assert_eq!(unknown.error, ErrorCode::UNKNOWN_PRODUCER_ID);
        let txn = ids.init(&InitProducerIdRequest {
            transactional_id: Some("t".into()),
            ..new_id()
        });
        assert_eq!(txn.error, ErrorCode::INVALID_REQUEST);
        // A restart resumes past the persisted block.
        let mut again = ProducerIds::load(dir.path()).expect("reload");
        assert_eq!(again.init(&new_id()).producer_id, PRODUCER_ID_BLOCK);
        std::fs::write(meta_dir(dir.path()).join(FILE_NAME), "x").expect("write");
        assert!(ProducerIds::load(dir.path()).is_err());
    }
}
