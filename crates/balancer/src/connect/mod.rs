//! Establishing one HTTP/2 connection to one instance: TCP (socket2 options), optional TLS, the
//! HTTP/2 handshake with hyper, and the server's SETTINGS.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::connect::io::{SettingsWatch, Stream};

pub(crate) mod health;
pub(crate) mod io;
#[cfg(feature = "tls")]
pub(crate) mod tls;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Closed {
    /// The server sent GOAWAY with NO_ERROR (a graceful stop), or the connection was closed
    /// cleanly.
    Graceful,
    /// The server sent GOAWAY with ENHANCE_YOUR_CALM: we pinged too often.
    TooManyPings(String),
    /// Anything else: an I/O error, a reset, a keepalive timeout.
    Error(String),
}

/// An established connection.
pub(crate) struct Connection<S> {
    /// Sends requests on it.
    pub(crate) sender: S,
    /// Resolves when it ends (new requests can no longer be sent).
    pub(crate) closed: BoxFuture<Closed>,
    /// Closes the socket at once, failing whatever is still in flight.
    pub(crate) abort: Box<dyn FnOnce() + Send>,
    /// The streams the peer allows at once (its `MAX_CONCURRENT_STREAMS`), as its latest
    /// SETTINGS say.
    pub(crate) max_streams: Arc<AtomicUsize>,
    /// `https` over TLS, `http` otherwise: the scheme of its requests.
    pub(crate) scheme: Scheme,
}

/// Establishes connections. Implemented by [`HttpConnector`]; tests drive the sub-channel state
/// machine with scripted connectors.
pub(crate) trait Connector: Send + Sync + 'static {
    /// What sends requests on an established connection.
    type Sender: Clone + Send + Sync + 'static;

    /// Connects to `addr`, pinging every `keepalive` if set, over TLS or not as the instance
    /// was registered (`secure`: `None` when its registration does not say). The caller bounds
    /// the time.
    fn connect(
        &self,
        addr: &str,
        secure: Option<bool>,
        keepalive: Option<Duration>,
    ) -> BoxFuture<Result<Connection<Self::Sender>, String>>;

    /// Opens `grpc.health.v1.Health/Watch` for `service` on an established connection
    /// (gRFC A17). Without an implementation, servers do not implement it: healthy.
    fn watch_health(
        &self,
        sender: &Self::Sender,
        scheme: &Scheme,
        authority: &Authority,
        service: &str,
    ) -> crate::connect::health::WatchStream {
        let _ = (sender, scheme, authority, service);
        Box::pin(futures_util::stream::iter([Err(
            tonic::Status::unimplemented("no health service"),
        )]))
    }
}

/// Socket and HTTP/2 options of every connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnectOptions {
    pub(crate) keepalive_timeout: Duration,
    pub(crate) keepalive_while_idle: bool,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) initial_stream_window: Option<u32>,
    pub(crate) initial_connection_window: Option<u32>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<crate::connect::tls::TlsPolicy>>,
}

/// Connects over TCP (and TLS) and speaks HTTP/2 with hyper.
#[derive(Clone, Debug)]
pub(crate) struct HttpConnector {
    options: Arc<ConnectOptions>,
}

/// The request sender of one connection.
pub(crate) type Sender = http2::SendRequest<tonic::body::Body>;

impl HttpConnector {
    pub(crate) fn new(options: ConnectOptions) -> Self {
        Self {
            options: Arc::new(options),
        }
    }
}

impl Connector for HttpConnector {
    type Sender = Sender;

    fn connect(
        &self,
        addr: &str,
        secure: Option<bool>,
        keepalive: Option<Duration>,
    ) -> BoxFuture<Result<Connection<Sender>, String>> {
        let options = self.options.clone();
        let addr = addr.to_owned();
        Box::pin(async move { connect(&options, &addr, secure, keepalive).await })
    }

    fn watch_health(
        &self,
        sender: &Sender,
        scheme: &Scheme,
        authority: &Authority,
        service: &str,
    ) -> crate::connect::health::WatchStream {
        crate::connect::health::watch(sender, scheme.clone(), authority, service)
    }
}

