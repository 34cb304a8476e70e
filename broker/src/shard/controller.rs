//! The controller (shard 0): creates and deletes topics. One change at a time: validate,
//! persist `topics.json`, have the owning shards open (or close and delete) the logs, wait for
//! them, then broadcast the new metadata snapshot to every shard and wait for each to install
//! it, so a client that is told "created" can use the topic through any shard at once.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use sluice_replication::controller::{ControllerDriver, DriverError};
use sluice_replication::replica::REPLICATED_BATCH_BYTES_MAX;

use sluice_proto::protocol::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DecommissionBrokerRequest, DecommissionBrokerResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, ErrorCode, InitProducerIdRequest, InitProducerIdResponse, TopicResult,
};

use crate::metadata::{Metadata, TopicMeta, topic_dir, validate_partitions, validate_topic_name};
use crate::placement::ShardId;
use crate::shard::Shard;
use crate::shard::msg::{ShardMsg, reply_channel};
use crate::shard::producer_ids::ProducerIds;
use crate::topic_config;

fn result(name: &str, error: ErrorCode, message: impl Into<String>) -> TopicResult {
    TopicResult {
        name: name.to_string(),
        error,
        message: message.into(),
    }
}

/// Partition indexes `partitions` of a topic, grouped by owning shard.
fn by_owner(
    shard: &Shard,
    topic: &str,
    partitions: std::ops::Range<u32>,
) -> BTreeMap<ShardId, Vec<u32>> {
    let mut owners: BTreeMap<ShardId, Vec<u32>> = BTreeMap::new();
    for p in partitions {
        owners.entry(shard.owner(topic, p)).or_default().push(p);
    }
    owners
}

/// Has the owning shards open (creating if needed) `partitions` of `topic`, and waits for
/// all of them; `Err` names a failure.
async fn open_on_owners(
    shard: &Rc<Shard>,
    topic: &str,
    partitions: std::ops::Range<u32>,
    configs: &crate::topic_config::TopicConfigs,
) -> Result<(), String> {
    let mut replies = Vec::new();
    for (owner, partitions) in by_owner(shard, topic, partitions) {
        let (reply, rx) = reply_channel();
        shard
            .send(
                owner,
                ShardMsg::OpenPartitions {
                    topic: topic.to_string(),
                    partitions,
                    configs: configs.clone(),
                    reply,
                },
            )
            .await;
        replies.push(rx);
    }
    let mut error = None;
    for rx in replies {
        match rx.recv_async().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error = Some(e),
            Err(_) => error = Some("a shard stopped".to_string()),
        }
    }
    error.map_or(Ok(()), Err)
}

/// Has the owning shards close and delete the logs of `partitions` of `topic`, and waits.
async fn close_on_owners(shard: &Rc<Shard>, topic: &str, partitions: std::ops::Range<u32>) {
    let mut replies = Vec::new();
    for (owner, partitions) in by_owner(shard, topic, partitions) {
        let (reply, rx) = reply_channel();
        shard
            .send(
                owner,
                ShardMsg::RemovePartitions {
                    topic: topic.to_string(),
                    partitions,
                    reply,
                },
            )
            .await;
        replies.push(rx);
    }
    for rx in replies {
        let _ = rx.recv_async().await;
    }
}

/// Largest replication factor a topic may have (the controller's limit).
const REPLICATION_FACTOR_MAX: i16 = 16;
/// The default replication factor is min(this, registered brokers not being decommissioned).
const REPLICATION_FACTOR_DEFAULT_MAX: usize = 3;

/// Cluster mode: `max.message.bytes` at most [`REPLICATED_BATCH_BYTES_MAX`], so that every
/// batch fits one replica fetch.
fn check_replicated_batch_size(
    configs: &topic_config::TopicConfigs,
) -> Result<(), (ErrorCode, String)> {
    let max = topic_config::log_config(configs)
        .map_err(|m| (ErrorCode::INVALID_CONFIG, m))?
        .max_batch_bytes;
    if max > REPLICATED_BATCH_BYTES_MAX {
        return Err((
            ErrorCode::INVALID_CONFIG,
            format!(
                "max.message.bytes={max} is above {REPLICATED_BATCH_BYTES_MAX}, the largest batch a \
                 replicated topic takes (it must fit one replica fetch)"
            ),
        ));
    }
    Ok(())
}

