//! A client-side adaptive breaker per method: the adaptive throttle of Google's SRE book
//! ("Handling Overload", client-side throttling), with go-zero's constants and refinements, so
//! that a fleet of go-zero and switchboard clients sheds load the same way.
//!
//! Each method keeps, over the last 10 s (40 buckets of 250 ms), its requests, the ones the
//! server accepted (any status but DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS,
//! UNIMPLEMENTED and RESOURCE_EXHAUSTED), the failures, and the requests it dropped itself. A
//! new request is dropped, without being sent, with the probability
//!
//! ```text
//! max(0, (requests - 5 - K·accepts) / (requests + 1)) · (40 - working buckets) / 40
//! ```
//!
//! where `K` starts at 1.5 and falls towards 1.1 as buckets that saw only failures follow one
//! another (the longer the outage, the less the breaker lets through), and "working buckets"
//! are the buckets that saw only successes since the last failure (a recovering service is
//! throttled less). While it drops, one request per second is let through whatever the odds,
//! so that a recovered service is seen at once. A dropped request fails with UNAVAILABLE
//! ("circuit breaker is open"), with the status of the method's last failure.
//!
//! The breaker belongs to a [`crate::Balancer`] built with [`crate::Builder::breaker`]: its
//! state is in [`crate::ChannelSnapshot::breakers`] and in the `switchboard_breaker_requests_total`
//! metric. switchboard's `Channel` asks it before each unary RPC, and tells it the RPC's final
//! status (after retries), as go-zero's client does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, counter};
use serde::Serialize;
use tokio::time::Instant;
use tonic::{Code, Status};

/// Buckets in the window, and each one's span: 10 s in all.
const BUCKETS: usize = 40;
const BUCKET: Duration = Duration::from_millis(250);
/// Requests always let through, whatever the failures.
const PROTECTION: f64 = 5.0;
const K: f64 = 1.5;
const MIN_K: f64 = 1.1;
/// While the breaker drops, one request per this period goes through anyway.
const FORCE_PASS: Duration = Duration::from_secs(1);
/// The most methods a balancer keeps a breaker for: a client calling paths without end does
/// not grow without end; methods past it are not throttled.
const MAX_METHODS: usize = 4096;

/// Whether an RPC that ended with `code` counts as accepted by the server (go-zero's
/// `codes.Acceptable`).
pub fn accepted(code: Code) -> bool {
    !matches!(
        code,
        Code::DeadlineExceeded
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
            | Code::Unimplemented
            | Code::ResourceExhausted
    )
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    successes: u64,
    failures: u64,
    drops: u64,
}

/// The outcomes of one method's requests over the last 10 s: a pure state machine, its time
/// and randomness passed in.
pub(crate) struct Window {
    buckets: [Bucket; BUCKETS],
    /// The bucket being filled.
    offset: usize,
    /// When the bucket at `offset` started.
    start: Instant,
    /// When a request last went through while the odds said drop some.
    last_pass: Option<Instant>,
    /// The requests and the successes of every bucket, kept as buckets fill and empty, so
    /// that a request needs no pass over the buckets while nothing fails.
    requests: u64,
    successes: u64,
}

/// What a window holds, oldest bucket to newest.
#[derive(Default)]
struct History {
    requests: u64,
    accepts: u64,
    failures: u64,
    drops: u64,
    /// Buckets with failures and no success, since the last success.
    failing: u64,
    /// Buckets with successes and no failure, since the last failure.
    working: u64,
}

#[derive(Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Drop,
}

