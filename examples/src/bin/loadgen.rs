//! `loadgen`: a ghz-like load generator for any gRPC server, through switchboard's balanced
//! channel.
//!
//! ```text
//! loadgen --endpoints 127.0.0.1:8080,127.0.0.1:8081 --method /user.User/GetUserInfo
//! loadgen --etcd 127.0.0.1:2379 --key user.rpc --policy p2c --concurrency 64 --duration 10s --method /user.User/GetUserInfo
//! loadgen --config client.yaml --method /pkg.Service/Method
//! ```
//!
//! It sends an empty request message (valid for any proto3 message) with a pass-through codec,
//! so it needs no generated code. It prints the count of each error status, then one line:
//! `rps=N p50_us=N p99_us=N errors=N cpu_us_per_rpc=N` (CPU of this process per RPC).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::{Buf, BufMut, Bytes};
use clap::Parser;
use switchboard::balancer::Policy;
use switchboard::{Channel, Client, ClientConfig};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

#[derive(Parser, Debug)]
#[command(about = "Load a gRPC service through switchboard's balanced channel")]
struct Args {
    /// A client config file (YAML, TOML or JSON).
    #[arg(long, conflicts_with_all = ["endpoints", "etcd"])]
    config: Option<PathBuf>,
    /// Instances, comma-separated `host:port`.
    #[arg(long, conflicts_with = "etcd")]
    endpoints: Option<String>,
    /// etcd members, comma-separated, with --key.
    #[arg(long, requires = "key")]
    etcd: Option<String>,
    /// The key prefix the service registers under.
    #[arg(long)]
    key: Option<String>,
    /// round_robin, pick_first, p2c, p2c_peak_ewma, weighted_round_robin (overrides the config).
    #[arg(long)]
    policy: Option<Policy>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run (`10s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = switchboard_examples::parse_duration)]
    duration: Duration,
    /// The full method name, `/package.Service/Method`.
    #[arg(long)]
    method: String,
    /// Per-RPC deadline (`2s`).
    #[arg(long, default_value = "2s", value_parser = switchboard_examples::parse_duration)]
    timeout: Duration,
}

/// Sends and receives message bytes as they are.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let path: http::uri::PathAndQuery = args
        .method
        .parse()
        .ok()
        .filter(|p: &http::uri::PathAndQuery| p.path().matches('/').count() == 2)
        .with_context(|| format!("--method {:?} is not /package.Service/Method", args.method))?;
    let mut config = match (&args.config, &args.endpoints, &args.etcd) {
        (Some(file), _, _) => ClientConfig::from_file(file)?,
        (None, Some(list), _) => ClientConfig::endpoints(list.split(',')),
        (None, None, Some(hosts)) => {
            ClientConfig::etcd(hosts.split(','), args.key.clone().unwrap_or_default())
        }
        (None, None, None) => {
            bail!("give --config FILE, --endpoints LIST or --etcd HOSTS --key PREFIX")
        }
    };
    if let Some(policy) = args.policy {
        config.policy = policy;
    }
    config.timeout = Some(args.timeout);
    let client = Client::connect(config).await.context("connecting")?;

    let until = Instant::now() + args.duration;
    let started = Instant::now();
    let cpu_before = cpu_time();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let channel = client.channel();
            let path = path.clone();
            tokio::spawn(worker(channel, path, until))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<i32, u64> = BTreeMap::new();
    for w in workers {
        let (l, e) = w.await?;
        latencies.extend(l);
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    let failed: u64 = errors.values().sum();
    let total = latencies.len() as u64 + failed;
    for (code, n) in &errors {
        println!("error {:?}: {n}", Code::from_i32(*code));
    }
    println!(
        "rps={:.0} p50_us={} p99_us={} errors={failed} cpu_us_per_rpc={:.1}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        cpu.as_secs_f64() * 1e6 / total.max(1) as f64
    );
    Ok(())
}

/// Calls `path` in a loop until `until` (and at most 10 million times).
async fn worker(
    channel: Channel,
    path: http::uri::PathAndQuery,
    until: Instant,
) -> (Vec<Duration>, BTreeMap<i32, u64>) {
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    while Instant::now() < until && latencies.len() < 10_000_000 {
        let t = Instant::now();
        let result = match grpc.ready().await {
            Ok(()) => grpc
                .unary(tonic::Request::new(Bytes::new()), path.clone(), RawCodec)
                .await
                .map(drop),
            Err(e) => Err(Status::unavailable(e.to_string())),
        };
        match result {
            Ok(()) => latencies.push(t.elapsed()),
            Err(status) => *errors.entry(status.code() as i32).or_default() += 1,
        }
    }
    (latencies, errors)
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
