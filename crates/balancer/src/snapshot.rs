//! A channelz-like view of a balancer: its state and, per sub-channel, address, state, call
//! counters and last error. Cheap to take every second.

use serde::Serialize;

use crate::state::ConnectivityState;
use crate::state::Health;

/// The state of a balanced channel and of each of its sub-channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelSnapshot {
    /// What the channel balances over (a service name or an etcd prefix).
    pub target: String,
    /// The aggregate state.
    pub state: ConnectivityState,
    /// How many pickers were published so far: it grows each time the set of sub-channels that
    /// RPCs are sent to changes (or the channel starts queueing or failing them).
    pub picker_generation: u64,
    /// How many resolver updates (`Reset`, `Add`, `Remove`) the balancer has applied: the
    /// sub-channels listed are those after the last of them (draining ones included).
    pub updates_applied: u64,
    /// Calls waiting for a free stream: every READY instance's peer has reached its
    /// `MAX_CONCURRENT_STREAMS`.
    pub pending_calls: usize,
    /// One entry per sub-channel not yet SHUTDOWN (draining ones included), in instance-key
    /// order.
    pub subchannels: Vec<SubchannelSnapshot>,
    /// Each method's breaker, in path order, if the balancer keeps them
    /// ([`crate::Builder::breaker`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakers: Vec<crate::breaker::BreakerSnapshot>,
}

/// One sub-channel's address, state and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubchannelSnapshot {
    /// Its id, unique in the process for its life: a sub-channel kept across resolver updates
    /// keeps it, a new connection to a moved instance gets a new one.
    pub id: u64,
    /// The instance's key in the registry.
    pub key: String,
    /// `host:port`.
    pub addr: String,
    /// Its connectivity state.
    pub state: ConnectivityState,
    /// Its weight for weighted round-robin.
    pub weight: u32,
    /// RPCs sent on it.
    pub calls_started: u64,
    /// RPCs that ended with status OK.
    pub calls_succeeded: u64,
    /// RPCs that ended with another status, failed, or were cancelled.
    pub calls_failed: u64,
    /// RPCs in flight now (streams count until they end).
    pub in_flight: u64,
    /// Connection attempts made.
    pub connects: u64,
    /// When its state last changed, in milliseconds since the Unix epoch.
    pub last_state_change_ms: u64,
    /// The last connection or health-check error, if any.
    pub last_error: Option<String>,
    /// What its health check says (`UNCHECKED` when health checking is off).
    pub health: Health,
    /// Whether outlier detection has ejected it for now.
    pub ejected: bool,
    /// Whether the published picker sends RPCs to it (for `pick_first`, whether it is the one
    /// picked). Its state and health are written before the picker follows them: a sub-channel
    /// READY and SERVING takes calls once this is true.
    pub in_picker: bool,
}

impl ChannelSnapshot {
    /// The sub-channel of the instance at `addr`, if there is one.
    pub fn by_addr(&self, addr: &str) -> Option<&SubchannelSnapshot> {
        self.subchannels.iter().find(|s| s.addr == addr)
    }

    /// How many sub-channels the published picker sends RPCs to.
    pub fn in_picker(&self) -> usize {
        self.subchannels.iter().filter(|s| s.in_picker).count()
    }

    /// How many sub-channels are READY.
    pub fn ready(&self) -> usize {
        self.subchannels
            .iter()
            .filter(|s| s.state == ConnectivityState::Ready)
            .count()
    }
}
