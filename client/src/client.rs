//! `Client`: the shared handle to a cluster. Owns the connections (one per broker or shard
//! address, that is per (node, shard)) and the metadata cache, routes each partition's
//! requests to its leader, and does topic admin.
//!
//! Cluster behaviour (Kafka's):
//! - Bootstrap: the configured addresses are tried in turn until one answers the handshake;
//!   from the first Metadata response on, the metadata names the brokers, and metadata and
//!   admin requests go to the broker that answered last, else any other known one (the
//!   bootstrap list is the last resort).
//! - Routing: a partition's produce, fetch and list-offsets go to its leader node (the
//!   leader's shard address when [`ClientConfig::shard_aware`], else the leader's shared
//!   address), never to "the bootstrap broker".
//! - Refresh: one background task per client refreshes the metadata of every cached topic.
//!   It runs when asked (a routing error: `NOT_LEADER_OR_FOLLOWER`, `LEADER_NOT_AVAILABLE`,
//!   `FENCED_LEADER_EPOCH`, `UNKNOWN_LEADER_EPOCH`, a dead connection; or a topic not cached
//!   yet) and at least every [`ClientConfig::metadata_max_age`]. At most one refresh is in
//!   flight, and an attempt starts at least [`ClientConfig::retry_backoff`] after the previous
//!   one ended, however many callers ask: requests made while one is waiting or in flight
//!   are covered by the next attempt.
//! - Admin retries: topic admin calls (create, delete, describe, list) are retried within
//!   [`ClientConfig::admin_timeout`] on a retriable answer (`NOT_CONTROLLER`,
//!   `REQUEST_TIMED_OUT`, `LEADER_NOT_AVAILABLE`, ...: in the response header or as the
//!   topic's own result) and on a dead or silent connection, `retry_backoff` apart. After a
//!   dead connection or `NOT_CONTROLLER` the next attempt goes to another broker (the
//!   current one, those the metadata names, then the bootstrap list: any live one serves
//!   it). A retried create or delete is not idempotent on the broker: if the attempt whose
//!   answer was lost had succeeded, the retry answers `TOPIC_ALREADY_EXISTS` (create) or
//!   `UNKNOWN_TOPIC_OR_PARTITION` (delete), and that is what the call returns (as Kafka's
//!   admin client does): the caller cannot tell "I created it" from "it existed".

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use sluice_proto::protocol::{
    ApiKey, ConfigEntry, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DecommissionBrokerRequest, DecommissionBrokerResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeTopicsRequest, DescribeTopicsResponse,
    ErrorCode, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopic,
    ListTopicsRequest, ListTopicsResponse, MetadataRequest, MetadataResponse, NewTopic,
    PartitionsIncrease, TopicDescription, TopicListing, TopicResult, Wire,
};
use tokio::sync::{Notify, watch};

use crate::config::{ClientConfig, millis_u64};
use crate::connection::Connection;
use crate::error::ClientError;
use crate::limits::{ADMIN_READ_ATTEMPTS_MAX, LIST_OFFSETS_ATTEMPTS_MAX, METADATA_TOPICS_MAX};
use crate::metadata::{MetadataCache, TopicRoute, host_of};

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// The refresher's bookkeeping.
struct RefreshState {
    /// Refresh requests so far: each request gets the next number, and waits until an
    /// attempt covering it has finished.
    requested: u64,
    /// Topics callers wait for that are not cached yet (at most [`METADATA_TOPICS_MAX`]).
    wanted: BTreeSet<String>,
    /// When the last attempt ended: the next starts `retry_backoff` later at the earliest.
    last_attempt_end: Option<Instant>,
    /// When the last successful refresh (or the bootstrap) ended.
    last_success: Instant,
}

/// What the last finished refresh attempt covered, and how it went.
#[derive(Clone, Default)]
struct RefreshOutcome {
    /// The highest request number it covered.
    covered: u64,
    /// Its error, if it failed.
    error: Option<ClientError>,
}

