//! The sub-channel state machine on paused time, with a scripted connector.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::oneshot;

use super::*;
use crate::backoff::ConnectBackoff;
use crate::connect::BoxFuture;

use ConnectivityState::{Connecting, Idle, Shutdown, TransientFailure};

const READY: ConnectivityState = ConnectivityState::Ready;

/// What one connection attempt does.
enum Outcome {
    /// Fails after this long.
    Fail(Duration),
    /// Never completes.
    Hang,
    /// Connects; the connection ends when the sender fires (or never, if it is dropped).
    Connect(oneshot::Receiver<Closed>),
}

#[derive(Default)]
struct Script {
    outcomes: Mutex<VecDeque<Outcome>>,
    attempts: Mutex<Vec<(Instant, Option<Duration>)>>,
    aborts: Arc<AtomicUsize>,
}

impl Script {
    fn push(&self, outcome: Outcome) {
        self.outcomes.lock().expect("lock").push_back(outcome);
    }

    fn attempts(&self) -> Vec<(Instant, Option<Duration>)> {
        self.attempts.lock().expect("lock").clone()
    }
}

impl Connector for Script {
    type Sender = ();

    fn connect(
        &self,
        _: &str,
        _: Option<bool>,
        keepalive: Option<Duration>,
    ) -> BoxFuture<Result<Connection<()>, String>> {
        self.attempts
            .lock()
            .expect("lock")
            .push((Instant::now(), keepalive));
        let outcome = self.outcomes.lock().expect("lock").pop_front();
        let aborts = self.aborts.clone();
        Box::pin(async move {
            match outcome {
                Some(Outcome::Fail(after)) => {
                    tokio::time::sleep(after).await;
                    Err("connection refused".into())
                }
                Some(Outcome::Connect(closed)) => Ok(Connection {
                    sender: (),
                    max_streams: Arc::default(),
                    scheme: http::uri::Scheme::HTTP,
                    closed: Box::pin(async move {
                        match closed.await {
                            Ok(how) => how,
                            Err(_) => std::future::pending().await,
                        }
                    }),
                    abort: Box::new(move || {
                        aborts.fetch_add(1, Ordering::SeqCst);
                    }),
                }),
                Some(Outcome::Hang) | None => std::future::pending().await,
            }
        })
    }
}

struct Harness {
    script: Arc<Script>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event<()>>,
    drain: watch::Sender<Order>,
    start: Instant,
    seed: u64,
    /// The last error reported.
    last_error: Option<String>,
    /// CONNECTING reports so far: connection attempts.
    connects: u64,
}

fn start(script: Script, keepalive: Option<Duration>, drain_timeout: Duration) -> Harness {
    let script = Arc::new(script);
    let shared = Arc::new(Shared::new(
        1,
        Arc::new(crate::metrics::SubMetrics::new("test", true)),
        "svc/1".into(),
        "127.0.0.1:1".into(),
        1,
        Duration::from_secs(10),
        Arc::default(),
    ));
    let (events_tx, events) = mpsc::unbounded_channel();
    let (drain, drain_rx) = watch::channel(Order::Run);
    let seed = 42;
    let driver = Driver::new(
        shared.clone(),
        script.clone(),
        authority("127.0.0.1:1"),
        events_tx,
        drain_rx,
        Backoff::new(ConnectBackoff::default(), SmallRng::seed_from_u64(seed)),
        Settings {
            keepalive,
            drain_timeout,
            health_check: None,
        },
    );
    tokio::spawn(driver.run());
    Harness {
        script,
        shared,
        events,
        drain,
        start: Instant::now(),
        seed,
        last_error: None,
        connects: 0,
    }
}

fn authority(addr: &str) -> Authority {
    addr.parse().expect("authority")
}

impl Harness {
    /// The next state reported, and when (relative to the start).
    async fn next(&mut self) -> (ConnectivityState, Duration) {
        let event = self
            .events
            .recv()
            .await
            .expect("the driver reports until SHUTDOWN");
        let Report::State { state, error, .. } = event.report else {
            panic!("no health checking here: {event:?}");
        };
        if state == Connecting {
            self.connects += 1;
        }
        if error.is_some() {
            self.last_error = error;
        }
        (state, Instant::now() - self.start)
    }

