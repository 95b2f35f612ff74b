//! Outlier detection (gRFC A50): every `interval`, instances whose RPCs fail much more than the
//! others' are ejected (not picked) for a while, longer each time they are ejected again.
//!
//! - **Success-rate ejection**: among the instances with at least `request_volume` RPCs in the
//!   interval (and only if there are `minimum_hosts` of them), those whose success rate is
//!   below `mean − stdev × stdev_factor / 1000` are ejected, each with probability
//!   `enforcement_percentage` %.
//! - **Failure-percentage ejection**: among the same kind of instances, those with more than
//!   `threshold` % of failed RPCs are ejected, with probability `enforcement_percentage` %.
//! - No ejection brings the ejected share of instances to `max_ejection_percent` % or more.
//! - An ejected instance returns after `min(base_ejection_time × multiplier,
//!   max(base_ejection_time, max_ejection_time))`; `multiplier` counts its ejections and
//!   decreases by one every interval it spends not ejected.

use std::time::Duration;

use std::time::Instant;

/// Outlier detection settings (gRFC A50), with A50's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// How often ejections are decided: 10 s.
    pub interval: Duration,
    /// The ejection time of a first ejection: 30 s.
    pub base_ejection_time: Duration,
    /// The longest ejection time: 300 s (or `base_ejection_time`, if longer).
    pub max_ejection_time: Duration,
    /// The largest share of instances ejected at once, in %: 10.
    pub max_ejection_percent: u32,
    /// Success-rate ejection, if on (default: on, with its defaults).
    pub success_rate: Option<SuccessRateEjection>,
    /// Failure-percentage ejection, if on (default: off).
    pub failure_percentage: Option<FailurePercentageEjection>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: None,
        }
    }
}

/// Ejection of instances whose success rate is far below the others'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuccessRateEjection {
    /// The threshold is `mean − stdev × stdev_factor / 1000`: 1900.
    pub stdev_factor: u32,
    /// The chance, in %, that an outlier is ejected: 100.
    pub enforcement_percentage: u32,
    /// How many instances with enough RPCs it takes to judge: 5.
    pub minimum_hosts: u32,
    /// The RPCs an instance needs in an interval to be judged: 100.
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        Self {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// Ejection of instances whose share of failed RPCs is above a threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailurePercentageEjection {
    /// The failure percentage above which an instance is ejected: 85.
    pub threshold: u32,
    /// The chance, in %, that such an instance is ejected: 100.
    pub enforcement_percentage: u32,
    /// How many instances with enough RPCs it takes to judge: 5.
    pub minimum_hosts: u32,
    /// The RPCs an instance needs in an interval to be judged: 50.
    pub request_volume: u32,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        Self {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl OutlierDetection {
    /// Checks the settings; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("interval: must be positive".into());
        }
        if self.base_ejection_time.is_zero() {
            return Err("base_ejection_time: must be positive".into());
        }
        let percent = |name: &str, v: u32| {
            if v > 100 {
                Err(format!("{name}: {v} is more than 100"))
            } else {
                Ok(())
            }
        };
        percent("max_ejection_percent", self.max_ejection_percent)?;
        if let Some(s) = &self.success_rate {
            percent(
                "success_rate_ejection.enforcement_percentage",
                s.enforcement_percentage,
            )?;
        }
        if let Some(f) = &self.failure_percentage {
            percent("failure_percentage_ejection.threshold", f.threshold)?;
            percent(
                "failure_percentage_ejection.enforcement_percentage",
                f.enforcement_percentage,
            )?;
        }
        Ok(())
    }

    fn ejection_time(&self, multiplier: u32) -> Duration {
        let cap = self.base_ejection_time.max(self.max_ejection_time);
        self.base_ejection_time.saturating_mul(multiplier).min(cap)
    }
}

/// One instance's outlier-detection state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tracker {
    /// Call counters at the start of the interval.
    succeeded: u64,
    failed: u64,
    /// When it was ejected, while it is.
    ejected_at: Option<Instant>,
    multiplier: u32,
}

impl Tracker {
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_at.is_some()
    }

    /// When it was ejected, while it is.
    pub(crate) fn ejected_at(&self) -> Option<Instant> {
        self.ejected_at
    }
}

