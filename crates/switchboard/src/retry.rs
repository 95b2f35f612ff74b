//! Retries of failed RPCs, as gRFC A6 ("gRPC Retry Design") specifies them.
//!
//! An RPC whose attempt ends with a retryable status (`RetryableStatusCodes`, UNAVAILABLE
//! unless configured) *before the server committed a response* is sent again, on a new pick of
//! the balancer, up to `MaxAttempts` attempts in all. "Committed" is A6's word for response
//! headers that carry no status: from then on the response is the caller's. So an attempt is
//! retried only when the balancer failed it (a boxed [`Status`]) or the server answered with a
//! trailers-only response (`grpc-status` in the headers).
//!
//! - **Backoff.** The n-th retry waits a random time in `[0, min(InitialBackoff ·
//!   BackoffMultiplier^(n-1), MaxBackoff))`.
//! - **Server pushback.** A `grpc-retry-pushback-ms` of `N` in a retryable answer makes the
//!   next retry wait exactly `N` ms, and the backoff starts over from `InitialBackoff`; a
//!   negative or malformed value stops the retries.
//! - **Throttling.** A token bucket per client (`Throttling: {MaxTokens, TokenRatio}`, on by
//!   default with `{MaxTokens: 10, TokenRatio: 0.1}`; `MaxTokens: 0` turns it off), shared by
//!   every clone of its channel, starts full; each attempt that fails with a retryable status
//!   (or pushback that stops the retries) takes one token, each success gives back
//!   `TokenRatio`, and RPCs are retried only while more than `MaxTokens / 2` remain.
//! - **Deadline.** The call's deadline bounds every attempt and every backoff: each retry sends
//!   the time left as `grpc-timeout`, and a backoff that would end past the deadline is not
//!   waited out; the RPC fails at once with its last status.
//! - A retry carries `grpc-previous-rpc-attempts`.
//!
//! **Which RPCs: all of them, up to a buffer.** Every request is kept, while it is sent, up to
//! `Retry.BufferBytes` ([`DEFAULT_RETRY_BUFFER`], 256 KiB, unless set) per RPC, so that it can
//! be sent again: a unary or server-streaming request (read whole at once, without copying),
//! and a client or bidi stream, whose messages are recorded as the first attempt sends them; a
//! retry replays them and then sends the caller's next messages as they come. A request that
//! is whole at once but larger than the buffer (one large message) is the caller's own bytes,
//! held only until a response arrives: it is sent again transparently, not retried. The RPC is
//! *committed*, and no longer retried, once a response arrives (headers without a status) or
//! its request outgrows the buffer: the attempt that holds it sends on, and the record is let
//! go. A successful attempt counts as a success for throttling when its headers arrive (a
//! status in the trailers of a committed response is not seen here).
//!
//! **Transparent retries.** Requests that never left the client (their connection closed
//! before they were sent) are re-picked by the balancer on its own. A request that reached a
//! server which did not process it (it refused the stream with `REFUSED_STREAM`, or sent a
//! GOAWAY below its stream id) is sent again once at once, on a new pick, without counting as
//! an attempt, without backoff or throttling, and even when retries are off, whatever its kind,
//! as long as it is not committed; if that happens again it counts as an UNAVAILABLE attempt.
//!
//! # Examples
//!
//! ```
//! // Up to 4 attempts of RPCs failing with UNAVAILABLE or RESOURCE_EXHAUSTED, throttled.
//! let config = switchboard::ClientConfig::from_yaml(
//!     "
//! Endpoints: [127.0.0.1:8080]
//! Retry:
//!   MaxAttempts: 4
//!   InitialBackoff: 50ms
//!   MaxBackoff: 500ms
//!   RetryableStatusCodes: [UNAVAILABLE, RESOURCE_EXHAUSTED]
//!   Throttling: {MaxTokens: 10, TokenRatio: 0.1}
//! ",
//! )?;
//! // And none at all.
//! let config = switchboard::ClientConfig::from_yaml("Endpoints: [127.0.0.1:8080]\nRetry: {MaxAttempts: 1}\n")?;
//! # Ok::<(), switchboard::Error>(())
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use switchboard_balancer::{
    Balancer, BoxError, MessageTooLarge, ResponseBody, is_unprocessed, oversized_message,
    request_too_large,
};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service as _;
use tracing::{debug, trace};

