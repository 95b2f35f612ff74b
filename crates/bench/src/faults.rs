//! Faults under load: one instance of three SIGKILLed (its connections reset, new ones
//! refused), and one SIGSTOPped (a silent peer: its sockets stay open and nothing answers).
//!
//! Each instance is its own server process, so that the fault hits exactly one. The clients use
//! fixed endpoints: neither fault changes the registry (a killed server's lease outlives it by
//! its TTL), so what is measured is the balancer's own reaction.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use switchboard::ClientConfig;
use switchboard::balancer::{ConnectivityState, Policy};

use crate::Settings;
use crate::background::Background;
use crate::load::Caller;
use crate::report::{Report, Verdict};
use crate::servers::{Placement, ServerGroup};

/// Callers sending RPCs during a fault.
const CONCURRENCY: usize = 16;

/// Load before the fault.
const BEFORE: Duration = Duration::from_millis(500);

/// How often the SIGSTOP scenario reads the balancer's snapshot.
const POLL: Duration = Duration::from_millis(2);

/// Three single-server processes.
async fn three(place: &Placement) -> Result<Vec<ServerGroup>> {
    let mut groups = Vec::new();
    for name in ["i1", "i2", "i3"] {
        groups.push(place.spawn(&[(name, Duration::ZERO)]).await?);
    }
    Ok(groups)
}

/// SIGKILL of one of three under load: failed RPCs, and when the last failure ended.
pub(crate) async fn kill(
    place: &Placement,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let scenario = format!("kill -9 of 1 of 3, {CONCURRENCY} callers");
    for contender in [
        "switchboard round_robin",
        "switchboard p2c",
        "tonic balance_channel",
    ] {
        let (mut failed, mut settle) = (Vec::new(), Vec::new());
        for trial in 0..settings.fault_trials {
            let mut groups = three(place).await?;
            let addrs: Vec<_> = groups.iter().map(|g| g.addrs()[0]).collect();
            let caller = match contender {
                "switchboard round_robin" => {
                    Caller::switchboard(&addrs, Policy::RoundRobin).await?
                }
                "switchboard p2c" => Caller::switchboard(&addrs, Policy::P2c).await?,
                _ => Caller::tonic_balance(&addrs).await?,
            };
            let load = Background::start(&caller, CONCURRENCY, "");
            tokio::time::sleep(BEFORE).await;
            let killed_at = load.now();
            groups[trial % 3].kill9()?;
            tokio::time::sleep(settings.after_fault).await;
            let marks = load.marks();
            let errors = marks.errors.load(Ordering::Relaxed);
            let last = marks.last_error_end.load(Ordering::Relaxed);
            load.stop().await?;
            eprintln!("    {contender} trial {}: {errors} failed", trial + 1);
            failed.push(errors);
            settle.push(if errors == 0 {
                0.0
            } else {
                last.saturating_sub(killed_at) as f64 / 1e6
            });
        }
        let is_switchboard = contender.starts_with("switchboard");
        let total: u64 = failed.iter().sum();
        report.row(
            &scenario,
            format!("{contender}: failed RPCs per trial; time from the kill to the last failure"),
            format!(
                "{} · {}",
                join(&failed, |f| f.to_string()),
                join(&settle, |ms| format!("{ms:.0} ms"))
            ),
            if is_switchboard {
                "0 failed (default retries)"
            } else {
                ""
            },
            if is_switchboard {
                Verdict::of(total == 0)
            } else {
                Verdict::Info
            },
        );
    }
    Ok(())
}

/// SIGSTOP of one of three under load with keepalive 1 s / 1 s: when it left READY, when the
/// last RPC was sent to it, how many were.
pub(crate) async fn stop(
    place: &Placement,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let scenario = format!("SIGSTOP of 1 of 3, keepalive 1 s / 1 s, {CONCURRENCY} callers");
    for policy in [Policy::RoundRobin, Policy::P2c] {
        let (mut left, mut last_pick, mut hit, mut failed) = (vec![], vec![], vec![], vec![]);
        for trial in 0..settings.fault_trials {
            let mut groups = three(place).await?;
            let addrs: Vec<_> = groups.iter().map(|g| g.addrs()[0]).collect();
            let mut config = ClientConfig::endpoints(addrs.iter().map(ToString::to_string));
            config.policy = policy;
            config.keepalive_time = Some(Duration::from_secs(1));
            config.keepalive_timeout = Some(Duration::from_secs(1));
            let caller = Caller::switchboard_with(config, 3).await?;
            let Some(client) = caller.client() else {
                bail!("not a switchboard client");
            };
            let victim = addrs[trial % 3].to_string();
            let load = Background::start(&caller, CONCURRENCY, "");
            tokio::time::sleep(BEFORE).await;
            let calls = |c: &switchboard::Client| {
                c.balancer()
                    .snapshot()
                    .by_addr(&victim)
                    .map(|s| (s.calls_started, s.state))
            };
            let (before, _) = calls(client).unwrap_or((0, ConnectivityState::Ready));
            let errors_before = load.marks().errors.load(Ordering::Relaxed);
            groups[trial % 3].stop()?;
            let stopped = Instant::now();
            let (mut seen, mut last_change, mut left_ready) = (before, Duration::ZERO, None);
            while stopped.elapsed() < settings.after_stop {
                if let Some((started, state)) = calls(client) {
                    // An RPC that was never written leaves the count again: only a rise
                    // is a pick.
                    if started > seen {
                        last_change = stopped.elapsed();
                    }
                    seen = started;
                    if state != ConnectivityState::Ready && left_ready.is_none() {
                        left_ready = Some(stopped.elapsed());
                    }
                } else if left_ready.is_none() {
                    left_ready = Some(stopped.elapsed());
                }
                tokio::time::sleep(POLL).await;
            }
            let errors = load.marks().errors.load(Ordering::Relaxed) - errors_before;
            load.stop().await?;
            let left_ms = left_ready.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3);
            eprintln!(
                "    {policy} trial {}: left READY after {left_ms:.0} ms, last pick after {:.0} ms, {} RPCs hit it, {errors} failed",
                trial + 1,
                last_change.as_secs_f64() * 1e3,
                seen.saturating_sub(before)
            );
            left.push(left_ms);
            last_pick.push(last_change.as_secs_f64() * 1e3);
            hit.push(seen.saturating_sub(before));
            failed.push(errors);
        }
        let worst = left
            .iter()
            .zip(&last_pick)
            .map(|(a, b)| a.max(*b))
            .fold(0.0, f64::max);
        report.row(
            &scenario,
            format!(
                "switchboard {policy}: left READY after · last RPC sent to it after · RPCs sent to it · failed RPCs (per trial)"
            ),
            format!(
                "{} · {} · {} · {}",
                join(&left, |ms| format!("{ms:.0} ms")),
                join(&last_pick, |ms| format!("{ms:.0} ms")),
                join(&hit, |n| n.to_string()),
                join(&failed, |n| n.to_string())
            ),
            "ejected ≤ 2.5 s",
            Verdict::of(worst <= 2_500.0),
        );
    }
    Ok(())
}

/// `a, b, c`.
fn join<T>(values: &[T], f: impl Fn(&T) -> String) -> String {
    values.iter().map(f).collect::<Vec<_>>().join(", ")
}
