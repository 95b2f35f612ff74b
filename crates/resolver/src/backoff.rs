//! Jittered exponential backoff for re-creating watches and re-registering.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Backoff settings: `initial × multiplier^n`, capped at `max`, each delay spread by ±`jitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// First delay. Defaults to 100 ms.
    pub initial: Duration,
    /// Growth per attempt. Defaults to 1.6.
    pub multiplier: f64,
    /// Relative spread of each delay, 0 to 1. Defaults to 0.2.
    pub jitter: f64,
    /// Cap on the delay before jitter. Defaults to 1 s, so that a resolver or a registrar
    /// finds etcd again within about a second of its return after a long outage; a refused
    /// connection attempt a second costs etcd nothing worth saving.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(1),
        }
    }
}

/// The state of one backoff sequence.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig, rng: SmallRng) -> Self {
        Self {
            config,
            attempt: 0,
            rng,
        }
    }

    pub(crate) fn from_entropy(config: BackoffConfig) -> Self {
        Self::new(config, SmallRng::from_rng(&mut rand::rng()))
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let c = &self.config;
        let base =
            c.initial.as_secs_f64() * c.multiplier.max(1.0).powi(self.attempt.min(64) as i32);
        let base = base.min(c.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let jitter = c.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            self.rng.random_range(-jitter..=jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((base * (1.0 + spread)).max(0.0))
    }

    /// Starts the sequence again, after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.0,
            max: Duration::from_millis(500),
        };
        let mut b = Backoff::new(config, SmallRng::seed_from_u64(1));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut b = Backoff::new(BackoffConfig::default(), SmallRng::seed_from_u64(7));
        for _ in 0..1000 {
            let d = b.next_delay().as_secs_f64();
            assert!((0.1 * 0.8 - 1e-9..=5.0 * 1.2 + 1e-9).contains(&d), "{d}");
        }
    }
}
