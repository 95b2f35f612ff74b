//! The test servers, the fault proxy and the server process of switchboard-testkit do what the
//! other tests rely on, checked with tonic's own client.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{
    Event, GetUserInfoRequest, LoginRequest, RegisterRequest, WatchEventsRequest,
};
use switchboard_testkit::{BlackHoleServer, FaultProxy, Http1Server, ServerProcess, TestServer};
use switchboard_tests::{PATIENCE, init_tracing};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The per-RPC timeout of the clients here: short, so that a silent peer is noticed quickly.
const RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// An endpoint with no per-RPC timeout, for streams that outlive [`RPC_TIMEOUT`].
fn stream_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(PATIENCE)
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    stream_endpoint(addr)
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT)
}

async fn user_client(addr: SocketAddr) -> UserClient<Channel> {
    UserClient::new(endpoint(addr).connect().await.expect("connecting"))
}

async fn stream_client(addr: SocketAddr) -> UserClient<Channel> {
    UserClient::new(stream_endpoint(addr).connect().await.expect("connecting"))
}

async fn register(client: &mut UserClient<Channel>) -> Result<String, Status> {
    Ok(client
        .register(RegisterRequest::default())
        .await?
        .into_inner()
        .instance)
}

/// Waits until `cond` holds, failing the test after [`PATIENCE`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn watch(client: &mut UserClient<Channel>, count: u32, interval_ms: u32) -> Streaming<Event> {
    client
        .watch_events(WatchEventsRequest {
            id: 1,
            count,
            interval_ms,
        })
        .await
        .expect("WatchEvents")
        .into_inner()
}

async fn next_event(stream: &mut Streaming<Event>) -> Result<Option<Event>, Status> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream stalled")
}

async fn health(addr: SocketAddr, service: &str) -> i32 {
    let mut client = HealthClient::new(endpoint(addr).connect().await.expect("connecting"));
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("Check")
        .into_inner()
        .status
}

