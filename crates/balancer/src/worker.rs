//! The balancer's task: feeds the control core its inputs — resolver updates, the
//! sub-channels' reports, the resolver's status, timer ticks — and carries out its decisions:
//! it starts the sub-channels' tasks, passes them their orders and publishes pickers. It keeps
//! no fact of its own.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchboard_resolver::{Instance, Resolution, ResolverStatus, Update};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::connect::{Connector, authority};
use crate::control::{Calls, Core, Io, Order, Publication};
use crate::metrics::SubMetrics;
use crate::published::{Published, View};
use crate::snapshot::SubchannelSnapshot;
use crate::state::ConnectivityState;
use crate::subchannel::{Driver, Event, Ready, Report, Shared};

/// The handle of one sub-channel's task.
pub(crate) struct Task {
    shared: Arc<Shared>,
    orders: watch::Sender<Order>,
}

/// The I/O the core's decisions are carried out by.
pub(crate) struct Tasks<C: Connector> {
    connector: Arc<C>,
    config: Arc<Config>,
    events: mpsc::UnboundedSender<Event<C::Sender>>,
    published: Arc<Published<C::Sender>>,
    /// The per-call metrics every sub-channel records to (they are labelled by target only).
    metrics: Arc<SubMetrics>,
    rng: SmallRng,
    /// Drain orders given and not sent yet: they go out once the worker has nothing else to
    /// do, so that under a burst of removals the core applies the whole burst and publishes
    /// before thousands of woken sub-channel tasks close their connections.
    drains: Vec<(watch::Sender<Order>, Order)>,
    /// When the oldest of `drains` was given.
    drains_since: Option<Instant>,
}

/// The longest a drain order waits for the worker to be idle (under a flood of events that
/// never lets it be).
const DRAIN_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

impl<C: Connector> Tasks<C> {
    fn has_drains(&self) -> bool {
        !self.drains.is_empty()
    }

    /// Sends the drain orders given since the last call.
    fn send_drains(&mut self) {
        self.drains_since = None;
        for (task, order) in self.drains.drain(..) {
            task.send_replace(order);
        }
    }
}

impl<C: Connector> Io for Tasks<C> {
    type Handle = Task;
    type Ready = Ready<C::Sender>;

    fn start(&mut self, id: u64, instance: &Instance, order: Order) -> Option<Task> {
        let authority = match authority(&instance.addr) {
            Ok(a) => a,
            Err(e) => {
                warn!(key = %instance.key, error = %e, "skipping instance");
                return None;
            }
        };
        let shared = Arc::new(Shared::new(
            id,
            self.metrics.clone(),
            instance.key.as_str().into(),
            instance.addr.clone(),
            instance.weight,
            self.config.rtt_decay,
            self.published.room.clone(),
        ));
        let (orders, orders_rx) = watch::channel(order);
        let backoff = Backoff::new(self.config.backoff, SmallRng::from_rng(&mut self.rng));
        let driver = Driver::new(
            shared.clone(),
            self.connector.clone(),
            authority,
            self.events.clone(),
            orders_rx,
            backoff,
            self.config.subchannel.clone(),
        )
        .secure(match instance.metadata.get("secure").map(String::as_str) {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        });
        let span = info_span!("subchannel", addr = %instance.addr);
        tokio::spawn(driver.run().instrument(span));
        Some(Task { shared, orders })
    }

    fn order(&mut self, task: &Task, order: Order) {
        // A drain is the last order a sub-channel gets: it can wait, nothing is picked from
        // a draining sub-channel. Any other order goes at once.
        if matches!(order, Order::Drain { .. }) {
            self.drains_since.get_or_insert_with(Instant::now);
            self.drains.push((task.orders.clone(), order));
        } else {
            task.orders.send_replace(order);
        }
    }

    fn set_weight(&mut self, task: &Task, weight: u32) {
        task.shared
            .weight
            .store(weight, std::sync::atomic::Ordering::Relaxed);
    }

    fn ejected(&mut self, task: &Task) {
        task.shared.metrics.ejected();
    }

    fn calls(task: &Task) -> Calls {
        task.shared.calls()
    }

    fn publish(&mut self, publication: Publication<Self::Ready>) {
        let target = &self.config.control.target;
        for state in ConnectivityState::ALL
            .into_iter()
            .filter(|_| self.config.metrics)
        {
            metrics::gauge!(
                "switchboard_subchannels",
                "target" => target.clone(),
                "state" => state.as_str(),
            )
            .set(f64::from(publication.counts[state as usize]));
        }
        if self.config.metrics {
            metrics::gauge!("switchboard_instances", "target" => target.clone())
                .set(publication.instances as f64);
        }
        if let Some(snapshot) = publication.snapshot {
            self.published.store(snapshot);
        }
        self.published.set_state(publication.state);
    }
}

/// The core, shared by the worker and whoever takes a snapshot.
pub(crate) type SharedCore<C> = Mutex<Core<Tasks<C>>>;

impl<C: Connector> View for SharedCore<C> {
    fn view(&self) -> (u64, Vec<SubchannelSnapshot>) {
        let core = self.lock().unwrap_or_else(|e| e.into_inner());
        let (now, wall) = (Instant::now().into_std(), SystemTime::now());
        let subchannels = core.subchannels(|at| {
            let since = now.saturating_duration_since(at);
            wall.checked_sub(since)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64)
        });
        (core.updates(), subchannels)
    }
}