use crate::config::{HedgingSection, RetrySection};
use crate::error::Error;

mod hedge;
mod replay;

use replay::Tape;

/// The most attempts an RPC gets, whatever `MaxAttempts` says (gRFC A6).
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// The most bytes of a request body kept to send it again, unless `Retry.BufferBytes` says
/// otherwise: 256 KiB, grpc-go's default.
pub const DEFAULT_RETRY_BUFFER: usize = 256 * 1024;

const PUSHBACK: &str = "grpc-retry-pushback-ms";
const PREVIOUS_ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("grpc-previous-rpc-attempts");

/// gRPC's headers, named once rather than parsed on every lookup.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A client's retry policy, with its throttling bucket.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    /// One bit per retryable [`Code`].
    retryable: u32,
    /// Shared by every policy of a client (its methods' ones included).
    throttle: Option<Arc<Throttle>>,
    /// Set for a hedging policy: the wait before each further attempt. `retryable` then holds
    /// its non-fatal status codes.
    hedging_delay: Option<Duration>,
}

impl RetryPolicy {
    /// The policy a `Retry` section asks for (the defaults without one), or `None` when it
    /// turns retries off (`MaxAttempts: 1`). The error names the field.
    pub(crate) fn from_config(section: Option<&RetrySection>) -> Result<Option<Self>, Error> {
        let default = RetrySection::default();
        let s = section.unwrap_or(&default);
        let max_attempts = match s.max_attempts {
            Some(0) => {
                return Err(Error::config(
                    "Retry.MaxAttempts: must be at least 1 (1 turns retries off)",
                ));
            }
            Some(n) => n.min(MAX_ATTEMPTS),
            None => 3,
        };
        for (field, value) in [
            ("Retry.InitialBackoff", s.initial_backoff),
            ("Retry.MaxBackoff", s.max_backoff),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(format!("{field}: must be positive")));
            }
        }
        let multiplier = s.backoff_multiplier.unwrap_or(2.0);
        if !(multiplier.is_finite() && multiplier > 0.0) {
            return Err(Error::config(
                "Retry.BackoffMultiplier: must be a positive number",
            ));
        }
        let retryable = match &s.retryable_status_codes {
            None => bit(Code::Unavailable),
            Some(codes) if codes.is_empty() => {
                return Err(Error::config(
                    "Retry.RetryableStatusCodes: lists no status code (MaxAttempts: 1 turns retries off)",
                ));
            }
            Some(codes) => code_bits("Retry.RetryableStatusCodes", codes)?,
        };
        let throttle = match &s.throttling {
            None => None,
            Some(t) if t.max_tokens == 0.0 => None,
            Some(t) => {
                if !(t.max_tokens > 0.0 && t.max_tokens <= 1000.0) {
                    return Err(Error::config(
                        "Retry.Throttling.MaxTokens: must be at most 1000 (0 turns throttling off)",
                    ));
                }
                if !(t.token_ratio.is_finite() && t.token_ratio > 0.0) {
                    return Err(Error::config(
                        "Retry.Throttling.TokenRatio: must be more than 0",
                    ));
                }
                Some(Arc::new(Throttle::new(t.max_tokens, t.token_ratio)))
            }
        };
        if max_attempts == 1 {
            return Ok(None);
        }
        Ok(Some(Self {
            max_attempts,
            initial_backoff: s.initial_backoff.unwrap_or(Duration::from_millis(100)),
            max_backoff: s.max_backoff.unwrap_or(Duration::from_secs(1)),
            multiplier,
            retryable,
            throttle,
            hedging_delay: None,
        }))
    }

    /// The hedging policy a `Hedging` section asks for (without its throttle: see
    /// [`RetryPolicy::with_throttle`]); the error names the field.
    pub(crate) fn hedging(s: &HedgingSection) -> Result<Self, Error> {
        let max_attempts = match s.max_attempts {
            None => return Err(Error::config("Hedging.MaxAttempts: missing (2 to 5)")),
            Some(n) if n < 2 => {
                return Err(Error::config(
                    "Hedging.MaxAttempts: must be at least 2 (leave Hedging out for none)",
                ));
            }
            Some(n) => n.min(MAX_ATTEMPTS),
        };
        let retryable = match &s.non_fatal_status_codes {
            None => 0,
            Some(codes) => code_bits("Hedging.NonFatalStatusCodes", codes)?,
        };
        Ok(Self {
            max_attempts,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            multiplier: 1.0,
            retryable,
            throttle: None,
            hedging_delay: Some(s.hedging_delay.unwrap_or(Duration::ZERO)),
        })
    }

    /// No retries: only the transparent ones.
    pub(crate) fn off() -> Self {
        Self {
            max_attempts: 1,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            multiplier: 1.0,
            retryable: 0,
            throttle: None,
            hedging_delay: None,
        }
    }

    /// This policy with `throttle` as its bucket instead of its own, so that the policies of
    /// one client share theirs.
    pub(crate) fn with_throttle(mut self, throttle: Option<Arc<Throttle>>) -> Self {
        self.throttle = throttle;
        self
    }

    /// The wait between hedged attempts, for a hedging policy.
    pub(crate) fn hedging_delay(&self) -> Option<Duration> {
        self.hedging_delay
    }

    fn retries(&self, code: Code) -> bool {
        self.retryable & bit(code) != 0
    }

    /// Throttling's accounting of one attempt.
    fn account(&self, outcome: Outcome) {
        let Some(throttle) = &self.throttle else {
            return;
        };
        match outcome {
            Outcome::Committed | Outcome::Status(Code::Ok, _) => throttle.succeeded(),
            Outcome::Status(_, Pushback::Stop) => throttle.failed(),
            Outcome::Status(code, _) if self.retries(code) => throttle.failed(),
            Outcome::Status(..) | Outcome::Other => {}
        }
    }
}

