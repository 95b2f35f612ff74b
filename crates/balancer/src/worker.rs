//! The balancer's background task: applies resolver updates and sub-channel state changes,
//! and publishes a new picker snapshot whenever the READY set changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchboard_resolver::{Change, Instance, InstanceSet, Resolution, ResolverStatus, Update};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Interval};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::builder::Config;
use crate::connect::{Connector, authority};
use crate::health::Health;
use crate::inner::{Inner, Snapshot};
use crate::outlier::{self, Tracker};
use crate::picker::Policy;
use crate::state::ConnectivityState;
use crate::subchannel::{Driver, Event, Order, Ready, Shared};

/// One sub-channel as the worker tracks it.
struct Sub<S> {
    shared: Arc<Shared>,
    drain: watch::Sender<Order>,
    state: ConnectivityState,
    /// It failed (TRANSIENT_FAILURE) and has not been READY since: the channel's aggregate
    /// counts it as failing while it tries again, as gRPC's balancers keep TRANSIENT_FAILURE
    /// sticky, so that fail-fast RPCs fail at once when every instance is failing.
    failing: bool,
    /// When it was retired (its instance moved), the deadline of its connection.
    retired_by: Option<Instant>,
    ready: Option<Ready<S>>,
    /// Its connection's health (gRFC A17).
    health: Health,
    /// Its outlier-detection state (gRFC A50).
    outlier: Tracker,
    /// Its first connection attempt is over (it was READY or failed at least once).
    settled: bool,
}

impl<S> Sub<S> {
    fn id(&self) -> u64 {
        self.shared.id
    }

    /// Its connection, if it may be picked: READY and, when health is checked, SERVING.
    fn pickable(&self) -> Option<&Ready<S>> {
        self.ready
            .as_ref()
            .filter(|_| self.health.is_pickable() && !self.outlier.is_ejected())
    }

    /// Its state as the channel's aggregate sees it: a READY connection whose health check
    /// has not answered yet counts as CONNECTING, and an unhealthy or ejected one as
    /// TRANSIENT_FAILURE, as gRFC A17 and A50 have them reported.
    fn effective_state(&self) -> ConnectivityState {
        match (self.state, self.health) {
            (ConnectivityState::Connecting | ConnectivityState::Idle, _) if self.failing => {
                ConnectivityState::TransientFailure
            }
            (ConnectivityState::Ready, _) if self.outlier.is_ejected() => {
                ConnectivityState::TransientFailure
            }
            (ConnectivityState::Ready, Health::Unknown) => ConnectivityState::Connecting,
            (ConnectivityState::Ready, Health::NotServing) => ConnectivityState::TransientFailure,
            (state, _) => state,
        }
    }
}

/// The sub-channel(s) of one instance key: the current one, and while an address change is
/// in progress, the previous one, which keeps serving until the current one is READY.
struct Slot<S> {
    current: Sub<S>,
    previous: Option<Sub<S>>,
}

pub(crate) struct Worker<C: Connector> {
    inner: Arc<Inner<C::Sender>>,
    connector: Arc<C>,
    config: Arc<Config>,
    set: InstanceSet,
    slots: BTreeMap<String, Slot<C::Sender>>,
    /// Sub-channel id → instance key, for the sub-channels held in `slots`.
    keys: HashMap<u64, String>,
    /// Sub-channels removed from `slots` that have not reached SHUTDOWN yet.
    draining: HashMap<u64, Arc<Shared>>,
    events_tx: mpsc::UnboundedSender<Event<C::Sender>>,
    events: mpsc::UnboundedReceiver<Event<C::Sender>>,
    resolver: watch::Receiver<ResolverStatus>,
    rng: SmallRng,
    next_id: u64,
    sticky: Option<u64>,
    resolved: bool,
    /// When the resolver's last error that was counted happened.
    last_resolver_error: Option<std::time::SystemTime>,
    last_error: Option<String>,
    ready_dirty: bool,
    dirty: bool,
}

