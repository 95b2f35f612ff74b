//! The demo `User` service, as `user-rpc` serves it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::user::user_server::User;
use crate::user::{
    ChatMessage, Chunk, Event, GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply,
    RegisterRequest, UploadSummary, UserInfo, WatchEventsRequest,
};

/// The command line of `user-rpc`.
#[derive(Parser, Debug)]
#[command(
    name = "user-rpc",
    about = "The demo user.rpc service, registered in etcd"
)]
pub struct Args {
    /// A go-zero server config (`RpcServerConf`, YAML or JSON): `ListenOn`, `Etcd`, `Timeout`,
    /// `MethodTimeouts`, `Health`, `CpuThreshold`, `Middlewares`.
    #[arg(long, conflicts_with_all = ["listen", "etcd", "key"])]
    pub config: Option<std::path::PathBuf>,
    /// The instance's name, carried by every reply.
    #[arg(long, env = "INSTANCE_NAME", default_value = "user-rpc")]
    pub name: String,
    /// Address to serve on (port 0: a free one).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// etcd members, comma-separated.
    #[arg(long, env = "ETCD_HOSTS")]
    pub etcd: Option<String>,
    /// The key prefix to register under.
    #[arg(long)]
    pub key: Option<String>,
    /// The address clients should dial (default: POD_IP, else the first non-loopback address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// How long to wait, after deregistering, for clients to see it (`2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub grace: Duration,
}

impl Args {
    /// The server: from the config file (go-zero's `RpcServerConf`, every field: deadlines,
    /// health, interceptors, shedding, etcd's user and TLS), or from the flags.
    pub fn server(&self) -> Result<switchboard::Server> {
        if let Some(path) = &self.config {
            let config = switchboard::ServerConfig::from_file(path)?;
            if config.etcd.is_none() {
                anyhow::bail!("{}: no Etcd section to register in", path.display());
            }
            return Ok(switchboard::Server::from_config(&config)?.grace(self.grace));
        }
        let etcd = self.etcd.clone().unwrap_or_else(|| "127.0.0.1:2379".into());
        let key = self.key.clone().unwrap_or_else(|| "user.rpc".into());
        Ok(switchboard::Server::builder()
            .etcd(switchboard::resolver::EtcdConfig::from_hosts(&etcd)?, key)
            .listen(
                self.listen
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            )
            .grace(self.grace))
    }
}

/// The `User` service; every reply names the instance.
#[derive(Debug)]
pub struct UserService {
    name: String,
    next_id: AtomicI64,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

impl UserService {
    /// The service of the instance called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            next_id: AtomicI64::new(1),
        }
    }
}

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

    async fn upload(
        &self,
        request: Request<tonic::Streaming<Chunk>>,
    ) -> Result<Response<UploadSummary>, Status> {
        let mut chunks = request.into_inner();
        let (mut count, mut bytes) = (0u64, 0u64);
        while let Some(chunk) = chunks.message().await? {
            count += 1;
            bytes += chunk.data.len() as u64;
        }
        Ok(Response::new(UploadSummary {
            chunks: count,
            bytes,
            instance: self.name.clone(),
        }))
    }

    type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatMessage, Status>> + Send>>;

    async fn chat(
        &self,
        request: Request<tonic::Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let instance = self.name.clone();
        let echoes = tokio_stream::StreamExt::map(request.into_inner(), move |message| {
            message.map(|m| ChatMessage {
                instance: instance.clone(),
                ..m
            })
        });
        Ok(Response::new(Box::pin(echoes)))
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