/// The bits of the status codes listed in `field`.
fn code_bits(field: &str, codes: &[String]) -> Result<u32, Error> {
    let mut bits = 0;
    for name in codes {
        let code = parse_code(name).ok_or_else(|| {
            Error::config(format!(
                "{field}: {name:?} is not a gRPC status code (UNAVAILABLE, RESOURCE_EXHAUSTED, 14, …)"
            ))
        })?;
        if code == Code::Ok {
            return Err(Error::config(format!("{field}: OK is not a failure")));
        }
        bits |= bit(code);
    }
    Ok(bits)
}

fn bit(code: Code) -> u32 {
    1 << (code as i32 as u32 & 31)
}

/// A status code by its name (`UNAVAILABLE`, any case) or number (`14`).
pub(crate) fn parse_code(text: &str) -> Option<Code> {
    const NAMES: [(&str, Code); 17] = [
        ("OK", Code::Ok),
        ("CANCELLED", Code::Cancelled),
        ("UNKNOWN", Code::Unknown),
        ("INVALID_ARGUMENT", Code::InvalidArgument),
        ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
        ("NOT_FOUND", Code::NotFound),
        ("ALREADY_EXISTS", Code::AlreadyExists),
        ("PERMISSION_DENIED", Code::PermissionDenied),
        ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
        ("FAILED_PRECONDITION", Code::FailedPrecondition),
        ("ABORTED", Code::Aborted),
        ("OUT_OF_RANGE", Code::OutOfRange),
        ("UNIMPLEMENTED", Code::Unimplemented),
        ("INTERNAL", Code::Internal),
        ("UNAVAILABLE", Code::Unavailable),
        ("DATA_LOSS", Code::DataLoss),
        ("UNAUTHENTICATED", Code::Unauthenticated),
    ];
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (0..=16).contains(&n).then(|| Code::from_i32(n));
    }
    NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, code)| *code)
}