struct ClientInner {
    config: ClientConfig,
    /// The broker address that answered a metadata or admin request last.
    current: Mutex<String>,
    /// One slot per address; a slot's lock is held while dialling it, so concurrent users
    /// share one dial and other addresses are not held up. Addresses the metadata no longer
    /// names are dropped at each refresh, so the pool stays within the cluster's size.
    pool: Mutex<HashMap<String, Slot>>,
    metadata: RwLock<MetadataCache>,
    refresh: Mutex<RefreshState>,
    /// Wakes the refresher task (a request, or the client going away).
    refresh_wake: Arc<Notify>,
    refresh_done: watch::Sender<RefreshOutcome>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        // The refresher holds only a weak reference: wake it so it sees the client is gone.
        self.refresh_wake.notify_one();
    }
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
    /// handshake), trying the configured addresses in turn. Must run inside a tokio runtime;
    /// the client spawns tasks on it (connections, and the metadata refresher).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let first = config.brokers[0].clone();
        let (refresh_done, _) = watch::channel(RefreshOutcome::default());
        let refresh_wake = Arc::new(Notify::new());
        let client = Client {
            inner: Arc::new(ClientInner {
                config,
                current: Mutex::new(first),
                pool: Mutex::new(HashMap::new()),
                metadata: RwLock::new(MetadataCache::default()),
                refresh: Mutex::new(RefreshState {
                    requested: 0,
                    wanted: BTreeSet::new(),
                    last_attempt_end: None,
                    last_success: Instant::now(),
                }),
                refresh_wake: refresh_wake.clone(),
                refresh_done,
            }),
        };
        client.bootstrap().await?;
        tokio::spawn(refresh_loop(Arc::downgrade(&client.inner), refresh_wake));
        Ok(client)
    }

    /// Tries each bootstrap address in turn: the first that answers the handshake becomes
    /// the current broker. The cluster's brokers are learned from the first Metadata
    /// response (the first use of a topic).
    async fn bootstrap(&self) -> Result<(), ClientError> {
        let mut last_error = None;
        for addr in &self.inner.config.brokers {
            match self.connection(addr).await {
                Ok(_) => {
                    self.set_current(addr);
                    tracing::debug!(addr, "bootstrapped");
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(addr, error = %e, "bootstrap address did not answer");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("validate checked the broker list is not empty"))
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Creates a topic with `partitions` partitions and the given configs, with the
    /// broker's default replication factor.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<(), ClientError> {
        self.create_topic_replicated(name, partitions, None, configs)
            .await
    }

    /// Creates a topic with `partitions` partitions, `replication_factor` copies of each
    /// (`None`: the broker's default, min(3, registered brokers) in a cluster) and the given
    /// configs.
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u16>,
        configs: &[(String, String)],
    ) -> Result<(), ClientError> {
        let replication_factor = match replication_factor {
            None => -1,
            Some(rf) => i16::try_from(rf).map_err(|_| {
                ClientError::InvalidConfig(format!("replication factor {rf} is above {}", i16::MAX))
            })?,
        };
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
                replication_factor,
            }],
            validate_only: false,
        };
        self.change_topic(
            ApiKey::CreateTopics,
            &request,
            name,
            |r: &CreateTopicsResponse| &r.topics,
        )
        .await
    }

    /// Grows a topic to `total` partitions (more than it has). Existing partitions keep their
    /// records; keyed records may map to other partitions from now on.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<(), ClientError> {
        let request = CreatePartitionsRequest {
            topics: vec![PartitionsIncrease {
                name: name.to_owned(),
                count: total,
            }],
            validate_only: false,
        };
        let response: CreatePartitionsResponse =
            self.admin(ApiKey::CreatePartitions, &request).await?;
        self.forget_topic(name);
        topic_result(&response.topics, name)
    }

    /// Cluster mode: has the controller move every partition replica off broker `node` so
    /// that it can leave the cluster (it gets no new replicas from then on), or, asked again,
    /// reports the progress. Returns how many replicas the broker still holds, in the
    /// answering broker's metadata: 0 means it can be stopped. Refused with
    /// `INVALID_REPLICA_ASSIGNMENT` when a replica has nowhere to go (the other brokers hold
    /// copies already), `BROKER_NOT_AVAILABLE` for an unknown node id, `INVALID_REQUEST` on a
    /// broker running alone.
    pub async fn decommission_broker(&self, node: i32) -> Result<u32, ClientError> {
        let request = DecommissionBrokerRequest { broker: node };
        let response: DecommissionBrokerResponse = self
            .admin_retrying(
                ApiKey::DecommissionBroker,
                &request,
                |r: &DecommissionBrokerResponse| r.error,
            )
            .await?;
        if response.error != ErrorCode::NONE {
            return Err(ClientError::Broker {
                code: response.error,
                message: response.message,
            });
        }
        Ok(response.remaining_replicas)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicsRequest {
            names: vec![name.to_owned()],
        };
        self.change_topic(
            ApiKey::DeleteTopics,
            &request,
            name,
            |r: &DeleteTopicsResponse| &r.topics,
        )
        .await
    }

    /// Sends a request that changes topic `name` (retrying within the admin timeout), forgets
    /// the topic's cached metadata and returns `name`'s outcome.
    async fn change_topic<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        request: &Req,
        name: &str,
        results: impl Fn(&Resp) -> &[TopicResult],
    ) -> Result<(), ClientError> {
        let response: Resp = self
            .admin_retrying(api, request, |r: &Resp| {
                topic_code(results(r).iter().map(|t| (&t.name, t.error)), name)
            })
            .await?;
        self.forget_topic(name);
        topic_result(results(&response), name)
    }

    /// Every topic with its partition count.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>, ClientError> {
        let response: ListTopicsResponse = self
            .admin_retrying(ApiKey::ListTopics, &ListTopicsRequest {}, |_| {
                ErrorCode::NONE
            })
            .await?;
        Ok(response.topics)
    }

    /// A topic's configs (defaults included) and its partitions with their offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let request = DescribeTopicsRequest {
            names: Some(vec![name.to_owned()]),
        };
        let response: DescribeTopicsResponse = self
            .admin_retrying(
                ApiKey::DescribeTopics,
                &request,
                |r: &DescribeTopicsResponse| {
                    topic_code(r.topics.iter().map(|t| (&t.name, t.error)), name)
                },
            )
            .await?;
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
        let mut refreshed_unknown = false;
        let mut attempt = 1;
        loop {
            let result = self.list_offset_once(&request, topic, partition).await;
            let e = match result {
                Err(e) if attempt < LIST_OFFSETS_ATTEMPTS_MAX => e,
                other => return other,
            };
            attempt += 1;
            if matches!(e, ClientError::UnknownTopic { .. }) {
                // Maybe a stale cache (the topic was just created elsewhere): one refresh.
                if refreshed_unknown {
                    return Err(e);
                }
                refreshed_unknown = true;
                self.forget_topic(topic);
                continue;
            }
            if e.wants_metadata_refresh() {
                tracing::debug!(topic, partition, error = %e, "list offsets: refreshing metadata");
                // The wait is bounded and its failure is the next attempt's business.
                let _ = self.refresh_and_wait(None).await;
            } else if e.is_retriable() {
                tokio::time::sleep(self.inner.config.retry_backoff).await;
            } else {
                return Err(e);
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

    /// Sends an admin or metadata request to the current broker (else any other that
    /// answers). Sent once: a request that is not safe to repeat is not repeated.
    pub(crate) async fn admin<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        self.admin_at(api, body).await.map(|(_, response)| response)
    }

    /// Sends a topic admin request, retrying (see the module docs) within
    /// [`ClientConfig::admin_timeout`] while the request fails retriably or `code_of` (the
    /// request's own result in the response) is retriable. Gives the last answer whose
    /// result is final (success or not), else the last error, or a timeout naming it.
    pub(crate) async fn admin_retrying<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
        code_of: impl Fn(&Resp) -> ErrorCode,
    ) -> Result<Resp, ClientError> {
        let config = &self.inner.config;
        let started = Instant::now();
        let deadline = started + config.admin_timeout;
        let mut attempt = 1u32;
        loop {
            let timeout = config
                .request_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let error = match self.admin_within(api, body, timeout).await {
                Ok((addr, response)) => {
                    let code = code_of(&response);
                    if !code.is_retriable() {
                        return Ok(response);
                    }
                    if code == ErrorCode::NOT_CONTROLLER {
                        self.avoid(&addr);
                    }
                    ClientError::Broker {
                        code,
                        message: format!("{} answered by {addr}", api.spec().name),
                    }
                }
                Err(e) if e.is_retriable() => {
                    if let ClientError::Broker {
                        code: ErrorCode::NOT_CONTROLLER,
                        ..
                    } = e
                    {
                        self.avoid(&self.current_addr());
                    }
                    e
                }
                Err(e) => return Err(e),
            };
            if Instant::now() + config.retry_backoff >= deadline {
                tracing::warn!(api = api.spec().name, attempt, %error, "admin call gave up");
                if attempt == 1 {
                    return Err(error);
                }
                return Err(ClientError::Timeout {
                    what: format!(
                        "{} ({attempt} attempts; the last failed: {error})",
                        api.spec().name
                    ),
                    after_ms: millis_u64(started.elapsed()),
                });
            }
            tracing::debug!(api = api.spec().name, attempt, %error, "admin call will retry");
            attempt += 1;
            tokio::time::sleep(config.retry_backoff).await;
        }
    }

    /// Like [`Client::admin`], also naming the broker that answered.
    async fn admin_at<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
    ) -> Result<(String, Resp), ClientError> {
        self.admin_within(api, body, self.inner.config.request_timeout)
            .await
    }

    /// Like [`Client::admin_at`], waiting at most `timeout` for the answer.
    async fn admin_within<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
        timeout: Duration,
    ) -> Result<(String, Resp), ClientError> {
        let (addr, conn) = self.any_broker().await?;
        match conn.call(api, body, timeout).await {
            Ok(response) => Ok((addr, response)),
            Err(e) => {
                if e.is_connection_failure() {
                    self.avoid(&addr);
                }
                Err(e)
            }
        }
    }

    /// An admin request that is safe to repeat (a read): after a connection failure it is
    /// sent again, to the next broker, up to [`ADMIN_READ_ATTEMPTS_MAX`] times.
    pub(crate) async fn admin_read<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        self.admin_read_at(api, body)
            .await
            .map(|(_, response)| response)
    }

    pub(crate) async fn admin_read_at<Req: Wire, Resp: Wire>(
        &self,
        api: ApiKey,
        body: &Req,
    ) -> Result<(String, Resp), ClientError> {
        let mut attempt = 1;
        loop {
            match self.admin_at(api, body).await {
                Err(e) if e.is_connection_failure() && attempt < ADMIN_READ_ATTEMPTS_MAX => {
                    tracing::debug!(api = api.spec().name, error = %e, "trying another broker");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Brokers to try for metadata and admin, in order: the current one, those the metadata
    /// names, then the bootstrap list.
    fn broker_candidates(&self) -> Vec<String> {
        let mut out = vec![self.current_addr()];
        let known = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .broker_addresses();
        for addr in known
            .into_iter()
            .chain(self.inner.config.brokers.iter().cloned())
        {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }

    /// A live connection to the current broker, else to the first other candidate that
    /// answers (which becomes current).
    async fn any_broker(&self) -> Result<(String, Arc<Connection>), ClientError> {
        let mut last_error = None;
        for addr in self.broker_candidates() {
            match self.connection(&addr).await {
                Ok(conn) => {
                    self.set_current(&addr);
                    return Ok((addr, conn));
                }
                Err(e) => {
                    tracing::debug!(addr, error = %e, "broker not reachable; trying the next");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("there is at least one candidate"))
    }

    /// After a failure at `addr`: if it is the current broker, the next candidate becomes
    /// current, so the next request starts elsewhere.
    fn avoid(&self, addr: &str) {
        let candidates = self.broker_candidates();
        let mut current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        if *current == addr
            && let Some(next) = candidates.iter().find(|c| c.as_str() != addr)
        {
            *current = next.clone();
        }
    }

    fn set_current(&self, addr: &str) {
        let mut current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        if *current != addr {
            *current = addr.to_owned();
        }
    }

    /// The broker that answered a metadata or admin request last.
    pub(crate) fn current_addr(&self) -> String {
        self.inner
            .current
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

    /// The address requests for one partition go to: its leader's shard when
    /// [`ClientConfig::shard_aware`], else the leader's shared address. Without a known
    /// leader: a refresh is asked for and the error is the retriable `LEADER_NOT_AVAILABLE`.
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
        let addr = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .leader_address(p, self.inner.config.shard_aware);
        match addr {
            Some(addr) => Ok(addr),
            None => {
                self.request_metadata_refresh();
                Err(ClientError::Broker {
                    code: ErrorCode::LEADER_NOT_AVAILABLE,
                    message: format!(
                        "no live leader for {topic}-{partition} in the metadata (leader {}, \
                         epoch {}, {})",
                        p.leader, p.leader_epoch, p.error
                    ),
                })
            }
        }
    }

    /// The connection for one partition's requests (its leader's).
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
        self.refresh_and_wait(Some(topic)).await?;
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

    fn lock_refresh(&self) -> std::sync::MutexGuard<'_, RefreshState> {
        self.inner.refresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the refresher for a metadata refresh (it runs at most one at a time,
    /// `retry_backoff` apart) without waiting; returns the request's number.
    pub(crate) fn request_metadata_refresh(&self) -> u64 {
        let seq = {
            let mut st = self.lock_refresh();
            st.requested += 1;
            st.requested
        };
        self.inner.refresh_wake.notify_one();
        seq
    }

    /// Asks for a refresh (including `topic`, when given) and waits for an attempt that
    /// covers the request, at most `request_timeout + retry_backoff`; that attempt's error if
    /// it failed.
    pub(crate) async fn refresh_and_wait(&self, topic: Option<&str>) -> Result<(), ClientError> {
        if let Some(topic) = topic {
            let mut st = self.lock_refresh();
            if !st.wanted.contains(topic) {
                if st.wanted.len() >= METADATA_TOPICS_MAX {
                    return Err(ClientError::InvalidConfig(format!(
                        "more than {METADATA_TOPICS_MAX} topics are waiting for metadata"
                    )));
                }
                st.wanted.insert(topic.to_owned());
            }
        }
        let seq = self.request_metadata_refresh();
        let mut rx = self.inner.refresh_done.subscribe();
        let wait = self.inner.config.request_timeout + self.inner.config.retry_backoff;
        let waited = tokio::time::timeout(wait, async {
            match rx.wait_for(|o| o.covered >= seq).await {
                Ok(outcome) => outcome.error.clone(),
                // The sender lives as long as the client, which `self` holds.
                Err(_) => Some(ClientError::Closed),
            }
        })
        .await;
        match waited {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout {
                what: "metadata refresh".to_owned(),
                after_ms: millis_u64(wait),
            }),
        }
    }

    /// One refresh attempt: the metadata of every cached and wanted topic from any broker.
    async fn refresh_once(&self) -> Result<(), ClientError> {
        let topics: Vec<String> = {
            let cache = self
                .inner
                .metadata
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let st = self.lock_refresh();
            let mut topics: BTreeSet<String> = cache.topic_names().cloned().collect();
            topics.extend(st.wanted.iter().cloned());
            topics.into_iter().collect()
        };
        let request = MetadataRequest {
            topics: Some(topics.clone()),
        };
        let (addr, response): (String, MetadataResponse) =
            self.admin_read_at(ApiKey::Metadata, &request).await?;
        self.apply_metadata(&response, &addr);
        let mut st = self.lock_refresh();
        for t in &topics {
            st.wanted.remove(t);
        }
        Ok(())
    }

    /// Takes in a Metadata response from `addr`, and drops pooled connections to addresses
    /// the cluster no longer names.
    fn apply_metadata(&self, response: &MetadataResponse, addr: &str) {
        let mut cache = self
            .inner
            .metadata
            .write()
            .unwrap_or_else(|p| p.into_inner());
        cache.update(response, host_of(addr));
        let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        let bootstrap = &self.inner.config.brokers;
        pool.retain(|a, slot| {
            cache.knows_address(a) || bootstrap.contains(a) || slot.try_lock().is_err()
        });
    }

    /// Drops a topic from the cache so the next use refreshes it.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.inner
            .metadata
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .forget(topic);
    }

    /// A broker's shared address from the metadata.
    pub(crate) fn broker_address(&self, node: u32) -> Option<String> {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .broker_address(node)
    }

    /// Every broker's shared address from the metadata.
    pub(crate) fn broker_addresses(&self) -> Vec<String> {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .broker_addresses()
    }

    /// Request timeout from the config.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Retry backoff from the config.
    pub(crate) fn retry_backoff(&self) -> Duration {
        self.inner.config.retry_backoff
    }
}

/// The refresher task: runs a refresh when one was asked for (`retry_backoff` after the
/// previous attempt ended at the earliest) or when the metadata is `metadata_max_age` old;
/// one at a time. Ends when the client is dropped.
async fn refresh_loop(weak: Weak<ClientInner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let client = Client { inner };
        let config = &client.inner.config;
        let now = Instant::now();
        let (due, covers) = {
            let covered = client.inner.refresh_done.borrow().covered;
            let st = client.lock_refresh();
            let due = if st.requested > covered {
                st.last_attempt_end
                    .map_or(now, |end| end + config.retry_backoff)
            } else {
                // Periodic: `metadata_max_age` after the last attempt, failed or not (a
                // failed one is retried sooner only when someone asks).
                st.last_attempt_end
                    .map_or(st.last_success, |end| end.max(st.last_success))
                    + config.metadata_max_age
            };
            (due, st.requested)
        };
        if due > now {
            drop(client);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            continue;
        }
        let result = client.refresh_once().await;
        let end = Instant::now();
        {
            let mut st = client.lock_refresh();
            st.last_attempt_end = Some(end);
            if result.is_ok() {
                st.last_success = end;
            }
        }
        match &result {
            Ok(()) => tracing::debug!(covers, "metadata refreshed"),
            Err(e) => tracing::warn!(error = %e, "metadata refresh failed"),
        }
        client.inner.refresh_done.send_replace(RefreshOutcome {
            covered: covers,
            error: result.err(),
        });
    }
}

/// The error code for `name` among per-topic admin results (`NONE` if it has none: the
/// caller reports the missing result).
fn topic_code<'a>(
    mut results: impl Iterator<Item = (&'a String, ErrorCode)>,
    name: &str,
) -> ErrorCode {
    results
        .find(|(n, _)| n.as_str() == name)
        .map_or(ErrorCode::NONE, |(_, code)| code)
}

/// The outcome for `name` among per-topic admin results.
fn topic_result(results: &[TopicResult], name: &str) -> Result<(), ClientError> {
    match results.iter().find(|t| t.name == name) {
        Some(t) if t.error == ErrorCode::NONE => Ok(()),
        Some(t) => Err(ClientError::from_code(t.error, &t.message, name)),
        None => Err(ClientError::Broker {
            code: ErrorCode::UNKNOWN_SERVER_ERROR,
            message: format!("no result for topic '{name}' in the response"),
        }),
    }
}