async fn connect(
    options: &ConnectOptions,
    addr: &str,
    secure: Option<bool>,
    keepalive: Option<Duration>,
) -> Result<Connection<Sender>, String> {
    let tcp = connect_tcp(options, addr, keepalive).await?;
    let stream = wrap_tls(options, addr, secure, tcp).await?;
    let scheme = if stream.is_tls() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let (io, first_frame) = SettingsWatch::new(stream);
    // Fails the connection's I/O when a drain times out: hyper's connection task then ends,
    // and closes the socket.
    let closer = io.abort_handle();

    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(options.keepalive_timeout)
        .keep_alive_while_idle(options.keepalive_while_idle);
    if let Some(w) = options.initial_stream_window {
        builder.initial_stream_window_size(w);
    }
    if let Some(w) = options.initial_connection_window {
        builder.initial_connection_window_size(w);
    }
    let (sender, conn) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {}", chain(&e)))?;
    // The peer's stream limit, read each time the connection's task runs (its SETTINGS can
    // change it at any time).
    let max_streams = Arc::new(AtomicUsize::new(usize::MAX));
    let limit = max_streams.clone();
    let mut conn = conn;
    let driven = std::future::poll_fn(move |cx| {
        let polled = Pin::new(&mut conn).poll(cx);
        let now = conn.current_max_send_streams();
        if limit.load(Ordering::Relaxed) != now {
            limit.store(now, Ordering::Relaxed);
        }
        polled
    });
    let mut closed: BoxFuture<Closed> = Box::pin(async move { classify(driven.await) });
    let mut first_frame = first_frame;
    tokio::select! {
        // The first frame's verdict says more than the error the connection ends with.
        biased;
        first = &mut first_frame => match first {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the connection closed before the server's SETTINGS".into()),
        },
        how = &mut closed => {
            if let Ok(Err(e)) = first_frame.try_recv() {
                return Err(e);
            }
            return Err(match how {
                Closed::Graceful => "the server closed the connection before its SETTINGS".into(),
                Closed::TooManyPings(e) | Closed::Error(e) => e,
            });
        }
    }
    Ok(Connection {
        sender,
        closed,
        abort: Box::new(move || closer.abort()),
        max_streams,
        scheme,
    })
}

async fn connect_tcp(
    options: &ConnectOptions,
    addr: &str,
    keepalive: Option<Duration>,
) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .collect();
    let mut last = format!("{addr} resolved to no address");
    for sa in addrs {
        match connect_one(options, sa, keepalive).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("connecting to {sa}: {e}"),
        }
    }
    Err(last)
}

async fn connect_one(
    options: &ConnectOptions,
    sa: SocketAddr,
    keepalive: Option<Duration>,
) -> std::io::Result<TcpStream> {
    let socket = if sa.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    let sock = SockRef::from(&socket);
    if let Some(idle) = options.tcp_keepalive {
        sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle).with_interval(idle))?;
    }
    // As grpc-go does: with HTTP/2 keepalive on, unacknowledged data fails the connection
    // after the keepalive timeout too.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if keepalive.is_some() {
        sock.set_tcp_user_timeout(Some(options.keepalive_timeout))?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = keepalive;
    socket.connect(sa).await
}

#[cfg(feature = "tls")]
async fn wrap_tls(
    options: &ConnectOptions,
    addr: &str,
    secure: Option<bool>,
    tcp: TcpStream,
) -> Result<Stream, String> {
    let Some(tls) = options.tls.as_ref().and_then(|t| t.of(secure)) else {
        if secure == Some(true) {
            return Err("registered as secure (TLS), and the client has no TLS settings".into());
        }
        return Ok(Stream::Tcp(tcp));
    };
    let tls = tls?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = tls.server_name(host)?;
    let stream = tls
        .connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("TLS: the server did not select HTTP/2 (ALPN h2)".into());
    }
    Ok(Stream::Tls(Box::new(stream)))
}

#[cfg(not(feature = "tls"))]
async fn wrap_tls(
    _: &ConnectOptions,
    _: &str,
    secure: Option<bool>,
    tcp: TcpStream,
) -> Result<Stream, String> {
    if secure == Some(true) {
        return Err("registered as secure (TLS), and the `tls` feature is off".into());
    }
    Ok(Stream::Tcp(tcp))
}

fn classify(result: Result<(), hyper::Error>) -> Closed {
    let Err(e) = result else {
        return Closed::Graceful;
    };
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_go_away() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                return Closed::TooManyPings(chain(&e));
            }
            if h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR) {
                return Closed::Graceful;
            }
        }
        source = err.source();
    }
    Closed::Error(chain(&e))
}

/// An error and its sources, `a: b: c`, without repeats.
pub(crate) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The authority requests to `addr` carry.
pub(crate) fn authority(addr: &str) -> Result<Authority, String> {
    addr.parse::<Authority>()
        .map_err(|e| format!("{addr:?} is not a valid authority: {e}"))
}

/// `uri`'s path and query, sent to `scheme://authority`.
pub(crate) fn with_origin(
    uri: &http::Uri,
    scheme: &Scheme,
    authority: &http::uri::Authority,
) -> Result<http::Uri, http::uri::InvalidUriParts> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    http::Uri::from_parts(parts)
}
