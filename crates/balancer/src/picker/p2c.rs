//! `p2c`: the power of two choices, by in-flight RPCs or by peak-EWMA latency.
//!
//! Choosing the least-loaded of *all* endpoints needs a scan (or a heap kept under a lock) and
//! herds every client onto the same idle endpoint. Choosing *one* at random ignores load. Drawing
//! *two* at random and keeping the less loaded gets almost all of the benefit of the full scan at
//! the cost of one random draw: with `n` endpoints the maximum load drops from
//! `Θ(log n / log log n)` to `Θ(log log n)` (Mitzenmacher, "The Power of Two Choices in Randomized
//! Load Balancing", IEEE TPDS 12(10), 2001). This is tower's `balance::p2c` and Finagle's
//! `P2CLeastLoaded` / `P2CPeakEwma`.
//!
//! - **Candidates.** Two *distinct* indexes, drawn as Finagle's `P2CPick` does: `a` uniform in
//!   `[0, n)`, `b` uniform in `[0, n - 1)` and moved up by one when `b >= a`, which makes the pair
//!   uniform over all ordered pairs of distinct endpoints. Both come from one output of a
//!   lock-free splitmix64 generator seeded by the balancer (see `rng.rs`). Because the two are
//!   distinct, the single most loaded endpoint is never chosen while there are three or more.
//! - **Load.** Plain p2c compares [`Endpoint::in_flight`]. With peak-EWMA the load is Finagle's
//!   and tower's cost, `rtt × (in_flight + 1)`: the latency estimate from
//!   [`Endpoint::rtt_estimate`] (see [`PeakEwma`](super::PeakEwma)) times the RPCs that would
//!   then be outstanding. [`Picker::pick`] reads the clock once; [`P2c::pick_at`] takes the time
//!   from a caller that has read it already.
//! - **No estimate yet.** An endpoint that has not answered yet has no RTT. Finagle
//!   (`loadbalancer/PeakEwma.scala`) gives it cost 0 while it has nothing in flight, so that a new
//!   endpoint gets a first request at once, and a penalty far above any real cost (`2^47` ns, about
//!   39 hours) plus its in-flight count while that first request is outstanding, so that a new or
//!   hung endpoint gets one probe rather than a pile of RPCs before anyone knows its latency. We do
//!   the same; an estimate that has decayed to zero counts as none. (tower instead starts every
//!   endpoint at a configured default RTT; a constant guess either starves a new endpoint or
//!   floods it.) When neither candidate has an estimate this is least-in-flight.
//! - **Ties** go to the first candidate, which is itself random, so equal endpoints share evenly.

use std::time::Instant;

use super::rng::{AtomicSplitMix, bounded};
use super::{Endpoint, Pick, Picker};

/// The cost of an endpoint with RPCs in flight and no latency estimate yet, in nanoseconds
/// (Finagle's `Long.MaxValue >> 16`).
const PENALTY: f64 = (i64::MAX >> 16) as f64;

/// Power of two choices over the READY endpoints; see the [module docs](self).
#[derive(Debug)]
pub struct P2c<T> {
    ready: Vec<T>,
    rng: AtomicSplitMix,
    peak_ewma: bool,
}

impl<T: Endpoint> P2c<T> {
    /// A picker over `ready` whose random choices are fixed by `seed`. With `peak_ewma` it
    /// compares `rtt × (in_flight + 1)`, otherwise `in_flight` alone.
    pub fn new(ready: Vec<T>, seed: u64, peak_ewma: bool) -> Self {
        Self {
            ready,
            rng: AtomicSplitMix::new(seed),
            peak_ewma,
        }
    }

    /// [`Picker::pick`] with the clock already read: `now` is when the RPC starts. The caller
    /// reads the clock anyway (for the deadline and the RTT sample), and on a virtual machine that
    /// read costs as much as the rest of a peak-EWMA pick. Plain p2c ignores `now`.
    #[inline]
    pub fn pick_at(&self, now: Instant) -> Pick<'_, T> {
        self.pick_with(|| now)
    }

    #[inline]
    fn pick_with(&self, now: impl FnOnce() -> Instant) -> Pick<'_, T> {
        let n = self.ready.len();
        let (a, b) = match n {
            0 => return Pick::Queue,
            1 => return self.ready.first().map_or(Pick::Queue, Pick::Ready),
            _ => self.candidates(n),
        };
        let (Some(ea), Some(eb)) = (self.ready.get(a), self.ready.get(b)) else {
            return Pick::Queue;
        };
        let first = if self.peak_ewma {
            let now = now();
            peak_ewma_cost(ea, now) <= peak_ewma_cost(eb, now)
        } else {
            ea.in_flight() <= eb.in_flight()
        };
        Pick::Ready(if first { ea } else { eb })
    }
}

impl<T> P2c<T> {
    /// The READY endpoints this picker chooses from, in the order given.
    pub fn endpoints(&self) -> &[T] {
        &self.ready
    }

    /// Whether the load is peak-EWMA latency times in-flight RPCs rather than in-flight RPCs.
    pub fn is_peak_ewma(&self) -> bool {
        self.peak_ewma
    }

    /// Two distinct uniform indexes below `n` (`n >= 2`), from one random draw.
    #[inline]
    fn candidates(&self, n: usize) -> (usize, usize) {
        let n = n as u64;
        let (a, rest) = bounded(self.rng.next_u64(), n);
        let (b, _) = bounded(rest, n - 1);
        let b = if b >= a { b + 1 } else { b };
        // Both are below `n`, which is a usize.
        (a as usize, b as usize)
    }
}

/// Finagle's peak-EWMA cost of sending one more RPC to `e`, in nanoseconds.
#[inline]
fn peak_ewma_cost<T: Endpoint>(e: &T, now: Instant) -> f64 {
    let pending = e.in_flight();
    match e.rtt_estimate(now) {
        Some(rtt) if rtt > 0.0 => rtt * (pending as f64 + 1.0),
        _ if pending == 0 => 0.0,
        _ => PENALTY + pending as f64,
    }
}

impl<T: Endpoint> Picker<T> for P2c<T> {
    #[inline]
    fn pick(&self) -> Pick<'_, T> {
        self.pick_with(Instant::now)
    }
}
