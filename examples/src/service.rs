//! The demo `User` service, as `user-rpc` serves it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::user::user_server::User;
use crate::user::{
    Event, GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply, RegisterRequest, UserInfo,
    WatchEventsRequest,
};

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
