//! Side-by-side comparisons: overhead over one server, throughput over three, and tail latency
//! with one slow instance of three.
//!
//! The contenders of a comparison take turns in the same run, each for one round of the same
//! length, the order rotating every round (A B C A, then B C A A, …), so that a drift of the
//! machine (another tenant, a thermal limit) reaches each of them alike. A ratio is computed
//! per round (contender ÷ baseline of the same round); the table shows the median ratio and
//! the range over rounds. The baseline also runs twice per round, and its ratio to itself (A/A)
//! is the noise floor.

use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use switchboard::balancer::Policy;

use crate::Settings;
use crate::load::{self, Caller, Sample};
use crate::report::{Report, Spread, Verdict, micros};
use crate::servers::Placement;

/// Reply delay of the slow instance.
const SLOW_DELAY: Duration = Duration::from_millis(50);

/// Callers in the slow-instance scenario.
const SLOW_CONCURRENCY: usize = 64;

/// Runs every contender for one round per turn, `settings.rounds` times, after one warm-up
/// turn each; returns each contender's samples, by round.
pub(crate) async fn alternate(
    contenders: &[(&str, &Caller)],
    concurrency: usize,
    settings: &Settings,
    by_instance: bool,
) -> Result<Vec<Vec<Sample>>> {
    for (_, caller) in contenders {
        load::run(caller, concurrency, settings.warmup, false).await?;
    }
    let n = contenders.len();
    let mut samples: Vec<Vec<Sample>> = (0..n).map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for turn in 0..n {
            let i = (turn + round) % n;
            let (name, caller) = contenders[i];
            let sample = load::run(caller, concurrency, settings.round, by_instance).await?;
            eprintln!(
                "    c={concurrency} round {} {name:<28} {:>8.0} rps  p50 {:>7}  p99 {:>7}  {:>5.1} µs CPU/RPC  {} failed",
                round + 1,
                sample.rps(),
                micros(sample.quantile_us(0.5)),
                micros(sample.quantile_us(0.99)),
                sample.cpu_per_rpc_us(),
                sample.errors,
            );
            samples[i].push(sample);
        }
    }
    Ok(samples)
}

/// The spread over rounds of `f(contender) ÷ f(baseline)`.
pub(crate) fn ratio(base: &[Sample], other: &[Sample], f: impl Fn(&Sample) -> f64) -> Spread {
    let ratios: Vec<f64> = base.iter().zip(other).map(|(b, o)| f(o) / f(b)).collect();
    Spread::of(&ratios)
}

/// The median over rounds of RPS, p50, p99 and CPU per RPC, and the failed RPCs in all.
pub(crate) fn medians(samples: &[Sample]) -> ([f64; 4], u64) {
    let m =
        |f: &dyn Fn(&Sample) -> f64| Spread::of(&samples.iter().map(f).collect::<Vec<_>>()).median;
    (
        [
            m(&|s| s.rps()),
            m(&|s| s.quantile_us(0.5)),
            m(&|s| s.quantile_us(0.99)),
            m(&|s| s.cpu_per_rpc_us()),
        ],
        samples.iter().map(|s| s.errors).sum(),
    )
}

