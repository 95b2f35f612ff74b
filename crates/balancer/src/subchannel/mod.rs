//! A sub-channel's I/O: one HTTP/2 connection to one instance, and the task that keeps it as
//! the control core orders.
//!
//! The task runs gRPC's connectivity state machine (see [`ConnectivityState`]) and reports each
//! state to the core, which owns every fact about the sub-channel:
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
//!  any state ── Drain ──> (drain in-flight RPCs) ──> SHUTDOWN
//! ```
//!
//! Its orders ([`Order`]): `Run` keeps it connected. `Idle` (pick_first's instances other than
//! the chosen one) stops an attempt, or closes a READY connection once its RPCs are done, and
//! waits for `Run`; a sub-channel in TRANSIENT_FAILURE stays so (gRPC has no
//! TRANSIENT_FAILURE → IDLE) but makes no attempt. `Retire` (its instance moved) keeps a READY
//! connection serving until the core drains it, never past the retirement deadline, and never
//! connects again: a connection lost after retirement, or a retirement while not READY, ends in
//! SHUTDOWN. `Drain` closes it for good once its RPCs are done (within the drain timeout).
//!
//! Connection attempts follow the gRPC connection-backoff spec ([`ConnectBackoff`]). A
//! connection that was READY is replaced at once when it is lost (the backoff starts over
//! once SETTINGS arrived), except when it lived less than the initial backoff: then the next
//! attempt waits, so that a server that accepts and closes at once is not hammered. A
//! `too_many_pings` GOAWAY doubles the keepalive interval of the next connections, as grpc-go
//! does.
//!
//! [`ConnectBackoff`]: crate::ConnectBackoff

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::uri::Authority;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, trace};

use crate::backoff::Backoff;
use crate::connect::{Closed, Connection, Connector};
use crate::control::Order;
use crate::state::{ConnectivityState, Health};

mod shared;

pub(crate) use shared::{Ready, ReadyConn, Room, Shared};

/// What a sub-channel's task reports to the control core.
#[derive(Debug)]
pub(crate) struct Event<S> {
    pub(crate) id: u64,
    pub(crate) key: Arc<str>,
    pub(crate) report: Report<S>,
}

/// One report of a sub-channel's task.
#[derive(Debug)]
pub(crate) enum Report<S> {
    /// A state change; `ready` is the connection when `state` is READY, `error` why an
    /// attempt failed or a connection ended.
    State {
        state: ConnectivityState,
        ready: Option<Ready<S>>,
        error: Option<String>,
    },
    /// A change of health of its READY connection, and why when it is not SERVING.
    Health { health: Health, why: Option<String> },
}

/// Settings of a sub-channel's task.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) keepalive: Option<Duration>,
    pub(crate) drain_timeout: Duration,
    /// The service whose health to watch on every READY connection (gRFC A17), if any.
    pub(crate) health_check: Option<String>,
}

/// The task that keeps one sub-channel connected as the control core orders.
pub(crate) struct Driver<C: Connector> {
    shared: Arc<Shared>,
    connector: Arc<C>,
    authority: Authority,
    /// Whether its registration says it speaks TLS.
    secure: Option<bool>,
    events: mpsc::UnboundedSender<Event<C::Sender>>,
    orders: watch::Receiver<Order>,
    backoff: Backoff,
    keepalive: Option<Duration>,
    drain_timeout: Duration,
    health_check: Option<String>,
    /// The state it last reported: where its own state machine is.
    reported: ConnectivityState,
    /// Connection attempts made.
    attempts: u64,
}

/// How a READY connection ended.
enum Served {
    /// Lost: by a GOAWAY, an error or a keepalive timeout.
    Closed(Closed),
    /// Closed as ordered, after its RPCs in flight: drained (SHUTDOWN) or idled (IDLE).
    Ordered,
}

