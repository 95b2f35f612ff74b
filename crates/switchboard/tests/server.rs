//! `switchboard::Server` against a real etcd: registration, health, and the graceful exit
//! (deregister → NOT_SERVING → grace → drain).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use etcd_client::{EventType, GetOptions, WatchOptions};
use switchboard::Server;
use switchboard::resolver::EtcdConfig;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::user_server::{User, UserServer};
use switchboard_testkit::proto::user::{
    Event, GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply, RegisterRequest, UserInfo,
    WatchEventsRequest,
};
use switchboard_testkit::{ClosedPort, Etcd};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A bound for every step that waits for an event.
const LIMIT: Duration = Duration::from_secs(30);

/// A `User` service whose `Register` waits until the test releases it; `Login` answers at once.
#[derive(Clone)]
struct Gated {
    started: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

#[tonic::async_trait]
impl User for Gated {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let _ = self.started.send(());
        self.release.notified().await;
        Ok(Response::new(RegisterReply {
            id: 1,
            instance: "gated".into(),
        }))
    }

    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        Ok(Response::new(LoginReply {
            id: 1,
            token: "t".into(),
            instance: "gated".into(),
        }))
    }

    async fn get_user_info(
        &self,
        _: Request<GetUserInfoRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        Err(Status::unimplemented("get_user_info"))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        _: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("watch_events"))
    }
    type ChatStream = Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = Result<switchboard_testkit::proto::user::ChatMessage, Status>,
                > + Send,
        >,
    >;

    async fn upload(
        &self,
        _: Request<tonic::Streaming<switchboard_testkit::proto::user::Chunk>>,
    ) -> Result<Response<switchboard_testkit::proto::user::UploadSummary>, Status> {
        Err(Status::unimplemented("upload"))
    }

    async fn chat(
        &self,
        _: Request<tonic::Streaming<switchboard_testkit::proto::user::ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("chat"))
    }
}

fn gated() -> (Gated, mpsc::UnboundedReceiver<()>) {
    let (started, started_rx) = mpsc::unbounded_channel();
    let service = Gated {
        started,
        release: Arc::new(Notify::new()),
    };
    (service, started_rx)
}

async fn connect(addr: SocketAddr) -> Result<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(LIMIT)
        .connect()
        .await?;
    Ok(channel)
}

async fn health_of(channel: Channel, service: &str) -> Result<ServingStatus> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(reply.status())
}

