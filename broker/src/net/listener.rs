//! Listening sockets. Every shard accepts on the shared address (`SO_REUSEPORT`: the kernel
//! spreads new connections over the shards) and on its own address, which metadata
//! advertises so clients can connect straight to the shard owning a partition. Sockets are
//! bound on the main thread (so the real ports are known before any shard starts) and handed
//! to the shards, which register them with their own rings.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds a listener; `reuse_port` for the shared address.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