/// Checks a topic's replication factor and `min.insync.replicas` against each other: `rf`
/// is the replication factor the topic gets.
fn check_replication(
    rf: usize,
    configs: &topic_config::TopicConfigs,
) -> Result<(), (ErrorCode, String)> {
    let min_insync =
        topic_config::min_insync_replicas(configs).map_err(|m| (ErrorCode::INVALID_CONFIG, m))?;
    if min_insync > rf as u64 {
        return Err((
            ErrorCode::INVALID_CONFIG,
            format!(
                "min.insync.replicas={min_insync} is above the replication factor {rf}: \
                 acks=all produce could never succeed"
            ),
        ));
    }
    Ok(())
}

/// Creates topics.
pub(crate) async fn create_topics(
    shard: &Rc<Shard>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let turn = shard.admin.ticket();
    turn.turn().await;
    let driver = shard.controller.borrow().clone();
    if let Some(driver) = driver {
        return create_topics_in_cluster(&driver, request).await;
    }
    let mut next = (*shard.snapshot()).clone();
    let mut results = Vec::with_capacity(request.topics.len());
    let mut created = Vec::new();
    for topic in &request.topics {
        let name = topic.name.as_str();
        let checked = validate_topic_name(name)
            .map_err(|m| (ErrorCode::INVALID_TOPIC, m))
            .and_then(|()| {
                validate_partitions(topic.partitions)
                    .map_err(|m| (ErrorCode::INVALID_PARTITIONS, m))
            })
            .and_then(|()| {
                topic_config::validate(&topic.configs).map_err(|m| (ErrorCode::INVALID_CONFIG, m))
            })
            .and_then(|configs| match topic.replication_factor {
                -1 | 1 => check_replication(1, &configs).map(|()| configs),
                rf => Err((
                    ErrorCode::INVALID_REPLICATION_FACTOR,
                    format!(
                        "replication factor {rf}: a broker running alone keeps one copy \
                         (start it with --cluster for more)"
                    ),
                )),
            })
            .and_then(|configs| {
                if next.topics.contains_key(name) {
                    Err((
                        ErrorCode::TOPIC_ALREADY_EXISTS,
                        format!("topic {name} already exists"),
                    ))
                } else {
                    Ok(configs)
                }
            });
        match checked {
            Err((code, message)) => results.push(result(name, code, message)),
            Ok(configs) => {
                results.push(result(name, ErrorCode::NONE, ""));
                if !request.validate_only {
                    next.topics.insert(
                        name.to_string(),
                        TopicMeta {
                            partitions: topic.partitions,
                            configs,
                        },
                    );
                    created.push(name.to_string());
                }
            }
        }
    }
    if created.is_empty() {
        return CreateTopicsResponse { topics: results };
    }
    let data_dir = shard.cluster.config.data_dir.clone();
    if let Err(e) = next.persist(&data_dir) {
        tracing::error!(error = %e, "cannot persist topic metadata");
        for r in results.iter_mut().filter(|r| created.contains(&r.name)) {
            *r = result(&r.name, ErrorCode::STORAGE_ERROR, e.to_string());
        }
        return CreateTopicsResponse { topics: results };
    }
    let mut failed = Vec::new();
    for name in &created {
        let meta = &next.topics[name];
        if let Err(e) = open_on_owners(shard, name, 0..meta.partitions, &meta.configs).await {
            tracing::error!(topic = %name, error = %e, "creating topic failed; rolling back");
            failed.push(name.clone());
            for r in results.iter_mut().filter(|r| &r.name == name) {
                *r = result(name, ErrorCode::STORAGE_ERROR, e.clone());
            }
        }
    }
    if !failed.is_empty() {
        for name in &failed {
            let partitions = next.topics.remove(name).map_or(0, |m| m.partitions);
            remove_logs(shard, name, partitions).await;
        }
        if let Err(e) = next.persist(&data_dir) {
            tracing::error!(error = %e, "cannot persist topic metadata after a rollback");
        }
    }
    broadcast(shard, next).await;
    for name in created.iter().filter(|n| !failed.contains(n)) {
        tracing::info!(topic = %name, partitions = shard.snapshot().topics[name].partitions, "topic created");
    }
    CreateTopicsResponse { topics: results }
}

