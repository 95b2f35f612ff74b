//! `Server::from_config` with go-zero's `RpcServerConf`, loaded unchanged, against a real
//! etcd and a real client: registration under `Key/ID`, the server's deadlines (`Timeout`,
//! `MethodTimeouts`), a panicking handler answering INTERNAL, the health service, the
//! server-side breaker, and the fields that cannot be honoured refused with the reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use switchboard::{Server, ServerConfig};
use switchboard_testkit::Etcd;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::user_server::{User, UserServer};
use switchboard_testkit::proto::user::{
    ChatMessage, Chunk, Event, GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply,
    RegisterRequest, UploadSummary, UserInfo, WatchEventsRequest,
};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// `GetUserInfo` by id: 1 answers, 2 takes 700 ms, 3 panics, 4 fails with INTERNAL, 5 asks
/// `next` through a switchboard client. `Login` takes 700 ms.
#[derive(Default)]
struct Scripted {
    next: Option<switchboard::Client>,
}

#[tonic::async_trait]
impl User for Scripted {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        Err(Status::unimplemented("register"))
    }

    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Ok(Response::new(LoginReply::default()))
    }

    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        match request.get_ref().id {
            2 => tokio::time::sleep(Duration::from_millis(700)).await,
            3 => panic!("user 3 is cursed"),
            4 => return Err(Status::internal("database down")),
            5 => {
                let next = self
                    .next
                    .as_ref()
                    .ok_or_else(|| Status::internal("no next"))?;
                return UserClient::new(next.channel())
                    .get_user_info(GetUserInfoRequest { id: 1 })
                    .await;
            }
            _ => {}
        }
        Ok(Response::new(UserInfo {
            id: request.get_ref().id,
            ..UserInfo::default()
        }))
    }

    type WatchEventsStream = tokio_stream::Empty<Result<Event, Status>>;

    async fn watch_events(
        &self,
        _: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }

    async fn upload(
        &self,
        _: Request<tonic::Streaming<Chunk>>,
    ) -> Result<Response<UploadSummary>, Status> {
        Err(Status::unimplemented("upload"))
    }

    type ChatStream = tokio_stream::Empty<Result<ChatMessage, Status>>;

    async fn chat(
        &self,
        _: Request<tonic::Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("chat"))
    }
}

/// A service's config as go-zero's goctl writes it, with the sections go-zero's examples add.
fn go_zero_yaml(etcd: &Etcd, extra: &str) -> String {
    format!(
        "Name: user.rpc
ListenOn: 127.0.0.1:0
Etcd:
  Hosts:
  - {}
  Key: user.rpc
  ID: 7
Log:
  ServiceName: user-rpc
  Mode: console
  Level: info
Mode: dev
Prometheus:
  Host: 0.0.0.0
  Port: 9101
  Path: /metrics
Telemetry:
  Name: user-rpc
  Endpoint: http://127.0.0.1:14268/api/traces
  Sampler: 1.0
  Batcher: jaeger
{extra}",
        etcd.endpoint(0).trim_start_matches("http://")
    )
}

async fn serve(config: &ServerConfig) -> Result<switchboard::Serving> {
    Ok(Server::from_config(config)?
        .add_service(UserServer::new(Scripted::default()))
        .serve()
        .await?)
}

