//! The balanced channel: a cheap, clonable handle that picks a READY sub-channel for each RPC
//! and sends it there. It implements `tower::Service<http::Request<tonic::body::Body>>`, so a
//! tonic-generated client runs over it directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Parts, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::{Instrument, Span};

use crate::builder::Builder;
use crate::connect::{Sender, chain, with_origin};
use crate::control::Snapshot;
use crate::picker::{Pick, PickRequest, Picker, RequestHash, ring_hash};
use crate::published::Published;
use crate::snapshot::ChannelSnapshot;
use crate::state::ConnectivityState;
use crate::subchannel::{Ready, Shared};

/// How many times one RPC is re-picked because the connection it was given closed before
/// the request could be sent, before it waits for the next picker.
const MAX_UNSENT_REPICKS: u32 = 3;

/// A load-balanced gRPC channel over the instances of one service.
///
/// Cloning is cheap (one reference count); every clone shares the sub-channels. The
/// connections are closed, after their RPCs in flight finish, when the last clone is dropped.
///
/// # Examples
///
/// ```no_run
/// use switchboard_balancer::Balancer;
/// use switchboard_resolver::StaticResolver;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let resolver = StaticResolver::from_target("direct:///127.0.0.1:50051,127.0.0.1:50052")?;
/// let channel = Balancer::builder().target("user.rpc").build_from(&resolver)?;
/// channel.ready(std::time::Duration::from_secs(5)).await?;
/// // let mut client = UserClient::new(channel.clone());
/// println!("{:?}", channel.snapshot());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Balancer {
    handle: Arc<Handle>,
}

pub(crate) struct Handle {
    pub(crate) inner: Arc<Published<Sender>>,
    pub(crate) scheme: Scheme,
    pub(crate) wait_for_ready: bool,
    pub(crate) track_rtt: bool,
    /// The metadata entry whose value `ring_hash` hashes, if any.
    pub(crate) hash_header: Option<http::HeaderName>,
    /// Dropped with the last handle: stops the worker.
    pub(crate) _close: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("target", &self.handle.inner.target)
            .field("state", &self.state())
            .finish()
    }
}

/// A request extension that sets gRPC's wait-for-ready for one RPC, overriding
/// [`Builder::wait_for_ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitForReady(pub bool);

impl Balancer {
    /// Options for a new balancer.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn new(handle: Arc<Handle>) -> Self {
        Self { handle }
    }

    /// The channel's connectivity state: READY if any sub-channel is READY, else CONNECTING if
    /// any is connecting (or the first resolution is pending), else IDLE if any is, else
    /// TRANSIENT_FAILURE (also with no instances).
    pub fn state(&self) -> ConnectivityState {
        self.handle.inner.state()
    }

    /// Waits until the state differs from `current`, and returns the new state (gRPC's
    /// `WaitForStateChange`).
    pub async fn wait_for_state_change(&self, current: ConnectivityState) -> ConnectivityState {
        let mut rx = self.handle.inner.watch_state();
        match rx.wait_for(|s| *s != current).await {
            Ok(s) => *s,
            Err(_) => ConnectivityState::Shutdown,
        }
    }

    /// A receiver of every state change, for those who prefer a `watch`.
    pub fn watch_state(&self) -> watch::Receiver<ConnectivityState> {
        self.handle.inner.watch_state()
    }

    /// Waits, at most `timeout`, until some sub-channel is READY. The error is UNAVAILABLE
    /// with the last connection error, or DEADLINE_EXCEEDED.
    pub async fn ready(&self, timeout: Duration) -> Result<(), Status> {
        let mut rx = self.handle.inner.watch_state();
        let wait =
            rx.wait_for(|s| matches!(s, ConnectivityState::Ready | ConnectivityState::Shutdown));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if *s == ConnectivityState::Ready => Ok(()),
            Ok(_) => Err(Status::unavailable(format!(
                "the channel to {} is closed",
                self.handle.inner.target
            ))),
            Err(_) => {
                let why = match &**self.handle.inner.load() {
                    Snapshot::Fail(status) => status.message().to_owned(),
                    _ => format!("still {}", self.state()),
                };
                Err(Status::deadline_exceeded(format!(
                    "{} not READY within {timeout:?}: {why}",
                    self.handle.inner.target
                )))
            }
        }
    }

    /// A channelz-like snapshot: the state, and per sub-channel its address, state, counters
    /// and last error.
    pub fn snapshot(&self) -> ChannelSnapshot {
        self.handle.inner.snapshot()
    }

    /// Sends one request on a sub-channel picked for it, waiting for a READY one as gRPC
    /// does, never past the request's deadline.
    async fn send(
        self,
        mut request: Request<tonic::body::Body>,
    ) -> Result<Response<ResponseBody>, Status> {
        let handle = &*self.handle;
        let inner = &*handle.inner;
        let mut deadline: Option<Option<Instant>> = None;
        let mut unsent = 0u32;
        loop {
            let generation = inner.generation();
            // Peak-EWMA reads the clock once: for the pick and for the latency sample.
            let now = handle.track_rtt.then(std::time::Instant::now);
            let picked = match &**inner.load() {
                Snapshot::Pick(picker) if picker.reads_request() => {
                    let request = PickRequest {
                        path: request.uri().path(),
                        headers: request.headers(),
                        hash: request_hash(&request, handle.hash_header.as_ref()),
                        now: now.unwrap_or_else(std::time::Instant::now),
                    };
                    match picker.pick_for(&request) {
                        Pick::Ready(ready) => Ok(ready.clone()),
                        Pick::Queue => Err(None),
                        Pick::Fail(status) => Err(Some(status)),
                    }
                }
                Snapshot::Pick(picker) => {
                    match now.map_or_else(|| picker.pick(), |now| picker.pick_at(now)) {
                        Pick::Ready(ready) => Ok(ready.clone()),
                        Pick::Queue => Err(None),
                        Pick::Fail(status) => Err(Some(status)),
                    }
                }
                Snapshot::Queue => Err(None),
                Snapshot::Fail(status) => Err(Some(status.clone())),
            };
            let status = match picked {
                Ok(ready) => {
                    let span = attempt_span(&inner.target, &ready.0.sub.addr, &request);
                    match send_on(handle, &ready, request, now).instrument(span).await {
                        Ok(response) => return Ok(response),
                        Err(Failed::Sent(status)) => return Err(status),
                        Err(Failed::Unsent(back, why)) => {
                            request = back;
                            unsent += 1;
                            tracing::debug!(addr = %ready.0.sub.addr, error = %why, "connection closed before the request was sent: picking again");
                            if unsent < MAX_UNSENT_REPICKS {
                                continue;
                            }
                            unsent = 0;
                            None
                        }
                    }
                }
                Err(status) => status,
            };
            let wait_for_ready = request
                .extensions()
                .get::<WaitForReady>()
                .map_or(handle.wait_for_ready, |w| w.0);
            if let Some(status) = status {
                if !wait_for_ready {
                    return Err(status);
                }
            }
            let deadline = *deadline
                .get_or_insert_with(|| grpc_timeout(request.headers()).map(|t| Instant::now() + t));
            if !inner.changed_since(generation, deadline).await {
                let why = match &**inner.load() {
                    Snapshot::Fail(status) => status.message().to_owned(),
                    _ => format!("the channel is {}", inner.state()),
                };
                return Err(Status::deadline_exceeded(format!(
                    "deadline exceeded while waiting for a READY instance of {}: {why}",
                    inner.target
                )));
            }
        }
    }
}

