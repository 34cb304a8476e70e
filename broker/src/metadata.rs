//! Topic metadata: the topics, their partition counts and configs. Shard 0 (the controller)
//! owns the master copy and persists it to `DATA_DIR/meta/topics.json` atomically (write a
//! temporary file, fsync, rename, fsync the directory); every shard reads an immutable
//! snapshot (`Arc<Metadata>`) that the controller broadcasts after each change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_proto::protocol::{PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_BYTES_MAX};

use crate::topic_config::{self, TopicConfigs};

/// Version of the `topics.json` layout.
pub(crate) const METADATA_VERSION: u32 = 1;

/// One topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TopicMeta {
    /// Partition count.
    pub(crate) partitions: u32,
    /// Configs set on the topic.
    pub(crate) configs: TopicConfigs,
}

/// Every topic, by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Metadata {
    /// Layout version.
    pub(crate) version: u32,
    /// Topics by name.
    pub(crate) topics: BTreeMap<String, TopicMeta>,
}

/// Metadata that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetadataError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid metadata.
    #[error("invalid metadata file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// `DATA_DIR/meta`.
pub(crate) fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("meta")
}

/// `DATA_DIR/topics/<topic>/<partition>`.
pub(crate) fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topic_dir(data_dir, topic).join(partition.to_string())
}

/// `DATA_DIR/topics/<topic>`.
pub(crate) fn topic_dir(data_dir: &Path, topic: &str) -> PathBuf {
    data_dir.join("topics").join(topic)
}

/// Checks a topic name: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..` (it is a
/// directory name).
pub(crate) fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} bytes, not {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is reserved"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has {c:?}: only [a-zA-Z0-9._-] are allowed"
        ));
    }
    Ok(())
}

/// Checks a partition count.
pub(crate) fn validate_partitions(partitions: u32) -> Result<(), String> {
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
        return Err(format!(
            "partition count must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, not {partitions}"
        ));
    }
    Ok(())
}

impl Metadata {
    /// Loads `DATA_DIR/meta/topics.json`; empty metadata if there is none yet.
    pub(crate) fn load(data_dir: &Path) -> Result<Metadata, MetadataError> {
        let path = meta_dir(data_dir).join("topics.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Metadata {
                    version: METADATA_VERSION,
                    topics: BTreeMap::new(),
                });
            }
            Err(source) => {
                return Err(MetadataError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let invalid = |reason: String| MetadataError::Invalid {
            path: path.clone(),
            reason,
        };
        let meta: Metadata = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if meta.version != METADATA_VERSION {
            return Err(invalid(format!(
                "version {} (this build reads {METADATA_VERSION})",
                meta.version
            )));
        }
        for (name, topic) in &meta.topics {
            validate_topic_name(name).map_err(&invalid)?;
            validate_partitions(topic.partitions).map_err(&invalid)?;
            topic_config::log_config(&topic.configs)
                .map_err(|e| invalid(format!("topic {name}: {e}")))?;
        }
        Ok(meta)
    }

    /// Writes the metadata atomically. Blocking file I/O: it runs on the controller for
    /// admin requests only, which are rare and not on the data path.
    pub(crate) fn persist(&self, data_dir: &Path) -> Result<(), MetadataError> {
        let dir = meta_dir(data_dir);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| MetadataError::Io { op, path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let tmp = dir.join("topics.json.tmp");
        let path = dir.join("topics.json");
        let bytes = serde_json::to_vec_pretty(self).expect("metadata serializes");
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(&bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("orders.v1_EU-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert!(validate_partitions(0).is_err());
        assert!(validate_partitions(PARTITIONS_PER_TOPIC_MAX + 1).is_err());
    }

    #[test]
    fn persists_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Metadata::load(dir.path()).expect("empty").topics.is_empty());
        let mut meta = Metadata::load(dir.path()).expect("empty");
        meta.topics.insert(
            "t".into(),
            TopicMeta {
                partitions: 3,
                configs: [("retention.ms".to_string(), "-1".to_string())].into(),
            },
        );
        meta.persist(dir.path()).expect("persist");
        assert_eq!(Metadata::load(dir.path()).expect("load"), meta);
        std::fs::write(meta_dir(dir.path()).join("topics.json"), "{").expect("write");
        assert!(Metadata::load(dir.path()).is_err());
    }
}