impl Window {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            buckets: [Bucket::default(); BUCKETS],
            offset: 0,
            start: now,
            last_pass: None,
            requests: 0,
            successes: 0,
        }
    }

    /// Whole buckets since the current one started (at most all of them).
    fn span(&self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.start);
        let n = elapsed.as_nanos() / BUCKET.as_nanos();
        usize::try_from(n).map_or(BUCKETS, |n| n.min(BUCKETS))
    }

    fn add(&mut self, now: Instant, outcome: Outcome) {
        let span = self.span(now);
        if span > 0 {
            for i in 1..=span {
                let gone = std::mem::take(&mut self.buckets[(self.offset + i) % BUCKETS]);
                self.requests -= gone.requests;
                self.successes -= gone.successes;
            }
            self.offset = (self.offset + span) % BUCKETS;
            // The new bucket starts on the 250 ms grid of the first.
            let elapsed = now.saturating_duration_since(self.start);
            let into = Duration::from_nanos(
                u64::try_from(elapsed.as_nanos() % BUCKET.as_nanos()).unwrap_or(0),
            );
            self.start = now.checked_sub(into).unwrap_or(now);
        }
        let bucket = &mut self.buckets[self.offset];
        bucket.requests += 1;
        self.requests += 1;
        match outcome {
            Outcome::Success => {
                bucket.successes += 1;
                self.successes += 1;
            }
            Outcome::Failure => bucket.failures += 1,
            Outcome::Drop => bucket.drops += 1,
        }
    }

    fn history(&self, now: Instant) -> History {
        let span = self.span(now);
        let mut h = History::default();
        // The buckets still in the window, oldest first.
        for i in 0..BUCKETS.saturating_sub(span) {
            let b = &self.buckets[(self.offset + span + 1 + i) % BUCKETS];
            h.requests += b.requests;
            h.accepts += b.successes;
            h.failures += b.failures;
            h.drops += b.drops;
            if b.failures > 0 {
                h.working = 0;
            } else if b.successes > 0 {
                h.working += 1;
            }
            if b.successes > 0 {
                h.failing = 0;
            } else if b.failures > 0 {
                h.failing += 1;
            }
        }
        h
    }

    /// The probability that a request is dropped now (before the once-a-second pass).
    fn drop_ratio(h: &History) -> f64 {
        let k = (K - (K - MIN_K) * h.failing as f64 / BUCKETS as f64).max(MIN_K);
        let ratio =
            (h.requests as f64 - PROTECTION - k * h.accepts as f64) / (h.requests as f64 + 1.0);
        if ratio <= 0.0 {
            return 0.0;
        }
        ratio * (BUCKETS as f64 - h.working as f64) / BUCKETS as f64
    }

    /// Whether a request goes through, `random` drawn uniformly in `[0, 1)`. A dropped request
    /// is counted here; one let through is counted when it ends ([`Window::ended`]).
    pub(crate) fn admit(&mut self, now: Instant, random: impl FnOnce() -> f64) -> bool {
        // The running sums, less the buckets that have left the window since the last
        // update: if even the lowest K drops nothing, no pass over the buckets is needed.
        let (mut requests, mut successes) = (self.requests, self.successes);
        for i in 1..=self.span(now) {
            let gone = &self.buckets[(self.offset + i) % BUCKETS];
            requests -= gone.requests;
            successes -= gone.successes;
        }
        if requests as f64 - PROTECTION - MIN_K * successes as f64 <= 0.0 {
            return true;
        }
        let h = self.history(now);
        let ratio = Self::drop_ratio(&h);
        if ratio <= 0.0 {
            return true;
        }
        if self
            .last_pass
            .is_some_and(|last| now.saturating_duration_since(last) > FORCE_PASS)
        {
            self.last_pass = Some(now);
            return true;
        }
        if random() < ratio {
            self.add(now, Outcome::Drop);
            return false;
        }
        self.last_pass = Some(now);
        true
    }

    /// Counts a request let through, ended with `code`.
    pub(crate) fn ended(&mut self, now: Instant, code: Code) {
        let outcome = if accepted(code) {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.add(now, outcome);
    }
}

/// One method's breaker.
struct Method {
    window: Mutex<Window>,
    /// The status of its last failure, for the message of the requests it drops.
    last_failure: Mutex<Option<(Code, String)>>,
    /// `switchboard_breaker_requests_total` by result: success, failure, drop.
    counters: [Counter; 3],
}

