//! What `PerWorker` gives: switchboard over three servers with every core's callers on one
//! multi-thread runtime sharing one client's connections, against one current-thread runtime
//! per core, each with its own connections (`Client::per_worker`), so that a pick, the send and
//! the response never cross threads; beside grpc-go's `round_robin` (its goroutines on every
//! core) and tonic's `balance_channel` on the multi-thread runtime. All run the same callers in
//! all, alternated, with nothing pinned; client CPU is the whole client process's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use switchboard::ClientConfig;
use tokio::sync::{mpsc, oneshot};

use crate::Settings;
use crate::compare::{medians, ratio};
use crate::limits::cpu_time;
use crate::load::{self, Caller, Sample};
use crate::peers::GoClient;
use crate::report::{Report, Verdict};
use crate::servers::Placement;

/// One contender's turn: a load of the given length, measured.
type Run<'a> = dyn Fn(Duration) -> Result<Sample> + 'a;

/// A thread with a current-thread runtime and a `per_worker` caller, that runs loads when told.
struct Worker {
    asks: mpsc::UnboundedSender<(usize, Duration, oneshot::Sender<Result<Sample>>)>,
    _thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn start(base: switchboard::Client, ready: usize) -> Result<Self> {
        let (asks, mut inbox) =
            mpsc::unbounded_channel::<(usize, Duration, oneshot::Sender<Result<Sample>>)>();
        let (started, up) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("bench-worker".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let caller = match base.per_worker() {
                        Ok(local) => Caller::from_client(local, ready).await,
                        Err(e) => Err(e.into()),
                    };
                    let caller = match caller {
                        Ok(c) => {
                            let _ = started.send(Ok(()));
                            c
                        }
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    while let Some((callers, length, reply)) = inbox.recv().await {
                        let _ = reply.send(load::run(&caller, callers, length, false).await);
                    }
                });
            })?;
        up.recv().context("the worker thread died")??;
        Ok(Self {
            asks,
            _thread: thread,
        })
    }

    fn run(&self, callers: usize, length: Duration) -> Result<oneshot::Receiver<Result<Sample>>> {
        let (tx, rx) = oneshot::channel();
        self.asks
            .send((callers, length, tx))
            .map_err(|_| anyhow!("the worker stopped"))?;
        Ok(rx)
    }
}

/// Runs the comparison from outside any runtime, as `main` does after the others.
pub(crate) fn per_worker(
    place: &Placement,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let cores = place.cores.max(1);
    let shared_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    let servers = shared_rt.block_on(place.spawn(&[
        ("s1", Duration::ZERO),
        ("s2", Duration::ZERO),
        ("s3", Duration::ZERO),
    ]))?;
    let addrs: Vec<SocketAddr> = servers.addrs().to_vec();
    let config = || ClientConfig::endpoints(addrs.iter().map(ToString::to_string));
    let shared = shared_rt.block_on(Caller::switchboard_with(config(), addrs.len()))?;
    // The PerWorker client lives on the multi-thread runtime; each worker builds its own from it.
    let base = shared_rt.block_on(async {
        let mut c = config();
        c.per_worker = true;
        switchboard::Client::connect(c).await
    })?;
    let workers = (0..cores)
        .map(|_| Worker::start(base.clone(), addrs.len()))
        .collect::<Result<Vec<_>>>()?;

    let concurrency = 64;
    let run_shared = |length| -> Result<Sample> {
        let before = cpu_time();
        let mut sample = shared_rt.block_on(load::run(&shared, concurrency, length, false))?;
        sample.cpu = cpu_time().saturating_sub(before);
        Ok(sample)
    };
    let run_workers = |length| -> Result<Sample> {
        let before = cpu_time();
        let started = std::time::Instant::now();
        let waits = workers
            .iter()
            .map(|w| w.run(concurrency / cores, length))
            .collect::<Result<Vec<_>>>()?;
        let mut all = Sample::empty();
        for wait in waits {
            let s = wait.blocking_recv().context("a worker stopped")??;
            all.ok += s.ok;
            all.errors += s.errors;
            all.latency.add(&s.latency)?;
        }
        all.elapsed = started.elapsed();
        all.cpu = cpu_time().saturating_sub(before);
        Ok(all)
    };
    let balance = shared_rt.block_on(Caller::tonic_balance(&addrs))?;
    let go = shared_rt.block_on(GoClient::start(&addrs))?;
    let run_on_shared = |caller: &Caller, length| -> Result<Sample> {
        let before = cpu_time();
        let mut sample = shared_rt.block_on(load::run(caller, concurrency, length, false))?;
        sample.cpu = cpu_time().saturating_sub(before);
        Ok(sample)
    };
    let run_go = |length| shared_rt.block_on(go.run(concurrency, length));
    let contenders: [(&str, &Run<'_>); 5] = [
        ("switchboard, one multi-thread runtime", &run_shared),
        (
            "switchboard PerWorker (a current-thread runtime per core)",
            &run_workers,
        ),
        ("grpc-go round_robin (GOMAXPROCS = cores)", &run_go),
        ("tonic balance_channel, one multi-thread runtime", &|d| {
            run_on_shared(&balance, d)
        }),
        ("switchboard, one multi-thread runtime (A/A)", &run_shared),
    ];
    eprintln!("per-worker connections, {cores} cores, concurrency {concurrency}");
    for (_, run) in &contenders {
        run(settings.warmup)?;
    }
    let n = contenders.len();
    let mut samples: Vec<Vec<Sample>> = (0..n).map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for turn in 0..n {
            let i = (turn + round) % n;
            let (name, run) = contenders[i];
            let sample = run(settings.round)?;
            eprintln!(
                "    round {} {name:<58} {:>8.0} rps  {:>5.1} µs CPU/RPC  {} failed",
                round + 1,
                sample.rps(),
                sample.cpu_per_rpc_us(),
                sample.errors
            );
            samples[i].push(sample);
        }
    }
    let scenario = format!("PerWorker, 3 tonic servers, c={concurrency}, {cores} cores, unpinned");
    let base = &samples[0];
    for (i, (name, _)) in contenders.iter().enumerate().skip(1) {
        let other = &samples[i];
        let rps = ratio(base, other, Sample::rps);
        let cpu = ratio(base, other, Sample::cpu_per_rpc_us);
        let p99 = ratio(base, other, |s| s.quantile_us(0.99));
        let measure = if name.ends_with("(A/A)") {
            "A/A: switchboard on one multi-thread runtime ÷ itself (noise floor)".to_owned()
        } else {
            format!("{name} ÷ switchboard on one multi-thread runtime")
        };
        report.row(
            &scenario,
            measure,
            format!(
                "RPS {} · p99 {} · CPU/RPC {}",
                rps.ratio(),
                p99.ratio(),
                cpu.ratio()
            ),
            "",
            Verdict::Info,
        );
    }
    let vs_go = ratio(&samples[2], &samples[1], Sample::cpu_per_rpc_us);
    report.row(
        &scenario,
        "switchboard PerWorker ÷ grpc-go round_robin: CPU/RPC",
        vs_go.ratio(),
        "≤ 0.6×",
        Verdict::of(vs_go.median <= 0.6),
    );
    for (i, (name, _)) in contenders.iter().enumerate().take(n - 1) {
        let (m, e) = medians(&samples[i]);
        report.detail(&scenario, name, m, e);
    }
    // The workers end when their inbox closes; the rest goes on the runtime it was made on.
    drop(workers);
    shared_rt.block_on(async move { drop((shared, base, balance, go, servers)) });
    drop(shared_rt);
    Ok(())
}
