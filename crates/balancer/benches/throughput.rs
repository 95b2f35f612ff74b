//! Unary throughput and latency through switchboard's channel, side by side with a direct
//! tonic `Channel` and tonic's own `Channel::balance_list`, against test servers in a child
//! process on 127.0.0.1.
//!
//! `cargo bench -p switchboard-balancer --bench throughput [-- --seconds S --concurrency C --rounds R]`
//!
//! Each contender runs `C` callers for `S` seconds; the contenders alternate for `R` rounds and
//! the table shows each one's median round. Client and servers share the machine's cores.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_balancer::{Balancer, Policy};
use switchboard_resolver::{Instance, Resolution, Update};
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use tonic::transport::{Channel, Endpoint};

const SERVER_ENV: &str = "SWITCHBOARD_THROUGHPUT_BENCH_SERVER";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    seconds: u64,
    concurrency: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut out = Args {
        seconds: 3,
        concurrency: 64,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--seconds", Some(v)) => out.seconds = v.max(1),
            ("--concurrency", Some(v)) => out.concurrency = v.max(1) as usize,
            ("--rounds", Some(v)) => out.rounds = v.max(1) as usize,
            _ => {}
        }
    }
    out
}

fn main() -> Result<(), BoxError> {
    if std::env::var_os(SERVER_ENV).is_some() {
        return serve();
    }
    let args = args();
    let mut server = Command::new(std::env::current_exe()?)
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addrs: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(&args, &addrs));
    drop(server.stdin.take());
    let _ = server.kill();
    let _ = server.wait();
    result
}

#[derive(Clone, Copy)]
enum Contender {
    TonicDirect,
    TonicBalance,
    Switchboard(Policy, usize),
}

impl Contender {
    fn name(self) -> String {
        match self {
            Contender::TonicDirect => "tonic Channel, 1 server".into(),
            Contender::TonicBalance => "tonic balance_list, 3 servers".into(),
            Contender::Switchboard(p, n) => format!(
                "switchboard {p}, {n} server{}",
                if n > 1 { "s" } else { "" }
            ),
        }
    }
}

enum Client {
    Tonic(UserClient<Channel>),
    /// The publisher is kept so that the instance set stays as it was set.
    Switchboard(
        UserClient<Balancer>,
        #[allow(dead_code)] switchboard_resolver::Publisher,
    ),
}

