//! Unit tests for the pickers and the peak-EWMA estimator, driven by hand with mock endpoints.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// The bits that mean "no RTT estimate" in [`Mock::rtt`].
const NO_RTT: u64 = u64::MAX;

/// An endpoint whose load, weight and RTT the test sets.
#[derive(Debug)]
struct Mock {
    id: usize,
    in_flight: AtomicU64,
    weight: AtomicU32,
    rtt: AtomicU64,
}

impl Mock {
    fn new(id: usize) -> Self {
        Self {
            id,
            in_flight: AtomicU64::new(0),
            weight: AtomicU32::new(1),
            rtt: AtomicU64::new(NO_RTT),
        }
    }

    fn in_flight(self, n: u64) -> Self {
        self.in_flight.store(n, Ordering::Relaxed);
        self
    }

    fn weight(self, w: u32) -> Self {
        self.weight.store(w, Ordering::Relaxed);
        self
    }

    fn rtt_ms(self, ms: f64) -> Self {
        self.rtt.store((ms * 1e6).to_bits(), Ordering::Relaxed);
        self
    }
}

impl Endpoint for Mock {
    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    fn rtt_estimate(&self, _now: Instant) -> Option<f64> {
        match self.rtt.load(Ordering::Relaxed) {
            NO_RTT => None,
            bits => Some(f64::from_bits(bits)),
        }
    }
}

fn mocks(n: usize) -> Vec<Mock> {
    (0..n).map(Mock::new).collect()
}

/// The id picked, panicking on anything but `Ready`.
fn picked<P: Picker<Mock>>(picker: &P) -> usize {
    match picker.pick() {
        Pick::Ready(m) => m.id,
        Pick::Queue => panic!("picker queued with endpoints ready"),
        Pick::Fail(status) => panic!("picker failed: {status}"),
    }
}

/// How many of `picks` picks went to each of the `n` endpoints.
fn counts<P: Picker<Mock>>(picker: &P, n: usize, picks: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for _ in 0..picks {
        counts[picked(picker)] += 1;
    }
    counts
}

/// Whether every count is `picks / n` rounded down or up.
fn even_within_one(counts: &[usize], picks: usize) -> bool {
    let n = counts.len();
    let (low, high) = (picks / n, picks.div_ceil(n));
    counts.iter().all(|&c| c == low || c == high) && counts.iter().sum::<usize>() == picks
}

// ===== round_robin =====

#[test]
fn round_robin_is_even_to_one_over_any_number_of_picks() {
    for n in [3, 7, 100] {
        for picks in [n, 10 * n, 10 * n + 1, 13 * n + n / 2, 1_001] {
            for seed in [0, 1, 42, u64::MAX] {
                let picker = RoundRobin::new(mocks(n), seed);
                let counts = counts(&picker, n, picks);
                assert!(
                    even_within_one(&counts, picks),
                    "n={n} picks={picks} seed={seed}: {counts:?}"
                );
            }
        }
    }
}

#[test]
fn round_robin_visits_in_order_from_its_start() {
    let picker = RoundRobin::new(mocks(5), 9);
    let first = picked(&picker);
    for k in 1..20 {
        assert_eq!(picked(&picker), (first + k) % 5);
    }
}

#[test]
fn round_robin_start_depends_on_the_seed() {
    let starts: std::collections::BTreeSet<usize> = (0..32)
        .map(|seed| picked(&RoundRobin::new(mocks(7), seed)))
        .collect();
    assert!(starts.len() >= 4, "32 seeds gave starts {starts:?}");
    // And the same seed gives the same start.
    assert_eq!(
        picked(&RoundRobin::new(mocks(7), 3)),
        picked(&RoundRobin::new(mocks(7), 3))
    );
}

#[test]
fn round_robin_is_exact_across_threads() {
    let picker = RoundRobin::new(mocks(8), 5);
    let per_thread: Vec<Vec<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| counts(&picker, 8, 10_000)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: Vec<usize> = (0..8)
        .map(|i| per_thread.iter().map(|c| c[i]).sum())
        .collect();
    // 40 000 consecutive counter values, however they interleaved.
    assert_eq!(total, vec![5_000; 8]);
}

// ===== pick_first =====

#[test]
fn pick_first_picks_the_first_in_order() {
    let picker = PickFirst::new(mocks(4), |_| false);
    assert_eq!(counts(&picker, 4, 100), [100, 0, 0, 0]);
    assert_eq!(picker.chosen().map(|m| m.id), Some(0));
}

