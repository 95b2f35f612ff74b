//! What the facade's per-RPC features cost: the deadline and the retry layer (which keeps each
//! request to send it again), against the balancer under the facade alone, in the same run,
//! for unary calls and for client streams.

use anyhow::{Context as _, Result};

use crate::Settings;
use crate::compare::alternate;
use crate::load::{Caller, Rpc, Sample, UPLOAD_CHUNK, UPLOAD_CHUNKS};
use crate::report::{Report, Spread, Verdict};
use crate::servers::Placement;

/// Callers of the comparison.
const CONCURRENCY: usize = 64;

/// The facade with each feature on or off, unary calls, beside the balancer alone; then client
/// streams with the retry layer keeping them or not.
pub(crate) async fn features(
    place: &Placement,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let servers = place.spawn(&[("s1", std::time::Duration::ZERO)]).await?;
    let addr = servers.addrs()[0];
    let unary = [
        (
            "deadline off, retries off",
            "Timeout: 0\nRetry: {MaxAttempts: 1}\n",
        ),
        ("deadline 2 s, retries off", "Retry: {MaxAttempts: 1}\n"),
        ("deadline off, retries on", "Timeout: 0\n"),
        ("defaults: deadline 2 s, retries on", ""),
    ];
    let scenario = "features, unary, 1 server, c=64";
    compare(addr, Rpc::Unary, &unary, scenario, settings, report).await?;
    let streams = [
        // A 0-byte buffer sends each stream once, unrecorded.
        (
            "retries on, streams not kept (BufferBytes: 0)",
            "Timeout: 0\nRetry: {BufferBytes: 0}\n",
        ),
        ("retries on, streams kept (defaults)", "Timeout: 0\n"),
    ];
    let scenario =
        format!("features, client streams of {UPLOAD_CHUNKS} × {UPLOAD_CHUNK} B, 1 server, c=64");
    compare(addr, Rpc::Upload, &streams, &scenario, settings, report).await
}

/// The facade with each of `configs` (name, YAML) beside the balancer alone, sending `rpc`s.
async fn compare(
    addr: std::net::SocketAddr,
    rpc: Rpc,
    configs: &[(&str, &str)],
    scenario: &str,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let mut callers = Vec::new();
    for (name, config) in configs {
        callers.push((*name, Caller::facade(config, addr, rpc).await?));
    }
    let alone = callers[0]
        .1
        .balancer_alone(rpc)
        .context("a switchboard caller has a balancer")?;
    let mut contenders: Vec<(&str, &Caller)> = vec![("balancer alone", &alone)];
    contenders.extend(callers.iter().map(|(n, c)| (*n, c)));
    contenders.push(("balancer alone (A/A)", &alone));
    eprintln!("{scenario}");
    let s = alternate(&contenders, CONCURRENCY, settings, false).await?;
    rows(report, scenario, &contenders, &s);
    Ok(())
}

/// One row per contender against the first (the balancer alone): CPU per RPC and p50 as
/// ratios, and the CPU difference in µs per RPC; the last contender is the A/A pair.
fn rows(report: &mut Report, scenario: &str, contenders: &[(&str, &Caller)], s: &[Vec<Sample>]) {
    let base = &s[0];
    for (i, (name, _)) in contenders.iter().enumerate().skip(1) {
        let other = &s[i];
        let per_round = |f: &dyn Fn(&Sample, &Sample) -> f64| {
            Spread::of(
                &base
                    .iter()
                    .zip(other)
                    .map(|(b, o)| f(b, o))
                    .collect::<Vec<_>>(),
            )
        };
        let cpu = per_round(&|b, o| o.cpu_per_rpc_us() / b.cpu_per_rpc_us());
        let extra = per_round(&|b, o| o.cpu_per_rpc_us() - b.cpu_per_rpc_us());
        let rps = per_round(&|b, o| o.rps() / b.rps());
        let p50 = per_round(&|b, o| o.quantile_us(0.5) / b.quantile_us(0.5));
        report.row(
            scenario,
            format!("{name} ÷ balancer alone"),
            format!(
                "CPU/RPC {} ({:+.2} µs, {:+.2}–{:+.2}) · RPS {} · p50 {}",
                cpu.ratio(),
                extra.median,
                extra.min,
                extra.max,
                rps.ratio(),
                p50.ratio()
            ),
            "",
            Verdict::Info,
        );
    }
    for (i, (name, _)) in contenders.iter().enumerate() {
        let (m, e) = crate::compare::medians(&s[i]);
        report.detail(scenario, name, m, e);
    }
}
