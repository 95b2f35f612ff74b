//! Hedged RPCs, as gRFC A6's `hedgingPolicy` specifies them: the first attempt is sent at once,
//! one more every hedging delay while none has answered, up to `maxAttempts` in all; each goes
//! to an instance none of the others went to, while another READY one has room.
//!
//! - The first answer that is not a non-fatal status (a response, a success, or any other
//!   status) ends the RPC: it is the caller's, and the attempts still running are dropped, which
//!   resets their HTTP/2 streams (their servers see them cancelled).
//! - An attempt failing with a non-fatal status sends the next attempt at once; a
//!   `grpc-retry-pushback-ms` of `N` sends it after `N` ms instead, and a negative or malformed
//!   one sends no more. When every attempt failed, the RPC fails with the last status.
//! - Throttling: every attempt after the first is sent only while the client's retry bucket
//!   allows retries; failures take tokens and successes give them back, as for retries.
//! - A request recorded as it is sent (a client stream) is replayed by each attempt while it
//!   fits the retry buffer; once it outgrows the buffer, no further attempt is sent and the
//!   attempt that read past it holds the RPC.
//! - The deadline bounds them all: no attempt is sent past it.

use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http::Response;
use switchboard_balancer::{Balancer, BoxError, ResponseBody, Tried, is_unprocessed};
use tokio::time::Instant;
use tonic::{Code, Status};
use tower_service::Service as _;
use tracing::debug;

use super::{Outcome, Pushback, RetryPolicy, Sent, outcome};

type Attempt =
    Pin<Box<dyn Future<Output = (u32, Result<Response<ResponseBody>, BoxError>)> + Send>>;

/// Sends the RPC of `parts` and `sent` hedged under `policy`, `delay` apart.
pub(super) async fn call(
    policy: &RetryPolicy,
    delay: Duration,
    balancer: Balancer,
    parts: &http::request::Parts,
    sent: &Sent,
    deadline: Option<Instant>,
) -> Result<Response<ResponseBody>, BoxError> {
    // Each attempt goes to an instance none of the others went to, while one has room.
    let mut parts = parts.clone();
    parts.extensions.insert(Tried::default());
    let parts = &parts;
    let mut running: FuturesUnordered<Attempt> = FuturesUnordered::new();
    let mut made = 0u32;
    // When the next attempt goes out; `None` once no more will.
    let mut next = Some(Instant::now());
    let mut last: Option<Result<Response<ResponseBody>, BoxError>> = None;
    // One attempt the server did not process is given back, as a transparent retry.
    let mut transparent = true;
    let mut max_attempts = policy.max_attempts;
    loop {
        if next.is_some_and(|at| at <= Instant::now()) {
            let throttled = made > 0 && policy.throttle.as_ref().is_some_and(|t| !t.allows_retry());
            let replayable = match sent {
                Sent::Whole(_) => true,
                Sent::Recorded(tape) => tape.replayable(),
            };
            if throttled || !replayable || deadline.is_some_and(|d| Instant::now() >= d) {
                debug!(made, throttled, replayable, "no further hedged attempt");
                next = None;
            } else {
                let request = sent.request(parts, made, made, deadline);
                let mut balancer = balancer.clone();
                let attempt = made;
                running.push(Box::pin(
                    async move { (attempt, balancer.call(request).await) },
                ));
                made += 1;
                next = (made < max_attempts).then(|| Instant::now() + delay);
                continue;
            }
        }
        let Some(at) = next else {
            // No more attempts: wait for those running.
            let Some((attempt, result)) = running.next().await else {
                return last.unwrap_or_else(|| {
                    Err(Status::unavailable("no hedged attempt could be sent").into())
                });
            };
            match settle(policy, sent, attempt, result, &mut last) {
                Settled::Done(result) => return result,
                Settled::NextNow | Settled::NextAfter(_) | Settled::Stop | Settled::Ignored => {
                    continue;
                }
            }
        };
        let finished = tokio::select! {
            finished = running.next(), if !running.is_empty() => finished,
            () = tokio::time::sleep_until(at) => None,
        };
        let Some((attempt, result)) = finished else {
            continue;
        };
        if transparent
            && matches!(&result, Err(e) if e.downcast_ref::<Status>().is_some_and(is_unprocessed))
        {
            transparent = false;
            max_attempts += 1;
            debug!(
                attempt,
                "hedged attempt not processed by the server: sent again"
            );
            next = Some(Instant::now());
            continue;
        }
        match settle(policy, sent, attempt, result, &mut last) {
            Settled::Done(result) => return result,
            Settled::NextNow => next = (made < max_attempts).then(Instant::now),
            Settled::NextAfter(wait) => next = (made < max_attempts).then(|| Instant::now() + wait),
            Settled::Stop => next = None,
            Settled::Ignored => {}
        }
    }
}

/// What one finished attempt means for the RPC.
// Made once per attempt and consumed at once, like the response it carries: no need to box.
#[allow(clippy::large_enum_variant)]
enum Settled {
    /// The RPC's result: it ends.
    Done(Result<Response<ResponseBody>, BoxError>),
    /// A non-fatal failure: the next attempt goes out at once.
    NextNow,
    /// A non-fatal failure with pushback: the next attempt goes out after this.
    NextAfter(Duration),
    /// A non-fatal failure that stops the hedging (pushback said so).
    Stop,
    /// An attempt cut off because another one holds the request: no answer.
    Ignored,
}

fn settle(
    policy: &RetryPolicy,
    sent: &Sent,
    attempt: u32,
    result: Result<Response<ResponseBody>, BoxError>,
    last: &mut Option<Result<Response<ResponseBody>, BoxError>>,
) -> Settled {
    let outcome = outcome(&result);
    if let Sent::Recorded(tape) = sent {
        if outcome == Outcome::Committed {
            tape.commit(attempt);
        }
        // An attempt cut off because another one holds the request is no answer.
        if tape.owner().is_some_and(|owner| owner != attempt) {
            return Settled::Ignored;
        }
    }
    policy.account(outcome);
    match outcome {
        Outcome::Status(code, pushback) if code != Code::Ok && policy.retries(code) => {
            debug!(
                attempt,
                ?code,
                "hedged attempt failed with a non-fatal status"
            );
            *last = Some(result);
            match pushback {
                Pushback::Absent => Settled::NextNow,
                Pushback::Wait(wait) => Settled::NextAfter(wait),
                Pushback::Stop => Settled::Stop,
            }
        }
        _ => Settled::Done(result),
    }
}
