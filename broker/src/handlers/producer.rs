//! InitProducerId: any shard forwards it to the controller (shard 0), which allocates ids.

use std::rc::Rc;

use sluice_proto::protocol::{ErrorCode, InitProducerIdRequest, InitProducerIdResponse};

use super::OWNER_SHUTTING_DOWN;
use crate::shard::Shard;
use crate::shard::msg::{ShardMsg, reply_channel};

/// The shard that allocates producer ids.
const CONTROLLER: usize = 0;

/// Runs an InitProducerId request.
pub(super) async fn init_producer_id(
    shard: Rc<Shard>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let (reply, rx) = reply_channel();
    shard
        .send(CONTROLLER, ShardMsg::InitProducerId { request, reply })
        .await;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| InitProducerIdResponse {
            error: ErrorCode::SHUTTING_DOWN,
            message: OWNER_SHUTTING_DOWN.into(),
            producer_id: -1,
            producer_epoch: -1,
        })
}
