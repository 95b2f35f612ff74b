//! What the core publishes: the channel's state and what RPCs are picked from, computed from
//! the sub-channels' facts whenever they change; and the introspection view of those facts.

use std::time::Instant;

use tracing::debug;

use super::Entry;
use super::sub::{Role, Sub, picked};
use super::{Core, Io};
use crate::picker::{AnyPicker, Custom, Endpoint, LeastRequest, PickFirst, Policy, RingHash};
use crate::snapshot::SubchannelSnapshot;
use crate::state::ConnectivityState;

/// What a pick is made from: swapped as a whole whenever the picked set changes.
// Always behind an `Arc`, built once per change of the picked set.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Snapshot<R> {
    /// Some sub-channel is READY.
    Pick(AnyPicker<R>),
    /// None is READY yet, but some are connecting: RPCs wait.
    Queue,
    /// None is READY and every one has failed: fail-fast RPCs fail with this status.
    Fail(tonic::Status),
}

/// One publication of the core.
pub(crate) struct Publication<R> {
    /// The channel's aggregate state.
    pub(crate) state: ConnectivityState,
    /// A new picker snapshot, when what RPCs are picked from changed.
    pub(crate) snapshot: Option<Snapshot<R>>,
    /// Sub-channels per effective state, indexed by `ConnectivityState as usize`.
    pub(crate) counts: [u32; 5],
    /// Instances in the resolved set.
    pub(crate) instances: usize,
}

/// What was published last, and whether it must be computed again.
#[derive(Default)]
pub(crate) struct Published {
    /// Some fact changed: the state may have.
    pub(crate) dirty: bool,
    /// The set of pickable sub-channels may have changed: the picker must be built again.
    pub(crate) ready_dirty: bool,
    state: Option<ConnectivityState>,
    picking: bool,
    /// The ids of the sub-channels the published picker picks from.
    picked: Vec<u64>,
}

impl<I: Io> Core<I> {
    /// Publishes the state and the picker if they may have changed since the last time.
    pub(crate) fn publish(&mut self, io: &mut I) {
        if !self.published.dirty && !self.published.ready_dirty {
            return;
        }
        self.published.dirty = false;
        let state = if self.closed {
            ConnectivityState::Shutdown
        } else if !self.resolved {
            ConnectivityState::Connecting
        } else {
            ConnectivityState::aggregate(self.serving().map(Sub::effective_state))
        };
        let ready_dirty = std::mem::take(&mut self.published.ready_dirty);
        let snapshot = match state {
            ConnectivityState::Ready if ready_dirty || !self.published.picking => {
                Some(self.build_picker())
            }
            ConnectivityState::Ready => None,
            ConnectivityState::TransientFailure | ConnectivityState::Shutdown => {
                let status = if self.closed {
                    let target = &self.config.target;
                    tonic::Status::unavailable(format!("the channel to {target} is closed"))
                } else {
                    tonic::Status::unavailable(self.failure())
                };
                self.published.picked.clear();
                Some(Snapshot::Fail(status))
            }
            _ if self.published.picking || ready_dirty || self.published.state != Some(state) => {
                self.published.picked.clear();
                Some(Snapshot::Queue)
            }
            _ => None,
        };
        if let Some(s) = &snapshot {
            self.published.picking = matches!(s, Snapshot::Pick(_));
        }
        self.published.state = Some(state);
        let mut counts = [0u32; 5];
        for sub in self.serving() {
            counts[sub.effective_state() as usize] += 1;
        }
        io.publish(Publication {
            state,
            snapshot,
            counts,
            instances: self.instances.len(),
        });
    }

    /// Every sub-channel that is not draining.
    fn serving(&self) -> impl Iterator<Item = &Entry<I>> {
        self.slots
            .values()
            .flatten()
            .filter(|s| !matches!(s.role, Role::Draining { .. }))
    }