/// One run of the algorithm over every instance: `counters` gives each one's cumulative
/// (succeeded, failed) calls, `random` draws in `[0, 100)` for enforcement. Returns whether
/// any instance was ejected or returned.
pub(crate) fn run<'a>(
    config: &OutlierDetection,
    now: Instant,
    trackers: impl Iterator<Item = (&'a mut Tracker, (u64, u64))>,
    mut random: impl FnMut() -> u32,
) -> bool {
    // The interval's results, per instance.
    let mut hosts: Vec<(&mut Tracker, u64, u64)> = trackers
        .map(|(t, (succeeded, failed))| {
            let ok = succeeded.saturating_sub(t.succeeded);
            let bad = failed.saturating_sub(t.failed);
            t.succeeded = succeeded;
            t.failed = failed;
            (t, ok, bad)
        })
        .collect();
    let total = hosts.len();
    let mut changed = false;
    let mut ejected = hosts.iter().filter(|(t, ..)| t.is_ejected()).count();
    let may_eject = |ejected: usize| ejected * 100 < total * config.max_ejection_percent as usize;

    if let Some(sr) = &config.success_rate {
        let volume = u64::from(sr.request_volume);
        let rates: Vec<f64> = hosts
            .iter()
            .filter(|(_, ok, bad)| ok + bad >= volume.max(1))
            .map(|(_, ok, bad)| *ok as f64 / (ok + bad) as f64)
            .collect();
        if rates.len() >= sr.minimum_hosts.max(1) as usize {
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            let variance =
                rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
            let threshold = mean - variance.sqrt() * (f64::from(sr.stdev_factor) / 1000.0);
            for (t, ok, bad) in &mut hosts {
                if !may_eject(ejected) {
                    break;
                }
                let calls = *ok + *bad;
                if t.is_ejected() || calls < volume.max(1) {
                    continue;
                }
                if (*ok as f64 / calls as f64) < threshold && random() < sr.enforcement_percentage {
                    eject(t, now);
                    ejected += 1;
                    changed = true;
                }
            }
        }
    }

    if let Some(fp) = &config.failure_percentage {
        let volume = u64::from(fp.request_volume).max(1);
        let judged = hosts
            .iter()
            .filter(|(_, ok, bad)| ok + bad >= volume)
            .count();
        if judged >= fp.minimum_hosts.max(1) as usize {
            for (t, ok, bad) in &mut hosts {
                if !may_eject(ejected) {
                    break;
                }
                let calls = *ok + *bad;
                if t.is_ejected() || calls < volume {
                    continue;
                }
                if *bad * 100 > u64::from(fp.threshold) * calls
                    && random() < fp.enforcement_percentage
                {
                    eject(t, now);
                    ejected += 1;
                    changed = true;
                }
            }
        }
    }

    for (t, ..) in &mut hosts {
        match t.ejected_at {
            None => t.multiplier = t.multiplier.saturating_sub(1),
            Some(at) if now >= at + config.ejection_time(t.multiplier) => {
                t.ejected_at = None;
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed
}

fn eject(t: &mut Tracker, now: Instant) {
    t.ejected_at = Some(now);
    t.multiplier = t.multiplier.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierDetection {
        OutlierDetection {
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
            success_rate: None,
            failure_percentage: Some(FailurePercentageEjection {
                threshold: 40,
                enforcement_percentage: 100,
                minimum_hosts: 3,
                request_volume: 10,
            }),
        }
    }

    /// Runs once with per-host (ok, failed) calls added to their counters.
    fn step(
        config: &OutlierDetection,
        now: Instant,
        hosts: &mut [(Tracker, (u64, u64))],
        calls: &[(u64, u64)],
    ) -> bool {
        for ((_, c), (ok, bad)) in hosts.iter_mut().zip(calls) {
            c.0 += ok;
            c.1 += bad;
        }
        run(config, now, hosts.iter_mut().map(|(t, c)| (t, *c)), || 0)
    }

    #[test]
    fn failure_percentage_ejects_then_returns_after_the_ejection_time_growing_each_time() {
        let config = config();
        let t0 = Instant::now();
        let mut hosts = vec![(Tracker::default(), (0, 0)); 3];
        assert!(step(
            &config,
            t0,
            &mut hosts,
            &[(50, 50), (100, 0), (100, 0)]
        ));
        assert!(hosts[0].0.is_ejected());
        assert!(!hosts[1].0.is_ejected() && !hosts[2].0.is_ejected());
        // Back after 10 s, not before.
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!step(
            &config,
            at(9),
            &mut hosts,
            &[(0, 0), (100, 0), (100, 0)]
        ));
        assert!(hosts[0].0.is_ejected());
        assert!(step(
            &config,
            at(10),
            &mut hosts,
            &[(0, 0), (100, 0), (100, 0)]
        ));
        assert!(!hosts[0].0.is_ejected());
        // Ejected again at once: 20 s this time, then capped at 25 s.
        assert!(step(
            &config,
            at(11),
            &mut hosts,
            &[(5, 5), (100, 0), (100, 0)]
        ));
        assert!(hosts[0].0.is_ejected());
        assert!(!step(
            &config,
            at(30),
            &mut hosts,
            &[(0, 0), (10, 0), (10, 0)]
        ));
        assert!(step(
            &config,
            at(31),
            &mut hosts,
            &[(0, 0), (10, 0), (10, 0)]
        ));
        assert!(step(
            &config,
            at(32),
            &mut hosts,
            &[(5, 5), (10, 0), (10, 0)]
        ));
        assert!(!step(
            &config,
            at(56),
            &mut hosts,
            &[(0, 0), (10, 0), (10, 0)]
        ));
        assert!(step(
            &config,
            at(57),
            &mut hosts,
            &[(0, 0), (10, 0), (10, 0)]
        ));
    }

    #[test]
    fn too_few_hosts_with_enough_calls_eject_nobody() {
        let config = config();
        let mut hosts = vec![(Tracker::default(), (0, 0)); 3];
        assert!(!step(
            &config,
            Instant::now(),
            &mut hosts,
            &[(0, 50), (100, 0), (9, 0)]
        ));
        assert!(hosts.iter().all(|(t, _)| !t.is_ejected()));
    }

    #[test]
    fn max_ejection_percent_bounds_the_ejected_share() {
        let mut config = config();
        config.max_ejection_percent = 33;
        let mut hosts = vec![(Tracker::default(), (0, 0)); 3];
        step(
            &config,
            Instant::now(),
            &mut hosts,
            &[(0, 50), (0, 50), (100, 0)],
        );
        let ejected = hosts.iter().filter(|(t, _)| t.is_ejected()).count();
        assert_eq!(ejected, 1);
    }

    #[test]
    fn success_rate_ejects_the_outlier_among_similar_hosts() {
        let config = OutlierDetection {
            success_rate: Some(SuccessRateEjection {
                stdev_factor: 1000,
                minimum_hosts: 5,
                request_volume: 100,
                enforcement_percentage: 100,
            }),
            failure_percentage: None,
            ..config()
        };
        let mut hosts = vec![(Tracker::default(), (0, 0)); 6];
        let calls = [(100, 0), (99, 1), (100, 0), (98, 2), (100, 0), (40, 60)];
        assert!(step(&config, Instant::now(), &mut hosts, &calls));
        let ejected: Vec<bool> = hosts.iter().map(|(t, _)| t.is_ejected()).collect();
        assert_eq!(ejected, [false, false, false, false, false, true]);
    }

    #[test]
    fn enforcement_percentage_is_a_probability() {
        let mut config = config();
        if let Some(f) = config.failure_percentage.as_mut() {
            f.enforcement_percentage = 30;
        }
        let mut hosts = vec![(Tracker::default(), (0, 0)); 3];
        let now = Instant::now();
        let calls = [(0u64, 50u64), (100, 0), (100, 0)];
        for ((_, c), (ok, bad)) in hosts.iter_mut().zip(calls) {
            *c = (ok, bad);
        }
        // A draw of 30 or more spares it; below 30 ejects.
        assert!(!run(
            &config,
            now,
            hosts.iter_mut().map(|(t, c)| (t, *c)),
            || 30
        ));
        for ((_, c), (ok, bad)) in hosts.iter_mut().zip(calls) {
            c.0 += ok;
            c.1 += bad;
        }
        assert!(run(
            &config,
            now,
            hosts.iter_mut().map(|(t, c)| (t, *c)),
            || 29
        ));
    }
}
