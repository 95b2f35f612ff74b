//! go-zero's server interceptors as one tower layer around every service of a [`Server`]
//! (`RpcServerConf`'s `Timeout`, `MethodTimeouts`, `CpuThreshold` and `Middlewares`):
//!
//! - **Shedding** (`CpuThreshold`): a call is refused with RESOURCE_EXHAUSTED while the
//!   process's CPU usage is above the threshold and more calls are in flight than the server
//!   has shown it can finish ([`super::shedding`]).
//! - **Breaker**: an adaptive breaker per method, the client's algorithm applied to what
//!   this server answers; a refused call gets UNAVAILABLE.
//! - **Timeout**: a call whose handler is still running past `Timeout` (or its method's)
//!   answers DEADLINE_EXCEEDED: a unary call, or a client stream not yet answered (a stream
//!   of responses runs on once its handler has returned it, as in go-zero, whose timeout is
//!   for unary calls). A client's own, shorter deadline is tonic's to enforce.
//! - **Recover**: a handler that panics answers INTERNAL instead of dropping its connection.
//! - **Stat**: each call is logged at DEBUG, and a call slower than `StatConf.SlowThreshold`
//!   (500 ms) at WARN (`[RPC] slowcall`).
//! - **Trace**: the handler runs in its caller's W3C trace ([`crate::trace`]), so the RPCs it
//!   makes through a switchboard `Channel` continue it.
//! - **Prometheus**: `switchboard_server_requests_total{method,code}` and
//!   `switchboard_server_request_duration_seconds{method}`.
//!
//! [`Server`]: super::Server

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use switchboard_balancer::breaker::{Admitted, Breakers};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service;

use super::shedding::{Shedder, Ticket};

/// What the layer does, from `RpcServerConf`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Settings {
    /// Every unary call's deadline on the server, unless its method has its own.
    pub(crate) timeout: Option<Duration>,
    /// Deadlines by full method (`/pkg.Service/Method`).
    pub(crate) method_timeouts: HashMap<String, Duration>,
    pub(crate) recover: bool,
    /// Whether handlers run in their caller's trace.
    pub(crate) trace: bool,
    /// Past this, a call is logged as slow; `None`: no call log.
    pub(crate) slow: Option<Duration>,
    pub(crate) metrics: bool,
    pub(crate) breakers: Option<Arc<Breakers>>,
    pub(crate) shedder: Option<Arc<Shedder>>,
}

/// The tower layer.
#[derive(Clone, Debug)]
pub(crate) struct Layer(pub(crate) Arc<Settings>);

impl<S> tower::Layer<S> for Layer {
    type Service = Intercepted<S>;
    fn layer(&self, inner: S) -> Intercepted<S> {
        Intercepted {
            inner,
            settings: self.0.clone(),
        }
    }
}

/// A service behind go-zero's interceptors.
#[derive(Clone, Debug)]
pub(crate) struct Intercepted<S> {
    inner: S,
    settings: Arc<Settings>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Intercepted<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let settings = self.settings.clone();
        let method: Arc<str> = request.uri().path().into();
        let started = Instant::now();
        let mut end = End {
            method: method.clone(),
            started,
            settings: settings.clone(),
            admitted: None,
            ticket: None,
            done: false,
            trace_id: None,
        };
        if let Some(shedder) = &settings.shedder {
            match shedder.allow() {
                Some(ticket) => end.ticket = Some(ticket),
                None => {
                    let status = Status::resource_exhausted(format!(
                        "service overloaded: CPU usage above {}‰ with {} calls in flight",
                        shedder.threshold(),
                        shedder.in_flight()
                    ));
                    return Box::pin(std::future::ready(Ok(end.refuse(&status))));
                }
            }
        }
        if let Some(breakers) = &settings.breakers {
            match breakers.admit(&method) {
                Ok(admitted) => end.admitted = Some(admitted),
                Err(status) => return Box::pin(std::future::ready(Ok(end.refuse(&status)))),
            }
        }
        let timeout = settings
            .method_timeouts
            .get(&*method)
            .copied()
            .or(settings.timeout);
        let trace = settings.trace.then(|| {
            crate::trace::TraceContext::from_headers(request.headers())
                .map_or_else(crate::trace::TraceContext::root, |c| c.child())
        });
        end.trace_id = trace.as_ref().map(|t| t.trace_id);
        let call = self.inner.call(request);
        let call = async move {
            match trace {
                Some(trace) => crate::trace::scope(trace, call).await,
                None => call.await,
            }
        };
        Box::pin(async move {
            let call = async {
                if settings.recover {
                    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
                        Ok(result) => result.map(Ok),
                        Err(panic) => Ok(Err(panicked(&*panic))),
                    }
                } else {
                    call.await.map(Ok)
                }
            };
            let answered = match timeout {
                Some(t) => match tokio::time::timeout_at(started + t, call).await {
                    Ok(answered) => answered,
                    Err(_) => Ok(Err(Status::deadline_exceeded(format!(
                        "{method} took longer than the server's timeout of {t:?}"
                    )))),
                },
                None => call.await,
            };
            match answered {
                Ok(Ok(response)) => Ok(end.watch(response)),
                Ok(Err(status)) => Ok(end.refuse(&status)),
                Err(error) => {
                    end.finish(Code::Internal);
                    Err(error)
                }
            }
        })
    }
}