fn is_refused(result: std::io::Result<TcpStream>) -> bool {
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[tokio::test]
async fn replies_name_the_instance_and_are_counted() {
    init_tracing();
    let server = TestServer::start("a").await.unwrap();
    assert_eq!(server.name(), "a");
    assert_eq!(server.connections(), 0);
    let mut client = user_client(server.addr()).await;

    assert_eq!(register(&mut client).await.unwrap(), "a");
    let login = client
        .login(LoginRequest {
            username: "ann".into(),
            password: "pw".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(login.instance, "a");
    let info = client
        .get_user_info(GetUserInfoRequest { id: 7 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.id, info.instance.as_str()), (7, "a"));
    let mut events = watch(&mut client, 1, 0).await;
    assert!(next_event(&mut events).await.unwrap().is_some());
    assert!(next_event(&mut events).await.unwrap().is_none());
    assert_eq!(server.served(), 4);
    assert_eq!(server.connections(), 1, "one channel, one connection");

    server.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(register(&mut client).await.unwrap(), "a");
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);

    drop(events);
    drop(client);
    eventually("the connection is closed", || server.connections() == 0).await;
}

#[tokio::test]
async fn health_follows_set_serving() {
    init_tracing();
    let server = TestServer::start("a").await.unwrap();
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(health(server.addr(), "").await, serving);
    assert_eq!(health(server.addr(), "user.User").await, serving);
    server.set_serving(false).await;
    assert_eq!(health(server.addr(), "").await, not_serving);
    assert_eq!(health(server.addr(), "user.User").await, not_serving);
    server.set_serving(true).await;
    assert_eq!(health(server.addr(), "user.User").await, serving);
    assert_eq!(server.served(), 0, "health checks are not user RPCs");
}

#[tokio::test]
async fn watch_events_sends_count_events() {
    init_tracing();
    let server = TestServer::start("w").await.unwrap();
    let mut client = user_client(server.addr()).await;
    let mut events = watch(&mut client, 5, 10).await;
    let mut seqs = Vec::new();
    while let Some(event) = next_event(&mut events).await.unwrap() {
        assert_eq!(event.instance, "w");
        seqs.push(event.seq);
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn graceful_shutdown_drains_an_open_stream() {
    init_tracing();
    let server = TestServer::start("g").await.unwrap();
    let addr = server.addr();
    let mut client = stream_client(addr).await;
    let mut events = watch(&mut client, 30, 100).await;
    assert_eq!(next_event(&mut events).await.unwrap().unwrap().seq, 1);

    let shutdown = tokio::spawn(server.shutdown());
    // The listener closes first: new connections are refused during the drain.
    let deadline = Instant::now() + PATIENCE;
    while !is_refused(TcpStream::connect(addr).await) {
        assert!(Instant::now() < deadline, "the listener stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open connection got a GOAWAY: a new RPC on it fails at once instead of being served.
    let during = loop {
        match register(&mut client).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(status) => break status,
        }
    };
    eprintln!("a new RPC during the drain: {during:?}");
    assert!(!shutdown.is_finished(), "the stream is still open");

    // The open stream runs to its end.
    let mut last = 1;
    while let Some(event) = next_event(&mut events).await.unwrap() {
        assert_eq!(event.seq, last + 1);
        last = event.seq;
    }
    assert_eq!(last, 30);
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown did not complete")
        .unwrap();
    let after = register(&mut client).await.unwrap_err();
    eprintln!("an RPC after the shutdown: {after:?}");
    assert_eq!(after.code(), Code::Unavailable);
}

#[tokio::test]
async fn abort_drops_connections_and_the_port_can_be_reused() {
    init_tracing();
    let server = TestServer::start("x").await.unwrap();
    let addr = server.addr();
    let mut client = stream_client(addr).await;
    let mut events = watch(&mut client, 100, 100).await;
    assert!(next_event(&mut events).await.unwrap().is_some());
    server.abort();
    let error = loop {
        match next_event(&mut events).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended cleanly after an abort"),
            Err(status) => break status,
        }
    };
    eprintln!("an open stream when the server aborts: {error:?}");
    assert!(is_refused(TcpStream::connect(addr).await));

    let server = TestServer::start_on("y", addr.port()).await.unwrap();
    assert_eq!(server.addr(), addr);
    let mut client = user_client(addr).await;
    assert_eq!(register(&mut client).await.unwrap(), "y");
}

#[tokio::test]
async fn fault_proxy_forwards_pauses_and_resumes() {
    init_tracing();
    let server = TestServer::start("p").await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    assert_eq!(proxy.target(), server.addr());
    let mut client = user_client(proxy.addr()).await;
    assert_eq!(register(&mut client).await.unwrap(), "p");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(server.connections(), 1);

    proxy.pause();
    assert!(proxy.is_paused());
    let started = Instant::now();
    let status = register(&mut client).await.unwrap_err();
    eprintln!("an RPC through a paused proxy: {status:?}");
    assert!(started.elapsed() >= RPC_TIMEOUT - Duration::from_millis(100));
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert_eq!(server.served(), 1, "nothing reached the server");

    // New connections are accepted but not forwarded.
    let mut raw = TcpStream::connect(proxy.addr()).await.unwrap();
    eventually("the proxy accepted", || proxy.connections() == 2).await;
    assert_eq!(server.connections(), 1);

    proxy.resume();
    assert_eq!(register(&mut client).await.unwrap(), "p");
    eventually("the held connection is forwarded", || {
        server.connections() == 2
    })
    .await;
    // The raw connection is not HTTP/2: the server answers with a GOAWAY and closes it.
    raw.write_all(b"not a preface, not at all\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut rest))
        .await
        .expect("the server kept the bad connection open");
    eventually("the bad connection is gone", || proxy.connections() == 1).await;
}

#[tokio::test]
async fn fault_proxy_reset_fails_in_flight_calls() {
    init_tracing();
    let server = TestServer::start("r").await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut client = stream_client(proxy.addr()).await;
    let mut events = watch(&mut client, 100, 100).await;
    assert!(next_event(&mut events).await.unwrap().is_some());
    let mut raw = TcpStream::connect(proxy.addr()).await.unwrap();
    eventually("both connections are forwarded", || {
        server.connections() == 2
    })
    .await;

    proxy.reset();
    let error = loop {
        match next_event(&mut events).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended cleanly after a reset"),
            Err(status) => break status,
        }
    };
    eprintln!("an open stream when the proxy resets: {error:?}");
    // The server's SETTINGS may be read first; then the reset.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut rest))
        .await
        .expect("the raw connection was not closed");
    assert_eq!(
        read.map_err(|e| e.kind()).unwrap_err(),
        std::io::ErrorKind::ConnectionReset
    );
    eventually("the proxy's connections are gone", || {
        proxy.connections() == 0
    })
    .await;
    eventually("the server's connections are gone", || {
        server.connections() == 0
    })
    .await;

    // The proxy still forwards new connections.
    let mut client = user_client(proxy.addr()).await;
    assert_eq!(register(&mut client).await.unwrap(), "r");
}

#[tokio::test]
async fn fault_proxy_strand_silences_open_connections_for_good() {
    init_tracing();
    let server = TestServer::start("s").await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut client = user_client(proxy.addr()).await;
    assert_eq!(register(&mut client).await.unwrap(), "s");

    proxy.strand();
    // The stranded connection stays open and silent: the RPC runs out of time, nothing reaches
    // the server, and neither end is closed.
    let status = register(&mut client).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert_eq!(server.served(), 1, "nothing reached the server");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(server.connections(), 1);

    // A new connection is forwarded.
    let mut fresh = user_client(proxy.addr()).await;
    assert_eq!(register(&mut fresh).await.unwrap(), "s");
    assert_eq!(server.served(), 2);
    // The stranded one never comes back, and a reset still closes it.
    assert!(register(&mut client).await.is_err());
    proxy.reset();
    eventually("the stranded connection is gone", || {
        server.connections() == 0
    })
    .await;
}

fn test_server_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_test-server"))
}

#[tokio::test]
async fn server_process_stop_cont_kill() {
    init_tracing();
    let mut process = ServerProcess::spawn(test_server_bin(), "proc", 0)
        .await
        .unwrap();
    assert_eq!(process.name(), "proc");
    assert!(process.pid() > 0);
    let addr = process.addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let mut client = user_client(addr).await;
    assert_eq!(register(&mut client).await.unwrap(), "proc");

    process.stop().unwrap();
    assert!(!process.is_live());
    let status = register(&mut client).await.unwrap_err();
    eprintln!("an RPC to a stopped process: {status:?}");
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );

    process.cont().unwrap();
    assert_eq!(register(&mut client).await.unwrap(), "proc");

    process.kill();
    assert!(!process.is_live());
    assert!(is_refused(TcpStream::connect(addr).await));
    let status = register(&mut client).await.unwrap_err();
    eprintln!("the first RPC to a killed process: {status:?}");
    let status = register(&mut client).await.unwrap_err();
    eprintln!("the next RPC to a killed process: {status:?}");
    assert_eq!(status.code(), Code::Unavailable);

    // Restart on the same port.
    let process = ServerProcess::spawn(test_server_bin(), "again", addr.port())
        .await
        .unwrap();
    assert_eq!(process.addr(), addr);
    assert_eq!(register(&mut client).await.unwrap(), "again");
}

#[tokio::test]
async fn server_process_terminates_gracefully() {
    init_tracing();
    let mut process = ServerProcess::spawn(test_server_bin(), "term", 0)
        .await
        .unwrap();
    let mut client = stream_client(process.addr()).await;
    let mut events = watch(&mut client, 10, 100).await;
    assert_eq!(next_event(&mut events).await.unwrap().unwrap().seq, 1);
    let drain = async {
        let mut n = 1;
        while next_event(&mut events).await.unwrap().is_some() {
            n += 1;
        }
        n
    };
    let (status, received) = tokio::join!(process.terminate(), drain);
    assert!(status.unwrap().success());
    assert_eq!(received, 10);
    assert!(is_refused(TcpStream::connect(process.addr()).await));
}

#[tokio::test]
async fn bad_servers_accept_and_fail_grpc() {
    init_tracing();
    let black_hole = BlackHoleServer::start().await.unwrap();
    let mut raw = TcpStream::connect(black_hole.addr()).await.unwrap();
    eventually("the black hole accepted", || black_hole.accepted() == 1).await;
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), raw.read(&mut buf))
            .await
            .is_err(),
        "the black hole sent something"
    );
    // tonic's connect does not wait for the server's SETTINGS: it succeeds, and RPCs time out.
    let mut client = user_client(black_hole.addr()).await;
    let started = Instant::now();
    let status = register(&mut client).await.unwrap_err();
    eprintln!("an RPC to a black hole: {status:?}");
    assert!(started.elapsed() >= RPC_TIMEOUT - Duration::from_millis(100));
    assert_eq!(black_hole.accepted(), 2);

    let http1 = Http1Server::start().await.unwrap();
    let mut raw = TcpStream::connect(http1.addr()).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, raw.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    assert_eq!(http1.accepted(), 1);
    let mut client = UserClient::new(endpoint(http1.addr()).connect_lazy());
    let status = register(&mut client).await.unwrap_err();
    eprintln!("an RPC to an HTTP/1 server: {status:?}");
    assert!(http1.accepted() >= 2);
}
