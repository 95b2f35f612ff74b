//! Loopback ports: free ones for processes that must be told a port, and closed ones that
//! refuse every connection for as long as a test holds them.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it). Whoever binds it next
/// wins: only for programs that cannot be given a bound socket or `:0` (etcd's peer and client
/// URLs), and its callers retry with another port if they lose that race.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// An address on 127.0.0.1 where nothing answers: a socket bound there that never listens,
/// held until dropped. Connections to it are refused at once, and no other test can take the
/// port while it is held (so "unreachable" never lands on a neighbour's server).
///
/// # Examples
///
/// ```
/// let closed = switchboard_testkit::ClosedPort::new()?;
/// assert!(std::net::TcpStream::connect(closed.addr()).is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ClosedPort {
    _socket: Socket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Binds a port the OS picks, without listening on it.
    pub fn new() -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("a TCP socket without an IP address"))?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}
