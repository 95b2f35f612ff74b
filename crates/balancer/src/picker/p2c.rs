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
//!   [`Endpoint::rtt_estimate`] (see [`PeakEwma`]) times the RPCs that would then be
//!   outstanding. Endpoints whose estimate is a [`PeakEwma`] ([`Endpoint::peak_ewma`]) are
//!   compared by `key + log2(in_flight + 1)`, which orders them as those costs do at any time
//!   after their last samples without decaying either ([`PeakEwma::key`]): a pick then costs
//!   about what a plain p2c pick does, with no clock read and no `exp()`. Otherwise
//!   [`Picker::pick`] reads the clock and decays both estimates; [`P2c::pick_at`] takes the time
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
use super::{Endpoint, PeakEwma, Pick, Picker};

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
            peak_ewma_first(ea, eb, now)
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

/// Whether `a` costs no more than `b` by peak-EWMA. Where both estimates are [`PeakEwma`]s with
/// a sample, compares `key + log2(in_flight + 1)`: the order of Finagle's costs at any time after
/// both samples, with neither the clock nor `exp()`. Otherwise (an endpoint with no sample yet,
/// or estimates of another kind), decays both to `now` and compares the costs themselves.
#[inline]
fn peak_ewma_first<T: Endpoint>(a: &T, b: &T, now: impl FnOnce() -> Instant) -> bool {
    if let (Some(ka), Some(kb)) = (
        a.peak_ewma().and_then(PeakEwma::key),
        b.peak_ewma().and_then(PeakEwma::key),
    ) {
        let (pa, pb) = (a.in_flight(), b.in_flight());
        return if pa == pb {
            ka <= kb
        } else {
            ka + log2_1p(pa) <= kb + log2_1p(pb)
        };
    }
    let now = now();
    peak_ewma_cost(a, now) <= peak_ewma_cost(b, now)
}

/// `log2(n + 1)`, from a table below 64.
#[inline]
fn log2_1p(n: u64) -> f64 {
    usize::try_from(n)
        .ok()
        .and_then(|i| LOG2_1P.get(i))
        .copied()
        .unwrap_or_else(|| (n as f64 + 1.0).log2())
}

/// `log2(i + 1)` for `i` in `0..64`.
const LOG2_1P: [f64; 64] = [
    0.0,
    1.0,
    1.584962500721156,
    2.0,
    2.321928094887362,
    2.584962500721156,
    2.807354922057604,
    3.0,
    3.169925001442312,
    std::f64::consts::LOG2_10,
    3.4594316186372973,
    3.584962500721156,
    3.700439718141092,
    3.807354922057604,
    3.9068905956085187,
    4.0,
    4.087462841250339,
    4.169925001442312,
    4.247927513443585,
    4.321928094887363,
    4.392317422778761,
    4.459431618637297,
    4.523561956057013,
    4.584962500721156,
    4.643856189774724,
    4.700439718141092,
    4.754887502163468,
    4.807354922057604,
    4.857980995127572,
    4.906890595608519,
    4.954196310386875,
    5.0,
    5.044394119358453,
    5.087462841250339,
    5.129283016944966,
    5.169925001442312,
    5.20945336562895,
    5.247927513443585,
    5.285402218862249,
    5.321928094887363,
    5.357552004618084,
    5.392317422778761,
    5.426264754702098,
    5.459431618637297,
    5.491853096329675,
    5.523561956057013,
    5.554588851677638,
    5.584962500721156,
    5.614709844115208,
    5.643856189774724,
    5.672425341971495,
    5.700439718141092,
    5.727920454563199,
    5.754887502163468,
    5.78135971352466,
    5.807354922057604,
    5.832890014164741,
    5.857980995127572,
    5.882643049361842,
    5.906890595608519,
    5.930737337562887,
    5.954196310386875,
    5.977279923499917,
    6.0,
];

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