/// Waits until connecting to `addr` is refused: the listener is closed.
async fn until_refused(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            _ if Instant::now() > deadline => bail!("{addr} still accepts connections"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_leaves_gracefully() -> Result<()> {
    let etcd = Etcd::start().await?;
    let (service, mut started) = gated();
    let release = service.release.clone();
    let grace = Duration::from_secs(5);
    let drain_timeout = Duration::from_secs(120);
    let running = Server::builder()
        .etcd(EtcdConfig::from_hosts(&etcd.hosts())?, "user.rpc")
        .listen("127.0.0.1:0".parse()?)
        .grace(grace)
        .drain_timeout(drain_timeout)
        .ttl(Duration::from_secs(10))
        .add_service(UserServer::new(service))
        .serve()
        .await?;
    let addr = running.local_addr();

    // Registered under the advertised address (the bound one, unless POD_IP says otherwise).
    let mut etcd_client = etcd.client().await?;
    let listed = etcd_client
        .get("user.rpc/", Some(GetOptions::new().with_prefix()))
        .await?;
    let values: Vec<&str> = listed
        .kvs()
        .iter()
        .map(|kv| kv.value_str())
        .collect::<Result<_, _>>()?;
    assert_eq!(values, [running.advertised_addr()]);
    // The bound address, unless the environment names the pod's IP (the server reads POD_IP).
    let expected = match std::env::var("POD_IP")
        .ok()
        .filter(|ip| !ip.trim().is_empty())
    {
        Some(ip) => format!("{}:{}", ip.trim(), addr.port()),
        None => addr.to_string(),
    };
    assert_eq!(running.advertised_addr(), expected);

    // SERVING, for the server and for the service.
    let channel = connect(addr).await?;
    assert_eq!(
        health_of(channel.clone(), "").await?,
        ServingStatus::Serving
    );
    assert_eq!(
        health_of(channel.clone(), "user.User").await?,
        ServingStatus::Serving
    );
    let mut health_watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "user.User".into(),
        })
        .await?
        .into_inner();
    let first = timeout(LIMIT, health_watch.next())
        .await?
        .context("watch ended")??;
    assert_eq!(first.status(), ServingStatus::Serving);

    // An RPC in flight when the shutdown starts.
    let mut users = UserClient::new(channel.clone());
    let in_flight = tokio::spawn(async move { users.register(RegisterRequest::default()).await });
    timeout(LIMIT, started.recv())
        .await?
        .context("no RPC started")?;

    let mut events = etcd_client
        .watch(
            "user.rpc/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(listed.header().context("no header")?.revision() + 1),
            ),
        )
        .await?;
    let shutdown = tokio::spawn(running.shutdown());

    // 1. The key goes while the server still serves.
    let deleted = timeout(LIMIT, async {
        while let Some(resp) = events.message().await? {
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
        bail!("the etcd watch ended")
    })
    .await?;
    deleted?;
    let during_grace = Instant::now();
    assert!(!shutdown.is_finished(), "stopped before deregistering");

    // 2. NOT_SERVING, seen by a watcher and by a new connection during the grace period.
    let next = timeout(LIMIT, health_watch.next())
        .await?
        .context("watch ended")??;
    assert_eq!(next.status(), ServingStatus::NotServing);
    let fresh = connect(addr).await?;
    assert_eq!(health_of(fresh, "").await?, ServingStatus::NotServing);
    assert!(
        during_grace.elapsed() < grace,
        "the checks took longer than the grace period; they proved nothing"
    );

    // 3. After the grace period the listener closes; the RPC in flight is still running.
    until_refused(addr).await?;
    assert!(!in_flight.is_finished());
    assert!(!shutdown.is_finished(), "stopped before draining");

    // 4. It finishes, the health watch ends, and the server stops well before the drain timeout.
    release.notify_one();
    let reply = timeout(LIMIT, in_flight).await???.into_inner();
    assert_eq!(reply.instance, "gated");
    let ended = timeout(LIMIT, health_watch.next()).await?;
    assert!(
        !matches!(ended, Some(Ok(_))),
        "the health watch got {ended:?}"
    );
    drop(channel);
    timeout(LIMIT, shutdown).await??;
    assert!(during_grace.elapsed() < drain_timeout);

    tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("connected to a stopped server");
    let left = etcd_client
        .get("user.rpc/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert!(left.kvs().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_without_etcd() -> Result<()> {
    let (service, _started) = gated();
    let running = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .grace(Duration::ZERO)
        .add_service(UserServer::new(service))
        .serve()
        .await?;
    let addr = running.local_addr();
    let channel = connect(addr).await?;
    let reply = UserClient::new(channel.clone())
        .login(LoginRequest::default())
        .await?
        .into_inner();
    assert_eq!(reply.instance, "gated");
    assert_eq!(
        health_of(channel.clone(), "").await?,
        ServingStatus::Serving
    );

    running
        .health()
        .set_service_status("user.User", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        health_of(channel.clone(), "user.User").await?,
        ServingStatus::NotServing
    );

    drop(channel);
    timeout(LIMIT, running.shutdown()).await?;
    tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("connected to a stopped server");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_fails_serve_and_frees_the_port() -> Result<()> {
    let closed = ClosedPort::new()?;
    let config = EtcdConfig::from_hosts(&closed.addr().to_string())?;
    // The server must be told a port to prove it frees that port; one picked free can be taken
    // by a neighbour before the server binds it, so a lost race picks another.
    let mut attempts = 0;
    let (listen, err) = loop {
        attempts += 1;
        let listen: SocketAddr =
            format!("127.0.0.1:{}", switchboard_testkit::free_port()?).parse()?;
        let (service, _started) = gated();
        let served = timeout(
            LIMIT,
            Server::builder()
                .etcd(config.clone(), "user.rpc")
                .listen(listen)
                .add_service(UserServer::new(service))
                .serve(),
        )
        .await?;
        let err = served.expect_err("registered without etcd");
        if err.to_string().contains("cannot listen") && attempts < 3 {
            continue;
        }
        break (listen, err);
    };
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("etcd"), "{err}");
    // Freed: the port can be bound again at once.
    std::net::TcpListener::bind(listen).context("the port the server had is still taken")?;
    Ok(())
}
