//! `least_request`: the endpoint with the fewest RPCs in flight among a few random ones.
//!
//! This is gRFC A48's `least_request_experimental` (grpc-go `balancer/leastrequest`), which
//! mirrors Envoy's least-request load balancer for equal weights. It generalises the power of two
//! choices ([`P2c`](super::P2c)) to `choice_count` choices:
//!
//! - **Candidates.** `choice_count` indexes, each uniform over the READY endpoints and drawn
//!   *with replacement*, as A48's pseudocode does: the same endpoint may be drawn more than once.
//!   So even the most loaded endpoint is picked now and then (with probability `n^-c` for `n`
//!   endpoints and `c` choices, one in nine for p2c over three), which A48 discusses and accepts.
//!   [`P2c`](super::P2c) draws distinct pairs instead.
//! - **Load.** [`Endpoint::in_flight`], the RPCs outstanding on each. The counters are read one by
//!   one while other picks change them; A48 accepts that race too.
//! - **Ties** keep the earliest drawn candidate, which is itself random.
//! - **Choice count.** A48 allows `2..=10` and defaults to [`DEFAULT_CHOICE_COUNT`] (2, the power
//!   of two choices: Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing",
//!   IEEE TPDS 12(10), 2001). More choices concentrate load on the least-loaded endpoints, and
//!   herd concurrent picks onto the same one. Values outside the range are clamped to it.
//! - **Randomness.** One step of the picker's lock-free splitmix64 generator (see `rng.rs`),
//!   seeded by the balancer, per pick; each further candidate comes from mixing the previous draw
//!   again, so a pick costs one atomic `fetch_add` whatever the choice count.
//!
//! # Examples
//!
//! ```
//! use std::time::Instant;
//!
//! use switchboard_balancer::picker::{Endpoint, LeastRequest, Pick, Picker};
//!
//! struct Backend(u64);
//!
//! impl Endpoint for Backend {
//!     fn in_flight(&self) -> u64 {
//!         self.0
//!     }
//!     fn weight(&self) -> u32 {
//!         1
//!     }
//!     fn rtt_estimate(&self, _now: Instant) -> Option<f64> {
//!         None
//!     }
//! }
//!
//! // Ten choices over three endpoints: the busy one is almost never picked.
//! let picker = LeastRequest::new(vec![Backend(100), Backend(0), Backend(1)], 7, 10);
//! let busy = (0..1_000)
//!     .filter(|_| matches!(picker.pick(), Pick::Ready(b) if b.0 == 100))
//!     .count();
//! assert!(busy < 10);
//! ```

use super::rng::{AtomicSplitMix, bounded, splitmix64};
use super::{Endpoint, Pick, Picker};

/// A48's default number of candidates per pick: the power of two choices.
pub const DEFAULT_CHOICE_COUNT: u32 = 2;

/// The fewest candidates per pick A48 allows.
pub const MIN_CHOICE_COUNT: u32 = 2;

/// The most candidates per pick A48 allows.
pub const MAX_CHOICE_COUNT: u32 = 10;

/// The least loaded of `choice_count` random READY endpoints; see the [module docs](self).
#[derive(Debug)]
pub struct LeastRequest<T> {
    ready: Vec<T>,
    rng: AtomicSplitMix,
    choice_count: u32,
}

impl<T> LeastRequest<T> {
    /// A picker over `ready` (in resolver order) that compares `choice_count` random candidates
    /// per pick, clamped to `2..=10` ([`MIN_CHOICE_COUNT`]..=[`MAX_CHOICE_COUNT`]); A48's default
    /// is [`DEFAULT_CHOICE_COUNT`]. Its random choices are fixed by `seed`.
    pub fn new(ready: Vec<T>, seed: u64, choice_count: u32) -> Self {
        Self {
            ready,
            rng: AtomicSplitMix::new(seed),
            choice_count: choice_count.clamp(MIN_CHOICE_COUNT, MAX_CHOICE_COUNT),
        }
    }

    /// The READY endpoints this picker chooses from, in the order given.
    pub fn endpoints(&self) -> &[T] {
        &self.ready
    }

    /// The candidates compared per pick, after clamping.
    pub fn choice_count(&self) -> u32 {
        self.choice_count
    }

    /// The candidates of one pick, in the order drawn: `choice_count` uniform indexes below `n`
    /// (`n >= 1`), with replacement, from one step of the generator.
    #[inline]
    fn candidates(&self, n: usize) -> impl Iterator<Item = usize> {
        let n = n as u64;
        let first = self.rng.next_u64();
        std::iter::successors(Some(first), |&x| Some(splitmix64(x)))
            .take(self.choice_count as usize)
            // Below `n`, a usize.
            .map(move |x| bounded(x, n).0 as usize)
    }
}

