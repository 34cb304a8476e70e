//! `Client`: the shared handle to a cluster. Owns the connections (one per broker or shard
//! address) and the metadata cache, routes partition requests, and does topic admin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sluice_proto::protocol::{
    ApiKey, ConfigEntry, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeTopicsRequest, DescribeTopicsResponse, ErrorCode,
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopic,
    ListTopicsRequest, ListTopicsResponse, MetadataRequest, MetadataResponse, NewTopic,
    TopicDescription, TopicListing, Wire,
};

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::metadata::{MetadataCache, TopicRoute, host_of};

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

struct ClientInner {
    config: ClientConfig,
    /// The bootstrap address that answered last.
    bootstrap: Mutex<String>,
    /// One slot per address; a slot's lock is held while dialling it, so concurrent users
    /// share one dial and other addresses are not held up.
    pool: Mutex<HashMap<String, Slot>>,
    metadata: RwLock<MetadataCache>,
}

/// A handle to a Sluice cluster. Cheap to clone: clones share connections and metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("brokers", &self.inner.config.brokers)
            .finish()
    }
}

impl Client {
    /// Connects to the first bootstrap broker that answers (TCP and the ApiVersions
    /// handshake). Must run inside a tokio runtime; the client spawns tasks on it.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let first = config.brokers[0].clone();
        let client = Client {
            inner: Arc::new(ClientInner {
                config,
                bootstrap: Mutex::new(first),
                pool: Mutex::new(HashMap::new()),
                metadata: RwLock::new(MetadataCache::default()),
            }),
        };
        client.bootstrap_connection().await?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Creates a topic with `partitions` partitions and the given configs.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<(), ClientError> {
        let request = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.to_owned(),
                partitions,
                configs: configs
                    .iter()
                    .map(|(k, v)| ConfigEntry {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            }],
            validate_only: false,
        };
        let response: CreateTopicsResponse = self.admin(ApiKey::CreateTopics, &request).await?;
        self.forget_topic(name);
        topic_result(
            response
                .topics
                .iter()
                .map(|t| (&t.name, t.error, &t.message)),
            name,
        )
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicsRequest {
            names: vec![name.to_owned()],
        };
        let response: DeleteTopicsResponse = self.admin(ApiKey::DeleteTopics, &request).await?;
        self.forget_topic(name);
        topic_result(
            response
                .topics
                .iter()
                .map(|t| (&t.name, t.error, &t.message)),
            name,
        )
    }

    /// Every topic with its partition count.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>, ClientError> {
        let response: ListTopicsResponse = self
            .admin(ApiKey::ListTopics, &ListTopicsRequest {})
            .await?;
        Ok(response.topics)
    }

    /// A topic's configs (defaults included) and its partitions with their offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let request = DescribeTopicsRequest {
            names: Some(vec![name.to_owned()]),
        };
        let response: DescribeTopicsResponse = self.admin(ApiKey::DescribeTopics, &request).await?;
        let Some(topic) = response.topics.into_iter().find(|t| t.name == name) else {
            return Err(ClientError::UnknownTopic {
                topic: name.to_owned(),
            });
        };
        if topic.error != ErrorCode::NONE {
            return Err(ClientError::from_code(topic.error, &topic.message, name));
        }
        Ok(topic)
    }

    /// How many partitions a topic has (from the metadata cache when known).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let route = self.topic_route(topic).await?;
        Ok(u32::try_from(route.partitions.len()).expect("partition count is a u32 on the wire"))
    }

    /// The offset for `timestamp` (ms) in one partition: the first record at or after it, or
    /// the end. [`sluice_proto::protocol::EARLIEST_TIMESTAMP`] (-2) asks for the log start,
    /// [`sluice_proto::protocol::LATEST_TIMESTAMP`] (-1) for the high watermark.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<u64, ClientError> {
        let request = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_owned(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    timestamp,
                }],
            }],
        };
        let mut refreshed = false;
        loop {
            let result = self.list_offset_once(&request, topic, partition).await;
            match result {
                Err(e) if !refreshed && e.wants_metadata_refresh() => {
                    refreshed = true;
                    self.forget_topic(topic);
                }
                other => return other,
            }
        }
    }

    async fn list_offset_once(
        &self,
        request: &ListOffsetsRequest,
        topic: &str,
        partition: u32,
    ) -> Result<u64, ClientError> {
        let conn = self.partition_connection(topic, partition).await?;
        let timeout = self.inner.config.request_timeout;
        let response: ListOffsetsResponse =
            conn.call(ApiKey::ListOffsets, request, timeout).await?;
        let result = response
            .topics
            .iter()
            .filter(|t| t.name == topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition == partition)
            .ok_or_else(|| ClientError::Broker {
                code: ErrorCode::UNKNOWN_SERVER_ERROR,
                message: format!("ListOffsets response has no result for {topic}-{partition}"),
            })?;
        if result.error != ErrorCode::NONE {
            return Err(ClientError::from_code(result.error, &result.message, topic));
        }
        Ok(result.offset)
    }

    // ---- crate-internal: connections, routing, metadata ----

    pub(crate) async fn admin<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        let conn = self.bootstrap_connection().await?;
        conn.call(api, body, self.inner.config.request_timeout)
            .await
    }

    /// A live connection to the bootstrap address, trying each configured broker in turn.
    pub(crate) async fn bootstrap_connection(&self) -> Result<Arc<Connection>, ClientError> {
        let current = self.bootstrap_addr();
        let mut last_error = match self.connection(&current).await {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        for addr in &self.inner.config.brokers {
            if *addr == current {
                continue;
            }
            match self.connection(addr).await {
                Ok(conn) => {
                    *self
                        .inner
                        .bootstrap
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = addr.clone();
                    return Ok(conn);
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    pub(crate) fn bootstrap_addr(&self) -> String {
        self.inner
            .bootstrap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connection to `addr`, dialled if there is none or the old one died.
    pub(crate) async fn connection(&self, addr: &str) -> Result<Arc<Connection>, ClientError> {
        let slot = {
            let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.entry(addr.to_owned()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_dead()) {
            return Ok(conn.clone());
        }
        let config = &self.inner.config;
        let conn = Connection::open(addr, &config.client_id, config.connect_timeout).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// The address requests for one partition go to: the shard that owns it when
    /// [`ClientConfig::shard_aware`], else the bootstrap address.
    pub async fn partition_address(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<String, ClientError> {
        let route = self.topic_route(topic).await?;
        let Some(p) = route.partitions.get(partition as usize) else {
            return Err(ClientError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: route.partitions.len() as u32,
            });
        };
        if !self.inner.config.shard_aware {
            return Ok(self.bootstrap_addr());
        }
        let addr = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .shard_address(p);
        Ok(addr.unwrap_or_else(|| self.bootstrap_addr()))
    }

    /// The connection for one partition's requests.
    pub(crate) async fn partition_connection(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Connection>, ClientError> {
        let addr = self.partition_address(topic, partition).await?;
        self.connection(&addr).await
    }

    /// A topic's placement, from the cache or a Metadata request.
    pub(crate) async fn topic_route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        if let Some(route) = self.cached_route(topic) {
            return Ok(route);
        }
        self.refresh_metadata(&[topic.to_owned()]).await?;
        self.cached_route(topic)
            .ok_or_else(|| ClientError::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    fn cached_route(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .topic(topic)
    }

    /// Asks the bootstrap broker for these topics' metadata and updates the cache.
    pub(crate) async fn refresh_metadata(&self, topics: &[String]) -> Result<(), ClientError> {
        let request = MetadataRequest {
            topics: Some(topics.to_vec()),
        };
        let response: MetadataResponse = self.admin(ApiKey::Metadata, &request).await?;
        let bootstrap = self.bootstrap_addr();
        self.inner
            .metadata
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .update(&response, host_of(&bootstrap));
        Ok(())
    }

    /// Drops a topic from the cache so the next use refreshes it.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.inner
            .metadata
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .forget(topic);
    }

    /// Request timeout from the config.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }
}

/// The outcome for `name` among per-topic admin results.
fn topic_result<'a>(
    mut results: impl Iterator<Item = (&'a String, ErrorCode, &'a String)>,
    name: &str,
) -> Result<(), ClientError> {
    match results.find(|(n, _, _)| n.as_str() == name) {
        Some((_, code, _)) if code == ErrorCode::NONE => Ok(()),
        Some((_, code, message)) => Err(ClientError::from_code(code, message, name)),
        None => Err(ClientError::Broker {
            code: ErrorCode::UNKNOWN_SERVER_ERROR,
            message: format!("no result for topic '{name}' in the response"),
        }),
    }
}