impl Method {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The breakers of one balancer's methods.
pub struct Breakers {
    target: Arc<str>,
    metrics: bool,
    methods: RwLock<HashMap<Box<str>, Arc<Method>>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Breakers {
    /// The breakers of `target`'s methods, their counts recorded as metrics if `metrics`.
    pub fn new(target: &str, metrics: bool) -> Self {
        Self {
            target: target.into(),
            metrics,
            methods: RwLock::default(),
        }
    }

    fn method(&self, path: &str) -> Option<Arc<Method>> {
        let read = self.methods.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = read.get(path) {
            return Some(m.clone());
        }
        let full = read.len() >= MAX_METHODS;
        drop(read);
        if full {
            return None;
        }
        let mut write = self.methods.write().unwrap_or_else(PoisonError::into_inner);
        let method = write.entry(path.into()).or_insert_with(|| {
            let counters = ["success", "failure", "drop"].map(|result| {
                if self.metrics {
                    let labels = [
                        ("target", self.target.to_string()),
                        ("method", path.to_owned()),
                        ("result", result.to_owned()),
                    ];
                    counter!("switchboard_breaker_requests_total", &labels)
                } else {
                    Counter::noop()
                }
            });
            Arc::new(Method {
                window: Mutex::new(Window::new(Instant::now())),
                last_failure: Mutex::new(None),
                counters,
            })
        });
        Some(method.clone())
    }

    /// Asks the breaker of the method at `path` whether an RPC goes: a ticket to end it with
    /// its final status, or UNAVAILABLE if the breaker drops it.
    pub fn admit(&self, path: &str) -> Result<Admitted, Status> {
        let Some(method) = self.method(path) else {
            return Ok(Admitted(None));
        };
        let (admitted, h) = {
            let mut window = method.lock();
            let admitted = window.admit(Instant::now(), rand::random::<f64>);
            (
                admitted,
                (!admitted).then(|| window.history(Instant::now())),
            )
        };
        if admitted {
            return Ok(Admitted(Some(method)));
        }
        method.counters[2].increment(1);
        let (failures, ended) = h.map_or((0, 0), |h| (h.failures, h.failures + h.accepts));
        let last = method
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let last = match last {
            Some((code, message)) => format!(", the last with {code:?}: {message}"),
            None => String::new(),
        };
        Err(Status::unavailable(format!(
            "circuit breaker is open for {path}: {failures} of its last {ended} calls to {} \
             failed{last}",
            self.target
        )))
    }

    /// Each method's window, in path order.
    pub(crate) fn snapshot(&self) -> Vec<BreakerSnapshot> {
        let now = Instant::now();
        let methods = self.methods.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<BreakerSnapshot> = methods
            .iter()
            .map(|(path, method)| {
                let h = method.lock().history(now);
                BreakerSnapshot {
                    method: path.to_string(),
                    requests: h.requests,
                    accepts: h.accepts,
                    failures: h.failures,
                    drops: h.drops,
                    drop_permille: (Window::drop_ratio(&h) * 1000.0).round() as u32,
                }
            })
            .collect();
        all.sort_by(|a, b| a.method.cmp(&b.method));
        all
    }
}

/// An RPC the breaker let through: end it with its final status ([`Admitted::end`]). Dropped
/// unended, it counts as cancelled by the caller (which the breaker counts as accepted).
#[must_use = "an admitted RPC is ended with its status"]
pub struct Admitted(Option<Arc<Method>>);

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").finish_non_exhaustive()
    }
}

impl Admitted {
    /// Counts the RPC's final status.
    pub fn end(mut self, code: Code) {
        self.finish(code);
    }

    /// Counts the RPC's final status, and keeps a failure's message for the breaker's own.
    pub fn end_with(mut self, status: &Status) {
        if !accepted(status.code()) {
            if let Some(method) = &self.0 {
                let mut last = method
                    .last_failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *last = Some((status.code(), status.message().to_owned()));
            }
        }
        self.finish(status.code());
    }

