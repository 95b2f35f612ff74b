//! The switchboard demo: a real etcd, three `user-rpc` instances that register themselves, the
//! HTTP `gateway` in front of them, and traffic through the gateway.
//!
//! ```text
//! cargo build -p switchboard-examples && target/debug/demo
//! ```
//!
//! Every second it prints how many requests each instance served. Then a fourth instance
//! registers and takes traffic, and one of the first three stops gracefully (SIGTERM:
//! deregister, NOT_SERVING, grace period, drain): its traffic moves to the others and no
//! request fails. It exits 0 with a summary, or 1 if a request failed or traffic did not move.
//!
//! `--registry memory` (or `auto`, the default, when etcd cannot be started) runs the instances
//! and the gateway inside the demo process over an in-memory registry instead, and says so.
//!
//! It prints the address of the gateway's live dashboard; `--hold 60s` keeps everything running
//! for a minute after the traffic stops, to look at it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard::resolver::{Instance as Registration, MemoryRegistry, Resolve};
use switchboard::{Client, ClientConfig, Server, Serving};
use switchboard_examples::service::UserService;
use switchboard_examples::user::user_server::UserServer;
use switchboard_testkit::{Etcd, spawn_until_line};
use tokio::process::{Child, Command};

/// Concurrent HTTP clients of the gateway.
const CLIENTS: usize = 8;

#[derive(Parser, Debug)]
#[command(about = "etcd, three user-rpc instances, the gateway and traffic: watch it balance")]
struct Args {
    /// Where the instances register: `etcd` (the real binary), `memory` (everything in this
    /// process), or `auto` (etcd, else memory).
    #[arg(long, default_value = "auto", value_parser = ["auto", "etcd", "memory"])]
    registry: String,
    /// How long to keep etcd, the instances and the gateway running after the traffic, with
    /// the dashboard up: `60s`, `500ms`.
    #[arg(long, default_value = "0s", value_parser = switchboard_examples::parse_duration)]
    hold: Duration,
}

/// Where the instances register.
enum Registry {
    Etcd { _etcd: Box<Etcd>, hosts: String },
    Memory(MemoryRegistry),
}

/// A running user-rpc instance.
enum Instance {
    Process(Proc),
    InProcess {
        name: String,
        key: String,
        serving: Serving,
    },
}

impl Registry {
    async fn start(choice: &str) -> Result<Self> {
        if choice == "memory" {
            return Ok(Self::memory_loudly("--registry memory"));
        }
        match Etcd::start().await {
            Ok(etcd) => {
                let hosts = etcd.hosts();
                Ok(Self::Etcd {
                    _etcd: Box::new(etcd),
                    hosts,
                })
            }
            Err(e) if choice == "auto" => Ok(Self::memory_loudly(&format!(
                "etcd could not be started: {e:#}"
            ))),
            Err(e) => Err(e.context("starting etcd (Debian package etcd-server)")),
        }
    }

    fn memory_loudly(why: &str) -> Self {
        let banner = format!(
            "\n{bar}\n!! {why}\n!! THIS RUN USES AN IN-MEMORY REGISTRY, NOT ETCD: the instances and the\n!! gateway run inside this process. For the real thing install etcd\n!! (`apt-get install etcd-server`, or `bash scripts/setup.sh`) and run again.\n{bar}\n",
            bar = "!".repeat(78)
        );
        println!("{banner}");
        eprintln!("{banner}");
        Self::Memory(MemoryRegistry::new())
    }

    /// Starts instance `name` and waits until it is registered.
    async fn instance(&self, name: &str) -> Result<Instance> {
        match self {
            Self::Etcd { hosts, .. } => Ok(Instance::Process(user_rpc(name, hosts).await?)),
            Self::Memory(registry) => {
                let serving = Server::builder()
                    .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                    .grace(Duration::from_millis(200))
                    .add_service(UserServer::new(UserService::new(name)))
                    .serve()
                    .await?;
                let key = format!("user.rpc/{name}");
                let addr = serving.local_addr().to_string();
                registry.put(Registration::new(key.clone(), addr.clone()));
                println!("  {name}: registered {addr} (in memory)");
                Ok(Instance::InProcess {
                    name: name.to_owned(),
                    key,
                    serving,
                })
            }
        }
    }