/// Cluster mode: validates each topic like a broker running alone, then has the active
/// controller create it (forwarded if this node is not it), and answers once this node
/// installed the view that has it.
async fn create_topics_in_cluster(
    driver: &Rc<ControllerDriver>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.as_str();
        let (registered, live) = {
            let state = driver.state();
            let staying = state
                .brokers
                .values()
                .filter(|b| !b.decommissioning)
                .count();
            (staying, state.assignable_brokers().len())
        };
        let checked = validate_topic_name(name)
            .map_err(|m| (ErrorCode::INVALID_TOPIC, m))
            .and_then(|()| {
                validate_partitions(topic.partitions)
                    .map_err(|m| (ErrorCode::INVALID_PARTITIONS, m))
            })
            .and_then(|()| {
                topic_config::validate(&topic.configs).map_err(|m| (ErrorCode::INVALID_CONFIG, m))
            })
            .and_then(|configs| {
                check_replicated_batch_size(&configs)?;
                Ok(configs)
            })
            .and_then(|configs| {
                let rf = match topic.replication_factor {
                    -1 => registered.clamp(1, REPLICATION_FACTOR_DEFAULT_MAX),
                    rf if (1..=REPLICATION_FACTOR_MAX).contains(&rf) => rf as usize,
                    rf => {
                        return Err((
                            ErrorCode::INVALID_REPLICATION_FACTOR,
                            format!(
                                "replication factor {rf} must be between 1 and \
                                 {REPLICATION_FACTOR_MAX} (or -1 for the default)"
                            ),
                        ));
                    }
                };
                check_replication(rf, &configs)?;
                Ok((rf, configs))
            });
        let (rf, configs) = match checked {
            Ok(ok) => ok,
            Err((code, message)) => {
                tracing::info!(topic = %name, error = %message, "topic creation refused");
                results.push(result(name, code, message));
                continue;
            }
        };
        if request.validate_only {
            results.push(if rf > live {
                result(
                    name,
                    ErrorCode::INVALID_REPLICATION_FACTOR,
                    format!(
                        "replication factor {rf} is above the {live} live brokers that can take \
                         replicas"
                    ),
                )
            } else {
                result(name, ErrorCode::NONE, "")
            });
            continue;
        }
        let outcome = match driver
            .create_topic(name, topic.partitions, rf as u32, configs)
            .await
        {
            Ok(index) => await_view(name, index).await,
            Err(e) => Err(driver_error(&e)),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(topic = %name, partitions = topic.partitions, replication_factor = rf, "topic created");
                results.push(result(name, ErrorCode::NONE, ""));
            }
            Err((code, message)) => {
                tracing::warn!(topic = %name, code = code.name(), error = %message, "topic not created");
                results.push(result(name, code, message));
            }
        }
    }
    CreateTopicsResponse { topics: results }
}

/// Kafka's code and a message for a driver error.
fn driver_error(e: &DriverError) -> (ErrorCode, String) {
    (ErrorCode(e.kafka_code()), e.to_string())
}

/// Cluster mode: has the active controller mark a broker as being decommissioned (once; the
/// controller then moves its replicas away in the background), and reports how many
/// partition replicas it still holds in this node's applied state. Asking again only reports.
pub(crate) async fn decommission_broker(
    shard: &Rc<Shard>,
    request: DecommissionBrokerRequest,
) -> DecommissionBrokerResponse {
    let answer = |error, message: String, remaining_replicas: usize| DecommissionBrokerResponse {
        error,
        message,
        remaining_replicas: u32::try_from(remaining_replicas).unwrap_or(u32::MAX),
    };
    let Some(driver) = shard.controller.borrow().clone() else {
        return answer(
            ErrorCode::INVALID_REQUEST,
            "this broker runs alone (no --cluster): there is no other broker to move replicas to"
                .into(),
            0,
        );
    };
    let Ok(broker) = u32::try_from(request.broker) else {
        return answer(
            ErrorCode::BROKER_NOT_AVAILABLE,
            format!("{} is not a node id", request.broker),
            0,
        );
    };
    let already = driver.state().is_decommissioning(broker);
    if !already {
        let outcome = match driver.decommission_broker(broker).await {
            Ok(index) => await_view(&format!("broker {broker}"), index).await,
            Err(e) => Err(driver_error(&e)),
        };
        if let Err((code, message)) = outcome {
            tracing::warn!(broker, code = code.name(), error = %message,
                "broker not decommissioned");
            return answer(code, message, 0);
        }
    }
    let remaining = driver.state().replicas_on(broker);
    if !already {
        tracing::info!(
            broker,
            remaining_replicas = remaining,
            "broker is being decommissioned: its replicas move to other brokers"
        );
    }
    answer(ErrorCode::NONE, String::new(), remaining)
}