/// The status of a handler that panicked.
fn panicked(panic: &(dyn std::any::Any + Send)) -> Status {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    tracing::error!(panic = %what, "[RPC] handler panicked");
    Status::internal(format!("panic: {what}"))
}

/// What is told when a call ends.
struct End {
    method: Arc<str>,
    started: Instant,
    settings: Arc<Settings>,
    admitted: Option<Admitted>,
    ticket: Option<Ticket>,
    done: bool,
    /// The call's trace, for the log.
    trace_id: Option<[u8; 16]>,
}

impl End {
    /// A trailers-only response with `status`, the call ended with it.
    fn refuse(self, status: &Status) -> Response<Body> {
        let response = status.clone().into_http();
        self.end_with(status);
        response
    }

    /// `response`, its call ended at its trailers (at once if it has its status already).
    fn watch(self, response: Response<Body>) -> Response<Body> {
        if let Some(status) = Status::from_header_map(response.headers()) {
            self.end_with(&status);
            return response;
        }
        response.map(|body| {
            Body::new(Watched {
                inner: body,
                end: Some(self),
            })
        })
    }

    fn end_with(mut self, status: &Status) {
        if let Some(admitted) = self.admitted.take() {
            admitted.end_with(status);
        }
        self.finish(status.code());
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        if let Some(admitted) = self.admitted.take() {
            admitted.end(code);
        }
        if let Some(ticket) = self.ticket.take() {
            ticket.done(code != Code::DeadlineExceeded, elapsed);
        }
        let method = &*self.method;
        if let Some(slow) = self.settings.slow {
            let trace_id = self.trace_id.map(|id| crate::trace::to_hex(&id));
            let trace_id = trace_id.as_deref().unwrap_or("");
            if elapsed > slow {
                tracing::warn!(method, ?elapsed, ?code, trace_id, "[RPC] slowcall");
            } else {
                tracing::debug!(method, ?elapsed, ?code, trace_id, "[RPC] served");
            }
        }
        if self.settings.metrics {
            let code = switchboard_balancer::metrics::code_name(code);
            metrics::counter!(
                "switchboard_server_requests_total",
                "method" => method.to_owned(),
                "code" => code
            )
            .increment(1);
            metrics::histogram!(
                "switchboard_server_request_duration_seconds",
                "method" => method.to_owned()
            )
            .record(elapsed.as_secs_f64());
        }
    }
}

impl Drop for End {
    fn drop(&mut self) {
        // Dropped before its end: cancelled.
        self.finish(Code::Cancelled);
    }
}

/// A response body whose trailers end its call.
struct Watched {
    inner: Body,
    end: Option<End>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The call ends at its trailers (UNKNOWN without a status), an error, or the end.
        let status = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|trailers| {
                Status::from_header_map(trailers).unwrap_or_else(|| Status::new(Code::Unknown, ""))
            }),
            Poll::Ready(Some(Err(_))) => Some(Status::new(Code::Internal, "")),
            Poll::Ready(None) => Some(Status::new(Code::Ok, "")),
            Poll::Pending => None,
        };
        if let (Some(status), Some(end)) = (status, self.end.take()) {
            end.end_with(&status);
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