/// The hash `ring_hash` routes `request` by: its [`RequestHash`] extension, else the hash of
/// the `header` entry's value (gRFC A76's `request_hash_header`), else none.
fn request_hash<B>(request: &Request<B>, header: Option<&http::HeaderName>) -> Option<u64> {
    if let Some(hash) = request.extensions().get::<RequestHash>() {
        return Some(hash.0);
    }
    let value = request.headers().get(header?)?;
    Some(ring_hash::hash_key(value.as_bytes()))
}

// Returned by value once per attempt, like the response it stands for: no need to box.
#[allow(clippy::large_enum_variant)]
enum Failed {
    /// The request never left: it can go elsewhere.
    Unsent(Request<tonic::body::Body>, String),
    /// The request was sent, or could have been: its status.
    Sent(Status),
}

async fn send_on(
    handle: &Handle,
    ready: &Ready<Sender>,
    request: Request<tonic::body::Body>,
    started: Option<std::time::Instant>,
) -> Result<Response<ResponseBody>, Failed> {
    let conn = &*ready.0;
    let (mut parts, body) = request.into_parts();
    parts.uri = with_origin(&parts.uri, &handle.scheme, &conn.authority)
        .map_err(|e| Failed::Sent(Status::internal(format!("request URI: {e}"))))?;
    let request = Request::from_parts(parts, body);

    let sub = &conn.sub;
    sub.call_started();
    let mut call = Call {
        sub: Some(sub.clone()),
        started: started.unwrap_or_else(std::time::Instant::now),
    };
    let mut sender = conn.sender.clone();
    match sender.try_send_request(request).await {
        Ok(response) => {
            if let Some(started) = started {
                let now = std::time::Instant::now();
                sub.rtt.observe(now - started, now);
            }
            // A trailers-only response carries its status in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                call.end(Some(code));
            }
            Ok(response.map(|inner| ResponseBody { inner, call }))
        }
        Err(mut e) => match e.take_message() {
            Some(mut back) => {
                call.end(None);
                // Give the request its original URI back: it may go to another instance.
                *back.uri_mut() = strip_origin(back.uri());
                Err(Failed::Unsent(back, chain(e.error())))
            }
            None => {
                let error = e.into_error();
                let status = status_of(&sub.addr, &error);
                call.end(Some(status.code()));
                Err(Failed::Sent(status))
            }
        },
    }
}

