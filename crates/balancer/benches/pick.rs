//! Nanoseconds per `pick()` for every policy at 3, 100 and 10 000 READY endpoints.
//!
//! Run with `cargo bench -p switchboard-balancer --bench pick`. The endpoints are in-memory
//! stand-ins with a little load, weights 1 to 4 and a peak-EWMA estimator with a few samples, so
//! `p2c_peak_ewma` pays for its clock read and two decayed estimates as it would in the balancer;
//! `p2c_peak_ewma_pick_at` is the same pick with the time passed in by the caller.
//! Picks run on one thread; the figures are the cost of the choice itself, without contention.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use switchboard_balancer::picker::{Endpoint, PeakEwma, Pick, Picker, Policy};

/// A READY endpoint as the pickers see it.
struct Ready {
    in_flight: AtomicU64,
    weight: u32,
    rtt: PeakEwma,
}

impl Endpoint for Ready {
    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn weight(&self) -> u32 {
        self.weight
    }

    fn rtt_estimate(&self, now: Instant) -> Option<f64> {
        self.rtt.estimate(now)
    }

    fn peak_ewma(&self) -> Option<&PeakEwma> {
        Some(&self.rtt)
    }
}

/// `n` endpoints with load 0–3, weights 1–4 and RTT estimates around 1–3 ms.
fn endpoints(n: usize) -> Vec<Ready> {
    let t0 = Instant::now();
    (0..n)
        .map(|i| {
            let rtt = PeakEwma::default();
            for k in 0..4 {
                let sample = Duration::from_micros(1_000 + ((i * 7 + k * 13) % 2_000) as u64);
                rtt.observe(sample, t0 + Duration::from_millis(k as u64));
            }
            Ready {
                in_flight: AtomicU64::new((i % 4) as u64),
                weight: (i % 4) as u32 + 1,
                rtt,
            }
        })
        .collect()
}

/// The endpoint picked, as a pointer `black_box` can keep.
fn ready(pick: Pick<'_, Ready>) -> *const Ready {
    match pick {
        Pick::Ready(e) => black_box(e),
        Pick::Queue | Pick::Fail(_) => std::ptr::null(),
    }
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for policy in Policy::ALL {
        for n in [3, 100, 10_000] {
            let picker = policy.build(endpoints(n), 0x5EED, |_| false);
            group.bench_with_input(BenchmarkId::new(policy.as_str(), n), &picker, |b, p| {
                b.iter(|| ready(black_box(p).pick()));
            });
            if policy == Policy::P2cPeakEwma {
                // The same with the clock read by the caller, as the channel can for each RPC.
                let id = BenchmarkId::new("p2c_peak_ewma_pick_at", n);
                let now = Instant::now();
                group.bench_with_input(id, &picker, |b, p| {
                    b.iter(|| ready(black_box(p).pick_at(black_box(now))));
                });
            }
        }
    }
    group.finish();
}

// What `criterion_group!` and `criterion_main!` expand to, without their undocumented `pub fn`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    pick(&mut criterion);
    criterion.final_summary();
}