#[test]
fn pick_first_keeps_the_sticky_endpoint() {
    let picker = PickFirst::new(mocks(5), |m| m.id == 2);
    assert_eq!(counts(&picker, 5, 10_000), [0, 0, 10_000, 0, 0]);
}

#[test]
fn pick_first_moves_to_the_first_remaining_when_the_sticky_one_fails() {
    let previous = 2;
    // Endpoint 2 left READY; the balancer rebuilds over the rest, still in resolver order.
    let ready: Vec<Mock> = mocks(5).into_iter().filter(|m| m.id != previous).collect();
    let picker = PickFirst::new(ready, |m| m.id == previous);
    assert_eq!(picked(&picker), 0);

    // If the first one fails, the next in order takes over.
    let ready: Vec<Mock> = mocks(5).into_iter().filter(|m| m.id != 0).collect();
    let picker = PickFirst::new(ready, |m| m.id == 0);
    assert_eq!(picked(&picker), 1);
}

#[test]
fn pick_first_via_policy_uses_sticky() {
    let picker = Policy::PickFirst.build(mocks(3), 0, |m| m.id == 1);
    assert_eq!(counts(&picker, 3, 50), [0, 50, 0]);
}

// ===== p2c =====

#[test]
fn p2c_never_picks_the_most_loaded_of_three() {
    let ready = vec![Mock::new(0), Mock::new(1).in_flight(10), Mock::new(2)];
    let picker = P2c::new(ready, 11, false);
    let counts = counts(&picker, 3, 30_000);
    assert_eq!(counts[1], 0, "{counts:?}");
    // The two idle ones split the picks (ties go to a random candidate).
    for c in [counts[0], counts[2]] {
        assert!((13_500..=16_500).contains(&c), "{counts:?}");
    }
}

#[test]
fn p2c_candidates_are_distinct() {
    // With two endpoints the pair is always both; the loaded one never wins.
    let picker = P2c::new(vec![Mock::new(0).in_flight(1), Mock::new(1)], 3, false);
    assert_eq!(counts(&picker, 2, 10_000), [0, 10_000]);
}

#[test]
fn p2c_splits_equal_endpoints_evenly() {
    let n = 10;
    let picks = 100_000;
    let picker = P2c::new(mocks(n), 17, false);
    for c in counts(&picker, n, picks) {
        // 10 000 expected; a binomial standard deviation is about 95.
        assert!((9_500..=10_500).contains(&c), "{c}");
    }
}

#[test]
fn p2c_prefers_less_loaded_endpoints() {
    // Load i on endpoint i: endpoint i wins against every higher one, so it is chosen with
    // probability 2·(n−1−i) / (n·(n−1)), decreasing in i, and the last is never chosen.
    let n = 6;
    let ready: Vec<Mock> = (0..n).map(|i| Mock::new(i).in_flight(i as u64)).collect();
    let picker = P2c::new(ready, 23, false);
    let picks = 60_000;
    let counts = counts(&picker, n, picks);
    for (i, &c) in counts.iter().enumerate() {
        let expected = picks * 2 * (n - 1 - i) / (n * (n - 1));
        assert!(c.abs_diff(expected) <= picks / 100, "{counts:?}");
    }
    assert_eq!(counts[n - 1], 0);
}

#[test]
fn p2c_single_endpoint_is_always_picked() {
    let picker = P2c::new(vec![Mock::new(0).in_flight(100)], 0, true);
    assert_eq!(counts(&picker, 1, 10), [10]);
}

#[test]
fn p2c_seed_fixes_the_sequence() {
    let a = P2c::new(mocks(50), 99, false);
    let b = P2c::new(mocks(50), 99, false);
    let c = P2c::new(mocks(50), 100, false);
    let seq = |p: &P2c<Mock>| (0..64).map(|_| picked(p)).collect::<Vec<_>>();
    let (sa, sb, sc) = (seq(&a), seq(&b), seq(&c));
    assert_eq!(sa, sb);
    assert_ne!(sa, sc);
}

