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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard_testkit::{Etcd, free_port};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Concurrent HTTP clients of the gateway.
const CLIENTS: usize = 8;

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
    let mut child = Command::new(sibling("user-rpc")?)
        .args([
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            etcd,
            "--key",
            "user.rpc",
        ])
        .args(["--grace", "1s"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting user-rpc")?;
    let stdout = child.stdout.take().context("user-rpc stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("registered") {
                return Ok::<_, anyhow::Error>(line);
            }
        }
        bail!("user-rpc {name} exited before registering")
    })
    .await
    .with_context(|| format!("user-rpc {name} did not register within 30 s"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    println!("  {name}: {ready}");
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

    println!("1. etcd on 127.0.0.1, three user-rpc instances registering under user.rpc/");
    let etcd = Etcd::start()
        .await
        .context("starting etcd (Debian package etcd-server)")?;
    let hosts = etcd.hosts();
    let mut instances = Vec::new();
    for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3"] {
        instances.push(user_rpc(name, &hosts).await?);
    }

    println!("2. the gateway, balancing user.rpc with switchboard");
    let gateway_addr = format!("127.0.0.1:{}", free_port()?);
    let _gateway = Proc {
        name: "gateway".into(),
        child: Command::new(sibling("gateway")?)
            .args([
                "--listen",
                &gateway_addr,
                "--etcd",
                &hosts,
                "--key",
                "user.rpc",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .context("starting the gateway")?,
    };
    wait_http(&gateway_addr).await?;

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
    let mut last = snapshot();
    let table = |label: &str, last: &mut BTreeMap<String, u64>| {
        let now = snapshot();
        let mut row = format!("[{:>5.1}s] {label:<28}", started.elapsed().as_secs_f64());
        for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3", "user-rpc-4"] {
            let n = now.get(name).copied().unwrap_or(0) - last.get(name).copied().unwrap_or(0);
            row.push_str(&format!(" {name}={n:<6}"));
        }
        row.push_str(&format!(" failed={}", failures.load(Ordering::Relaxed)));
        println!("{row}");
        *last = now;
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table("three instances", &mut last);
    }

    println!("4. a fourth instance registers");
    instances.push(user_rpc("user-rpc-4", &hosts).await?);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table("four instances", &mut last);
    }

    println!("5. user-rpc-2 stops gracefully (SIGTERM: deregister, NOT_SERVING, grace, drain)");
    let mut leaving = instances.remove(1);
    if let Some(pid) = leaving.pid() {
        kill(pid, Signal::SIGTERM)?;
    }
    let stopping = tokio::spawn(async move {
        let status = tokio::time::timeout(Duration::from_secs(30), leaving.child.wait()).await;
        (leaving.name, status)
    });
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table("user-rpc-2 leaving", &mut last);
    }
    let (name, status) = stopping.await?;
    let exited = matches!(status, Ok(Ok(s)) if s.success());
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
        "  {name} exited {} after SIGTERM",
        if exited { "cleanly" } else { "uncleanly" }
    );
    let fourth = totals.get("user-rpc-4").copied().unwrap_or(0);
    if failed > 0 || fourth == 0 || after != served_by_2 || !exited {
        println!(
            "FAILED: expected no failed request, traffic on user-rpc-4, none on user-rpc-2 after it left"
        );
        std::process::exit(1);
    }
    println!("OK: traffic followed etcd live, with no failed request");
    drop(instances);
    drop(etcd);
    Ok(())
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