/// gRFC A6's retry throttling: a bucket of milli-tokens.
#[derive(Debug)]
pub(crate) struct Throttle {
    max: u64,
    ratio: u64,
    tokens: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(max_tokens: f64, token_ratio: f64) -> Self {
        // A6 allows three decimal places: milli-tokens hold them exactly.
        let milli = |v: f64| (v * 1000.0).round().clamp(1.0, 1e12) as u64;
        let max = milli(max_tokens);
        Self {
            max,
            ratio: milli(token_ratio),
            tokens: AtomicU64::new(max),
        }
    }

    fn failed(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    fn succeeded(&self) {
        // A full bucket, the usual case, is only read: every thread's successes would otherwise
        // write the one cache line they all share.
        if self.tokens.load(Ordering::Relaxed) >= self.max {
            return;
        }
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(self.ratio).min(self.max))
            });
    }

    fn allows_retry(&self) -> bool {
        self.tokens.load(Ordering::Acquire).saturating_mul(2) > self.max
    }
}

/// How an attempt ended, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Response headers without a status: the response is the caller's.
    Committed,
    /// A status before any response was committed: the balancer's error, or a trailers-only
    /// response.
    Status(Code, Pushback),
    /// An error that is no status: not retried.
    Other,
}

/// The server's `grpc-retry-pushback-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushback {
    /// None sent.
    Absent,
    /// Retry after exactly this long.
    Wait(Duration),
    /// Negative or malformed: do not retry.
    Stop,
}

impl Pushback {
    fn of(headers: &HeaderMap) -> Self {
        let Some(value) = headers.get(PUSHBACK) else {
            return Self::Absent;
        };
        match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(ms) => Self::Wait(Duration::from_millis(ms)),
            None => Self::Stop,
        }
    }
}

fn outcome<B>(result: &Result<Response<B>, BoxError>) -> Outcome {
    match result {
        Ok(response) => {
            let headers = response.headers();
            match headers.get(&GRPC_STATUS) {
                None => Outcome::Committed,
                Some(value) => {
                    let code = value
                        .to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<i32>().ok())
                        .map_or(Code::Unknown, Code::from_i32);
                    Outcome::Status(code, Pushback::of(headers))
                }
            }
        }
        Err(error) => match error.downcast_ref::<Status>() {
            // Sending it again would fail the same way.
            Some(status)
                if std::error::Error::source(status).is_some_and(|s| s.is::<MessageTooLarge>()) =>
            {
                Outcome::Other
            }
            Some(status) => {
                Outcome::Status(status.code(), Pushback::of(status.metadata().as_ref()))
            }
            None => Outcome::Other,
        },
    }
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    /// Send it again after this delay.
    Retry(Duration),
    /// The caller gets this attempt's result.
    Done(Done),
}

/// Why an RPC is not retried (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Succeeded,
    NotRetryable,
    PushbackStop,
    Exhausted,
    Throttled,
}

/// The attempts of one RPC: a deterministic state machine, the randomness passed in.
#[derive(Debug)]
struct Attempts<'a> {
    policy: &'a RetryPolicy,
    /// Attempts made so far.
    made: u32,
    /// Backoffs since the first attempt or the last pushback.
    backoffs: u32,
}

impl<'a> Attempts<'a> {
    fn new(policy: &'a RetryPolicy) -> Self {
        Self {
            policy,
            made: 0,
            backoffs: 0,
        }
    }