#[test]
fn p2c_peak_ewma_prefers_the_low_rtt_endpoint() {
    // Equal load, endpoint 1 five times faster: it wins whenever it is a candidate (2/3 of picks).
    let ready = vec![
        Mock::new(0).rtt_ms(5.0),
        Mock::new(1).rtt_ms(1.0),
        Mock::new(2).rtt_ms(5.0),
    ];
    let picker = P2c::new(ready, 5, true);
    let picks = 30_000;
    let shares = counts(&picker, 3, picks);
    assert!(
        shares[1].abs_diff(2 * picks / 3) <= picks / 100,
        "{shares:?}"
    );

    // Two endpoints: the fast one always.
    let picker = P2c::new(
        vec![Mock::new(0).rtt_ms(10.0), Mock::new(1).rtt_ms(1.0)],
        5,
        true,
    );
    assert_eq!(counts(&picker, 2, 1_000), [0, 1_000]);
}

#[test]
fn p2c_peak_ewma_weighs_latency_by_load() {
    // 1 ms × (9 + 1) = 10 ms costs more than 4 ms × (0 + 1).
    let ready = vec![
        Mock::new(0).rtt_ms(1.0).in_flight(9),
        Mock::new(1).rtt_ms(4.0),
    ];
    let picker = Policy::P2cPeakEwma.build(ready, 1, |_| false);
    assert_eq!(counts(&picker, 2, 1_000), [0, 1_000]);

    // 1 ms × (2 + 1) = 3 ms costs less than 4 ms × (0 + 1), where plain p2c sees only the load.
    let ready = || {
        vec![
            Mock::new(0).rtt_ms(1.0).in_flight(2),
            Mock::new(1).rtt_ms(4.0),
        ]
    };
    let ewma = Policy::P2cPeakEwma.build(ready(), 1, |_| false);
    assert_eq!(counts(&ewma, 2, 1_000), [1_000, 0]);
    let plain = Policy::P2c.build(ready(), 1, |_| false);
    assert_eq!(counts(&plain, 2, 1_000), [0, 1_000]);
}

#[test]
fn p2c_peak_ewma_probes_an_endpoint_without_estimate_once() {
    // No estimate and nothing in flight: cost 0, so a new endpoint gets a request at once.
    let ready = vec![Mock::new(0).rtt_ms(1.0), Mock::new(1)];
    let picker = P2c::new(ready, 2, true);
    assert_eq!(counts(&picker, 2, 100), [0, 100]);

    // With its probe outstanding it is avoided, however loaded the measured one is.
    let ready = vec![
        Mock::new(0).rtt_ms(1.0).in_flight(1_000),
        Mock::new(1).in_flight(1),
    ];
    let picker = P2c::new(ready, 2, true);
    assert_eq!(counts(&picker, 2, 100), [100, 0]);

    // Without estimates on either side it is least-in-flight.
    let ready = vec![Mock::new(0).in_flight(3), Mock::new(1).in_flight(2)];
    let picker = P2c::new(ready, 2, true);
    assert_eq!(counts(&picker, 2, 100), [0, 100]);
}

/// An endpoint whose RTT comes from a real [`PeakEwma`].
struct Measured {
    id: usize,
    rtt: PeakEwma,
    /// Whether the picker sees the estimator itself ([`Endpoint::peak_ewma`]) and compares keys.
    keyed: bool,
}

impl Endpoint for Measured {
    fn in_flight(&self) -> u64 {
        0
    }

    fn weight(&self) -> u32 {
        1
    }

    fn rtt_estimate(&self, now: Instant) -> Option<f64> {
        self.rtt.estimate(now)
    }

    fn peak_ewma(&self) -> Option<&PeakEwma> {
        self.keyed.then_some(&self.rtt)
    }
}

