//! Lock-free randomness and counters shared by the pickers.
//!
//! The random generator is splitmix64 (Steele, Lea and Flood, "Fast Splittable Pseudorandom
//! Number Generators", OOPSLA 2014; constants from Vigna's reference `splitmix64.c`). Its state
//! is a Weyl sequence advanced by the golden-ratio increment and each output is that state sent
//! through a bijective mixer. Because advancing the state is a plain addition, the state can live
//! in one `AtomicU64` and be advanced with a single `fetch_add`: concurrent callers each get a
//! distinct state, and so an output of their own, with no compare-and-swap loop and no lock.
//!
//! Ranges are drawn with Lemire's multiply-shift ("Fast Random Integer Generation in an
//! Interval", ACM TOMS 2019) without the rejection step: the bias is at most `n / 2^64`. The low
//! half of the product is itself nearly uniform and feeds a second draw, as in Brackett-Rozinsky
//! and Lemire, "Batched Ranged Random Integer Generation" (Software: Practice and Experience,
//! 2024), so one 64-bit output yields both p2c candidates.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

/// The splitmix64 increment: 2^64 divided by the golden ratio, rounded to odd.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 output function (a variant of MurmurHash3's 64-bit finaliser).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The first output of a splitmix64 generator seeded with `seed`: a well-mixed value for a
/// picker's random start.
pub(crate) fn splitmix64(seed: u64) -> u64 {
    mix64(seed.wrapping_add(GOLDEN_GAMMA))
}

/// Maps a uniform `x` to `[0, n)` (the high half of `x * n`) and returns the low half too, which
/// is uniform enough to feed the next draw.
pub(crate) fn bounded(x: u64, n: u64) -> (u64, u64) {
    let m = u128::from(x) * u128::from(n);
    // Both halves fit: the shift leaves 64 bits and the cast keeps the low 64.
    ((m >> 64) as u64, m as u64)
}

/// A splitmix64 generator that any number of threads may draw from through `&self`.
#[derive(Debug)]
pub(crate) struct AtomicSplitMix {
    state: Padded<AtomicU64>,
}

impl AtomicSplitMix {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: Padded(AtomicU64::new(seed)),
        }
    }

    /// The next 64 random bits: one `fetch_add`, then the mixer.
    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        let state = self.state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed);
        mix64(state.wrapping_add(GOLDEN_GAMMA))
    }
}

/// Keeps a value on cache lines of its own, so that the counter every pick writes does not share
/// a line with the endpoint list every pick reads. 128 bytes because x86's adjacent-line
/// prefetcher pulls lines in pairs (crossbeam's `CachePadded` does the same).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
