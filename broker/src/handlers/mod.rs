//! Request handling on the shard that owns the connection: decode the body, admit the
//! request (in connection order), split it per owning shard, forward, and merge the answers
//! in request order. One file per API family.

mod admin;
mod fetch;
mod group;
mod list_offsets;
mod produce;
mod producer;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use sluice_proto::protocol::{ApiKey, Reader, Wire, decode_body, encode_response};

use crate::budget::Permit;
use crate::net::conn::{InFlight, Outgoing};
use crate::placement::ShardId;
use crate::shard::Shard;

/// What a request carries from the reader.
pub(crate) struct RequestCtx {
    /// Echoed in the response.
    pub(crate) correlation_id: u32,
    /// How long the reader waited for the request budget.
    pub(crate) throttle: Duration,
    /// The frame's share of the request budget.
    pub(crate) permit: Permit,
    /// The client's address.
    pub(crate) peer: std::net::SocketAddr,
}

impl RequestCtx {
    fn throttle_ms(&self, extra: Duration) -> u32 {
        u32::try_from((self.throttle + extra).as_millis()).unwrap_or(u32::MAX)
    }
}

/// The outcome of admitting a request.
pub(crate) enum Admitted {
    /// Admitted: its task yields the response.
    InFlight(InFlight),
    /// The body is malformed (the connection is closed after the error).
    Invalid(String, Permit),
}

/// A task whose output is a response body for `ctx`.
fn respond<T: Wire + 'static>(
    ctx: RequestCtx,
    work: impl std::future::Future<Output = T> + 'static,
) -> InFlight {
    compio::runtime::spawn(async move {
        let body = work.await;
        Some(Outgoing {
            chunks: encode_response(ctx.correlation_id, &body),
            close: false,
            permits: vec![ctx.permit],
        })
    })
}

/// Decodes and admits one request.
pub(crate) async fn admit(
    shard: &Rc<Shard>,
    api: ApiKey,
    reader: Reader,
    ctx: RequestCtx,
) -> Admitted {
    macro_rules! body {
        ($ty:ty) => {
            match decode_body::<$ty>(reader) {
                Ok(body) => body,
                Err(e) => return Admitted::Invalid(e.to_string(), ctx.permit),
            }
        };
    }
    use sluice_proto::protocol as p;
    let in_flight = match api {
        ApiKey::FindCoordinator
        | ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::ListGroups
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups => return group::admit(shard, api, reader, ctx),
        ApiKey::ApiVersions => {
            let _: p::ApiVersionsRequest = body!(p::ApiVersionsRequest);
            let response = admin::api_versions(shard);
            respond(ctx, async move { response })
        }
        ApiKey::Metadata => {
            let request = body!(p::MetadataRequest);
            let response = admin::metadata(shard, request);
            respond(ctx, async move { response })
        }
        ApiKey::ListTopics => {
            let _: p::ListTopicsRequest = body!(p::ListTopicsRequest);
            let response = admin::list_topics(shard);
            respond(ctx, async move { response })
        }
        ApiKey::DescribeTopics => {
            let request = body!(p::DescribeTopicsRequest);
            respond(ctx, admin::describe_topics(shard.clone(), request))
        }
        ApiKey::CreateTopics => {
            let request = body!(p::CreateTopicsRequest);
            respond(ctx, admin::create_topics(shard.clone(), request))
        }
        ApiKey::DeleteTopics => {
            let request = body!(p::DeleteTopicsRequest);
            respond(ctx, admin::delete_topics(shard.clone(), request))
        }
        ApiKey::CreatePartitions => {
            let request = body!(p::CreatePartitionsRequest);
            respond(ctx, admin::create_partitions(shard.clone(), request))
        }
        ApiKey::DecommissionBroker => {
            let request = body!(p::DecommissionBrokerRequest);
            respond(ctx, admin::decommission_broker(shard.clone(), request))
        }
        ApiKey::Produce => {
            let request = body!(p::ProduceRequest);
            produce::admit(shard, request, ctx).await
        }
        ApiKey::Fetch => {
            let request = body!(p::FetchRequest);
            fetch::admit(shard, request, ctx)
        }
        ApiKey::ListOffsets => {
            let request = body!(p::ListOffsetsRequest);
            respond(ctx, list_offsets::run(shard.clone(), request))
        }
        ApiKey::InitProducerId => {
            let request = body!(p::InitProducerIdRequest);
            respond(ctx, producer::init_producer_id(shard.clone(), request))
        }
    };
    Admitted::InFlight(in_flight)
}

/// A part's place in a request: `(topic index, partition index)`.
type Place = (usize, usize);

/// Request parts grouped by owning shard, each remembering its place in the request.
struct Groups<P> {
    by_shard: BTreeMap<ShardId, (Vec<Place>, Vec<P>)>,
}

impl<P> Groups<P> {
    fn new() -> Self {
        Self {
            by_shard: BTreeMap::new(),
        }
    }

    fn push(&mut self, owner: ShardId, place: (usize, usize), part: P) {
        let (places, parts) = self.by_shard.entry(owner).or_default();
        places.push(place);
        parts.push(part);
    }
}

/// Results laid out like the request: `shape[t]` partitions for topic `t`.
struct Merged<R> {
    slots: Vec<Vec<Option<R>>>,
}

/// The message of a result whose owning shard stopped before answering.
const OWNER_SHUTTING_DOWN: &str = "the owning shard is shutting down";

/// A request's per-owner parts in flight: where each result goes (topic and partition index
/// in the request), and the owner's reply.
type Pending<R> = Vec<(Vec<(usize, usize)>, flume::Receiver<Vec<R>>)>;

impl<R> Merged<R> {
    /// Waits for every owner's reply and puts each result in its request slot. An owner that
    /// stops without answering (shutdown) leaves its slots empty for [`Merged::finish`].
    async fn gather(shape: impl Iterator<Item = usize>, pending: Pending<R>) -> Self {
        let mut slots: Vec<Vec<Option<R>>> =
            shape.map(|n| (0..n).map(|_| None).collect()).collect();
        for (places, rx) in pending {
            if let Ok(results) = rx.recv_async().await {
                for (&(t, p), r) in places.iter().zip(results) {
                    slots[t][p] = Some(r);
                }
            }
        }
        Self { slots }
    }

    /// Fills every slot no shard answered with `missing(topic, partition index in request)`.
    fn finish(self, mut missing: impl FnMut(usize, usize) -> R) -> Vec<Vec<R>> {
        self.slots
            .into_iter()
            .enumerate()
            .map(|(t, parts)| {
                parts
                    .into_iter()
                    .enumerate()
                    .map(|(p, r)| r.unwrap_or_else(|| missing(t, p)))
                    .collect()
            })
            .collect()
    }
}
