//! ApiVersions: the handshake. The client learns which APIs and versions the broker speaks,
//! and which node and shard it reached.

use crate::protocol::wire::message;

message! {
    /// ApiVersions request: no fields.
    pub struct ApiVersionsRequest {}
}

message! {
    /// One API and the versions of it the broker supports.
    pub struct ApiVersionRange {
        /// The API key.
        pub api_key: u16,
        /// Oldest version supported.
        pub min_version: u16,
        /// Newest version supported.
        pub max_version: u16,
    }
}

message! {
    /// ApiVersions response.
    pub struct ApiVersionsResponse {
        /// Every API the broker supports.
        pub apis: Vec<ApiVersionRange>,
        /// The broker's node id.
        pub node_id: u32,
        /// The shard that owns this connection.
        pub shard: u16,
        /// How many shards the broker runs.
        pub shard_count: u16,
    }
}
