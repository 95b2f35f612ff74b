//! What the call path, the pickers and a sub-channel's task share of one sub-channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::uri::Authority;
use tokio::sync::Notify;

use crate::control::Calls;
use crate::metrics::SubMetrics;
use crate::picker::{Endpoint, PeakEwma};

/// What the call path and the sub-channel's task share: its identity and its counters,
/// updated on the call path with relaxed atomics. Its state and every other fact are the
/// control core's.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) key: Arc<str>,
    pub(crate) addr: String,
    pub(crate) weight: AtomicU32,
    pub(crate) started: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) rtt: PeakEwma,
    pub(crate) metrics: SubMetrics,
    pub(crate) draining: AtomicBool,
    pub(crate) idle: Notify,
}

impl Shared {
    pub(crate) fn new(
        id: u64,
        target: &str,
        key: Arc<str>,
        addr: String,
        weight: u32,
        rtt_decay: Duration,
    ) -> Self {
        Self {
            metrics: SubMetrics::new(target),
            id,
            key,
            addr,
            weight: AtomicU32::new(weight.max(1)),
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            rtt: PeakEwma::new(rtt_decay),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    /// Its RPC counters.
    pub(crate) fn calls(&self) -> Calls {
        Calls {
            started: self.started.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    /// One more RPC in flight.
    #[inline]
    pub(crate) fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.metrics.picked();
    }

    /// An RPC is done: with its status code and how long it took, or `None` if it was never
    /// sent (it does not count then).
    #[inline]
    pub(crate) fn call_ended(&self, result: Option<(tonic::Code, Duration)>) {
        match result {
            Some((code, took)) => {
                if code == tonic::Code::Ok {
                    self.succeeded.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                self.metrics.ended(code, took);
            }
            None => {
                self.started.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && self.draining.load(Ordering::Acquire)
        {
            self.idle.notify_one();
        }
    }
}

/// A READY connection of a sub-channel, as pickers see it.
#[derive(Debug)]
pub(crate) struct ReadyConn<S> {
    pub(crate) sub: Arc<Shared>,
    pub(crate) sender: S,
    pub(crate) authority: Authority,
}

/// A cheap handle on a READY connection: what picker snapshots hold.
#[derive(Debug)]
pub(crate) struct Ready<S>(pub(crate) Arc<ReadyConn<S>>);

impl<S> Clone for Ready<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Send + Sync> Endpoint for Ready<S> {
    #[inline]
    fn in_flight(&self) -> u64 {
        self.0.sub.in_flight.load(Ordering::Relaxed)
    }

    #[inline]
    fn weight(&self) -> u32 {
        self.0.sub.weight.load(Ordering::Relaxed)
    }

    #[inline]
    fn rtt_estimate(&self, now: std::time::Instant) -> Option<f64> {
        self.0.sub.rtt.estimate(now)
    }

    fn key(&self) -> &str {
        &self.0.sub.key
    }

    fn addr(&self) -> &str {
        &self.0.sub.addr
    }
}