/// Waits until this node installed the view at `index` (a change the controller applied).
async fn await_view(name: &str, index: u64) -> Result<(), (ErrorCode, String)> {
    let deadline = Instant::now() + crate::cluster::VIEW_INSTALL_TIMEOUT;
    if crate::cluster::wait_installed(index, deadline).await {
        Ok(())
    } else {
        Err((
            ErrorCode::REQUEST_TIMED_OUT,
            format!(
                "the controller applied the change to {name} (index {index}) but this broker \
                 has not installed it within {:?}",
                crate::cluster::VIEW_INSTALL_TIMEOUT
            ),
        ))
    }
}

/// Cluster mode: has the active controller delete each topic; answers once this node
/// installed the view without it (its local replicas are then being removed).
async fn delete_topics_in_cluster(
    driver: &Rc<ControllerDriver>,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(request.names.len());
    for name in &request.names {
        if name == crate::group::OFFSETS_TOPIC {
            tracing::warn!(topic = %name, "delete of the internal offsets topic refused");
            results.push(result(
                name,
                ErrorCode::INVALID_TOPIC,
                format!("{name} is internal: it holds the committed offsets of every group"),
            ));
            continue;
        }
        let outcome = match driver.delete_topic(name).await {
            Ok(index) => await_view(name, index).await,
            Err(e) => Err(driver_error(&e)),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(topic = %name, "topic deleted");
                results.push(result(name, ErrorCode::NONE, ""));
            }
            Err((code, message)) => {
                tracing::warn!(topic = %name, code = code.name(), error = %message, "topic not deleted");
                results.push(result(name, code, message));
            }
        }
    }
    DeleteTopicsResponse { topics: results }
}

/// Deletes topics.
pub(crate) async fn delete_topics(
    shard: &Rc<Shard>,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let turn = shard.admin.ticket();
    turn.turn().await;
    let driver = shard.controller.borrow().clone();
    if let Some(driver) = driver {
        return delete_topics_in_cluster(&driver, request).await;
    }
    let mut next = (*shard.snapshot()).clone();
    let mut results = Vec::with_capacity(request.names.len());
    let mut deleted = Vec::new();
    for name in &request.names {
        if name == crate::group::OFFSETS_TOPIC {
            tracing::warn!(topic = %name, "delete of the internal offsets topic refused");
            results.push(result(
                name,
                ErrorCode::INVALID_TOPIC,
                format!("{name} is internal: it holds the committed offsets of every group"),
            ));
            continue;
        }
        match next.topics.remove(name) {
            Some(meta) => {
                results.push(result(name, ErrorCode::NONE, ""));
                deleted.push((name.clone(), meta.partitions));
            }
            None => results.push(result(
                name,
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {name}"),
            )),
        }
    }
    if deleted.is_empty() {
        return DeleteTopicsResponse { topics: results };
    }
    let data_dir = shard.cluster.config.data_dir.clone();
    if let Err(e) = next.persist(&data_dir) {
        tracing::error!(error = %e, "cannot persist topic metadata");
        for r in results.iter_mut().filter(|r| r.error.is_ok()) {
            *r = result(&r.name, ErrorCode::STORAGE_ERROR, e.to_string());
        }
        return DeleteTopicsResponse { topics: results };
    }
    // Persisted first: after a crash here, start-up removes the leftover directories.
    broadcast(shard, next).await;
    for (name, partitions) in &deleted {
        remove_logs(shard, name, *partitions).await;
        tracing::info!(topic = %name, "topic deleted");
    }
    DeleteTopicsResponse { topics: results }
}