    /// Starts the gateway on a port of its choosing, the `gateway` program or its routes in
    /// this process; returns it and the address it listens on.
    async fn gateway(&self) -> Result<(Gateway, String)> {
        match self {
            Self::Etcd { hosts, .. } => {
                let mut cmd =
                    Command::from(switchboard_testkit::child_command(sibling("gateway")?));
                cmd.args([
                    "--listen",
                    "127.0.0.1:0",
                    "--etcd",
                    hosts,
                    "--key",
                    "user.rpc",
                ]);
                cmd.stderr(Stdio::inherit());
                let (child, addr) =
                    spawn_until_line(cmd, "the gateway", "gateway listening on ").await?;
                let addr = addr.trim().to_owned();
                let name = "gateway".into();
                Ok((Gateway::Process(Box::new(Proc { name, child })), addr))
            }
            Self::Memory(registry) => {
                let resolution = registry.resolver("user.rpc").resolve();
                let client =
                    Client::with_resolution("user.rpc", ClientConfig::default(), resolution)?;
                let app = switchboard_examples::gateway::router(client);
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
                let addr = listener.local_addr()?.to_string();
                let serve = tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                Ok((Gateway::InProcess(serve), addr))
            }
        }
    }

    /// Stops `instance` gracefully (deregister, NOT_SERVING, grace, drain); `true` if it
    /// exited cleanly.
    fn leave(&self, instance: Instance) -> Result<tokio::task::JoinHandle<(String, bool)>> {
        Ok(match (self, instance) {
            (_, Instance::Process(mut leaving)) => {
                if let Some(pid) = leaving.pid() {
                    kill(pid, Signal::SIGTERM)?;
                }
                tokio::spawn(async move {
                    let status =
                        tokio::time::timeout(Duration::from_secs(30), leaving.child.wait()).await;
                    (leaving.name, matches!(status, Ok(Ok(s)) if s.success()))
                })
            }
            (Self::Memory(registry), Instance::InProcess { name, key, serving }) => {
                registry.delete(&key);
                tokio::spawn(async move {
                    let done = tokio::time::timeout(Duration::from_secs(30), serving.shutdown());
                    (name, done.await.is_ok())
                })
            }
            (Self::Etcd { .. }, Instance::InProcess { name, .. }) => {
                bail!("{name} is not registered in etcd")
            }
        })
    }
}

/// The gateway, stopped when dropped.
enum Gateway {
    Process(#[allow(dead_code, reason = "killed when dropped")] Box<Proc>),
    InProcess(tokio::task::JoinHandle<()>),
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Self::InProcess(task) = self {
            task.abort();
        }
    }
}