    /// Records an attempt that ended with `outcome`; `random` in `[0, 1)` draws the backoff.
    fn after(&mut self, outcome: Outcome, random: f64) -> Next {
        let policy = self.policy;
        self.made += 1;
        policy.account(outcome);
        match outcome {
            Outcome::Committed | Outcome::Status(Code::Ok, _) => Next::Done(Done::Succeeded),
            Outcome::Other => Next::Done(Done::NotRetryable),
            Outcome::Status(code, _) if !policy.retries(code) => Next::Done(Done::NotRetryable),
            Outcome::Status(_, Pushback::Stop) => Next::Done(Done::PushbackStop),
            _ if self.made >= policy.max_attempts => Next::Done(Done::Exhausted),
            _ if policy.throttle.as_ref().is_some_and(|t| !t.allows_retry()) => {
                Next::Done(Done::Throttled)
            }
            Outcome::Status(_, Pushback::Wait(delay)) => {
                self.backoffs = 0;
                Next::Retry(delay)
            }
            Outcome::Status(_, Pushback::Absent) => {
                let exp = i32::try_from(self.backoffs).unwrap_or(i32::MAX);
                self.backoffs += 1;
                let bound = (policy.initial_backoff.as_secs_f64() * policy.multiplier.powi(exp))
                    .min(policy.max_backoff.as_secs_f64());
                Next::Retry(Duration::from_secs_f64(bound * random.clamp(0.0, 1.0)))
            }
        }
    }
}

/// What each attempt of an RPC sends.
enum Sent {
    /// A request body read whole at once (a unary or server-streaming call's).
    Whole(Bytes),
    /// A body sent as it comes, recorded for the next attempt while it fits the buffer.
    Recorded(Tape),
}

impl Sent {
    /// The request of send number `send` (from 0), after `previous` attempts, within
    /// `deadline`.
    fn request(
        &self,
        parts: &http::request::Parts,
        send: u32,
        previous: u32,
        deadline: Option<Instant>,
    ) -> Request<Body> {
        let body = match self {
            Sent::Whole(bytes) => Body::new(Full::new(bytes.clone())),
            Sent::Recorded(tape) => tape.body(send),
        };
        let mut request = Request::from_parts(parts.clone(), body);
        let headers = request.headers_mut();
        if previous > 0 {
            headers.insert(PREVIOUS_ATTEMPTS, HeaderValue::from(previous));
        }
        if let (true, Some(deadline)) = (send > 0, deadline) {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up: the server's deadline must not come before the caller's.
            let ms = left.as_micros().div_ceil(1000).clamp(1, 99_999_999);
            if let Ok(v) = HeaderValue::from_str(&format!("{ms}m")) {
                headers.insert(GRPC_TIMEOUT, v);
            }
        }
        request
    }
}