    fn finish(&mut self, code: Code) {
        if let Some(method) = self.0.take() {
            method.lock().ended(Instant::now(), code);
            method.counters[usize::from(!accepted(code))].increment(1);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// One method's breaker over the last 10 s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    /// The method's path, `/package.Service/Method`.
    pub method: String,
    /// Requests asked for, dropped ones included.
    pub requests: u64,
    /// Requests that ended with a status the server accepts.
    pub accepts: u64,
    /// Requests that ended with a failing status.
    pub failures: u64,
    /// Requests the breaker dropped.
    pub drops: u64,
    /// The chance now, in thousandths, that a request is dropped.
    pub drop_permille: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(window: &mut Window, now: Instant, ok: u64, failed: u64) {
        for _ in 0..ok {
            window.ended(now, Code::Ok);
        }
        for _ in 0..failed {
            window.ended(now, Code::Unavailable);
        }
    }

    proptest::proptest! {
        /// The running sums a request reads agree with a pass over the buckets, and admit
        /// decides as the full formula does, whatever the outcomes and their times.
        #[test]
        fn running_sums_agree_with_the_buckets(
            steps in proptest::collection::vec((0u64..3_000, 0u8..3), 1..300),
        ) {
            let t0 = Instant::now();
            let mut w = Window::new(t0);
            let mut now = t0;
            for (gap_ms, what) in steps {
                now += Duration::from_millis(gap_ms);
                let h = w.history(now);
                let expected = Window::drop_ratio(&h) <= 0.0;
                let before = w.last_pass;
                // A draw of 1.0 never drops: admit passes, through the sums or the formula.
                proptest::prop_assert!(w.admit(now, || 1.0));
                if expected {
                    proptest::prop_assert_eq!(w.last_pass, before);
                }
                let mut requests = w.requests;
                let mut successes = w.successes;
                for i in 1..=w.span(now) {
                    requests -= w.buckets[(w.offset + i) % BUCKETS].requests;
                    successes -= w.buckets[(w.offset + i) % BUCKETS].successes;
                }
                proptest::prop_assert_eq!((requests, successes), (h.requests, h.accepts));
                match what {
                    0 => w.ended(now, Code::Ok),
                    1 => w.ended(now, Code::Unavailable),
                    _ => w.add(now, Outcome::Drop),
                }
            }
        }
    }

    #[test]
    fn a_healthy_method_never_drops() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        run(&mut w, t0, 1000, 0);
        assert!(w.admit(t0, || 0.0));
        assert_eq!(Window::drop_ratio(&w.history(t0)), 0.0);
    }

    #[test]
    fn failures_past_the_protection_drop_and_the_odds_follow_the_formula() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        // Five requests are always let through, failing or not.
        run(&mut w, t0, 0, 5);
        assert!(w.admit(t0, || 0.0));
        // 100 failures in one bucket: (100 - 5 - 0) / 101, no working bucket.
        let mut w = Window::new(t0);
        run(&mut w, t0, 0, 100);
        let ratio = Window::drop_ratio(&w.history(t0));
        assert!((ratio - 95.0 / 101.0).abs() < 1e-9, "{ratio}");
        assert!(!w.admit(t0, || ratio - 0.01));
        assert!(w.admit(t0, || ratio + 0.01));
        // K = 1.5 accepts offset 1.5 failures: 10 ok, 20 failed → (30 - 5 - 15) / 31.
        let mut w = Window::new(t0);
        run(&mut w, t0, 10, 20);
        let ratio = Window::drop_ratio(&w.history(t0));
        assert!((ratio - 10.0 / 31.0).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn dropped_requests_are_counted_and_keep_the_breaker_open() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        run(&mut w, t0, 0, 20);
        for _ in 0..10 {
            assert!(!w.admit(t0, || 0.0));
        }
        let h = w.history(t0);
        assert_eq!((h.requests, h.failures, h.drops), (30, 20, 10));
    }

    #[test]
    fn one_request_a_second_goes_through_while_it_drops() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        run(&mut w, t0, 0, 50);
        // Let through once (the odds said so): the clock of forced passes starts.
        assert!(w.admit(t0, || 0.999));
        assert!(!w.admit(t0 + Duration::from_millis(500), || 0.0));
        assert!(w.admit(t0 + Duration::from_millis(1100), || 0.0));
        assert!(!w.admit(t0 + Duration::from_millis(1200), || 0.0));
    }

