//! Test gRPC servers: the `User` service on a loopback port, plus two servers that misbehave.
//!
//! A [`TestServer`] runs on its own thread with its own current-thread tokio runtime, like a
//! separate process: it keeps serving while the test's runtime is busy (or on paused time), and
//! [`TestServer::abort`] drops that runtime, which closes every connection at once the way a
//! crashed process would. (Aborting only tonic's accept task would not do: tonic spawns one task
//! per connection, and those would keep serving.)

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::Stream;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::proto::user::user_server::{User, UserServer};
use crate::proto::user::{
    ChatMessage, Chunk, Event, GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply,
    RegisterRequest, UploadSummary, UserInfo, WatchEventsRequest,
};

/// The gRPC name of the `User` service, as health checks ask for it.
const USER_SERVICE: &str = "user.User";

/// Counters and knobs shared between a [`TestServer`] handle and its service.
#[derive(Debug, Default)]
struct Shared {
    served: AtomicU64,
    delay_nanos: AtomicU64,
    connections: AtomicUsize,
    next_id: AtomicI64,
    /// Streaming calls not yet finished or cancelled.
    open_streams: watch::Sender<usize>,
    /// The `user-agent` of the last `GetUserInfo` call.
    user_agent: std::sync::Mutex<Option<String>>,
    /// The `:authority` and `grpc-encoding` of the last `Login` call.
    login: std::sync::Mutex<Option<LoginSeen>>,
}

/// What a [`TestServer`] saw of the last `Login` call's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginSeen {
    /// Its `:authority`.
    pub authority: String,
    /// Its `grpc-encoding` (how its message was compressed), if any.
    pub encoding: Option<String>,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }
}

/// An in-process gRPC server on 127.0.0.1 serving `user.User` and `grpc.health.v1.Health`
/// (SERVING), whose replies name the instance.
///
/// Dropping it is [`TestServer::abort`].
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use switchboard_testkit::TestServer;
/// use switchboard_testkit::proto::user::{RegisterRequest, user_client::UserClient};
///
/// let server = TestServer::start("a").await?;
/// let mut client = UserClient::connect(format!("http://{}", server.addr())).await?;
/// let reply = client.register(RegisterRequest::default()).await?.into_inner();
/// assert_eq!(reply.instance, "a");
/// assert_eq!(server.served(), 1);
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestServer {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    health: HealthReporter,
    /// `true` starts a graceful shutdown.
    stop: watch::Sender<bool>,
    /// Sending or dropping it aborts the server.
    abort: Option<oneshot::Sender<()>>,
    /// Fires once the server's runtime is gone (every connection closed).
    done: Option<oneshot::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server named `name` on a free port of 127.0.0.1.
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_on(name, 0).await
    }

    /// Starts a server named `name` on `127.0.0.1:port` (0 = a free port), with `SO_REUSEADDR`
    /// so that a server can be restarted on the port of one that just stopped.
    pub async fn start_on(name: &str, port: u16) -> Result<Self> {
        let listener = listen(port).with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_service_status(USER_SERVICE, ServingStatus::Serving)
            .await;
        let service = UserService {
            name: name.into(),
            shared: shared.clone(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let span = info_span!("test_server", name, %addr);
        let incoming_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-server-{name}"))
            .spawn(move || {
                let serve = async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(error = %e, "cannot register the listener");
                            return;
                        }
                    };
                    let recorded = incoming_shared.clone();
                    let incoming = incoming(listener, stop_rx, incoming_shared);
                    let record = tower::util::MapRequestLayer::new(
                        move |request: http::Request<tonic::body::Body>| {
                            if request.uri().path() == "/user.User/Login" {
                                let seen = LoginSeen {
                                    authority: request
                                        .uri()
                                        .authority()
                                        .map(ToString::to_string)
                                        .unwrap_or_default(),
                                    encoding: request
                                        .headers()
                                        .get("grpc-encoding")
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned),
                                };
                                *recorded.login.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(seen);
                            }
                            request
                        },
                    );
                    let server = tonic::transport::Server::builder()
                        .layer(record)
                        .add_service(health_service)
                        .add_service(serving(UserServer::new(service)))
                        // The incoming stream ends on `stop`; the shutdown signal then is the
                        // end of that stream, so the listener closes before the drain.
                        .serve_with_incoming_shutdown(incoming, std::future::pending());
                    tokio::select! {
                        result = server => match result {
                            Ok(()) => info!("test server stopped gracefully"),
                            Err(e) => warn!(error = %e, "test server failed"),
                        },
                        _ = abort_rx => info!("test server aborted"),
                    }
                }
                .instrument(span);
                runtime.block_on(serve);
                // Dropping the runtime drops every connection task, hence every socket.
                drop(runtime);
                let _ = done_tx.send(());
            })?;
        info!(name, %addr, "test server listening");
        Ok(Self {
            name: name.to_owned(),
            addr,
            shared,
            health,
            stop,
            abort: Some(abort),
            done: Some(done),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, which every reply carries as `instance`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many `user.User` RPCs it has handled (all methods, counted when they start).
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Delays every unary reply by `delay` from now on. Defaults to none.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// How many streaming calls (`WatchEvents`, `Upload`, `Chat`) are open now: one ends when
    /// it completes or when the client cancels it (an HTTP/2 reset).
    pub fn open_streams(&self) -> usize {
        *self.shared.open_streams.borrow()
    }

    /// Waits, at most `limit`, until no streaming call is open on it (each finished or
    /// cancelled); the error says how many still are.
    pub async fn streams_closed(&self, limit: Duration) -> Result<()> {
        let mut open = self.shared.open_streams.subscribe();
        match tokio::time::timeout(limit, open.wait_for(|n| *n == 0)).await {
            Ok(_) => Ok(()),
            Err(_) => anyhow::bail!(
                "{} streaming calls still open on {} after {limit:?}",
                self.open_streams(),
                self.name
            ),
        }
    }

    /// The `user-agent` of the last `GetUserInfo` call, if it had one.
    pub fn last_user_agent(&self) -> Option<String> {
        self.shared
            .user_agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the last `Login` call's request carried, if one came.
    pub fn last_login(&self) -> Option<LoginSeen> {
        self.shared
            .login
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many TCP connections to it are open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Sets the health status of the server as a whole (`""`) and of `user.User` to SERVING
    /// or NOT_SERVING. Health watchers are notified.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", USER_SERVICE] {
            self.health.set_service_status(service, status).await;
        }
        info!(name = %self.name, serving, "test server health changed");
    }

    /// Stops gracefully and waits until it has stopped: closes the listener (new connections
    /// are refused), sends every connection an HTTP/2 GOAWAY, lets in-flight RPCs (open streams
    /// included) finish, and returns once every connection is closed.
    pub async fn shutdown(mut self) {
        info!(name = %self.name, "test server shutting down");
        self.stop.send_replace(true);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        self.join();
    }

    /// Stops at once: every connection is closed (FIN, or RST where unread data remains) with
    /// no GOAWAY, as when a process crashes. Returns once the sockets are closed.
    pub fn abort(self) {
        drop(self);
    }

    fn join(&mut self) {
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.join();
    }
}

/// A listening std socket on `127.0.0.1:port` with `SO_REUSEADDR`, ready for tokio.
fn listen(port: u16) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepted connections, counted while open, until `stop` turns true; then the listener is
/// dropped and the stream ends.
fn incoming(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> impl Stream<Item = io::Result<Tracked>> {
    futures_util::stream::unfold(
        (listener, stop, shared),
        |(listener, mut stop, shared)| async move {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return None,
                accepted = listener.accept() => accepted,
            };
            let item = match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    debug!(%peer, "connection accepted");
                    Ok(Tracked::new(stream, shared.clone()))
                }
                Err(e) => {
                    // Out of file descriptors, say: tonic logs it and asks again; not at once.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Err(e)
                }
            };
            Some((item, (listener, stop, shared)))
        },
    )
}