/// Adds partitions to topics (Kafka's CreatePartitions): `count` is the new total, more than
/// today's. Alone: one topic at a time, `topics.json` persisted, the new logs opened on their
/// owning shards, then the metadata broadcast (rolled back if a log cannot be opened). In a
/// cluster: through the active controller, answered once this node installed the change.
/// Existing partitions keep their shard (placement depends on the index only); keyed records
/// map to other partitions from now on, as in Kafka.
pub(crate) async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let turn = shard.admin.ticket();
    turn.turn().await;
    let driver = shard.controller.borrow().clone();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.as_str();
        let current = shard.snapshot().topics.get(name).map(|m| m.partitions);
        let checked = if name == crate::group::OFFSETS_TOPIC {
            Err((
                ErrorCode::INVALID_TOPIC,
                format!(
                    "{name} is internal: a group's offsets partition is its hash modulo the count"
                ),
            ))
        } else {
            validate_partitions(topic.count)
                .map_err(|m| (ErrorCode::INVALID_PARTITIONS, m))
                .and_then(|()| match current {
                    // In a cluster the controller's state decides (this node may lag).
                    None if driver.is_none() => Err((
                        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("unknown topic {name}"),
                    )),
                    Some(n) if topic.count <= n => Err((
                        ErrorCode::INVALID_PARTITIONS,
                        format!(
                            "topic {name} has {n} partitions; the new count {} must be more",
                            topic.count
                        ),
                    )),
                    _ => Ok(()),
                })
        };
        let outcome = match checked {
            Err(e) => Err(e),
            Ok(()) if request.validate_only => Ok(()),
            Ok(()) => match &driver {
                Some(driver) => match driver.create_partitions(name, topic.count).await {
                    Ok(index) => await_view(name, index).await,
                    Err(e) => Err(driver_error(&e)),
                },
                None => add_partitions_alone(shard, name, topic.count).await,
            },
        };
        match outcome {
            Ok(()) => {
                if !request.validate_only {
                    tracing::info!(topic = %name, partitions = topic.count, "partitions added");
                }
                results.push(result(name, ErrorCode::NONE, ""));
            }
            Err((code, message)) => {
                tracing::warn!(topic = %name, code = code.name(), error = %message, "partitions not added");
                results.push(result(name, code, message));
            }
        }
    }
    CreatePartitionsResponse { topics: results }
}

/// A broker running alone: grows `name` to `count` partitions.
async fn add_partitions_alone(
    shard: &Rc<Shard>,
    name: &str,
    count: u32,
) -> Result<(), (ErrorCode, String)> {
    let mut next = (*shard.snapshot()).clone();
    let Some(meta) = next.topics.get_mut(name) else {
        return Err((
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            format!("unknown topic {name}"),
        ));
    };
    let before = meta.partitions;
    meta.partitions = count;
    let configs = meta.configs.clone();
    let data_dir = shard.cluster.config.data_dir.clone();
    if let Err(e) = next.persist(&data_dir) {
        tracing::error!(error = %e, "cannot persist topic metadata");
        return Err((ErrorCode::STORAGE_ERROR, e.to_string()));
    }
    if let Err(e) = open_on_owners(shard, name, before..count, &configs).await {
        tracing::error!(topic = %name, error = %e, "adding partitions failed; rolling back");
        close_on_owners(shard, name, before..count).await;
        if let Some(meta) = next.topics.get_mut(name) {
            meta.partitions = before;
        }
        if let Err(e) = next.persist(&data_dir) {
            tracing::error!(error = %e, "cannot persist topic metadata after a rollback");
        }
        return Err((ErrorCode::STORAGE_ERROR, e));
    }
    broadcast(shard, next).await;
    Ok(())
}

/// Has the owning shards close and delete a topic's logs, then removes its directory.
async fn remove_logs(shard: &Rc<Shard>, topic: &str, partitions: u32) {
    close_on_owners(shard, topic, 0..partitions).await;
    let dir = topic_dir(&shard.cluster.config.data_dir, topic);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot delete topic directory")
        }
    }
}

/// Installs `next` on every shard and waits until each has it.
async fn broadcast(shard: &Rc<Shard>, next: Metadata) {
    let metadata = Arc::new(next);
    let mut replies = Vec::new();
    for target in 0..shard.cluster.config.shards {
        let (reply, rx) = reply_channel();
        shard
            .send(
                target,
                ShardMsg::Snapshot {
                    metadata: metadata.clone(),
                    reply,
                },
            )
            .await;
        replies.push(rx);
    }
    for rx in replies {
        let _ = rx.recv_async().await;
    }
}

/// Answers InitProducerId (see [`crate::shard::producer_ids`]): loads the allocator at the
/// first call, then allocates or bumps. Runs synchronously on the controller, so requests
/// are answered one at a time.
pub(crate) fn init_producer_id(
    shard: &Rc<Shard>,
    request: &InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut ids = shard.producer_ids.borrow_mut();
    if ids.is_none() {
        let config = &shard.cluster.config;
        match ProducerIds::load(&config.data_dir, config.node_id) {
            Ok(loaded) => {
                tracing::info!(next = loaded.high_mark(), "producer id allocator loaded");
                *ids = Some(loaded);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load the producer id allocator");
                return InitProducerIdResponse {
                    error: ErrorCode::STORAGE_ERROR,
                    message: e,
                    producer_id: -1,
                    producer_epoch: -1,
                };
            }
        }
    }
    let cluster = shard.view.borrow().is_some();
    ids.as_mut().expect("loaded above").init(request, cluster)
}