#[test]
fn p2c_peak_ewma_pick_at_decays_estimates_to_the_given_time() {
    let tau = Duration::from_secs(10);
    let t0 = Instant::now();
    let id = |pick: Pick<'_, Measured>| match pick {
        Pick::Ready(m) => m.id,
        Pick::Queue | Pick::Fail(_) => usize::MAX,
    };
    // Decayed to the pick's time (keyed: false), or compared by key (keyed: true): the same
    // choices at any time after both samples.
    for keyed in [false, true] {
        let slow = Measured {
            id: 0,
            rtt: PeakEwma::new(tau),
            keyed,
        };
        let fast = Measured {
            id: 1,
            rtt: PeakEwma::new(tau),
            keyed,
        };
        slow.rtt.observe(Duration::from_millis(10), t0);
        fast.rtt.observe(Duration::from_millis(4), t0 + 2 * tau);
        let picker = Policy::P2cPeakEwma.build(vec![slow, fast], 6, |_| false);
        // At t0 + 2τ the 10 ms peak has decayed to 1.35 ms, below the fresh 4 ms.
        for _ in 0..100 {
            assert_eq!(id(picker.pick_at(t0 + 2 * tau)), 0, "keyed: {keyed}");
            assert_eq!(id(picker.pick_at(t0 + 5 * tau)), 0, "keyed: {keyed}");
        }
    }
    // At t0 + τ/2, before the fast one's sample, only the decayed reading is defined.
    let slow = Measured {
        id: 0,
        rtt: PeakEwma::new(tau),
        keyed: false,
    };
    let fast = Measured {
        id: 1,
        rtt: PeakEwma::new(tau),
        keyed: false,
    };
    slow.rtt.observe(Duration::from_millis(10), t0);
    fast.rtt.observe(Duration::from_millis(4), t0 + 2 * tau);
    let picker = Policy::P2cPeakEwma.build(vec![slow, fast], 6, |_| false);
    for _ in 0..100 {
        assert_eq!(id(picker.pick_at(t0 + tau / 2)), 1);
    }
}

/// An endpoint with a real estimator and a given load, for comparing key and decayed costs.
struct Loaded {
    rtt: PeakEwma,
    in_flight: u64,
    keyed: bool,
}

impl Endpoint for Loaded {
    fn in_flight(&self) -> u64 {
        self.in_flight
    }

    fn weight(&self) -> u32 {
        1
    }

    fn rtt_estimate(&self, now: Instant) -> Option<f64> {
        self.rtt.estimate(now)
    }

    fn peak_ewma(&self) -> Option<&PeakEwma> {
        self.keyed.then_some(&self.rtt)
    }
}

proptest! {
    /// Comparing keys plus `log2(in_flight + 1)` chooses as comparing the decayed costs does,
    /// at any time after both samples, wherever the two costs are not within rounding.
    #[test]
    fn peak_ewma_keys_order_endpoints_as_their_decayed_costs(
        samples in prop::collection::vec((1u64..50_000_000, 0u64..120_000), 1..6),
        others in prop::collection::vec((1u64..50_000_000, 0u64..120_000), 1..6),
        loads in (0u64..200, 0u64..200),
        later_ms in 0u64..200_000,
    ) {
        let t0 = Instant::now();
        let endpoint = |samples: &[(u64, u64)], in_flight, keyed| {
            let rtt = PeakEwma::new(Duration::from_secs(10));
            let mut at = t0;
            for &(ns, gap_ms) in samples {
                at += Duration::from_millis(gap_ms);
                rtt.observe(Duration::from_nanos(ns), at);
            }
            (Loaded { rtt, in_flight, keyed }, at)
        };
        for keyed in [true, false] {
            let (a, at_a) = endpoint(&samples, loads.0, keyed);
            let (b, at_b) = endpoint(&others, loads.1, keyed);
            let now = at_a.max(at_b) + Duration::from_millis(later_ms);
            let cost = |e: &Loaded| e.rtt.estimate(now).unwrap_or(0.0) * (e.in_flight as f64 + 1.0);
            let (ca, cb) = (cost(&a), cost(&b));
            prop_assume!(ca > 0.0 && cb > 0.0 && (ca / cb - 1.0).abs() > 1e-9);
            // With two endpoints p2c draws both: the choice is the cheaper one.
            let picker = P2c::new(vec![a, b], 1, true);
            let chose_a = match picker.pick_at(now) {
                Pick::Ready(e) => std::ptr::eq(e, &picker.endpoints()[0]),
                Pick::Queue | Pick::Fail(_) => false,
            };
            prop_assert_eq!(chose_a, ca < cb, "keyed: {}, costs {} and {}", keyed, ca, cb);
        }
    }
}

#[test]
fn pick_at_is_pick_for_the_other_policies() {
    let now = Instant::now();
    for policy in [
        Policy::RoundRobin,
        Policy::PickFirst,
        Policy::WeightedRoundRobin,
    ] {
        let a = policy.build(mocks(5), 8, |m| m.id == 3);
        let b = policy.build(mocks(5), 8, |m| m.id == 3);
        for _ in 0..20 {
            let (Pick::Ready(x), Pick::Ready(y)) = (a.pick(), b.pick_at(now)) else {
                panic!("{policy} did not pick");
            };
            assert_eq!(x.id, y.id, "{policy}");
        }
    }
}