    /// The backoff delays (`retry_at - start of attempt`) that the spec gives for `n` attempts.
    fn expected_delays(&self, n: usize) -> Vec<Duration> {
        let mut backoff = Backoff::new(
            ConnectBackoff::default(),
            SmallRng::seed_from_u64(self.seed),
        );
        let now = Instant::now();
        (0..n)
            .map(|_| backoff.attempt(now).retry_at - now)
            .collect()
    }
}

/// A sub-channel READY on a connection that never ends by itself, with `drain_timeout`.
async fn ready(drain_timeout: Duration) -> Harness {
    let script = Script::default();
    // Dropped: the connection then never closes.
    let (_, closed) = oneshot::channel();
    script.push(Outcome::Connect(closed));
    let mut h = start(script, None, drain_timeout);
    assert_eq!(h.next().await.0, Connecting);
    assert_eq!(h.next().await.0, READY);
    h
}

fn assert_allowed(states: &[ConnectivityState]) {
    let mut from = Idle;
    for &to in states {
        assert!(from.can_become(to), "{from} -> {to} in {states:?}");
        from = to;
    }
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_follow_the_backoff_and_the_time_they_took() {
    let script = Script::default();
    for _ in 0..6 {
        script.push(Outcome::Fail(Duration::from_millis(300)));
    }
    let mut h = start(script, None, Duration::from_secs(1));
    let mut states = Vec::new();
    for _ in 0..12 {
        states.push(h.next().await.0);
    }
    assert_allowed(&states);
    assert_eq!(
        states,
        [Connecting, TransientFailure].repeat(6),
        "every attempt is CONNECTING then TRANSIENT_FAILURE"
    );
    let attempts: Vec<Instant> = h.script.attempts().iter().map(|(t, _)| *t).collect();
    let delays = h.expected_delays(6);
    // Each attempt starts when the previous one's backoff is over (the 300 ms it took count
    // against it); the timer's resolution is 1 ms.
    for (i, pair) in attempts.windows(2).enumerate() {
        let due = pair[0] + delays[i];
        assert!(
            pair[1] >= due && pair[1] - due < Duration::from_millis(1),
            "attempt {} at {:?}, due at {:?}",
            i + 1,
            pair[1] - h.start,
            due - h.start
        );
    }
    assert_eq!(attempts[1] - h.start, Duration::from_secs(1));
    assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    assert_eq!(h.connects, 6);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_hangs_times_out_after_the_min_connect_timeout() {
    let script = Script::default();
    script.push(Outcome::Hang);
    script.push(Outcome::Hang);
    let mut h = start(script, None, Duration::from_secs(1));
    assert_eq!(h.next().await, (Connecting, Duration::ZERO));
    assert_eq!(h.next().await, (TransientFailure, Duration::from_secs(20)));
    // The backoff (1 s) is long over: the next attempt starts at once.
    assert_eq!(h.next().await, (Connecting, Duration::from_secs(20)));
    assert_eq!(h.next().await, (TransientFailure, Duration::from_secs(40)));
    let error = h.last_error.clone().unwrap_or_default();
    assert!(error.contains("timed out after 20s"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_is_replaced_at_once_and_settings_reset_the_backoff() {
    let script = Script::default();
    let (close1, closed1) = oneshot::channel();
    let (close2, closed2) = oneshot::channel();
    script.push(Outcome::Fail(Duration::ZERO));
    script.push(Outcome::Fail(Duration::ZERO));
    script.push(Outcome::Connect(closed1));
    script.push(Outcome::Connect(closed2));
    let mut h = start(script, None, Duration::from_secs(1));
    let mut states = Vec::new();
    for _ in 0..6 {
        states.push(h.next().await);
    }
    // Two failures (backoff 1 s, then 1.6 s ± 20 %), then READY.
    assert_eq!(states[5].0, READY);
    let ready_at = states[5].1;
    tokio::time::sleep(Duration::from_secs(5)).await;
    close1.send(Closed::Error("connection reset".into())).ok();
    assert_eq!(
        h.next().await,
        (TransientFailure, ready_at + Duration::from_secs(5))
    );
    // The backoff started over at READY: the replacement is a first attempt, at once.
    assert_eq!(
        h.next().await,
        (Connecting, ready_at + Duration::from_secs(5))
    );
    assert_eq!(h.next().await, (READY, ready_at + Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    close2.send(Closed::Graceful).ok();
    // A graceful close (GOAWAY) goes through IDLE.
    assert_eq!(h.next().await.0, Idle);
    assert_eq!(h.next().await.0, Connecting);
    let seq: Vec<_> = states.iter().map(|s| s.0).collect();
    assert_allowed(&seq);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_dies_at_once_is_not_replaced_in_a_tight_loop() {
    let script = Script::default();
    let (close, closed) = oneshot::channel();
    script.push(Outcome::Connect(closed));
    let mut h = start(script, None, Duration::from_secs(1));
    assert_eq!(h.next().await, (Connecting, Duration::ZERO));
    assert_eq!(h.next().await, (READY, Duration::ZERO));
    tokio::time::sleep(Duration::from_millis(100)).await;
    close.send(Closed::Graceful).ok();
    assert_eq!(h.next().await, (Idle, Duration::from_millis(100)));
    // It lived 100 ms: the next attempt waits for the initial backoff (1 s after READY).
    assert_eq!(h.next().await, (Connecting, Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn too_many_pings_doubles_the_keepalive_interval() {
    let script = Script::default();
    let (close, closed) = oneshot::channel();
    let (_keep, closed2) = oneshot::channel();
    script.push(Outcome::Connect(closed));
    script.push(Outcome::Connect(closed2));
    let mut h = start(
        script,
        Some(Duration::from_secs(10)),
        Duration::from_secs(1),
    );
    assert_eq!(h.next().await.0, Connecting);
    assert_eq!(h.next().await.0, READY);
    tokio::time::sleep(Duration::from_secs(30)).await;
    close
        .send(Closed::TooManyPings("GOAWAY ENHANCE_YOUR_CALM".into()))
        .ok();
    assert_eq!(h.next().await.0, TransientFailure);
    assert_eq!(h.next().await.0, Connecting);
    assert_eq!(h.next().await.0, READY);
    let keepalives: Vec<_> = h.script.attempts().iter().map(|(_, k)| *k).collect();
    assert_eq!(
        keepalives,
        [Some(Duration::from_secs(10)), Some(Duration::from_secs(20))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_calls_in_flight_then_closes() {
    let mut h = ready(Duration::from_secs(30)).await;
    h.shared.call_started();
    h.shared.call_started();
    h.drain.send(Order::Drain { by: None }).ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.shared.call_ended(Some((tonic::Code::Ok, Duration::ZERO)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.script.aborts.load(Ordering::SeqCst),
        0,
        "a call is still in flight"
    );
    h.shared
        .call_ended(Some((tonic::Code::Internal, Duration::ZERO)));
    assert_eq!(h.next().await, (Shutdown, Duration::from_secs(5)));
    assert_eq!(h.script.aborts.load(Ordering::SeqCst), 1);
    assert_eq!(h.shared.succeeded.load(Ordering::Relaxed), 1);
    assert_eq!(h.shared.failed.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_drain_gives_up_after_the_drain_timeout() {
    let mut h = ready(Duration::from_secs(30)).await;
    h.shared.call_started();
    h.drain.send(Order::Drain { by: None }).ok();
    assert_eq!(h.next().await, (Shutdown, Duration::from_secs(30)));
    assert_eq!(h.script.aborts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_drain_while_in_backoff_shuts_down_at_once() {
    let script = Script::default();
    script.push(Outcome::Fail(Duration::ZERO));
    let mut h = start(script, None, Duration::from_secs(30));
    assert_eq!(h.next().await.0, Connecting);
    assert_eq!(h.next().await.0, TransientFailure);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tx, _) = watch::channel(Order::Run);
    drop(std::mem::replace(&mut h.drain, tx));
    assert_eq!(h.next().await, (Shutdown, Duration::from_millis(500)));
    assert!(h.events.recv().await.is_none(), "nothing after SHUTDOWN");
}

#[tokio::test(start_paused = true)]
async fn a_retired_connection_that_is_lost_never_connects_again() {
    let script = Script::default();
    let (close, closed) = oneshot::channel();
    script.push(Outcome::Connect(closed));
    // Were it to connect again, this connection would be there for it.
    let (_keep, closed2) = oneshot::channel();
    script.push(Outcome::Connect(closed2));
    let mut h = start(script, None, Duration::from_secs(30));
    assert_eq!(h.next().await.0, Connecting);
    assert_eq!(h.next().await.0, READY);
    let by = Instant::now() + Duration::from_secs(30);
    h.drain.send(Order::Retire { by: by.into_std() }).ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    close.send(Closed::Error("connection reset".into())).ok();
    assert_eq!(h.next().await, (Shutdown, Duration::from_secs(2)));
    assert!(h.events.recv().await.is_none(), "nothing after SHUTDOWN");
    assert_eq!(
        h.script.attempts().len(),
        1,
        "connected again after retirement"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retired_connection_closes_by_its_deadline_with_calls_in_flight() {
    let mut h = ready(Duration::from_secs(30)).await;
    h.shared.call_started();
    let by = Instant::now() + Duration::from_secs(5);
    h.drain.send(Order::Retire { by: by.into_std() }).ok();
    // It serves until its deadline (5 s), not for the drain timeout (30 s) after it.
    assert_eq!(h.next().await, (Shutdown, Duration::from_secs(5)));
    assert_eq!(h.script.aborts.load(Ordering::SeqCst), 1);
    assert_eq!(h.script.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_drain_of_a_retired_connection_keeps_its_deadline() {
    let mut h = ready(Duration::from_secs(30)).await;
    h.shared.call_started();
    h.drain
        .send(Order::Retire {
            by: (Instant::now() + Duration::from_secs(5)).into_std(),
        })
        .ok();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The new address is READY: the balancer drains the old connection; the call in flight
    // gets what is left of the retirement, not a whole drain timeout.
    h.drain
        .send(Order::Drain {
            by: Some((h.start + Duration::from_secs(5)).into_std()),
        })
        .ok();
    assert_eq!(h.next().await, (Shutdown, Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn a_retirement_during_backoff_shuts_down_at_once() {
    let script = Script::default();
    script.push(Outcome::Fail(Duration::ZERO));
    let mut h = start(script, None, Duration::from_secs(30));
    assert_eq!(h.next().await.0, Connecting);
    assert_eq!(h.next().await.0, TransientFailure);
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.drain
        .send(Order::Retire {
            by: (Instant::now() + Duration::from_secs(30)).into_std(),
        })
        .ok();
    assert_eq!(h.next().await, (Shutdown, Duration::from_millis(300)));
    assert_eq!(h.script.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_order_closes_a_ready_connection_after_its_calls_and_run_connects_again() {
    let script = Script::default();
    let (_, closed) = oneshot::channel();
    script.push(Outcome::Connect(closed));
    let (_, closed) = oneshot::channel();
    script.push(Outcome::Connect(closed));
    let mut h = start(script, None, Duration::from_secs(30));
    assert_eq!(h.next().await.0, Connecting);
    assert_eq!(h.next().await.0, READY);
    h.shared.call_started();
    h.drain.send(Order::Idle).ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.script.aborts.load(Ordering::SeqCst),
        0,
        "a call in flight"
    );
    h.shared.call_ended(Some((tonic::Code::Ok, Duration::ZERO)));
    assert_eq!(h.next().await, (Idle, Duration::from_secs(2)));
    assert_eq!(h.script.aborts.load(Ordering::SeqCst), 1);
    // Idle for as long as it is told: no attempt.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.script.attempts().len(), 1);
    h.drain.send(Order::Run).ok();
    assert_eq!(h.next().await, (Connecting, Duration::from_secs(62)));
    assert_eq!(h.next().await, (READY, Duration::from_secs(62)));
}

#[tokio::test(start_paused = true)]
async fn an_idle_order_stops_an_attempt_and_a_failed_one_stays_failed() {
    let script = Script::default();
    script.push(Outcome::Hang);
    script.push(Outcome::Fail(Duration::ZERO));
    script.push(Outcome::Hang);
    let mut h = start(script, None, Duration::from_secs(30));
    assert_eq!(h.next().await.0, Connecting);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.drain.send(Order::Idle).ok();
    assert_eq!(h.next().await, (Idle, Duration::from_secs(1)));
    h.drain.send(Order::Run).ok();
    assert_eq!(h.next().await, (Connecting, Duration::from_secs(1)));
    assert_eq!(h.next().await, (TransientFailure, Duration::from_secs(1)));
    // Idled while in backoff: it stays TRANSIENT_FAILURE (there is no TRANSIENT_FAILURE →
    // IDLE) and makes no attempt until told to run.
    h.drain.send(Order::Idle).ok();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.script.attempts().len(), 2);
    assert!(h.events.try_recv().is_err(), "nothing reported while idle");
    h.drain.send(Order::Run).ok();
    assert_eq!(h.next().await, (Connecting, Duration::from_secs(61)));
    h.drain.send(Order::Drain { by: None }).ok();
    assert_eq!(h.next().await, (Shutdown, Duration::from_secs(61)));
}
