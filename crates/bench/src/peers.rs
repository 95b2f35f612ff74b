//! switchboard against every client a user would pick instead, in one run: a bare hyper HTTP/2
//! connection (the floor of the stack switchboard is built on), tonic's `Channel` and
//! `balance_channel`, and grpc-go's `ClientConn` (direct, and `round_robin` over a manual
//! resolver), built from Debian's grpc-go like the conformance peer; against tonic servers and
//! grpc-go servers; 1 and 3 servers; 1, 64 and 256 callers.
//!
//! The grpc-go client is the conformance peer's `bench` command (`bench.go`): a process that
//! holds its `ClientConn` between turns and runs the same closed loop when told to, reporting
//! its own CPU time and every latency, so that its figures are read exactly as the Rust
//! contenders' are. It runs on the client's core, as the Rust client does.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchboard::ClientConfig;
use switchboard_testkit::{ServerProcess, go_peer_bin};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use crate::Settings;
use crate::compare::{aa_and_medians, alternate, ratio};
use crate::load::{Caller, Sample};
use crate::report::{Report, Spread, Verdict};
use crate::servers::Placement;

/// How long the grpc-go client or a grpc-go server gets to start.
const START_LIMIT: Duration = Duration::from_secs(60);

/// One bare hyper HTTP/2 connection as a tower service for tonic's generated clients: what a
/// channel would cost if it cost nothing. Clones share the connection, as a tonic `Channel`'s
/// do. (hyper's request future cannot be named, so it is boxed, as tonic's `Channel` boxes its
/// own.)
#[derive(Clone, Debug)]
pub(crate) struct HyperConn(http2::SendRequest<tonic::body::Body>);

impl HyperConn {
    /// Connects to `addr` with hyper's HTTP/2 defaults (TCP_NODELAY on, as every gRPC client).
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self(sender))
    }
}

type HyperResponse = http::Response<hyper::body::Incoming>;

impl tower::Service<http::Request<tonic::body::Body>> for HyperConn {
    type Response = HyperResponse;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<HyperResponse, hyper::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// The grpc-go benchmark client (`switchboard-peer bench`), killed when dropped.
#[derive(Debug)]
pub(crate) struct GoClient {
    io: Mutex<(ChildStdin, Lines<BufReader<ChildStdout>>)>,
    _child: Child,
}

impl GoClient {
    /// Starts it over `addrs` (round_robin over several) and waits until each has answered.
    pub(crate) async fn start(addrs: &[SocketAddr]) -> Result<Self> {
        let bin = go_peer_bin().await?;
        let targets: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let mut child = Command::new(&bin)
            .args(["bench", "-targets", &targets.join(",")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        match tokio::time::timeout(START_LIMIT, lines.next_line()).await {
            Ok(Ok(Some(line))) if line == "ready" => {}
            other => bail!("the grpc-go client did not get ready: {other:?}"),
        }
        Ok(Self {
            io: Mutex::new((stdin, lines)),
            _child: child,
        })
    }

    /// One closed-loop run of `callers` for `length`, as grpc-go measured it.
    pub(crate) async fn run(&self, callers: usize, length: Duration) -> Result<Sample> {
        let mut io = self.io.lock().await;
        let command = format!("run {callers} {}\n", length.as_millis().max(1));
        io.0.write_all(command.as_bytes()).await?;
        io.0.flush().await?;
        let limit = length + Duration::from_secs(30);
        let line = tokio::time::timeout(limit, io.1.next_line())
            .await
            .context("the grpc-go client did not answer")??
            .ok_or_else(|| anyhow!("the grpc-go client exited"))?;
        parse_result(&line)
    }
}

/// `result ok=N errors=N elapsed_us=N cpu_us=N lat=US:COUNT,…` as a sample.
fn parse_result(line: &str) -> Result<Sample> {
    let rest = line
        .strip_prefix("result ")
        .ok_or_else(|| anyhow!("unexpected line from the grpc-go client: {line:?}"))?;
    let mut sample = Sample::empty();
    for field in rest.split_whitespace() {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("bad field {field:?}"))?;
        let number = || value.parse::<u64>().with_context(|| format!("bad {key}"));
        match key {
            "ok" => sample.ok = number()?,
            "errors" => sample.errors = number()?,
            "elapsed_us" => sample.elapsed = Duration::from_micros(number()?),
            "cpu_us" => sample.cpu = Duration::from_micros(number()?),
            "lat" => {
                for pair in value.split(',').filter(|p| !p.is_empty()) {
                    let (us, count) = pair
                        .split_once(':')
                        .ok_or_else(|| anyhow!("bad latency {pair:?}"))?;
                    sample
                        .latency
                        .saturating_record_n(us.parse::<u64>()?.max(1), count.parse()?);
                }
            }
            _ => {}
        }
    }
    Ok(sample)
}

/// grpc-go servers (the conformance peer's `serve`), one process each, moved to the servers'
/// core; killed when dropped.
pub(crate) struct GoServers {
    servers: Vec<ServerProcess>,
}

impl GoServers {
    /// Starts `n` of them, named `g1`…
    pub(crate) async fn start(place: &Placement, n: usize) -> Result<Self> {
        let bin = go_peer_bin().await?;
        let mut servers = Vec::new();
        for i in 1..=n {
            let server = ServerProcess::spawn_with(&bin, &format!("g{i}"), 0, &[]).await?;
            place.pin_pid(&server.pid().to_string());
            servers.push(server);
        }
        Ok(Self { servers })
    }

