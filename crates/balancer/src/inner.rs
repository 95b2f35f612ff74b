//! State shared by the balancer's handles, its worker and its sub-channels: the picker
//! snapshot, the channel state, and the sub-channel list for introspection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::picker::AnyPicker;
use crate::snapshot::{ChannelSnapshot, SubchannelSnapshot};
use crate::state::ConnectivityState;
use crate::subchannel::{Ready, Shared};

/// What a pick is made from: swapped as a whole whenever the READY set changes.
// Always behind an `Arc`, built once per change of the READY set.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Snapshot<S> {
    /// Some sub-channel is READY.
    Pick(AnyPicker<Ready<S>>),
    /// None is READY yet, but some are connecting: RPCs wait.
    Queue,
    /// None is READY and none is connecting: fail-fast RPCs fail with this status.
    Fail(tonic::Status),
}

pub(crate) struct Inner<S> {
    pub(crate) target: String,
    picker: ArcSwap<Snapshot<S>>,
    generation: AtomicU64,
    changed: Notify,
    state: watch::Sender<ConnectivityState>,
    /// Every sub-channel not yet SHUTDOWN, by instance key and id.
    members: Mutex<BTreeMap<(String, u64), Arc<Shared>>>,
    /// The ids of the sub-channels the published picker picks from, set after it is stored.
    picked: Mutex<Vec<u64>>,
    /// Resolver updates applied so far.
    updates: AtomicU64,
}

impl<S> Inner<S> {
    pub(crate) fn new(target: String) -> Self {
        Self {
            target,
            picker: ArcSwap::from_pointee(Snapshot::Queue),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            state: watch::Sender::new(ConnectivityState::Connecting),
            members: Mutex::new(BTreeMap::new()),
            picked: Mutex::new(Vec::new()),
            updates: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot<S>>> {
        self.picker.load()
    }

    /// The generation of the current snapshot: read it before a pick, and pass it to
    /// [`Inner::changed_since`] to wait for the next one without missing it.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Publishes a picker snapshot that picks from the sub-channels `picked`. The snapshot is
    /// stored before `picked` is recorded, so that whoever sees a sub-channel as picked in
    /// [`Inner::snapshot`] also sees the picker that picks it.
    pub(crate) fn store(&self, snapshot: Snapshot<S>, picked: Vec<u64>) {
        self.picker.store(Arc::new(snapshot));
        *self.picked.lock().unwrap_or_else(|e| e.into_inner()) = picked;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Resolves once a snapshot newer than `generation` is published, or at `deadline`
    /// (returns false then).
    pub(crate) async fn changed_since(&self, generation: u64, deadline: Option<Instant>) -> bool {
        let notified = self.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.generation() != generation {
            return true;
        }
        match deadline {
            Some(deadline) => tokio::select! {
                () = notified => true,
                () = tokio::time::sleep_until(deadline) => false,
            },
            None => {
                notified.await;
                true
            }
        }
    }

    /// Counts a resolver update as applied (its sub-channels created or drained).
    pub(crate) fn update_applied(&self) {
        self.updates.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn state(&self) -> ConnectivityState {
        *self.state.borrow()
    }

    pub(crate) fn set_state(&self, state: ConnectivityState) {
        self.state.send_if_modified(|s| {
            if *s == state {
                return false;
            }
            tracing::debug!(target = %self.target, from = %*s, to = %state, "channel state");
            *s = state;
            true
        });
    }

    pub(crate) fn watch_state(&self) -> watch::Receiver<ConnectivityState> {
        self.state.subscribe()
    }

    pub(crate) fn add_member(&self, member: &Arc<Shared>) {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((member.key.clone(), member.id), member.clone());
    }

    pub(crate) fn remove_member(&self, member: &Shared) {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(member.key.clone(), member.id));
    }

    pub(crate) fn snapshot(&self) -> ChannelSnapshot {
        let generation = self.generation();
        let updates_applied = self.updates.load(Ordering::Acquire);
        let picked = self
            .picked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let members: Vec<Arc<Shared>> = self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let subchannels = members
            .iter()
            .map(|m| {
                let info = m.info();
                SubchannelSnapshot {
                    id: m.id,
                    key: m.key.clone(),
                    addr: m.addr.clone(),
                    state: info.state,
                    weight: m.weight.load(Ordering::Relaxed),
                    calls_started: m.started.load(Ordering::Relaxed),
                    calls_succeeded: m.succeeded.load(Ordering::Relaxed),
                    calls_failed: m.failed.load(Ordering::Relaxed),
                    in_flight: m.in_flight.load(Ordering::Relaxed),
                    connects: info.connects,
                    last_state_change_ms: info
                        .since
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    last_error: info.last_error,
                    health: info.health,
                    ejected: m.ejected.load(Ordering::Relaxed),
                    in_picker: picked.contains(&m.id),
                }
            })
            .collect();
        ChannelSnapshot {
            target: self.target.clone(),
            state: self.state(),
            picker_generation: generation,
            updates_applied,
            subchannels,
        }
    }
}
