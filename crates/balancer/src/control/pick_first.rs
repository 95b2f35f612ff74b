//! pick_first's connection management (gRFC A61 and A62): one instance at a time, in resolver
//! order — the order of the resolver's last listing (a static list's order, etcd's key order),
//! instances added since coming after it in turn.
//!
//! - With nothing chosen, the core tells the first instance in order to connect. If it fails,
//!   or is not READY within [`PickFirstOptions::attempt_delay`] (A61's "happy eyeballs" delay,
//!   250 ms), the next one is told to connect too, and so on; attempts already started go on.
//! - The first to become READY (and healthy, and not ejected) is chosen: every RPC goes to it.
//!   The others are told to stay idle (their attempts stop, their connections close once their
//!   RPCs are done), unless [`PickFirstOptions::keep_warm`] keeps them all connected.
//! - The choice is sticky: it stays while the chosen one is pickable, whatever the resolver's
//!   order becomes. When it is lost (or its instance leaves), the pass starts again from the
//!   first instance in order.
//! - Once every instance has failed, the channel is TRANSIENT_FAILURE until one is READY
//!   (A62's sticky TRANSIENT_FAILURE); the failed ones keep trying, each on its own backoff.
//!
//! With `keep_warm`, every instance connects from the start and the choice is the first
//! pickable one in order, waiting while an instance before it is still on its first attempt.

use std::time::{Duration, Instant};

use super::sub::{Link, Role, picked};
use super::{Core, Entry, Io, Order};
use crate::picker::Policy;

/// How `pick_first` connects; see [`Builder::pick_first`](crate::Builder::pick_first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickFirstOptions {
    /// How long an attempt may take before the next instance is tried too: 250 ms (gRFC A61).
    pub attempt_delay: Duration,
    /// Keep a connection to every instance, not only to the chosen one, so that a failover
    /// needs no new connection. Defaults to false (grpc-go's pick_first).
    pub keep_warm: bool,
}

impl Default for PickFirstOptions {
    fn default() -> Self {
        Self {
            attempt_delay: Duration::from_millis(250),
            keep_warm: false,
        }
    }
}

impl<I: Io> Core<I> {
    /// Moves pick_first's pass on after a change or a tick.
    pub(crate) fn pick_first(&mut self, io: &mut I, now: Instant) {
        if self.config.policy != Policy::PickFirst || self.config.pick_first.keep_warm {
            return;
        }
        let still_chosen = self.chosen.is_some_and(|id| {
            self.slots
                .values()
                .flatten()
                .any(|s| s.id == id && s.pickable().is_some())
        });
        if still_chosen {
            self.attempt = None;
            return;
        }
        self.chosen = None;
        let order = self.in_order();
        let current = |subs: &Vec<Entry<I>>, keep: &dyn Fn(&Entry<I>) -> bool| {
            subs.iter()
                .find(|s| s.role == Role::Current && keep(s))
                .map(|s| s.id)
        };
        let first_pickable = order.iter().find_map(|k| {
            current(&self.slots[k.as_str()], &|s: &Entry<I>| {
                s.pickable().is_some()
            })
        });
        if let Some(id) = first_pickable {
            self.chosen = Some(id);
            self.attempt = None;
            self.published.ready_dirty = true;
            for sub in self.slots.values_mut().flatten() {
                if sub.id != id && sub.role == Role::Current && sub.running {
                    sub.running = false;
                    io.order(&sub.io, Order::Idle);
                }
            }
            return;
        }
        // Nothing READY: wait for the last attempt started, until it fails or its delay is over.
        let waiting = self.attempt.is_some_and(|(id, at)| {
            now < at
                && self.slots.values().flatten().any(|s| {
                    s.id == id
                        && s.running
                        && !s.settled
                        && !matches!(s.link, Link::TransientFailure)
                })
        });
        if waiting {
            return;
        }
        let next = order
            .iter()
            .find_map(|k| current(&self.slots[k.as_str()], &|s: &Entry<I>| !s.running));
        let next = next.and_then(|id| self.slots.values_mut().flatten().find(|s| s.id == id));
        match next {
            Some(sub) => {
                sub.running = true;
                // An instance told before to stay idle starts its first attempt again.
                sub.settled = false;
                io.order(&sub.io, Order::Run);
                self.attempt = Some((sub.id, now + self.config.pick_first.attempt_delay));
            }
            None => self.attempt = None,
        }
    }

    /// The keys of the instances with sub-channels, in the resolver's order.
    fn in_order(&self) -> Vec<String> {
        let mut keys: Vec<(u64, &String)> = self
            .slots
            .keys()
            .map(|k| (self.ranks.get(k).copied().unwrap_or(u64::MAX), k))
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// The sub-channel the pick_first picker picks, among the pickable `ids`.
    pub(crate) fn chosen_for_picker(&mut self, ids: &[u64]) -> Option<u64> {
        if !self.config.pick_first.keep_warm {
            return self.chosen.filter(|id| ids.contains(id));
        }
        if let Some(id) = self.chosen.filter(|id| ids.contains(id)) {
            return Some(id);
        }
        // The first pickable in order, unless one before it is still on its first attempt.
        for key in self.in_order() {
            let subs = &self.slots[key.as_str()];
            let current = subs.iter().find(|s| s.role == Role::Current);
            if let Some(id) = picked(subs).map(|s| s.id) {
                self.chosen = Some(id);
                return self.chosen;
            }
            if current.is_some_and(|s| !s.settled) {
                return None;
            }
        }
        None
    }
}
