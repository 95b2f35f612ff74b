//! The balanced channel: a cheap, clonable handle that picks a READY sub-channel for each RPC
//! and sends it there. It implements `tower::Service<http::Request<tonic::body::Body>>`, so a
//! tonic-generated client runs over it directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument;

use crate::connect::Sender;
use crate::control::Snapshot;
use crate::picker::{Pick, PickRequest, Picker, RequestHash, ring_hash};
use crate::published::Published;
use crate::snapshot::ChannelSnapshot;
use crate::state::ConnectivityState;
use crate::subchannel::Ready;

mod call;
mod limits;

use call::{Failed, attempt_span, send_on};
pub use call::{ResponseBody, Unprocessed, grpc_timeout, is_unprocessed};
use limits::{Checked, Guarded, Tripped};
pub use limits::{
    DEFAULT_MAX_RESPONSE_MESSAGE_BYTES, MessageLimits, MessageTooLarge, oversized_message,
    request_too_large,
};

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
    pub(crate) wait_for_ready: bool,
    pub(crate) track_rtt: bool,
    /// The metadata entry whose value `ring_hash` hashes, if any.
    pub(crate) hash_header: Option<http::HeaderName>,
    /// The `user-agent` of requests that carry none.
    pub(crate) user_agent: http::HeaderValue,
    /// The most calls that wait for a free stream at once.
    pub(crate) max_pending: usize,
    /// The largest messages an RPC sends and receives, unless it says otherwise.
    pub(crate) limits: MessageLimits,
    /// The `:authority` of every request, instead of each instance's address.
    pub(crate) authority: Option<http::uri::Authority>,
    /// With the call log on, the time past which a successful call is logged as slow.
    pub(crate) slow_call: Option<Duration>,
    /// The breaker of each method, if the balancer keeps them.
    pub(crate) breakers: Option<Arc<crate::breaker::Breakers>>,
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
/// [`Builder::wait_for_ready`](crate::Builder::wait_for_ready).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitForReady(pub bool);

