//! go-zero's adaptive load shedding (`CpuThreshold`, 900‰ by default): while the process's
//! CPU usage is at or above the threshold (and for a second after the last call it refused),
//! a unary call is refused with RESOURCE_EXHAUSTED if more calls are in flight, now and on
//! average, than the server has shown it can finish: the most calls it finished in 100 ms
//! over the last 5 s, times its lowest average response time in that window (in units of
//! 100 ms), scaled down as the CPU usage climbs from the threshold to 100% (not below a tenth).
//!
//! CPU usage is go-zero's: the process's CPU time over the CPUs it may use
//! (`available_parallelism`, which follows a cgroup quota), in thousandths, sampled every
//! 250 ms and averaged with a weight of 0.95 on the past.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 50;
const BUCKET: Duration = Duration::from_millis(100);
/// How long the shedder stays alert after it last refused a call under CPU pressure.
const COOL_OFF: Duration = Duration::from_secs(1);
const FLYING_BETA: f64 = 0.9;
/// The lowest response time assumed with no sample: one second.
const DEFAULT_MIN_RT_MS: f64 = 1000.0;

/// Sums and counts per 100 ms over the last 5 s, the current bucket left out of reads.
struct Window {
    /// (sum, count) per bucket.
    buckets: [(i64, i64); BUCKETS],
    offset: usize,
    start: Instant,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            buckets: [(0, 0); BUCKETS],
            offset: 0,
            start: now,
        }
    }

    fn span(&self, now: Instant) -> usize {
        let n = now.saturating_duration_since(self.start).as_nanos() / BUCKET.as_nanos();
        usize::try_from(n).map_or(BUCKETS, |n| n.min(BUCKETS))
    }

    fn add(&mut self, now: Instant, value: i64) {
        let span = self.span(now);
        if span > 0 {
            for i in 1..=span {
                self.buckets[(self.offset + i) % BUCKETS] = (0, 0);
            }
            self.offset = (self.offset + span) % BUCKETS;
            let into = now.saturating_duration_since(self.start).as_nanos() % BUCKET.as_nanos();
            let into = Duration::from_nanos(u64::try_from(into).unwrap_or(0));
            self.start = now.checked_sub(into).unwrap_or(now);
        }
        let bucket = &mut self.buckets[self.offset];
        bucket.0 += value;
        bucket.1 += 1;
    }

    /// The buckets of the window but the current one, oldest first.
    fn each(&self, now: Instant, mut f: impl FnMut((i64, i64))) {
        let span = self.span(now);
        let count = if span == 0 {
            BUCKETS - 1
        } else {
            BUCKETS - span
        };
        for i in 0..count {
            f(self.buckets[(self.offset + span + 1 + i) % BUCKETS]);
        }
    }
}

struct State {
    passes: Window,
    rts: Window,
    avg_flying: f64,
    /// When the CPU was last seen over the threshold.
    overloaded_at: Option<Instant>,
    dropped_recently: bool,
}

/// The shedder of one server.
pub(crate) struct Shedder {
    threshold: u64,
    /// The CPU usage in thousandths, as the sampler last computed it.
    cpu: Arc<AtomicU64>,
    flying: AtomicI64,
    state: Mutex<State>,
}

