//! The control core: one owner of every fact about every sub-channel, with no I/O and no
//! tokio inside.
//!
//! The core holds the instance set (it diffs the resolver's updates itself: the resolver only
//! forwards what etcd says) and one map from instance key to the sub-channels of that key —
//! the current one, and while an address change or a removal completes, the retired or
//! draining ones. Each sub-channel's facts ([`Sub`]: connection state, health, ejection,
//! role, counters of attempts, last error) live there and nowhere else.
//!
//! Inputs are method calls, each given the time: a resolver update ([`Core::update`]), a
//! connection event ([`Core::link`]), a health message ([`Core::health`]), a tick for its
//! timers ([`Core::tick`], due at [`Core::next_tick`]). Outputs are calls on an [`Io`]: start a
//! sub-channel's task, give it an order ([`Order`]: connect, stay idle, retire, drain), and
//! publish the picker and the channel's state. Randomness comes from a generator seeded at
//! construction. The tasks around the core — the worker, and one task per sub-channel — only
//! do I/O, so every behaviour here is tested exactly by driving the core by hand
//! (`control/tests.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchboard_resolver::{Instance, InstanceSet};
use tracing::{debug, info, warn};

use crate::picker::{BuildPicker, Endpoint, Policy};
use crate::state::{ConnectivityState, Health};

mod locality;
mod membership;
pub(crate) mod outlier;
mod pick_first;
mod publish;
mod sub;
#[cfg(test)]
mod tests;

pub use locality::Locality;
pub use outlier::{FailurePercentageEjection, OutlierDetection, SuccessRateEjection};
pub use pick_first::PickFirstOptions;
pub(crate) use publish::{Publication, Snapshot};
use sub::{Link, Role, Sub};

/// What the core wants of a sub-channel's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Do not connect; close a READY connection once its RPCs are done (pick_first's
    /// instances other than the chosen one).
    Idle,
    /// Keep connected.
    Run,
    /// Serve on the READY connection at most until `by`, then close; never connect again.
    Retire { by: Instant },
    /// Take no new RPC, let those in flight finish (within the drain timeout, or by the
    /// deadline of a retirement that came before), close.
    Drain { by: Option<Instant> },
}

/// The RPC counters of a sub-channel, kept by its task on the call path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Calls {
    pub(crate) started: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) in_flight: u64,
}

/// The I/O around the core: what its decisions are carried out by.
pub(crate) trait Io {
    /// The handle of one sub-channel's task, kept in the core's map with its facts.
    type Handle;
    /// A READY connection, as pickers hold it.
    type Ready: Endpoint + Clone + 'static;

    /// Starts the task of a new sub-channel with its first order. `None` when the instance's
    /// address cannot be dialled (the reason is logged): it gets no sub-channel.
    fn start(&mut self, id: u64, instance: &Instance, order: Order) -> Option<Self::Handle>;

    /// Gives a sub-channel's task a new order.
    fn order(&mut self, handle: &Self::Handle, order: Order);

    /// The weight pickers read changed (registration metadata).
    fn set_weight(&mut self, handle: &Self::Handle, weight: u32);

    /// Outlier detection ejected it.
    fn ejected(&mut self, handle: &Self::Handle);

    /// Its RPC counters.
    fn calls(handle: &Self::Handle) -> Calls;

    /// Publishes the channel's state and, if it changed, what RPCs are picked from.
    fn publish(&mut self, publication: Publication<Self::Ready>);
}

/// The core's settings.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) target: String,
    pub(crate) policy: Policy,
    pub(crate) drain_timeout: Duration,
    /// Whether health is checked (gRFC A17): a READY connection is then not picked before
    /// the server says SERVING.
    pub(crate) health_checked: bool,
    pub(crate) outlier: Option<OutlierDetection>,
    pub(crate) pick_first: PickFirstOptions,
    /// `least_request`'s candidates per pick.
    pub(crate) choice_count: u32,
    /// `ring_hash`'s (entries per weight, max ring size).
    pub(crate) ring: (usize, usize),
    /// A user's policy, in place of `policy`.
    pub(crate) custom: Option<CustomPolicy>,
    /// Connect to at most this many instances (random subsetting), if set.
    pub(crate) subset_size: Option<usize>,
    /// Prefer the instances of this zone, if set.
    pub(crate) locality: Option<Locality>,
}