/// Ratio rows of `others` against `base` (the baseline named `base_name`), then the A/A row of
/// `base_again` against `base`, then the absolute medians of all.
#[allow(clippy::too_many_arguments)]
fn ratio_rows(
    report: &mut Report,
    scenario: &str,
    base_name: &str,
    base: &[Sample],
    base_again: &[Sample],
    others: &[(&str, &[Sample])],
    cpu_and_p50: bool,
    rps_goal: f64,
    p99_goal: Option<f64>,
) {
    let describe = |other: &[Sample]| {
        let rps = ratio(base, other, Sample::rps);
        let p50 = ratio(base, other, |s| s.quantile_us(0.5));
        let p99 = ratio(base, other, |s| s.quantile_us(0.99));
        let cpu = ratio(base, other, Sample::cpu_per_rpc_us);
        let text = if cpu_and_p50 {
            format!(
                "RPS {} · p50 {} · p99 {} · CPU/RPC {}",
                rps.ratio(),
                p50.ratio(),
                p99.ratio(),
                cpu.ratio()
            )
        } else {
            format!("RPS {} · p99 {}", rps.ratio(), p99.ratio())
        };
        (rps, p99, text)
    };
    let goal = match p99_goal {
        Some(p) => format!("RPS ≥ {rps_goal:.1}×, p99 ≤ {p:.1}×"),
        None => format!("RPS ≥ {rps_goal:.1}×"),
    };
    for (name, other) in others {
        let (rps, p99, text) = describe(other);
        let ok = rps.median >= rps_goal && p99_goal.is_none_or(|g| p99.median <= g);
        report.row(
            scenario,
            format!("{name} ÷ {base_name}"),
            text,
            goal.clone(),
            Verdict::of(ok),
        );
    }
    let (_, _, text) = describe(base_again);
    aa_and_medians(report, scenario, (base_name, base), text, others);
}

/// The A/A row of the baseline (its ratios to itself, `aa`), then every contender's medians.
pub(crate) fn aa_and_medians(
    report: &mut Report,
    scenario: &str,
    (base_name, base): (&str, &[Sample]),
    aa: String,
    others: &[(&str, &[Sample])],
) {
    report.row(
        scenario,
        format!("A/A: {base_name} ÷ itself (noise floor)"),
        aa,
        "",
        Verdict::Info,
    );
    let (m, e) = medians(base);
    report.detail(scenario, base_name, m, e);
    for (name, other) in others {
        let (m, e) = medians(other);
        report.detail(scenario, name, m, e);
    }
}

/// Overhead over one server (concurrency 1 and 64) and throughput over three (64 and 256).
pub(crate) async fn overhead_and_throughput(
    place: &Placement,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let servers = place
        .spawn(&[
            ("s1", Duration::ZERO),
            ("s2", Duration::ZERO),
            ("s3", Duration::ZERO),
        ])
        .await?;
    let addrs = servers.addrs();
    let direct = Caller::tonic_direct(addrs[0]).await?;
    let rr1 = Caller::switchboard(&addrs[..1], Policy::RoundRobin).await?;
    let p2c1 = Caller::switchboard(&addrs[..1], Policy::P2c).await?;
    for concurrency in [1, 64] {
        eprintln!("overhead, 1 server, concurrency {concurrency}");
        let s = alternate(
            &[
                ("tonic Channel", &direct),
                ("switchboard round_robin", &rr1),
                ("switchboard p2c", &p2c1),
                ("tonic Channel (A/A)", &direct),
            ],
            concurrency,
            settings,
            false,
        )
        .await?;
        ratio_rows(
            report,
            &format!("overhead, 1 server, c={concurrency}"),
            "tonic Channel",
            &s[0],
            &s[3],
            &[
                ("switchboard round_robin", &s[1]),
                ("switchboard p2c", &s[2]),
            ],
            true,
            1.0,
            Some(1.0),
        );
    }
    drop((direct, rr1, p2c1));
    let balance = Caller::tonic_balance(addrs).await?;
    let rr3 = Caller::switchboard(addrs, Policy::RoundRobin).await?;
    let p2c3 = Caller::switchboard(addrs, Policy::P2c).await?;
    for concurrency in [64, 256] {
        eprintln!("throughput, 3 servers, concurrency {concurrency}");
        let s = alternate(
            &[
                ("tonic balance_channel", &balance),
                ("switchboard round_robin", &rr3),
                ("switchboard p2c", &p2c3),
                ("tonic balance_channel (A/A)", &balance),
            ],
            concurrency,
            settings,
            false,
        )
        .await?;
        ratio_rows(
            report,
            &format!("throughput, 3 servers, c={concurrency}"),
            "tonic balance_channel",
            &s[0],
            &s[3],
            &[
                ("switchboard round_robin", &s[1]),
                ("switchboard p2c", &s[2]),
            ],
            false,
            1.5,
            None,
        );
    }
    Ok(())
}

