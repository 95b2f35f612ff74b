//! A sub-channel: one HTTP/2 connection to one instance, and the task that keeps it up.
//!
//! The task runs gRPC's connectivity state machine (see [`ConnectivityState`]):
//!
//! ```text
//!            ┌──────────── connection lost (GOAWAY) ─────────────┐
//!            v                                                   │
//!  IDLE ──> CONNECTING ──── SETTINGS received ───────────────> READY
//!            │   ^                                               │
//!  connect   │   │ backoff over                                  │ error, reset,
//!  failed or v   │                                               │ keepalive timeout
//!  timed out TRANSIENT_FAILURE <─────────────────────────────────┘
//!
//!  any state ── removed from the resolver ──> (drain in-flight RPCs) ──> SHUTDOWN
//! ```
//!
//! A sub-channel whose instance moved to another address is *retired*: its READY connection
//! keeps serving until the new address is READY (the balancer then drains it), but never past
//! its retirement deadline (the drain timeout), and it never connects again: a connection lost
//! after retirement, or a retirement while not READY, ends in SHUTDOWN.
//!
//! Connection attempts follow the gRPC connection-backoff spec ([`ConnectBackoff`]). A
//! connection that was READY is replaced at once when it is lost (the backoff starts over
//! once SETTINGS arrived), except when it lived less than the initial backoff: then the next
//! attempt waits, so that a server that accepts and closes at once is not hammered. A
//! `too_many_pings` GOAWAY doubles the keepalive interval of the next connections, as grpc-go
//! does.
//!
//! [`ConnectBackoff`]: crate::ConnectBackoff

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, trace};

use crate::backoff::Backoff;
use crate::connect::{Closed, Connection, Connector};
use crate::health::Health;
use crate::metrics::SubMetrics;
use crate::picker::{Endpoint, PeakEwma};
use crate::state::ConnectivityState;

/// What every part of the balancer knows about one sub-channel: its identity, counters and
/// state. The counters are updated on the call path with relaxed atomics.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) key: String,
    pub(crate) addr: String,
    pub(crate) weight: AtomicU32,
    pub(crate) started: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) rtt: PeakEwma,
    pub(crate) metrics: SubMetrics,
    /// Ejected by outlier detection.
    pub(crate) ejected: AtomicBool,
    draining: AtomicBool,
    idle: Notify,
    pub(crate) info: Mutex<Info>,
}

/// The slowly changing part of a sub-channel, for introspection.
#[derive(Clone, Debug)]
pub(crate) struct Info {
    pub(crate) state: ConnectivityState,
    pub(crate) since: SystemTime,
    pub(crate) last_error: Option<String>,
    pub(crate) connects: u64,
    pub(crate) health: Health,
}

impl Shared {
    pub(crate) fn new(
        id: u64,
        target: &str,
        key: String,
        addr: String,
        weight: u32,
        rtt_decay: Duration,
    ) -> Self {
        Self {
            metrics: SubMetrics::new(target, &addr),
            id,
            key,
            addr,
            weight: AtomicU32::new(weight.max(1)),
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            rtt: PeakEwma::new(rtt_decay),
            ejected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            info: Mutex::new(Info {
                state: ConnectivityState::Idle,
                since: SystemTime::now(),
                last_error: None,
                connects: 0,
                health: Health::Unchecked,
            }),
        }
    }

    pub(crate) fn info(&self) -> Info {
        self.info
            .lock()
            .map(|i| i.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub(crate) fn update_info(&self, f: impl FnOnce(&mut Info)) {
        let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut info);
    }

    /// One more RPC in flight.
    #[inline]
    pub(crate) fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.metrics.picked();
    }

