//! A `User` service that fails on purpose, shared by the retry and service-config tests.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use switchboard_testkit::proto::user::user_server::{User, UserServer};
use switchboard_testkit::proto::user::{
    Event, GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply, RegisterRequest, UserInfo,
    WatchEventsRequest,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

/// What the servers of one test saw, all of them together.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub calls: AtomicU64,
    /// Per attempt: `grpc-previous-rpc-attempts` and `grpc-timeout`.
    pub headers: Mutex<Vec<(Option<String>, Option<String>)>>,
    /// Per attempt: the server that got it.
    pub instances: Mutex<Vec<&'static str>>,
}

impl Seen {
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn previous_attempts(&self) -> Vec<Option<String>> {
        let headers = self.headers.lock().expect("not poisoned");
        headers
            .iter()
            .map(|(previous, _)| previous.clone())
            .collect()
    }

    /// Which server got each attempt, in order.
    pub(crate) fn instances(&self) -> Vec<&'static str> {
        self.instances.lock().expect("not poisoned").clone()
    }

    pub(crate) fn timeouts(&self) -> Vec<Option<String>> {
        let headers = self.headers.lock().expect("not poisoned");
        headers.iter().map(|(_, timeout)| timeout.clone()).collect()
    }
}

/// A `User` service whose `GetUserInfo` fails the first `fail_first` calls (counted over all
/// the servers sharing `seen`) with `code`, and `grpc-retry-pushback-ms: pushback` if set.
#[derive(Debug, Clone)]
pub(crate) struct Flaky {
    pub name: &'static str,
    pub seen: Arc<Seen>,
    pub fail_first: u64,
    pub code: Code,
    pub pushback: Option<&'static str>,
    pub delay: Duration,
    /// Also fails every k-th call, if set.
    pub fail_every: Option<u64>,
    /// A failing `Upload` fails once this many chunks have arrived.
    pub fail_after_chunks: u64,
}

impl Flaky {
    pub(crate) fn new(seen: &Arc<Seen>, fail_first: u64, code: Code) -> Self {
        Self {
            name: "flaky",
            seen: seen.clone(),
            fail_first,
            code,
            pushback: None,
            delay: Duration::ZERO,
            fail_every: None,
            fail_after_chunks: 1,
        }
    }

    pub(crate) async fn serve(self) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(UserServer::new(self))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Ok(addr)
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl User for Flaky {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        Err(Status::unimplemented("register"))
    }

    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        Err(Status::unimplemented("login"))
    }

    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        let n = self.seen.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.seen
            .headers
            .lock()
            .expect("not poisoned")
            .push((header("grpc-previous-rpc-attempts"), header("grpc-timeout")));
        self.seen
            .instances
            .lock()
            .expect("not poisoned")
            .push(self.name);
        tokio::time::sleep(self.delay).await;
        if n <= self.fail_first || self.fail_every.is_some_and(|k| n % k == 0) {
            let mut status = Status::new(self.code, format!("{}: failing call {n}", self.name));
            if let Some(pushback) = self.pushback {
                status.metadata_mut().insert(
                    "grpc-retry-pushback-ms",
                    MetadataValue::from_static(pushback),
                );
            }
            return Err(status);
        }
        Ok(Response::new(UserInfo {
            id: request.into_inner().id,
            username: "ok".into(),
            instance: self.name.into(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("watch_events"))
    }
    type ChatStream = Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = Result<switchboard_testkit::proto::user::ChatMessage, Status>,
                > + Send,
        >,
    >;

    /// Counted as `GetUserInfo` is; a failing call fails once `fail_after_chunks` chunks have
    /// arrived (the client is still sending), a served one sums every chunk up.
    async fn upload(
        &self,
        request: Request<tonic::Streaming<switchboard_testkit::proto::user::Chunk>>,
    ) -> Result<Response<switchboard_testkit::proto::user::UploadSummary>, Status> {
        let n = self.seen.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let previous = request
            .metadata()
            .get("grpc-previous-rpc-attempts")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen
            .headers
            .lock()
            .expect("not poisoned")
            .push((previous, None));
        let mut chunks = request.into_inner();
        let (mut count, mut bytes) = (0u64, 0u64);
        while let Some(chunk) = chunks.message().await? {
            count += 1;
            bytes += chunk.data.len() as u64;
            if n <= self.fail_first && count >= self.fail_after_chunks {
                return Err(Status::new(
                    self.code,
                    format!("{}: failing upload {n} after {count} chunks", self.name),
                ));
            }
        }
        Ok(Response::new(
            switchboard_testkit::proto::user::UploadSummary {
                chunks: count,
                bytes,
                instance: self.name.into(),
            },
        ))
    }

    async fn chat(
        &self,
        _: Request<tonic::Streaming<switchboard_testkit::proto::user::ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("chat"))
    }
}
