//! One attempt of an RPC on the sub-channel picked for it: the request sent on its
//! connection, transport errors mapped to gRPC statuses, and the response body that counts
//! the call when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Parts, PathAndQuery};
use http::{HeaderMap, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{Code, Status};
use tracing::Span;

use super::Handle;
use super::limits::{Frames, Tripped};
use crate::breaker::Admitted;
use crate::connect::{Sender, chain, with_origin};
use crate::subchannel::{Ready, Shared};

// Returned by value once per attempt, like the response it stands for: no need to box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Failed {
    /// The request never left: it can go elsewhere.
    Unsent(Request<tonic::body::Body>, String),
    /// The request was sent, or could have been: its status.
    Sent(Status),
}

pub(super) async fn send_on(
    handle: &Handle,
    ready: &Ready<Sender>,
    request: Request<tonic::body::Body>,
    started: Option<std::time::Instant>,
) -> Result<Response<ResponseBody>, Failed> {
    let conn = &*ready.0;
    let (mut parts, body) = request.into_parts();
    let authority = handle.authority.as_ref().unwrap_or(&conn.authority);
    parts.uri = with_origin(&parts.uri, &conn.scheme, authority)
        .map_err(|e| Failed::Sent(Status::internal(format!("request URI: {e}"))))?;
    let request = Request::from_parts(parts, body);

    // The pick counted the call on its sub-channel.
    let sub = &conn.sub;
    let mut call = Call {
        sub: Some(sub.clone()),
        started: started.unwrap_or_else(std::time::Instant::now),
        log: None,
        ended: None,
        breaker: None,
    };
    // Only a committed call is logged here: an attempt that fails before its response is
    // retried or reported by the caller, which logs the RPC's outcome.
    let log = handle.slow_call.map(|threshold| {
        let path = request.uri().path_and_query().cloned();
        (
            path.unwrap_or_else(|| PathAndQuery::from_static("/")),
            threshold,
        )
    });
    let mut sender = conn.sender.clone();
    match sender.try_send_request(request).await {
        Ok(response) => {
            if let Some(started) = started {
                let now = std::time::Instant::now();
                sub.rtt.observe(now - started, now);
            }
            // A trailers-only response carries its status in the headers.
            match grpc_status(response.headers()) {
                Some(code) => call.end(Some(code)),
                None => call.log = log,
            }
            Ok(response.map(|inner| ResponseBody {
                inner: Some(inner),
                call,
                deadline: None,
                frames: Frames::default(),
                max: usize::MAX,
                tripped: None,
                guard: None,
            }))
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
pub(super) fn attempt_span(
    target: &str,
    instance: &str,
    request: &Request<tonic::body::Body>,
) -> Span {
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

pub(super) fn strip_origin(uri: &Uri) -> Uri {
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

/// gRPC's headers, named once rather than parsed on every lookup.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
pub(crate) const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The `grpc-status` in these headers (or trailers), if there is one (UNKNOWN if it is not a
/// number).
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(&GRPC_STATUS)?.as_bytes();
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
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
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
    /// With the call log on, once the response is committed: the method, and the time past
    /// which a call is logged as slow.
    log: Option<(PathAndQuery, Duration)>,
    /// The status it ended with, once it has.
    ended: Option<Code>,
    /// Told the RPC's status when it ends.
    breaker: Option<Admitted>,
}

impl Call {
    /// Ends the RPC with its status code, or `None` if it was never sent.
    fn end(&mut self, code: Option<Code>) {
        if let Some(sub) = self.sub.take() {
            self.ended = code;
            if let (Some(breaker), Some(code)) = (self.breaker.take(), code) {
                breaker.end(code);
            }
            let elapsed = self.started.elapsed();
            if let (Some((method, threshold)), Some(code)) = (&self.log, code) {
                let method = method.as_str();
                if code != Code::Ok {
                    tracing::error!(instance = %sub.addr, method, ?elapsed, ?code, "[RPC] fail");
                } else if elapsed > *threshold {
                    tracing::warn!(instance = %sub.addr, method, ?elapsed, "[RPC] ok - slowcall");
                }
            }
            sub.call_ended(code.map(|c| (c, elapsed)));
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
/// trailers (or when the body is dropped), and the RPC's deadline: a body still running when it
/// passes ends with a DEADLINE_EXCEEDED status, and its HTTP/2 stream is reset. A message over
/// the RPC's response limit ends it the same way with RESOURCE_EXHAUSTED.
pub struct ResponseBody {
    /// `None` once the RPC ended early: dropping hyper's body resets the stream.
    inner: Option<hyper::body::Incoming>,
    call: Call,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The response's messages so far, and the largest one allowed (`usize::MAX`: unchecked).
    frames: Frames,
    max: usize,
    /// Set when one of the request's messages was over its limit.
    tripped: Option<Tripped>,
    /// Dropped with the body, or when the RPC ends early: a streaming request still being sent
    /// then ends with `CANCEL`, which resets the stream.
    guard: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// This body, ended at `deadline` (the RPC's timer) if it has one.
    pub(super) fn until(mut self, deadline: Option<Pin<Box<tokio::time::Sleep>>>) -> Self {
        self.deadline = deadline;
        self
    }

    /// This body, its messages checked against `max` bytes; `tripped` tells that the
    /// request's were not.
    pub(super) fn limited(mut self, max: usize, tripped: Option<Tripped>) -> Self {
        self.max = max;
        self.tripped = tripped;
        self
    }

    /// This body, cancelling the streaming request behind `guard` when it is dropped.
    pub(super) fn guarding(mut self, guard: Option<tokio::sync::oneshot::Sender<()>>) -> Self {
        self.guard = guard;
        self
    }

    /// Tells `admitted` this RPC's final status when it ends (at once if it has).
    pub fn on_end(&mut self, admitted: Admitted) {
        match (&self.call.sub, self.call.ended) {
            (Some(_), _) => self.call.breaker = Some(admitted),
            (None, Some(code)) => admitted.end(code),
            // Never sent: the breaker hears nothing of it.
            (None, None) => drop(admitted),
        }
    }

    /// Ends the RPC here with `status`: its stream is reset, and the caller reads `status` in
    /// the trailers.
    fn end_with(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.inner = None;
        self.guard = None;
        self.deadline = None;
        self.call.end(Some(status.code()));
        Poll::Ready(Some(Ok(Frame::trailers(status_trailers(status)))))
    }
}

/// The trailers that carry `status`.
fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS, http::HeaderValue::from(status.code() as i32));
    // Messages are ours, in plain ASCII: nothing to percent-encode.
    if let Ok(message) = http::HeaderValue::from_str(status.message()) {
        trailers.insert(GRPC_MESSAGE, message);
    }
    trailers
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(Code::Unknown);
                    this.call.end(Some(code));
                    this.deadline = None;
                } else if let (Some(data), true) = (frame.data_ref(), this.max != usize::MAX) {
                    if let Err(len) = this.frames.feed(data, this.max) {
                        let status = Status::resource_exhausted(format!(
                            "response message of {len} bytes is larger than the limit of {} bytes",
                            this.max
                        ));
                        return this.end_with(&status);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // A request message over its limit reset the stream.
                if let Some(status) = this.tripped.as_ref().and_then(|t| t.get().cloned()) {
                    return this.end_with(&status);
                }
                // The stream broke.
                this.call.end(Some(Code::Unavailable));
            }
            // It ended without trailers.
            Poll::Ready(None) => this.call.end(Some(Code::Internal)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    let status =
                        Status::deadline_exceeded("deadline exceeded before the response ended");
                    return this.end_with(&status);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
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