async fn client(contender: Contender, addrs: &[String]) -> Result<Client, BoxError> {
    Ok(match contender {
        Contender::TonicDirect => {
            let channel = Endpoint::from_shared(format!("http://{}", addrs[0]))?
                .connect()
                .await?;
            Client::Tonic(UserClient::new(channel))
        }
        Contender::TonicBalance => {
            let endpoints = addrs
                .iter()
                .map(|a| Endpoint::from_shared(format!("http://{a}")))
                .collect::<Result<Vec<_>, _>>()?;
            Client::Tonic(UserClient::new(Channel::balance_list(
                endpoints.into_iter(),
            )))
        }
        Contender::Switchboard(policy, n) => {
            let (publisher, resolution) = Resolution::channel();
            let mut builder = Balancer::builder().policy(policy);
            // tonic's Channel has keepalive off by default; switchboard's is on (20 s).
            if std::env::var("SWITCHBOARD_KEEPALIVE").as_deref() == Ok("off") {
                builder = builder.keepalive(None);
            }
            let balancer = builder.build(resolution)?;
            let instances = addrs[..n]
                .iter()
                .enumerate()
                .map(|(i, a)| Instance::new(format!("bench/{i}"), a.clone()))
                .collect();
            publisher
                .send(Update::Reset(instances))
                .await
                .map_err(|_| "closed")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while balancer.snapshot().ready() < n {
                if Instant::now() > deadline {
                    return Err("sub-channels not READY within 30 s".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Client::Switchboard(UserClient::new(balancer), publisher)
        }
    })
}

struct Round {
    cpu_us: f64,
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

async fn round(contender: Contender, addrs: &[String], args: &Args) -> Result<Round, BoxError> {
    let client = client(contender, addrs).await?;
    // Warm up the connections.
    let _ = one(&client).await;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let cpu_before = cpu_time();
    let mut tasks = Vec::new();
    let client = std::sync::Arc::new(client);
    for _ in 0..args.concurrency {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0usize;
            // Bounded in time and in count.
            while Instant::now() < until && latencies.len() < 10_000_000 {
                let t = Instant::now();
                match one(&client).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Round {
        cpu_us: cpu.as_secs_f64() * 1e6 / all.len().max(1) as f64,
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    })
}

async fn one(client: &Client) -> Result<(), tonic::Status> {
    let request = GetUserInfoRequest { id: 1 };
    match client {
        Client::Tonic(c) => c.clone().get_user_info(request).await.map(drop),
        Client::Switchboard(c, _) => c.clone().get_user_info(request).await.map(drop),
    }
}

async fn run(args: &Args, addrs: &[String]) -> Result<(), BoxError> {
    let contenders = [
        Contender::TonicDirect,
        Contender::Switchboard(Policy::RoundRobin, 1),
        Contender::TonicBalance,
        Contender::Switchboard(Policy::RoundRobin, 3),
        Contender::Switchboard(Policy::P2c, 3),
    ];
    let mut rounds: Vec<Vec<Round>> = contenders.iter().map(|_| Vec::new()).collect();
    for r in 0..args.rounds {
        for (i, c) in contenders.iter().enumerate() {
            let result = round(*c, addrs, args).await?;
            eprintln!(
                "round {}: {:<34} {:>9.0} rps  {:>5.1} µs CPU/RPC  p50 {:>6} µs  p99 {:>6} µs",
                r + 1,
                c.name(),
                result.rps,
                result.cpu_us,
                result.p50.as_micros(),
                result.p99.as_micros()
            );
            rounds[i].push(result);
        }
    }
    println!(
        "\n{} callers, {} s per round, median of {} rounds\n",
        args.concurrency, args.seconds, args.rounds
    );
    println!(
        "| contender | RPS | client CPU per RPC | p50 | p99 | errors | RPS ÷ tonic (same servers) | CPU ÷ tonic |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let median = |v: &mut Vec<Round>| {
        let mut cpu: Vec<f64> = v.iter().map(|r| r.cpu_us).collect();
        cpu.sort_by(f64::total_cmp);
        v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let m = &v[v.len() / 2];
        (
            m.rps,
            m.p50,
            m.p99,
            v.iter().map(|r| r.errors).sum::<usize>(),
            cpu[cpu.len() / 2],
        )
    };
    let medians: Vec<_> = rounds.iter_mut().map(median).collect();
    for (i, c) in contenders.iter().enumerate() {
        let (rps, p50, p99, errors, cpu) = medians[i];
        let base = match c {
            Contender::Switchboard(_, 1) | Contender::TonicDirect => &medians[0],
            _ => &medians[2],
        };
        println!(
            "| {} | {:.0} | {:.1} µs | {} µs | {} µs | {errors} | {:.2}× | {:.2}× |",
            c.name(),
            rps,
            cpu,
            p50.as_micros(),
            p99.as_micros(),
            rps / base.0,
            cpu / base.4
        );
    }
    Ok(())
}

/// The server side: three test servers, their addresses on one line, until stdin closes.
fn serve() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    let servers = runtime.block_on(async {
        let mut servers = Vec::new();
        for name in ["s1", "s2", "s3"] {
            servers.push(switchboard_testkit::TestServer::start(name).await?);
        }
        Ok::<_, anyhow::Error>(servers)
    })?;
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    println!("{}", addrs.join(" "));
    std::io::stdout().flush()?;
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {}
    drop(servers);
    Ok(())
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}
