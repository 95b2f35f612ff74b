//! Client-side health checking (gRFC A17) against real tonic servers on 127.0.0.1: instances
//! are picked only while their `grpc.health.v1` Watch says SERVING.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod flaky;

use anyhow::{Context, Result};
use flaky::{Flaky, Seen};
use switchboard::balancer::{ConnectivityState, Health};
use switchboard::{Client, ClientConfig};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthService, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

async fn client(addrs: &[SocketAddr], settings: &str) -> Result<Client> {
    let endpoints: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let yaml = format!(
        "Endpoints: [{}]\nTimeout: 5s\nNonBlock: true\n{settings}",
        endpoints.join(", ")
    );
    Ok(Client::connect(ClientConfig::from_yaml(&yaml)?).await?)
}

/// Waits until the snapshot's entry for `addr` satisfies `ok` and the published picker agrees
/// with it.
async fn until(
    client: &Client,
    addr: SocketAddr,
    ok: impl Fn(Health, ConnectivityState) -> bool,
) -> Result<()> {
    let addr = addr.to_string();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let snapshot = client.balancer().snapshot();
            if let Some(s) = snapshot.by_addr(&addr) {
                // The state and health are written before the picker follows them: wait for
                // the picker too, so that calls made next see what the snapshot says.
                let pickable =
                    s.state == ConnectivityState::Ready && s.health.is_pickable() && !s.ejected;
                if ok(s.health, s.state) && s.in_picker == pickable {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .with_context(|| format!("{addr}: {:?}", client.balancer().snapshot()))
}

async fn calls(client: &Client, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut users = UserClient::new(client.channel());
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let reply = users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
        *served.entry(reply.into_inner().instance).or_default() += 1;
    }
    Ok(served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_takes_an_instance_out_and_serving_brings_it_back() -> Result<()> {
    let servers = [
        TestServer::start("a").await?,
        TestServer::start("b").await?,
        TestServer::start("c").await?,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(TestServer::addr).collect();
    let client = client(&addrs, "HealthCheck: user.User\n").await?;
    for addr in &addrs {
        until(&client, *addr, |h, _| h == Health::Serving).await?;
    }
    assert_eq!(calls(&client, 30).await?.len(), 3);

    let flipped = Instant::now();
    servers[1].set_serving(false).await;
    until(&client, addrs[1], |h, _| h == Health::NotServing).await?;
    let out = flipped.elapsed();
    println!("out of the picker {out:?} after NOT_SERVING was set");
    assert!(
        out < Duration::from_secs(5),
        "out of the picker after {out:?}"
    );
    let served = calls(&client, 60).await?;
    assert_eq!(served.get("b"), None, "{served:?}");
    assert_eq!(served.values().sum::<usize>(), 60);
    // READY but unhealthy: the channel still READY through the others.
    let snapshot = client.balancer().snapshot();
    assert_eq!(snapshot.state, ConnectivityState::Ready);
    assert_eq!(
        snapshot.by_addr(&addrs[1].to_string()).map(|s| s.state),
        Some(ConnectivityState::Ready)
    );

    servers[1].set_serving(true).await;
    until(&client, addrs[1], |h, _| h == Health::Serving).await?;
    let served = calls(&client, 30).await?;
    assert_eq!(served.get("b"), Some(&10), "{served:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_health_service_counts_as_healthy() -> Result<()> {
    let seen = Arc::new(Seen::default());
    let addr = Flaky::new(&seen, 0, Code::Unavailable).serve().await?;
    let client = client(&[addr], "HealthCheck: user.User\n").await?;
    until(&client, addr, |h, s| {
        h == Health::Serving && s == ConnectivityState::Ready
    })
    .await?;
    let mut users = UserClient::new(client.channel());
    users.get_user_info(GetUserInfoRequest { id: 7 }).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_unhealthy_fails_fast_naming_the_health_check() -> Result<()> {
    let server = TestServer::start("a").await?;
    server.set_serving(false).await;
    let client = client(&[server.addr()], "HealthCheck: \"\"\n").await?;
    until(&client, server.addr(), |h, _| h == Health::NotServing).await?;
    let status = UserClient::new(client.channel())
        .get_user_info(GetUserInfoRequest { id: 1 })
        .await
        .expect_err("no healthy instance");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("NOT_SERVING"), "{status:?}");
    assert_eq!(
        client.balancer().state(),
        ConnectivityState::TransientFailure
    );
    Ok(())
}

/// A health service whose Watch fails `fail` times, then says SERVING.
struct Broken {
    fail: u32,
    watches: Arc<AtomicU32>,
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthService for Broken {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Err(Status::unimplemented("check"))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let n = self.watches.fetch_add(1, Ordering::SeqCst);
        if n < self.fail {
            return Err(Status::internal("health store unavailable"));
        }
        let serving = HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        };
        let stream = tokio_stream::iter([Ok(serving)]).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_watch_is_opened_again_after_a_backoff() -> Result<()> {
    let watches = Arc::new(AtomicU32::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(Broken {
                fail: 2,
                watches: watches.clone(),
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let started = Instant::now();
    let client = client(
        &[addr],
        "HealthCheck: user.User\nBackoff: {Initial: 200ms, Multiplier: 2, Jitter: 0}\n",
    )
    .await?;
    until(&client, addr, |h, _| h == Health::NotServing).await?;
    until(&client, addr, |h, _| h == Health::Serving).await?;
    // Two failures: retried 200 ms, then 400 ms after the attempts began.
    let took = started.elapsed();
    assert_eq!(watches.load(Ordering::SeqCst), 3);
    assert!(took >= Duration::from_millis(600), "{took:?}");
    Ok(())
}