/// Tail latency when one instance of three answers 50 ms late.
pub(crate) async fn slow_instance(
    place: &Placement,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let servers = place
        .spawn(&[
            ("fast1", Duration::ZERO),
            ("fast2", Duration::ZERO),
            ("slow", SLOW_DELAY),
        ])
        .await?;
    let addrs = servers.addrs();
    let rr = Caller::switchboard(addrs, Policy::RoundRobin).await?;
    let p2c = Caller::switchboard(addrs, Policy::P2c).await?;
    let ewma = Caller::switchboard(addrs, Policy::P2cPeakEwma).await?;
    let balance = Caller::tonic_balance(addrs).await?;
    eprintln!("slow instance, concurrency {SLOW_CONCURRENCY}");
    let s = alternate(
        &[
            ("switchboard round_robin", &rr),
            ("switchboard p2c", &p2c),
            ("tonic balance_channel", &balance),
            ("switchboard p2c_peak_ewma", &ewma),
        ],
        SLOW_CONCURRENCY,
        settings,
        true,
    )
    .await?;
    let scenario = format!("slow instance (1 of 3 +50 ms), c={SLOW_CONCURRENCY}");
    let p99 = |samples: &[Sample]| {
        Spread::of(
            &samples
                .iter()
                .map(|x| x.quantile_us(0.99))
                .collect::<Vec<_>>(),
        )
    };
    let to_slow = |samples: &[Sample]| {
        let slow: u64 = samples
            .iter()
            .filter_map(|x| x.by_instance.get("slow").map(Histogram::len))
            .sum();
        let all: u64 = samples.iter().map(|x| x.ok).sum();
        100.0 * slow as f64 / all.max(1) as f64
    };
    // The fast instances' p99, per round, from the p2c run: RPCs answered by fast1 or fast2.
    let fast_rounds = fast_per_round(&s[1]);
    let fast = Spread::of(&fast_rounds);
    let p2c_ratio = ratio_per_round(&s[1], &fast_rounds);
    for (name, samples) in [
        ("switchboard round_robin", &s[0]),
        ("switchboard p2c", &s[1]),
        ("tonic balance_channel", &s[2]),
        ("switchboard p2c_peak_ewma", &s[3]),
    ] {
        let (m, e) = medians(samples);
        report.detail(&scenario, name, m, e);
        let is_p2c = name == "switchboard p2c";
        report.row(
            &scenario,
            format!("{name}: p99 (share of RPCs the slow one answered)"),
            format!("{} ({:.1} %)", p99(samples).micros(), to_slow(samples)),
            if is_p2c {
                format!(
                    "≤ 2× the fast instances' p99: {:.2}× ({:.2}–{:.2})",
                    p2c_ratio.median, p2c_ratio.min, p2c_ratio.max
                )
            } else {
                String::new()
            },
            if is_p2c {
                Verdict::of(p2c_ratio.median <= 2.0)
            } else {
                Verdict::Info
            },
        );
    }
    report.row(
        &scenario,
        "fast instances' p99 (p2c run, RPCs answered by the two fast ones)",
        fast.micros(),
        "",
        Verdict::Info,
    );
    Ok(())
}

/// Per round, the p99 of the RPCs that the fast instances answered.
fn fast_per_round(samples: &[Sample]) -> Vec<f64> {
    samples
        .iter()
        .map(|x| {
            let mut h = load::histogram();
            for name in ["fast1", "fast2"] {
                if let Some(f) = x.by_instance.get(name) {
                    let _ = h.add(f);
                }
            }
            h.value_at_quantile(0.99) as f64
        })
        .collect()
}

/// Per round, the sample's p99 ÷ `base`.
fn ratio_per_round(samples: &[Sample], base: &[f64]) -> Spread {
    let r: Vec<f64> = samples
        .iter()
        .zip(base)
        .map(|(x, b)| x.quantile_us(0.99) / b)
        .collect();
    Spread::of(&r)
}