impl<C: Connector> Driver<C> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        connector: Arc<C>,
        authority: Authority,
        events: mpsc::UnboundedSender<Event<C::Sender>>,
        orders: watch::Receiver<Order>,
        backoff: Backoff,
        settings: Settings,
    ) -> Self {
        Self {
            shared,
            connector,
            authority,
            secure: None,
            events,
            orders,
            backoff,
            keepalive: settings.keepalive,
            drain_timeout: settings.drain_timeout,
            health_check: settings.health_check,
            reported: ConnectivityState::Idle,
            attempts: 0,
        }
    }

    /// Dials with TLS or not as the instance's registration says (`None`: it does not).
    pub(crate) fn secure(mut self, secure: Option<bool>) -> Self {
        self.secure = secure;
        self
    }

    /// Runs the state machine until the sub-channel is drained and SHUTDOWN.
    pub(crate) async fn run(mut self) {
        loop {
            match self.order() {
                Order::Run => {}
                Order::Idle => {
                    if !Box::pin(self.idle()).await {
                        return self.shutdown();
                    }
                    continue;
                }
                Order::Retire { .. } => {
                    debug!(addr = %self.shared.addr, "retired: not connecting again");
                    return self.shutdown();
                }
                Order::Drain { .. } => return self.shutdown(),
            }
            let started = Instant::now();
            let attempt = self.backoff.attempt(started);
            self.transition(ConnectivityState::Connecting, None, None);
            self.attempts += 1;
            if self.attempts > 1 {
                self.shared.metrics.reconnect();
            }
            // Each state's future is boxed while it lasts: the task itself stays small, and a
            // READY sub-channel holds only what serving needs.
            let Some(result) = Box::pin(self.attempt(attempt.connect_deadline)).await else {
                // Told to stay idle: the attempt is dropped. Otherwise: SHUTDOWN.
                if self.order() == Order::Idle {
                    self.transition(ConnectivityState::Idle, None, None);
                    continue;
                }
                return self.shutdown();
            };
            let error = match result {
                Ok(Ok(conn)) => {
                    let ready_at = Instant::now();
                    self.backoff.reset();
                    match Box::pin(self.serve(conn)).await {
                        Served::Ordered => match self.order() {
                            Order::Idle | Order::Run => continue,
                            Order::Retire { .. } | Order::Drain { .. } => return,
                        },
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
                            if Instant::now() < retry_at
                                && !Box::pin(self.wait_until(retry_at)).await
                            {
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
            if !Box::pin(self.wait_until(attempt.retry_at)).await {
                return self.shutdown();
            }
        }
    }

    /// One connection attempt, bounded by `deadline`: `None` if an order stopped it.
    async fn attempt(
        &mut self,
        deadline: Instant,
    ) -> Option<Result<Result<Connection<C::Sender>, String>, tokio::time::error::Elapsed>> {
        let connecting = self
            .connector
            .connect(&self.shared.addr, self.secure, self.keepalive);
        tokio::select! {
            r = tokio::time::timeout_at(deadline, connecting) => Some(r),
            () = stop_connecting(&mut self.orders) => None,
        }
    }

    /// Told to stay idle: waits for the next order. False if it is to shut down.
    async fn idle(&mut self) -> bool {
        // A failed sub-channel stays TRANSIENT_FAILURE (gRPC has no TRANSIENT_FAILURE → IDLE);
        // any other becomes IDLE.
        if matches!(self.reported, ConnectivityState::Connecting) {
            self.transition(ConnectivityState::Idle, None, None);
        }
        let order = match self.orders.wait_for(|o| *o != Order::Idle).await {
            Ok(order) => *order,
            Err(_) => return false,
        };
        order == Order::Run
    }

    /// READY: hands the connection to the core and waits for its end or for an order.
    async fn serve(&mut self, conn: Connection<C::Sender>) -> Served {
        let Connection {
            sender,
            mut closed,
            abort,
            max_streams,
            scheme,
        } = conn;
        let mut health = self.watch_health(&sender, &scheme);
        let ready = Ready(Arc::new(ReadyConn {
            sub: self.shared.clone(),
            sender,
            scheme,
            authority: self.authority.clone(),
            max_streams,
        }));
        self.transition(ConnectivityState::Ready, None, Some(ready));
        let how = tokio::select! {
            biased;
            () = stop_serving(&mut self.orders) => None,
            how = &mut closed => Some(how),
            never = &mut health => match never {},
        };
        match how {
            // Dropping the core's senders on removal also ends the dispatch: that is a drain,
            // not a lost connection.
            Some(how) if !self.stop_is_ordered() && !self.retirement_is_over() => {
                Served::Closed(how)
            }
            _ => {
                self.drain_in_flight(&mut closed).await;
                abort();
                if self.order() == Order::Idle {
                    debug!(addr = %self.shared.addr, "idled: connection closed");
                    self.shared.draining.store(false, Ordering::Release);
                    self.transition(ConnectivityState::Idle, None, None);
                } else {
                    self.shutdown();
                }
                Served::Ordered
            }
        }
    }

    /// The health reports of a READY connection, for as long as it is polled: nothing (and no
    /// allocation) when health checking is off.
    fn watch_health(
        &self,
        sender: &C::Sender,
        scheme: &http::uri::Scheme,
    ) -> crate::connect::BoxFuture<std::convert::Infallible> {
        let Some(service) = self.health_check.clone() else {
            return Box::pin(std::future::pending());
        };
        let connector = self.connector.clone();
        let sender = sender.clone();
        let authority = self.authority.clone();
        let scheme = scheme.clone();
        let shared = self.shared.clone();
        let events = self.events.clone();
        let backoff = *self.backoff.config();
        Box::pin(async move {
            let addr = shared.addr.clone();
            let mut last = Health::Unknown;
            crate::connect::health::run(
                || connector.watch_health(&sender, &scheme, &authority, &service),
                backoff,
                &addr,
                |health, why| {
                    if health == last {
                        return;
                    }
                    last = health;
                    debug!(addr = %shared.addr, %health, "sub-channel health");
                    shared.metrics.health(health.as_str());
                    let _ = events.send(Event {
                        id: shared.id,
                        key: shared.key.clone(),
                        report: Report::Health { health, why },
                    });
                },
            )
            .await
        })
    }

    fn order(&self) -> Order {
        *self.orders.borrow()
    }

    /// Whether the connection is to close: a drain or an idle order, or whoever could give
    /// orders is gone.
    fn stop_is_ordered(&self) -> bool {
        matches!(self.order(), Order::Drain { .. } | Order::Idle)
            || self.orders.has_changed().is_err()
    }

    fn retired(&self) -> bool {
        matches!(self.order(), Order::Retire { .. })
    }

    fn retirement_is_over(&self) -> bool {
        matches!(self.order(), Order::Retire { by } if Instant::now() >= Instant::from_std(by))
    }

    /// Waits until no RPC is in flight on this sub-channel, or the drain timeout passed.
    ///
    /// The connection's dispatch future ends as soon as the balancer drops its request
    /// senders, while hyper's connection task goes on serving the streams already open: only
    /// the in-flight count tells when they are done.
    async fn drain_in_flight(&self, closed: &mut crate::connect::BoxFuture<Closed>) {
        let shared = &self.shared;
        // SeqCst here and in `call_ended`: either this sees the last call's end, or that call
        // sees the drain and wakes it. (A release store then an acquire load may pass each
        // other, and both sides would miss the other, waiting for the drain timeout.)
        shared.draining.store(true, Ordering::SeqCst);
        let timeout = Instant::now() + self.drain_timeout;
        let deadline = match self.order() {
            // A retired connection closes by its deadline, whoever asks it to drain.
            Order::Retire { by } | Order::Drain { by: Some(by) } => {
                Instant::from_std(by).min(timeout)
            }
            Order::Idle | Order::Run | Order::Drain { by: None } => timeout,
        };
        let mut dispatch_done = false;
        loop {
            // Listening before looking, so that a call ending in between still wakes it.
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let in_flight = shared.in_flight.load(Ordering::SeqCst);
            if in_flight == 0 {
                debug!(addr = %shared.addr, "drained");
                return;
            }
            trace!(addr = %shared.addr, in_flight, "draining");
            tokio::select! {
                () = idle => {}
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

    /// Sleeps until `at`; false if it is to shut down meanwhile. An order to stay idle cuts
    /// the wait short: the next turn of the loop waits for the order to connect.
    async fn wait_until(&mut self, at: Instant) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(at) => true,
            () = stop_connecting(&mut self.orders) => self.order() == Order::Idle,
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
        let from = self.reported;
        debug_assert!(from.can_become(next), "{from} -> {next}");
        self.reported = next;
        match (&error, next) {
            (Some(e), _) => {
                debug!(addr = %self.shared.addr, %from, %next, error = %e, "sub-channel state")
            }
            (None, ConnectivityState::Ready | ConnectivityState::Shutdown) => {
                debug!(addr = %self.shared.addr, %from, %next, "sub-channel state")
            }
            (None, _) => trace!(addr = %self.shared.addr, %from, %next, "sub-channel state"),
        }
        if from != next {
            self.shared.metrics.transition(next.as_str());
        }
        let _ = self.events.send(Event {
            id: self.shared.id,
            key: self.shared.key.clone(),
            report: Report::State {
                state: next,
                ready,
                error,
            },
        });
    }
}

/// Resolves once the task must stop connecting: any order but `Run` (or whoever could order
/// is gone).
async fn stop_connecting(orders: &mut watch::Receiver<Order>) {
    let _ = orders.wait_for(|o| *o != Order::Run).await;
}

/// Resolves once a READY connection must stop serving: a drain or an idle order, a
/// retirement's deadline passed, or whoever could order is gone.
async fn stop_serving(orders: &mut watch::Receiver<Order>) {
    loop {
        let order = *orders.borrow_and_update();
        match order {
            Order::Drain { .. } | Order::Idle => return,
            Order::Retire { by } => tokio::select! {
                () = tokio::time::sleep_until(Instant::from_std(by)) => return,
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
