//! The switchboard benchmark suite.
//!
//! `cargo run --release -p switchboard-bench -- [--quick] [--only PART]` starts test gRPC servers (the
//! `user.User` service of `proto/user.proto`) in child processes and a real etcd, all on
//! 127.0.0.1, runs each scenario for a bounded time and prints a markdown table: every measure
//! with its goal, met or missed, then the absolute medians of each contender. `--quick` runs
//! shorter rounds and fewer trials (about a minute); `--only PART` runs one part (`peers`, `workers`, `overhead`,
//! `features`, `instructions`, `slow`, `kill`, `stop`, `membership`, `scale`).
//!
//! - **Peers**: switchboard with its defaults against a bare hyper HTTP/2 connection, tonic's
//!   `Channel` and `balance_channel`, and grpc-go's `ClientConn` (direct and `round_robin`),
//!   against tonic and grpc-go servers, 1 and 3 servers, 1, 64 and 256 callers, on a
//!   current-thread runtime (client pinned to core 0, servers to core 1) and then on a
//!   multi-thread runtime (nothing pinned). See `peers`.
//! - **Workers**: switchboard over three servers with 64 callers on one multi-thread runtime
//!   sharing one client, against one current-thread runtime per core each with its own
//!   connections (`PerWorker`). See `workers`.
//! - **Overhead**: switchboard (round-robin, p2c) over one server ÷ a direct tonic `Channel`,
//!   concurrency 1 and 64: RPS, p50, p99, client CPU per RPC.
//! - **Throughput**: switchboard over three servers ÷ tonic's `Channel::balance_channel` over
//!   the same three, concurrency 64 and 256.
//! - **Features**: the CPU per RPC of the facade's deadline and retry layer (which keeps
//!   requests to send them again), each on and off, ÷ the balancer under it alone; unary calls
//!   and client streams.
//! - **Instructions**: client instructions per unary RPC under callgrind (tonic `Channel`, the
//!   balancer alone, the facade with its deadline and retries on and off): a figure the
//!   machine's load does not move.
//! - **Slow instance**: one of three answers 50 ms late; p99 of each contender.
//! - **Membership**: an etcd PUT until the new instance serves, a DELETE until the last RPC
//!   sent to it.
//! - **Faults**: SIGKILL, and SIGSTOP with keepalive 1 s / 1 s, of one instance of three.
//! - **Scale**: 10 000 instances: listing until all are READY, a burst of events, RSS.
//!
//! Contenders of a comparison take turns in the same run (see `compare`), and the baseline
//! against itself shows the noise floor. switchboard runs through its facade
//! (`switchboard::Client` and its `Channel`) with the facade's default settings unless a
//! scenario says otherwise. The client runs on a current-thread tokio runtime pinned to core 0
//! and the servers on core 1, where `taskset` works; latencies come from an HdrHistogram and
//! CPU time from `getrusage(RUSAGE_SELF)`.

mod background;
mod compare;
mod costs;
mod faults;
mod instructions;
mod limits;
mod load;
mod membership;
mod peers;
mod report;
mod scale;
mod servers;
mod workers;

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::report::Report;
use crate::servers::Placement;

/// The command line.
const USAGE: &str = "usage: switchboard-bench [--quick] [--only peers|workers|overhead|features|instructions|slow|kill|stop|membership|scale]";

/// How long each part of the suite runs.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// `--quick`.
    quick: bool,
    /// Rounds of each comparison.
    rounds: usize,
    /// One contender's turn in a round.
    round: Duration,
    /// Each contender's warm-up before the rounds.
    warmup: Duration,
    /// Trials of the PUT and DELETE scenarios.
    trials: usize,
    /// Trials of each fault scenario per contender.
    fault_trials: usize,
    /// Load after a SIGKILL.
    after_fault: Duration,
    /// How long the SIGSTOP scenario watches after the stop.
    after_stop: Duration,
    /// Run only the scenarios whose name starts with this.
    only: Option<String>,
}

