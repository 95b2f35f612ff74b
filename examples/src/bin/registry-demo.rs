//! The switchboard demo: a real etcd, service instances registering and leaving, and
//! `switchboard resolve --watch` following them live.
//!
//! ```text
//! cargo build -p switchboard-cli -p switchboard-examples && target/debug/registry-demo
//! ```
//!
//! What it shows, step by step:
//! 1. etcd starts on a free loopback port, and `switchboard resolve --watch` starts watching
//!    the `user.rpc` prefix;
//! 2. three instances register the way go-zero does (lease + `user.rpc/<leaseID>`);
//! 3. a Go service registers the way grpc-go's etcd naming does (written with etcdctl);
//! 4. one instance leaves gracefully (its lease is revoked, its key goes at once);
//! 5. an operator revokes another instance's lease by hand: it re-registers within its TTL;
//! 6. the final set printed by `switchboard resolve` equals what etcd holds.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use switchboard_resolver::{EtcdConfig, Format, Registrar, RegistrarState, Registration};
use switchboard_testkit::Etcd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

const STEP: Duration = Duration::from_secs(20);

struct Demo {
    started: Instant,
    watch_lines: mpsc::UnboundedReceiver<String>,
}

impl Demo {
    fn say(&self, what: &str) {
        println!("[{:>5.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Waits for the watch to print a line containing each of `needles`.
    async fn expect(&mut self, needles: &[&str]) -> Result<()> {
        let mut missing: Vec<&str> = needles.to_vec();
        let deadline = tokio::time::Instant::now() + STEP;
        while !missing.is_empty() {
            let line = tokio::time::timeout_at(deadline, self.watch_lines.recv())
                .await
                .with_context(|| format!("the watch did not show {missing:?}"))?
                .context("the watch stopped")?;
            missing.retain(|n| !line.contains(n));
        }
        Ok(())
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first with `cargo build -p switchboard-cli`",
            path.display()
        );
    }
    Ok(path)
}

async fn register(config: &EtcdConfig, addr: &str) -> Result<Registration> {
    Ok(Registrar::new(config.clone(), "user.rpc", addr)?
        .ttl(Duration::from_secs(5))?
        .register()
        .await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let switchboard = sibling("switchboard")?;
    let started = Instant::now();

    println!("switchboard demo: etcd discovery, live\n");
    let etcd = Etcd::start().await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let (tx, watch_lines) = mpsc::unbounded_channel();
    let mut demo = Demo {
        started,
        watch_lines,
    };
    demo.say(&format!(
        "etcd {} serving on {}",
        etcd_version(),
        etcd.hosts()
    ));

    let mut watch = Command::new(&switchboard)
        .args([
            "resolve",
            "--etcd",
            &etcd.hosts(),
            "--key",
            "user.rpc",
            "--watch",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = watch.stdout.take().context("no stdout")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("           watch │ {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    demo.say("started `switchboard resolve --key user.rpc --watch`");

    let mut instances = Vec::new();
    for port in [9001, 9002, 9003] {
        let addr = format!("127.0.0.1:{port}");
        let r = register(&config, &addr).await?;
        demo.say(&format!(
            "user-rpc at {addr} registered as {} (go-zero format, lease TTL 5 s)",
            r.status().key.unwrap_or_default()
        ));
        demo.expect(&[&addr]).await?;
        instances.push(r);
    }

    let go_value = r#"{"Op":0,"Addr":"127.0.0.1:9004","Metadata":{"lang":"go"}}"#;
    etcd.etcdctl(&["put", "user.rpc/127.0.0.1:9004", go_value])?;
    demo.say("a Go service registered with grpc-go's etcd naming JSON (written by etcdctl)");
    demo.expect(&["127.0.0.1:9004"]).await?;

    let leaving = instances.remove(1);
    leaving.deregister().await?;
    demo.say("user-rpc at 127.0.0.1:9002 left gracefully (lease revoked)");
    demo.expect(&["- ", "127.0.0.1:9002"]).await?;

    let victim = &instances[1];
    let lease = victim.status().lease.unwrap_or_default();
    etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")])?;
    demo.say("an operator revoked the lease of 127.0.0.1:9003 by hand");
    demo.expect(&["- ", "127.0.0.1:9003"]).await?;
    let mut status = victim.status_watch();
    tokio::time::timeout(
        STEP,
        status.wait_for(|s| s.state == RegistrarState::Registered && s.lease != Some(lease)),
    )
    .await??;
    demo.expect(&["+ ", "127.0.0.1:9003"]).await?;
    demo.say(&format!(
        "127.0.0.1:9003 re-registered by itself as {}",
        victim.status().key.unwrap_or_default()
    ));

    let once = Command::new(&switchboard)
        .args([
            "resolve",
            "--etcd",
            &etcd.hosts(),
            "--key",
            "user.rpc",
            "--format",
            &Format::Auto.to_string(),
        ])
        .output()
        .await?;
    let resolved = String::from_utf8(once.stdout)?;
    let in_etcd = etcd.etcdctl(&["get", "--prefix", "user.rpc/", "--keys-only"])?;
    let keys: Vec<&str> = in_etcd.lines().filter(|l| !l.is_empty()).collect();
    println!("\n`switchboard resolve --key user.rpc`:");
    for line in resolved.lines() {
        println!("  {line}");
    }
    let resolved_keys: Vec<&str> = resolved
        .lines()
        .filter_map(|l| l.split(' ').next())
        .collect();
    if resolved_keys != keys || keys.len() != 3 {
        bail!("resolved {resolved_keys:?}, but etcd holds {keys:?}");
    }
    println!(
        "\nresult: {} instances resolved, identical to `etcdctl get --prefix user.rpc/`; demo finished in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    drop(instances);
    let _ = watch.kill().await;
    Ok(())
}

fn etcd_version() -> String {
    let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string())
        })
        .unwrap_or_default()
}