    /// Their addresses, `g1` first.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(ServerProcess::addr).collect()
    }
}

/// Which servers a comparison runs against.
#[derive(Clone, Copy, Debug)]
enum ServerKind {
    Tonic,
    GrpcGo,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Tonic => "tonic servers",
            Self::GrpcGo => "grpc-go servers",
        }
    }
}

/// Callers of each comparison.
fn concurrencies(settings: &Settings) -> &'static [usize] {
    if settings.quick { &[64] } else { &[1, 64, 256] }
}

/// Every comparison of the module docs on the runtime this runs on (`runtime` names it).
pub(crate) async fn against_peers(
    place: &Placement,
    settings: &Settings,
    runtime: &str,
    report: &mut Report,
) -> Result<()> {
    report.note(format!(
        "peers, {runtime}: {} rounds of {:?} per contender per comparison.",
        settings.rounds, settings.round
    ));
    for kind in [ServerKind::Tonic, ServerKind::GrpcGo] {
        let (addrs, _tonic, _go) = match kind {
            ServerKind::Tonic => {
                let group = place
                    .spawn(&[
                        ("s1", Duration::ZERO),
                        ("s2", Duration::ZERO),
                        ("s3", Duration::ZERO),
                    ])
                    .await?;
                (group.addrs().to_vec(), Some(group), None)
            }
            ServerKind::GrpcGo => {
                let go = GoServers::start(place, 3).await?;
                (go.addrs(), None, Some(go))
            }
        };
        one_server(&addrs[0], kind, settings, runtime, report).await?;
        three_servers(&addrs, kind, settings, runtime, report).await?;
    }
    Ok(())
}

/// switchboard with its defaults over `addrs`.
async fn switchboard_default(addrs: &[SocketAddr]) -> Result<Caller> {
    let config = ClientConfig::endpoints(addrs.iter().map(ToString::to_string));
    Caller::switchboard_with(config, addrs.len()).await
}

async fn one_server(
    addr: &SocketAddr,
    kind: ServerKind,
    settings: &Settings,
    runtime: &str,
    report: &mut Report,
) -> Result<()> {
    let hyper = Caller::hyper(*addr).await?;
    let tonic = Caller::tonic_direct(*addr).await?;
    let go = Caller::Go(std::sync::Arc::new(GoClient::start(&[*addr]).await?));
    let sb = switchboard_default(std::slice::from_ref(addr)).await?;
    for &c in concurrencies(settings) {
        eprintln!(
            "peers, {runtime}, 1 server ({}), concurrency {c}",
            kind.name()
        );
        let s = alternate(
            &[
                ("bare hyper connection", &hyper),
                ("tonic Channel", &tonic),
                ("grpc-go ClientConn", &go),
                ("switchboard (defaults)", &sb),
                ("bare hyper connection (A/A)", &hyper),
            ],
            c,
            settings,
            false,
        )
        .await?;
        let scenario = format!("peers, {runtime}, 1 {} server, c={c}", short(kind));
        rows(
            report,
            &scenario,
            ("bare hyper connection", &s[0]),
            &s[4],
            &[
                ("tonic Channel", &s[1]),
                ("grpc-go ClientConn", &s[2]),
                ("switchboard (defaults)", &s[3]),
            ],
            "switchboard CPU/RPC ≤ 1.05× bare hyper",
            |r| r.cpu.median <= 1.05,
            2,
        );
        // p99 against tonic's Channel at 64 callers.
        if c == 64 {
            let p99 = ratio(&s[1], &s[3], |x| x.quantile_us(0.99));
            report.row(
                &scenario,
                "switchboard (defaults) ÷ tonic Channel: p99",
                p99.ratio(),
                "≤ 1.0×",
                Verdict::of(p99.median <= 1.0),
            );
        }
    }
    Ok(())
}

