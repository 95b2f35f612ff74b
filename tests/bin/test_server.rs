//! `test-server --name NAME --port PORT [--etcd HOSTS --key KEY [--ttl SECONDS] [--grace-ms MS]]`:
//! a test gRPC server in its own process.
//!
//! Serves `user.User` (replies name the instance `NAME`) and `grpc.health.v1` on
//! `127.0.0.1:PORT` (0 = a free port), prints exactly one line `listening 127.0.0.1:PORT` on
//! stdout once bound, and on SIGTERM (or SIGINT) stops gracefully: it closes the listener,
//! sends every connection a GOAWAY, lets in-flight RPCs finish, and exits 0. Logs go to stderr
//! (`RUST_LOG`, default `warn`). Tests drive it through `switchboard_testkit::ServerProcess`.
//!
//! With `--etcd` and `--key`, it also registers itself as `KEY/NAME` → `127.0.0.1:PORT` with a
//! lease of `--ttl` seconds (default 10), in the background (the registrar retries while etcd
//! is unreachable), and on SIGTERM deregisters first, waits `--grace-ms` (default 500) for
//! clients to move away, then stops as above.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use switchboard_resolver::{EtcdConfig, Registrar};
use switchboard_testkit::TestServer;
use tokio::signal::unix::{SignalKind, signal};

/// The command line.
struct Args {
    name: String,
    port: u16,
    etcd: Option<String>,
    key: Option<String>,
    ttl: Duration,
    grace: Duration,
}

const USAGE: &str = "usage: test-server --name NAME --port PORT \
                     [--etcd HOSTS --key KEY [--ttl SECONDS] [--grace-ms MS]]";

fn parse_args() -> Result<Args> {
    let mut name = None;
    let mut port = None;
    let mut etcd = None;
    let mut key = None;
    let mut ttl = Duration::from_secs(10);
    let mut grace = Duration::from_millis(500);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--port" => port = Some(value()?.parse().context("--port takes a port number")?),
            "--etcd" => etcd = Some(value()?),
            "--key" => key = Some(value()?),
            "--ttl" => ttl = Duration::from_secs(value()?.parse().context("--ttl takes seconds")?),
            "--grace-ms" => {
                grace = Duration::from_millis(
                    value()?.parse().context("--grace-ms takes milliseconds")?,
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if etcd.is_some() != key.is_some() {
        bail!("--etcd and --key go together; {USAGE}");
    }
    Ok(Args {
        name: name.context("--name is required")?,
        port: port.unwrap_or(0),
        etcd,
        key,
        ttl,
        grace,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    // Handlers first, so that a SIGTERM right after the `listening` line is not fatal.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = TestServer::start_on(&args.name, args.port).await?;
    let registration = match (&args.etcd, &args.key) {
        (Some(hosts), Some(key)) => Some(
            Registrar::new(
                EtcdConfig::from_hosts(hosts)?,
                key,
                &server.addr().to_string(),
            )?
            .id(&args.name)
            .ttl(args.ttl)?
            .register_lazy(),
        ),
        _ => None,
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", server.addr())?;
        stdout.flush()?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    if let Some(registration) = registration {
        if let Err(e) = registration.deregister().await {
            tracing::warn!(error = %e, "could not deregister; the key expires with its lease");
        }
        tokio::time::sleep(args.grace).await;
    }
    server.shutdown().await;
    Ok(())
}
