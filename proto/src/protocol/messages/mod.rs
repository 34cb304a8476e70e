//! The request and response bodies, one file per API.

mod api_versions;
mod fetch;
mod list_offsets;
mod metadata;
mod produce;
mod topics;

pub use api_versions::*;
pub use fetch::*;
pub use list_offsets::*;
pub use metadata::*;
pub use produce::*;
pub use topics::*;
