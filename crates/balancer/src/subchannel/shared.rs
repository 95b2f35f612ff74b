//! What the call path, the pickers and a sub-channel's task share of one sub-channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    /// The channel's per-call metrics: one set per target, shared by its sub-channels.
    pub(crate) metrics: Arc<SubMetrics>,
    pub(crate) draining: AtomicBool,
    pub(crate) idle: Notify,
    /// The channel's calls waiting for a free stream: told when this one's call ends.
    pub(crate) room: Arc<Room>,
}

/// The calls of one channel that wait for a free stream, every sub-channel's peer having
/// reached its `MAX_CONCURRENT_STREAMS`: a count, bounded, and a FIFO of wakers, one woken each
/// time a call ends anywhere while some wait.
#[derive(Debug, Default)]
pub(crate) struct Room {
    pub(crate) waiting: AtomicUsize,
    pub(crate) freed: Notify,
}

impl Room {
    /// Counts one more waiting call, unless `max` already wait.
    pub(crate) fn enter(&self, max: usize) -> Option<Waiting<'_>> {
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(self))
    }

    /// How many calls wait now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One waiting call: no longer counted once dropped (served, expired or cancelled).
#[derive(Debug)]
pub(crate) struct Waiting<'a>(&'a Room);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub(crate) fn new(
        id: u64,
        metrics: Arc<SubMetrics>,
        key: Arc<str>,
        addr: String,
        weight: u32,
        rtt_decay: Duration,
        room: Arc<Room>,
    ) -> Self {
        Self {
            metrics,
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
            room,
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

    /// One more RPC in flight, whatever the limit.
    #[cfg(test)]
    pub(crate) fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.metrics.picked();
    }

    /// One more RPC in flight if fewer than `limit` are (the peer's `MAX_CONCURRENT_STREAMS`);
    /// `false` if the connection has no free stream.
    #[inline]
    pub(crate) fn try_call_started(&self, limit: usize) -> bool {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let taken = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.started.fetch_add(1, Ordering::Relaxed);
            self.metrics.picked();
        }
        taken
    }

    /// Whether fewer than `limit` RPCs are in flight.
    #[inline]
    pub(crate) fn has_room(&self, limit: usize) -> bool {
        usize::try_from(self.in_flight.load(Ordering::SeqCst)).is_ok_and(|n| n < limit)
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
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.draining.load(Ordering::SeqCst)
        {
            self.idle.notify_one();
        }
        if self.room.waiting.load(Ordering::SeqCst) > 0 {
            self.room.freed.notify_one();
        }
    }
}

/// A READY connection of a sub-channel, as pickers see it.
#[derive(Debug)]
pub(crate) struct ReadyConn<S> {
    pub(crate) sub: Arc<Shared>,
    pub(crate) sender: S,
    /// `https` over TLS.
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: Authority,
    /// The streams the peer allows at once (its `MAX_CONCURRENT_STREAMS`).
    pub(crate) max_streams: Arc<AtomicUsize>,
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

    #[inline]
    fn peak_ewma(&self) -> Option<&PeakEwma> {
        Some(&self.0.sub.rtt)
    }

    fn key(&self) -> &str {
        &self.0.sub.key
    }

    fn addr(&self) -> &str {
        &self.0.sub.addr
    }
}