// ===== weighted_round_robin =====

#[test]
fn weighted_round_robin_is_proportional_to_weights() {
    let ready: Vec<Mock> = (0..3).map(|i| Mock::new(i).weight(i as u32 + 1)).collect();
    for seed in [0, 7, u64::MAX] {
        let picker = WeightedRoundRobin::new(mocks(0), seed);
        assert!(matches!(picker.pick(), Pick::Queue));
    }
    let picker = WeightedRoundRobin::new(ready, 7);
    assert_eq!(picker.scaled_weights(), [21_845, 43_690, 65_535]);
    let picks = 60_000;
    let counts = counts(&picker, 3, picks);
    for (i, &c) in counts.iter().enumerate() {
        let expected = picks * (i + 1) / 6;
        assert!(c.abs_diff(expected) <= expected / 100, "{counts:?}");
    }
}

#[test]
fn weighted_round_robin_with_equal_weights_is_round_robin() {
    for w in [1, 5, u32::MAX] {
        let ready: Vec<Mock> = (0..7).map(|i| Mock::new(i).weight(w)).collect();
        let picker = WeightedRoundRobin::new(ready, 13);
        for picks in [7, 700, 701, 1_234] {
            let counts = counts(&picker, 7, picks);
            assert!(even_within_one(&counts, picks), "w={w} {counts:?}");
        }
    }
}

#[test]
fn weighted_round_robin_treats_weight_zero_as_one() {
    let ready = vec![Mock::new(0).weight(0), Mock::new(1).weight(1)];
    let picker = Policy::WeightedRoundRobin.build(ready, 3, |_| false);
    let counts = counts(&picker, 2, 1_001);
    assert!(even_within_one(&counts, 1_001), "{counts:?}");
}

#[test]
fn weighted_round_robin_serves_small_weights() {
    // 1 : 100 is within the 10 × mean cap (mean 50.5), so it is kept.
    let ready = vec![Mock::new(0).weight(100), Mock::new(1).weight(1)];
    let picker = WeightedRoundRobin::new(ready, 1);
    let picks = 101_000;
    let counts = counts(&picker, 2, picks);
    assert!(counts[1].abs_diff(1_000) <= 10, "{counts:?}");
}

#[test]
fn weighted_round_robin_caps_outliers_at_ten_times_the_mean() {
    // One endpoint at 1 000 among 99 at 1: the mean is 10.99, so it is served as 109.9.
    let ready: Vec<Mock> = (0..100)
        .map(|i| Mock::new(i).weight(if i == 0 { 1_000 } else { 1 }))
        .collect();
    let picker = WeightedRoundRobin::new(ready, 4);
    let picks = 208_900;
    let counts = counts(&picker, 100, picks);
    let share = counts[0] as f64 / picks as f64;
    let expected = 109.9 / (109.9 + 99.0);
    assert!(
        (share - expected).abs() < 0.01,
        "share {share}, expected {expected}"
    );
}

#[test]
fn weighted_round_robin_is_proportional_across_threads() {
    let ready: Vec<Mock> = (0..4).map(|i| Mock::new(i).weight(i as u32 + 1)).collect();
    let picker = WeightedRoundRobin::new(ready, 8);
    let per_thread: Vec<Vec<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| counts(&picker, 4, 25_000)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..4 {
        let total: usize = per_thread.iter().map(|c| c[i]).sum();
        let expected = 100_000 * (i + 1) / 10;
        assert!(total.abs_diff(expected) <= expected / 100, "{i}: {total}");
    }
}

// ===== Policy, AnyPicker =====

#[test]
fn every_policy_queues_without_endpoints() {
    for policy in Policy::ALL {
        let picker = policy.build(Vec::<Mock>::new(), 1, |_| true);
        assert!(matches!(picker.pick(), Pick::Queue), "{policy}");
        assert!(picker.endpoints().is_empty());
    }
}

#[test]
fn policy_names_round_trip() {
    for policy in Policy::ALL {
        assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
    }
    assert_eq!(Policy::default(), Policy::RoundRobin);
    assert_eq!(Policy::P2cPeakEwma.to_string(), "p2c_peak_ewma");
    for alias in ["RoundRobin", "round-robin", "ROUND_ROBIN", " round_robin\n"] {
        assert_eq!(alias.parse(), Ok(Policy::RoundRobin), "{alias:?}");
    }
    assert_eq!("P2C".parse(), Ok(Policy::P2c));
    assert_eq!("p2c-peak-ewma".parse(), Ok(Policy::P2cPeakEwma));
    assert_eq!("WeightedRoundRobin".parse(), Ok(Policy::WeightedRoundRobin));
    assert_eq!("pick_first".parse(), Ok(Policy::PickFirst));
}