    #[test]
    fn the_window_forgets_after_ten_seconds_and_slides_by_bucket() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        run(&mut w, t0, 0, 40);
        let later = t0 + Duration::from_millis(5_100);
        run(&mut w, later, 0, 10);
        assert_eq!(w.history(later).failures, 50);
        // The first bucket leaves the window 10 s after it started; the second stays.
        let at = t0 + Duration::from_millis(10_000);
        assert_eq!(w.history(at).failures, 10);
        let at = t0 + Duration::from_millis(14_999);
        assert_eq!(w.history(at).failures, 10);
        let at = t0 + Duration::from_millis(15_000);
        assert_eq!(w.history(at).failures, 0);
        assert!(w.admit(at, || 0.0));
    }

    #[test]
    fn a_long_outage_lowers_k_and_recovery_buckets_lower_the_odds() {
        let t0 = Instant::now();
        // 40 buckets of failures, one success each in the first 10 → K falls with 30
        // failing buckets in a row: 1.5 - 0.4 · 30 / 40 = 1.2.
        let mut w = Window::new(t0);
        for i in 0..40u32 {
            let at = t0 + BUCKET * i;
            run(&mut w, at, u64::from(i < 10), 4);
        }
        let now = t0 + BUCKET * 39 + Duration::from_millis(1);
        let h = w.history(now);
        assert_eq!((h.failing, h.working), (30, 0));
        let expected = (170.0 - 5.0 - 1.2 * 10.0) / 171.0;
        assert!((Window::drop_ratio(&h) - expected).abs() < 1e-9);
        // Then 8 buckets of successes only: 8 working buckets scale the odds by 32 / 40.
        let mut w = Window::new(t0);
        for i in 0..40u32 {
            let at = t0 + BUCKET * i;
            if i < 32 {
                run(&mut w, at, 0, 4);
            } else {
                run(&mut w, at, 1, 0);
            }
        }
        let h = w.history(t0 + BUCKET * 39);
        assert_eq!((h.failing, h.working), (0, 8));
        let expected = (136.0 - 5.0 - 1.5 * 8.0) / 137.0 * 32.0 / 40.0;
        assert!((Window::drop_ratio(&h) - expected).abs() < 1e-9);
    }

    #[test]
    fn cancelled_and_application_errors_count_as_accepted() {
        for code in [
            Code::Ok,
            Code::Cancelled,
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unknown,
        ] {
            assert!(accepted(code), "{code:?}");
        }
        for code in [
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unimplemented,
            Code::ResourceExhausted,
        ] {
            assert!(!accepted(code), "{code:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_admit_per_method_and_show_in_the_snapshot() {
        let breakers = Breakers::new("user.rpc", false);
        // Fifty calls asked for, all failing: after five, most are dropped.
        for _ in 0..50 {
            if let Ok(admitted) = breakers.admit("/user.User/Get") {
                admitted.end_with(&Status::unavailable("connection refused"));
            }
        }
        breakers
            .admit("/user.User/List")
            .expect("let through")
            .end(Code::Ok);
        let dropped = (0..100)
            .filter(|_| match breakers.admit("/user.User/Get") {
                Ok(admitted) => {
                    admitted.end_with(&Status::unavailable("connection refused"));
                    false
                }
                Err(_) => true,
            })
            .count();
        assert!(dropped > 50, "{dropped} of 100 dropped");
        // Dropped, most likely; one let through (about 1 in 20) fails like the others.
        let admitted = breakers.admit("/user.User/Get");
        if let Err(status) = &admitted {
            assert_eq!(status.code(), Code::Unavailable);
            let message = status.message();
            assert!(
                message.starts_with("circuit breaker is open for /user.User/Get: ")
                    && message.ends_with(
                        " calls to user.rpc failed, the last with Unavailable: connection refused"
                    ),
                "{message}"
            );
        }
        if let Ok(admitted) = admitted {
            admitted.end_with(&Status::unavailable("connection refused"));
        }
        // The other method is not throttled.
        assert!(breakers.admit("/user.User/List").is_ok());
        let snapshot = breakers.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert_eq!(snapshot[0].method, "/user.User/Get");
        let get = &snapshot[0];
        assert!(get.failures >= 5 && get.accepts == 0, "{get:?}");
        assert_eq!(get.failures + get.drops, get.requests, "{get:?}");
        assert!(get.drops as usize >= dropped, "{get:?}");
        assert!(snapshot[0].drop_permille > 800, "{:?}", snapshot[0]);
        assert_eq!(snapshot[1].drop_permille, 0);
        // Ten seconds later, it is all forgotten.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(breakers.snapshot()[0].requests, 0);
        // A call dropped by its caller counts as accepted (go-zero's CANCELLED).
        drop(breakers.admit("/user.User/Get"));
        let get = &breakers.snapshot()[0];
        assert_eq!((get.requests, get.accepts, get.drop_permille), (1, 1, 0));
    }
}