/// Sends `request` with retries under `policy`, within `deadline` (each attempt carries what
/// is left of it in its `grpc-timeout`, which the balancer enforces, and no retry starts past
/// it), keeping at most `limit` bytes of its body to send again; a request read whole whose
/// message is larger than `max_message` is not sent.
pub(crate) async fn call(
    policy: &RetryPolicy,
    mut balancer: Balancer,
    request: Request<Body>,
    deadline: Option<Instant>,
    limit: usize,
    max_message: usize,
) -> Result<Response<ResponseBody>, BoxError> {
    let (parts, body) = request.into_parts();
    let sent = match buffer(body, limit).await {
        Buffered::Whole(bytes) => {
            // The balancer checks streams as they go; a whole request fails before it leaves.
            if let Some(len) = (max_message != usize::MAX)
                .then(|| oversized_message(&bytes, max_message))
                .flatten()
            {
                return Err(request_too_large(len, max_message).into());
            }
            Sent::Whole(bytes)
        }
        Buffered::Open { head, len, rest } => Sent::Recorded(Tape::new(head, len, rest, limit)),
        Buffered::Once(body) => {
            trace!("request body larger than the retry buffer: sent once");
            let result = balancer.call(Request::from_parts(parts, body)).await;
            policy.account(outcome(&result));
            return result;
        }
        Buffered::Failed(status) => return Err(status.into()),
    };
    if let Some(delay) = policy.hedging_delay() {
        return hedge::call(policy, delay, balancer, &parts, &sent, deadline).await;
    }
    let mut attempts = Attempts::new(policy);
    let mut transparent = true;
    let mut sends = 0u32;
    loop {
        let request = sent.request(&parts, sends, attempts.made, deadline);
        let attempt = sends;
        sends += 1;
        let result = balancer.call(request).await;
        // Whether the request can be sent again transparently, and by a retry.
        let (replayable, retryable) = match &sent {
            // A whole request is the caller's own bytes, held only until a response comes:
            // replayed whatever its size, retried within the buffer.
            Sent::Whole(bytes) => (true, bytes.len() <= limit),
            Sent::Recorded(tape) => {
                if outcome(&result) == Outcome::Committed {
                    tape.commit(attempt);
                }
                let replayable = tape.replayable();
                (replayable, replayable)
            }
        };
        if let Err(error) = &result {
            if transparent
                && replayable
                && error.downcast_ref::<Status>().is_some_and(is_unprocessed)
            {
                transparent = false;
                debug!(%error, "not processed by the server: sent again transparently");
                continue;
            }
        }
        let outcome = outcome(&result);
        match attempts.after(outcome, rand::random::<f64>()) {
            Next::Done(Done::Succeeded) => return result,
            Next::Done(why) => {
                if attempts.made > 1 || why != Done::NotRetryable {
                    debug!(attempts = attempts.made, ?outcome, ?why, "not retrying");
                }
                return result;
            }
            Next::Retry(_) if !retryable => {
                debug!(
                    attempts = attempts.made,
                    ?outcome,
                    limit,
                    "the request outgrew the retry buffer: not retrying"
                );
                return result;
            }
            Next::Retry(delay) => {
                if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                    debug!(
                        attempts = attempts.made,
                        ?outcome,
                        ?delay,
                        "the backoff would pass the deadline: not retrying"
                    );
                    return result;
                }
                debug!(attempts = attempts.made, ?outcome, ?delay, "retrying");
                drop(result);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A request body, read as far as it was ready.
enum Buffered {
    /// All of it.
    Whole(Bytes),
    /// Not complete yet, within the limit: the frames read, and the rest.
    Open {
        head: Vec<Bytes>,
        len: usize,
        rest: Body,
    },
    /// A stream larger than the limit (or with trailers): what was read, then the rest, sent
    /// once.
    Once(Body),
    /// Reading it failed.
    Failed(Status),
}

/// Reads the frames of `body` that are ready now, up to `limit` bytes and one frame more: a
/// body that ends there is whole, whatever its size.
async fn buffer(mut body: Body, limit: usize) -> Buffered {
    enum Stop {
        End,
        NotReady,
        Over,
        Trailers(HeaderMap),
        Failed(Status),
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let stop = std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(None) => return Poll::Ready(Stop::End),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // Past the limit, one frame more tells a whole request (a large
                        // unary one) from a stream.
                        let over = len > limit;
                        len += data.len();
                        chunks.push(data);
                        if over {
                            return Poll::Ready(Stop::Over);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(Stop::Trailers(trailers));
                        }
                    }
                },
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Stop::Failed(status)),
                Poll::Pending => return Poll::Ready(Stop::NotReady),
            }
        }
    })
    .await;
    match stop {
        Stop::End => Buffered::Whole(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(len);
                for data in chunks {
                    all.extend_from_slice(&data);
                }
                all.freeze()
            }
        }),
        Stop::NotReady if len > limit => Buffered::Once(prefixed(chunks, None, body)),
        Stop::NotReady => Buffered::Open {
            head: chunks,
            len,
            rest: body,
        },
        Stop::Over => Buffered::Once(prefixed(chunks, None, body)),
        Stop::Trailers(trailers) => Buffered::Once(prefixed(chunks, Some(trailers), body)),
        Stop::Failed(status) => Buffered::Failed(status),
    }
}

/// `head`'s frames (and `trailers`), then the rest of `body`.
fn prefixed(head: Vec<Bytes>, trailers: Option<HeaderMap>, rest: Body) -> Body {
    let mut head: VecDeque<Frame<Bytes>> = head.into_iter().map(Frame::data).collect();
    head.extend(trailers.map(Frame::trailers));
    Body::new(Prefixed { head, rest })
}

/// The frames already read from a body, then the rest of it.
struct Prefixed {
    head: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match this.head.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.head.is_empty() {
            return self.rest.size_hint();
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
