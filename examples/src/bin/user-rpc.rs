//! `user-rpc`: the demo `User` service, a server that registers itself in etcd and leaves
//! gracefully.
//!
//! ```text
//! user-rpc --name user-rpc-1 --listen 0.0.0.0:8080 --etcd 127.0.0.1:2379 --key user.rpc
//! user-rpc --name user-rpc-1 --config etc/user.yaml
//! ```
//!
//! The config file has go-zero's `RpcServerConf` fields:
//!
//! ```yaml
//! Name: user.rpc
//! ListenOn: 0.0.0.0:8080
//! Etcd:
//!   Hosts: [127.0.0.1:2379]
//!   Key: user.rpc
//! ```
//!
//! Replies name the instance (`--name`). It serves `user.User` and `grpc.health.v1`,
//! registers `<key>/<leaseID>` → its address (as go-zero does), prints `registered <addr>` once
//! it is, and on SIGTERM or SIGINT deregisters, turns NOT_SERVING, waits `--grace` for clients
//! to see the DELETE, drains its RPCs and exits 0.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use switchboard::Server;
use switchboard::resolver::EtcdConfig;
use switchboard_examples::user::user_server::{User, UserServer};
use switchboard_examples::user::{
    Event, GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply, RegisterRequest, UserInfo,
    WatchEventsRequest,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Parser, Debug)]
#[command(about = "The demo user.rpc service, registered in etcd")]
struct Args {
    /// A go-zero-style server config (YAML): `ListenOn`, `Etcd: {Hosts, Key}`.
    #[arg(long, conflicts_with_all = ["listen", "etcd", "key"])]
    config: Option<std::path::PathBuf>,
    /// The instance's name, carried by every reply.
    #[arg(long, env = "INSTANCE_NAME", default_value = "user-rpc")]
    name: String,
    /// Address to serve on (port 0: a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// etcd members, comma-separated.
    #[arg(long, env = "ETCD_HOSTS")]
    etcd: Option<String>,
    /// The key prefix to register under.
    #[arg(long)]
    key: Option<String>,
    /// The address clients should dial (default: POD_IP, else the first non-loopback address).
    #[arg(long)]
    advertise: Option<String>,
    /// How long to wait, after deregistering, for clients to see it (`2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = switchboard_examples::parse_duration)]
    grace: Duration,
}

/// go-zero's `RpcServerConf`, the fields this server uses.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServerConfig {
    listen_on: SocketAddr,
    etcd: EtcdSection,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EtcdSection {
    hosts: Vec<String>,
    key: String,
}

/// Where to listen, which etcd, and which key: from the config file, or the flags.
fn settings(args: &Args) -> Result<(SocketAddr, String, String)> {
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: ServerConfig = serde_norway::from_str(&text)
            .with_context(|| format!("{}: not a server config", path.display()))?;
        return Ok((
            config.listen_on,
            config.etcd.hosts.join(","),
            config.etcd.key,
        ));
    }
    Ok((
        args.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
        args.etcd.clone().unwrap_or_else(|| "127.0.0.1:2379".into()),
        args.key.clone().unwrap_or_else(|| "user.rpc".into()),
    ))
}

struct UserService {
    name: String,
    next_id: AtomicI64,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl User for UserService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        if request.get_ref().username.is_empty() {
            return Err(Status::invalid_argument("username is empty"));
        }
        Ok(Response::new(RegisterReply {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            instance: self.name.clone(),
        }))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let username = &request.get_ref().username;
        if username.is_empty() {
            return Err(Status::invalid_argument("username is empty"));
        }
        Ok(Response::new(LoginReply {
            id: 1,
            token: format!("token-for-{username}"),
            instance: self.name.clone(),
        }))
    }

    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        let id = request.get_ref().id;
        Ok(Response::new(UserInfo {
            id,
            username: format!("user-{id}"),
            instance: self.name.clone(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let WatchEventsRequest {
            count, interval_ms, ..
        } = request.into_inner();
        let name = self.name.clone();
        let interval = Duration::from_millis(u64::from(interval_ms.min(60_000)));
        let stream = async_stream(count.min(10_000), interval, name);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `count` events, `interval` apart.
fn async_stream(
    count: u32,
    interval: Duration,
    instance: String,
) -> impl Stream<Item = Result<Event, Status>> {
    let instance = Arc::new(instance);
    tokio_stream::StreamExt::then(tokio_stream::iter(1..=u64::from(count)), move |seq| {
        let instance = instance.clone();
        async move {
            if seq > 1 {
                tokio::time::sleep(interval).await;
            }
            Ok(Event {
                seq,
                instance: instance.to_string(),
            })
        }
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (listen, etcd, key) = settings(&args)?;
    let service = UserService {
        name: args.name.clone(),
        next_id: AtomicI64::new(1),
    };
    let mut server = Server::builder()
        .etcd(EtcdConfig::from_hosts(&etcd)?, key)
        .listen(listen)
        .grace(args.grace)
        .add_service(UserServer::new(service));
    if let Some(addr) = &args.advertise {
        server = server.advertise(addr.clone());
    }
    let serving = server.serve().await.context("serving user.rpc")?;
    println!(
        "registered {} (listening on {})",
        serving.advertised_addr(),
        serving.local_addr()
    );
    serving.wait_for_signal().await;
    Ok(())
}
