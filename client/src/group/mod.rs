//! Consumer groups on the client side: the assignors the leader runs, a consumer's
//! membership (join, sync, heartbeat, commit, leave), and group admin on `Client`.

pub(crate) mod admin;
pub(crate) mod assignor;
pub(crate) mod member;