impl Settings {
    /// Whether the scenario `name` runs.
    fn runs(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.starts_with(o))
    }

    /// The settings of the comparisons against every peer, which are many: 3 rounds of 1 s
    /// (0.5 s with `--quick`) per contender.
    fn for_peers(&self) -> Self {
        Self {
            rounds: 3,
            round: if self.quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(1)
            },
            ..self.clone()
        }
    }

    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 3,
                round: Duration::from_millis(500),
                warmup: Duration::from_millis(200),
                trials: 20,
                fault_trials: 1,
                after_fault: Duration::from_millis(1500),
                after_stop: Duration::from_millis(3500),
                only: None,
            }
        } else {
            Self {
                quick,
                rounds: 5,
                round: Duration::from_secs(2),
                warmup: Duration::from_millis(500),
                trials: 20,
                fault_trials: 3,
                after_fault: Duration::from_secs(2),
                after_stop: Duration::from_secs(4),
                only: None,
            }
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return servers::serve(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("instructions") {
        return instructions::child(&args[1..]);
    }
    let mut quick = false;
    let mut only = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => only = it.next().cloned(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let place = Placement::pin_self()?;
    limits::raise_nofile(limits::WANTED_FILES);
    let mut settings = Settings::new(quick);
    settings.only = only;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let load_before = loadavg();
    let mut report = runtime.block_on(run(&place, &settings))?;
    // Tear the runtime down before the next starts, so that every child is reaped.
    drop(runtime);
    if settings.runs("peers") {
        // The same comparisons on a multi-thread runtime: the client's threads, the servers and
        // the grpc-go client all free to use every core.
        let unpinned = place.unpin_self()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let peers = settings.for_peers();
        let r = runtime.block_on(peers::against_peers(
            &unpinned,
            &peers,
            "multi-thread",
            &mut report,
        ));
        noted(&mut report, "peers on a multi-thread runtime", r);
        drop(runtime);
    }
    if settings.runs("workers") {
        let unpinned = place.unpin_self()?;
        let r = workers::per_worker(&unpinned, &settings.for_peers(), &mut report);
        noted(&mut report, "PerWorker", r);
    }
    let load_after = loadavg();
    let cores = place.cores;
    println!(
        "\nswitchboard-bench{}: {cores} cores ({}), client on a current-thread runtime{}; {} rounds of {:?} per contender per comparison; {:.0} s in all; load average {load_before} before, {load_after} after\n",
        if settings.quick { " --quick" } else { "" },
        cpu_model(),
        if place.pinned {
            " pinned to core 0, servers pinned to core 1"
        } else {
            ", client and servers unpinned"
        },
        settings.rounds,
        settings.round,
        started.elapsed().as_secs_f64()
    );
    print!("{}", report.markdown());
    Ok(())
}

/// Every scenario in turn; one that fails is noted and the next one runs.
async fn run(place: &Placement, settings: &Settings) -> Result<Report> {
    let mut report = Report::default();
    report.note(
        "switchboard contenders are `switchboard::Client` / `Channel` (the facade) with its \
         default settings (2 s deadline, up to 3 attempts on UNAVAILABLE, keepalive 20 s / 20 s), \
         over fixed endpoints except where etcd is named; tonic contenders use tonic's defaults.",
    );
    report.note(
        "Ratios are contender ÷ baseline per round, then the median over rounds with the range \
         (min–max) in parentheses; RPS above 1× and latency or CPU below 1× favour switchboard.",
    );
    if settings.runs("peers") {
        let r =
            peers::against_peers(place, &settings.for_peers(), "current-thread", &mut report).await;
        noted(&mut report, "peers on a current-thread runtime", r);
    }
    if settings.runs("overhead") {
        let r = compare::overhead_and_throughput(place, settings, &mut report).await;
        noted(&mut report, "overhead and throughput", r);
    }
    if settings.runs("features") {
        let r = costs::features(place, settings, &mut report).await;
        noted(&mut report, "features", r);
    }
    if settings.runs("instructions") {
        let r = instructions::count(place, &mut report).await;
        noted(&mut report, "instructions", r);
    }
    if settings.runs("slow") {
        let r = compare::slow_instance(place, settings, &mut report).await;
        noted(&mut report, "slow instance", r);
    }
    if settings.runs("kill") {
        let r = faults::kill(place, settings, &mut report).await;
        noted(&mut report, "kill -9", r);
    }
    if settings.runs("stop") {
        let r = faults::stop(place, settings, &mut report).await;
        noted(&mut report, "SIGSTOP", r);
    }
    if settings.runs("membership") || settings.runs("scale") {
        match switchboard_testkit::Etcd::start().await {
            Ok(etcd) => {
                let moved = place.pin_children("etcd");
                report.note(format!(
                    "etcd 3.4 (one member, 127.0.0.1){}.",
                    if moved > 0 {
                        ", pinned to core 1 with the servers"
                    } else {
                        ""
                    }
                ));
                if settings.runs("membership") {
                    let r = membership::put_and_delete(place, settings, &etcd, &mut report).await;
                    noted(&mut report, "membership", r);
                }
                if settings.runs("scale") {
                    let r = scale::ten_thousand(place, &etcd, &mut report).await;
                    noted(&mut report, "10 000 instances", r);
                }
            }
            Err(e) => noted(&mut report, "etcd", Err(e)),
        }
    }
    Ok(report)
}

/// Notes a scenario's failure; the suite goes on.
fn noted(report: &mut Report, name: &str, result: Result<()>) {
    if let Err(e) = result {
        eprintln!("{name} failed: {e:#}");
        report.note(format!("{name}: did not complete: {e:#}"));
    }
}

/// The 1-minute load average from `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The CPU model from `/proc/cpuinfo`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
