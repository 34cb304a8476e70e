//! The request and response bodies, one file per API.

mod api_versions;
mod cluster;
mod fetch;
mod group;
mod list_offsets;
mod metadata;
mod produce;
mod producer;
mod topics;

pub use api_versions::*;
pub use cluster::*;
pub use fetch::*;
pub use group::*;
pub use list_offsets::*;
pub use metadata::*;
pub use produce::*;
pub use producer::*;
pub use topics::*;