impl Balancer {
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
        let mut snapshot = self.handle.inner.snapshot();
        if let Some(breakers) = &self.handle.breakers {
            snapshot.breakers = breakers.snapshot();
        }
        snapshot
    }

    /// The per-method breakers, if it was built with [`crate::Builder::breaker`].
    pub fn breakers(&self) -> Option<&crate::breaker::Breakers> {
        self.handle.breakers.as_deref()
    }

    /// The breakers, to share with another balancer.
    pub(crate) fn shared_breakers(&self) -> Option<Arc<crate::breaker::Breakers>> {
        self.handle.breakers.clone()
    }

    /// The sub-channel for `request`, its call counted: the picker's choice if its peer has a
    /// free stream, else the least busy READY one that has, else [`Picked::Full`].
    fn pick(
        &self,
        request: &Request<tonic::body::Body>,
        now: Option<std::time::Instant>,
    ) -> Picked {
        let handle = &*self.handle;
        let snapshot = handle.inner.load();
        let picker = match &**snapshot {
            Snapshot::Pick(picker) => picker,
            Snapshot::Queue => return Picked::Wait(None),
            Snapshot::Fail(status) => return Picked::Wait(Some(status.clone())),
        };
        let pick = if picker.reads_request() {
            picker.pick_for(&PickRequest {
                path: request.uri().path(),
                headers: request.headers(),
                hash: request_hash(request, handle.hash_header.as_ref()),
                now: now.unwrap_or_else(std::time::Instant::now),
            })
        } else {
            now.map_or_else(|| picker.pick(), |now| picker.pick_at(now))
        };
        let tried = request.extensions().get::<Tried>();
        let picked = match pick {
            Pick::Ready(ready)
                if tried.is_some_and(|t| t.contains(ready.0.sub.id))
                    && picker.endpoints().len() > 1 =>
            {
                // Another attempt of this RPC went there: another instance if one has room.
                match with_room(picker.endpoints(), tried) {
                    Picked::Full => with_room(picker.endpoints(), None),
                    other => other,
                }
            }
            Pick::Ready(ready) if ready.0.sub.try_call_started(max_streams(ready)) => {
                Picked::Ready(ready.clone())
            }
            // Its peer's MAX_CONCURRENT_STREAMS is reached: h2 would queue the call behind it.
            Pick::Ready(_) => with_room(picker.endpoints(), None),
            Pick::Queue => Picked::Wait(None),
            Pick::Fail(status) => Picked::Wait(Some(status)),
        };
        if let (Some(tried), Picked::Ready(ready)) = (tried, &picked) {
            tried.add(ready.0.sub.id);
        }
        picked
    }

    /// Sends one request on a sub-channel picked for it, waiting for a READY one as gRPC
    /// does, never past the request's deadline.
    async fn send(
        self,
        mut request: Request<tonic::body::Body>,
    ) -> Result<Response<ResponseBody>, Status> {
        let handle = &*self.handle;
        let inner = &*handle.inner;
        // The RPC's deadline bounds the wait for a READY instance, for the response headers,
        // and for the rest of the response, to the trailers.
        let timeout = grpc_timeout(request.headers());
        if let http::header::Entry::Vacant(entry) =
            request.headers_mut().entry(http::header::USER_AGENT)
        {
            entry.insert(handle.user_agent.clone());
        }
        let limits = request
            .extensions()
            .get::<MessageLimits>()
            .copied()
            .unwrap_or(handle.limits);
        // Request messages are checked as they go only when they have a limit.
        let tripped = (limits.request != usize::MAX).then(|| {
            let tripped = Tripped::default();
            let body = std::mem::take(request.body_mut());
            *request.body_mut() =
                tonic::body::Body::new(Checked::new(body, limits.request, tripped.clone()));
            tripped
        });
        // A streaming request is cancelled (its stream reset) when its response is dropped.
        let guard = if http_body::Body::size_hint(request.body()).exact().is_none() {
            let body = std::mem::take(request.body_mut());
            let (body, guard) = Guarded::new(body);
            *request.body_mut() = tonic::body::Body::new(body);
            Some(guard)
        } else {
            None
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        // One timer for the headers and then the body of the attempt that gets them.
        let mut timer = deadline.map(|at| Box::pin(tokio::time::sleep_until(at)));
        let mut unsent = 0u32;
        // Counted among the calls waiting for a free stream, and told when one is freed.
        let mut waiting = None;
        loop {
            let generation = inner.generation();
            // Peak-EWMA reads the clock once: for the pick and for the latency sample.
            let now = handle.track_rtt.then(std::time::Instant::now);
            let picked = match self.pick(&request, now) {
                Picked::Ready(ready) => Ok(ready),
                Picked::Wait(status) => Err(status),
                Picked::Full => {
                    let Some((_, freed)) = &mut waiting else {
                        let Some(counted) = inner.room.enter(handle.max_pending) else {
                            return Err(Status::resource_exhausted(format!(
                                "{} calls already wait for a free stream to {}: every \
                                 instance's MAX_CONCURRENT_STREAMS is reached",
                                handle.max_pending, inner.target
                            )));
                        };
                        let mut freed = Box::pin(inner.room.freed.notified());
                        freed.as_mut().enable();
                        // A stream may have been freed since the pick: look again before
                        // waiting.
                        waiting = Some((counted, freed));
                        continue;
                    };
                    let woken = tokio::select! {
                        () = freed.as_mut() => true,
                        changed = inner.changed_since(generation, deadline) => changed,
                    };
                    if !woken {
                        return Err(Status::deadline_exceeded(format!(
                            "deadline exceeded while waiting for a free stream to {}: every \
                             instance's MAX_CONCURRENT_STREAMS is reached",
                            inner.target
                        )));
                    }
                    let mut next = Box::pin(inner.room.freed.notified());
                    next.as_mut().enable();
                    *freed = next;
                    continue;
                }
            };
            waiting = None;
            let status = match picked {
                Ok(ready) => {
                    let span = attempt_span(&inner.target, &ready.0.sub.addr, &request);
                    let attempt = send_on(handle, &ready, request, now);
                    // Entered on every poll only where someone listens at DEBUG.
                    let attempt = if span.is_disabled() {
                        Either::Left(attempt)
                    } else {
                        Either::Right(attempt.instrument(span))
                    };
                    let sent = match timer.as_mut() {
                        Some(timer) => tokio::select! {
                            sent = attempt => sent,
                            // Dropping the attempt resets its HTTP/2 stream.
                            () = timer.as_mut() => {
                                return Err(Status::deadline_exceeded(format!(
                                    "deadline of {:?} exceeded waiting for the response \
                                     headers of {}",
                                    timeout.unwrap_or_default(),
                                    ready.0.sub.addr
                                )));
                            }
                        },
                        None => attempt.await,
                    };
                    match sent {
                        Ok(response) => {
                            // A server that honours `grpc-timeout` may answer its own timeout
                            // first (tonic's: CANCELLED): past the deadline, the RPC's status
                            // is DEADLINE_EXCEEDED, as in grpc-go.
                            let failed = response
                                .headers()
                                .get(&call::GRPC_STATUS)
                                .is_some_and(|c| c.as_bytes() != b"0");
                            if failed && deadline.is_some_and(|d| Instant::now() >= d) {
                                return Err(Status::deadline_exceeded(format!(
                                    "deadline of {:?} exceeded before {} answered",
                                    timeout.unwrap_or_default(),
                                    ready.0.sub.addr
                                )));
                            }
                            return Ok(response.map(|body| {
                                body.until(timer.take())
                                    .limited(limits.response, tripped)
                                    .guarding(guard)
                            }));
                        }
                        Err(Failed::Sent(status)) => {
                            // A request message over its limit broke the stream.
                            let status = tripped
                                .as_ref()
                                .and_then(|t| t.get().cloned())
                                .unwrap_or(status);
                            return Err(status);
                        }
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

/// A request extension shared by the attempts of one RPC (hedged ones): the sub-channels they
/// went to. A pick avoids those while another READY instance has room, and adds its own.
#[derive(Clone, Debug, Default)]
pub struct Tried(Arc<std::sync::Mutex<Vec<u64>>>);

impl Tried {
    fn contains(&self, id: u64) -> bool {
        self.0.lock().is_ok_and(|ids| ids.contains(&id))
    }

    fn add(&self, id: u64) {
        if let Ok(mut ids) = self.0.lock() {
            ids.push(id);
        }
    }
}

/// What one pick found.
enum Picked {
    /// Send it here: the call is counted on the sub-channel.
    Ready(Ready<Sender>),
    /// Every READY sub-channel's peer has all the streams it allows open.
    Full,
    /// No READY sub-channel: wait for the next picker, or fail with this status if fail-fast.
    Wait(Option<Status>),
}

/// The streams `ready`'s peer allows at once (its `MAX_CONCURRENT_STREAMS`).
#[inline]
fn max_streams(ready: &Ready<Sender>) -> usize {
    ready
        .0
        .max_streams
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The least busy of `endpoints` whose peer has a free stream (and that no attempt in `tried`
/// went to), its call counted.
fn with_room(endpoints: &[Ready<Sender>], tried: Option<&Tried>) -> Picked {
    // Another call can take the last free stream between the look and the count: look again.
    for _ in 0..3 {
        let best = endpoints
            .iter()
            .filter(|r| r.0.sub.has_room(max_streams(r)))
            .filter(|r| !tried.is_some_and(|t| t.contains(r.0.sub.id)))
            .min_by_key(|r| r.0.sub.in_flight.load(std::sync::atomic::Ordering::Relaxed));
        match best {
            Some(ready) if ready.0.sub.try_call_started(max_streams(ready)) => {
                return Picked::Ready(ready.clone());
            }
            Some(_) => {}
            None => return Picked::Full,
        }
    }
    Picked::Full
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
