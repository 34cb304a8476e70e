//! Consumer groups on the client side: the assignors the leader runs.

pub(crate) mod assignor;