    /// An RPC is done: with its status code and how long it took, or `None` if it was never
    /// sent (it does not count then).
    #[inline]
    pub(crate) fn call_ended(&self, result: Option<(tonic::Code, Duration)>) {
        match result {
            Some((code, took)) => {
                if code == tonic::Code::Ok {
                    self.succeeded.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                self.metrics.ended(code, took);
            }
            None => {
                self.started.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && self.draining.load(Ordering::Acquire)
        {
            self.idle.notify_one();
        }
    }
}

/// A READY connection of a sub-channel, as pickers see it.
#[derive(Debug)]
pub(crate) struct ReadyConn<S> {
    pub(crate) sub: Arc<Shared>,
    pub(crate) sender: S,
    pub(crate) authority: Authority,
}

/// A cheap handle on a READY connection: what picker snapshots hold.
#[derive(Debug)]
pub(crate) struct Ready<S>(pub(crate) Arc<ReadyConn<S>>);

impl<S> Clone for Ready<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Send + Sync> Endpoint for Ready<S> {
    #[inline]
    fn in_flight(&self) -> u64 {
        self.0.sub.in_flight.load(Ordering::Relaxed)
    }

    #[inline]
    fn weight(&self) -> u32 {
        self.0.sub.weight.load(Ordering::Relaxed)
    }

    #[inline]
    fn rtt_estimate(&self, now: std::time::Instant) -> Option<f64> {
        self.0.sub.rtt.estimate(now)
    }
}

/// What a sub-channel reports to the balancer.
#[derive(Debug)]
pub(crate) enum Event<S> {
    /// A state change.
    State {
        id: u64,
        state: ConnectivityState,
        /// The connection, when `state` is READY.
        ready: Option<Ready<S>>,
    },
    /// A change of health of its READY connection.
    Health { id: u64, health: Health },
}

impl<S> Event<S> {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Self::State { id, .. } | Self::Health { id, .. } => *id,
        }
    }
}

/// What the balancer wants of a sub-channel's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Keep connected.
    Run,
    /// Serve on the READY connection at most until `by`, then close; never connect again.
    Retire { by: Instant },
    /// Take no new RPC, let those in flight finish (within the drain timeout, or by the
    /// deadline of a retirement that came before), close.
    Drain { by: Option<Instant> },
}

impl Order {
    /// A drain with no deadline but the drain timeout.
    pub(crate) const DRAIN: Self = Self::Drain { by: None };
}

/// Settings of a sub-channel's task.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) keepalive: Option<Duration>,
    pub(crate) drain_timeout: Duration,
    /// The service whose health to watch on every READY connection (gRFC A17), if any.
    pub(crate) health_check: Option<String>,
}

/// The task that keeps one sub-channel connected until it is told to drain.
pub(crate) struct Driver<C: Connector> {
    shared: Arc<Shared>,
    connector: Arc<C>,
    authority: Authority,
    events: mpsc::UnboundedSender<Event<C::Sender>>,
    drain: watch::Receiver<Order>,
    backoff: Backoff,
    keepalive: Option<Duration>,
    drain_timeout: Duration,
    health_check: Option<String>,
    state: ConnectivityState,
}

/// How a READY connection ended.
enum Served {
    Closed(Closed),
    Drained,
}