async fn get(
    users: &mut UserClient<tonic::transport::Channel>,
    id: i64,
) -> Result<UserInfo, Status> {
    users
        .get_user_info(GetUserInfoRequest { id })
        .await
        .map(Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_zero_server_config_is_served_as_go_zero_serves_it() -> Result<()> {
    let etcd = Etcd::start().await?;
    let config = ServerConfig::from_yaml(&go_zero_yaml(
        &etcd,
        "Timeout: 1000
MethodTimeouts:
  - FullMethod: /user.User/GetUserInfo
    Timeout: 300ms
Middlewares:
  StatConf:
    SlowThreshold: 200ms
",
    ))?;
    let serving = serve(&config).await?;
    // Registered under Key/ID, as go-zero registers with Etcd.ID.
    let mut kv = etcd.client().await?;
    let got = kv.get("user.rpc/7", None).await?;
    let value = got
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap_or_default().to_owned());
    ensure!(
        value.as_deref() == Some(serving.advertised_addr()),
        "{value:?}"
    );

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", serving.local_addr()))?
            .connect()
            .await?;
    let mut users = UserClient::new(channel.clone());
    ensure!(get(&mut users, 1).await?.id == 1);
    // GetUserInfo's own 300 ms deadline, not the server's 1 s.
    let late = get(&mut users, 2)
        .await
        .expect_err("past its method's deadline");
    ensure!(
        late.code() == Code::DeadlineExceeded
            && late.message()
                == "/user.User/GetUserInfo took longer than the server's timeout of 300ms",
        "{late:?}"
    );
    // Login has the server's 1 s.
    users.login(LoginRequest::default()).await?;
    // A panic answers INTERNAL, and the connection lives on.
    let panicked = get(&mut users, 3).await.expect_err("panics");
    ensure!(
        panicked.code() == Code::Internal && panicked.message() == "panic: user 3 is cursed",
        "{panicked:?}"
    );
    ensure!(get(&mut users, 1).await?.id == 1);
    // Health is served.
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;

    // The breaker: a method failing with INTERNAL is soon refused without running.
    let mut refused = 0;
    for _ in 0..100 {
        let status = get(&mut users, 4).await.expect_err("fails");
        if status.code() == Code::Unavailable {
            ensure!(
                status
                    .message()
                    .starts_with("circuit breaker is open for /user.User/GetUserInfo: "),
                "{status:?}"
            );
            refused += 1;
        } else {
            ensure!(status.code() == Code::Internal, "{status:?}");
        }
    }
    ensure!(refused >= 50, "only {refused} of 100 refused");
    // Another method is not affected.
    users.login(LoginRequest::default()).await?;
    serving.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_false_serves_no_health_service_and_the_middlewares_turn_off() -> Result<()> {
    let etcd = Etcd::start().await?;
    let config = ServerConfig::from_yaml(&go_zero_yaml(
        &etcd,
        "Timeout: 0
Health: false
CpuThreshold: 0
Middlewares:
  Recover: false
  Breaker: false
  Stat: false
  Prometheus: false
",
    ))?;
    ensure!(config.timeout.is_none() && config.cpu_threshold == 0);
    let serving = serve(&config).await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", serving.local_addr()))?
            .connect()
            .await?;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect_err("no health service");
    ensure!(status.code() == Code::Unimplemented, "{status:?}");
    let mut users = UserClient::new(channel);
    // No deadline: the slow call completes.
    ensure!(get(&mut users, 2).await?.id == 2);
    // No breaker: every failure reaches the handler.
    for _ in 0..50 {
        let status = get(&mut users, 4).await.expect_err("fails");
        ensure!(status.code() == Code::Internal, "{status:?}");
    }
    serving.shutdown().await;
    Ok(())
}

#[test]
fn what_cannot_be_honoured_is_refused_with_the_reason() {
    let base = "ListenOn: 127.0.0.1:0\n";
    let error = |extra: &str| {
        ServerConfig::from_yaml(&format!("{base}{extra}"))
            .expect_err(extra)
            .to_string()
    };
    assert!(
        error("Auth: true\nRedis: {Host: 127.0.0.1:6379, Type: node, Key: rpc:auth}\n")
            .contains("Auth: go-zero's token check against Redis is not supported"),
    );
    assert!(error("CpuThreshold: 1000\n").contains("CpuThreshold: 1000 is not below 1000"));
    assert!(error("Timout: 1000\n").contains("unknown field `Timout`"));
    assert!(
        error("MethodTimeouts: [{FullMethod: GetUserInfo, Timeout: 1s}]\n")
            .contains("\"GetUserInfo\" is not /package.Service/Method")
    );
    assert!(error("Etcd: {Hosts: [], Key: user.rpc}\n").contains("Etcd.Hosts"));
    // etcd's password is in no Debug output of the config, nor of the server made from it.
    let with_pass = ServerConfig::from_yaml(&format!(
        "{base}Etcd: {{Hosts: [127.0.0.1:2379], Key: user.rpc, User: root, Pass: hunter2}}\n"
    ))
    .expect("valid");
    let server = Server::from_config(&with_pass).expect("valid");
    for shown in [format!("{with_pass:?}"), format!("{server:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    let config = ServerConfig::from_yaml(base).expect("minimal");
    assert_eq!(config.timeout, Some(Duration::from_secs(2)));
    assert_eq!(config.cpu_threshold, 900);
    assert!(config.health && config.middlewares.breaker && config.middlewares.recover);
}

/// A server that records the `traceparent` of each call it gets.
async fn recording_server() -> Result<(std::net::SocketAddr, Arc<Mutex<Vec<Option<String>>>>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let seen = seen.clone();
        move |request: Request<()>| -> Result<Request<()>, Status> {
            let parent = request
                .metadata()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            seen.lock().expect("not poisoned").push(parent);
            Ok(request)
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = tonic::service::interceptor::InterceptedService::new(
        switchboard_testkit::user_service("back"),
        record,
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_goes_through_a_server_to_the_calls_it_makes() -> Result<()> {
    let (back, seen) = recording_server().await?;
    let client = |extra: &str| {
        switchboard::ClientConfig::from_yaml(&format!("Endpoints: [{back}]\n{extra}"))
    };
    // The front server (go-zero's config, Trace on by default) calls `back` in its handler.
    let next = switchboard::Client::connect(client("")?).await?;
    let config = ServerConfig::from_yaml("Name: front\nListenOn: 127.0.0.1:0\n")?;
    let front = Server::from_config(&config)?
        .add_service(UserServer::new(Scripted { next: Some(next) }))
        .serve()
        .await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", front.local_addr()))?
            .connect()
            .await?;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let mut request = Request::new(GetUserInfoRequest { id: 5 });
    request.metadata_mut().insert("traceparent", sent.parse()?);
    UserClient::new(channel).get_user_info(request).await?;
    let got = seen.lock().expect("not poisoned").pop().flatten();
    let got = got.unwrap_or_default();
    // Same trace, the front server's RPC as the parent, sampled.
    ensure!(
        got.starts_with(&format!("00-{trace_id}-")) && got.ends_with("-01") && got != sent,
        "{got}"
    );

    // A client outside any trace sends none, as go-zero's does with no tracer set up; inside
    // one it sends it on, unless `Middlewares: {Trace: false}`.
    let outside = switchboard::Client::connect(client("")?).await?;
    let mut users = UserClient::new(outside.channel());
    users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
    let got = seen.lock().expect("not poisoned").pop().flatten();
    ensure!(got.is_none(), "{got:?}");
    let root = switchboard::trace::TraceContext::root();
    let root_id = root.trace_id_hex();
    switchboard::trace::scope(root, users.get_user_info(GetUserInfoRequest { id: 1 })).await?;
    let got = seen.lock().expect("not poisoned").pop().flatten();
    ensure!(
        got.as_deref()
            .is_some_and(|t| t.len() == 55 && t.contains(&root_id)),
        "{got:?}"
    );
    let off = switchboard::Client::connect(client("Middlewares: {Trace: false}\n")?).await?;
    let mut users = UserClient::new(off.channel());
    let call = users.get_user_info(GetUserInfoRequest { id: 1 });
    switchboard::trace::scope(switchboard::trace::TraceContext::root(), call).await?;
    let got = seen.lock().expect("not poisoned").pop().flatten();
    ensure!(got.is_none(), "{got:?}");
    front.shutdown().await;
    Ok(())
}
