//! What the control core knows of one sub-channel: its connection's state machine, its role
//! (serving, retired after a move, draining), its health and its ejection, as enums that carry
//! their data.

use std::time::Instant;

use crate::control::outlier::Tracker;
use crate::state::{ConnectivityState, Health};

/// The state of a sub-channel's connection, as its task reports it.
#[derive(Debug)]
pub(crate) enum Link<R> {
    /// Not connected and not trying to: new, told to stay idle (pick_first), or its
    /// connection ended with a GOAWAY.
    Idle,
    /// An attempt is under way.
    Connecting,
    /// Connected: `conn` is what pickers hold; `health` is what the health check says of it.
    Ready { conn: R, health: Health },
    /// The last attempt failed; the next starts after the backoff.
    TransientFailure,
    /// Closed for good.
    Shutdown,
}

impl<R> Link<R> {
    pub(crate) fn state(&self) -> ConnectivityState {
        match self {
            Link::Idle => ConnectivityState::Idle,
            Link::Connecting => ConnectivityState::Connecting,
            Link::Ready { .. } => ConnectivityState::Ready,
            Link::TransientFailure => ConnectivityState::TransientFailure,
            Link::Shutdown => ConnectivityState::Shutdown,
        }
    }
}

/// What a sub-channel is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The sub-channel of its instance's current address.
    Current,
    /// Its instance moved: it serves until the new address is READY, at most until `by`, and
    /// never connects again.
    Retired { by: Instant },
    /// Its instance left (or it was replaced): it takes no new RPC and closes once those in
    /// flight are done, by `by` if it was retired first, else within the drain timeout.
    Draining { by: Option<Instant> },
}

/// One sub-channel: the facts the core owns, and the handle of its task (`io`).
#[derive(Debug)]
pub(crate) struct Sub<H, R> {
    pub(crate) id: u64,
    pub(crate) addr: String,
    pub(crate) weight: u32,
    /// The zone its registration names, if any (for locality preference).
    pub(crate) zone: Option<String>,
    pub(crate) io: H,
    pub(crate) role: Role,
    pub(crate) link: Link<R>,
    /// Told to connect (always, except for pick_first's instances not tried yet).
    pub(crate) running: bool,
    /// It failed and has not been READY since: the aggregate counts it as failing while it
    /// tries again, as gRPC's balancers keep TRANSIENT_FAILURE sticky.
    pub(crate) failing: bool,
    /// Its first connection attempt is over (it was READY or failed at least once).
    pub(crate) settled: bool,
    /// Its outlier-detection state (gRFC A50).
    pub(crate) outlier: Tracker,
    /// When its state last changed.
    pub(crate) since: Instant,
    pub(crate) last_error: Option<String>,
    /// Connection attempts so far.
    pub(crate) connects: u64,
}

impl<H, R> Sub<H, R> {
    /// The health of its connection: `Unchecked` or `Unknown` while not READY, by whether
    /// health checking is on.
    pub(crate) fn health(&self, checked: bool) -> Health {
        match &self.link {
            Link::Ready { health, .. } => *health,
            _ if checked => Health::Unknown,
            _ => Health::Unchecked,
        }
    }

    /// Its connection, if it may be picked: READY, healthy, not ejected, not draining.
    pub(crate) fn pickable(&self) -> Option<&R> {
        match (&self.link, self.role) {
            (_, Role::Draining { .. }) => None,
            (Link::Ready { conn, health }, _)
                if health.is_pickable() && !self.outlier.is_ejected() =>
            {
                Some(conn)
            }
            _ => None,
        }
    }

    /// Its state as the channel's aggregate sees it: a READY connection whose health check
    /// has not answered yet counts as CONNECTING, an unhealthy or ejected one as
    /// TRANSIENT_FAILURE (gRFC A17 and A50), and one that failed and is trying again as
    /// TRANSIENT_FAILURE until it is READY (sticky TRANSIENT_FAILURE).
    pub(crate) fn effective_state(&self) -> ConnectivityState {
        match &self.link {
            Link::Connecting | Link::Idle if self.failing => ConnectivityState::TransientFailure,
            Link::Ready { .. } if self.outlier.is_ejected() => ConnectivityState::TransientFailure,
            Link::Ready { health, .. } => match health {
                Health::Unknown => ConnectivityState::Connecting,
                Health::NotServing => ConnectivityState::TransientFailure,
                Health::Unchecked | Health::Serving => ConnectivityState::Ready,
            },
            link => link.state(),
        }
    }
}

/// The sub-channel of one instance that RPCs go to: its current one if it may be picked, else,
/// while the current one is not READY after a move, its retired one.
pub(crate) fn picked<H, R>(subs: &[Sub<H, R>]) -> Option<&Sub<H, R>> {
    let with = |role: fn(Role) -> bool| subs.iter().filter(move |s| role(s.role));
    with(|r| r == Role::Current)
        .chain(with(|r| matches!(r, Role::Retired { .. })))
        .find(|s| s.pickable().is_some())
}