impl<C: Connector> Driver<C> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        connector: Arc<C>,
        authority: Authority,
        events: mpsc::UnboundedSender<Event<C::Sender>>,
        drain: watch::Receiver<Order>,
        backoff: Backoff,
        settings: Settings,
    ) -> Self {
        Self {
            shared,
            connector,
            authority,
            events,
            drain,
            backoff,
            keepalive: settings.keepalive,
            drain_timeout: settings.drain_timeout,
            health_check: settings.health_check,
            state: ConnectivityState::Idle,
        }
    }

    /// Runs the state machine until the sub-channel is drained and SHUTDOWN.
    pub(crate) async fn run(mut self) {
        loop {
            if self.retired() {
                debug!(addr = %self.shared.addr, "retired: not connecting again");
                return self.shutdown();
            }
            let started = Instant::now();
            let attempt = self.backoff.attempt(started);
            self.transition(ConnectivityState::Connecting, None, None);
            let attempts = {
                let mut info = self.shared.info.lock().unwrap_or_else(|e| e.into_inner());
                info.connects += 1;
                info.connects
            };
            if attempts > 1 {
                self.shared.metrics.reconnect();
            }
            let connecting = self.connector.connect(&self.shared.addr, self.keepalive);
            let result = tokio::select! {
                r = tokio::time::timeout_at(attempt.connect_deadline, connecting) => r,
                () = stop_connecting(&mut self.drain) => return self.shutdown(),
            };
            let error = match result {
                Ok(Ok(conn)) => {
                    let ready_at = Instant::now();
                    self.backoff.reset();
                    match self.serve(conn).await {
                        Served::Drained => return,
                        Served::Closed(_) if self.retired() => {
                            debug!(addr = %self.shared.addr, "retired connection lost: not reconnecting");
                            return self.shutdown();
                        }
                        Served::Closed(how) => {
                            let retry_at = ready_at + self.backoff.config().initial;
                            match how {
                                Closed::Graceful => {
                                    let why = "the server closed the connection (GOAWAY)";
                                    self.transition(
                                        ConnectivityState::Idle,
                                        Some(why.into()),
                                        None,
                                    );
                                }
                                Closed::TooManyPings(e) => {
                                    self.keepalive = self.keepalive.map(|k| k.saturating_mul(2));
                                    info!(
                                        addr = %self.shared.addr,
                                        keepalive = ?self.keepalive,
                                        "server said too_many_pings: doubling the keepalive interval"
                                    );
                                    self.transition(
                                        ConnectivityState::TransientFailure,
                                        Some(e),
                                        None,
                                    );
                                }
                                Closed::Error(e) => {
                                    self.transition(
                                        ConnectivityState::TransientFailure,
                                        Some(e),
                                        None,
                                    );
                                }
                            }
                            if Instant::now() < retry_at && !self.wait_until(retry_at).await {
                                return self.shutdown();
                            }
                            continue;
                        }
                    }
                }
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "connection attempt timed out after {:?}",
                    attempt.connect_deadline - started
                ),
            };
            self.transition(ConnectivityState::TransientFailure, Some(error), None);
            if !self.wait_until(attempt.retry_at).await {
                return self.shutdown();
            }
        }
    }

    /// READY: hands the connection to the balancer and waits for its end or for a drain.
    async fn serve(&mut self, conn: Connection<C::Sender>) -> Served {
        let Connection {
            sender,
            mut closed,
            abort,
        } = conn;
        let health = self.watch_health(&sender);
        tokio::pin!(health);
        let ready = Ready(Arc::new(ReadyConn {
            sub: self.shared.clone(),
            sender,
            authority: self.authority.clone(),
        }));
        self.transition(ConnectivityState::Ready, None, Some(ready));
        let how = tokio::select! {
            biased;
            () = stop_serving(&mut self.drain) => None,
            how = &mut closed => Some(how),
            never = &mut health => match never {},
        };
        match how {
            // Dropping the balancer's senders on removal also ends the dispatch: that is a
            // drain, not a lost connection.
            Some(how) if !self.drain_is_requested() && !self.retirement_is_over() => {
                Served::Closed(how)
            }
            _ => {
                self.drain_in_flight(&mut closed).await;
                abort();
                self.shutdown();
                Served::Drained
            }
        }
    }

    /// The health reports of a READY connection, for as long as it is polled: nothing when
    /// health checking is off.
    fn watch_health(
        &self,
        sender: &C::Sender,
    ) -> impl std::future::Future<Output = std::convert::Infallible> + use<C> {
        let watch = self.health_check.clone().map(|service| {
            let connector = self.connector.clone();
            let sender = sender.clone();
            let authority = self.authority.clone();
            let shared = self.shared.clone();
            let events = self.events.clone();
            let backoff = *self.backoff.config();
            (
                connector, sender, authority, service, shared, events, backoff,
            )
        });
        async move {
            let Some((connector, sender, authority, service, shared, events, backoff)) = watch
            else {
                return std::future::pending().await;
            };
            shared.update_info(|i| i.health = Health::Unknown);
            let addr = shared.addr.clone();
            crate::health::run(
                || connector.watch_health(&sender, &authority, &service),
                backoff,
                &addr,
                |health, why| {
                    let changed = {
                        let mut info = shared.info.lock().unwrap_or_else(|e| e.into_inner());
                        let changed = info.health != health;
                        info.health = health;
                        if let Some(why) = why {
                            info.last_error = Some(why);
                        }
                        changed
                    };
                    if changed {
                        debug!(addr = %shared.addr, %health, "sub-channel health");
                        shared.metrics.health(health.as_str());
                        let _ = events.send(Event::Health {
                            id: shared.id,
                            health,
                        });
                    }
                },
            )
            .await
        }
    }

    fn drain_is_requested(&self) -> bool {
        matches!(*self.drain.borrow(), Order::Drain { .. }) || self.drain.has_changed().is_err()
    }

    fn retired(&self) -> bool {
        matches!(*self.drain.borrow(), Order::Retire { .. })
    }

    fn retirement_is_over(&self) -> bool {
        matches!(*self.drain.borrow(), Order::Retire { by } if Instant::now() >= by)
    }

    /// Waits until no RPC is in flight on this sub-channel, or the drain timeout passed.
    ///
    /// The connection's dispatch future ends as soon as the balancer drops its request
    /// senders, while hyper's connection task goes on serving the streams already open: only
    /// the in-flight count tells when they are done.
    async fn drain_in_flight(&self, closed: &mut crate::connect::BoxFuture<Closed>) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::Release);
        let timeout = Instant::now() + self.drain_timeout;
        let deadline = match *self.drain.borrow() {
            // A retired connection closes by its deadline, whoever asks it to drain.
            Order::Retire { by } | Order::Drain { by: Some(by) } => by.min(timeout),
            Order::Run | Order::Drain { by: None } => timeout,
        };
        let mut dispatch_done = false;
        loop {
            let in_flight = shared.in_flight.load(Ordering::Acquire);
            if in_flight == 0 {
                debug!(addr = %shared.addr, "drained");
                return;
            }
            trace!(addr = %shared.addr, in_flight, "draining");
            tokio::select! {
                () = shared.idle.notified() => {}
                _ = &mut *closed, if !dispatch_done => dispatch_done = true,
                () = tokio::time::sleep_until(deadline) => {
                    info!(
                        addr = %shared.addr,
                        in_flight,
                        timeout = ?self.drain_timeout,
                        "drain timeout: closing the connection with RPCs in flight"
                    );
                    return;
                }
            }
        }
    }

    /// Sleeps until `at`; false if a drain or a retirement was ordered meanwhile.
    async fn wait_until(&mut self, at: Instant) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(at) => true,
            () = stop_connecting(&mut self.drain) => false,
        }
    }

    fn shutdown(&mut self) {
        self.transition(ConnectivityState::Shutdown, None, None);
    }

    fn transition(
        &mut self,
        next: ConnectivityState,
        error: Option<String>,
        ready: Option<Ready<C::Sender>>,
    ) {
        let from = self.state;
        debug_assert!(from.can_become(next), "{from} -> {next}");
        if !from.can_become(next) {
            tracing::error!(addr = %self.shared.addr, %from, %next, "invalid state transition");
        }
        self.state = next;
        match (&error, next) {
            (Some(e), _) => {
                debug!(addr = %self.shared.addr, %from, %next, error = %e, "sub-channel state")
            }
            (None, ConnectivityState::Ready | ConnectivityState::Shutdown) => {
                debug!(addr = %self.shared.addr, %from, %next, "sub-channel state")
            }
            (None, _) => trace!(addr = %self.shared.addr, %from, %next, "sub-channel state"),
        }
        let checking = self.health_check.is_some();
        if from != next {
            self.shared.metrics.transition(next.as_str());
        }
        self.shared.update_info(|i| {
            if i.state != next {
                i.since = SystemTime::now();
            }
            i.state = next;
            i.health = match (checking, next) {
                (false, _) => Health::Unchecked,
                (true, ConnectivityState::Ready) => i.health,
                (true, _) => Health::Unknown,
            };
            if let Some(e) = error {
                i.last_error = Some(e);
            }
        });
        let _ = self.events.send(Event::State {
            id: self.shared.id,
            state: next,
            ready,
        });
    }
}

/// Resolves once the task must stop connecting: a drain or a retirement is ordered (or whoever
/// could order one is gone).
async fn stop_connecting(orders: &mut watch::Receiver<Order>) {
    let _ = orders.wait_for(|o| *o != Order::Run).await;
}

/// Resolves once a READY connection must stop serving: a drain is ordered, a retirement's
/// deadline has passed, or whoever could order a drain is gone.
async fn stop_serving(orders: &mut watch::Receiver<Order>) {
    loop {
        let order = *orders.borrow_and_update();
        match order {
            Order::Drain { .. } => return,
            Order::Retire { by } => tokio::select! {
                () = tokio::time::sleep_until(by) => return,
                changed = orders.changed() => if changed.is_err() { return },
            },
            Order::Run => {
                if orders.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