impl<T: Endpoint> Picker<T> for LeastRequest<T> {
    #[inline]
    fn pick(&self) -> Pick<'_, T> {
        let n = self.ready.len();
        if n <= 1 {
            return self.ready.first().map_or(Pick::Queue, Pick::Ready);
        }
        let mut best: Option<(&T, u64)> = None;
        for e in self.candidates(n).filter_map(|i| self.ready.get(i)) {
            let load = e.in_flight();
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((e, load));
            }
        }
        best.map_or(Pick::Queue, |(e, _)| Pick::Ready(e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;

    /// An endpoint with a fixed load.
    #[derive(Debug)]
    struct Busy {
        id: usize,
        in_flight: u64,
    }

    impl Endpoint for Busy {
        fn in_flight(&self) -> u64 {
            self.in_flight
        }

        fn weight(&self) -> u32 {
            1
        }

        fn rtt_estimate(&self, _now: Instant) -> Option<f64> {
            None
        }
    }

    fn loaded(loads: &[u64]) -> Vec<Busy> {
        loads
            .iter()
            .enumerate()
            .map(|(id, &in_flight)| Busy { id, in_flight })
            .collect()
    }

    fn picked(picker: &LeastRequest<Busy>) -> usize {
        match picker.pick() {
            Pick::Ready(e) => e.id,
            Pick::Queue => panic!("queued with endpoints ready"),
            Pick::Fail(status) => panic!("failed: {status}"),
        }
    }

    /// How many of `picks` picks went to each endpoint.
    fn counts(picker: &LeastRequest<Busy>, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; picker.endpoints().len()];
        for _ in 0..picks {
            counts[picked(picker)] += 1;
        }
        counts
    }

    #[test]
    fn ten_choices_almost_never_pick_the_busiest_of_three() {
        for seed in [0, 1, 42] {
            let picker = LeastRequest::new(loaded(&[3, 100, 2]), seed, 10);
            let counts = counts(&picker, 10_000);
            // All ten draws hit it with probability 3^-10: about 0.2 in 10 000 picks.
            assert!(counts[1] < 100, "seed {seed}: {counts:?}");
            // And the least loaded wins unless no draw hits it: (2/3)^10 = 1.7%.
            assert!(counts[2] > 9_600, "seed {seed}: {counts:?}");
        }
    }

    #[test]
    fn two_choices_with_replacement_pick_the_busiest_of_three_one_time_in_nine() {
        let picker = LeastRequest::new(loaded(&[3, 100, 2]), 5, 2);
        let counts = counts(&picker, 90_000);
        // Both draws on the busiest: 1/9, 10 000 of 90 000 (σ ≈ 94).
        assert!((9_500..=10_500).contains(&counts[1]), "{counts:?}");
        // The least loaded unless neither draw hits it: 5/9, 50 000.
        assert!((49_000..=51_000).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn equal_loads_spread_evenly() {
        for choices in [2, 3, 10] {
            let picker = LeastRequest::new(loaded(&[4; 5]), 9, choices);
            for (i, &c) in counts(&picker, 50_000).iter().enumerate() {
                // 10 000 each (σ ≈ 89).
                assert!(
                    (9_500..=10_500).contains(&c),
                    "{choices} choices, endpoint {i}: {c}"
                );
            }
        }
    }

    #[test]
    fn ties_keep_the_first_candidate_drawn() {
        let picker = LeastRequest::new(loaded(&[1; 7]), 11, 10);
        let replay = LeastRequest::new(loaded(&[1; 7]), 11, 10);
        for _ in 0..1_000 {
            let first = replay.candidates(7).next();
            assert_eq!(Some(picked(&picker)), first);
        }
    }

    #[test]
    fn choice_count_is_clamped_to_2_to_10() {
        let count = |c| LeastRequest::new(loaded(&[0]), 0, c).choice_count();
        assert_eq!(count(0), 2);
        assert_eq!(count(1), 2);
        assert_eq!(count(DEFAULT_CHOICE_COUNT), 2);
        assert_eq!(count(7), 7);
        assert_eq!(count(10), 10);
        assert_eq!(count(11), 10);
        assert_eq!(count(u32::MAX), 10);
        let picker = LeastRequest::new(loaded(&[0, 0]), 0, 1_000);
        assert_eq!(picker.candidates(2).count(), 10);
    }

    #[test]
    fn no_endpoints_queue_and_one_is_always_picked() {
        let picker = LeastRequest::new(loaded(&[]), 3, 2);
        assert!(matches!(picker.pick(), Pick::Queue));
        let picker = LeastRequest::new(loaded(&[1_000]), 3, 2);
        for _ in 0..100 {
            assert_eq!(picked(&picker), 0);
        }
    }

    #[test]
    fn the_seed_fixes_the_sequence() {
        let run = |seed| {
            let picker = LeastRequest::new(loaded(&[1, 2, 3, 1, 2, 3]), seed, 3);
            (0..200).map(|_| picked(&picker)).collect::<Vec<_>>()
        };
        assert_eq!(run(8), run(8));
        assert_ne!(run(8), run(9));
    }

    proptest! {
        /// Every pick is A48's pseudocode run on the same draws.
        #[test]
        fn pick_is_a48s_least_of_the_candidates(
            loads in proptest::collection::vec(0u64..8, 2..40),
            choices in 0u32..14,
            seed: u64,
        ) {
            let picker = LeastRequest::new(loaded(&loads), seed, choices);
            let replay = LeastRequest::new(loaded(&loads), seed, choices);
            for _ in 0..50 {
                let mut candidate: Option<usize> = None;
                for sampled in replay.candidates(loads.len()) {
                    prop_assert!(sampled < loads.len());
                    match candidate {
                        Some(c) if loads[sampled] >= loads[c] => {}
                        _ => candidate = Some(sampled),
                    }
                }
                prop_assert_eq!(Some(picked(&picker)), candidate);
            }
        }
    }
}