#[test]
fn unknown_policy_names_the_valid_ones() {
    let err = "maglev".parse::<Policy>().unwrap_err();
    assert_eq!(err.name(), "maglev");
    assert_eq!(
        err.to_string(),
        "unknown load-balancing policy \"maglev\": expected one of round_robin, \
         pick_first, p2c, p2c_peak_ewma, weighted_round_robin, least_request, ring_hash"
    );
    assert_eq!("least_request".parse(), Ok(Policy::LeastRequest));
    assert_eq!("ring-hash".parse(), Ok(Policy::RingHash));
    assert!("".parse::<Policy>().is_err());
    assert!("round__robin_x".parse::<Policy>().is_err());
}

#[test]
fn any_picker_keeps_its_endpoints_in_order() {
    for policy in Policy::ALL {
        let picker = policy.build(mocks(4), 0, |_| false);
        let ids: Vec<usize> = picker.endpoints().iter().map(|m| m.id).collect();
        assert_eq!(ids, [0, 1, 2, 3], "{policy}");
    }
}

// ===== PeakEwma =====

const MS: f64 = 1e6;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= b.abs() * 1e-12 + 1e-9)
}

#[test]
fn peak_ewma_has_no_estimate_before_a_sample() {
    let ewma = PeakEwma::default();
    assert_eq!(ewma.decay(), Duration::from_secs(10));
    assert_eq!(ewma.estimate(Instant::now()), None);
}

#[test]
fn peak_ewma_takes_peaks_at_once() {
    let ewma = PeakEwma::new(Duration::from_secs(10));
    let t0 = Instant::now();
    ewma.observe(Duration::from_millis(3), t0);
    assert_eq!(ewma.estimate(t0), Some(3.0 * MS));
    // A higher sample replaces the estimate whatever the history.
    let t1 = t0 + Duration::from_millis(1);
    ewma.observe(Duration::from_millis(50), t1);
    assert_eq!(ewma.estimate(t1), Some(50.0 * MS));
    // Even one a little higher, long after: replaced, not blended.
    let t2 = t1 + Duration::from_secs(10);
    ewma.observe(Duration::from_millis(51), t2);
    assert_eq!(ewma.estimate(t2), Some(51.0 * MS));
}

#[test]
fn peak_ewma_blends_lower_samples_by_elapsed_time() {
    let tau = Duration::from_secs(10);
    let ewma = PeakEwma::new(tau);
    let t0 = Instant::now();
    ewma.observe(Duration::from_millis(20), t0);
    // One τ later a 5 ms sample: w = e^-1.
    let t1 = t0 + tau;
    ewma.observe(Duration::from_millis(5), t1);
    let w = (-1.0_f64).exp();
    let expected = 20.0 * MS * w + 5.0 * MS * (1.0 - w);
    assert!(close(ewma.estimate(t1), expected));

    // A lower sample with no time elapsed changes nothing.
    ewma.observe(Duration::from_millis(1), t1);
    assert!(close(ewma.estimate(t1), expected));
}

#[test]
fn peak_ewma_decays_toward_zero_when_read() {
    let tau = Duration::from_secs(2);
    let ewma = PeakEwma::new(tau);
    let t0 = Instant::now();
    ewma.observe(Duration::from_millis(8), t0);
    assert!(close(ewma.estimate(t0 + tau), 8.0 * MS * (-1.0_f64).exp()));
    assert!(close(
        ewma.estimate(t0 + 3 * tau),
        8.0 * MS * (-3.0_f64).exp()
    ));
    // Reading does not change the state: an earlier time reads the undecayed value again.
    assert_eq!(ewma.estimate(t0), Some(8.0 * MS));
    // A time before the last update does not decay (or grow) it.
    assert_eq!(ewma.estimate(t0 - Duration::from_millis(5)), Some(8.0 * MS));
    // After long enough it is (almost) zero, but still an estimate.
    let much_later = ewma.estimate(t0 + 1_000 * tau);
    assert!(much_later.is_some_and(|e| e < 1.0), "{much_later:?}");
}

