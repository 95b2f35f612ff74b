//! What the balancer's handles read: the picker snapshot, the channel's state, and a view of
//! the control core's facts for introspection. The picker is read on every RPC with one atomic
//! load; it is written by the core, through the worker, whenever what RPCs are picked from
//! changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::control::Snapshot;
use crate::snapshot::{ChannelSnapshot, SubchannelSnapshot};
use crate::state::ConnectivityState;
use crate::subchannel::{Ready, Room};

/// The facts of every sub-channel, as the control core has them.
pub(crate) trait View: Send + Sync {
    /// Resolver updates applied, and every sub-channel not yet SHUTDOWN.
    fn view(&self) -> (u64, Vec<SubchannelSnapshot>);
}

pub(crate) struct Published<S> {
    pub(crate) target: String,
    picker: ArcSwap<Snapshot<Ready<S>>>,
    generation: AtomicU64,
    changed: Notify,
    state: watch::Sender<ConnectivityState>,
    view: OnceLock<Arc<dyn View>>,
    /// The calls waiting for a free stream.
    pub(crate) room: Arc<Room>,
}

impl<S> Published<S> {
    pub(crate) fn new(target: String) -> Self {
        Self {
            target,
            picker: ArcSwap::from_pointee(Snapshot::Queue),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            state: watch::Sender::new(ConnectivityState::Connecting),
            view: OnceLock::new(),
            room: Arc::default(),
        }
    }

    /// Sets where snapshots read the sub-channels' facts from (once, at start).
    pub(crate) fn set_view(&self, view: Arc<dyn View>) {
        let _ = self.view.set(view);
    }

    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot<Ready<S>>>> {
        self.picker.load()
    }

    /// The generation of the current snapshot: read it before a pick, and pass it to
    /// [`Published::changed_since`] to wait for the next one without missing it.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Publishes a picker snapshot.
    pub(crate) fn store(&self, snapshot: Snapshot<Ready<S>>) {
        self.picker.store(Arc::new(snapshot));
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

    pub(crate) fn snapshot(&self) -> ChannelSnapshot {
        let (updates_applied, subchannels) = self.view.get().map(|v| v.view()).unwrap_or_default();
        ChannelSnapshot {
            target: self.target.clone(),
            state: self.state(),
            picker_generation: self.generation(),
            updates_applied,
            pending_calls: self.room.waiting(),
            subchannels,
            breakers: Vec::new(),
        }
    }
}