/// A user's policy, named in `Debug` output.
#[derive(Clone)]
pub(crate) struct CustomPolicy(pub(crate) Arc<dyn BuildPicker>);

impl std::fmt::Debug for CustomPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

/// A sub-channel as the core keeps it for the I/O `I`.
type Entry<I> = Sub<<I as Io>::Handle, <I as Io>::Ready>;

/// See the [module docs](self).
pub(crate) struct Core<I: Io> {
    config: Arc<Config>,
    instances: InstanceSet,
    /// Instance key → its sub-channels: at most one `Current`, one `Retired`, and any number
    /// `Draining`.
    slots: BTreeMap<String, Vec<Entry<I>>>,
    rng: SmallRng,
    next_id: u64,
    /// A first resolution arrived.
    resolved: bool,
    closed: bool,
    /// Why the resolver cannot list instances, while it cannot.
    resolver_error: Option<String>,
    /// The last connection error of any sub-channel, with its address.
    last_error: Option<String>,
    /// pick_first's chosen sub-channel.
    chosen: Option<u64>,
    /// pick_first's last attempt started, and when it tries the next instance if that one
    /// is not READY by then.
    attempt: Option<(u64, Instant)>,
    next_outlier_run: Option<Instant>,
    /// Resolver updates applied.
    updates: u64,
    /// The instances connected to, when subsetting.
    subset: Option<locality::Subset>,
    /// Each instance's position in the resolver's order (its last listing, then additions in
    /// turn): pick_first's order.
    ranks: HashMap<String, u64>,
    next_rank: u64,
    published: publish::Published,
}