#[test]
fn peak_ewma_time_never_moves_backwards() {
    let tau = Duration::from_secs(1);
    let ewma = PeakEwma::new(tau);
    let t0 = Instant::now();
    ewma.observe(Duration::from_millis(10), t0 + tau);
    // A late report stamped earlier blends with zero elapsed time: no change.
    ewma.observe(Duration::from_millis(1), t0);
    assert_eq!(ewma.estimate(t0 + tau), Some(10.0 * MS));
}

#[test]
fn peak_ewma_zero_decay_is_not_nan() {
    let ewma = PeakEwma::new(Duration::ZERO);
    let t0 = Instant::now();
    ewma.observe(Duration::from_millis(4), t0);
    ewma.observe(Duration::from_millis(1), t0);
    let e = ewma.estimate(t0);
    assert!(e.is_some_and(f64::is_finite), "{e:?}");
    ewma.observe(Duration::from_millis(1), t0 + Duration::from_micros(1));
    assert!(close(
        ewma.estimate(t0 + Duration::from_micros(1)),
        1.0 * MS
    ));
}

// ===== properties =====

proptest! {
    #[test]
    fn round_robin_is_exact_over_whole_rounds(n in 1usize..200, rounds in 1usize..6, seed: u64) {
        let picker = Policy::RoundRobin.build(mocks(n), seed, |_| false);
        let counts = counts(&picker, n, n * rounds);
        prop_assert!(counts.iter().all(|&c| c == rounds), "{:?}", counts);
    }

    #[test]
    fn every_pick_is_in_range(
        n in 1usize..200,
        seed: u64,
        sticky in 0usize..250,
        loads in proptest::collection::vec(0u64..5, 200),
        // Small weights: `ring_hash` gives 100 entries per unit of weight, and larger rings
        // only slow the test down.
        weights in proptest::collection::vec(0u32..20, 200),
    ) {
        for policy in Policy::ALL {
            let ready: Vec<Mock> = (0..n)
                .map(|i| Mock::new(i).in_flight(loads[i]).weight(weights[i]).rtt_ms(1.0))
                .collect();
            let picker = policy.build(ready, seed, |m| m.id == sticky);
            for _ in 0..3 * n {
                match picker.pick() {
                    Pick::Ready(m) => {
                        let index = picker.endpoints().iter().position(|e| std::ptr::eq(e, m));
                        prop_assert_eq!(index, Some(m.id), "{}", policy);
                    }
                    Pick::Queue | Pick::Fail(_) => prop_assert!(false, "{} did not pick", policy),
                }
            }
        }
    }

    #[test]
    fn pick_first_picks_the_sticky_endpoint_else_the_first_in_order(
        n in 1usize..100,
        sticky in 0usize..150,
        seed: u64,
    ) {
        let picker = Policy::PickFirst.build(mocks(n), seed, |m| m.id == sticky);
        let expected = if sticky < n { sticky } else { 0 };
        for _ in 0..10 {
            prop_assert_eq!(picked(&picker), expected);
        }
    }

    #[test]
    fn p2c_never_picks_the_single_most_loaded(
        loads in proptest::collection::vec(0u64..1_000, 2..50),
        seed: u64,
    ) {
        let max = loads.iter().copied().max().unwrap_or(0);
        prop_assume!(loads.iter().filter(|l| **l == max).count() == 1);
        let busiest = loads.iter().position(|l| *l == max).unwrap_or(0);
        let ready: Vec<Mock> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| Mock::new(i).in_flight(*l))
            .collect();
        let picker = Policy::P2c.build(ready, seed, |_| false);
        for _ in 0..20 * loads.len() {
            prop_assert_ne!(picked(&picker), busiest);
        }
    }

    #[test]
    fn weighted_round_robin_never_starves_an_endpoint(
        weights in proptest::collection::vec(1u32..20, 1..20),
        seed: u64,
    ) {
        let n = weights.len();
        let ready: Vec<Mock> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Mock::new(i).weight(*w))
            .collect();
        let picker = Policy::WeightedRoundRobin.build(ready, seed, |_| false);
        let total: u32 = weights.iter().sum();
        // Weights within 10× of each other are served in proportion: over enough whole
        // rounds every endpoint is picked at least once.
        let counts = counts(&picker, n, 4 * total as usize);
        prop_assert!(counts.iter().all(|c| *c > 0), "{:?} for weights {:?}", counts, weights);
    }
}