/// A child process, killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> Option<Pid> {
        self.child.id().map(|id| Pid::from_raw(id as i32))
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p switchboard-examples`",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `user-rpc` and waits until it says it is registered.
async fn user_rpc(name: &str, etcd: &str) -> Result<Proc> {
    let mut cmd = Command::from(switchboard_testkit::child_command(sibling("user-rpc")?));
    cmd.args(["--name", name, "--listen", "127.0.0.1:0", "--etcd", etcd])
        .args(["--key", "user.rpc", "--grace", "1s"]);
    cmd.stderr(Stdio::inherit());
    let (child, ready) = spawn_until_line(cmd, name, "registered ").await?;
    println!("  {name}: registered {ready}");
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

/// One HTTP/1.1 keep-alive client of the gateway, counting answers per instance.
async fn client(
    gateway: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    failures: Arc<AtomicU64>,
) -> Result<()> {
    let mut id = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let stream = tokio::net::TcpStream::connect(&gateway).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            let request = hyper::Request::get(format!("/api/user/{id}"))
                .header("host", "gateway")
                .body(Empty::<Bytes>::new())?;
            let response = match sender.send_request(request).await {
                Ok(r) => r,
                Err(_) => break,
            };
            let ok = response.status().is_success();
            let body = response.into_body().collect().await?.to_bytes();
            let instance = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("instance")?.as_str().map(str::to_owned));
            match (ok, instance) {
                (true, Some(instance)) => {
                    *counts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(instance)
                        .or_default() += 1;
                }
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  failed: {}", String::from_utf8_lossy(&body));
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let started = Instant::now();

    let args = Args::parse();

    let registry = Registry::start(&args.registry).await?;
    let (source, leave_how) = match registry {
        Registry::Etcd { .. } => ("etcd", "SIGTERM: deregister"),
        Registry::Memory(_) => ("the in-memory registry", "deregister"),
    };
    println!("1. {source} on 127.0.0.1, three user-rpc instances registering under user.rpc/");
    let mut instances = Vec::new();
    for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3"] {
        instances.push(registry.instance(name).await?);
    }

    println!("2. the gateway, balancing user.rpc with switchboard");
    let (_gateway, gateway_addr) = registry.gateway().await?;
    wait_http(&gateway_addr).await?;
    println!("   dashboard: http://{gateway_addr}/debug/switchboard/ui");

    println!(
        "3. traffic: {CLIENTS} HTTP clients → gateway → user.rpc (requests per instance, per second)"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                gateway_addr.clone(),
                stop.clone(),
                counts.clone(),
                failures.clone(),
            ))
        })
        .collect();

    let snapshot = || counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut table = Table::new(started);
    let mut last = snapshot();
    let mut table = |label: &str, last: &mut BTreeMap<String, u64>| {
        let now = snapshot();
        table.draw(label, last, &now, failures.load(Ordering::Relaxed));
        *last = now;
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table("three instances", &mut last);
    }

    println!("4. a fourth instance registers");
    instances.push(registry.instance("user-rpc-4").await?);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table("four instances", &mut last);
    }

    println!("5. user-rpc-2 stops gracefully ({leave_how}, NOT_SERVING, grace, drain)");
    let stopping = registry.leave(instances.remove(1))?;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table("user-rpc-2 leaving", &mut last);
    }
    let (name, exited) = stopping.await?;
    let served_by_2 = snapshot().get("user-rpc-2").copied().unwrap_or(0);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table("user-rpc-2 gone", &mut last);
    }
    let after = snapshot().get("user-rpc-2").copied().unwrap_or(0);

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
    let totals = snapshot();
    let total: u64 = totals.values().sum();
    let failed = failures.load(Ordering::Relaxed);
    println!("\nsummary after {:.1}s:", started.elapsed().as_secs_f64());
    for (instance, n) in &totals {
        println!("  {instance}: {n} requests");
    }
    println!("  total: {total} requests, {failed} failed");
    println!(
        "  {name} exited {} after leaving",
        if exited { "cleanly" } else { "uncleanly" }
    );
    let fourth = totals.get("user-rpc-4").copied().unwrap_or(0);
    if failed > 0 || fourth == 0 || after != served_by_2 || !exited {
        println!(
            "FAILED: expected no failed request, traffic on user-rpc-4, none on user-rpc-2 after it left"
        );
        std::process::exit(1);
    }
    println!("OK: traffic followed {source} live, with no failed request");
    if !args.hold.is_zero() {
        println!(
            "holding for {:?}: dashboard at http://{gateway_addr}/debug/switchboard/ui",
            args.hold
        );
        tokio::select! {
            _ = tokio::time::sleep(args.hold) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    drop(instances);
    drop(registry);
    Ok(())
}

const NAMES: [&str; 4] = ["user-rpc-1", "user-rpc-2", "user-rpc-3", "user-rpc-4"];

/// The live table of requests per instance: redrawn in place on a terminal, one line per
/// second otherwise.
struct Table {
    started: Instant,
    tty: bool,
    /// Lines of the table on screen for the current step (0: none yet).
    drawn: usize,
    label: String,
}

impl Table {
    fn new(started: Instant) -> Self {
        use std::io::IsTerminal;
        Self {
            started,
            tty: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            drawn: 0,
            label: String::new(),
        }
    }

    fn draw(
        &mut self,
        label: &str,
        last: &BTreeMap<String, u64>,
        now: &BTreeMap<String, u64>,
        failed: u64,
    ) {
        let count = |m: &BTreeMap<String, u64>, name: &str| m.get(name).copied().unwrap_or(0);
        let elapsed = self.started.elapsed().as_secs_f64();
        if !self.tty {
            let mut row = format!("[{elapsed:>5.1}s] {label:<28}");
            for name in NAMES {
                let n = count(now, name) - count(last, name);
                row.push_str(&format!(" {name}={n:<6}"));
            }
            row.push_str(&format!(" failed={failed}"));
            println!("{row}");
            return;
        }
        if self.label != label {
            self.label = label.to_owned();
            self.drawn = 0;
        }
        let mut lines = vec![
            format!("  [{elapsed:>5.1}s] {label}"),
            format!("  {:<12} {:>8} {:>10}", "instance", "req/s", "total"),
        ];
        for name in NAMES {
            let total = count(now, name);
            let rate = total - count(last, name);
            let bar = "#".repeat(usize::try_from(rate / 100).unwrap_or(0).min(40));
            lines.push(format!("  {name:<12} {rate:>8} {total:>10}  {bar}"));
        }
        lines.push(format!("  {:<12} {:>8} {failed:>10}", "failed", ""));
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for line in &lines {
            out.push_str(line);
            out.push_str("\x1b[K\n");
        }
        print!("{out}");
        self.drawn = lines.len();
    }
}

/// Waits until the gateway answers /healthz with 200.
async fn wait_http(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(addr).await.unwrap_or(false) {
        if Instant::now() > deadline {
            bail!("the gateway did not become healthy within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Whether the gateway answers /healthz with 200.
async fn healthy(addr: &str) -> Result<bool> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/healthz")
        .header("host", "gateway")
        .body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(request).await?.status().is_success())
}
