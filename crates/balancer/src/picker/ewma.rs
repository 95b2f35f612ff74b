//! A lock-free peak-EWMA round-trip-time estimator, one per endpoint.
//!
//! Latency-aware balancing needs a latency estimate that reacts to a slow endpoint at once and
//! trusts a fast one again only slowly. Peak-EWMA (Finagle `loadbalancer/PeakEwma.scala`, ported
//! to tower as `load::PeakEwma`) does that with two rules:
//!
//! - **Peak.** A sample above the current estimate replaces it.
//! - **Decay.** A sample below it is blended in as an exponentially weighted moving average over
//!   an unevenly spaced series (Eckner, "Algorithms for Unevenly Spaced Time Series"): with `Δt`
//!   the time since the last update and `τ` the decay time, the new estimate is
//!   `w·estimate + (1 − w)·sample` with `w = e^(−Δt/τ)`. A reading at time `now` decays the
//!   estimate toward zero the same way, `estimate·e^(−Δt/τ)`, so an endpoint that has not
//!   answered for a while looks cheaper and gets traffic again.
//!
//! `τ` defaults to 10 s, the default `decayTime` of Finagle's `Balancers.p2cPeakEwma`.
//!
//! Unlike tower and Finagle, a reading does not write the decayed value back: it is a pure
//! function of the last update and `now`, so reading it on every pick neither changes the
//! estimate nor writes to a cache line shared between threads.
//!
//! **Comparing without decaying.** Two estimates read at the same time `now` compare as
//! `rtt_a·e^(−(now−t_a)/τ)` against `rtt_b·e^(−(now−t_b)/τ)`: the factor `e^(−now/τ)` is common, so
//! the order is that of `log2(rtt) + t/(τ·ln 2)`, a number fixed at each update ([`PeakEwma::key`]),
//! with `t` counted from one origin for the whole process. `p2c_peak_ewma` compares keys, plus
//! `log2(in_flight + 1)` for its cost: no `exp()` and no clock read per pick. (The order holds for
//! any `now` at or after both updates, which is every pick's: a pick reads estimates updated
//! before it.)
//!
//! The state is three atomics (the estimate's `f64` bits, the update time as nanoseconds since
//! the process-wide origin, and the key's `f64` bits), not a lock. Two `observe` calls racing on one endpoint
//! may lose one of the two samples, or pair one's estimate with the other's time. A sample is one
//! RPC among many and the next one corrects the estimate, so this is accepted rather than paying
//! for a lock on every response.
//!
//! # Examples
//!
//! ```
//! use std::time::{Duration, Instant};
//! use switchboard_balancer::picker::PeakEwma;
//!
//! let ewma = PeakEwma::new(Duration::from_secs(10));
//! let t0 = Instant::now();
//! assert_eq!(ewma.estimate(t0), None);
//!
//! ewma.observe(Duration::from_millis(2), t0);
//! ewma.observe(Duration::from_millis(8), t0); // a peak replaces the estimate
//! assert_eq!(ewma.estimate(t0), Some(8e6));
//!
//! // Ten seconds (one τ) later the estimate has decayed by a factor e.
//! let later = ewma.estimate(t0 + Duration::from_secs(10)).unwrap_or_default();
//! assert!((later - 8e6 / std::f64::consts::E).abs() < 1.0);
//! ```

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `stamp` of an estimator that has no sample yet.
const NEVER: u64 = u64::MAX;

/// The instant every estimator counts its update times from, so that keys compare across them.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A peak-EWMA round-trip-time estimate in nanoseconds; see the [module docs](self).
#[derive(Debug)]
pub struct PeakEwma {
    /// `log2(rtt_ns) + stamp / (τ·ln 2)` as `f64` bits, NaN without a positive estimate: what
    /// picks compare.
    key: AtomicU64,
    /// `τ` in nanoseconds, at least 1.
    tau_ns: f64,
    /// `1/τ`, so that a read multiplies rather than divides.
    rate: f64,
    /// The estimate at `stamp`, as `f64` bits.
    rtt_ns: AtomicU64,
    /// Nanoseconds from [`ORIGIN`] to the last update, or `NEVER`.
    stamp: AtomicU64,
}

