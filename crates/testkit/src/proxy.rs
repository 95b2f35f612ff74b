//! A TCP proxy that injects network faults between a client and a server.
//!
//! Every accepted connection gets its own upstream connection and two copy directions. While
//! paused, neither direction reads (so nothing is lost or reordered: bytes already read are
//! written once the proxy resumes) and new connections are accepted but not connected upstream:
//! to both ends the peer has gone silent, as with a dropped network or a frozen host. A reset
//! closes every current connection on both sides with RST (`SO_LINGER` 0, then close). Stranding
//! leaves every current connection silent for good, open but never forwarded again, as when a
//! network comes back under a new address and the packets of the old connections go nowhere.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use socket2::SockRef;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument as _, debug, info, info_span, warn};

/// Size of each copy direction's buffer.
const BUFFER: usize = 16 * 1024;

/// A TCP forwarder on 127.0.0.1 to one target, with faults on demand.
///
/// Runs on the runtime that started it; dropping it closes every connection.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use switchboard_testkit::{FaultProxy, TestServer};
///
/// let server = TestServer::start("a").await?;
/// let proxy = FaultProxy::start(server.addr()).await?;
/// // Clients dial proxy.addr() instead of server.addr().
/// proxy.pause(); // the server goes silent
/// proxy.resume();
/// proxy.reset(); // every connection through the proxy is reset
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    paused: watch::Sender<bool>,
    /// Bumped by every reset; connections reset when it changes.
    resets: watch::Sender<u64>,
    /// Bumped by every strand; connections go silent for good when it changes.
    strands: watch::Sender<u64>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding from a free port of 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (paused, paused_rx) = watch::channel(false);
        let (resets, resets_rx) = watch::channel(0u64);
        let (strands, strands_rx) = watch::channel(0u64);
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(
            async move {
                // Dropping the set (when this task is aborted) aborts every connection task.
                let mut tasks = JoinSet::new();
                loop {
                    match listener.accept().await {
                        Ok((client, peer)) => {
                            // Registered here, synchronously, so that a `reset()` reaches every
                            // connection `connections()` counts.
                            let mut resets = resets_rx.clone();
                            resets.mark_unchanged();
                            let mut strands = strands_rx.clone();
                            strands.mark_unchanged();
                            let guard = Counted::new(counter.clone());
                            let span = info_span!("proxy_connection", %peer);
                            tasks.spawn(
                                forward(
                                    client,
                                    target,
                                    paused_rx.clone(),
                                    Faults { resets, strands },
                                    guard,
                                )
                                .instrument(span),
                            );
                        }
                        Err(e) => {
                            warn!(error = %e, "proxy accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    while tasks.try_join_next().is_some() {}
                }
            }
            .instrument(info_span!("fault_proxy", %addr, %target)),
        );
        info!(%addr, %target, "fault proxy started");
        Ok(Self {
            addr,
            target,
            paused,
            resets,
            strands,
            connections,
            task,
        })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops forwarding in both directions, silently: sockets stay open, nothing is read or
    /// written, and new connections are accepted but not forwarded.
    pub fn pause(&self) {
        self.paused.send_replace(true);
        info!(addr = %self.addr, "fault proxy paused");
    }

    /// Forwards again, starting with the bytes read before the pause.
    pub fn resume(&self) {
        self.paused.send_replace(false);
        info!(addr = %self.addr, "fault proxy resumed");
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Closes every current connection abruptly on both sides with RST (`SO_LINGER` 0). The
    /// connections' tasks do it right after this returns; later connections are not affected.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
        info!(addr = %self.addr, "fault proxy resetting every connection");
    }

    /// Leaves every current connection silent for good: nothing more is forwarded on it in
    /// either direction, neither end hears a word, and it stays open until a reset or until the
    /// proxy is dropped; as when a network comes back under a new address and the old
    /// connections' packets go nowhere. Later connections are not affected.
    pub fn strand(&self) {
        self.strands.send_modify(|n| *n += 1);
        info!(addr = %self.addr, "fault proxy stranding every connection");
    }

    /// How many client connections are open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts one open connection while it lives.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The faults that reach connections already open.
struct Faults {
    resets: watch::Receiver<u64>,
    strands: watch::Receiver<u64>,
}

impl Faults {
    /// Holds the sockets, silent, until a reset comes (forever if none does).
    async fn stranded(&mut self, sockets: Vec<TcpStream>) {
        debug!("connection stranded");
        if self.resets.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        debug!("stranded connection reset");
        for socket in sockets {
            close_with_rst(socket);
        }
    }
}

/// Forwards one client connection to `target` until both directions end, a reset comes or the
/// connection is stranded.
async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    paused: watch::Receiver<bool>,
    mut faults: Faults,
    _counted: Counted,
) {
    let _ = client.set_nodelay(true);
    // While paused, not even the upstream connection is made.
    let connect = async {
        wait_until(&mut paused.clone(), false).await;
        TcpStream::connect(target).await
    };
    let mut upstream = tokio::select! {
        _ = faults.resets.changed() => {
            debug!("connection reset before it was forwarded");
            close_with_rst(client);
            return;
        }
        _ = faults.strands.changed() => {
            faults.stranded(vec![client]).await;
            return;
        }
        upstream = connect => match upstream {
            Ok(upstream) => upstream,
            Err(e) => {
                debug!(error = %e, "upstream connect failed; resetting the client");
                close_with_rst(client);
                return;
            }
        },
    };
    let _ = upstream.set_nodelay(true);
    debug!("forwarding");
    let outcome = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let up = copy(&mut client_read, &mut upstream_write, paused.clone());
        let down = copy(&mut upstream_read, &mut client_write, paused.clone());
        tokio::select! {
            both = async { tokio::try_join!(up, down) } => both.map(|_| Ended::Closed),
            _ = faults.resets.changed() => Err(io::Error::other("reset by the fault proxy")),
            _ = faults.strands.changed() => Ok(Ended::Stranded),
        }
    };
    match outcome {
        Ok(Ended::Closed) => debug!("connection closed"),
        Ok(Ended::Stranded) => faults.stranded(vec![client, upstream]).await,
        Err(e) => {
            debug!(error = %e, "connection reset");
            close_with_rst(client);
            close_with_rst(upstream);
        }
    }
}

/// How a forwarded connection ended, short of a reset.
enum Ended {
    Closed,
    Stranded,
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`), never reading while paused.
async fn copy(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    mut paused: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        wait_until(&mut paused, false).await;
        // A read is cancel-safe: if the pause wins, no byte was taken.
        let n = tokio::select! {
            biased;
            _ = wait_until(&mut paused, true) => continue,
            n = from.read(&mut buf) => n?,
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        wait_until(&mut paused, false).await;
        to.write_all(&buf[..n]).await?;
    }
}

/// Waits until the paused flag equals `value` (forever if the proxy is gone).
async fn wait_until(paused: &mut watch::Receiver<bool>, value: bool) {
    if paused.wait_for(|p| *p == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Closes a socket with RST instead of FIN.
fn close_with_rst(stream: TcpStream) {
    if let Err(e) = SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        debug!(error = %e, "cannot set SO_LINGER 0");
    }
    drop(stream);
}
