//! Connection backoff, as in gRPC's
//! [connection backoff spec](https://github.com/grpc/grpc/blob/master/doc/connection-backoff.md):
//!
//! ```text
//! ConnectWithBackoff()
//!   current_backoff = INITIAL_BACKOFF
//!   current_deadline = now() + INITIAL_BACKOFF
//!   while (TryConnect(Max(current_deadline, now() + MIN_CONNECT_TIMEOUT)) != SUCCESS)
//!     SleepUntil(current_deadline)
//!     current_backoff = Min(current_backoff * MULTIPLIER, MAX_BACKOFF)
//!     current_deadline = now() + current_backoff +
//!       UniformRandom(-JITTER * current_backoff, JITTER * current_backoff)
//! ```
//!
//! The time an attempt takes counts against its backoff: an attempt that fails after 300 ms
//! of a 1 s backoff is followed by the next one 700 ms later. The sequence starts again once a
//! connection is READY (the server's SETTINGS arrived).

use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

/// Connection backoff settings. The defaults are the gRPC spec's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectBackoff {
    /// Delay between the first and the second attempt. Defaults to 1 s.
    pub initial: Duration,
    /// Growth of the delay per failed attempt. Defaults to 1.6.
    pub multiplier: f64,
    /// Relative spread of every delay after the first, 0 to 1. Defaults to 0.2.
    pub jitter: f64,
    /// Cap on the delay before jitter. Defaults to 120 s.
    pub max: Duration,
    /// Least time given to one connection attempt (TCP, TLS, HTTP/2 preface and the server's
    /// SETTINGS). Defaults to 20 s.
    pub min_connect_timeout: Duration,
}

impl Default for ConnectBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
            min_connect_timeout: Duration::from_secs(20),
        }
    }
}

/// When one connection attempt must give up, and when the next one may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// `Max(current_deadline, now + MIN_CONNECT_TIMEOUT)`.
    pub(crate) connect_deadline: Instant,
    /// `current_deadline`: the earliest start of the next attempt if this one fails.
    pub(crate) retry_at: Instant,
}

/// One running backoff sequence, with its random source passed in.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: ConnectBackoff,
    rng: SmallRng,
    /// `current_backoff`, or `None` before the first attempt of a sequence.
    current: Option<Duration>,
}

impl Backoff {
    pub(crate) fn new(config: ConnectBackoff, rng: SmallRng) -> Self {
        Self {
            config,
            rng,
            current: None,
        }
    }

    /// Starts an attempt at `now`.
    pub(crate) fn attempt(&mut self, now: Instant) -> Attempt {
        let c = &self.config;
        let delay = match self.current {
            None => {
                self.current = Some(c.initial);
                c.initial
            }
            Some(current) => {
                let grown = current.as_secs_f64() * c.multiplier.max(1.0);
                let next = Duration::from_secs_f64(grown.min(c.max.as_secs_f64()));
                self.current = Some(next);
                let jitter = c.jitter.clamp(0.0, 1.0);
                let spread = if jitter > 0.0 {
                    self.rng.random_range(-jitter..=jitter)
                } else {
                    0.0
                };
                Duration::from_secs_f64(next.as_secs_f64() * (1.0 + spread))
            }
        };
        let retry_at = now + delay;
        Attempt {
            connect_deadline: retry_at.max(now + c.min_connect_timeout),
            retry_at,
        }
    }

    /// Starts the sequence again: the next attempt is a first attempt.
    pub(crate) fn reset(&mut self) {
        self.current = None;
    }

    pub(crate) fn config(&self) -> &ConnectBackoff {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn delays(config: ConnectBackoff, seed: u64, n: usize) -> Vec<Duration> {
        let mut backoff = Backoff::new(config, SmallRng::seed_from_u64(seed));
        let now = Instant::now();
        (0..n)
            .map(|_| backoff.attempt(now).retry_at - now)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn without_jitter_the_sequence_is_the_spec_s() {
        let config = ConnectBackoff {
            jitter: 0.0,
            ..ConnectBackoff::default()
        };
        let secs: Vec<f64> = delays(config, 1, 13)
            .iter()
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e6)
            .collect();
        assert_eq!(
            secs,
            [
                1.0, 1.6, 2.56, 4.096, 6.5536, 10.48576, 16.777216, 26.843546, 42.949673,
                68.719477, 109.951163, 120.0, 120.0
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_seeded_sequence_is_exact_and_within_the_jitter() {
        let config = ConnectBackoff::default();
        let a = delays(config, 7, 20);
        assert_eq!(a, delays(config, 7, 20), "same seed, same sequence");
        assert_ne!(a, delays(config, 8, 20), "another seed, another sequence");
        assert_eq!(
            a[0],
            Duration::from_secs(1),
            "the first delay has no jitter"
        );
        let mut base = 1.0f64;
        for d in &a[1..] {
            base = (base * 1.6).min(120.0);
            let d = d.as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{d} not within 20% of {base}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_connect_deadline_is_at_least_the_min_connect_timeout() {
        let mut backoff = Backoff::new(ConnectBackoff::default(), SmallRng::seed_from_u64(1));
        let now = Instant::now();
        let first = backoff.attempt(now);
        assert_eq!(first.retry_at, now + Duration::from_secs(1));
        assert_eq!(first.connect_deadline, now + Duration::from_secs(20));
        for _ in 0..12 {
            backoff.attempt(now);
        }
        let late = backoff.attempt(now);
        assert!(late.retry_at - now >= Duration::from_secs(96));
        assert_eq!(
            late.connect_deadline, late.retry_at,
            "a long backoff is the deadline"
        );
        backoff.reset();
        assert_eq!(backoff.attempt(now), first);
    }
}