impl<C: Connector> Worker<C> {
    pub(crate) fn new(
        inner: Arc<Inner<C::Sender>>,
        connector: Arc<C>,
        config: Arc<Config>,
        resolver: watch::Receiver<ResolverStatus>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        };
        Self {
            inner,
            connector,
            config,
            set: InstanceSet::default(),
            slots: BTreeMap::new(),
            keys: HashMap::new(),
            draining: HashMap::new(),
            events_tx,
            events,
            resolver,
            rng,
            next_id: 0,
            sticky: None,
            resolved: false,
            last_resolver_error: None,
            last_error: None,
            ready_dirty: false,
            dirty: false,
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
        let mut outliers = self.config.outlier.as_ref().map(|o| {
            let mut interval = tokio::time::interval_at(Instant::now() + o.interval, o.interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        loop {
            tokio::select! {
                biased;
                _ = &mut close => break,
                () = tick(&mut outliers) => self.detect_outliers(),
                Ok(()) = self.resolver.changed() => {
                    self.resolver_status();
                    continue;
                }
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
                        warn!(target = %self.config.target, "the resolver stopped: keeping the last instance set");
                        resolving = false;
                    }
                },
            }
            self.publish();
        }
        debug!(target = %self.config.target, "balancer closed: draining every sub-channel");
        for (_, slot) in std::mem::take(&mut self.slots) {
            let _ = slot.current.drain.send(Order::DRAIN);
            if let Some(previous) = slot.previous {
                let _ = previous.drain.send(Order::Drain {
                    by: previous.retired_by,
                });
            }
        }
        let closed =
            tonic::Status::unavailable(format!("the channel to {} is closed", self.config.target));
        self.inner.store(Snapshot::Fail(closed), Vec::new());
        self.inner.set_state(ConnectivityState::Shutdown);
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
        self.resolved = true;
        self.dirty = true;
        let kind = match &update {
            Update::Reset(_) => "reset",
            Update::Add(_) => "add",
            Update::Remove(_) => "remove",
        };
        metrics::counter!(
            "switchboard_resolver_updates_total",
            "target" => self.config.target.clone(),
            "kind" => kind,
        )
        .increment(1);
        for change in self.set.apply(update) {
            match change {
                Change::Added(instance) => self.apply_added(instance),
                Change::Removed(instance) => {
                    info!(key = %instance.key, addr = %instance.addr, "removing instance");
                    if let Some(slot) = self.slots.remove(&instance.key) {
                        self.drain(slot.current);
                        if let Some(previous) = slot.previous {
                            self.drain(previous);
                        }
                    }
                }
                Change::Replaced { old, new } => self.replace(old, new),
            }
        }
        self.inner.update_applied();
    }

    fn replace(&mut self, old: Instance, new: Instance) {
        let Some(slot) = self.slots.get_mut(&new.key) else {
            // The old address could not be used; try the new one.
            return self.apply_added(new);
        };
        if old.addr == new.addr {
            debug!(key = %new.key, weight = new.weight, "instance metadata changed");
            slot.current
                .shared
                .weight
                .store(new.weight.max(1), Ordering::Relaxed);
            self.ready_dirty = true;
            return;
        }
        info!(key = %new.key, from = %old.addr, to = %new.addr, "instance moved");
        let Some(sub) = self.spawn(&new) else { return };
        let Some(slot) = self.slots.get_mut(&new.key) else {
            return;
        };
        self.keys.insert(sub.id(), new.key.clone());
        let mut old_current = std::mem::replace(&mut slot.current, sub);
        let stale = if old_current.ready.is_some() {
            // It serves until the new address is READY, but not past the drain timeout, and
            // never connects to the old address again.
            let by = Instant::now() + self.config.subchannel.drain_timeout;
            old_current.retired_by = Some(by);
            let _ = old_current.drain.send(Order::Retire { by });
            slot.previous.replace(old_current)
        } else {
            Some(old_current)
        };
        if let Some(stale) = stale {
            self.drain(stale);
        }
    }

    fn apply_added(&mut self, instance: Instance) {
        if let Some(sub) = self.spawn(&instance) {
            self.keys.insert(sub.id(), instance.key.clone());
            self.slots.insert(
                instance.key,
                Slot {
                    current: sub,
                    previous: None,
                },
            );
        }
    }

    fn spawn(&mut self, instance: &Instance) -> Option<Sub<C::Sender>> {
        let authority = match authority(&instance.addr) {
            Ok(a) => a,
            Err(e) => {
                warn!(key = %instance.key, error = %e, "skipping instance");
                return None;
            }
        };
        info!(key = %instance.key, addr = %instance.addr, "adding instance");
        self.next_id += 1;
        let shared = Arc::new(Shared::new(
            self.next_id,
            &self.config.target,
            instance.key.clone(),
            instance.addr.clone(),
            instance.weight,
            self.config.rtt_decay,
        ));
        let (drain, drain_rx) = watch::channel(Order::Run);
        let backoff = Backoff::new(
            self.config.backoff,
            SmallRng::seed_from_u64(self.rng.random()),
        );
        let driver = Driver::new(
            shared.clone(),
            self.connector.clone(),
            authority,
            self.events_tx.clone(),
            drain_rx,
            backoff,
            self.config.subchannel.clone(),
        );
        let span = info_span!("subchannel", addr = %instance.addr);
        tokio::spawn(driver.run().instrument(span));
        self.inner.add_member(&shared);
        Some(Sub {
            shared,
            drain,
            state: ConnectivityState::Idle,
            failing: false,
            retired_by: None,
            ready: None,
            health: self.initial_health(),
            outlier: Tracker::default(),
            settled: false,
        })
    }

    fn drain(&mut self, sub: Sub<C::Sender>) {
        self.keys.remove(&sub.id());
        if sub.ready.is_some() {
            self.ready_dirty = true;
        }
        if self.sticky == Some(sub.id()) {
            self.sticky = None;
        }
        if sub.state == ConnectivityState::Shutdown {
            self.inner.remove_member(&sub.shared);
        } else {
            self.draining.insert(sub.id(), sub.shared.clone());
        }
        let _ = sub.drain.send(Order::Drain { by: sub.retired_by });
        self.dirty = true;
    }

    /// Reports the resolver's connectivity and errors as metrics.
    fn resolver_status(&mut self) {
        let status = self.resolver.borrow_and_update().clone();
        let target = self.config.target.clone();
        metrics::gauge!("switchboard_resolver_connected", "target" => target.clone())
            .set(if status.connected { 1.0 } else { 0.0 });
        if status.last_error_at.is_some() && status.last_error_at != self.last_resolver_error {
            self.last_resolver_error = status.last_error_at;
            metrics::counter!("switchboard_resolver_errors_total", "target" => target).increment(1);
        }
    }

    /// One run of outlier detection over every sub-channel of an instance.
    fn detect_outliers(&mut self) {
        let Some(config) = self.config.outlier.clone() else {
            return;
        };
        let Self { slots, rng, .. } = self;
        let subs = slots
            .values_mut()
            .flat_map(|s| std::iter::once(&mut s.current).chain(s.previous.as_mut()));
        let trackers = subs.map(|sub| {
            let counts = (
                sub.shared.succeeded.load(Ordering::Relaxed),
                sub.shared.failed.load(Ordering::Relaxed),
            );
            (&mut sub.outlier, counts)
        });
        let now = Instant::now();
        if !outlier::run(&config, now, trackers, || rng.random_range(0..100)) {
            return;
        }
        for slot in self.slots.values() {
            for sub in std::iter::once(&slot.current).chain(slot.previous.as_ref()) {
                let ejected = sub.outlier.is_ejected();
                if sub.shared.ejected.swap(ejected, Ordering::Relaxed) != ejected {
                    if ejected {
                        warn!(key = %sub.shared.key, addr = %sub.shared.addr, "outlier detection: ejected");
                        sub.shared.metrics.ejected();
                        self.last_error =
                            Some(format!("{}: ejected by outlier detection", sub.shared.addr));
                    } else {
                        info!(key = %sub.shared.key, addr = %sub.shared.addr, "outlier detection: back");
                    }
                }
            }
        }
        self.ready_dirty = true;
        self.dirty = true;
    }

    /// The health of a sub-channel whose connection is not READY (yet).
    fn initial_health(&self) -> Health {
        if self.config.subchannel.health_check.is_some() {
            Health::Unknown
        } else {
            Health::Unchecked
        }
    }

    fn on_event(&mut self, event: Event<C::Sender>) {
        let id = event.id();
        let failed = match &event {
            Event::State { state, .. } => *state == ConnectivityState::TransientFailure,
            Event::Health { health, .. } => *health == Health::NotServing,
        };
        if failed {
            if let Some(shared) = self.find(id) {
                if let Some(e) = shared.info().last_error {
                    self.last_error = Some(format!("{}: {e}", shared.addr));
                }
            }
        }
        let Some(key) = self.keys.get(&id).cloned() else {
            if matches!(
                event,
                Event::State {
                    state: ConnectivityState::Shutdown,
                    ..
                }
            ) {
                if let Some(shared) = self.draining.remove(&id) {
                    self.inner.remove_member(&shared);
                }
            }
            return;
        };
        self.dirty = true;
        let initial_health = self.initial_health();
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        let is_current = slot.current.id() == id;
        let sub = if is_current {
            &mut slot.current
        } else {
            match slot.previous.as_mut() {
                Some(p) if p.id() == id => p,
                _ => return,
            }
        };
        let was_pickable = sub.pickable().is_some();
        match event {
            Event::State { state, ready, .. } => {
                sub.state = state;
                sub.ready = ready;
                match state {
                    ConnectivityState::TransientFailure => sub.failing = true,
                    ConnectivityState::Ready => sub.failing = false,
                    _ => {}
                }
                if state != ConnectivityState::Ready {
                    sub.health = initial_health;
                }
                if matches!(
                    state,
                    ConnectivityState::Ready | ConnectivityState::TransientFailure
                ) {
                    sub.settled = true;
                }
            }
            Event::Health { health, .. } => {
                info!(key = %sub.shared.key, addr = %sub.shared.addr, %health, "instance health");
                sub.health = health;
            }
        }
        let pickable = sub.pickable().is_some();
        if was_pickable || pickable {
            self.ready_dirty = true;
        }
        let retired_gone = !is_current && sub.state == ConnectivityState::Shutdown;
        let replaced = if (is_current && pickable) || retired_gone {
            slot.previous.take()
        } else {
            None
        };
        if let Some(previous) = replaced {
            debug!(key = %previous.shared.key, addr = %previous.shared.addr, "the new address is READY, or the old connection ended: draining the old one");
            self.drain(previous);
        }
    }

    fn find(&self, id: u64) -> Option<Arc<Shared>> {
        if let Some(shared) = self.draining.get(&id) {
            return Some(shared.clone());
        }
        let slot = self.slots.get(self.keys.get(&id)?)?;
        [Some(&slot.current), slot.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| s.id() == id)
            .map(|s| s.shared.clone())
    }

    /// Publishes the picker snapshot and the channel state if they changed.
    fn publish(&mut self) {
        if !self.dirty && !self.ready_dirty {
            return;
        }
        self.dirty = false;
        let state = if !self.resolved {
            ConnectivityState::Connecting
        } else {
            ConnectivityState::aggregate(self.slots.values().flat_map(|s| {
                std::iter::once(s.current.effective_state())
                    .chain(s.previous.as_ref().map(Sub::effective_state))
            }))
        };
        self.state_metrics();
        let ready_dirty = std::mem::take(&mut self.ready_dirty);
        let was_pick = matches!(&**self.inner.load(), Snapshot::Pick(_));
        if state == ConnectivityState::Ready {
            if ready_dirty || !was_pick {
                self.build_picker();
            }
        } else if state == ConnectivityState::TransientFailure {
            self.inner.store(
                Snapshot::Fail(tonic::Status::unavailable(self.failure())),
                Vec::new(),
            );
        } else if was_pick || ready_dirty || self.inner.state() != state {
            self.inner.store(Snapshot::Queue, Vec::new());
        }
        self.inner.set_state(state);
    }

    /// `switchboard_subchannels` per state, and `switchboard_instances`.
    fn state_metrics(&self) {
        let mut counts = [0u32; 5];
        for slot in self.slots.values() {
            for sub in std::iter::once(&slot.current).chain(slot.previous.as_ref()) {
                counts[sub.effective_state() as usize] += 1;
            }
        }
        for state in ConnectivityState::ALL {
            metrics::gauge!(
                "switchboard_subchannels",
                "target" => self.config.target.clone(),
                "state" => state.as_str(),
            )
            .set(f64::from(counts[state as usize]));
        }
        metrics::gauge!("switchboard_instances", "target" => self.config.target.clone())
            .set(self.set.len() as f64);
    }

    fn build_picker(&mut self) {
        let ready: Vec<Ready<C::Sender>> = self
            .slots
            .values()
            .filter_map(|s| {
                s.current
                    .pickable()
                    .or_else(|| s.previous.as_ref().and_then(Sub::pickable))
                    .cloned()
            })
            .collect();
        if self.config.policy == Policy::PickFirst {
            let keep = self
                .sticky
                .filter(|id| ready.iter().any(|r| r.0.sub.id == *id));
            self.sticky = match keep {
                Some(id) => Some(id),
                None => match self.first_in_order() {
                    Some(id) => Some(id),
                    None => {
                        // An instance earlier in order is still on its first attempt: wait
                        // for it, as pick-first's in-order attempts would.
                        self.inner.store(Snapshot::Queue, Vec::new());
                        return;
                    }
                },
            };
        }
        let sticky = self.sticky;
        debug!(target = %self.config.target, ready = ready.len(), "new picker");
        let picked = match sticky {
            Some(id) if self.config.policy == Policy::PickFirst => vec![id],
            _ => ready.iter().map(|r| r.0.sub.id).collect(),
        };
        let picker = self
            .config
            .policy
            .build(ready, self.rng.random(), |r| Some(r.0.sub.id) == sticky);
        self.inner.store(Snapshot::Pick(picker), picked);
    }

    /// Pick-first's choice: the first READY sub-channel in resolver order, unless one before
    /// it has not finished its first connection attempt yet.
    fn first_in_order(&self) -> Option<u64> {
        for slot in self.slots.values() {
            let sub = match (&slot.current, &slot.previous) {
                (current, _) if current.pickable().is_some() => current,
                (_, Some(previous)) if previous.pickable().is_some() => previous,
                (current, _) => current,
            };
            if sub.pickable().is_some() {
                return Some(sub.id());
            }
            if !sub.settled {
                return None;
            }
        }
        None
    }

    /// Why no RPC can be sent now.
    fn failure(&self) -> String {
        let target = &self.config.target;
        if self.slots.is_empty() {
            let status = self.resolver.borrow();
            return match &status.last_error {
                Some(e) if !status.connected => {
                    format!("no instances of {target} (resolver: {e})")
                }
                _ => format!("no instances of {target}"),
            };
        }
        match &self.last_error {
            Some(e) => format!("no READY instance of {target}; last connection error: {e}"),
            None => format!("no READY instance of {target}"),
        }
    }
}

/// The next tick of `interval`, or never without one.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