/// A span for one attempt of an RPC (at DEBUG level): its target, the instance picked, and
/// the attempt number (from `grpc-previous-rpc-attempts`, which retries set).
fn attempt_span(target: &str, instance: &str, request: &Request<tonic::body::Body>) -> Span {
    let span = tracing::debug_span!(
        "rpc_attempt",
        target,
        instance,
        method = tracing::field::Empty,
        attempt = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let previous = request
            .headers()
            .get("grpc-previous-rpc-attempts")
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
            .unwrap_or(0);
        span.record("method", request.uri().path());
        span.record("attempt", previous + 1);
    }
    span
}

fn strip_origin(uri: &Uri) -> Uri {
    let mut parts = Parts::default();
    parts.path_and_query = uri.path_and_query().cloned();
    Uri::from_parts(parts).unwrap_or_default()
}

/// The status of an RPC that failed in transport, as gRPC maps HTTP/2 errors.
///
/// A stream the server refused (`RST_STREAM` with `REFUSED_STREAM`) or went away before
/// reading (a GOAWAY whose last stream id is lower) was not processed: its status is UNAVAILABLE
/// with [`Unprocessed`] as its source.
fn status_of(addr: &str, error: &hyper::Error) -> Status {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut code = Code::Unavailable;
    let mut unprocessed = false;
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            unprocessed = h2.is_remote()
                && ((h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
                    || h2.is_go_away());
            code = match h2.reason() {
                _ if unprocessed => Code::Unavailable,
                Some(h2::Reason::CANCEL) => Code::Cancelled,
                Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
                Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
                Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
                Some(_) if h2.is_io() || h2.is_go_away() => Code::Unavailable,
                Some(_) => Code::Internal,
            };
            break;
        }
        source = e.source();
    }
    let mut status = Status::new(code, format!("{addr}: {}", chain(error)));
    if unprocessed {
        status.set_source(Arc::new(Unprocessed));
    }
    status
}

/// The source of the [`Status`] of an RPC that reached a server but was not processed by it:
/// the server refused its stream (`REFUSED_STREAM`) or sent a GOAWAY below its stream id.
///
/// Such an RPC can be sent again whatever its method, as gRFC A6's transparent retry does;
/// [`is_unprocessed`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unprocessed;

impl std::fmt::Display for Unprocessed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server did not process the request")
    }
}

impl std::error::Error for Unprocessed {}

/// Whether `status` is that of an RPC the server did not process (see [`Unprocessed`]).
///
/// ```
/// use switchboard_balancer::{Unprocessed, is_unprocessed};
///
/// let mut status = tonic::Status::unavailable("refused");
/// assert!(!is_unprocessed(&status));
/// status.set_source(std::sync::Arc::new(Unprocessed));
/// assert!(is_unprocessed(&status));
/// ```
pub fn is_unprocessed(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|s| s.is::<Unprocessed>())
}

/// The `grpc-status` in these headers (or trailers), if there is one (UNKNOWN if it is not a
/// number).
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.as_bytes();
    if value == b"0" {
        return Some(Code::Ok);
    }
    let code = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    Some(code)
}

/// The deadline a request carries in its `grpc-timeout` header (up to 8 digits and a unit: H,
/// M, S, m, u, n), or `None` if it has none or it is malformed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.saturating_mul(3600)),
        b"M" => Duration::from_secs(n.saturating_mul(60)),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Accounts for one RPC on a sub-channel until it ends.
struct Call {
    sub: Option<Arc<Shared>>,
    started: std::time::Instant,
}

impl Call {
    /// Ends the RPC with its status code, or `None` if it was never sent.
    fn end(&mut self, code: Option<Code>) {
        if let Some(sub) = self.sub.take() {
            sub.call_ended(code.map(|c| (c, self.started.elapsed())));
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before its status was seen: cancelled by the caller.
        self.end(Some(Code::Cancelled));
    }
}

/// The body of a response: hyper's, plus the accounting of its RPC, which ends with the
/// trailers (or when the body is dropped).
pub struct ResponseBody {
    inner: hyper::body::Incoming,
    call: Call,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(Code::Unknown);
                    this.call.end(Some(code));
                }
            }
            // The stream broke, or ended without trailers.
            Poll::Ready(Some(Err(_))) => this.call.end(Some(Code::Unavailable)),
            Poll::Ready(None) => this.call.end(Some(Code::Internal)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a [`Balancer`] call: a boxed [`tonic::Status`], which tonic unboxes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Balancer`]'s `call` returns.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

impl tower_service::Service<Request<tonic::body::Body>> for Balancer {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: an RPC waits for a READY sub-channel inside `call`, bounded by its
    /// deadline.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(request).await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_says() {
        let parse = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(parse("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse("123456789S"), None, "more than 8 digits");
        assert_eq!(parse("S"), None);
        assert_eq!(parse("10x"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
