//! Metrics, through the `metrics` crate's facade: whatever recorder the application installs
//! (a Prometheus exporter, statsd, …) receives them; without one they cost next to nothing.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `switchboard_picks_total` | counter | target, instance | RPCs sent to the instance |
//! | `switchboard_rpcs_total` | counter | target, instance, code | RPC results by gRPC status code |
//! | `switchboard_rpc_duration_seconds` | histogram | target, instance | from the pick to the end of the response |
//! | `switchboard_subchannel_transitions_total` | counter | target, instance, state | state changes, by the state entered |
//! | `switchboard_subchannels` | gauge | target, state | sub-channels per state (health and ejection included) |
//! | `switchboard_reconnects_total` | counter | target, instance | connection attempts after the first |
//! | `switchboard_health_changes_total` | counter | target, instance, health | health-check results that changed the instance's health |
//! | `switchboard_ejections_total` | counter | target, instance | outlier-detection ejections |
//! | `switchboard_resolver_updates_total` | counter | target, kind | resolver updates applied (`reset`, `add`, `remove`) |
//! | `switchboard_instances` | gauge | target | instances in the resolved set |
//! | `switchboard_resolver_connected` | gauge | target | 1 while the resolver's watch (etcd) is live |
//! | `switchboard_resolver_errors_total` | counter | target | resolver errors (etcd unreachable, watch lost, …) |
//!
//! The registrar's metrics (`switchboard_registrar_*`) are listed in `switchboard-resolver`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
use tonic::Code;

/// The per-call metrics of one sub-channel, registered once.
pub(crate) struct SubMetrics {
    target: Arc<str>,
    instance: Arc<str>,
    picks: Counter,
    duration: Histogram,
    /// `switchboard_rpcs_total` per status code, registered on first use.
    results: [OnceLock<Counter>; 17],
}

impl std::fmt::Debug for SubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubMetrics")
            .field("target", &self.target)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl SubMetrics {
    pub(crate) fn new(target: &str, instance: &str) -> Self {
        let labels = [
            ("target", target.to_owned()),
            ("instance", instance.to_owned()),
        ];
        Self {
            target: target.into(),
            instance: instance.into(),
            picks: counter!("switchboard_picks_total", &labels),
            duration: histogram!("switchboard_rpc_duration_seconds", &labels),
            results: Default::default(),
        }
    }

    #[inline]
    pub(crate) fn picked(&self) {
        self.picks.increment(1);
    }

    #[inline]
    pub(crate) fn ended(&self, code: Code, took: Duration) {
        self.duration.record(took.as_secs_f64());
        let index = (code as i32).clamp(0, 16) as usize;
        self.results[index]
            .get_or_init(|| {
                counter!(
                    "switchboard_rpcs_total",
                    "target" => self.target.to_string(),
                    "instance" => self.instance.to_string(),
                    "code" => code_name(code),
                )
            })
            .increment(1);
    }

    pub(crate) fn transition(&self, state: &'static str) {
        counter!(
            "switchboard_subchannel_transitions_total",
            "target" => self.target.to_string(),
            "instance" => self.instance.to_string(),
            "state" => state,
        )
        .increment(1);
    }

    pub(crate) fn reconnect(&self) {
        counter!(
            "switchboard_reconnects_total",
            "target" => self.target.to_string(),
            "instance" => self.instance.to_string(),
        )
        .increment(1);
    }

    pub(crate) fn health(&self, health: &'static str) {
        counter!(
            "switchboard_health_changes_total",
            "target" => self.target.to_string(),
            "instance" => self.instance.to_string(),
            "health" => health,
        )
        .increment(1);
    }

    pub(crate) fn ejected(&self) {
        counter!(
            "switchboard_ejections_total",
            "target" => self.target.to_string(),
            "instance" => self.instance.to_string(),
        )
        .increment(1);
    }
}

/// The gRPC name of a status code, as in `grpc-status` docs: `OK`, `UNAVAILABLE`, …
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