impl<I: Io> Core<I> {
    pub(crate) fn new(config: Arc<Config>, seed: u64, now: Instant) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let subset = config
            .subset_size
            .map(|size| locality::Subset::new(size, rng.random()));
        Self {
            next_outlier_run: config.outlier.as_ref().map(|o| now + o.interval),
            config,
            instances: InstanceSet::default(),
            slots: BTreeMap::new(),
            rng,
            next_id: 0,
            resolved: false,
            closed: false,
            resolver_error: None,
            last_error: None,
            chosen: None,
            attempt: None,
            updates: 0,
            subset,
            ranks: HashMap::new(),
            next_rank: 0,
            published: publish::Published::default(),
        }
    }

    /// A new random value (pickers' seeds, backoff jitter seeds).
    pub(crate) fn random(&mut self) -> u64 {
        self.rng.random()
    }

    /// A sub-channel's task reports a state: `conn` is its connection when READY, `error` why
    /// it failed or closed.
    pub(crate) fn link(
        &mut self,
        io: &mut I,
        (key, id): (&str, u64),
        state: ConnectivityState,
        conn: Option<I::Ready>,
        error: Option<String>,
        now: Instant,
    ) {
        let checked = self.config.health_checked;
        let Some(subs) = self.slots.get_mut(key) else {
            return;
        };
        let Some(sub) = subs.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let from = sub.link.state();
        if !from.can_become(state) {
            warn!(addr = %sub.addr, %from, to = %state, "invalid sub-channel state transition");
        }
        let was_pickable = sub.pickable().is_some();
        sub.link = match (state, conn) {
            (ConnectivityState::Ready, Some(conn)) => {
                let health = if checked {
                    Health::Unknown
                } else {
                    Health::Unchecked
                };
                Link::Ready { conn, health }
            }
            (ConnectivityState::Ready, None) => {
                warn!(addr = %sub.addr, "READY without a connection: ignored");
                return;
            }
            (ConnectivityState::Idle, _) => Link::Idle,
            (ConnectivityState::Connecting, _) => Link::Connecting,
            (ConnectivityState::TransientFailure, _) => Link::TransientFailure,
            (ConnectivityState::Shutdown, _) => Link::Shutdown,
        };
        if from != state {
            sub.since = now;
        }
        match state {
            ConnectivityState::Connecting => sub.connects += 1,
            ConnectivityState::Ready => {
                sub.failing = false;
                sub.settled = true;
            }
            ConnectivityState::TransientFailure => {
                sub.failing = true;
                sub.settled = true;
            }
            ConnectivityState::Idle | ConnectivityState::Shutdown => {}
        }
        if let Some(e) = error {
            if state == ConnectivityState::TransientFailure {
                self.last_error = Some(format!("{}: {e}", sub.addr));
            }
            sub.last_error = Some(e);
        }
        if was_pickable || sub.pickable().is_some() {
            self.published.ready_dirty = true;
        }
        self.published.dirty = true;
        self.settle(io, key);
        self.pick_first(io, now);
    }

    /// A READY connection's health changed; `why` says why when it is not SERVING.
    pub(crate) fn health(
        &mut self,
        io: &mut I,
        (key, id): (&str, u64),
        health: Health,
        why: Option<String>,
        now: Instant,
    ) {
        let Some(sub) = self
            .slots
            .get_mut(key)
            .and_then(|subs| subs.iter_mut().find(|s| s.id == id))
        else {
            return;
        };
        let Link::Ready { health: h, .. } = &mut sub.link else {
            return;
        };
        info!(key, addr = %sub.addr, %health, "instance health");
        let was_pickable = h.is_pickable();
        *h = health;
        if let Some(why) = why {
            if health == Health::NotServing {
                self.last_error = Some(format!("{}: {why}", sub.addr));
            }
            sub.last_error = Some(why);
        }
        if was_pickable != health.is_pickable() {
            self.published.ready_dirty = true;
        }
        self.published.dirty = true;
        self.settle(io, key);
        self.pick_first(io, now);
    }

    /// After a change to `key`'s sub-channels: a current one that is pickable ends the service
    /// of a retired one, and a retired one that closed makes way; SHUTDOWN ones are forgotten.
    fn settle(&mut self, io: &mut I, key: &str) {
        if let Some(subs) = self.slots.get_mut(key) {
            let current_pickable = subs
                .iter()
                .any(|s| s.role == Role::Current && s.pickable().is_some());
            if current_pickable {
                for sub in subs.iter_mut() {
                    if matches!(sub.role, Role::Retired { .. }) {
                        debug!(key, addr = %sub.addr, "the new address is READY: draining the old one");
                        Self::drain(io, sub, &mut self.published);
                    }
                }
            }
        }
        self.forget_shutdown(key);
    }

    /// The resolver's state: `error` while it cannot list instances.
    pub(crate) fn resolver(&mut self, error: Option<String>) {
        if self.resolver_error != error {
            self.resolver_error = error;
            self.published.dirty = true;
        }
    }

    /// When [`Core::tick`] has something to do next.
    pub(crate) fn next_tick(&self) -> Option<Instant> {
        match (self.next_outlier_run, self.attempt.map(|(_, at)| at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers that are due: outlier detection, pick_first's next attempt.
    pub(crate) fn tick(&mut self, io: &mut I, now: Instant) {
        if let (Some(at), Some(config)) = (self.next_outlier_run, self.config.outlier.clone()) {
            if now >= at {
                self.next_outlier_run = Some(now + config.interval);
                self.detect_outliers(io, &config, now);
            }
        }
        if self.attempt.is_some_and(|(_, at)| now >= at) {
            self.pick_first(io, now);
        }
    }

    /// One run of outlier detection over every sub-channel.
    fn detect_outliers(&mut self, io: &mut I, config: &OutlierDetection, now: Instant) {
        let Self { slots, rng, .. } = self;
        let trackers = slots.values_mut().flatten().map(|sub| {
            let calls = I::calls(&sub.io);
            (&mut sub.outlier, (calls.succeeded, calls.failed))
        });
        if !outlier::run(config, now, trackers, || rng.random_range(0..100)) {
            return;
        }
        for sub in self.slots.values_mut().flatten() {
            let ejected = sub.outlier.is_ejected();
            if ejected && sub.outlier.ejected_at() == Some(now) {
                warn!(addr = %sub.addr, "outlier detection: ejected");
                io.ejected(&sub.io);
                self.last_error = Some(format!("{}: ejected by outlier detection", sub.addr));
            }
        }
        self.published.ready_dirty = true;
        self.published.dirty = true;
        self.pick_first(io, now);
    }

    /// The channel is closing: every sub-channel drains, and the channel is SHUTDOWN.
    pub(crate) fn close(&mut self, io: &mut I) {
        for sub in self.slots.values_mut().flatten() {
            Self::drain(io, sub, &mut self.published);
        }
        self.closed = true;
        self.published.dirty = true;
        self.publish(io);
    }
}
