//! Client instructions per RPC, counted by callgrind: a figure that does not move with the
//! machine's load, beside the timed ones. Each contender runs in a child process of this binary
//! (`switchboard-bench instructions INDEX N ADDR`) under `valgrind --tool=callgrind`, sending
//! `N` unary RPCs one after the other to a test server that runs natively; two runs of
//! different `N` cancel the start-up, and their difference divided by the extra RPCs is the
//! cost of one.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::load::{Caller, Rpc};
use crate::report::{Report, Verdict};
use crate::servers::Placement;

/// RPCs of the shorter and the longer run.
const RUNS: [u64; 2] = [1_000, 3_000];

/// RPCs before counting starts to matter (connection set-up, first allocations).
const WARMUP: u64 = 200;

/// How a contender is made.
#[derive(Clone, Copy)]
enum Made {
    /// A tonic client over one bare hyper HTTP/2 connection.
    Hyper,
    /// A direct tonic `Channel`.
    Tonic,
    /// switchboard's balancer without the facade.
    Balancer,
    /// switchboard's facade with this YAML.
    Facade(&'static str),
}

const CONTENDERS: [(&str, Made); 8] = [
    ("bare hyper connection", Made::Hyper),
    ("tonic Channel", Made::Tonic),
    ("switchboard balancer alone", Made::Balancer),
    (
        "facade, deadline off, retries off",
        Made::Facade("Timeout: 0\nRetry: {MaxAttempts: 1}\n"),
    ),
    (
        "facade, deadline 2 s, retries off",
        Made::Facade("Retry: {MaxAttempts: 1}\n"),
    ),
    (
        "facade, deadline off, retries on",
        Made::Facade("Timeout: 0\n"),
    ),
    (
        "facade, defaults (deadline 2 s, retries on)",
        Made::Facade(""),
    ),
    (
        "facade, defaults, call log off",
        Made::Facade("Middlewares: {Duration: false}\n"),
    ),
];

/// The child: contender `INDEX` sends `WARMUP` and then `N` RPCs to `ADDR`, one at a time.
pub(crate) fn child(args: &[String]) -> Result<()> {
    let [index, n, addr] = args else {
        bail!("usage: switchboard-bench instructions INDEX N ADDR");
    };
    let (_, made) = CONTENDERS
        .get(index.parse::<usize>()?)
        .context("no such contender")?;
    let n: u64 = n.parse()?;
    let addr: SocketAddr = addr.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut caller = match *made {
            Made::Hyper => Caller::hyper(addr).await?,
            Made::Tonic => Caller::tonic_direct(addr).await?,
            Made::Balancer => Caller::facade("", addr, Rpc::Unary)
                .await?
                .balancer_alone(Rpc::Unary)
                .context("a switchboard caller has a balancer")?,
            Made::Facade(config) => Caller::facade(config, addr, Rpc::Unary).await?,
        };
        for _ in 0..WARMUP + n {
            caller.call().await?;
        }
        Ok(())
    })
}

/// Runs every contender under callgrind twice and reports its instructions per RPC.
pub(crate) async fn count(place: &Placement, report: &mut Report) -> Result<()> {
    let valgrind = tokio::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .await;
    if !valgrind.is_ok_and(|o| o.status.success()) {
        report.note("instructions: valgrind is not installed (Debian's `valgrind`): not counted.");
        return Ok(());
    }
    let servers = place.spawn(&[("s1", Duration::ZERO)]).await?;
    let addr = servers.addrs()[0];
    let exe = std::env::current_exe().context("this binary's path")?;
    let mut per_rpc = Vec::new();
    for (index, (name, _)) in CONTENDERS.iter().enumerate() {
        let mut counts = [0u64; 2];
        for (count, n) in counts.iter_mut().zip(RUNS) {
            let output = tokio::process::Command::new("valgrind")
                .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
                .arg(&exe)
                .args(["instructions", &index.to_string(), &n.to_string()])
                .arg(addr.to_string())
                .kill_on_drop(true)
                .output()
                .await
                .context("running valgrind")?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                bail!("{name} under callgrind failed: {stderr}");
            }
            *count = collected(&stderr)
                .with_context(|| format!("no instruction count from callgrind: {stderr}"))?;
        }
        let per = counts[1].saturating_sub(counts[0]) as f64 / (RUNS[1] - RUNS[0]) as f64;
        eprintln!("  instructions: {name:<45} {per:>8.0} per RPC ({counts:?})");
        per_rpc.push(per);
    }
    let scenario = "instructions per unary RPC (callgrind), 1 server, c=1";
    let (hyper, tonic, alone) = (per_rpc[0], per_rpc[1], per_rpc[2]);
    let defaults = CONTENDERS
        .iter()
        .position(|(name, _)| name.starts_with("facade, defaults ("))
        .map_or(f64::NAN, |i| per_rpc[i]);
    for ((name, _), per) in CONTENDERS.iter().zip(&per_rpc) {
        report.row(
            scenario,
            *name,
            format!(
                "{per:.0} · {:.2}× bare hyper · {:.2}× tonic · {:.2}× the balancer alone ({:+.0})",
                per / hyper,
                per / tonic,
                per / alone,
                per - alone
            ),
            "",
            Verdict::Info,
        );
    }
    report.row(
        scenario,
        "switchboard's defaults ÷ bare hyper connection",
        format!("{:.2}×", defaults / hyper),
        "≤ 1.05×",
        Verdict::of(defaults / hyper <= 1.05),
    );
    report.note(format!(
        "Instructions: client only (the server runs natively), unary calls one at a time; \
         ({} − {} RPCs) runs' difference ÷ {}.",
        RUNS[1],
        RUNS[0],
        RUNS[1] - RUNS[0]
    ));
    Ok(())
}

/// The total callgrind prints: `==PID== Collected : 123456`.
fn collected(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.split_once("Collected :"))
        .and_then(|(_, n)| n.trim().parse().ok())
}
