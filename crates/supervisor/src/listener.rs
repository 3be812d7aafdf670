//! The shared listening socket.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};

/// Accept-queue length. Connections wait here while every front is busy, or
/// while a killed front is being replaced: a generous queue is what makes a
/// front's death invisible to clients.
pub const BACKLOG: i32 = 1024;

/// Why the listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `socket(2)` failed.
    #[error("could not create a socket for {addr}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Setting `SO_REUSEADDR`/`SO_REUSEPORT` failed.
    #[error("could not set socket options on {addr}")]
    SetOption {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// `bind(2)` failed (address in use, permission).
    #[error("could not bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// `listen(2)` failed.
    #[error("could not listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// `getsockname(2)` failed.
    #[error("could not read the bound address")]
    LocalAddr(#[source] std::io::Error),
}

/// Binds `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, listens, and returns the
/// listener (close-on-exec: children receive it explicitly) and the address
/// actually bound (port 0 picks a free port).
pub fn bind_shared(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ListenError> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|source| ListenError::Socket { addr, source })?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)
        .and_then(|()| setsockopt(&fd, sockopt::ReusePort, &true))
        .map_err(|source| ListenError::SetOption { addr, source })?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(|source| ListenError::Bind { addr, source })?;
    let backlog = Backlog::new(BACKLOG).expect("BACKLOG is within the kernel's range");
    listen(&fd, backlog).map_err(|source| ListenError::Listen { addr, source })?;
    let listener = TcpListener::from(fd);
    let local = listener.local_addr().map_err(ListenError::LocalAddr)?;
    Ok((listener, local))
}
