//! Consumer group APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups).

use std::rc::Rc;

use sluice_proto::protocol::{ApiKey, ErrorCode, Reader, encode_error_response};

use super::{Admitted, RequestCtx};
use crate::net::conn::ready;
use crate::shard::Shard;

/// Decodes and admits one group request.
pub(crate) fn admit(_shard: &Rc<Shard>, api: ApiKey, _reader: Reader, ctx: RequestCtx) -> Admitted {
    let chunks = encode_error_response(
        ctx.correlation_id,
        ErrorCode::COORDINATOR_NOT_AVAILABLE,
        &format!("{} is not served yet", api.spec().name),
    );
    Admitted::InFlight(ready(chunks, false, vec![ctx.permit]))
}