async fn three_servers(
    addrs: &[SocketAddr],
    kind: ServerKind,
    settings: &Settings,
    runtime: &str,
    report: &mut Report,
) -> Result<()> {
    let balance = Caller::tonic_balance(addrs).await?;
    let go = Caller::Go(std::sync::Arc::new(GoClient::start(addrs).await?));
    let sb = switchboard_default(addrs).await?;
    for &c in concurrencies(settings) {
        eprintln!(
            "peers, {runtime}, 3 servers ({}), concurrency {c}",
            kind.name()
        );
        let s = alternate(
            &[
                ("tonic balance_channel", &balance),
                ("grpc-go round_robin", &go),
                ("switchboard (defaults)", &sb),
                ("tonic balance_channel (A/A)", &balance),
            ],
            c,
            settings,
            false,
        )
        .await?;
        let scenario = format!("peers, {runtime}, 3 {} servers, c={c}", short(kind));
        rows(
            report,
            &scenario,
            ("tonic balance_channel", &s[0]),
            &s[3],
            &[
                ("grpc-go round_robin", &s[1]),
                ("switchboard (defaults)", &s[2]),
            ],
            "switchboard CPU/RPC ≤ 0.85×, RPS ≥ 1.1× tonic balance_channel",
            |r| r.cpu.median <= 0.85 && r.rps.median >= 1.1,
            1,
        );
        let vs_go = ratio(&s[1], &s[2], Sample::cpu_per_rpc_us);
        report.row(
            &scenario,
            "switchboard (defaults) ÷ grpc-go round_robin: CPU/RPC",
            vs_go.ratio(),
            "≤ 0.6×",
            Verdict::of(vs_go.median <= 0.6),
        );
    }
    Ok(())
}

/// `tonic` or `grpc-go`.
fn short(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Tonic => "tonic",
        ServerKind::GrpcGo => "grpc-go",
    }
}

/// Per-round ratios of RPS and CPU per RPC of one contender to the baseline.
struct Ratios {
    rps: Spread,
    cpu: Spread,
}

/// A row per contender against the baseline (RPS, p99 and CPU per RPC ratios, with the goal on
/// the contender at `judged`), the A/A row, and every contender's medians.
#[allow(clippy::too_many_arguments)]
fn rows(
    report: &mut Report,
    scenario: &str,
    (base_name, base): (&str, &[Sample]),
    again: &[Sample],
    others: &[(&str, &[Sample])],
    goal: &str,
    met: impl Fn(&Ratios) -> bool,
    judged: usize,
) {
    let describe = |other: &[Sample]| {
        let r = Ratios {
            rps: ratio(base, other, Sample::rps),
            cpu: ratio(base, other, Sample::cpu_per_rpc_us),
        };
        let p99 = ratio(base, other, |x| x.quantile_us(0.99));
        let text = format!(
            "RPS {} · p99 {} · CPU/RPC {}",
            r.rps.ratio(),
            p99.ratio(),
            r.cpu.ratio()
        );
        (r, text)
    };
    for (i, (name, other)) in others.iter().enumerate() {
        let (r, text) = describe(other);
        let (goal, verdict) = if i == judged {
            (goal.to_owned(), Verdict::of(met(&r)))
        } else {
            (String::new(), Verdict::Info)
        };
        report.row(
            scenario,
            format!("{name} ÷ {base_name}"),
            text,
            goal,
            verdict,
        );
    }
    let (_, text) = describe(again);
    aa_and_medians(report, scenario, (base_name, base), text, others);
}
