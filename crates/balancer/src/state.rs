//! gRPC connectivity states, the transitions between them, and the state of a whole channel.
//!
//! The states and the allowed transitions are those of gRPC's
//! [connectivity semantics](https://github.com/grpc/grpc/blob/master/doc/connectivity-semantics-and-api.md):
//!
//! | from \ to         | IDLE | CONNECTING | READY | TRANSIENT_FAILURE | SHUTDOWN |
//! |-------------------|------|------------|-------|-------------------|----------|
//! | IDLE              |      | yes        |       |                   | yes      |
//! | CONNECTING        | yes  | yes        | yes   | yes               | yes      |
//! | READY             | yes  |            | yes   | yes               | yes      |
//! | TRANSIENT_FAILURE |      | yes        |       |                   | yes      |
//! | SHUTDOWN          |      |            |       |                   |          |

use std::fmt;

/// The connectivity state of a sub-channel or of a whole channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectivityState {
    /// Not connected and not trying to.
    Idle,
    /// Establishing a connection: TCP, TLS, the HTTP/2 preface and the server's SETTINGS.
    Connecting,
    /// Connected: RPCs can be sent.
    Ready,
    /// The last attempt failed; the next one starts when the backoff delay is over.
    TransientFailure,
    /// Closed for good.
    Shutdown,
}

impl ConnectivityState {
    /// Every state, in declaration order.
    pub const ALL: [Self; 5] = [
        Self::Idle,
        Self::Connecting,
        Self::Ready,
        Self::TransientFailure,
        Self::Shutdown,
    ];

    /// Whether gRPC's connectivity semantics allow going from `self` to `next`.
    ///
    /// ```
    /// use switchboard_balancer::ConnectivityState::*;
    ///
    /// assert!(Connecting.can_become(Ready));
    /// assert!(!TransientFailure.can_become(Ready)); // only through CONNECTING
    /// assert!(!Shutdown.can_become(Idle));
    /// ```
    pub const fn can_become(self, next: ConnectivityState) -> bool {
        use ConnectivityState::*;
        matches!(
            (self, next),
            (Idle, Connecting | Shutdown)
                | (
                    Connecting,
                    Idle | Connecting | Ready | TransientFailure | Shutdown
                )
                | (Ready, Idle | Ready | TransientFailure | Shutdown)
                | (TransientFailure, Connecting | Shutdown)
        )
    }

    /// The state of a channel made of sub-channels in `states`: READY if any is READY, else
    /// CONNECTING if any is, else IDLE if any is, else TRANSIENT_FAILURE (also when there are
    /// none). SHUTDOWN sub-channels do not count.
    pub fn aggregate(states: impl IntoIterator<Item = ConnectivityState>) -> ConnectivityState {
        let (mut connecting, mut idle) = (false, false);
        for state in states {
            match state {
                ConnectivityState::Ready => return ConnectivityState::Ready,
                ConnectivityState::Connecting => connecting = true,
                ConnectivityState::Idle => idle = true,
                ConnectivityState::TransientFailure | ConnectivityState::Shutdown => {}
            }
        }
        if connecting {
            ConnectivityState::Connecting
        } else if idle {
            ConnectivityState::Idle
        } else {
            ConnectivityState::TransientFailure
        }
    }

    /// The name gRPC uses: `IDLE`, `CONNECTING`, `READY`, `TRANSIENT_FAILURE`, `SHUTDOWN`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectivityState::Idle => "IDLE",
            ConnectivityState::Connecting => "CONNECTING",
            ConnectivityState::Ready => "READY",
            ConnectivityState::TransientFailure => "TRANSIENT_FAILURE",
            ConnectivityState::Shutdown => "SHUTDOWN",
        }
    }
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the health check says of a sub-channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Health checking is off: READY is enough.
    Unchecked,
    /// Checking, with no answer yet (or the Watch is being opened again): not picked.
    Unknown,
    /// The server says SERVING: picked.
    Serving,
    /// The server says anything else, or its Watch failed: not picked.
    NotServing,
}

impl Health {
    /// Whether a READY sub-channel with this health may be picked.
    #[inline]
    pub fn is_pickable(self) -> bool {
        matches!(self, Self::Unchecked | Self::Serving)
    }

    /// Its name: `UNCHECKED`, `UNKNOWN`, `SERVING`, `NOT_SERVING`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "UNCHECKED",
            Self::Unknown => "UNKNOWN",
            Self::Serving => "SERVING",
            Self::NotServing => "NOT_SERVING",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectivityState::{self, *};

    const ALL: [ConnectivityState; 5] = [Idle, Connecting, Ready, TransientFailure, Shutdown];

    #[test]
    fn every_transition_is_allowed_or_not_as_the_spec_says() {
        let allowed = [
            (Idle, Connecting),
            (Idle, Shutdown),
            (Connecting, Idle),
            (Connecting, Connecting),
            (Connecting, Ready),
            (Connecting, TransientFailure),
            (Connecting, Shutdown),
            (Ready, Idle),
            (Ready, Ready),
            (Ready, TransientFailure),
            (Ready, Shutdown),
            (TransientFailure, Connecting),
            (TransientFailure, Shutdown),
        ];
        for from in ALL {
            for to in ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn aggregate_prefers_ready_then_connecting_then_idle() {
        let agg = |s: &[ConnectivityState]| ConnectivityState::aggregate(s.iter().copied());
        assert_eq!(agg(&[]), TransientFailure);
        assert_eq!(agg(&[Shutdown]), TransientFailure);
        assert_eq!(agg(&[TransientFailure, Idle]), Idle);
        assert_eq!(agg(&[Idle, Connecting, TransientFailure]), Connecting);
        assert_eq!(agg(&[Connecting, Ready, TransientFailure]), Ready);
        assert_eq!(agg(&[TransientFailure, TransientFailure]), TransientFailure);
    }

    #[test]
    fn names_are_grpc_names() {
        assert_eq!(TransientFailure.to_string(), "TRANSIENT_FAILURE");
        assert_eq!(
            serde_json::to_string(&TransientFailure).ok().as_deref(),
            Some("\"TRANSIENT_FAILURE\"")
        );
    }
}
