//! Membership: the core's instance set follows the resolver's updates, and each instance in it
//! (or in the subset, when subsetting) gets a sub-channel; a removed one drains, a moved one is
//! retired while its new address connects.

use std::time::Instant;

use switchboard_resolver::{Change, Instance, Update};
use tracing::{debug, info};

use super::publish::Published;
use super::sub::{Link, Role, Sub};
use super::{Core, Entry, Io, Order, locality, outlier};
use crate::picker::Policy;

impl<I: Io> Core<I> {
    /// Applies a resolver update: starts sub-channels for new instances, drains those of
    /// removed ones, and moves those whose address changed.
    pub(crate) fn update(&mut self, io: &mut I, update: Update, now: Instant) {
        self.resolved = true;
        self.updates += 1;
        self.published.dirty = true;
        match &update {
            Update::Reset(list) => {
                self.ranks = (0u64..)
                    .zip(list)
                    .map(|(i, x)| (x.key.clone(), i))
                    .collect();
                self.next_rank = list.len() as u64;
            }
            Update::Add(instance) => {
                if !self.ranks.contains_key(&instance.key) {
                    self.ranks.insert(instance.key.clone(), self.next_rank);
                    self.next_rank += 1;
                }
            }
            Update::Remove(key) => {
                self.ranks.remove(key);
            }
        }
        let changes = self.instances.apply(update);
        if self.subset.is_some() {
            return self.update_subset(io, changes, now);
        }
        for change in changes {
            match change {
                Change::Added(instance) => self.add(io, &instance, now),
                Change::Removed(instance) => {
                    info!(key = %instance.key, addr = %instance.addr, "removing instance");
                    self.remove(io, &instance.key);
                }
                Change::Replaced { old, new } => self.replace(io, &old, &new, now),
            }
        }
        self.pick_first(io, now);
    }

    /// Applies `changes` to the subset, then brings the sub-channels in line with it: the
    /// instances that left it drain, those that entered it get a sub-channel, the members that
    /// moved move.
    fn update_subset(&mut self, io: &mut I, changes: Vec<Change>, now: Instant) {
        let Some(subset) = &mut self.subset else {
            return;
        };
        for change in &changes {
            match change {
                Change::Added(instance) => subset.insert(&instance.key),
                Change::Removed(instance) => subset.remove(&instance.key),
                Change::Replaced { .. } => {}
            }
        }
        let has_current = |subs: &Vec<Entry<I>>| subs.iter().any(|s| s.role == Role::Current);
        let left: Vec<String> = self
            .slots
            .iter()
            .filter(|(key, subs)| has_current(subs) && !subset.contains(key))
            .map(|(key, _)| key.clone())
            .collect();
        let entered: Vec<Instance> = subset
            .members()
            .filter(|key| !self.slots.get(*key).is_some_and(has_current))
            .filter_map(|key| self.instances.get(key).cloned())
            .collect();
        for key in left {
            debug!(%key, "out of the subset");
            self.remove(io, &key);
        }
        for change in changes {
            if let Change::Replaced { old, new } = change {
                if self.slots.get(&new.key).is_some_and(has_current) {
                    self.replace(io, &old, &new, now);
                }
            }
        }
        for instance in entered {
            debug!(key = %instance.key, "into the subset");
            self.add(io, &instance, now);
        }
        self.pick_first(io, now);
    }

    /// Drains every sub-channel of `key`.
    fn remove(&mut self, io: &mut I, key: &str) {
        if let Some(subs) = self.slots.get_mut(key) {
            for sub in subs.iter_mut() {
                Self::drain(io, sub, &mut self.published);
            }
        }
        self.forget_shutdown(key);
    }

    fn add(&mut self, io: &mut I, instance: &Instance, now: Instant) {
        let running = self.config.policy != Policy::PickFirst || self.config.pick_first.keep_warm;
        let order = if running { Order::Run } else { Order::Idle };
        self.next_id += 1;
        let id = self.next_id;
        let Some(handle) = io.start(id, instance, order) else {
            return;
        };
        info!(key = %instance.key, addr = %instance.addr, "adding instance");
        let sub = Sub {
            id,
            addr: instance.addr.clone(),
            weight: instance.weight.max(1),
            zone: locality::zone(instance),
            io: handle,
            role: Role::Current,
            link: Link::Idle,
            running,
            failing: false,
            settled: false,
            outlier: outlier::Tracker::default(),
            since: now,
            last_error: None,
            connects: 0,
        };
        // Mostly one sub-channel per instance (two only while it moves): no room for four.
        self.slots
            .entry(instance.key.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(sub);
    }

    fn replace(&mut self, io: &mut I, old: &Instance, new: &Instance, now: Instant) {
        let Some(subs) = self.slots.get_mut(&new.key) else {
            // The old address could not be used; try the new one.
            return self.add(io, new, now);
        };
        if old.addr == new.addr {
            debug!(key = %new.key, weight = new.weight, "instance metadata changed");
            if let Some(sub) = subs.iter_mut().find(|s| s.role == Role::Current) {
                sub.weight = new.weight.max(1);
                sub.zone = locality::zone(new);
                io.set_weight(&sub.io, sub.weight);
            }
            self.published.ready_dirty = true;
            return;
        }
        info!(key = %new.key, from = %old.addr, to = %new.addr, "instance moved");
        let by = now + self.config.drain_timeout;
        for sub in subs.iter_mut() {
            match sub.role {
                // It serves until the new address is READY, but not past the drain timeout,
                // and never connects to the old address again.
                Role::Current if matches!(sub.link, Link::Ready { .. }) => {
                    sub.role = Role::Retired { by };
                    io.order(&sub.io, Order::Retire { by });
                }
                Role::Current | Role::Retired { .. } => Self::drain(io, sub, &mut self.published),
                Role::Draining { .. } => {}
            }
        }
        // pick_first's chosen instance moved: its new address connects at once.
        let chosen_moved = self
            .chosen
            .is_some_and(|id| subs.iter().any(|s| s.id == id));
        self.add(io, new, now);
        if chosen_moved {
            let current = self
                .slots
                .get_mut(&new.key)
                .and_then(|subs| subs.iter_mut().find(|s| s.role == Role::Current));
            if let Some(sub) = current.filter(|s| !s.running) {
                sub.running = true;
                io.order(&sub.io, Order::Run);
            }
        }
    }

    /// Tells `sub` to drain, keeping the deadline of a retirement.
    pub(super) fn drain(io: &mut I, sub: &mut Entry<I>, published: &mut Published) {
        let by = match sub.role {
            Role::Draining { .. } => return,
            Role::Retired { by } => Some(by),
            Role::Current => None,
        };
        if sub.pickable().is_some() {
            published.ready_dirty = true;
        }
        sub.role = Role::Draining { by };
        io.order(&sub.io, Order::Drain { by });
        published.dirty = true;
    }

    /// Drops the sub-channels of `key` that are SHUTDOWN, and the key once it has none.
    pub(super) fn forget_shutdown(&mut self, key: &str) {
        if let Some(subs) = self.slots.get_mut(key) {
            subs.retain(|s| !matches!(s.link, Link::Shutdown));
            if subs.is_empty() {
                self.slots.remove(key);
            }
        }
    }
}