pub(crate) struct Worker<C: Connector> {
    core: Arc<SharedCore<C>>,
    io: Tasks<C>,
    events: mpsc::UnboundedReceiver<Event<C::Sender>>,
    resolver: watch::Receiver<ResolverStatus>,
    /// When the resolver's last error that was counted happened.
    last_resolver_error: Option<SystemTime>,
}

impl<C: Connector> Worker<C> {
    /// The worker, and its core for the published state to read snapshots from.
    pub(crate) fn new(
        core: Arc<SharedCore<C>>,
        published: Arc<Published<C::Sender>>,
        connector: Arc<C>,
        config: Arc<Config>,
        resolver: watch::Receiver<ResolverStatus>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let seed = lock(&core).random();
        Self {
            io: Tasks {
                connector,
                metrics: Arc::new(SubMetrics::new(&config.control.target, config.metrics)),
                config,
                events: events_tx,
                published,
                rng: SmallRng::seed_from_u64(seed),
                drains: Vec::new(),
                drains_since: None,
            },
            core,
            events,
            resolver,
            last_resolver_error: None,
        }
    }

    /// Runs until `close` fires (every handle on the balancer is gone), then drains every
    /// sub-channel.
    pub(crate) async fn run(
        mut self,
        mut resolution: Resolution,
        mut close: oneshot::Receiver<()>,
    ) {
        let mut resolving = true;
        let target = self.io.config.control.target.clone();
        loop {
            let next_tick = lock(&self.core).next_tick().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = &mut close => break,
                () = sleep_until(next_tick) => {
                    let now = Instant::now().into_std();
                    lock(&self.core).tick(&mut self.io, now);
                }
                Ok(()) = self.resolver.changed() => self.resolver_status(),
                Some(event) = self.events.recv() => {
                    self.on_event(event);
                    self.drain_queued(&mut resolution).await;
                }
                update = resolution.next_update(), if resolving => match update {
                    Some(update) => {
                        self.apply(update);
                        self.drain_queued(&mut resolution).await;
                    }
                    None => {
                        warn!(%target, "the resolver stopped: keeping the last instance set");
                        resolving = false;
                    }
                },
                // Nothing else to do, even once the tasks ready to run have run (the resolver
                // in the middle of a burst among them): the removed sub-channels drain.
                () = tokio::task::yield_now(), if self.io.has_drains() => self.io.send_drains(),
            }
            lock(&self.core).publish(&mut self.io);
            if self
                .io
                .drains_since
                .is_some_and(|t| t.elapsed() >= DRAIN_MAX_DELAY)
            {
                self.io.send_drains();
            }
        }
        debug!(%target, "balancer closed: draining every sub-channel");
        lock(&self.core).close(&mut self.io);
        self.io.send_drains();
    }

    /// Handles every event and update already queued. Under a burst (thousands of instances
    /// added or removed, their sub-channels reporting), it lets the tasks that produce them
    /// run and takes the next batch before publishing, so that one picker and one state are
    /// computed per burst rather than per small batch.
    async fn drain_queued(&mut self, resolution: &mut Resolution) {
        const BURST: usize = 64;
        loop {
            let mut handled = 0;
            while let Ok(event) = self.events.try_recv() {
                self.on_event(event);
                handled += 1;
            }
            while let Some(update) = resolution.try_next_update() {
                self.apply(update);
                handled += 1;
            }
            if handled < BURST {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    fn apply(&mut self, update: Update) {
        let kind = match &update {
            Update::Reset(_) => "reset",
            Update::Add(_) => "add",
            Update::Remove(_) => "remove",
        };
        if self.io.config.metrics {
            metrics::counter!(
                "switchboard_resolver_updates_total",
                "target" => self.io.config.control.target.clone(),
                "kind" => kind,
            )
            .increment(1);
        }
        let now = Instant::now().into_std();
        lock(&self.core).update(&mut self.io, update, now);
    }

    fn on_event(&mut self, event: Event<C::Sender>) {
        let now = Instant::now().into_std();
        let mut core = lock(&self.core);
        let sub = (&*event.key, event.id);
        match event.report {
            Report::State {
                state,
                ready,
                error,
            } => core.link(&mut self.io, sub, state, ready, error, now),
            Report::Health { health, why } => core.health(&mut self.io, sub, health, why, now),
        }
    }

    /// Reports the resolver's connectivity and errors as metrics, and its error to the core.
    fn resolver_status(&mut self) {
        let status = self.resolver.borrow_and_update().clone();
        let target = self.io.config.control.target.clone();
        let recorded = self.io.config.metrics;
        if recorded {
            metrics::gauge!("switchboard_resolver_connected", "target" => target.clone())
                .set(if status.connected { 1.0 } else { 0.0 });
        }
        if status.last_error_at.is_some() && status.last_error_at != self.last_resolver_error {
            self.last_resolver_error = status.last_error_at;
            if recorded {
                metrics::counter!("switchboard_resolver_errors_total", "target" => target)
                    .increment(1);
            }
        }
        let error = status.last_error.filter(|_| !status.connected);
        lock(&self.core).resolver(error);
    }
}

fn lock<T>(core: &Mutex<T>) -> MutexGuard<'_, T> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
