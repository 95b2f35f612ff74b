//! Client-side health checking (gRFC A17): on each READY connection, a
//! `grpc.health.v1.Health/Watch` stream for the configured service; the sub-channel is picked
//! only while the server says SERVING.
//!
//! - Until the first answer the sub-channel is not picked (its health is UNKNOWN).
//! - SERVING makes it pickable; any other status (NOT_SERVING, SERVICE_UNKNOWN, …) takes it
//!   out at once, with the next message.
//! - A server without the health service (UNIMPLEMENTED) counts as healthy, as in grpc-go:
//!   health checking is then off for that connection, and a warning says so.
//! - A Watch that fails or ends is opened again after a backoff (the channel's connection
//!   backoff, reset by every message received), the sub-channel out of the picker meanwhile.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::{debug, warn};

use crate::backoff::{Backoff, ConnectBackoff};
use crate::connect::Sender;
use crate::state::Health;

/// One message of a Watch stream, or how it ended.
pub(crate) type WatchItem = Result<ServingStatus, Status>;

/// A Watch stream.
pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;

/// Opens `grpc.health.v1.Health/Watch` for `service` on one connection.
pub(crate) fn watch(
    sender: &Sender,
    scheme: Scheme,
    authority: &Authority,
    service: &str,
) -> WatchStream {
    let conn = OneConnection {
        sender: sender.clone(),
        scheme,
        authority: authority.clone(),
    };
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    Box::pin(
        futures_util::stream::once(async move {
            let mut client = HealthClient::new(conn);
            client.watch(request).await.map(|r| r.into_inner())
        })
        .flat_map(|opened| match opened {
            Ok(stream) => stream
                .map(|m| m.map(|m| m.status()))
                .chain(futures_util::stream::once(async {
                    Err(Status::unavailable("the server ended the Watch"))
                }))
                .left_stream(),
            Err(status) => futures_util::stream::iter([Err(status)]).right_stream(),
        }),
    )
}

/// The health reports of one READY connection: runs until dropped (when the connection ends).
///
/// `open` opens a Watch; `report` is called with each change of health and the reason.
pub(crate) async fn run(
    mut open: impl FnMut() -> WatchStream,
    backoff: ConnectBackoff,
    addr: &str,
    mut report: impl FnMut(Health, Option<String>),
) -> Infallible {
    let mut backoff = Backoff::new(backoff, SmallRng::from_rng(&mut rand::rng()));
    let mut retry_at: Option<Instant> = None;
    loop {
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at).await;
        }
        let attempt = backoff.attempt(Instant::now());
        retry_at = Some(attempt.retry_at);
        let mut stream = open();
        loop {
            match stream.next().await {
                Some(Ok(status)) => {
                    backoff.reset();
                    retry_at = None;
                    if status == ServingStatus::Serving {
                        report(Health::Serving, None);
                    } else {
                        let why = format!("health check: {}", status.as_str_name());
                        report(Health::NotServing, Some(why));
                    }
                }
                Some(Err(status)) if status.code() == Code::Unimplemented => {
                    warn!(
                        %addr,
                        "the server does not implement grpc.health.v1.Health/Watch: health checking is off for this connection"
                    );
                    report(Health::Serving, None);
                    return std::future::pending().await;
                }
                Some(Err(status)) => {
                    debug!(%addr, %status, "health Watch failed: opening it again after a backoff");
                    let why = format!("health check failed: {}", status.message());
                    report(Health::NotServing, Some(why));
                    break;
                }
                None => break,
            }
        }
    }
}

/// A tower service over one HTTP/2 connection, for the health client.
#[derive(Clone)]
struct OneConnection {
    sender: Sender,
    scheme: Scheme,
    authority: Authority,
}

impl tower_service::Service<Request<tonic::body::Body>> for OneConnection {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        if let Ok(uri) = crate::connect::with_origin(&parts.uri, &self.scheme, &self.authority) {
            parts.uri = uri;
        }
        let send = self.sender.send_request(Request::from_parts(parts, body));
        Box::pin(send)
    }
}
