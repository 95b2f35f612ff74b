//! `weighted_round_robin`: round-robin in proportion to each endpoint's weight.
//!
//! This is gRPC C++'s static stride scheduler
//! (`src/core/load_balancing/weighted_round_robin/static_stride_scheduler.cc`, the scheduler
//! behind gRFC A58 `weighted_round_robin`), fed with the static weights from the instances'
//! registration metadata ([`Endpoint::weight`]) instead of load reports.
//!
//! - **Weights.** Scaled so that the largest becomes `0xFFFF`, rounded, and at least 1. A weight of
//!   0 counts as 1. As in gRPC, a weight above ten times the mean is first capped at ten times the
//!   mean: that bounds the average number of draws per pick by 10 (see below) at the price of
//!   under-serving such an outlier. Weights within that range are served in proportion.
//! - **Schedule.** An atomic sequence counter starts at a value drawn from the `seed`. A draw takes
//!   the next sequence number `s` and splits it into an endpoint `i = s mod n` and a generation
//!   `g = s / n`. Endpoint `i` is taken in generation `g` when
//!   `(w_i·g + i·0x7FFF) mod 0xFFFF >= 0xFFFF − w_i`, that is in exactly `w_i` of every `0xFFFF`
//!   generations, spread evenly because `w_i·g mod 0xFFFF` strides through the residues; the offset
//!   by `i` keeps neighbours with equal weights from being skipped together. Otherwise the pick
//!   draws again. The schedule is deterministic, and with equal weights it is plain round-robin.
//! - **Bounded.** A draw is taken with probability `w_i / 0xFFFF`, so a pick costs
//!   `max / mean` draws on average (at most 10 after the cap). The endpoint with the largest weight
//!   is never skipped, so `n` consecutive sequence numbers always contain a hit. Concurrent picks
//!   interleave their sequence numbers, though, so a pick gives up after `n + 32` draws and takes
//!   the largest-weight endpoint (the one the schedule never skips); under contention that is rare
//!   and shifts a negligible share of picks.

use std::sync::atomic::{AtomicU64, Ordering};

use super::rng::{Padded, splitmix64};
use super::{Endpoint, Pick, Picker};

/// The scaled weight of the largest endpoint (gRPC's `kMaxWeight`).
const MAX_WEIGHT: u64 = 0xFFFF;

/// Spreads the picks of endpoints with equal weights over different generations (gRPC's
/// `kOffset`).
const OFFSET: u64 = MAX_WEIGHT / 2;

/// Weights above this multiple of the mean are capped to it (gRPC's `kMaxRatio`).
const MAX_RATIO: f64 = 10.0;

/// Draws a pick may take beyond `n` before it settles for the largest-weight endpoint.
const EXTRA_DRAWS: u64 = 32;

/// Weighted round-robin by the static stride scheduler; see the [module docs](self).
#[derive(Debug)]
pub struct WeightedRoundRobin<T> {
    ready: Vec<T>,
    /// Scaled weights, `1..=0xFFFF`, one per endpoint.
    weights: Box<[u16]>,
    /// An endpoint whose scaled weight is `0xFFFF`.
    heaviest: usize,
    /// Draws before giving up: `n + EXTRA_DRAWS`.
    max_draws: u64,
    sequence: Padded<AtomicU64>,
}

impl<T: Endpoint> WeightedRoundRobin<T> {
    /// A picker over `ready` (in resolver order) that reads each endpoint's
    /// [`weight`](Endpoint::weight) once, now, and starts its schedule at a point drawn from
    /// `seed`.
    pub fn new(ready: Vec<T>, seed: u64) -> Self {
        let weights = scale(ready.iter().map(Endpoint::weight));
        let heaviest = weights
            .iter()
            .position(|&w| u64::from(w) == MAX_WEIGHT)
            .unwrap_or(0);
        let n = ready.len() as u64;
        // The schedule repeats every `n × MAX_WEIGHT` sequence numbers, so a start within the
        // first period reaches every phase, and the counter does not wrap in practice.
        let period = n.saturating_mul(MAX_WEIGHT).max(1);
        Self {
            max_draws: n + EXTRA_DRAWS,
            ready,
            weights,
            heaviest,
            sequence: Padded(AtomicU64::new(splitmix64(seed) % period)),
        }
    }
}

impl<T> WeightedRoundRobin<T> {
    /// The READY endpoints this picker chooses from, in the order given.
    pub fn endpoints(&self) -> &[T] {
        &self.ready
    }

    /// The scaled weight of each endpoint (the largest is `0xFFFF`), in the order of
    /// [`endpoints`](Self::endpoints).
    pub fn scaled_weights(&self) -> &[u16] {
        &self.weights
    }

    /// The endpoint that sequence number `seq` selects, if its generation takes it.
    #[inline]
    fn draw(&self, seq: u64) -> Option<usize> {
        let n = self.weights.len() as u64;
        let index = seq % n;
        let generation = seq / n;
        // `index < n`, a usize.
        let weight = u64::from(*self.weights.get(index as usize)?);
        // `(weight × generation + index × OFFSET) mod MAX_WEIGHT`, reduced early so that a 64-bit
        // sequence cannot overflow: both terms stay below 2^32 · MAX_WEIGHT.
        let offset = (index % MAX_WEIGHT) * OFFSET;
        let stride = (weight * (generation % MAX_WEIGHT) + offset) % MAX_WEIGHT;
        (stride >= MAX_WEIGHT - weight).then_some(index as usize)
    }
}

impl<T: Send + Sync> Picker<T> for WeightedRoundRobin<T> {
    #[inline]
    fn pick(&self) -> Pick<'_, T> {
        if self.ready.is_empty() {
            return Pick::Queue;
        }
        let mut index = self.heaviest;
        for _ in 0..self.max_draws {
            if let Some(i) = self.draw(self.sequence.fetch_add(1, Ordering::Relaxed)) {
                index = i;
                break;
            }
        }
        self.ready.get(index).map_or(Pick::Queue, Pick::Ready)
    }
}

/// gRPC C++'s `StaticStrideScheduler::Make` for integer weights: 0 counts as 1, weights above
/// `MAX_RATIO` × mean are capped, then all are scaled so that the largest is `MAX_WEIGHT`.
fn scale(raw: impl ExactSizeIterator<Item = u32>) -> Box<[u16]> {
    let raw: Vec<f64> = raw.map(|w| f64::from(w.max(1))).collect();
    if raw.is_empty() {
        return Box::default();
    }
    let mean = raw.iter().sum::<f64>() / raw.len() as f64;
    let max = raw
        .iter()
        .copied()
        .fold(1.0, f64::max)
        .min(MAX_RATIO * mean);
    let factor = MAX_WEIGHT as f64 / max;
    raw.iter()
        // In 1..=MAX_WEIGHT after the clamp, so the cast is exact.
        .map(|&w| (w.min(max) * factor).round().clamp(1.0, MAX_WEIGHT as f64) as u16)
        .collect()
}
