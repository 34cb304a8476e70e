//! Networking: binding the listeners, and serving connections.

pub(crate) mod conn;
pub(crate) mod listener;