    /// The picker over the pickable sub-channels, one per instance (its current address, or
    /// while that is not READY yet, its retired one), in key order; with a zone preferred,
    /// those of the zone while enough of them are pickable.
    fn build_picker(&mut self) -> Snapshot<I::Ready> {
        let mut ready: Vec<(u64, bool, I::Ready)> = Vec::new();
        let (mut local_total, mut local_pickable) = (0, 0);
        let zone = self.config.locality.as_ref().map(|l| l.zone.as_str());
        for subs in self.slots.values() {
            let is_local = |s: &Entry<I>| zone.is_some() && s.zone.as_deref() == zone;
            if subs.iter().any(|s| s.role == Role::Current && is_local(s)) {
                local_total += 1;
            }
            let pickable =
                picked(subs).and_then(|s| s.pickable().map(|c| (s.id, is_local(s), c.clone())));
            if let Some(entry) = pickable {
                local_pickable += usize::from(entry.1);
                ready.push(entry);
            }
        }
        if let Some(locality) = &self.config.locality {
            if locality.stays_local(local_pickable, local_total) {
                ready.retain(|(_, local, _)| *local);
            }
        }
        let (mut ids, mut ready): (Vec<u64>, Vec<I::Ready>) =
            ready.into_iter().map(|(id, _, conn)| (id, conn)).unzip();
        let seed = self.random();
        let config = &self.config;
        let picker = match (&config.custom, config.policy) {
            (Some(custom), _) => AnyPicker::Custom(Custom::new(&*custom.0, ready, seed)),
            (None, Policy::PickFirst) => {
                let Some(chosen) = self.chosen_for_picker(&ids) else {
                    self.published.picked.clear();
                    return Snapshot::Queue;
                };
                let i = ids.iter().position(|id| *id == chosen).unwrap_or(0);
                ids = vec![chosen];
                AnyPicker::PickFirst(PickFirst::new(vec![ready.swap_remove(i)], |_| true))
            }
            (None, Policy::LeastRequest) => {
                AnyPicker::LeastRequest(LeastRequest::new(ready, seed, config.choice_count))
            }
            (None, Policy::RingHash) => AnyPicker::RingHash(RingHash::new(
                ready,
                seed,
                |e| (e.key(), e.weight()),
                config.ring.0,
                config.ring.1,
            )),
            (None, policy) => policy.build(ready, seed, |_| false),
        };
        debug!(target = %self.config.target, ready = ids.len(), "new picker");
        self.published.picked = ids;
        Snapshot::Pick(picker)
    }

    /// Why no RPC can be sent now.
    pub(crate) fn failure(&self) -> String {
        let target = &self.config.target;
        if self.serving().next().is_none() {
            return match &self.resolver_error {
                Some(e) => format!("no instances of {target} (resolver: {e})"),
                None => format!("no instances of {target}"),
            };
        }
        match &self.last_error {
            Some(e) => format!("no READY instance of {target}; last connection error: {e}"),
            None => format!("no READY instance of {target}"),
        }
    }

    /// The facts of every sub-channel not yet SHUTDOWN, in key order; `wall` turns a time into
    /// milliseconds since the Unix epoch.
    pub(crate) fn subchannels(&self, wall: impl Fn(Instant) -> u64) -> Vec<SubchannelSnapshot> {
        let checked = self.config.health_checked;
        let mut all = Vec::new();
        for (key, subs) in &self.slots {
            for sub in subs {
                let calls = I::calls(&sub.io);
                all.push(SubchannelSnapshot {
                    id: sub.id,
                    key: key.clone(),
                    addr: sub.addr.clone(),
                    state: sub.link.state(),
                    weight: sub.weight,
                    calls_started: calls.started,
                    calls_succeeded: calls.succeeded,
                    calls_failed: calls.failed,
                    in_flight: calls.in_flight,
                    connects: sub.connects,
                    last_state_change_ms: wall(sub.since),
                    last_error: sub.last_error.clone(),
                    health: sub.health(checked),
                    ejected: sub.outlier.is_ejected(),
                    in_picker: self.published.picking && self.published.picked.contains(&sub.id),
                });
            }
        }
        all
    }

    /// Resolver updates applied so far.
    pub(crate) fn updates(&self) -> u64 {
        self.updates
    }
}