/// An accepted connection that counts itself in [`Shared::connections`] while it lives.
struct Tracked {
    stream: TcpStream,
    shared: Arc<Shared>,
}

impl Tracked {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        Self { stream, shared }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Tracked {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The `User` service: every reply names the instance.
#[derive(Debug, Clone)]
struct UserService {
    name: Arc<str>,
    shared: Arc<Shared>,
}

/// The demo `user.User` service that [`TestServer`] serves, for servers built elsewhere (such as
/// `switchboard::Server`): every reply names the instance `name`.
pub fn user_service(name: &str) -> UserServer<impl User> {
    serving(UserServer::new(UserService {
        name: name.into(),
        shared: Arc::default(),
    }))
}

/// The service as test servers serve it: gzip accepted, and used for responses to clients
/// that accept it; messages up to 64 MiB either way (tonic's default, 4 MiB, would hide the
/// client's own limits).
fn serving<T: User>(service: UserServer<T>) -> UserServer<T> {
    use tonic::codec::CompressionEncoding::Gzip;
    service
        .accept_compressed(Gzip)
        .send_compressed(Gzip)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

impl UserService {
    /// Counts an RPC and waits out the configured delay.
    async fn unary(&self) {
        self.shared.served.fetch_add(1, Ordering::Relaxed);
        let delay = self.shared.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The stream of events a `WatchEvents` call returns.
type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl User for UserService {
    async fn register(
        &self,
        _request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        self.unary().await;
        Ok(Response::new(RegisterReply {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            instance: self.name.to_string(),
        }))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        self.unary().await;
        let username = request.into_inner().username;
        Ok(Response::new(LoginReply {
            id: 1,
            token: format!("token-{username}"),
            instance: self.name.to_string(),
        }))
    }

    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        self.unary().await;
        let agent = request.metadata().get("user-agent");
        let agent = agent.and_then(|a| a.to_str().ok()).map(str::to_owned);
        *self
            .shared
            .user_agent
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = agent;
        let id = request.into_inner().id;
        Ok(Response::new(UserInfo {
            id,
            username: format!("user-{id}"),
            instance: self.name.to_string(),
        }))
    }

    type WatchEventsStream = EventStream;

    /// Sends `count` events with `seq` 1, 2, …, `count`: the first at once, the next ones
    /// `interval_ms` apart.
    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.shared.served.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let count = u64::from(request.count);
        let interval = Duration::from_millis(u64::from(request.interval_ms));
        let instance = self.name.clone();
        let open = OpenStream::new(self.shared.clone());
        let events = futures_util::stream::unfold((1u64, open), move |(seq, open)| {
            let instance = instance.clone();
            async move {
                if seq > count {
                    return None;
                }
                if seq > 1 {
                    tokio::time::sleep(interval).await;
                }
                let event = Event {
                    seq,
                    instance: instance.to_string(),
                };
                Some((Ok(event), (seq + 1, open)))
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    /// Counts and sums the chunks up to the end of the client's stream.
    async fn upload(
        &self,
        request: Request<tonic::Streaming<Chunk>>,
    ) -> Result<Response<UploadSummary>, Status> {
        self.shared.served.fetch_add(1, Ordering::Relaxed);
        let _open = OpenStream::new(self.shared.clone());
        let mut chunks = request.into_inner();
        let (mut count, mut bytes) = (0u64, 0u64);
        while let Some(chunk) = chunks.message().await? {
            count += 1;
            bytes += chunk.data.len() as u64;
        }
        Ok(Response::new(UploadSummary {
            chunks: count,
            bytes,
            instance: self.name.to_string(),
        }))
    }

    type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatMessage, Status>> + Send>>;

    /// Echoes every message as it arrives, with this server's name.
    async fn chat(
        &self,
        request: Request<tonic::Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.shared.served.fetch_add(1, Ordering::Relaxed);
        let open = OpenStream::new(self.shared.clone());
        let instance = self.name.clone();
        let echoes = futures_util::stream::unfold(
            (request.into_inner(), open),
            move |(mut messages, open)| {
                let instance = instance.clone();
                async move {
                    let echo = match messages.message().await {
                        Ok(Some(m)) => Ok(ChatMessage {
                            instance: instance.to_string(),
                            ..m
                        }),
                        Ok(None) => return None,
                        Err(status) => Err(status),
                    };
                    Some((echo, (messages, open)))
                }
            },
        );
        Ok(Response::new(Box::pin(echoes)))
    }
}

/// A streaming call, counted in [`Shared::open_streams`] while it lives.
struct OpenStream(Arc<Shared>);

impl OpenStream {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open_streams.send_modify(|n| *n += 1);
        Self(shared)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.send_modify(|n| *n -= 1);
    }
}

/// A server that accepts TCP connections and never sends a byte, keeping them open: a peer
/// that hangs before the HTTP/2 handshake. Stops when dropped.
#[derive(Debug)]
pub struct BlackHoleServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHoleServer {
    /// Starts it on a free port of 127.0.0.1.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(
            async move {
                let mut held = Vec::new();
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            debug!(%peer, "black hole swallowed a connection");
                            counter.fetch_add(1, Ordering::Relaxed);
                            held.push(stream);
                        }
                        Err(e) => {
                            warn!(error = %e, "black hole accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            .instrument(info_span!("black_hole", %addr)),
        );
        Ok(Self {
            addr,
            accepted,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for BlackHoleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer of an [`Http1Server`] to anything.
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n";

/// A server that answers whatever it receives with `HTTP/1.1 400 Bad Request` and closes the
/// connection: an HTTP/1-only server where an HTTP/2 one was expected. Stops when dropped.
#[derive(Debug)]
pub struct Http1Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Http1Server {
    /// Starts it on a free port of 127.0.0.1.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(
            async move {
                let mut connections = JoinSet::new();
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            counter.fetch_add(1, Ordering::Relaxed);
                            connections.spawn(answer_bad_request(stream, peer));
                        }
                        Err(e) => {
                            warn!(error = %e, "HTTP/1 server accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    while connections.try_join_next().is_some() {}
                }
            }
            .instrument(info_span!("http1_server", %addr)),
        );
        Ok(Self {
            addr,
            accepted,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Http1Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for the first bytes, answers 400 and closes.
async fn answer_bad_request(mut stream: TcpStream, peer: SocketAddr) {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf).await {
        Ok(0) | Err(_) => return,
        Ok(_) => {}
    }
    let _ = stream.write_all(BAD_REQUEST).await;
    let _ = stream.shutdown().await;
    debug!(%peer, "answered 400 Bad Request");
    // Closing with unread input would send RST, which can discard the answer at the peer:
    // read on (briefly) until the peer closes too.
    let drain = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}