impl std::fmt::Debug for Shedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shedder")
            .field("threshold", &self.threshold)
            .field("cpu", &self.cpu.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A call let through: tell the shedder how it ended.
pub(crate) struct Ticket {
    shedder: Arc<Shedder>,
}

impl Ticket {
    /// Ends the call: `passed` unless it ran out of time; `elapsed` is its response time.
    pub(crate) fn done(self, passed: bool, elapsed: Duration) {
        let shedder = &self.shedder;
        let flying = shedder.flying.fetch_sub(1, Ordering::SeqCst) - 1;
        let now = Instant::now();
        let mut state = shedder.lock();
        state.avg_flying = state.avg_flying * FLYING_BETA + flying as f64 * (1.0 - FLYING_BETA);
        if passed {
            let rt = i64::try_from(elapsed.as_micros().div_ceil(1000)).unwrap_or(i64::MAX);
            state.rts.add(now, rt);
            state.passes.add(now, 1);
        }
    }
}

impl Shedder {
    /// A shedder refusing calls above `threshold` thousandths of CPU, as `cpu` reads it.
    pub(crate) fn new(threshold: u64, cpu: Arc<AtomicU64>) -> Self {
        let now = Instant::now();
        Self {
            threshold,
            cpu,
            flying: AtomicI64::new(0),
            state: Mutex::new(State {
                passes: Window::new(now),
                rts: Window::new(now),
                avg_flying: 0.0,
                overloaded_at: None,
                dropped_recently: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn threshold(&self) -> u64 {
        self.threshold
    }

    pub(crate) fn in_flight(&self) -> i64 {
        self.flying.load(Ordering::SeqCst)
    }

    /// A ticket for a call, or `None` if it is to be refused.
    pub(crate) fn allow(self: &Arc<Self>) -> Option<Ticket> {
        if self.should_drop(Instant::now()) {
            return None;
        }
        self.flying.fetch_add(1, Ordering::SeqCst);
        Some(Ticket {
            shedder: self.clone(),
        })
    }

    fn should_drop(&self, now: Instant) -> bool {
        let cpu = self.cpu.load(Ordering::Relaxed);
        let mut state = self.lock();
        let overloaded = cpu >= self.threshold;
        if overloaded {
            state.overloaded_at = Some(now);
        }
        let hot = state.dropped_recently
            && state
                .overloaded_at
                .is_some_and(|at| now.saturating_duration_since(at) < COOL_OFF);
        if !hot {
            state.dropped_recently = false;
        }
        if !(overloaded || hot) {
            return false;
        }
        let max_flight = self.max_flight(&state, now, cpu);
        let flying = self.flying.load(Ordering::SeqCst) as f64;
        let drop = state.avg_flying > max_flight && flying > max_flight;
        if drop {
            state.dropped_recently = true;
            tracing::warn!(
                cpu,
                flying,
                avg_flying = state.avg_flying,
                max_flight,
                "[RPC] shedding: service overloaded"
            );
        }
        drop
    }

    /// The calls in flight the server can take now.
    fn max_flight(&self, state: &State, now: Instant, cpu: u64) -> f64 {
        let mut max_pass = 1;
        state
            .passes
            .each(now, |(sum, _)| max_pass = max_pass.max(sum));
        let mut min_rt = DEFAULT_MIN_RT_MS;
        state.rts.each(now, |(sum, count)| {
            if count > 0 {
                min_rt = min_rt.min((sum as f64 / count as f64).round());
            }
        });
        // Passes per 100 ms times the response time in ms, per 100 ms.
        let scale = Duration::from_secs(1).as_secs_f64() / BUCKET.as_secs_f64() / 1000.0;
        let factor = ((1000.0 - cpu as f64) / (1000.0 - self.threshold as f64)).clamp(0.1, 1.0);
        (max_pass as f64 * min_rt * scale).max(1.0) * factor
    }
}

/// Samples the process's CPU usage into `cpu` every 250 ms until `cpu` has no other owner.
pub(crate) fn sample_cpu(cpu: Arc<AtomicU64>) {
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last: Option<(std::time::Instant, Duration)> = None;
        let mut average = 0.0;
        while Arc::strong_count(&cpu) > 1 {
            tick.tick().await;
            let Some(used) = process_cpu_time() else {
                return;
            };
            let now = std::time::Instant::now();
            if let Some((then, before)) = last {
                let wall = now.duration_since(then).as_secs_f64() * cores;
                let usage = (used.saturating_sub(before).as_secs_f64() / wall * 1000.0).min(1000.0);
                average = average * 0.95 + usage * 0.05;
                cpu.store(average.round() as u64, Ordering::Relaxed);
            }
            last = Some((now, used));
        }
    });
}

/// The CPU time (user and system) the process has used.
fn process_cpu_time() -> Option<Duration> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Some(time(usage.user_time()) + time(usage.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shedder(cpu: u64) -> (Arc<Shedder>, Arc<AtomicU64>) {
        let usage = Arc::new(AtomicU64::new(cpu));
        (Arc::new(Shedder::new(900, usage.clone())), usage)
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_threshold_nothing_is_refused() {
        let (shedder, _) = shedder(500);
        let held: Vec<_> = (0..10_000).filter_map(|_| shedder.allow()).collect();
        assert_eq!(held.len(), 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn above_the_threshold_calls_past_what_the_server_finishes_are_refused() {
        let (shedder, cpu) = shedder(0);
        // The server finished 20 calls of 50 ms every 100 ms for 2 s: it can hold 20 × 50 /
        // 100 = 10 calls in flight.
        for _ in 0..20 {
            let tickets: Vec<_> = (0..20).filter_map(|_| shedder.allow()).collect();
            tokio::time::advance(Duration::from_millis(50)).await;
            for t in tickets {
                t.done(true, Duration::from_millis(50));
            }
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        // 40 calls come in while the CPU is at 95%: the factor (1000 - 950) / 100 = 0.5 leaves
        // room for 5 in flight, and the average in flight (about 5 after the last rounds) is
        // past it: the calls past 5 in flight are refused.
        cpu.store(950, Ordering::Relaxed);
        let held: Vec<_> = (0..40).filter_map(|_| shedder.allow()).collect();
        assert!(
            (5..40).contains(&held.len()),
            "{} of 40 let through",
            held.len()
        );
        assert_eq!(shedder.in_flight(), held.len() as i64);
        // Back under the threshold, it stays alert for a second after its last refusal, then
        // lets calls through whatever is in flight.
        cpu.store(300, Ordering::Relaxed);
        tokio::time::advance(Duration::from_millis(1100)).await;
        let more: Vec<_> = (0..40).filter_map(|_| shedder.allow()).collect();
        assert_eq!(more.len(), 40);
    }

    #[test]
    fn the_windows_leave_the_current_bucket_out_and_forget_after_five_seconds() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        w.add(t0, 7);
        let sum = |w: &Window, at| {
            let mut s = 0;
            w.each(at, |(sum, _)| s += sum);
            s
        };
        assert_eq!(sum(&w, t0), 0, "the current bucket is left out");
        assert_eq!(sum(&w, t0 + Duration::from_millis(100)), 7);
        assert_eq!(sum(&w, t0 + Duration::from_millis(4_999)), 7);
        assert_eq!(sum(&w, t0 + Duration::from_millis(5_000)), 0);
    }
}
