//! The settings of a running balancer, once built.

use std::time::Duration;

use crate::backoff::ConnectBackoff;
use crate::subchannel::Settings;

/// Everything the worker, the core and the sub-channels need.
#[derive(Debug)]
pub(crate) struct Config {
    /// The control core's settings.
    pub(crate) control: std::sync::Arc<crate::control::Config>,
    pub(crate) backoff: ConnectBackoff,
    pub(crate) subchannel: Settings,
    pub(crate) rtt_decay: Duration,
    /// Whether the balancer records its metrics (through the `metrics` facade).
    pub(crate) metrics: bool,
}