impl PeakEwma {
    /// The decay time `τ` used by [`Default`]: 10 s.
    pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

    /// An estimator without samples whose estimate decays with time constant `decay` (after
    /// `decay` without samples, to 1/e). A zero `decay` is taken as 1 ns.
    pub fn new(decay: Duration) -> Self {
        let tau_ns = nanos(decay).max(1.0);
        LazyLock::force(&ORIGIN);
        Self {
            key: AtomicU64::new(f64::NAN.to_bits()),
            tau_ns,
            rate: tau_ns.recip(),
            rtt_ns: AtomicU64::new(0.0_f64.to_bits()),
            stamp: AtomicU64::new(NEVER),
        }
    }

    /// The decay time `τ`.
    pub fn decay(&self) -> Duration {
        Duration::from_nanos(self.tau_ns as u64)
    }

    /// Records a response that took `rtt`, received at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let t = self.since_base(now);
        let sample = nanos(rtt);
        let stamp = self.stamp.load(Ordering::Acquire);
        let (next, t) = if stamp == NEVER {
            (sample, t)
        } else {
            let prev = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
            let next = if sample > prev {
                sample
            } else {
                let w = self.weight(t.saturating_sub(stamp));
                prev * w + sample * (1.0 - w)
            };
            // An older `now` than the last update's does not move time backwards.
            (next, t.max(stamp))
        };
        let key = if next > 0.0 {
            next.log2() + t as f64 * self.rate * std::f64::consts::LOG2_E
        } else {
            f64::NAN
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.key.store(key.to_bits(), Ordering::Relaxed);
        self.stamp.store(t, Ordering::Release);
    }

    /// A number whose order between estimators of the same decay time is the order of their
    /// estimates decayed to any one time at or after both last updates: `log2` of the estimate
    /// plus the update time over `τ·ln 2`. `None` before the first sample, or while the estimate
    /// is 0. See the [module docs](self).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use switchboard_balancer::picker::PeakEwma;
    ///
    /// let (a, b) = (PeakEwma::default(), PeakEwma::default());
    /// let t0 = Instant::now();
    /// a.observe(Duration::from_millis(10), t0);
    /// b.observe(Duration::from_millis(4), t0 + Duration::from_secs(20));
    /// // 20 s (2τ) later, a's 10 ms has decayed to 1.35 ms, below b's fresh 4 ms.
    /// let later = t0 + Duration::from_secs(20);
    /// assert!(a.estimate(later) < b.estimate(later));
    /// assert!(a.key() < b.key());
    /// ```
    #[inline]
    pub fn key(&self) -> Option<f64> {
        let key = f64::from_bits(self.key.load(Ordering::Relaxed));
        (!key.is_nan()).then_some(key)
    }

    /// The estimate in nanoseconds, decayed from the last update to `now`; `None` before the first
    /// sample.
    #[inline]
    pub fn estimate(&self, now: Instant) -> Option<f64> {
        let stamp = self.stamp.load(Ordering::Acquire);
        if stamp == NEVER {
            return None;
        }
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let elapsed = self.since_base(now).saturating_sub(stamp);
        if elapsed == 0 {
            return Some(rtt);
        }
        Some(rtt * self.weight(elapsed))
    }

    /// `e^(−elapsed/τ)`: how much of the estimate survives `elapsed` nanoseconds.
    #[inline]
    fn weight(&self, elapsed: u64) -> f64 {
        (-(elapsed as f64) * self.rate).exp()
    }

    /// Nanoseconds from [`ORIGIN`] to `now` (0 before it), below `NEVER`.
    #[inline]
    fn since_base(&self, now: Instant) -> u64 {
        // In u64 rather than through `Duration::as_nanos`, whose u128 arithmetic is slower.
        let d = now.saturating_duration_since(*ORIGIN);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
            .min(NEVER - 1)
    }
}

impl Default for PeakEwma {
    /// An estimator with [`PeakEwma::DEFAULT_DECAY`].
    fn default() -> Self {
        Self::new(Self::DEFAULT_DECAY)
    }
}

/// A duration in nanoseconds as `f64` (exact below 2^53 ns, about 104 days).
fn nanos(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
}
