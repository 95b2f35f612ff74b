//! Metrics, through the `metrics` crate's facade: whatever recorder the application installs
//! (a Prometheus exporter, statsd, …) receives them; without one they cost next to nothing.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `switchboard_picks_total` | counter | target | RPCs sent |
//! | `switchboard_rpcs_total` | counter | target, code | RPC results by gRPC status code |
//! | `switchboard_rpc_duration_seconds` | histogram | target | from the pick to the end of the response |
//! | `switchboard_subchannel_transitions_total` | counter | target, state | state changes, by the state entered |
//! | `switchboard_subchannels` | gauge | target, state | sub-channels per state (health and ejection included) |
//! | `switchboard_reconnects_total` | counter | target | connection attempts after the first |
//! | `switchboard_health_changes_total` | counter | target, health | health-check results that changed an instance's health |
//! | `switchboard_ejections_total` | counter | target | outlier-detection ejections |
//! | `switchboard_resolver_updates_total` | counter | target, kind | resolver updates applied (`reset`, `add`, `remove`) |
//! | `switchboard_instances` | gauge | target | instances in the resolved set |
//! | `switchboard_resolver_connected` | gauge | target | 1 while the resolver's watch (etcd) is live |
//! | `switchboard_resolver_errors_total` | counter | target | resolver errors (etcd unreachable, watch lost, …) |
//! | `switchboard_breaker_requests_total` | counter | target, method, result | unary RPCs seen by a method's breaker ([`crate::breaker`]): `success`, `failure` or `drop` |
//!
//! The registrar's metrics (`switchboard_registrar_*`) are listed in `switchboard-resolver`.
//!
//! No series above has a label per instance: instances come and go (10 000 churned addresses
//! would leave 10 000 dead series behind, as the facade cannot remove a series). The
//! per-instance figures are rendered instead from the live sub-channels by [`render_instances`],
//! so an instance's series go when it does:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `switchboard_instance_calls_started_total` | counter | target, instance, key | RPCs sent to the instance |
//! | `switchboard_instance_calls_succeeded_total` | counter | target, instance, key | RPCs that ended with OK |
//! | `switchboard_instance_calls_failed_total` | counter | target, instance, key | RPCs that ended otherwise |
//! | `switchboard_instance_in_flight` | gauge | target, instance, key | RPCs in flight |
//! | `switchboard_instance_connects_total` | counter | target, instance, key | connection attempts |
//! | `switchboard_instance_ready` | gauge | target, instance, key | 1 while its connection is READY |
//! | `switchboard_instance_in_picker` | gauge | target, instance, key | 1 while RPCs are sent to it |
//! | `switchboard_instance_ejected` | gauge | target, instance, key | 1 while outlier detection ejects it |

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
use tonic::Code;

use crate::snapshot::{ChannelSnapshot, SubchannelSnapshot};

/// The per-call metrics of one sub-channel, registered once.
pub(crate) struct SubMetrics {
    /// `None` with metrics off: nothing is recorded.
    target: Option<Arc<str>>,
    picks: Counter,
    duration: Histogram,
    /// `switchboard_rpcs_total` per status code, registered on first use.
    results: [OnceLock<Counter>; 17],
}

impl std::fmt::Debug for SubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubMetrics")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl SubMetrics {
    pub(crate) fn new(target: &str, enabled: bool) -> Self {
        if !enabled {
            return Self {
                target: None,
                picks: Counter::noop(),
                duration: Histogram::noop(),
                results: Default::default(),
            };
        }
        let labels = [("target", target.to_owned())];
        Self {
            target: Some(target.into()),
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
        let Some(target) = &self.target else {
            return;
        };
        self.duration.record(took.as_secs_f64());
        let index = (code as i32).clamp(0, 16) as usize;
        self.results[index]
            .get_or_init(|| {
                counter!(
                    "switchboard_rpcs_total",
                    "target" => target.to_string(),
                    "code" => code_name(code),
                )
            })
            .increment(1);
    }

    pub(crate) fn transition(&self, state: &'static str) {
        if let Some(target) = &self.target {
            counter!(
                "switchboard_subchannel_transitions_total",
                "target" => target.to_string(),
                "state" => state,
            )
            .increment(1);
        }
    }

    pub(crate) fn reconnect(&self) {
        if let Some(target) = &self.target {
            counter!("switchboard_reconnects_total", "target" => target.to_string()).increment(1);
        }
    }

    pub(crate) fn health(&self, health: &'static str) {
        if let Some(target) = &self.target {
            counter!(
                "switchboard_health_changes_total",
                "target" => target.to_string(),
                "health" => health,
            )
            .increment(1);
        }
    }

    pub(crate) fn ejected(&self) {
        if let Some(target) = &self.target {
            counter!("switchboard_ejections_total", "target" => target.to_string()).increment(1);
        }
    }
}

/// The per-instance figures of `channels`' live sub-channels, in Prometheus' text format (see
/// the [module docs](self)): append them to what the facade's exporter renders.
///
/// ```
/// # fn run(channel: &switchboard_balancer::Balancer, facade: String) {
/// let mut text = facade;
/// text.push_str(&switchboard_balancer::metrics::render_instances(&[channel.snapshot()]));
/// # }
/// ```
pub fn render_instances(channels: &[ChannelSnapshot]) -> String {
    type Figure = fn(&SubchannelSnapshot) -> u64;
    const FIGURES: [(&str, &str, &str, Figure); 8] = [
        (
            "switchboard_instance_calls_started_total",
            "counter",
            "RPCs sent to the instance",
            |s| s.calls_started,
        ),
        (
            "switchboard_instance_calls_succeeded_total",
            "counter",
            "RPCs that ended with OK",
            |s| s.calls_succeeded,
        ),
        (
            "switchboard_instance_calls_failed_total",
            "counter",
            "RPCs that ended otherwise",
            |s| s.calls_failed,
        ),
        (
            "switchboard_instance_in_flight",
            "gauge",
            "RPCs in flight",
            |s| s.in_flight,
        ),
        (
            "switchboard_instance_connects_total",
            "counter",
            "connection attempts",
            |s| s.connects,
        ),
        (
            "switchboard_instance_ready",
            "gauge",
            "1 while its connection is READY",
            |s| u64::from(s.state == crate::ConnectivityState::Ready),
        ),
        (
            "switchboard_instance_in_picker",
            "gauge",
            "1 while RPCs are sent to it",
            |s| u64::from(s.in_picker),
        ),
        (
            "switchboard_instance_ejected",
            "gauge",
            "1 while outlier detection ejects it",
            |s| u64::from(s.ejected),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, figure) in FIGURES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for channel in channels {
            for sub in &channel.subchannels {
                let _ = writeln!(
                    out,
                    "{name}{{target=\"{}\",instance=\"{}\",key=\"{}\"}} {}",
                    escape(&channel.target),
                    escape(&sub.addr),
                    escape(&sub.key),
                    figure(sub)
                );
            }
        }
    }
    out
}

/// A label value escaped as Prometheus' text format wants: `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gRPC name of a status code, as in `grpc-status` docs: `OK`, `UNAVAILABLE`, …
/// The name of `code` as gRPC writes it (`OK`, `UNAVAILABLE`, …): the `code` label's value.
pub fn code_name(code: Code) -> &'static str {
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
